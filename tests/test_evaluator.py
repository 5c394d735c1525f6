"""`evaluate_ranking`: a hand-computed example, edge cases, and a brute-force reference."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from streamrec.evaluation import evaluate_ranking

LOG2_3 = math.log2(3)


def _csr(rows: list[list[int]], n_items: int) -> sp.csr_matrix:
    r = [u for u, items in enumerate(rows) for _ in items]
    c = [i for items in rows for i in items]
    return sp.csr_matrix((np.ones(len(c)), (r, c)), shape=(len(rows), n_items))


def _fixed_scores(matrix: list[list[float]]):
    full = torch.tensor(matrix)
    return lambda users: full[users]


# 3 members x 5 items.
SCORES = [
    [0.9, 0.8, 0.7, 0.6, 0.5],
    [0.1, 0.5, 0.5, 0.5, 0.2],  # three-way tie: ranked 1, 2, 3 by index
    [0.3, 0.2, 0.1, 0.0, 0.4],
]
EXCLUDE = _csr([[0], [], [4, 0]], 5)
TEST = _csr([[2, 4], [2], [3]], 5)
POP = np.array([5.0, 1.0, 3.0, 0.0, 2.0])
GENRES = np.array([[1, 0], [1, 0], [1, 1], [0, 1], [0, 0]], dtype=np.float32)


def test_hand_computed_example() -> None:
    # Rankings after masking: u0 [1, 2, 3, 4], u1 [1, 2, 3, 4, 0], u2 [1, 2, 3].
    # Top-2 is [1, 2] for everyone; hits: u0 [0, 1] (n_rel 2), u1 [0, 1] (n_rel 1), u2 [0, 0].
    res = evaluate_ranking(
        _fixed_scores(SCORES), TEST, EXCLUDE, ks=(1, 2), batch_size=2,
        item_popularity=POP, item_genres=GENRES,
    )
    c = 1 / LOG2_3
    expected = {
        "recall@2": (1 / 2 + 1 + 0) / 3,
        "precision@2": (1 / 2 + 1 / 2 + 0) / 3,
        "ndcg@2": (c / (1 + c) + c + 0) / 3,
        "hr@2": 2 / 3,
        "mrr@2": (1 / 2 + 1 / 2) / 3,
        "map@2": ((1 / 2) / 2 + (1 / 2) / 1) / 3,
        "coverage@2": 2 / 5,
        # exposure [0, 3, 3, 0, 0] -> sorted [0, 0, 0, 3, 3]: (2*3 + 4*3) / (5 * 6)
        "gini@2": 18 / 30,
        "avg_pop@2": (1 + 3) / 2,
        # -log2(pop / n_users) with n_users = 3: item 1 -> log2(3), item 2 -> 0
        "novelty@2": LOG2_3 / 2,
        "ild@2": 1 - 1 / math.sqrt(2),
        "recall@1": 0.0, "precision@1": 0.0, "ndcg@1": 0.0, "hr@1": 0.0, "mrr@1": 0.0, "map@1": 0.0,
        "coverage@1": 1 / 5,
        "gini@1": 12 / 15,  # exposure [0, 3, 0, 0, 0]: 4*3 / (5 * 3)
        "avg_pop@1": 1.0,
        "novelty@1": LOG2_3,
        "n_users": 3.0,
    }
    assert set(res) == set(expected) | {"ild@1"}
    for key, value in expected.items():
        assert res[key] == pytest.approx(value), key
    assert math.isnan(res["ild@1"])  # one-item lists have no pairs


def test_optional_metrics_are_skipped() -> None:
    res = evaluate_ranking(_fixed_scores(SCORES), TEST, EXCLUDE, ks=(2,))
    names = ("recall", "ndcg", "hr", "precision", "mrr", "map", "coverage", "gini")
    assert set(res) == {f"{name}@2" for name in names} | {"n_users"}


def test_no_exclude_masks_nothing() -> None:
    # Unmasked, u0 ranks [0, 1, 2, ...]: its test item 2 is at rank 3.
    res = evaluate_ranking(_fixed_scores(SCORES), TEST, None, ks=(3,), users=np.array([0]))
    assert res["recall@3"] == pytest.approx(1 / 2)
    assert res["mrr@3"] == pytest.approx(1 / 3)
    assert res["n_users"] == 1.0


def test_masked_relevant_item_is_never_a_hit() -> None:
    # Item 0 is both test and excluded for u0: it has the top score but must not count.
    test = _csr([[0, 2]], 3)
    exclude = _csr([[0]], 3)
    with pytest.warns(UserWarning, match="also in exclude"):
        res = evaluate_ranking(_fixed_scores([[0.9, 0.5, 0.1]]), test, exclude, ks=(1, 2))
    assert res["hr@1"] == 0.0
    assert res["recall@2"] == pytest.approx(1 / 2)  # the masked item still counts as relevant
    assert res["mrr@2"] == pytest.approx(1 / 2)


def test_fewer_unmasked_items_than_k() -> None:
    # 4 items, 2 masked: the list has 2 items; precision still divides by k = 3.
    test = _csr([[3]], 4)
    exclude = _csr([[0, 1]], 4)
    res = evaluate_ranking(
        _fixed_scores([[0.4, 0.3, 0.2, 0.1]]), test, exclude, ks=(3,),
        item_popularity=np.array([1.0, 1.0, 4.0, 2.0]),
    )
    assert res["hr@3"] == 1.0
    assert res["precision@3"] == pytest.approx(1 / 3)
    assert res["mrr@3"] == pytest.approx(1 / 2)
    assert res["coverage@3"] == pytest.approx(2 / 4)
    assert res["avg_pop@3"] == pytest.approx(3.0)  # mean over the 2 recommended items


def test_score_fn_output_view_is_not_modified() -> None:
    full = torch.tensor(SCORES)
    before = full.clone()

    def view_fn(users: torch.Tensor) -> torch.Tensor:
        return full[int(users[0]) : int(users[-1]) + 1]  # a view, only valid for contiguous users

    evaluate_ranking(view_fn, TEST, EXCLUDE, ks=(2,), batch_size=2)
    torch.testing.assert_close(full, before)


def test_nan_scores_raise() -> None:
    scores = [row[:] for row in SCORES]
    scores[1][3] = float("nan")
    with pytest.raises(ValueError, match="score_fn output contains NaN"):
        evaluate_ranking(_fixed_scores(scores), TEST, EXCLUDE, ks=(2,))


def test_input_errors() -> None:
    score_fn = _fixed_scores(SCORES)
    with pytest.raises(ValueError, match="no test items"):
        evaluate_ranking(score_fn, _csr([[2], [], [3]], 5), None, ks=(2,), users=np.array([0, 1]))
    with pytest.raises(ValueError, match=r"shape \[B=3, n_items=5\]"):
        evaluate_ranking(lambda u: torch.zeros(len(u), 4), TEST, None, ks=(2,))
    with pytest.raises(ValueError, match="exclude has shape"):
        evaluate_ranking(score_fn, TEST, _csr([[0]], 5), ks=(2,))
    with pytest.raises(ValueError, match="ks must be"):
        evaluate_ranking(score_fn, TEST, None, ks=(6,))
    with pytest.raises(ValueError, match="duplicates"):
        evaluate_ranking(score_fn, TEST, None, ks=(2,), users=np.array([0, 0]))
    with pytest.raises(ValueError, match="item_popularity"):
        evaluate_ranking(score_fn, TEST, None, ks=(2,), item_popularity=np.ones(4))


# ---------------------------------------------------------------------------------------------
# Brute-force reference: numpy stable argsort and the textbook formulas, one member at a time.


def _reference(scores, test, exclude, ks, pop, genres) -> dict[str, float]:
    n_users, n_items = scores.shape
    users = [u for u in range(n_users) if test[u].nnz > 0]
    out: dict[str, float] = {}
    for k in ks:
        names = ("recall", "ndcg", "hr", "precision", "mrr", "map", "avg_pop", "novelty", "ild")
        acc: dict[str, list[float]] = {name: [] for name in names}
        exposure = np.zeros(n_items)
        for u in users:
            s = scores[u].astype(np.float64).copy()
            s[exclude[u].indices] = -np.inf
            order = [i for i in np.argsort(-s, kind="stable") if s[i] != -np.inf][:k]
            relevant = set(test[u].indices.tolist())
            rel = [1.0 if i in relevant else 0.0 for i in order]
            n_rel = len(relevant)
            n_hits = sum(rel)
            acc["recall"].append(n_hits / n_rel)
            acc["precision"].append(n_hits / k)
            dcg = sum(r / math.log2(rank + 2) for rank, r in enumerate(rel))
            idcg = sum(1 / math.log2(rank + 2) for rank in range(min(n_rel, k)))
            acc["ndcg"].append(dcg / idcg)
            acc["hr"].append(float(n_hits > 0))
            acc["mrr"].append(next((1 / (rank + 1) for rank, r in enumerate(rel) if r), 0.0))
            ap = sum(sum(rel[: rank + 1]) / (rank + 1) * r for rank, r in enumerate(rel))
            acc["map"].append(ap / min(n_rel, k))
            for i in order:
                exposure[i] += 1
            if order:
                acc["avg_pop"].append(np.mean([pop[i] for i in order]))
                acc["novelty"].append(np.mean([-math.log2(max(pop[i], 1) / n_users) for i in order]))
            if len(order) >= 2:
                sims = []
                for a in range(len(order)):
                    for b in range(a + 1, len(order)):
                        ga, gb = genres[order[a]], genres[order[b]]
                        na, nb = np.linalg.norm(ga), np.linalg.norm(gb)
                        sims.append(0.0 if na == 0 or nb == 0 else float(ga @ gb / (na * nb)))
                acc["ild"].append(1 - np.mean(sims))
        for m, values in acc.items():
            out[f"{m}@{k}"] = float(np.mean(values)) if values else math.nan
        out[f"coverage@{k}"] = float((exposure > 0).mean())
        x = np.sort(exposure)
        n = len(x)
        out[f"gini@{k}"] = float(sum((2 * (i + 1) - n - 1) * x[i] for i in range(n)) / (n * x.sum()))
    out["n_users"] = float(len(users))
    return out


def _random_problem(seed: int, n_users: int = 40, n_items: int = 30):
    rng = np.random.default_rng(seed)
    # Few distinct score values -> many ties, also across the top-k boundary.
    scores = rng.integers(0, 4, size=(n_users, n_items)).astype(np.float32)
    test = rng.random((n_users, n_items)) < 0.1
    exclude = (rng.random((n_users, n_items)) < 0.3) & ~test
    # User 0 has only 3 recommendable items, one of them relevant.
    test[0, :] = False
    test[0, -1] = True
    exclude[0, :] = True
    exclude[0, -3:] = False
    pop = rng.integers(0, 10, size=n_items).astype(np.float64)
    genres = (rng.random((n_items, 4)) < 0.4).astype(np.float32)
    test_csr = sp.csr_matrix(test, dtype=np.float64)
    exclude_csr = sp.csr_matrix(exclude, dtype=np.float64)
    return scores, test_csr, exclude_csr, pop, genres


@pytest.mark.parametrize("seed", [0, 1])
def test_matches_brute_force_reference(seed: int) -> None:
    scores, test, exclude, pop, genres = _random_problem(seed)
    ks = (1, 3, 5, 10)
    expected = _reference(scores, test, exclude, ks, pop, genres)
    for batch_size in (1, 7, 1000):
        res = evaluate_ranking(
            _fixed_scores(scores.tolist()), test, exclude, ks=ks, batch_size=batch_size,
            item_popularity=pop, item_genres=sp.csr_matrix(genres),
        )
        assert set(res) == set(expected)
        for key, value in expected.items():
            assert res[key] == pytest.approx(value, rel=1e-5, abs=1e-9, nan_ok=True), (batch_size, key)


def test_batch_size_invariance_with_progress_bar() -> None:
    scores, test, exclude, pop, genres = _random_problem(3, n_users=57, n_items=25)
    results = []
    for batch_size in (1, 1000):
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # the random problem has no test/exclude overlap
            results.append(
                evaluate_ranking(
                    _fixed_scores(scores.tolist()), test, exclude, ks=(5, 10), batch_size=batch_size,
                    item_popularity=pop, item_genres=genres, progress=batch_size == 1,
                )
            )
    assert results[0].keys() == results[1].keys()
    for key in results[0]:
        assert results[0][key] == pytest.approx(results[1][key], rel=1e-6, nan_ok=True), key


def test_a_test_part_without_interactions_is_a_clear_error():
    empty = sp.csr_matrix((len(SCORES), len(SCORES[0])))  # was a ZeroDivisionError
    with pytest.raises(ValueError, match="test has no interactions: no member can be evaluated"):
        evaluate_ranking(_fixed_scores(SCORES), empty, EXCLUDE, ks=(2,))
