"""load_events: sources, id and time types, and the one-line error messages."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd
import polars as pl
import pytest

from recbert.data.events import load_events
from recbert.errors import DataError

ROWS = {"user_id": [1, 1, 2, 3, 2], "item_id": [10, 11, 10, 12, 13], "timestamp": [5, 6, 1, 2, 3]}


def test_load_parquet_file_keeps_file_order_and_types(tmp_path):
    path = tmp_path / "events.parquet"
    pl.DataFrame(ROWS, schema={"user_id": pl.Int32, "item_id": pl.UInt16, "timestamp": pl.Int64}).write_parquet(path)
    df = load_events(path)
    assert df.columns == ["user_id", "item_id", "timestamp"]
    assert df.schema == {"user_id": pl.Int64, "item_id": pl.Int64, "timestamp": pl.Int64}
    assert df.to_dict(as_series=False) == ROWS


def test_load_folder_of_parquet_files(tmp_path):
    folder = tmp_path / "parts"
    (folder / "sub").mkdir(parents=True)
    pl.DataFrame({"user_id": [1, 2], "item_id": [10, 20], "timestamp": [1, 2]}).write_parquet(folder / "a.parquet")
    pl.DataFrame({"user_id": [3], "item_id": [30], "timestamp": [3]}).write_parquet(folder / "b.parquet")
    pl.DataFrame({"user_id": [4], "item_id": [40], "timestamp": [4]}).write_parquet(folder / "sub" / "c.parquet")
    (folder / "notes.txt").write_text("not parquet")
    df = load_events(folder)
    assert df["user_id"].to_list() == [1, 2, 3, 4]
    assert df["item_id"].to_list() == [10, 20, 30, 40]


def test_empty_folder_and_missing_path(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no .parquet files"):
        load_events(tmp_path / "empty")
    with pytest.raises(DataError, match="does not exist"):
        load_events(tmp_path / "nope.parquet")


def write_hive_folder(folder, frame, n_parts=3):
    """``frame`` split by ``user_id % n_parts`` into ``folder/part=P/data.parquet``."""
    for (part,), rows in frame.group_by(pl.col("user_id") % n_parts):
        (folder / f"part={part}").mkdir(parents=True)
        rows.write_parquet(folder / f"part={part}" / "data.parquet")


def test_hive_partitioned_folder_equals_the_single_file(tmp_path):
    frame = pl.DataFrame({"user_id": [1, 2, 3, 4, 5, 6], "item_id": [7, 8, 9, 7, 8, 9],
                          "timestamp": [1, 2, 3, 4, 5, 6], "rating": [1, 2, 3, 4, 5, 1]})
    frame.write_parquet(tmp_path / "events.parquet")
    write_hive_folder(tmp_path / "events", frame)
    single, folder = load_events(tmp_path / "events.parquet"), load_events(tmp_path / "events")
    assert folder.columns == ["user_id", "item_id", "timestamp"]  # no partition column
    assert folder.sort("user_id").equals(single.sort("user_id"))
    with pytest.raises(DataError, match=r"missing column\(s\) \['part'\]"):
        load_events(tmp_path / "events", user_col="part")  # partition keys are not columns


def test_folder_with_mixed_schemas_names_the_file(tmp_path):
    folder = tmp_path / "parts"
    folder.mkdir()
    pl.DataFrame(ROWS).write_parquet(folder / "a.parquet")
    pl.DataFrame({**ROWS, "item_id": [str(i) for i in ROWS["item_id"]]}).write_parquet(folder / "b.parquet")
    with pytest.raises(DataError) as exc:
        load_events(folder)
    msg = str(exc.value)
    assert str(folder / "b.parquet") in msg and "'item_id' is String, not Int64" in msg
    (folder / "b.parquet").unlink()
    pl.DataFrame({**ROWS, "rating": [1] * 5}).write_parquet(folder / "c.parquet")
    with pytest.raises(DataError, match=r"c\.parquet .*extra column\(s\) \['rating'\]"):
        load_events(folder)


def test_folder_without_parquet_files_and_with_an_unreadable_one(tmp_path):
    folder = tmp_path / "parts"
    (folder / "part=0").mkdir(parents=True)
    (folder / "part=0" / "notes.txt").write_text("not parquet")
    with pytest.raises(DataError, match=f"events folder {folder} holds no .parquet files"):
        load_events(folder)
    pl.DataFrame(ROWS).write_parquet(folder / "part=0" / "a.parquet")
    (folder / "part=0" / "b.parquet").write_bytes(b"not parquet")
    with pytest.raises(DataError, match=r"part=0/b\.parquet is not a readable parquet file"):
        load_events(folder)


def test_unreadable_file(tmp_path):
    bad = tmp_path / "bad.parquet"
    bad.write_bytes(b"this is not parquet at all")
    with pytest.raises(DataError, match="bad.parquet"):
        load_events(bad)


def test_pandas_and_polars_dataframes():
    expected = ROWS
    assert load_events(pl.DataFrame(ROWS)).to_dict(as_series=False) == expected
    assert load_events(pl.DataFrame(ROWS).lazy()).to_dict(as_series=False) == expected
    assert load_events(pd.DataFrame(ROWS)).to_dict(as_series=False) == expected
    with pytest.raises(DataError, match="parquet path or a DataFrame"):
        load_events([1, 2, 3])


def test_string_ids():
    df = load_events(pd.DataFrame({"user_id": ["u1", "u2"], "item_id": ["A", "b"], "timestamp": [1, 2]}))
    assert df.schema["user_id"] == pl.String and df.schema["item_id"] == pl.String
    assert df["item_id"].to_list() == ["A", "b"]
    cat = pl.DataFrame({"user_id": ["x", "y"], "item_id": ["p", "q"], "timestamp": [1, 2]}).with_columns(
        pl.col("item_id").cast(pl.Categorical))
    out = load_events(cat)
    assert out.schema["item_id"] == pl.String and out["item_id"].to_list() == ["p", "q"]


def test_datetime_and_date_timestamps_become_epoch_microseconds():
    t0 = dt.datetime(2020, 1, 1, 12, 0, 0)
    t1 = dt.datetime(2020, 1, 1, 12, 0, 1, 500)
    epoch = dt.datetime(1970, 1, 1)
    us = [int((t - epoch) / dt.timedelta(microseconds=1)) for t in (t0, t1)]
    pdf = pd.DataFrame({"user_id": [1, 1], "item_id": [1, 2], "timestamp": pd.to_datetime([t0, t1])})
    assert load_events(pdf)["timestamp"].to_list() == us
    plf = pl.DataFrame({"user_id": [1, 1], "item_id": [1, 2], "timestamp": [t0, t1]},
                       schema_overrides={"timestamp": pl.Datetime("ms")})
    # millisecond precision drops the 500 us
    assert load_events(plf)["timestamp"].to_list() == [us[0], us[0] + 1_000_000]
    dates = pl.DataFrame({"user_id": [1, 1], "item_id": [1, 2], "timestamp": [dt.date(1970, 1, 2), dt.date(1970, 1, 1)]})
    assert load_events(dates)["timestamp"].to_list() == [86_400 * 10**6, 0]


def test_float_timestamps_kept_and_non_finite_rejected():
    df = load_events(pl.DataFrame({"user_id": [1, 1], "item_id": [1, 2], "timestamp": [0.5, 1.25]}))
    assert df.schema["timestamp"] == pl.Float64 and df["timestamp"].to_list() == [0.5, 1.25]
    with pytest.raises(DataError, match=r"1 non-finite value\(s\) in column 'timestamp'"):
        load_events(pl.DataFrame({"user_id": [1, 1], "item_id": [1, 2], "timestamp": [0.5, float("inf")]}))


def test_missing_columns_error_names_file_and_columns(tmp_path):
    path = tmp_path / "ev.parquet"
    pl.DataFrame({"user": [1], "item_id": [2], "ts": [3]}).write_parquet(path)
    with pytest.raises(DataError) as exc:
        load_events(path)
    msg = str(exc.value)
    assert str(path) in msg
    assert "'user_id'" in msg and "'timestamp'" in msg
    assert "missing column" in msg
    # the found columns are listed too, to help the user name them
    assert "'user'" in msg and "'ts'" in msg


@pytest.mark.parametrize("column, values", [
    ("item_id", [1.0, 2.0]),
    ("user_id", [True, False]),
    ("item_id", [[1], [2]]),
])
def test_wrong_id_dtype_names_the_column(column, values):
    data = {"user_id": [1, 2], "item_id": [1, 2], "timestamp": [1, 2]}
    data[column] = values
    with pytest.raises(DataError) as exc:
        load_events(pl.DataFrame(data))
    assert repr(column) in str(exc.value)
    assert "integers or strings" in str(exc.value)


def test_wrong_time_dtype_names_the_column():
    with pytest.raises(DataError, match=r"column 'when' \(timestamp\)"):
        load_events(pl.DataFrame({"user_id": [1], "item_id": [1], "when": ["yesterday"]}), time_col="when")


def test_nulls_reported_with_counts_per_column(tmp_path):
    path = tmp_path / "nulls.parquet"
    pl.DataFrame({
        "user_id": [1, None, None, 4, 5],
        "item_id": [1, 2, 3, 4, 5],
        "timestamp": [1, 2, None, 4, 5],
    }).write_parquet(path)
    with pytest.raises(DataError) as exc:
        load_events(path)
    msg = str(exc.value)
    assert str(path) in msg
    assert "2 null value(s) in column 'user_id'" in msg
    assert "1 null value(s) in column 'timestamp'" in msg
    assert "item_id" not in msg.split("(of")[0]
    assert "of 5 rows" in msg


def test_nulls_name_the_user_columns_not_canonical_names():
    df = pl.DataFrame({"uid": [1, 2], "iid": [None, 3], "t": [1, 2]})
    with pytest.raises(DataError, match=r"1 null value\(s\) in column 'iid'"):
        load_events(df, user_col="uid", item_col="iid", time_col="t")


def test_empty_file(tmp_path):
    path = tmp_path / "empty.parquet"
    pl.DataFrame(schema={"user_id": pl.Int64, "item_id": pl.Int64, "timestamp": pl.Int64}).write_parquet(path)
    with pytest.raises(DataError, match=r"empty\.parquet.*no events"):
        load_events(path)


def test_exact_duplicates_dropped_near_duplicates_kept():
    df = pl.DataFrame({
        "user_id": [1, 1, 1, 2, 1],
        "item_id": [5, 5, 5, 5, 5],
        "timestamp": [10, 10, 11, 10, 10],
    })
    out = load_events(df)
    assert out.rows() == [(1, 5, 10), (1, 5, 11), (2, 5, 10)]


def test_custom_column_names_and_extra_columns(tmp_path):
    path = tmp_path / "custom.parquet"
    pl.DataFrame({
        "rating": [4, 5, 3],
        "session": ["s1", "s1", "s2"],
        "sku": ["a", "b", "a"],
        "ts": [3, 1, 2],
    }).write_parquet(path)
    df = load_events(path, user_col="session", item_col="sku", time_col="ts")
    assert df.columns == ["user_id", "item_id", "timestamp"]
    assert df.rows() == [("s1", "a", 3), ("s1", "b", 1), ("s2", "a", 2)]


def test_shipped_sample_loads():
    from pathlib import Path

    sample = Path(__file__).resolve().parents[2] / "data" / "ml-100k" / "events.parquet"
    if not sample.is_file():
        pytest.skip(f"shipped sample {sample} is absent")
    df = load_events(sample)
    assert df.height > 0
    assert df.schema == {"user_id": pl.Int64, "item_id": pl.Int64, "timestamp": pl.Int64}
    assert df.null_count().row(0) == (0, 0, 0)
    assert not df.is_duplicated().any()
    assert np.all(df["item_id"].to_numpy() > 0)
