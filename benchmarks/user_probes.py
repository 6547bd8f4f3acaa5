"""What a saved encoder knows about its users (issue #9): linear probes of its frozen states
on MovieLens-100K user classification, beside the TF-IDF bag-of-items baseline.

Fine-tuning a pretrained encoder on ~630 labelled users per fold ends below the same encoder
from scratch and below a logistic regression on the users' items (BENCHMARKS.md). These
probes ask why, without fine-tuning: per task, seed and stratified fold (the folds of
``recbert finetune``),

- ``tfidf``: LogisticRegression on TF-IDF bag-of-items (``recbert finetune``'s baseline);
- ``NAME frozen``: LogisticRegression (C chosen by 3-fold inner CV on log-loss) on the
  standardised mean of the encoder's output states over each user's history window;
- ``NAME random``: the same with a freshly initialised encoder of the same config (the part
  of the figure that the architecture alone gives);
- ``tfidf + NAME``: the TF-IDF features and those states side by side, the states' weight
  chosen by the same inner CV (does the encoder add anything to the items themselves?).

    .venv/bin/python benchmarks/user_probes.py --model next=runs/<id> [--model mlm=runs/<id>]
        [--tasks gender,age,occupation] [--seeds 0,1,2] [--folds 3]
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from recbert.data.tasks import UserTask, build_user_task  # noqa: E402
from recbert.data.vocab import PAD  # noqa: E402
from recbert.evaluation.classification import CLASSIFICATION_METRICS, classification_metrics  # noqa: E402
from recbert.evaluation.report import results_table  # noqa: E402
from recbert.jobs.finetune import bag_of_items, tfidf_baseline  # noqa: E402
from recbert.model.pooling import build_pooling  # noqa: E402
from recbert.model.recommender import SequenceRecommender  # noqa: E402

EVENTS = ROOT / "data" / "ml-100k" / "events.parquet"
USERS = ROOT / "data" / "ml-100k" / "users.parquet"
C_GRID = np.logspace(-4, 1, 11)
STATE_WEIGHTS = (0.03, 0.1, 0.3, 1.0)  # the states' scale beside the TF-IDF features, chosen by inner CV


@torch.no_grad()
def mean_states(model: SequenceRecommender, rows: np.ndarray, batch_size: int = 512) -> np.ndarray:
    """``[len(rows), hidden]``: the mean of the encoder's output over each row's real tokens."""
    model.eval()
    pool = build_pooling("mean", model.config.hidden)
    out = []
    for i in range(0, len(rows), batch_size):
        enc = model(torch.from_numpy(rows[i:i + batch_size]))
        out.append(pool(enc.sequence_output, enc.padding_mask).float().numpy())
    return np.concatenate(out)


def random_twin(model: SequenceRecommender, seed: int) -> SequenceRecommender:
    """A freshly initialised encoder of ``model``'s config, with its (non-learned) feature tables."""
    torch.manual_seed(seed)
    twin = SequenceRecommender(copy.deepcopy(model.config))
    twin.load_state_dict({k: v.clone() for k, v in model.named_buffers()}, strict=False)
    return twin


def _proba(clf, x, n_classes: int) -> np.ndarray:
    p = np.zeros((x.shape[0], n_classes))
    p[:, clf.classes_] = clf.predict_proba(x)
    return p[:, 1] if n_classes == 2 else p


def frozen_probe(states: np.ndarray, task: UserTask, train: np.ndarray, test: np.ndarray) -> np.ndarray:
    from sklearn.linear_model import LogisticRegressionCV
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    clf = make_pipeline(StandardScaler(), LogisticRegressionCV(Cs=C_GRID, cv=3, scoring="neg_log_loss",
                                                               max_iter=3000))
    clf.fit(states[train], task.labels[train])
    return _proba(clf, states[test], task.n_classes)


