"""Generic file loading and validation: every bad input names the file, the column and the fix."""

from __future__ import annotations

import logging
import os
import time

import numpy as np
import pandas as pd
import pytest

from streamrec.data import (DataError, FileSource, MovieLensSource, Preprocessing, RawData, SimulatorSource,
                            SplitSpec, load_files, prepare_dataset, validate_raw)
from streamrec.data.dataset import SplitData, index_and_split
from streamrec.data.preprocessing import preprocess
from streamrec.data.schema import is_missing


def write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_columns_are_mapped_and_types_canonical(tmp_path):
    inter = write(tmp_path, "views.csv", "member,title,when,pct,dev\n"
                  "a,10,2024-01-01T10:00:00Z,0.5,tv\nb,11,2024-01-02,1.0,web\n")
    items = write(tmp_path, "titles.csv", "id,name,genres\n10,Heat,Crime|Drama\n11,Up,Animation\n12,New,\n")
    data = validate_raw(load_files(
        inter, columns={"user_id": "member", "item_id": "title", "timestamp": "when",
                        "watch_fraction": "pct", "device": "dev"},
        items=items, item_columns={"item_id": "id", "title": "name"},
    ))
    assert list(data.interactions.columns) == ["user_id", "item_id", "timestamp", "watch_fraction", "device"]
    assert data.interactions["timestamp"].tolist() == [1704103200, 1704153600]
    assert data.items["genres"].tolist() == [["Crime", "Drama"], ["Animation"], []]


def test_parquet_round_trip_and_catalogue_keeps_unwatched_titles(tmp_path):
    pd.DataFrame({"user_id": [1, 1, 2, 2], "item_id": [5, 6, 5, 7]}).to_parquet(tmp_path / "i.parquet")
    pd.DataFrame({"item_id": [5, 6, 7, 8], "title": list("abcd")}).to_parquet(tmp_path / "t.parquet")
    data = prepare_dataset(FileSource(str(tmp_path / "i.parquet"), items=str(tmp_path / "t.parquet")),
                           split=SplitSpec(ratios=[0.5, 0.5]))
    assert data.n_items == 4  # title 8 was never watched but is in the catalogue
    assert data.item_map.to_raw([3]).tolist() == [8]


@pytest.mark.parametrize(
    "text, columns, message",
    [
        ("user_id,movie\n1,2\n", None, "missing column(s) ['item_id']"),
        ("user_id,item_id,timestamp\n1,2,yesterday-ish\n", None, "could not be parsed as a time"),
        ("user_id,item_id,rating\n1,2,4\n1,3,-1\n", None, "must be a finite non-negative number"),
        ("user_id,item_id,rating\n1,2,\n", None, "NaN, negative, infinite or not a number"),
        ("user_id,item_id,watch_fraction\n1,2,1.5\n", None, "must lie in [0, 1]"),
        ("user_id,item_id\n1,\n", None, "column 'item_id' has empty values"),
        ("u,i\n1,2\n", {"user_id": "u", "item_id": "item"}, "['item'] named in the config are not in the file"),
        ("member,title\n1,2\n", None, "missing column(s) ['user_id', 'item_id']; found ['member', 'title']"),
        ("user_id,item_id,timestamp\n1,2,1700000000\n1,3,1700000100\n1,4,oops\n", None,
         "first at data row 2 ({'timestamp': 'oops'})"),
        ("user_id,item_id,timestamp\n1,2,inf\n", None, "column 'timestamp' is infinite"),
        ("user_id,item_id,timestamp\n1,2,True\n", None, "column 'timestamp' holds booleans"),
        ("user_id,item_id,rating\n1,2,inf\n", None, "NaN, negative, infinite or not a number"),
        ("user_id,item_id\n1,10.5\n", None, "column 'item_id' has numbers that are not whole"),
        ('user_id,item_id\n1," "\n', None, "column 'item_id' has blank ids"),
        ("user_id,item_id\n1,1e19\n", None, "not whole (or beyond int64)"),
        ('user_id,item_id,title\n1,2,"Heroes\n', None, "a field that opens a quote and does not close it"),
        ("user_id,item_id,timestamp\n1,2,1e30\n", None, "column 'timestamp' could not be parsed as a time"),  # wrapped
        ("user_id,item_id,ts,timestamp\n1,2,5,6\n", {"timestamp": "ts"}, "more than one column is called "
         "['timestamp']"),
    ],
)
def test_bad_interactions_name_the_file_and_problem(tmp_path, text, columns, message):
    path = write(tmp_path, "log.csv", text)
    with pytest.raises(DataError) as err:
        validate_raw(load_files(path, columns=columns))
    assert message in str(err.value)
    assert "log.csv" in str(err.value)


