"""Tests of the streaming-service simulator: schema, exactness, determinism, and that the
ground truth really drives the log (popularity, taste, genres, drift, watch fraction)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from streamrec.data.simulator import DEVICES, GENRES, SimulatedData, SimulatorConfig, simulate

SMALL = SimulatorConfig(n_users=300, n_items=500, n_interactions=5000, seed=7)


@pytest.fixture(scope="module")
def data() -> SimulatedData:
    return simulate(SMALL)


def test_frames_have_documented_columns_and_dtypes(data: SimulatedData) -> None:
    log, items, users = data.interactions, data.items, data.users
    assert list(log.columns) == ["user_id", "item_id", "timestamp", "watch_fraction", "device"]
    assert log["user_id"].dtype == np.int64 and log["item_id"].dtype == np.int64
    assert log["timestamp"].dtype == np.int64 and log["watch_fraction"].dtype == np.float32
    assert isinstance(log["device"].dtype, pd.CategoricalDtype)
    assert list(log["device"].cat.categories) == list(DEVICES)

    assert list(items.columns) == ["item_id", "title", "genres", "year", "text"]
    assert items["item_id"].tolist() == list(range(1, SMALL.n_items + 1))
    assert items["year"].dtype == np.int64 and items["year"].between(1920, 2024).all()
    assert all(isinstance(t, str) and t for t in items["title"])
    for genres, text in zip(items["genres"], items["text"]):
        assert isinstance(genres, list) and 1 <= len(genres) <= 3 and len(set(genres)) == len(genres)
        assert set(genres) <= set(data.genres)
        assert text.endswith(".")

    assert list(users.columns) == ["user_id", "age_group", "country", "preferred_device", "signup_timestamp"]
    assert users["user_id"].tolist() == list(range(1, SMALL.n_users + 1))
    for column in ("age_group", "country", "preferred_device"):
        assert isinstance(users[column].dtype, pd.CategoricalDtype)

    assert data.genres == GENRES[: SMALL.n_genres]
    assert data.user_factors.shape == (SMALL.n_users, SMALL.dim) and data.user_factors.dtype == np.float32
    assert data.item_factors.shape == (SMALL.n_items, SMALL.dim) and data.item_factors.dtype == np.float32
    assert data.item_bias.shape == (SMALL.n_items,) and data.user_drift.shape == (SMALL.n_users, SMALL.dim)
    assert data.genre_factors.shape == (SMALL.n_genres, SMALL.dim)


def test_log_has_exact_rows_unique_pairs_and_valid_ids(data: SimulatedData) -> None:
    log = data.interactions
    assert len(log) == SMALL.n_interactions
    assert not log.duplicated(["user_id", "item_id"]).any()
    assert log["user_id"].between(1, SMALL.n_users).all() and log["item_id"].between(1, SMALL.n_items).all()
    per_member = log.groupby("user_id").size()
    assert len(per_member) == SMALL.n_users  # every member has at least one view
    assert per_member.max() <= SMALL.max_views_per_user


@pytest.mark.parametrize("n_interactions", [300, 300 * 40])  # everyone 1 view; everyone at the cap
def test_row_count_is_exact_at_the_extremes(n_interactions: int) -> None:
    config = SimulatorConfig(n_users=300, n_items=200, n_interactions=n_interactions)
    log = simulate(config).interactions
    assert len(log) == n_interactions and not log.duplicated(["user_id", "item_id"]).any()
    assert log.groupby("user_id").size().nunique() == 1


def test_same_seed_gives_identical_data_and_other_seed_differs(data: SimulatedData) -> None:
    again = simulate(SMALL)
    for name in ("interactions", "items", "users"):
        pd.testing.assert_frame_equal(getattr(data, name), getattr(again, name))
    for name in ("user_factors", "item_factors", "item_bias", "user_drift"):
        np.testing.assert_array_equal(getattr(data, name), getattr(again, name))
    other = simulate(SimulatorConfig(n_users=300, n_items=500, n_interactions=5000, seed=8))
    assert not np.array_equal(data.item_factors, other.item_factors)
    assert not data.interactions["item_id"].equals(other.interactions["item_id"])


def test_output_does_not_depend_on_thread_count(data: SimulatedData) -> None:
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1 if threads > 1 else 2)
        pd.testing.assert_frame_equal(simulate(SMALL).interactions, data.interactions)
    finally:
        torch.set_num_threads(threads)
    assert torch.get_num_threads() == threads


def test_watch_fraction_in_unit_interval(data: SimulatedData) -> None:
    fraction = data.interactions["watch_fraction"]
    assert (fraction > 0).all() and (fraction <= 1).all()


def test_timestamps_inside_window_after_signup_and_strictly_increasing(data: SimulatedData) -> None:
    log = data.interactions
    start = pd.Timestamp(SMALL.start).value // 10**9
    end = start + SMALL.days * 86_400
    assert log["timestamp"].between(start, end - 1).all()
    signup = data.users.set_index("user_id")["signup_timestamp"]
    assert (log["timestamp"].to_numpy() >= signup.loc[log["user_id"]].to_numpy()).all()
    same_member = np.diff(log["user_id"].to_numpy()) == 0
    assert (np.diff(log["user_id"].to_numpy()) >= 0).all()
    assert (np.diff(log["timestamp"].to_numpy())[same_member] > 0).all()


def test_popularity_is_long_tailed(data: SimulatedData) -> None:
    views = data.interactions["item_id"].value_counts().reindex(range(1, SMALL.n_items + 1), fill_value=0)
    top_tenth = np.sort(views.to_numpy())[::-1][: SMALL.n_items // 10].sum()
    assert top_tenth / len(data.interactions) > 0.3
    # and it is the truth's popularity term that makes titles popular
    assert np.corrcoef(data.item_bias, np.log1p(views.to_numpy()))[0, 1] > 0.5


def test_views_follow_the_true_scores(data: SimulatedData) -> None:
    log = data.interactions
    scores = data.true_scores(np.arange(1, SMALL.n_users + 1))  # [n_users, n_items]
    viewed = scores[log["user_id"] - 1, log["item_id"] - 1]
    assert viewed.mean() > scores.mean() + 2.0
    # Taste beyond popularity: with item_bias removed, viewed titles still score higher.
    affinity = scores - data.item_bias
    assert affinity[log["user_id"] - 1, log["item_id"] - 1].mean() > affinity.mean() + 1.0
    # A member's top-10% titles by true score hold far more than 10% of their views.
    rank = (-scores).argsort(axis=1).argsort(axis=1)
    assert (rank[log["user_id"] - 1, log["item_id"] - 1] < SMALL.n_items // 10).mean() > 0.4


def test_genres_carry_signal(data: SimulatedData) -> None:
    genre_sets = [set(g) for g in data.items["genres"]]
    factors = data.item_factors / np.linalg.norm(data.item_factors, axis=1, keepdims=True)
    cosine = factors @ factors.T
    share = np.array([[bool(a & b) for b in genre_sets] for a in genre_sets])
    np.fill_diagonal(share, False)
    off_diagonal = ~np.eye(len(genre_sets), dtype=bool)
    assert cosine[share].mean() > cosine[off_diagonal & ~share].mean() + 0.3

    # members' views concentrate on a few genres, more than the catalogue-wide mix does
    primary = np.array([g[0] for g in data.items["genres"]])
    log = data.interactions.assign(genre=primary[data.interactions["item_id"] - 1])
    heavy = log.groupby("user_id").filter(lambda views: len(views) >= 10)
    per_member = heavy.groupby("user_id")["genre"].agg(lambda g: g.value_counts(normalize=True).iloc[0])
    overall = log["genre"].value_counts(normalize=True).iloc[0]
    assert per_member.mean() > overall + 0.1

    # descriptions name the genres ("sci-fi", "children's", "animated", ...)
    for genres, text in zip(data.items["genres"], data.items["text"]):
        assert all(genre.lower()[:5] in text.lower() for genre in genres), (genres, text)


def test_history_drifts_so_recent_views_predict_the_next(data: SimulatedData) -> None:
    log = data.interactions
    alignment = np.einsum(
        "nd,nd->n", data.user_drift[log["user_id"] - 1], data.item_factors[log["item_id"] - 1]
    )
    position = log.groupby("user_id").cumcount().to_numpy()
    length = log.groupby("user_id")["item_id"].transform("size").to_numpy()
    many = length >= 6
    first = alignment[many & (position == 0)].mean()
    last = alignment[many & (position == length - 1)].mean()
    assert last > first + 0.3


def test_watch_fraction_tracks_preference(data: SimulatedData) -> None:
    log = data.interactions
    affinity = np.einsum(
        "nd,nd->n", data.user_factors[log["user_id"] - 1], data.item_factors[log["item_id"] - 1]
    )
    assert np.corrcoef(affinity, log["watch_fraction"])[0, 1] > 0.4


def test_devices_mostly_preferred(data: SimulatedData) -> None:
    preferred = data.users.set_index("user_id")["preferred_device"]
    log = data.interactions
    on_preferred = log["device"].to_numpy() == preferred.loc[log["user_id"]].to_numpy()
    assert 0.7 < on_preferred.mean() < 0.9  # device_loyalty=0.8


def test_true_scores_shape_and_bad_ids(data: SimulatedData) -> None:
    scores = data.true_scores(np.array([1, 300]))
    assert scores.shape == (2, SMALL.n_items) and scores.dtype == np.float32
    expected = data.user_factors[0] @ data.item_factors.T / SMALL.temperature + data.item_bias
    np.testing.assert_allclose(scores[0], expected, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="1..300"):
        data.true_scores(np.array([0]))
    with pytest.raises(ValueError, match="1-d integer"):
        data.true_scores(np.array([1.0]))


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"n_users": 0}, "n_users must be a positive integer"),
        ({"n_items": -5}, "n_items must be a positive integer"),
        ({"dim": 2.5}, "dim must be a positive integer"),
        ({"n_interactions": 299}, "every member needs at least one view"),
        ({"n_interactions": 300 * 40 + 1}, "exceeds n_users \\* max views per member"),
        ({"n_genres": 99}, "n_genres=99"),
        ({"temperature": 0.0}, "temperature must be > 0"),
        ({"temperature": 10**400}, "temperature must be a finite number"),  # was an OverflowError
        ({"popularity_exponent": -1.0}, "popularity_exponent must be >= 0"),
        ({"max_views_fraction": 1.5}, "max_views_fraction must be in"),
        ({"device_loyalty": 2.0}, "device_loyalty must be in"),
        ({"start": "not a date"}, "is not a date"),
        ({"days": 1, "n_items": 200_000, "n_interactions": 300}, "window is too short"),
        ({"seed": -1}, "seed must be a non-negative integer"),
    ],
)
def test_bad_config_raises_a_clear_error(overrides: dict, message: str) -> None:
    config = SimulatorConfig(**{"n_users": 300, "n_items": 200, "n_interactions": 5000, **overrides})
    with pytest.raises(ValueError, match=message):
        simulate(config)