def stacked_probe(states: np.ndarray, task: UserTask, n_tokens: int, train: np.ndarray, test: np.ndarray,
                  seed: int) -> np.ndarray:
    """TF-IDF bag-of-items beside the standardised states (weight by inner CV), one LogisticRegression."""
    from scipy.sparse import csr_matrix, hstack
    from sklearn.feature_extraction.text import TfidfTransformer
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import log_loss
    from sklearn.model_selection import StratifiedKFold
    from sklearn.preprocessing import StandardScaler

    counts = bag_of_items(task.rows, n_tokens)

    def fit(fit_idx, weight):
        tfidf = TfidfTransformer(sublinear_tf=True).fit(counts[fit_idx])
        scaler = StandardScaler().fit(states[fit_idx])

        def features(idx):
            return hstack([tfidf.transform(counts[idx]), csr_matrix(scaler.transform(states[idx]) * weight)]).tocsr()

        clf = LogisticRegression(max_iter=3000, C=1.0, random_state=seed).fit(features(fit_idx), task.labels[fit_idx])
        return clf, features

    inner = StratifiedKFold(3, shuffle=True, random_state=seed)
    losses = {}
    for w in STATE_WEIGHTS:
        loss = 0.0
        for a, b in inner.split(train, task.labels[train]):
            clf, features = fit(train[a], w)
            loss += log_loss(task.labels[train[b]], clf.predict_proba(features(train[b])), labels=clf.classes_)
        losses[w] = loss
    clf, features = fit(train, min(losses, key=losses.get))
    return _proba(clf, features(test), task.n_classes)


def main() -> None:
    from sklearn.model_selection import StratifiedKFold

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", action="append", required=True, metavar="NAME=DIR", help="a saved model folder")
    ap.add_argument("--tasks", default="gender,age,occupation")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--folds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    warnings.filterwarnings("ignore", category=FutureWarning, module="sklearn")  # LogisticRegressionCV's attributes
    torch.set_num_threads(args.threads)
    models = {}
    for spec in args.model:
        name, _, directory = spec.partition("=")
        if not directory:
            ap.error(f"--model takes NAME=DIR, got {spec!r}")
        models[name] = SequenceRecommender.from_pretrained(directory)
    seeds = [int(s) for s in args.seeds.split(",")]
    for task_name in args.tasks.split(","):
        started = time.perf_counter()
        tasks = {n: build_user_task(task_name, EVENTS, USERS, m.vocab, m.config.max_len) for n, m in models.items()}
        first = next(iter(tasks.values()))
        assert all(np.array_equal(t.user_ids, first.user_ids) for t in tasks.values())  # one user order
        states = {n: mean_states(m, tasks[n].rows) for n, m in models.items()}
        random_states = {n: mean_states(random_twin(m, 0), tasks[n].rows) for n, m in models.items()}
        runs: dict[str, list[dict[str, float]]] = {}

        def record(variant: str, task: UserTask, test: np.ndarray, proba: np.ndarray) -> None:
            runs.setdefault(variant, []).append(classification_metrics(task.labels[test], proba, task.n_classes))

        for seed in seeds:
            folds = StratifiedKFold(args.folds, shuffle=True, random_state=seed).split(first.rows, first.labels)
            for train, test in folds:
                name0 = next(iter(models))
                record("tfidf", first, test, tfidf_baseline(first, train, test, models[name0].config.n_tokens, seed))
                for n, m in models.items():
                    t = tasks[n]
                    record(f"{n} frozen", t, test, frozen_probe(states[n], t, train, test))
                    record(f"{n} random", t, test, frozen_probe(random_states[n], t, train, test))
                    record(f"tfidf + {n}", t, test, stacked_probe(states[n], t, m.config.n_tokens, train, test, seed))
        print(f"\n{task_name}: {len(first.labels)} users, {first.n_classes} classes, seeds {seeds} x "
              f"{args.folds} folds, {time.perf_counter() - started:.0f}s")
        print(results_table("probe", runs, CLASSIFICATION_METRICS))


if __name__ == "__main__":
    main()
