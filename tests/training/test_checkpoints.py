"""Checkpoint files, random states and the loop's resume: a stage resumed from any of its
checkpoints ends with the weights of the uninterrupted stage, bit for bit."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from recbert.config import DataConfig, EvalConfig, ModelConfig, StageConfig
from recbert.data.sequences import build_sequences, leave_one_out
from recbert.data.vocab import ItemVocab
from recbert.errors import CheckpointError
from recbert.model.recommender import SequenceRecommender
from recbert.runtime import (numpy_generator_state, rng_state, seed_everything, set_numpy_generator_state,
                             set_rng_state)
from recbert.training.checkpoints import Checkpointing, CheckpointStore, load_checkpoint
from recbert.training.trainer import train_stage
from tests.conftest import cyclic_events


def test_rng_state_round_trips_every_generator():
    seed_everything(3)
    state = rng_state()
    first = (random.random(), np.random.rand(), torch.rand(2))
    set_rng_state(state)
    again = (random.random(), np.random.rand(), torch.rand(2))
    assert first[:2] == again[:2] and torch.equal(first[2], again[2])

    rng = np.random.default_rng(7)
    rng.random(3)
    saved = numpy_generator_state(rng)
    expected = rng.random(4)
    other = np.random.default_rng(0)
    set_numpy_generator_state(other, saved)
    assert np.array_equal(other.random(4), expected)


def test_store_keeps_the_newest_and_loads_without_code(tmp_path):
    store = CheckpointStore(tmp_path / "ck", keep_last=2)
    for i in range(4):
        store.save({"i": i, "w": torch.full((3,), float(i)), "rng": rng_state()})
    assert [p.name for p in store.files()] == ["ckpt-00000003.pt", "ckpt-00000004.pt"]
    path, state = store.latest()
    assert path.name == "ckpt-00000004.pt" and state["i"] == 3 and torch.equal(state["w"], torch.full((3,), 3.0))
    assert not [p for p in (tmp_path / "ck").iterdir() if p.name.startswith(".")]  # no temp files left


def test_a_truncated_newest_checkpoint_falls_back_to_the_previous(tmp_path, caplog):
    store = CheckpointStore(tmp_path, keep_last=3)
    store.save({"i": 1})
    newest = store.save({"i": 2, "w": torch.zeros(1000)})
    newest.write_bytes(newest.read_bytes()[:100])
    path, state = store.latest()
    assert state["i"] == 1 and "unreadable" in caplog.text
    with pytest.raises(CheckpointError, match="unreadable"):
        load_checkpoint(newest)
    with pytest.raises(CheckpointError, match="no checkpoint in"):
        CheckpointStore(tmp_path / "empty").latest()


class Payload:  # any class: unpickling it would run its code
    def __reduce__(self):
        return (print, ("code ran",))


def test_a_pickled_object_is_refused_by_weights_only_loading(tmp_path, capsys):
    path = tmp_path / "ckpt-00000001.pt"
    torch.save({"format": 1, "evil": Payload()}, path)
    with pytest.raises(CheckpointError, match="unreadable"):
        load_checkpoint(path)
    assert "code ran" not in capsys.readouterr().out
    torch.save({"format": 99}, path)
    with pytest.raises(CheckpointError, match="format 99"):
        load_checkpoint(path)


def _setup(seed: int = 0):
    seed_everything(seed)
    events = cyclic_events(n_users=80, n_items=30)
    vocab = ItemVocab.build(events["item_id"])
    splits = leave_one_out(build_sequences(events, vocab))
    model = SequenceRecommender(ModelConfig(hidden=16, intermediate=32, layers=1, max_len=10, n_tokens=len(vocab)))
    model.vocab = vocab
    return model, splits


@pytest.mark.parametrize("objective,loss", [("mlm", "full_softmax"), ("next_item", "sampled_softmax"),
                                            ("next_item_contrastive", "full_softmax"),
                                            ("next_item_augmented", "full_softmax")])
def test_a_stage_resumed_from_any_checkpoint_ends_bitwise_equal(objective, loss):
    stage = StageConfig(objective=objective, loss=loss, negatives=8, epochs=3, batch_size=16, eval_every=1,
                        patience=2)
    eval_config = EvalConfig(ks=[10], sampled_negatives=0)
    model, splits = _setup()
    states = []
    full = train_stage(model, splits, stage, eval_config, seed=5, data=DataConfig(),
                       checkpointing=Checkpointing(lambda s: states.append(_copy(s)), every_steps=2))
    final = {k: v.clone() for k, v in model.state_dict().items()}
    assert any(s["skip"] for s in states) and any(not s["skip"] for s in states)  # within and at epoch ends
    for state in (states[1], states[len(states) // 2], states[-2]):
        fresh, _ = _setup(seed=123)  # other initial weights and random states: all must come from the checkpoint
        res = train_stage(fresh, splits, stage, eval_config, seed=5, data=DataConfig(), resume=state)
        assert all(torch.equal(final[k], v) for k, v in fresh.state_dict().items()), (state["next_epoch"],
                                                                                       state["skip"])
        assert (res.best_epoch, res.best_score, res.epochs_run) == (full.best_epoch, full.best_score, full.epochs_run)
        assert [h["train/loss"] for h in res.history] == [h["train/loss"] for h in full.history]


def _copy(state):
    import copy
    import io

    buffer = io.BytesIO()
    torch.save(state, buffer)  # what a file would hold, detached from the live tensors
    buffer.seek(0)
    return copy.deepcopy(torch.load(buffer, weights_only=True))


def test_a_sigterm_while_a_checkpoint_is_written_stops_after_the_file_is_whole(tmp_path, monkeypatch):
    """The CI race: SIGTERM landed inside torch.save's zip writer, whose clean-up then
    failed and hid the interrupt (exit 1 and a traceback instead of 143 and the resume hint)."""
    import os
    import signal

    from recbert.errors import Interrupted
    from recbert.runtime import interruptible
    from recbert.training import checkpoints

    real_save = torch.save

    def save_with_a_signal_midway(obj, f):
        f.write(b"")  # the file is open, nothing written yet
        os.kill(os.getpid(), signal.SIGTERM)
        real_save(obj, f)

    store = CheckpointStore(tmp_path / "ck")
    store.save({"step": 1})
    monkeypatch.setattr(checkpoints.torch, "save", save_with_a_signal_midway)
    with interruptible(), pytest.raises(Interrupted):
        store.save({"step": 2})
    monkeypatch.setattr(checkpoints.torch, "save", real_save)
    path, state = store.latest()
    assert state["step"] == 2 and path.name == "ckpt-00000002.pt"
    assert not list((tmp_path / "ck").glob("*.tmp"))
