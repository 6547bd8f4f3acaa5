"""Distributed (data-parallel) training on CPU: two gloo processes against one process.

The spawned workers run :func:`train_stage` with a recording of the windows each rank
trains on; the end-to-end test starts ``recbert train`` under torchrun."""

from __future__ import annotations

import dataclasses
import json
import os
from collections import Counter
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

from recbert.config import DataConfig, EvalConfig, ModelConfig, StageConfig
from recbert.data.batches import global_batch_bounds
from recbert.data.prepare import shard_splits
from recbert.data.sequences import build_sequences, leave_one_out
from recbert.data.shards import open_shards, write_shards
from recbert.data.streaming import ShardWindows
from recbert.data.vocab import N_SPECIAL, ItemVocab
from recbert.errors import ConfigError
from recbert.training.checkpoints import CheckpointStore
from recbert.evaluation.ranking import evaluate_ranking
from recbert.model.recommender import SequenceRecommender
from recbert.runtime import DistributedContext, distributed
from recbert.data.window_sources import MemoryWindows
from recbert.training.objectives import build_objective
from recbert.training.trainer import train_stage
from tests.conftest import REPO, cyclic_events

WORLD = 2
EVAL = EvalConfig(ks=[10], select_metric="hr@10", sampled_negatives=0)
# 225 windows in batches of 32: the last global batch of one window joins the one before it
STAGE = StageConfig(objective="next_item", epochs=3, lr=3e-3, batch_size=32, patience=50, warmup_ratio=0.0)
LOSS_TOLERANCE = 0.02  # relative, per epoch: each rank averages its own half of a global batch


def setup():
    events = cyclic_events(n_users=158, seed=1)
    vocab = ItemVocab.build(events["item_id"])
    splits = leave_one_out(build_sequences(events, vocab, 2))
    # no dropout: the only difference to one process is how the per-rank means combine
    cfg = ModelConfig(hidden=16, layers=1, heads=2, intermediate=32, max_len=12, dropout=0.0,
                      attention_dropout=0.0, n_tokens=len(vocab))
    torch.manual_seed(0)
    return SequenceRecommender(cfg), splits


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def train_worker(rank: int, port: int, out: str) -> None:
    """One rank: trains STAGE and saves its losses, the windows it trained on and its weights."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(WORLD),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    seen: list[list[int]] = []
    batch_windows = MemoryWindows.batch_windows

    def recorded(self, epoch):
        for idx in batch_windows(self, epoch):
            seen.append([epoch, *idx.tolist()])
            yield idx

    MemoryWindows.batch_windows = recorded
    with distributed("cpu") as context:
        model, splits = setup()
        res = train_stage(model, splits, STAGE, EVAL, context=context)
    torch.save({"losses": [h["train/loss"] for h in res.history], "seen": seen, "best_epoch": res.best_epoch,
                "epochs_run": res.epochs_run, "state": model.state_dict()}, Path(out) / f"rank{rank}.pt")


def shard_setup(folder: str):
    """The model of :func:`setup` and the splits of the same events as shards in ``folder``."""
    model, _ = setup()
    return model, shard_splits(open_shards(folder))[1]


def write_test_shards(folder: Path) -> None:
    events = cyclic_events(n_users=158, seed=1)
    events.write_parquet(folder / "events.parquet")
    data = DataConfig(events=str(folder / "events.parquet"), shard_events=700)
    write_shards(data.events, folder / "shards", data, row_group_users=8)


def stream_worker(rank: int, port: int, out: str) -> None:
    """One rank training STAGE on the shards in ``out``: saves its losses and the rows of every batch."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(WORLD),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    seen: list[tuple[int, list[list[int]]]] = []
    rows = ShardWindows.rows

    def recorded(self, epoch):
        for batch in rows(self, epoch):
            seen.append((epoch, batch.tolist()))
            yield batch

    ShardWindows.rows = recorded
    with distributed("cpu") as context:
        model, splits = shard_setup(str(Path(out) / "shards"))
        res = train_stage(model, splits, STAGE, EVAL, context=context, data=DataConfig(shuffle_buffer_batches=2))
    torch.save({"losses": [h["train/loss"] for h in res.history], "seen": seen}, Path(out) / f"stream{rank}.pt")


