"""RetrievalDataModule on a hand-built 4-member log whose every history is known in advance.

Leave-last-out split (1 test + 1 validation title per member with more than 2 views),
``max_history`` = 3. Raw title ids 10..17 become item indices 0..7 (17 is never watched),
so a history entry (index + 1) is ``raw id - 9``.
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import pandas as pd
import pytest
import torch

from streamrec.data import RawData, SplitSpec, index_and_split, validate_raw
from streamrec.training.datamodule import RetrievalDataModule

DAY, HOUR = 86400, 3600
T0 = 1_699_920_000  # 2023-11-14 00:00 UTC: hour of day of T0 + h * HOUR is h
MAX_HISTORY = 3

# Each member's views, oldest first: (raw item id, day, hour, watch fraction, device).
VIEWS = {
    "a": [(10, 1, 20, 0.1, "tv"), (11, 2, 21, 0.2, "tv"), (12, 4, 8, 0.3, "phone"), (13, 8, 9, 0.4, "tv"),
          (14, 9, 10, 0.5, "phone"), (15, 10, 11, 0.6, "tv")],
    "b": [(12, 3, 5, 0.7, "phone"), (10, 5, 6, 0.8, "tv"), (16, 6, 7, 0.9, "phone")],
    "c": [(11, 1, 12, 1.0, "tv"), (13, 7, 13, 0.15, "phone")],
    "d": [(16, 1, 14, 0.25, "phone"), (15, 2, 15, 0.35, "tv"), (14, 3, 16, 0.45, "phone"),
          (13, 5, 17, 0.55, "tv"), (12, 6, 18, 0.65, "phone"), (11, 7, 19, 0.75, "tv"),
          (10, 8, 22, 0.85, "phone")],
}
# Leave-last-out: members with > 2 views lose the last to test and the one before to val.
TRAIN = {"a": [10, 11, 12, 13], "b": [12], "c": [11, 13], "d": [16, 15, 14, 13, 12]}
VAL = {"a": [14], "b": [10], "c": [], "d": [11]}
TEST = {"a": [15], "b": [16], "c": [], "d": [10]}
USER = {"a": 0, "b": 1, "c": 2, "d": 3}  # sorted raw member ids
COUNTRY_CODE = {"a": 1, "b": 2, "c": 0, "d": 1}  # vocabulary ["fr", "us"]; 0 = unknown
DEVICE_CODE = {"phone": 1, "tv": 2}  # sorted vocabulary, 0 = unknown


def view(member: str, item: int) -> tuple:
    return next(v for v in VIEWS[member] if v[0] == item)


def time_of(member: str, item: int) -> int:
    _, day, hour, _, _ = view(member, item)
    return T0 + day * DAY + hour * HOUR


def idx(item: int) -> int:
    return item - 10


@pytest.fixture(scope="module")
def data():
    rows = [(m, item, T0 + day * DAY + hour * HOUR, watch, device)
            for m, views in VIEWS.items() for item, day, hour, watch, device in views]
    rows = rows[1::2] + rows[::2][::-1]  # file order unrelated to time or member
    inter = pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp", "watch_fraction", "device"])
    items = pd.DataFrame({"item_id": list(range(17, 9, -1))})
    users = pd.DataFrame({"user_id": ["d", "z", "b", "a", "c"], "country": ["fr", "us", "us", "fr", None]})
    raw = validate_raw(RawData(inter, items=items, users=users, name="tiny"))
    split = index_and_split(raw, SplitSpec(method="leave_last_out", holdout_test=1, holdout_val=1))
    # The split itself is as intended, so the expectations below are about the DataModule.
    for part, expected in (("train", TRAIN), ("val", VAL), ("test", TEST)):
        frame = split.part(part)
        got = {m: sorted(frame.loc[frame["user"] == u, "item"].tolist()) for m, u in USER.items()}
        assert got == {m: sorted(idx(i) for i in items_) for m, items_ in expected.items()}, part
    return split


def module(data, mode: str, **kwargs) -> RetrievalDataModule:
    return RetrievalDataModule(data, batch_size=kwargs.pop("batch_size", 4), max_history=MAX_HISTORY,
                               history_mode=mode, **kwargs)


def all_train_examples(dm: RetrievalDataModule) -> dict[str, torch.Tensor]:
    return dm.train_batch(np.arange(len(dm.train_log.item)))


def member_of(user: int) -> str:
    return next(m for m, u in USER.items() if u == user)


# -- construction -----------------------------------------------------------------------------
def test_bad_arguments_raise(data):
    with pytest.raises(ValueError, match="history_mode"):
        RetrievalDataModule(data, history_mode="bag")
    with pytest.raises(ValueError, match="batch_size"):
        RetrievalDataModule(data, batch_size=1)
    # A TypeError traceback (comparing 'abc' with 2), or accepted until the DataLoader failed.
    for bad in ("abc", 2.5, True):
        with pytest.raises(ValueError, match=rf"^batch_size={bad!r}: expected a whole number >= 2"):
            RetrievalDataModule(data, batch_size=bad)
    with pytest.raises(ValueError, match=r"^eval_batch_size=0: expected a whole number >= 1\.$"):
        RetrievalDataModule(data, eval_batch_size=0)


def test_numpy_integer_batch_sizes_are_accepted(data):
    # A sweep may pass numpy integers; torch's BatchSampler refuses them, so they are stored as ints.
    dm = RetrievalDataModule(data, batch_size=np.int64(4), eval_batch_size=np.int32(3))
    assert type(dm.batch_size) is int and type(dm.eval_batch_size) is int
    assert next(iter(dm.train_dataloader()))["target"].shape == (4,)
    assert len(next(iter(dm.val_dataloader()))["user"]) == 3


def test_vocabularies_and_item_probability(data):
    dm = module(data, "sequential")
    assert dm.device_vocab == ["phone", "tv"] and dm.n_devices == 2
    assert dm.user_spec.cardinalities == [3]
    # Training positives: 10 x1, 11 x2, 12 x3, 13 x3, 14 x1, 15 x1, 16 x1, 17 never; 12 in all.
    expected = torch.tensor([1, 2, 3, 3, 1, 1, 1, 0]) / 12
    p = dm.item_probability()
    assert p.dtype == torch.float32 and p.shape == (8,)
    assert torch.allclose(p, expected) and p.sum().item() == pytest.approx(1.0)


# -- sequential histories ------------------------------------------------------------------------
def test_sequential_history_is_the_earlier_views_most_recent_last(data):
    batch = all_train_examples(module(data, "sequential"))
    assert batch["history"].shape == (12, MAX_HISTORY)
    got = {(member_of(u), t + 10): h for u, t, h in zip(batch["user"].tolist(), batch["target"].tolist(),
                                                          batch["history"].tolist())}
    assert got == {
        ("a", 10): [0, 0, 0], ("a", 11): [0, 0, 1], ("a", 12): [0, 1, 2], ("a", 13): [1, 2, 3],
        ("b", 12): [0, 0, 0],  # the single training view: empty history
        ("c", 11): [0, 0, 0], ("c", 13): [0, 0, 2],
        ("d", 16): [0, 0, 0], ("d", 15): [0, 0, 7], ("d", 14): [0, 7, 6], ("d", 13): [7, 6, 5],
        ("d", 12): [6, 5, 4],  # 16 fell out of the window of 3
    }


def test_sequential_watch_age_and_context_are_the_views(data):
    batch = all_train_examples(module(data, "sequential"))
    for i, (user, target) in enumerate(zip(batch["user"].tolist(), batch["target"].tolist())):
        m, target = member_of(user), target + 10
        history = batch["history"][i].tolist()
        real = [h + 9 for h in history if h > 0]
        n_pad = MAX_HISTORY - len(real)
        assert target not in real
        watch = [0.0] * n_pad + [view(m, item)[3] for item in real]
        age = [0.0] * n_pad + [(time_of(m, target) - time_of(m, item)) / DAY for item in real]
        assert batch["history_watch"][i].tolist() == pytest.approx(watch)
        assert batch["history_age_days"][i].tolist() == pytest.approx(age)
        assert (batch["history_age_days"][i] >= 0).all()
        _, _, hour, _, device = view(m, target)
        assert batch["hour"][i].item() == hour + 1
        assert batch["device"][i].item() == DEVICE_CODE[device]
        assert batch["user_features"][i].tolist() == [COUNTRY_CODE[m]]


# -- set histories -------------------------------------------------------------------------------
def check_set_batch(batch: dict[str, torch.Tensor]) -> dict[tuple[str, int], set]:
    """Check one set-mode batch; return the history of each (member, target) as raw ids."""
    seen = {}
    for i, (user, target) in enumerate(zip(batch["user"].tolist(), batch["target"].tolist())):
        m, target = member_of(user), target + 10
        history = batch["history"][i].tolist()
        others = [item for item in TRAIN[m] if item != target]
        real = [h + 9 for h in history if h > 0]
        n_pad = MAX_HISTORY - len(real)
        assert history[:n_pad] == [0] * n_pad and 0 not in history[n_pad:]  # left-padded
        assert target not in real
        assert len(set(real)) == len(real) and set(real) <= set(others)
        assert len(real) == min(len(others), MAX_HISTORY)
        assert [time_of(m, item) for item in real] == sorted(time_of(m, item) for item in real)  # oldest first
        last = TRAIN[m][-1]  # the request moment is the member's latest training view
        age = [0.0] * n_pad + [(time_of(m, last) - time_of(m, item)) / DAY for item in real]
        assert batch["history_age_days"][i].tolist() == pytest.approx(age)
        assert (batch["history_age_days"][i] >= 0).all()
        assert batch["hour"][i].item() == view(m, last)[2] + 1
        assert batch["device"][i].item() == DEVICE_CODE[view(m, last)[4]]
        seen[(m, target)] = set(real)
    return seen


def test_set_history_is_the_other_training_views_when_they_fit(data):
    seen = check_set_batch(all_train_examples(module(data, "set")))
    assert seen[("a", 12)] == {10, 11, 13}  # 3 others = max_history: all of them
    assert seen[("c", 13)] == {11}
    assert seen[("b", 12)] == set()  # single training view


def test_set_history_is_a_varying_subset_when_the_others_do_not_fit(data):
    dm = module(data, "set", seed=3)
    d_rows = np.flatnonzero(dm.train_log.user == USER["d"])
    draws = [check_set_batch(dm.train_batch(d_rows)) for _ in range(20)]
    for target in TRAIN["d"]:  # 4 others, 3 positions
        subsets = [frozenset(draw[("d", target)]) for draw in draws]
        assert all(len(s) == 3 for s in subsets)
        assert len(set(subsets)) > 1, target  # fresh subsets across draws ...
        assert set().union(*subsets) == set(TRAIN["d"]) - {target}  # ... covering every other view


# -- evaluation batches -------------------------------------------------------------------------
def padded_set(row: torch.Tensor) -> list[int]:
    values = row.tolist()
    real = [v for v in values if v >= 0]
    assert values[len(real):] == [-1] * (len(values) - len(real))  # padding is -1, at the end
    return sorted(v + 10 for v in real)


@pytest.mark.parametrize("part", ["val", "test"])
def test_eval_batch_history_exclude_and_targets(data, part):
    dm = module(data, "sequential")
    members = ["a", "b", "c", "d"]
    batch = dm.eval_batch([USER[m] for m in members], part)
    seen = TRAIN if part == "val" else {m: TRAIN[m] + VAL[m] for m in TRAIN}
    held_out = VAL if part == "val" else TEST
    assert batch["user"].tolist() == [0, 1, 2, 3]
    assert batch["history"].shape == (4, MAX_HISTORY)
    assert batch["exclude"].shape == (4, max(len(v) for v in seen.values()))
    for i, m in enumerate(members):
        recent = sorted(seen[m], key=lambda item: time_of(m, item))[-MAX_HISTORY:]
        assert batch["history"][i].tolist() == [0] * (MAX_HISTORY - len(recent)) + [item - 9 for item in recent]
        # Sequential mode: the request is the first held-out view (its time and device), as
        # in training; a member with nothing held out falls back to the latest seen view.
        ref = min(held_out[m], key=lambda item: time_of(m, item)) if held_out[m] else recent[-1]
        age = [0.0] * (MAX_HISTORY - len(recent)) + [(time_of(m, ref) - time_of(m, item)) / DAY for item in recent]
        assert batch["history_age_days"][i].tolist() == pytest.approx(age)
        assert batch["hour"][i].item() == view(m, ref)[2] + 1
        assert batch["device"][i].item() == DEVICE_CODE[view(m, ref)[4]]
        assert padded_set(batch["exclude"][i]) == sorted(seen[m])
        assert padded_set(batch["targets"][i]) == sorted(held_out[m])
        assert batch["user_features"][i].tolist() == [COUNTRY_CODE[m]]


def test_eval_batch_literal_values_for_validation(data):
    batch = module(data, "set").eval_batch([USER["a"], USER["b"]], "val")
    assert batch["history"].tolist() == [[2, 3, 4], [0, 0, 3]]
    assert batch["history_age_days"][0].tolist() == pytest.approx([6 - 12 / 24, 4 + 1 / 24, 0.0])
    assert batch["exclude"].tolist() == [[0, 1, 2, 3], [2, -1, -1, -1]]
    assert batch["targets"].tolist() == [[4], [0]]


def test_eval_batch_without_targets(data):
    batch = module(data, "set").eval_batch([USER["a"]], "test", with_targets=False)
    assert "exclude" not in batch and "targets" not in batch
    assert batch["history"].tolist() == [[3, 4, 5]]


def test_eval_users_are_members_with_held_out_titles(data):
    dm = module(data, "set")
    assert dm.eval_users("val").tolist() == [USER["a"], USER["b"], USER["d"]]
    assert dm.eval_users("test").tolist() == [USER["a"], USER["b"], USER["d"]]


# -- Lightning dataloaders ----------------------------------------------------------------------
@pytest.mark.parametrize("mode", ["set", "sequential"])
def test_train_dataloader_yields_full_batches_covering_the_epoch(data, mode):
    dm = module(data, mode, batch_size=4)
    batches = list(dm.train_dataloader())
    assert len(batches) == 3  # 12 training views / 4
    targets = Counter()
    for batch in batches:
        assert batch["history"].shape == (4, MAX_HISTORY)
        assert batch["history_watch"].shape == batch["history_age_days"].shape == (4, MAX_HISTORY)
        assert batch["target"].shape == batch["user"].shape == batch["device"].shape == batch["hour"].shape == (4,)
        assert batch["user_features"].shape == (4, 1)
        assert batch["history"].dtype == batch["target"].dtype == torch.int64
        targets.update(t + 10 for t in batch["target"].tolist())
    assert targets == Counter(item for items in TRAIN.values() for item in items)


def test_val_dataloader_batches_have_what_the_module_needs(data):
    dm = module(data, "sequential", eval_batch_size=2)
    batches = list(dm.val_dataloader())
    assert [b["user"].tolist() for b in batches] == [[USER["a"], USER["b"]], [USER["d"]]]
    for batch in batches:
        assert {"history", "history_watch", "history_age_days", "exclude", "targets", "user",
                "user_features", "device", "hour"} <= set(batch)
        assert batch["history"].shape[1] == MAX_HISTORY
        assert batch["exclude"].dtype == batch["targets"].dtype == torch.int64


# -- a member with nothing seen before the evaluated part (temporal split) ---------------------
@pytest.fixture(scope="module")
def temporal_data():
    # Global time order: the first 4 of 8 views are train, then 2 val, then 2 test. Member "z"
    # (sorted last, so their log segment starts past the end) has one view, the very last.
    inter = pd.DataFrame({
        "user_id": ["a", "a", "b", "a", "b", "b", "a", "z"],
        "item_id": [10, 11, 12, 13, 10, 11, 12, 13],
        "timestamp": [T0 + k * DAY + 5 * HOUR for k in range(8)],
        "device": ["tv", "tv", "phone", "tv", "tv", "phone", "tv", "phone"],
    })
    split = index_and_split(validate_raw(RawData(inter, name="temporal")),
                            SplitSpec(method="temporal", ratios=[0.5, 0.25, 0.25]))
    assert split.test["user"].tolist() == [0, 2] and split.test["item"].tolist() == [2, 3]
    return split


def test_eval_batch_member_without_seen_views_has_empty_history(temporal_data):
    dm = RetrievalDataModule(temporal_data, batch_size=2, max_history=MAX_HISTORY)
    assert dm.eval_users("test").tolist() == [0, 2]
    batch = dm.eval_batch([0, 2], "test")
    # Member a saw 10, 11 and 13 (all train); 12 is their test title. Member z saw nothing.
    assert batch["history"].tolist() == [[1, 2, 4], [0, 0, 0]]
    assert batch["history_watch"][1].tolist() == [0.0] * 3 and batch["history_age_days"][1].tolist() == [0.0] * 3
    assert batch["exclude"].tolist() == [[0, 1, 3], [-1, -1, -1]]
    assert batch["targets"].tolist() == [[2], [3]]
    assert batch["device"].tolist() == [DEVICE_CODE["tv"], 0]


def test_eval_batch_member_without_seen_views_has_unknown_hour(temporal_data):
    dm = RetrievalDataModule(temporal_data, batch_size=2, max_history=MAX_HISTORY)
    batch = dm.eval_batch([0, 2], "test")
    assert batch["hour"].tolist() == [5 + 1, 0]


def test_missing_device_is_unknown_not_a_vocabulary_entry():
    inter = pd.DataFrame({"user_id": [1, 1, 1, 2, 2], "item_id": [1, 2, 3, 1, 2], "timestamp": [1, 2, 3, 4, 5],
                          "device": ["tv", None, "tv", "phone", "tv"]})
    split = index_and_split(validate_raw(RawData(inter)), SplitSpec(method="random", ratios=[1.0, 0.0]))
    dm = RetrievalDataModule(split, batch_size=2, max_history=2, history_mode="sequential")
    assert dm.train_log.device.tolist() == [2, 0, 2, 1, 2]  # member 1's second view has no device
    assert dm.device_vocab == ["phone", "tv"] and dm.n_devices == 2