def test_ids_are_one_type_across_files_and_rows(tmp_path):
    """A delimiter ending each row shifted every column; a big file's ids came back as ints or
    text by pandas' chunks; one text id in the items made every interaction "missing"; ids
    past int64 wrapped."""
    inter = write(tmp_path, "log.csv", "user_id,item_id,device\n1,10,tv,\n2,11,web,\n2,12,tv,\n")
    data = validate_raw(load_files(inter))
    assert data.interactions[["user_id", "item_id", "device"]].values.tolist() == [
        [1, 10, "tv"], [2, 11, "web"], [2, 12, "tv"]]
    tabbed = write(tmp_path, "t.tsv", "user_id\titem_id\n1\t7\t\n2\t8\t\n")  # its first column reads as a range
    assert validate_raw(load_files(tabbed)).interactions[["user_id", "item_id"]].values.tolist() == [[1, 7], [2, 8]]
    named = write(tmp_path, "r.tsv", "user_id\titem_id\trating\n1\t10\t70\t4\n2\t20\t80\t5\n")  # R's row names
    assert validate_raw(load_files(named)).interactions[["user_id", "item_id"]].values.tolist() == [[10, 70], [20, 80]]
    items = write(tmp_path, "items.csv", "item_id,title,genres\n10,A, Action | Comedy\n11,B,\n12,C,Drama\nX1,D,\n")
    joined = validate_raw(load_files(inter, items=items))  # one text id in the items: all text, in both tables
    assert joined.interactions["item_id"].tolist() == ["10", "11", "12"]
    assert joined.items["genres"].tolist() == [["Action", "Comedy"], [], ["Drama"], []]
    big = write(tmp_path, "big.csv", "user_id,item_id\n18446744073709551615,1\n9223372036854775808,2\n")
    assert validate_raw(load_files(big)).interactions["user_id"].tolist() == [
        "18446744073709551615", "9223372036854775808"]  # past int64: text, not wrapped
    rows = "".join(f"{i},1\n" for i in range(300_000)) + "A1,1\n"  # past pandas' chunk of rows
    mixed = validate_raw(load_files(write(tmp_path, "mixed.csv", "user_id,item_id\n" + rows)))
    assert set(map(type, mixed.interactions["user_id"])) == {str}
    pd.DataFrame({"user_id": np.array([2**63, 1], dtype=np.uint64), "item_id": [1, 2]}).to_parquet(tmp_path / "u.pq")
    assert validate_raw(load_files(tmp_path / "u.pq")).interactions["user_id"].tolist() == ["9223372036854775808", "1"]


def test_item_years_and_genres_of_any_encoding(tmp_path):
    inter = write(tmp_path, "log.csv", "user_id,item_id\n1,1\n1,2\n")
    with pytest.raises(DataError, match=r"items\.csv: column 'year' must hold whole years; .* 1996\.5"):
        validate_raw(load_files(inter, items=write(tmp_path, "items.csv", "item_id,year\n1,1990\n2,1996.5\n")))
    pd.DataFrame({"item_id": [1, 2], "genres": [["A", None, " B "], None]}).to_parquet(tmp_path / "g.parquet")
    assert validate_raw(load_files(inter, items=tmp_path / "g.parquet")).items["genres"].tolist() == [["A", "B"], []]
    codes = validate_raw(load_files(inter, items=write(tmp_path, "codes.csv", "item_id,genres\n1,3\n2,5\n")))
    assert codes.items["genres"].tolist() == [["3"], ["5"]]