@pytest.fixture(scope="module")
def two_streaming_ranks(tmp_path_factory) -> list[dict]:
    out = tmp_path_factory.mktemp("ddp_stream")
    write_test_shards(out)
    mp.spawn(stream_worker, args=(free_port(), str(out)), nprocs=WORLD, join=True)
    return [torch.load(out / f"stream{r}.pt") for r in range(WORLD)], out


def test_streamed_shards_train_every_window_once_per_epoch_across_the_ranks(two_streaming_ranks):
    ranks, out = two_streaming_ranks
    single = ShardWindows(open_shards(out / "shards"), 13, 12, 2, STAGE.batch_size, buffer_batches=2)
    steps = [[e for e, _ in r["seen"]] for r in ranks]
    per_rank = ShardWindows(open_shards(out / "shards"), 13, 12, 2, STAGE.batch_size, world_size=WORLD).steps_per_epoch
    assert steps[0] == steps[1] == [e for e in (1, 2, 3) for _ in range(per_rank)]

    def windows(batches):
        return Counter(tuple(t for t in row if t) for b in batches for row in b)
    expected = windows(b.tolist() for b in single.rows(1))
    for epoch in (1, 2, 3):
        assert windows(b for r in ranks for e, b in r["seen"] if e == epoch) == expected
    two = ranks[0]["losses"]
    assert two == ranks[1]["losses"]
    model, splits = shard_setup(str(out / "shards"))
    one = [h["train/loss"] for h in train_stage(model, splits, STAGE, EVAL,
                                                data=DataConfig(shuffle_buffer_batches=2)).history]
    # each rank's batches come from its own half of the epoch's stream, not from one global batch
    np.testing.assert_allclose(two, one, rtol=LOSS_TOLERANCE)


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory) -> list[dict]:
    out = tmp_path_factory.mktemp("ddp")
    mp.spawn(train_worker, args=(free_port(), str(out)), nprocs=WORLD, join=True)
    return [torch.load(out / f"rank{r}.pt") for r in range(WORLD)]


