"""Preprocessing, ids, splits and the processed-data cache."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from streamrec.data import (
    DataError, IdMap, Preprocessing, RawData, SplitData, SplitSpec, index_and_split, k_core,
    prepare_dataset, preprocess, validate_raw,
)


def raw(**columns) -> RawData:
    return validate_raw(RawData(pd.DataFrame(columns), name="t"))


def test_duplicates_keep_latest_then_threshold():
    data = raw(user_id=[1, 1, 1, 2], item_id=[7, 7, 8, 7], timestamp=[5, 3, 4, 1], rating=[2, 5, 4, 5])
    out, report = preprocess(data, Preprocessing(min_rating=4))
    # (1, 7) kept at t=5 with rating 2, which the threshold then removes.
    assert sorted(map(tuple, out.interactions[["user_id", "item_id"]].to_numpy())) == [(1, 8), (2, 7)]
    assert report == {"rows_in": 4, "duplicates": 1, "min_rating": 1, "rows_out": 2}
    first, _ = preprocess(data, Preprocessing(duplicates="keep_first"))
    assert first.interactions.query("user_id == 1 and item_id == 7")["timestamp"].item() == 3
    with pytest.raises(DataError, match="repeat a \\(user_id, item_id\\) pair"):
        preprocess(data, Preprocessing(duplicates="error"))


def test_k_core_is_iterated_to_a_fixed_point():
    # Member 3 has one title; dropping them leaves title 12 with one member, then member 2
    # with one title: the 2-core is members {1, 4} x titles {10, 11}.
    inter = pd.DataFrame({
        "user_id": [1, 1, 2, 2, 3, 4, 4],
        "item_id": [10, 11, 11, 12, 13, 10, 11],
    })
    kept = k_core(inter, 2, 2)
    assert sorted(map(tuple, kept.to_numpy().tolist())) == [(1, 10), (1, 11), (4, 10), (4, 11)]
    kept = k_core(inter, 2, 3)
    assert kept.empty


def test_k_core_drops_titles_from_catalogue_and_reports_rows():
    data = validate_raw(RawData(
        pd.DataFrame({"user_id": [1, 1, 2, 2, 3], "item_id": [10, 11, 10, 11, 12]}),
        items=pd.DataFrame({"item_id": [10, 11, 12, 13]}), name="t",
    ))
    out, report = preprocess(data, Preprocessing(min_user_interactions=2, min_item_interactions=2))
    assert out.items["item_id"].tolist() == [10, 11]
    assert report["k_core"] == 1 and report["k_core_items_dropped"] == 2


def test_id_map_round_trip(tmp_path):
    ids = IdMap(np.array([30, 10, 20]))
    assert ids.to_index([10, 99]).tolist() == [1, -1]
    assert ids.to_raw([0, 2]).tolist() == [30, 20]
    ids.save(tmp_path / "m.json")
    assert IdMap.load(tmp_path / "m.json") == ids
    names = IdMap(["b", "a"])
    names.save(tmp_path / "s.json")
    assert IdMap.load(tmp_path / "s.json").to_index(["a"]).tolist() == [1]


def interactions(n_users=50, per_user=20, seed=0):
    rng = np.random.default_rng(seed)
    users = np.repeat(np.arange(n_users), per_user)
    items = np.concatenate([rng.choice(100, per_user, replace=False) for _ in range(n_users)])
    return raw(user_id=users + 1000, item_id=items, timestamp=rng.permutation(len(users)))


def test_random_split_per_member_ratios_and_seed():
    data = interactions()
    a = index_and_split(data, SplitSpec(ratios=[0.7, 0.1, 0.2], seed=1))
    b = index_and_split(data, SplitSpec(ratios=[0.7, 0.1, 0.2], seed=1))
    c = index_and_split(data, SplitSpec(ratios=[0.7, 0.1, 0.2], seed=2))
    for part, expected in (("train", 14), ("val", 2), ("test", 4)):
        assert (a.part(part).groupby("user").size() == expected).all()
    assert a.test.equals(b.test) and not a.test.equals(c.test)
    union = pd.concat([a.train, a.val, a.test])
    assert not union.duplicated(["user", "item"]).any() and len(union) == 1000


def test_leave_last_out_takes_the_latest_titles():
    data = raw(user_id=[1, 1, 1, 1, 2, 2], item_id=[1, 2, 3, 4, 1, 2], timestamp=[40, 10, 30, 20, 1, 2])
    split = index_and_split(data, SplitSpec(method="leave_last_out"))
    raw_test = split.item_map.to_raw(split.test["item"]).tolist()
    raw_val = split.item_map.to_raw(split.val["item"]).tolist()
    assert raw_test == [1] and raw_val == [3]  # member 2 has too few titles: all in train
    assert len(split.train) == 4


def test_temporal_split_cuts_globally_by_time():
    data = interactions(n_users=10, per_user=10)
    split = index_and_split(data, SplitSpec(method="temporal", ratios=[0.8, 0.1, 0.1]))
    assert (len(split.train), len(split.val), len(split.test)) == (80, 10, 10)
    train, val, test = (part["timestamp"] for part in (split.train, split.val, split.test))
    assert train.max() < val.min() <= val.max() < test.min()


def test_time_splits_need_timestamps_and_ratios_are_checked():
    with pytest.raises(DataError, match="orders by time"):
        index_and_split(raw(user_id=[1], item_id=[1]), SplitSpec(method="temporal"))
    with pytest.raises(DataError, match="summing to 1"):
        SplitSpec(ratios=[0.5, 0.2])
    with pytest.raises(DataError, match="choose one of"):
        SplitSpec(method="by_genre")


def test_matrices_popularity_and_genres():
    data = validate_raw(RawData(
        pd.DataFrame({"user_id": [1, 1, 2], "item_id": [5, 6, 6]}),
        items=pd.DataFrame({"item_id": [5, 6, 7], "genres": ["Drama|Comedy", "Drama", None]}), name="t",
    ))
    split = index_and_split(data, SplitSpec(ratios=[1.0, 0.0, 0.0]))
    assert split.matrix("train").toarray().tolist() == [[1, 1, 0], [0, 1, 0]]
    assert split.item_popularity().tolist() == [1, 2, 0]
    genres, vocab = split.genre_matrix()
    assert vocab == ["Comedy", "Drama"] and genres.toarray().tolist() == [[1, 1], [0, 1], [0, 0]]


class CountingSource:
    def __init__(self, data):
        self.data, self.loads = data, 0

    def load(self):
        self.loads += 1
        return self.data

    def fingerprint(self):
        return {"source": "counting"}


def test_cache_skips_the_work_the_second_time(tmp_path):
    source = CountingSource(RawData(interactions().interactions, name="t"))
    first = prepare_dataset(source, cache_dir=tmp_path)
    second = prepare_dataset(source, cache_dir=tmp_path)
    assert source.loads == 1
    for part in ("train", "val", "test"):
        pd.testing.assert_frame_equal(first.part(part), second.part(part))
    assert first.user_map == second.user_map and first.item_map == second.item_map
    prepare_dataset(source, split=SplitSpec(seed=7), cache_dir=tmp_path)
    assert source.loads == 2  # a different config is a different cache entry


def test_split_data_save_is_atomic(tmp_path, monkeypatch):
    split = index_and_split(interactions(), SplitSpec())
    split.save(tmp_path / "d")
    good = SplitData.load(tmp_path / "d")

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(IdMap, "save", boom)
    with pytest.raises(OSError):
        split.save(tmp_path / "d")
    # The earlier complete copy is untouched and no temporary folder is left behind.
    pd.testing.assert_frame_equal(SplitData.load(tmp_path / "d").train, good.train)
    assert [p.name for p in tmp_path.iterdir()] == ["d"]


def test_carving_validation_out_of_train_keeps_the_same_test_set():
    """experiment=ml100k relies on this: [0.725, 0.025, 0.25] tests exactly what [0.75, 0.25] does."""
    data = interactions(n_users=200, per_user=41, seed=3)
    protocol = index_and_split(data, SplitSpec(ratios=[0.75, 0.25], seed=42))
    carved = index_and_split(data, SplitSpec(ratios=[0.725, 0.025, 0.25], seed=42))
    key = ["user", "item"]
    pd.testing.assert_frame_equal(protocol.test[key].sort_values(key).reset_index(drop=True),
                                  carved.test[key].sort_values(key).reset_index(drop=True))
    assert len(carved.val) > 0