def test_bad_row_is_located(tmp_path):
    path = write(tmp_path, "log.csv", "user_id,item_id,rating\n1,2,4\n1,3,5\n2,3,-2\n")
    with pytest.raises(DataError, match=r"first at data row 2"):
        validate_raw(load_files(path))


def test_empty_files_are_reported(tmp_path):
    with pytest.raises(DataError, match="empty"):
        load_files(write(tmp_path, "empty.csv", ""))
    with pytest.raises(DataError, match="header but no rows"):
        load_files(write(tmp_path, "header.csv", "user_id,item_id\n"))
    with pytest.raises(DataError, match="file not found"):
        load_files(tmp_path / "nope.csv")


def test_duplicate_and_unknown_item_ids(tmp_path):
    inter = write(tmp_path, "log.csv", "user_id,item_id\n1,2\n1,3\n")
    dup_items = write(tmp_path, "items.csv", "item_id,title\n2,a\n2,b\n3,c\n")
    with pytest.raises(DataError, match=r"items.csv: duplicate item_id values .* e.g. \[2\]"):
        validate_raw(load_files(inter, items=dup_items))
    few_items = write(tmp_path, "few.csv", "item_id,title\n2,a\n")
    with pytest.raises(DataError, match=r"refer to 1 item id\(s\) missing from the items table .*few.csv"):
        validate_raw(load_files(inter, items=few_items))


def test_threshold_on_missing_column_is_an_error(tmp_path):
    path = write(tmp_path, "log.csv", "user_id,item_id\n1,2\n")
    with pytest.raises(DataError, match="min_rating=4 needs a 'rating' column"):
        prepare_dataset(FileSource(str(path)), Preprocessing(min_rating=4))


def test_lastfm_loads_through_generic_files(shared_dataset):
    root = shared_dataset("lastfm-2k")
    data = prepare_dataset(FileSource(
        str(root / "user_artists.dat"), columns={"user_id": "userID", "item_id": "artistID", "rating": "weight"},
        items=str(root / "artists.dat"), item_columns={"item_id": "id", "title": "name"}, sep="\t",
    ))
    assert data.n_users == 1892
    assert sum(len(data.part(p)) for p in ("train", "val", "test")) == 92834
    assert (data.train["rating"] > 0).all()


def _split(interactions: pd.DataFrame, **spec) -> SplitData:
    raw, _ = preprocess(validate_raw(RawData(interactions)), Preprocessing(**spec.pop("preprocessing", {})))
    return index_and_split(raw, SplitSpec(**spec))


@pytest.mark.parametrize("times", [[100.9, 100.1, 50.0],
                                   ["1970-01-01T00:01:40.900Z", "1970-01-01T00:01:40.100Z", "1970-01-01T00:00:50Z"]])
def test_sub_second_times_keep_their_order(times):
    views = pd.DataFrame({"user_id": [1, 1, 1], "item_id": [10, 11, 12], "timestamp": times})
    split = _split(views, method="leave_last_out", holdout_val=0)
    assert split.item_map.to_raw(split.test["item"]).tolist() == [10]  # the latest view, at 100.9 s
    assert split.test["timestamp"].tolist() == [100]  # whole seconds are kept
    again = pd.DataFrame({"user_id": [1, 1], "item_id": [10, 10], "timestamp": [100.9, 100.1],
                          "watch_fraction": [0.9, 0.1]})
    kept = _split(again, preprocessing={"duplicates": "keep_last"}, method="random", ratios=[1.0, 0.0, 0.0])
    assert kept.train["watch_fraction"].tolist() == [pytest.approx(0.9)]


def test_whole_number_float_ids_are_integers_and_survive_the_cache(tmp_path):
    pd.DataFrame({"user_id": [1, 1, 2, 2], "item_id": [10.0, 11.0, 10.0, 12.0]}).to_parquet(tmp_path / "v.parquet")
    source = FileSource(str(tmp_path / "v.parquet"))
    fresh = prepare_dataset(source, split=SplitSpec(ratios=[0.5, 0.5]), cache_dir=tmp_path / "cache")
    cached = prepare_dataset(source, split=SplitSpec(ratios=[0.5, 0.5]), cache_dir=tmp_path / "cache")
    assert fresh.item_map == cached.item_map
    assert cached.item_map.to_index([10, 11, 12]).tolist() == [0, 1, 2]
    assert cached.item_map.raw_ids.dtype == np.int64


