"""Importers on the real MovieLens-100K and S3-Rec Beauty files, bad inputs,
and the all-or-nothing output folder."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from recbert.data.events import load_events
from recbert.data.importers import ML_GENRES, import_movielens_100k, import_s3rec
from recbert.errors import DataError, OutputError

SHARED = Path(__file__).resolve().parents[2] / ".." / "shared" / "data"
ML = SHARED / "ml-100k"
BEAUTY = SHARED / "beauty"


def need(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"real dataset {path.resolve()} is absent (expected beside the repository in ../shared/data)")
    return path


@pytest.fixture(scope="module")
def ml_out(tmp_path_factory):
    need(ML / "u.data")
    out = tmp_path_factory.mktemp("ml") / "ml-100k"
    counts = import_movielens_100k(ML, out)
    return out, counts


@pytest.fixture(scope="module")
def beauty_out(tmp_path_factory):
    need(BEAUTY / "Beauty.txt")
    need(BEAUTY / "Beauty_item2attributes.json")
    out = tmp_path_factory.mktemp("beauty") / "beauty"
    counts = import_s3rec(BEAUTY / "Beauty.txt", out, BEAUTY / "Beauty_item2attributes.json")
    return out, counts


def test_movielens_counts(ml_out):
    out, counts = ml_out
    assert counts == {"events": 100_000, "items": 1682, "users": 943}
    assert sorted(p.name for p in out.iterdir()) == ["events.parquet", "items.parquet", "users.parquet"]
    assert [p.name for p in out.parent.iterdir()] == [out.name]  # no temp folders beside it
    ev = pl.read_parquet(out / "events.parquet")
    assert ev.columns == ["user_id", "item_id", "timestamp", "rating"]
    assert ev["user_id"].n_unique() == 943 and ev["item_id"].n_unique() == 1682
    assert ev["rating"].min() == 1 and ev["rating"].max() == 5
    # the output is a valid canonical events table
    assert load_events(out / "events.parquet").height == 100_000


def test_movielens_events_match_u_data(ml_out):
    out, _ = ml_out
    raw = np.loadtxt(ML / "u.data", dtype=np.int64)
    ev = pl.read_parquet(out / "events.parquet")
    np.testing.assert_array_equal(ev["user_id"].to_numpy(), raw[:, 0])
    np.testing.assert_array_equal(ev["item_id"].to_numpy(), raw[:, 1])
    np.testing.assert_array_equal(ev["rating"].to_numpy(), raw[:, 2])
    np.testing.assert_array_equal(ev["timestamp"].to_numpy(), raw[:, 3])


def test_movielens_users_skip_blank_line(ml_out):
    out, _ = ml_out
    assert (ML / "u.user").read_text().startswith("\n")  # the quirk this test is about
    users = pl.read_parquet(out / "users.parquet")
    assert users.height == 943
    assert users["user_id"].to_list() == list(range(1, 944))
    assert users.null_count().row(0) == (0,) * users.width
    first = users.row(0, named=True)
    assert first == {"user_id": 1, "age": 24, "gender": "M", "occupation": "technician", "zip": "85711"}


def test_movielens_items_have_genre_lists(ml_out):
    out, _ = ml_out
    items = pl.read_parquet(out / "items.parquet")
    assert items.height == 1682
    assert items.schema["genres"] == pl.List(pl.String)
    by_id = dict(zip(items["item_id"].to_list(), items["genres"].to_list()))
    assert by_id[1] == ["Animation", "Children's", "Comedy"]
    assert items.filter(pl.col("item_id") == 1)["title"].item() == "Toy Story (1995)"
    # every item's list agrees with the 19 flag columns of u.item
    for line in (ML / "u.item").read_text(encoding="latin-1").splitlines():
        if not line.strip():
            continue
        f = line.split("|")
        flags = f[-19:]
        assert by_id[int(f[0])] == [g for g, x in zip(ML_GENRES, flags) if x == "1"]


def test_s3rec_counts_and_attributes(beauty_out):
    out, counts = beauty_out
    assert counts == {"events": 198_502, "items": 12_101}
    ev = pl.read_parquet(out / "events.parquet")
    assert ev["user_id"].n_unique() == 22_363
    assert ev["item_id"].n_unique() == 12_101
    assert ev.schema == {"user_id": pl.Int64, "item_id": pl.Int64, "timestamp": pl.Int64}
    items = pl.read_parquet(out / "items.parquet")
    mapping = json.loads((BEAUTY / "Beauty_item2attributes.json").read_text())
    assert items.height == len(mapping) == 12_101
    assert items["item_id"].is_sorted()
    attrs = dict(zip(items["item_id"].to_list(), items["attributes"].to_list()))
    for key in list(mapping)[:200]:
        assert attrs[int(key)] == mapping[key]
    assert attrs[4] == [1, 2, 3]


def test_s3rec_timestamps_are_positions_and_order_kept(beauty_out):
    out, _ = beauty_out
    ev = pl.read_parquet(out / "events.parquet")
    lines = (BEAUTY / "Beauty.txt").read_text().split("\n")
    expected_u, expected_i, expected_t = [], [], []
    for line in lines:
        tok = line.split()
        if not tok:
            continue
        items = [int(x) for x in tok[1:]]
        expected_u += [int(tok[0])] * len(items)
        expected_i += items
        expected_t += list(range(len(items)))
    np.testing.assert_array_equal(ev["user_id"].to_numpy(), expected_u)
    np.testing.assert_array_equal(ev["item_id"].to_numpy(), expected_i)
    np.testing.assert_array_equal(ev["timestamp"].to_numpy(), expected_t)
    # spelled out on the first lines of the file
    first = lines[0].split()
    user1 = ev.filter(pl.col("user_id") == int(first[0])).sort("timestamp")
    assert user1["item_id"].to_list() == [int(x) for x in first[1:]]
    assert user1["timestamp"].to_list() == list(range(len(first) - 1))


def write_ml(folder: Path, data: str = "1\t10\t5\t100\n2\t20\t3\t200\n", user: str = "1|24|M|x|1\n2|30|F|y|2\n",
             item: str | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    flags = "|".join(["0"] * 18 + ["1"])
    item = item if item is not None else f"10|A|01-Jan-1995||u|{flags}\n20|B|01-Jan-1995||u|{flags}\n"
    (folder / "u.data").write_text(data)
    (folder / "u.user").write_text(user)
    (folder / "u.item").write_text(item)
    return folder


def test_movielens_small_copy_and_missing_file(tmp_path):
    src = write_ml(tmp_path / "src")
    counts = import_movielens_100k(src, tmp_path / "out" / "ml")
    assert counts == {"events": 2, "items": 2, "users": 2}
    assert pl.read_parquet(tmp_path / "out" / "ml" / "items.parquet")["genres"].to_list() == [["Western"]] * 2
    (src / "u.user").unlink()
    with pytest.raises(DataError, match="u.user"):
        import_movielens_100k(src, tmp_path / "out2")
    assert not (tmp_path / "out2").exists()


def test_movielens_non_integer_ids(tmp_path):
    src = write_ml(tmp_path / "src", data="1\t10\t5\t100\nabc\t20\t3\t200\n")
    with pytest.raises(DataError, match="MovieLens-100K format"):
        import_movielens_100k(src, tmp_path / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]


def test_s3rec_bad_inputs(tmp_path):
    with pytest.raises(DataError, match="missing"):
        import_s3rec(tmp_path / "nope.txt", tmp_path / "o1")
    bad_ids = tmp_path / "bad_ids.txt"
    bad_ids.write_text("1 2 3\n2 x 4\n")
    with pytest.raises(DataError, match="integers"):
        import_s3rec(bad_ids, tmp_path / "o2")
    bad_user = tmp_path / "bad_user.txt"
    bad_user.write_text("u1 2 3\n")
    with pytest.raises(DataError, match="integers"):
        import_s3rec(bad_user, tmp_path / "o3")
    no_items = tmp_path / "no_items.txt"
    no_items.write_text("1 2 3\n7\n2 4 5\n")
    with pytest.raises(DataError, match=r"1 line\(s\) hold a user id but no items"):
        import_s3rec(no_items, tmp_path / "o4")
    good = tmp_path / "good.txt"
    good.write_text("1 2 3\n")
    with pytest.raises(DataError, match="missing"):
        import_s3rec(good, tmp_path / "o5", attributes=tmp_path / "absent.json")
    bad_json = tmp_path / "attrs.json"
    bad_json.write_text("{1: [")
    with pytest.raises(DataError, match="not valid JSON"):
        import_s3rec(good, tmp_path / "o6", attributes=bad_json)
    assert not any((tmp_path / f"o{i}").exists() for i in range(1, 7))
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_failing_write_leaves_no_folder(tmp_path, monkeypatch):
    src = tmp_path / "s.txt"
    src.write_text("1 2 3\n2 3 4\n")
    attrs = tmp_path / "a.json"
    attrs.write_text('{"2": [1], "3": [2], "4": [1, 2]}')
    real_write = pl.DataFrame.write_parquet
    written = []

    def failing_write(self, file, *args, **kwargs):
        if Path(file).name == "items.parquet":  # after events.parquet was written
            raise OSError("disk full")
        written.append(Path(file))
        return real_write(self, file, *args, **kwargs)

    monkeypatch.setattr(pl.DataFrame, "write_parquet", failing_write)
    out = tmp_path / "dest" / "beauty"
    with pytest.raises(OutputError, match="disk full"):
        import_s3rec(src, out, attrs)
    assert written and written[0].name == "events.parquet"
    assert not out.exists()
    assert list(out.parent.iterdir()) == []  # the temp folder is gone too


def test_reimport_replaces_whole_and_failed_reimport_keeps_old(tmp_path, monkeypatch):
    src = tmp_path / "s.txt"
    src.write_text("1 2 3\n")
    out = tmp_path / "dest" / "d"
    import_s3rec(src, out)
    (out / "stale.txt").write_text("from an older import")
    src.write_text("1 2 3 4\n5 6 7\n")
    assert import_s3rec(src, out) == {"events": 5}
    assert sorted(p.name for p in out.iterdir()) == ["events.parquet"]
    assert [p.name for p in out.parent.iterdir()] == ["d"]  # no .tmp / .old leftovers

    monkeypatch.setattr(pl.DataFrame, "write_parquet", lambda self, *a, **k: (_ for _ in ()).throw(OSError("boom")))
    src.write_text("9 9\n")
    with pytest.raises(OutputError, match="boom"):
        import_s3rec(src, out)
    monkeypatch.undo()
    assert pl.read_parquet(out / "events.parquet").height == 5  # previous import intact
    assert [p.name for p in out.parent.iterdir()] == ["d"]