def test_every_window_is_trained_on_once_per_epoch_across_the_ranks(two_ranks):
    model, splits = setup()
    n_windows = len(build_objective("train", STAGE, model, splits.train))
    steps = [r["seen"] for r in two_ranks]
    assert len(steps[0]) == len(steps[1]) == 3 * (n_windows // STAGE.batch_size)  # the short last batch merged
    for epoch in (1, 2, 3):
        windows = [w for rank in steps for row in rank if row[0] == epoch for w in row[1:]]
        assert sorted(windows) == list(range(n_windows))
    assert all(len(row) > 1 for rank in steps for row in rank)  # no empty step


def test_losses_follow_one_process_with_the_same_global_batch(two_ranks):
    model, splits = setup()
    single = [h["train/loss"] for h in train_stage(model, splits, STAGE, EVAL).history]
    assert two_ranks[0]["losses"] == two_ranks[1]["losses"]  # means over both ranks
    np.testing.assert_allclose(two_ranks[0]["losses"], single, rtol=LOSS_TOLERANCE)
    assert single[-1] < single[0]


def test_the_ranks_keep_the_same_weights_and_decisions(two_ranks):
    # the scorer's bias and transform are used outside forward: their gradients are averaged too
    a, b = (r["state"] for r in two_ranks)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert a["scorer.bias"].abs().sum() > 0
    assert two_ranks[0]["best_epoch"] == two_ranks[1]["best_epoch"]
    assert two_ranks[0]["epochs_run"] == two_ranks[1]["epochs_run"]


def test_one_process_keeps_its_batches_and_a_short_last_batch_joins_the_one_before():
    assert global_batch_bounds(225, 32) == [(lo, min(lo + 32, 225)) for lo in range(0, 225, 32)]
    assert global_batch_bounds(225, 32, world_size=2)[-1] == (192, 225)
    assert global_batch_bounds(226, 32, world_size=2)[-1] == (224, 226)
    assert global_batch_bounds(1, 32, world_size=2) == [(0, 1)]  # refused by the objective, not here


def test_more_ranks_than_windows_is_a_config_error():
    model, splits = setup()
    context = DistributedContext(rank=0, world_size=10_000)
    with pytest.raises(ConfigError, match="training windows cannot be shared by 10000 processes"):
        build_objective("train", STAGE, model, splits.train, context=context)


def test_lazy_item_updates_are_refused_with_several_ranks():
    model, splits = setup()
    stage = StageConfig(objective="next_item", loss="sampled_softmax", lazy_item_updates=True)
    with pytest.raises(ConfigError, match="lazy_item_updates .* distributed"):
        train_stage(model, splits, stage, EVAL, context=DistributedContext(rank=0, world_size=2))


@pytest.mark.parametrize("streamed", [False, True])
def test_recbert_train_under_torchrun_writes_once_from_rank_0(tmp_path, streamed):
    events = tmp_path / "events.parquet"
    cyclic_events(n_users=120).write_parquet(events)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    # an MLM pretraining epoch, then next-item training: two stages, each wrapped in DDP
    sets = ["model.hidden=16", "model.intermediate=32", "model.layers=1", "model.max_len=12", "pretrain.epochs=1",
            "pretrain.batch_size=32", "train.objective=next_item", "train.epochs=2", "train.batch_size=32",
            "out_dir=runs", "device=cpu", "threads=1", "checkpoint.keep_when_finished=true"] + \
        (["data.shards=shards"] if streamed else [])
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "recbert.cli", "-q", "train", "--events", str(events)] + [a for s in sets for a in ("--set", s)]
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("mlflow run id: ") == 1  # only rank 0 reports
    run_id = done.stdout.split("mlflow run id: ")[1].split()[0]
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == sorted([run_id, "checkpoints"])
    # rank 0 alone wrote the checkpoints, each holding every rank's random states
    assert [p.name for p in (tmp_path / "runs" / "checkpoints").iterdir()] == [run_id]
    newest = CheckpointStore(tmp_path / "runs" / "checkpoints" / run_id).latest()[1]
    assert newest["loop"]["world_size"] == 2 and len(newest["loop"]["ranks"]) == 2
    assert json.loads(newest["job"]["config"])["checkpoint"]["keep_when_finished"]
    if streamed:  # written once, by rank 0, before the other rank read it
        assert open_shards(tmp_path / "shards").n_users == 120
        assert not [p for p in tmp_path.iterdir() if p.name.startswith(".shards")]  # no second, racing writer
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert [r.info.run_id for r in runs] == [run_id]
    assert "test/all/hr_at_10" in runs[0].data.metrics
    metrics = json.loads((tmp_path / "runs" / run_id / "metrics.json").read_text())
    assert metrics["train/best_epoch"] >= 1


def eval_worker(rank: int, port: int, out: str) -> None:
    """One rank ranking its share of the test users; saves the gathered metrics."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(WORLD),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    with distributed("cpu") as context:
        model, splits = setup()
        metrics = {name: evaluate_ranking(model, test, EvalConfig(ks=[1, 10], sampled_negatives=20, batch_size=16),
                                          context=context) for name, test in eval_sets(model, splits).items()}
    (Path(out) / f"eval{rank}.json").write_text(json.dumps(metrics))


def eval_sets(model, splits) -> dict:
    """The test users ranked among every item, and among every other item (eval.candidates)."""
    every_other = np.arange(N_SPECIAL, model.config.n_tokens, 2)
    return {"all items": splits.test, "candidates": dataclasses.replace(splits.test, candidates=every_other)}


def test_evaluation_is_shared_by_the_ranks_and_gathered(tmp_path):
    mp.spawn(eval_worker, args=(free_port(), str(tmp_path)), nprocs=WORLD, join=True)
    gathered = [json.loads((tmp_path / f"eval{r}.json").read_text()) for r in range(WORLD)]
    assert gathered[0] == gathered[1]
    model, splits = setup()
    sets = eval_sets(model, splits)
    assert gathered[0]["all items"] != gathered[0]["candidates"]
    for name, test in sets.items():
        single = evaluate_ranking(model, test, EvalConfig(ks=[1, 10], sampled_negatives=20, batch_size=16))
        ranks = gathered[0][name]
        assert ranks["n_users"] == single["n_users"] == len(splits.test)
        exact = {k: v for k, v in single.items() if not k.startswith("sampled/")}
        assert {k: pytest.approx(v, abs=1e-12) for k, v in exact.items()} == {k: ranks[k] for k in exact}
        assert ranks.keys() == single.keys()