def test_a_rewrite_that_keeps_size_and_modification_time_rebuilds_the_cache(tmp_path):
    path = write(tmp_path, "views.csv", "user_id,item_id\n1,10\n1,11\n2,10\n2,12\n")
    source = FileSource(path)
    split = SplitSpec(ratios=[0.5, 0.5])
    before = prepare_dataset(source, split=split, cache_dir=tmp_path / "cache")
    old = os.stat(path)
    time.sleep(0.05)  # past the file system's timestamp granularity (a kernel tick)
    write(tmp_path, "views.csv", "user_id,item_id\n1,10\n1,11\n2,10\n2,13\n")  # as `cp -p` would leave it
    os.utime(path, ns=(old.st_atime_ns, old.st_mtime_ns))
    assert os.stat(path).st_size == old.st_size and os.stat(path).st_mtime_ns == old.st_mtime_ns
    after = prepare_dataset(source, split=split, cache_dir=tmp_path / "cache")
    assert 12 in before.item_map.raw_ids.tolist()
    assert 13 in after.item_map.raw_ids.tolist() and 12 not in after.item_map.raw_ids.tolist()


def test_quoted_csv_fields_are_read_as_csv(tmp_path):
    views = write(tmp_path, "views.csv", "user_id,item_id\n1,1\n1,2\n")
    items = write(tmp_path, "items.CSV", 'item_id,title\n1,"American President, The (1995)"\n"2","Heat"\n')
    data = validate_raw(load_files(views, items=items))
    assert data.items["title"].tolist() == ["American President, The (1995)", "Heat"]
    tabbed = write(tmp_path, "artists.dat", 'item_id\ttitle\n1\t"Weird Al" Yankovic\n2\tHeat\n')
    assert load_files(views, items=tabbed).items["title"].tolist() == ['"Weird Al" Yankovic', "Heat"]


def test_upper_case_suffixes_and_a_corrupt_parquet(tmp_path):
    pd.DataFrame({"user_id": [1], "item_id": [2]}).to_parquet(tmp_path / "v.PARQUET")
    assert load_files(tmp_path / "v.PARQUET").interactions["item_id"].tolist() == [2]
    (tmp_path / "bad.parquet").write_bytes(b"not parquet at all")
    with pytest.raises(DataError, match=r"bad\.parquet: not a readable parquet file"):
        load_files(tmp_path / "bad.parquet")


def test_a_users_table_that_matches_no_member_is_an_error(tmp_path, caplog):
    pd.DataFrame({"user_id": ["1", "2"], "item_id": [5, 6]}).to_parquet(tmp_path / "v.parquet")
    write(tmp_path, "users.csv", "user_id,age\n3,30\n4,40\n")
    with pytest.raises(DataError, match="no member id is in the users table"):
        validate_raw(load_files(tmp_path / "v.parquet", users=tmp_path / "users.csv"))
    write(tmp_path, "users.csv", "user_id,age\n1,30\n2,40\n")  # text ids and a CSV's numbers: one type, text
    assert validate_raw(load_files(tmp_path / "v.parquet", users=tmp_path / "users.csv")).users["user_id"].tolist() \
        == ["1", "2"]
    write(tmp_path, "some.csv", "user_id,age\n1,30\n")
    pd.DataFrame({"user_id": [1, 2], "item_id": [5, 6]}).to_parquet(tmp_path / "w.parquet")
    with caplog.at_level(logging.WARNING):
        validate_raw(load_files(tmp_path / "w.parquet", users=tmp_path / "some.csv"))
    assert "1 of 2 members have no row in the users table" in caplog.text


def test_an_unknown_movielens_variant_is_a_clear_error_with_a_cache(tmp_path):
    with pytest.raises(DataError, match="Unknown MovieLens variant 'ml-100K'"):
        prepare_dataset(MovieLensSource(variant="ml-100K"), cache_dir=tmp_path)


