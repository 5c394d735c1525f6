"""Per-member ranking metrics, beyond-accuracy metrics and the deterministic top-k, by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from streamrec.evaluation import (
    average_popularity,
    average_precision_at_k,
    catalogue_coverage,
    exposure_counts,
    gini_index,
    hit_rate_at_k,
    intra_list_diversity,
    item_self_information,
    mrr_at_k,
    ndcg_at_k,
    novelty,
    precision_at_k,
    recall_at_k,
    topk_items,
    unit_genre_vectors,
)

INV_LOG2_3 = 1.0 / math.log2(3)  # discount of rank 2; rank 1 has 1, rank 3 has 1/2

# Member A: hits at ranks 1 and 3, 3 relevant.   Member B: no hit, 1 relevant.
# Member C: hit at rank 2, 1 relevant (fewer relevant than k).   Member D: hits at 1, 2; 2 relevant.
HITS = torch.tensor(
    [
        [True, False, True, False],
        [False, False, False, False],
        [False, True, False, False],
        [True, True, False, False],
    ]
)
N_REL = torch.tensor([3, 1, 1, 2])

EXPECTED_K4 = {
    recall_at_k: [2 / 3, 0.0, 1.0, 1.0],
    precision_at_k: [2 / 4, 0.0, 1 / 4, 2 / 4],
    ndcg_at_k: [(1 + 0.5) / (1 + INV_LOG2_3 + 0.5), 0.0, INV_LOG2_3, 1.0],
    hit_rate_at_k: [1.0, 0.0, 1.0, 1.0],
    mrr_at_k: [1.0, 0.0, 0.5, 1.0],
    # sum_r P@r * rel_r / min(n_rel, k)
    average_precision_at_k: [(1 / 1 + 2 / 3) / 3, 0.0, (1 / 2) / 1, (1 / 1 + 2 / 2) / 2],
}

EXPECTED_K2 = {
    recall_at_k: [1 / 3, 0.0, 1.0, 1.0],
    precision_at_k: [1 / 2, 0.0, 1 / 2, 1.0],
    ndcg_at_k: [1 / (1 + INV_LOG2_3), 0.0, INV_LOG2_3, 1.0],
    hit_rate_at_k: [1.0, 0.0, 1.0, 1.0],
    mrr_at_k: [1.0, 0.0, 0.5, 1.0],
    average_precision_at_k: [(1 / 1) / 2, 0.0, (1 / 2) / 1, (1 + 1) / 2],
}


@pytest.mark.parametrize("k, expected", [(4, EXPECTED_K4), (2, EXPECTED_K2)])
def test_accuracy_metrics_by_hand(k: int, expected: dict) -> None:
    for fn, values in expected.items():
        out = fn(HITS, N_REL, k)
        assert out.shape == (4,) and out.dtype == torch.float32, fn.__name__
        torch.testing.assert_close(out, torch.tensor(values), msg=fn.__name__)


def test_recall_denominator_is_n_relevant_not_min_k() -> None:
    # 2 hits in the top 2, but 5 relevant items: Microsoft Recommenders' recall is 2/5, not 2/2.
    hits = torch.tensor([[True, True]])
    assert recall_at_k(hits, torch.tensor([5]), 2).item() == pytest.approx(2 / 5)
    assert ndcg_at_k(hits, torch.tensor([5]), 2).item() == pytest.approx(1.0)
    assert average_precision_at_k(hits, torch.tensor([5]), 2).item() == pytest.approx(1.0)


@pytest.mark.parametrize(
    "fn", [recall_at_k, precision_at_k, ndcg_at_k, hit_rate_at_k, mrr_at_k, average_precision_at_k]
)
def test_metric_argument_errors(fn) -> None:
    with pytest.raises(ValueError, match="n_relevant >= 1"):
        fn(HITS, torch.tensor([3, 0, 1, 2]), 2)
    with pytest.raises(ValueError, match="k must be an int"):
        fn(HITS, N_REL, 5)
    with pytest.raises(ValueError, match="bool"):
        fn(HITS.float(), N_REL, 2)


def test_topk_breaks_ties_by_lower_index() -> None:
    scores = torch.tensor([[1.0, 3.0, 3.0, 2.0, 3.0], [0.0, 0.0, 0.0, 0.0, 0.0]])
    assert topk_items(scores, 2).tolist() == [[1, 2], [0, 1]]
    assert topk_items(scores, 4).tolist() == [[1, 2, 4, 3], [0, 1, 2, 3]]
    assert topk_items(scores, 5).tolist() == [[1, 2, 4, 3, 0], [0, 1, 2, 3, 4]]


def test_topk_matches_stable_argsort_with_many_ties() -> None:
    # Scores with 3 distinct values over 3,000 items: torch.topk alone returns arbitrary
    # members of the tied groups; we must match a stable sort on -score.
    gen = torch.Generator().manual_seed(0)
    scores = torch.randint(0, 3, (64, 3000), generator=gen).float()
    scores[::7, :] = 0.0  # rows that are entirely tied
    for k in (1, 7, 50):
        expected = np.argsort(-scores.numpy(), axis=1, kind="stable")[:, :k]
        np.testing.assert_array_equal(topk_items(scores, k).numpy(), expected)


def test_topk_empty_slots_and_inf() -> None:
    inf = float("inf")
    scores = torch.tensor([[-inf, 1.0, -inf, -inf], [inf, 0.0, inf, -inf]])
    assert topk_items(scores, 3).tolist() == [[1, -1, -1], [0, 2, 1]]


def test_topk_nan_and_bad_k_raise() -> None:
    with pytest.raises(ValueError, match="NaN"):
        topk_items(torch.tensor([[0.0, float("nan"), 1.0]]), 1)
    with pytest.raises(ValueError, match="k=4"):
        topk_items(torch.zeros(2, 3), 4)


def test_exposure_and_coverage() -> None:
    top = torch.tensor([[0, 2], [2, -1]])
    exposure = exposure_counts(top, 4)
    assert exposure.tolist() == [1, 0, 2, 0]
    assert catalogue_coverage(exposure) == pytest.approx(2 / 4)
    assert catalogue_coverage(torch.tensor([0, 0, 2, 2])) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="n_items=2"):
        exposure_counts(top, 2)


@pytest.mark.parametrize(
    "exposure, expected",
    [
        # sorted x, n=4: sum (2i - n - 1) x_i = (1)*2 + (3)*2 = 8; / (n * sum x) = 8 / 16
        ([0, 0, 2, 2], 0.5),
        ([2, 0, 2, 0], 0.5),
        ([1, 1, 1, 1], 0.0),
        ([0, 0, 0, 4], 3 / 4),  # all exposure on one item: (n - 1) / n
        ([3, 1, 2], 2 / 9),  # (-2)*1 + 0*2 + 2*3 = 4; / (3 * 6)
    ],
)
def test_gini_by_hand(exposure: list[int], expected: float) -> None:
    assert gini_index(torch.tensor(exposure)) == pytest.approx(expected)


def test_gini_of_nothing_is_nan() -> None:
    assert math.isnan(gini_index(torch.zeros(3, dtype=torch.long)))


def test_average_popularity_and_novelty() -> None:
    pop = torch.tensor([16.0, 0.0, 4.0, 8.0])
    top = torch.tensor([[0, 2], [3, -1], [-1, -1], [1, 3]])
    avg = average_popularity(top, pop)
    torch.testing.assert_close(avg[:2], torch.tensor([10.0, 8.0], dtype=torch.float64))
    assert math.isnan(avg[2].item())
    # -log2(max(pop, 1) / 16): item 0 -> 0, item 1 -> 4 (clipped to 1), item 2 -> 2, item 3 -> 1
    nov = novelty(top, pop, n_users=16)
    torch.testing.assert_close(
        item_self_information(pop, 16), torch.tensor([0.0, 4.0, 2.0, 1.0], dtype=torch.float64)
    )
    torch.testing.assert_close(nov[[0, 1, 3]], torch.tensor([1.0, 1.0, 2.5], dtype=torch.float64))
    assert math.isnan(nov[2].item())


def test_intra_list_diversity_by_hand() -> None:
    genres = torch.tensor(
        [
            [1.0, 0.0, 0.0],
            [1.0, 1.0, 0.0],
            [0.0, 0.0, 1.0],
            [0.0, 0.0, 0.0],  # no genre: cosine 0 with everything
        ]
    )
    top = torch.tensor([[0, 1, 2], [0, 3, -1], [0, 1, -1], [2, -1, -1], [0, 0, -1]])
    ild = intra_list_diversity(top, genres)
    cos01 = 1 / math.sqrt(2)
    expected = [1 - (cos01 + 0 + 0) / 3, 1.0, 1 - cos01]
    torch.testing.assert_close(ild[:3], torch.tensor(expected, dtype=torch.float64))
    assert math.isnan(ild[3].item())  # fewer than 2 items: undefined
    assert ild[4].item() == pytest.approx(0.0)  # identical items
    # The evaluator's fast path: rows normalised once up front.
    fast = intra_list_diversity(top, unit_genre_vectors(genres * 3.0), unit_rows=True)
    torch.testing.assert_close(fast, ild, equal_nan=True)
