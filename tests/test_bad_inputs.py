"""The bad-input catalogue: every bad input a user can hand the CLI gets a non-zero exit
status and one `error:` line naming the file, column, key or value (and the count of bad
rows where there are rows), no traceback, no partial output file, and nothing written
before changed. Each case runs through `recbert.cli.main` (the CLI's own code path); a
sample also runs as a real subprocess, and a few through the Python API."""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import polars as pl
import pytest

from recbert.cli import main
from tests.conftest import REPO, cyclic_events

TINY = [a for s in ("model.hidden=16", "model.intermediate=32", "model.layers=1", "model.max_len=8",
                    "train.objective=next_item", "train.epochs=1", "train.batch_size=64", "eval.ks=[10]",
                    "eval.sampled_negatives=0", "checkpoint.enabled=false") for a in ("--set", s)]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Good events, a trained model, its exported items and an index, built once."""
    root = tmp_path_factory.mktemp("bad")
    events = root / "events.parquet"
    cyclic_events(n_users=120, n_items=40).write_parquet(events)
    cwd = os.getcwd()
    os.chdir(root)
    try:
        assert main(["-q", "train", "--events", str(events), "--no-mlflow", *TINY, "--set", "out_dir=models"]) == 0
        model = next((root / "models").glob("run-*"))
        assert main(["-q", "export", "--model-dir", str(model), "--what", "items", "--out", "items.parquet",
                     "--no-mlflow"]) == 0
        assert main(["-q", "index", "build", "--embeddings", "items.parquet", "--out", "items.index",
                     "--no-mlflow"]) == 0
    finally:
        os.chdir(cwd)
    return {"root": root, "events": events, "model": model, "items": root / "items.parquet",
            "index": root / "items.index"}


@dataclass
class Case:
    name: str
    # (world, case folder) -> the CLI arguments; may write the bad input into the folder
    args: Callable[[dict, Path], list[str]]
    message: str  # a fragment the one error line must hold
    out: Optional[str] = None  # an output file (in the case folder) that must not appear


def events_with(build: Callable[[pl.DataFrame], pl.DataFrame], name: str = "events.parquet"):
    def args(world, d):
        build(pl.read_parquet(world["events"])).write_parquet(d / name)
        return ["train", "--events", str(d / name), "--no-mlflow", *TINY]
    return args


def train_on_file(write: Callable[[Path], None], name: str = "events.parquet"):
    def args(world, d):
        write(d / name)
        return ["train", "--events", str(d / name), "--no-mlflow", *TINY]
    return args


def train_with(*sets: str):
    def args(world, d):
        return ["train", "--events", str(world["events"]), "--no-mlflow", *TINY, *[a for s in sets for a in ("--set", s)]]
    return args


def broken_model(edit: Callable[[Path, dict], None], command: str = "recommend", checksums: bool = True):
    """The trained model copied and broken by ``edit``; ``checksums=False``: without its
    checksums.json (hand-edited, or saved before checksums), so the deeper checks answer."""
    def args(world, d):
        model = d / "model"
        shutil.copytree(world["model"], model)
        edit(model, world)
        if not checksums:
            (model / "checksums.json").unlink()
        if command == "recommend":
            return ["recommend", "--model-dir", str(model), "--items", "1,2,3"]
        return ["export", "--model-dir", str(model), "--what", "items", "--out", str(d / "out.parquet"),
                "--no-mlflow"]
    return args


def broken_index(edit: Callable[[Path], None]):
    def args(world, d):
        index = d / "items.index"
        shutil.copytree(world["index"], index)
        edit(index)
        return ["index", "query", "--model-dir", str(world["model"]), "--index", str(index), "--items", "1,2"]
    return args


def truncate(path: Path, keep: int = 64) -> None:
    path.write_bytes(path.read_bytes()[:keep])


def wrong_shape_weights(model: Path, world) -> None:
    from safetensors.torch import load_file, save_file

    state = load_file(model / "model.safetensors")
    key = next(k for k in state if k.endswith("item.weight"))
    state[key] = state[key][:-3]
    save_file(state, model / "model.safetensors")


def duplicated_vocabulary(model: Path, world) -> None:
    vocab = pl.read_parquet(model / "vocab.parquet")
    pl.concat([vocab.head(len(vocab) - 5), vocab.head(5)]).write_parquet(model / "vocab.parquet")


def smaller_vocabulary(model: Path, world) -> None:
    pl.read_parquet(model / "vocab.parquet").head(10).write_parquet(model / "vocab.parquet")


def edit_sidecar(index: Path) -> None:
    sidecar = next(p for p in index.iterdir() if p.suffix == ".json")
    sidecar.write_text(sidecar.read_text().replace('"sha256": "', '"sha256": "0', 1))


def flip_index_bytes(index: Path) -> None:
    data = next(p for p in index.iterdir() if p.suffix != ".json")
    raw = bytearray(data.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    data.write_bytes(bytes(raw))


CASES = [
    # events: structure
    Case("missing column", events_with(lambda df: df.drop("item_id")), "item_id"),
    Case("renamed column", events_with(lambda df: df.rename({"user_id": "user"})), "user_id"),
    Case("timestamp as text", events_with(lambda df: df.with_columns(pl.lit("noon").alias("timestamp"))),
         "timestamp"),
    Case("float item ids", events_with(lambda df: df.with_columns((pl.col("item_id") + 0.5).alias("item_id"))),
         "item_id"),
    Case("boolean user ids", events_with(lambda df: df.with_columns((pl.col("user_id") > 3).alias("user_id"))),
         "user_id"),
    Case("nulls in user_id", events_with(lambda df: df.with_columns(
        pl.when(pl.int_range(pl.len()) < 7).then(None).otherwise(pl.col("user_id")).alias("user_id"))), "7"),
    Case("nulls in item_id", events_with(lambda df: df.with_columns(
        pl.when(pl.int_range(pl.len()) < 3).then(None).otherwise(pl.col("item_id")).alias("item_id"))), "item_id"),
    Case("nulls in timestamp", events_with(lambda df: df.with_columns(
        pl.when(pl.int_range(pl.len()) < 2).then(None).otherwise(pl.col("timestamp")).alias("timestamp"))),
         "timestamp"),
    Case("empty file", events_with(lambda df: df.head(0)), "events.parquet"),
    Case("not parquet", train_on_file(lambda p: p.write_text("user_id,item_id\n1,2\n")), "events.parquet"),
    Case("truncated parquet", train_on_file(lambda p: (cyclic_events(n_users=50).write_parquet(p), truncate(p, 200))),
         "events.parquet"),
    Case("missing file", lambda w, d: ["train", "--events", str(d / "nope.parquet"), "--no-mlflow", *TINY],
         "nope.parquet"),
    Case("folder without parquet", train_on_file(lambda p: (p.mkdir(), (p / "x.txt").write_text("x")), "folder"),
         "folder"),
    Case("only 1-event users", events_with(lambda df: df.unique("user_id", keep="first")), "2 events"),
    Case("infinite timestamps", events_with(lambda df: df.with_columns(
        pl.when(pl.int_range(pl.len()) == 0).then(float("inf")).otherwise(pl.col("timestamp").cast(pl.Float64))
        .alias("timestamp"))), "timestamp"),
    # configs
    Case("unknown config key", train_with("train.epoch=3"), "train.epoch"),
    Case("unknown section", train_with("trian.epochs=3"), "trian"),
    Case("wrong value type", train_with("train.epochs=many"), "train.epochs"),
    Case("hidden not divisible by heads", train_with("model.hidden=30", "model.heads=4"), "heads"),
    Case("max_len <= 0", train_with("model.max_len=0"), "max_len"),
    Case("negative learning rate", train_with("train.lr=-1"), "lr"),
    Case("unknown objective", train_with("train.objective=magic"), "magic"),
    Case("config file missing", lambda w, d: ["train", "-c", str(d / "none.toml"), "--no-mlflow"], "none.toml"),
    Case("config file not TOML", lambda w, d: ((d / "bad.toml").write_text("[train\nepochs = 3"),
                                               ["train", "-c", str(d / "bad.toml"), "--no-mlflow"])[1], "bad.toml"),
    # model directories
    Case("truncated safetensors", broken_model(lambda m, w: truncate(m / "model.safetensors")),
         "model.safetensors does not match its checksum"),
    Case("weights changed after saving", broken_model(wrong_shape_weights), "does not match its checksum"),
    Case("truncated safetensors, no checksums", broken_model(lambda m, w: truncate(m / "model.safetensors"),
                                                            checksums=False), "not a readable safetensors"),
    Case("wrong-shape safetensors", broken_model(wrong_shape_weights, checksums=False), "has shape (40, 16)"),
    Case("vocabulary with repeated ids", broken_model(duplicated_vocabulary, checksums=False), "must be unique"),
    Case("vocabulary of another model", broken_model(smaller_vocabulary, checksums=False), "vocabulary has"),
    Case("config.json not JSON", broken_model(lambda m, w: (m / "config.json").write_text("{"), checksums=False),
         "config.json is not valid JSON"),
    Case("model dir missing weights", broken_model(lambda m, w: (m / "model.safetensors").unlink(), "export"),
         "model.safetensors", out="out.parquet"),
    # indexes
    Case("index sidecar checksum differs", broken_index(edit_sidecar), "checksum"),
    Case("index file corrupted", broken_index(flip_index_bytes), "checksum"),
    # recommend
    Case("k = 0", lambda w, d: ["recommend", "--model-dir", str(w["model"]), "--items", "1,2", "-k", "0"], "k=0"),
    Case("k > catalogue", lambda w, d: ["recommend", "--model-dir", str(w["model"]), "--items", "1", "-k", "999"],
         "k=999"),
    Case("empty item list", lambda w, d: ["recommend", "--model-dir", str(w["model"]), "--items", ""], "--items"),
    Case("only separators", lambda w, d: ["recommend", "--model-dir", str(w["model"]), "--items", " , ,"], "--items"),
    Case("text ids for an integer model", lambda w, d: ["recommend", "--model-dir", str(w["model"]),
                                                        "--items", "a,b"], "not integers"),
    # outputs
    Case("output under a file", lambda w, d: ((d / "file").write_text("x"),
                                              ["export", "--model-dir", str(w["model"]), "--what", "items", "--out",
                                               str(d / "file" / "out.parquet"), "--no-mlflow"])[1], "file"),
    Case("resume a corrupt checkpoint", lambda w, d: ((d / "ckpt-00000001.pt").write_bytes(b"junk"),
                                                      ["train", "--resume", str(d / "ckpt-00000001.pt")])[1],
         "ckpt-00000001.pt"),
]


def run_case(case: Case, world: dict, d: Path, capsys) -> str:
    args = case.args(world, d)
    before = {p: p.read_bytes() for p in world["root"].rglob("*") if p.is_file()}
    code = main(["-q", *args])
    out = capsys.readouterr()
    lines = [line for line in out.err.splitlines() if line.startswith("error:")]
    assert code != 0, f"{case.name}: exit 0\n{out.out}"
    assert len(lines) == 1 and "Traceback" not in out.err, f"{case.name}: {out.err}"
    assert case.message in lines[0], f"{case.name}: {lines[0]!r} does not name {case.message!r}"
    if case.out:
        assert not (d / case.out).exists(), f"{case.name}: partial output"
    assert not [p for p in d.rglob(".*.tmp")], f"{case.name}: a temporary file was left"
    after = {p: p.read_bytes() for p in world["root"].rglob("*") if p.is_file()}
    assert {p: after.get(p) for p in before} == before, f"{case.name}: an earlier file changed"
    return lines[0]


def test_the_catalogue_has_thirty_cases_or_more():
    assert len(CASES) >= 30 and len({c.name for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_input_gets_one_line(case, world, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run_case(case, world, tmp_path, capsys)


@pytest.mark.parametrize("name", ["missing column", "truncated safetensors", "unknown config key", "empty item list"])
def test_as_a_subprocess_no_traceback_and_exit_2(name, world, tmp_path):
    case = next(c for c in CASES if c.name == name)
    args = case.args(world, tmp_path)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-m", "recbert.cli", "-q", *args], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 2, done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert "Traceback" not in done.stderr and lines[-1].startswith("error:") and case.message in lines[-1], \
        done.stderr


def test_a_full_disk_leaves_the_previous_output_whole(world, tmp_path, capsys, monkeypatch):
    import pyarrow.parquet as pq

    monkeypatch.chdir(tmp_path)
    out = tmp_path / "items.parquet"
    args = ["-q", "export", "--model-dir", str(world["model"]), "--what", "items", "--out", str(out), "--no-mlflow"]
    assert main(args) == 0
    previous = out.read_bytes()
    capsys.readouterr()

    def full(self, *a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(pq.ParquetWriter, "write_table", full)
    assert main(args) != 0
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "No space left on device" in lines[0] and "Traceback" not in err, err
    assert out.read_bytes() == previous and not list(tmp_path.glob(".*.tmp"))


@pytest.mark.parametrize("transform,ok", [
    (lambda df: df.with_columns((-pl.col("item_id") - 1).alias("item_id")), "negative ids"),
    (lambda df: df.with_columns((pl.col("item_id") + 2**62).alias("item_id")), "huge ids"),
    (lambda df: df.reverse(), "unsorted events"),
    (lambda df: pl.concat([df, df.head(50)]), "duplicate events"),
    (lambda df: df.with_columns(pl.from_epoch("timestamp", "s").dt.replace_time_zone("Europe/Berlin")), "tz"),
])
def test_odd_but_valid_events_train(transform, ok, world, tmp_path, capsys):
    path = tmp_path / "events.parquet"
    transform(pl.read_parquet(world["events"])).write_parquet(path)
    code = main(["-q", "train", "--events", str(path), "--no-mlflow", *TINY, "--set", f"out_dir={tmp_path}"])
    assert code == 0, (ok, capsys.readouterr().err)


def test_a_user_with_100k_events_trains_in_windows(tmp_path, capsys):
    base = cyclic_events(n_users=60, n_items=40)
    n = 100_000
    heavy = pl.DataFrame({"user_id": np.full(n, 10_000), "item_id": np.arange(n) % 40,
                          "timestamp": np.arange(n, dtype=np.int64) + 5_000_000})
    path = tmp_path / "events.parquet"
    pl.concat([base, heavy]).write_parquet(path)
    code = main(["-q", "train", "--events", str(path), "--no-mlflow", *TINY, "--set", f"out_dir={tmp_path}",
                 "--set", "data.window_stride=4096"])
    assert code == 0, capsys.readouterr().err


def test_python_api_raises_the_same_one_line_errors(world, tmp_path):
    from recbert.data.events import load_events
    from recbert.errors import CheckpointError, ConfigError, DataError, RecbertError
    from recbert.model.recommender import SequenceRecommender

    bad = tmp_path / "events.parquet"
    pl.read_parquet(world["events"]).drop("timestamp").write_parquet(bad)
    with pytest.raises(DataError, match="timestamp"):
        load_events(bad)
    with pytest.raises(CheckpointError, match="has no config.json"):
        SequenceRecommender.from_pretrained(tmp_path)
    from recbert.config import RunConfig

    with pytest.raises(ConfigError, match="train.epoch"):
        RunConfig.load(None, ["train.epoch=3"])
    model = SequenceRecommender.from_pretrained(world["model"])
    with pytest.raises(RecbertError, match="k=0"):
        model.recommend([[1, 2]], k=0)
    ids, _ = model.recommend([[], [1, 2]], k=3)  # an empty history is a cold user, not an error
    assert ids.shape == (2, 3) and all(i is not None for i in ids[0])