def test_date_objects_and_one_year_like_cell_among_many():
    import datetime

    days = pd.Series([datetime.date(2024, 5, 1), datetime.datetime(2024, 5, 2, tzinfo=datetime.timezone.utc),
                      pd.Timestamp("2024-05-03")], dtype=object)
    views = pd.DataFrame({"user_id": [1, 1, 1], "item_id": [2, 3, 4], "timestamp": days})
    assert validate_raw(RawData(views)).interactions["timestamp"].tolist() == [1714521600, 1714608000, 1714694400]
    text = [f"2024-05-01T00:00:{i % 60:02d}Z" for i in range(300)] + ["1000"]
    many = pd.DataFrame({"user_id": 1, "item_id": range(301), "timestamp": text})
    seconds = validate_raw(RawData(many)).interactions.set_index("item_id")["timestamp"]
    assert seconds[300] == 1000 and seconds[59] == 1714521659


@pytest.mark.parametrize("times, seconds", [
    (["20240501", "2024-05-02T00:00:00Z"], [1714521600, 1714608000]),  # dates first
    ([1700000000, "2024-05-02"], [1700000000, 1714608000]),  # numbers in an object column are seconds
    (["1000", "2000"], [1000, 946684800]),  # a year pandas cannot hold is not a date
    (["1700000000.5", "2024-05-01 10:00"], [1700000000, 1714557600]),
])
def test_text_and_object_times(times, seconds):
    views = pd.DataFrame({"user_id": [1, 1], "item_id": [2, 3], "timestamp": pd.Series(times, dtype=object)})
    assert validate_raw(RawData(views)).interactions["timestamp"].tolist() == seconds


def test_boolean_ids_are_refused():
    flags = pd.DataFrame({"user_id": [1, 1], "item_id": pd.Series([True, "a"], dtype=object)})
    with pytest.raises(DataError, match="column 'item_id' has booleans"):
        validate_raw(RawData(flags))


def test_a_cache_written_by_another_process_meanwhile_is_kept(tmp_path, monkeypatch):
    import streamrec.data.pipeline as pipeline

    source = SimulatorSource(n_users=50, n_items=100, n_interactions=600)
    target = tmp_path / "processed" / pipeline.cache_key(source, Preprocessing(), SplitSpec())
    split = pipeline.index_and_split

    def other_process_finishes_first(*args, **kwargs):
        data = split(*args, **kwargs)
        data.save(target)
        (target / "written-by-the-other-process").touch()
        return data

    monkeypatch.setattr(pipeline, "index_and_split", other_process_finishes_first)
    prepare_dataset(source, cache_dir=tmp_path)
    assert (target / "written-by-the-other-process").exists()


def test_the_cache_keeps_a_copy_another_process_wrote(tmp_path):
    source = SimulatorSource(n_users=50, n_items=100, n_interactions=600)
    first = prepare_dataset(source, cache_dir=tmp_path)
    (target,) = (tmp_path / "processed").iterdir()
    marker = target / "written-by-the-first-process"
    marker.touch()
    first.save(target, replace=False)  # a second process finishing the same key later
    assert marker.exists() and SplitData.load(target).item_map == first.item_map
    first.save(target)  # an explicit save replaces
    assert not marker.exists()


