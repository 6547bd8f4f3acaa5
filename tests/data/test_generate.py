"""Synthetic event logs: determinism, layout, realism (popularity, sessions, lengths),
the learnable successor pattern, loading back, training on them, and bad configs."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from recbert.cli import main
from recbert.data import generate as gen
from recbert.data.events import load_events
from recbert.data.generate import GeneratorConfig, generate_events, load_successors, successor_pairs
from recbert.errors import ConfigError

SMALL = GeneratorConfig(n_users=600, n_events=None, n_items=2000, n_categories=20, n_partitions=4,
                        rows_per_file=3000, seed=7)


@pytest.fixture(scope="module")
def generated(tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("gen") / "log"
    return out, generate_events(out, SMALL)


def files_by_partition(out: Path) -> pl.DataFrame:
    """Every event with the partition number of the folder its file is in, in file order."""
    return pl.concat([pl.read_parquet(f).with_columns(pl.lit(int(f.parent.name.split("=")[1])).alias("part"))
                      for f in sorted((out / "events").rglob("*.parquet"))])


def tree(folder: Path) -> dict[Path, bytes]:
    """Every file below ``folder``: relative path -> bytes."""
    return {p.relative_to(folder): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def test_same_seed_same_files_other_seed_other_log(generated, tmp_path):
    out, _ = generated
    generate_events(tmp_path / "again", SMALL)
    assert tree(tmp_path / "again") == tree(out)
    other = generate_events(tmp_path / "other", replace(SMALL, seed=8))
    assert not load_events(out / "events").equals(load_events(tmp_path / "other" / "events"))
    assert other["config"]["seed"] == 8


def test_counts_schema_and_metadata(generated):
    out, meta = generated
    events = files_by_partition(out)
    assert events.drop("part").schema == {"user_id": pl.Int64, "item_id": pl.Int64, "timestamp": pl.Int64}
    assert meta["n_events"] == events.height and meta["n_users"] == SMALL.n_users == events["user_id"].n_unique()
    assert events["user_id"].min() == 1 and events["user_id"].max() == SMALL.n_users
    assert meta["n_files"] == len(list((out / "events").rglob("*.parquet")))
    items = pl.read_parquet(out / "items.parquet")
    assert items.schema == {"item_id": pl.Int64, "category": pl.Int64}
    assert items["item_id"].to_list() == list(range(1, SMALL.n_items + 1))
    assert items["category"].n_unique() == SMALL.n_categories == meta["n_categories"]
    assert events["item_id"].is_in(items["item_id"].implode()).all()
    assert json.loads((out / "generator.json").read_text()) == meta
    assert meta["config"]["n_items"] == SMALL.n_items and meta["pattern"]["file"] == "successors.parquet"


def test_users_whole_in_one_partition_with_increasing_timestamps(generated):
    out, _ = generated
    events = files_by_partition(out)
    assert (events["part"] == events["user_id"] % SMALL.n_partitions).all()
    assert events.group_by("user_id").agg(pl.col("part").n_unique())["part"].max() == 1
    steps = events.select(pl.col("timestamp").diff().over("user_id").alias("step"))["step"].drop_nulls()
    assert steps.min() >= 1  # strictly increasing in file order
    assert events["timestamp"].min() >= SMALL.start_time


def test_sessions_gaps_within_are_much_shorter_than_between(generated):
    out, _ = generated
    events = files_by_partition(out)
    gaps = events.select(pl.col("timestamp").diff().over("user_id"))["timestamp"].drop_nulls().to_numpy()
    within, between = gaps[gaps < 3600], gaps[gaps >= 3600]
    assert len(between) / len(gaps) == pytest.approx(1 / SMALL.mean_session, abs=0.05)
    assert np.median(between) > 100 * np.median(within)


def test_history_lengths_heavy_tailed_with_mean_and_minimum(generated):
    out, _ = generated
    lengths = files_by_partition(out).group_by("user_id").len()["len"].to_numpy()
    assert lengths.min() >= SMALL.min_history
    assert lengths.mean() == pytest.approx(SMALL.mean_history, rel=0.25)
    assert lengths.max() > 5 * SMALL.mean_history and np.median(lengths) < SMALL.mean_history


def test_popularity_is_heavy_tailed(generated):
    out, _ = generated
    counts = np.sort(files_by_partition(out)["item_id"].value_counts()["count"].to_numpy())[::-1]
    top = counts[: SMALL.n_items // 100].sum() / counts.sum()
    assert top > 0.2  # uniform popularity would give 0.01


@pytest.mark.parametrize("prob", [0.2, 0.8])
def test_successor_pattern_holds_at_the_configured_rate(tmp_path, prob):
    cfg = replace(SMALL, pattern_prob=prob)
    meta = generate_events(tmp_path / "log", cfg)
    events = load_events(tmp_path / "log" / "events").sort("user_id", "timestamp")
    successor = load_successors(tmp_path / "log")
    hits, pairs = successor_pairs(events["user_id"].to_numpy(), events["item_id"].to_numpy(), successor)
    assert hits / pairs == pytest.approx(prob, abs=0.03)
    assert meta["pattern"]["share_of_pairs"] == pytest.approx(hits / pairs)
    assert meta["pattern"]["probability"] == prob


def test_successors_are_other_items_of_the_same_category(generated):
    out, _ = generated
    items = pl.read_parquet(out / "items.parquet")
    succ = pl.read_parquet(out / "successors.parquet").join(items, left_on="successor", right_on="item_id")
    both = succ.join(items, on="item_id", suffix="_of_item")
    assert (both["item_id"] != both["successor"]).all()
    assert (both["category"] == both["category_of_item"]).all()
    assert both["successor"].n_unique() > SMALL.n_items / 2  # spread over the catalogue, not the popular items


def test_folder_round_trips_through_load_events(generated):
    out, meta = generated
    loaded = load_events(out / "events")
    assert loaded.columns == ["user_id", "item_id", "timestamp"] and loaded.height == meta["n_events"]
    assert loaded.sort(loaded.columns).equals(files_by_partition(out).drop("part").sort(loaded.columns))


def test_files_hold_whole_users_about_rows_per_file(tmp_path):
    cfg = replace(SMALL, rows_per_file=400, n_partitions=2)
    meta = generate_events(tmp_path / "log", cfg)
    sizes = [pl.read_parquet(f)["user_id"].n_unique() for f in (tmp_path / "log" / "events").rglob("*.parquet")]
    assert max(sizes) == cfg.users_per_file == 400 // 20
    assert meta["n_files"] == len(sizes) == 2 * -(-(SMALL.n_users // 2) // cfg.users_per_file)


def test_n_events_sets_the_number_of_users(tmp_path):
    meta = generate_events(tmp_path / "log", GeneratorConfig(n_events=5000, n_items=500, n_categories=10))
    assert meta["n_users"] == 5000 // 20
    assert meta["n_events"] == pytest.approx(5000, rel=0.3)


def test_written_atomically(tmp_path, monkeypatch):
    out = tmp_path / "log"
    generate_events(out, SMALL)
    before = load_events(out / "events")

    def fail(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(gen, "_write_catalogue", fail)
    with pytest.raises(RuntimeError, match="disk full"):
        generate_events(out, replace(SMALL, seed=99))
    assert load_events(out / "events").equals(before)  # the old folder is intact
    assert [p.name for p in tmp_path.iterdir()] == ["log"]  # no temporary folder left behind


@pytest.mark.parametrize("changes, field", [
    ({"n_items": 1}, "n_items"),
    ({"pattern_prob": 1.5}, "pattern_prob"),
    ({"zipf_exponent": -1}, "zipf_exponent"),
    ({"min_history": 30, "mean_history": 20}, "mean_history"),
    ({"history_tail": 1.0}, "history_tail"),
    ({"session_gap": 10.0, "event_gap": 60.0}, "session_gap"),
    ({"n_categories": 1500}, "n_categories"),
    ({"n_partitions": 0}, "n_partitions"),
    ({"n_users": 0, "n_events": None}, "n_users"),
    ({"n_users": 10, "n_events": 10}, "n_users and n_events"),
])
def test_bad_config_names_the_field(changes, field):
    with pytest.raises(ConfigError) as exc:
        GeneratorConfig(**{"n_items": 2000, **changes})
    assert field in str(exc.value) and "\n" not in str(exc.value)


def test_cli_generate_then_train_end_to_end(tmp_path, capsys):
    from tests.jobs.test_train import FAST, run_cli

    out = tmp_path / "log"
    code, stdout, err = run_cli(["-q", "generate", str(out), "--users", "300", "--items", "80", "--seed", "3",
                                 "--set", "n_categories=8", "--set", "pattern_prob=0.9"], capsys)
    assert code == 0, err
    assert stdout.startswith(f"wrote {out}: users 300, events ") and len(stdout.splitlines()) == 1
    code, stdout, err = run_cli(["-q", "train", "--no-mlflow", "--events", str(out / "events"), *FAST,
                                 "--set", f"out_dir={tmp_path / 'runs'}",
                                 "--set", f"data.item_features={out / 'items.parquet'}",
                                 "--set", "data.item_feature_columns=category"], capsys)
    assert code == 0, err
    hr10 = float(stdout.splitlines()[2].split("|")[6])  # 'all' row, hr@10 column
    assert hr10 > 0.5  # the successor pattern is learnt (popularity alone: about 0.2)


def test_cli_generate_bad_value_is_one_line(tmp_path, capsys):
    assert main(["generate", str(tmp_path / "log"), "--set", "pattern_prob=2"]) == 2
    err = capsys.readouterr().err
    assert err.strip() == "error: GeneratorConfig.pattern_prob=2.0 must be in [0, 1]"
    assert not (tmp_path / "log").exists()
