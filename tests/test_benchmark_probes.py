"""The user-probe benchmark's pieces: mean states over real tokens only, a random twin that
keeps the feature tables, and probes that find a signal where the states carry it (the
figures themselves are the benchmark's, not a test's)."""

from __future__ import annotations

import sys

import numpy as np
import torch

from recbert.config import ModelConfig
from recbert.data.tasks import UserTask
from recbert.data.vocab import PAD
from recbert.evaluation.classification import classification_metrics
from recbert.model.recommender import SequenceRecommender
from tests.conftest import REPO

sys.path.insert(0, str(REPO / "benchmarks"))
import user_probes  # noqa: E402


def small_model() -> SequenceRecommender:
    torch.manual_seed(0)
    return SequenceRecommender(ModelConfig(n_tokens=43, hidden=16, layers=1, heads=2, intermediate=32, max_len=8))


def test_mean_states_average_the_real_positions_only():
    model = small_model().eval()
    rows = np.array([[PAD, PAD, 5, 6, 7, 8, 9, 10], [PAD] * 6 + [11, 12]])
    states = user_probes.mean_states(model, rows, batch_size=1)
    with torch.no_grad():
        out = model(torch.from_numpy(rows)).sequence_output.numpy()
    assert np.allclose(states[0], out[0, 2:].mean(0), atol=1e-6)
    assert np.allclose(states[1], out[1, 6:].mean(0), atol=1e-6)
    twin = user_probes.random_twin(model, seed=1)
    assert not torch.equal(twin.embeddings.item.weight, model.embeddings.item.weight)


def test_the_probes_find_a_label_the_states_carry_and_the_items_do_not():
    rng = np.random.default_rng(0)
    n = 300
    rows = rng.integers(3, 43, size=(n, 8))
    states = rng.normal(size=(n, 16))
    labels = (states[:, 3] + 0.3 * rng.normal(size=n) > 0).astype(np.int64)  # only the states know it
    task = UserTask("t", np.arange(n), rows, labels, ["a", "b"])
    train, test = np.arange(200), np.arange(200, n)
    frozen = classification_metrics(labels[test], user_probes.frozen_probe(states, task, train, test), 2)["auc"]
    stacked = classification_metrics(labels[test], user_probes.stacked_probe(states, task, 43, train, test, 0),
                                     2)["auc"]
    items_only = classification_metrics(labels[test], user_probes.tfidf_baseline(task, train, test, 43, 0), 2)["auc"]
    assert frozen > 0.9 and stacked > 0.9 and items_only < 0.65, (frozen, stacked, items_only)