@pytest.mark.parametrize("sep, suffix", [(",", "csv"), ("\t", "tsv")])
def test_ids_and_titles_that_look_like_missing_values_are_read_verbatim(tmp_path, sep, suffix):
    """pandas reads NA, null, None, NaN, n/a, #N/A as missing: a title id "NA" was lost, a member
    "null" was an "empty value", and an id column of "NaN" and numbers came back as floats."""
    def table(name, rows):
        return write(tmp_path, f"{name}.{suffix}", "".join(sep.join(row) + "\n" for row in rows))

    views = table("views", [["member", "title_id", "rating"], ["NA", "NA", "4"], ["null", "None", "5"],
                            ["None", "n/a", "3"], ["NA", "#N/A", "2"], ["null", "NaN", "1"]])
    items = table("titles", [["title_id", "name", "text", "year", "genres"], ["NA", "NA", "None", "2001", "Drama"],
                             ["None", "null", "NaN", "NA", "None"], ["n/a", "N/A", "", "", ""],
                             ["#N/A", "Heat", "n/a", "1995", "Crime"], ["NaN", "NaN", "null", "", "Drama|NA"]])
    users = table("members", [["member", "age", "plan"], ["NA", "30", "NA"], ["null", "NA", "basic"],
                              ["None", "", "null"]])
    data = validate_raw(load_files(
        views, columns={"user_id": "member", "item_id": "title_id"},
        items=items, item_columns={"item_id": "title_id", "title": "name"},
        users=users, user_columns={"user_id": "member"},
    ))
    assert data.interactions["user_id"].tolist() == ["NA", "null", "None", "NA", "null"]
    assert data.interactions["item_id"].tolist() == ["NA", "None", "n/a", "#N/A", "NaN"]
    assert data.items["item_id"].tolist() == ["NA", "None", "n/a", "#N/A", "NaN"]
    assert data.items["title"].tolist() == ["NA", "null", "N/A", "Heat", "NaN"]
    assert data.items["text"].iloc[[0, 1, 3, 4]].tolist() == ["None", "NaN", "n/a", "null"]
    assert data.users["user_id"].tolist() == ["NA", "null", "None"]
    # Only an empty cell is a missing text; the other columns keep pandas' missing markers.
    assert data.items["text"].isna().tolist() == [False, False, True, False, False]
    assert data.items["year"].isna().tolist() == [False, True, True, False, True] and data.items["year"][0] == 2001
    assert data.items["genres"].tolist() == [["Drama"], [], [], ["Crime"], ["Drama", "NA"]]
    assert data.users["age"].dtype == np.float64 and data.users["age"].isna().tolist() == [False, True, True]
    assert data.users["plan"].isna().tolist() == [True, False, True]
    split = prepare_dataset(FileSource(str(views), columns={"user_id": "member", "item_id": "title_id"},
                                       items=str(items), item_columns={"item_id": "title_id", "title": "name"}),
                            split=SplitSpec(ratios=[1.0, 0.0]))
    assert (split.n_users, split.n_items) == (3, 5)
    assert sorted(split.item_map.raw_ids.tolist()) == sorted(["NA", "None", "n/a", "#N/A", "NaN"])


def test_an_id_column_with_a_missing_value_marker_is_text_not_numbers(tmp_path):
    views = write(tmp_path, "views.csv", "user_id,item_id\n1,NaN\n2,7\n2,NA\n")
    data = validate_raw(load_files(views))
    assert data.interactions["user_id"].tolist() == [1, 2, 2]
    assert data.interactions["item_id"].tolist() == ["NaN", "7", "NA"]
    with pytest.raises(DataError, match="column 'user_id' has empty values"):  # an empty cell is still missing
        validate_raw(load_files(write(tmp_path, "gap.csv", "user_id,item_id\n,NA\n1,2\n")))
    with pytest.raises(DataError, match="NaN, negative, infinite or not a number"):  # a rating "NA": still refused
        validate_raw(load_files(write(tmp_path, "r.csv", "user_id,item_id,rating\nNA,NA,NA\n")))
    device = validate_raw(load_files(write(tmp_path, "d.csv", "user_id,item_id,device\nNA,1,tv\nNA,2,NA\n")))
    assert device.interactions["device"].isna().tolist() == [False, True]  # an unknown device, as before


def test_is_missing_is_one_rule_for_an_empty_cell():
    empty = [None, float("nan"), np.float32("nan"), np.float64("nan"), pd.NA, pd.NaT, np.datetime64("NaT"),
             np.timedelta64("NaT")]
    present = [0, 0.0, "", "NA", False, [], [None], np.datetime64("2020-01-01"), np.inf, np.int64(0)]
    assert [is_missing(v) for v in empty] == [True] * len(empty)
    assert [is_missing(v) for v in present] == [False] * len(present)
