"""Per-member ranking-accuracy metrics on a boolean hit matrix.

Every function here takes

- ``hits``: ``BoolTensor[B, K]``; ``hits[b, r]`` is True when the item ranked ``r + 1`` for
  member ``b`` is relevant. Empty slots (a member with fewer than ``K`` recommendable
  items) must be False.
- ``n_relevant``: ``LongTensor[B]``; the number of relevant (test) items of each member,
  which must be at least 1.
- ``k``: the cut-off, ``1 <= k <= K``; only the first ``k`` columns of ``hits`` are used.

and returns ``FloatTensor[B]`` (float32), one value per member. The evaluator averages
these over members. Relevance is binary throughout.
"""

from __future__ import annotations

import torch

__all__ = [
    "recall_at_k",
    "precision_at_k",
    "ndcg_at_k",
    "hit_rate_at_k",
    "mrr_at_k",
    "average_precision_at_k",
]


def _check(hits: torch.Tensor, n_relevant: torch.Tensor, k: int) -> torch.Tensor:
    """Validate the common arguments and return ``hits[:, :k]`` as float32 ``[B, k]``."""
    if hits.dim() != 2 or hits.dtype != torch.bool:
        raise ValueError(
            f"hits must be a 2-D bool tensor [B, K], got dtype={hits.dtype} shape={tuple(hits.shape)}; "
            "build it as `top_items_are_relevant` (True where the ranked item is a test item)."
        )
    if n_relevant.shape != hits.shape[:1]:
        raise ValueError(
            f"n_relevant must have shape [B]={hits.shape[0]} to match hits, got {tuple(n_relevant.shape)}."
        )
    if not isinstance(k, int) or isinstance(k, bool) or not 1 <= k <= hits.shape[1]:
        raise ValueError(
            f"k must be an int in [1, {hits.shape[1]}] (the number of ranked columns in hits), got {k!r}; "
            "compute the top-k with k = max(ks) and slice."
        )
    if hits.shape[0] and bool((n_relevant < 1).any()):
        raise ValueError(
            "every member needs n_relevant >= 1: metrics are undefined for members without test "
            "items; drop them before evaluating."
        )
    return hits[:, :k].to(torch.float32)


def _discounts(k: int, device: torch.device) -> torch.Tensor:
    """``1 / log2(r + 1)`` for ranks ``r = 1..k``; FloatTensor ``[k]``."""
    ranks = torch.arange(1, k + 1, device=device, dtype=torch.float32)
    return 1.0 / torch.log2(ranks + 1.0)


def recall_at_k(hits: torch.Tensor, n_relevant: torch.Tensor, k: int) -> torch.Tensor:
    """Recall@k = (hits in the top k) / n_relevant.

    The denominator is the member's full number of relevant items, not ``min(k,
    n_relevant)``: a member with 30 test items can reach at most 10/30 at k=10. This is the
    convention of Microsoft Recommenders (``recall_at_k`` in ``python_evaluation``), which our
    published comparison numbers use; "truncated recall" (``min(k, n)``) would be higher.

    Args:
        hits: BoolTensor ``[B, K]``, see the module docstring.
        n_relevant: LongTensor ``[B]``, >= 1.
        k: cut-off, ``1 <= k <= K``.

    Returns:
        FloatTensor ``[B]`` in [0, 1].
    """
    h = _check(hits, n_relevant, k)
    return h.sum(dim=1) / n_relevant.to(torch.float32)


def precision_at_k(hits: torch.Tensor, n_relevant: torch.Tensor, k: int) -> torch.Tensor:
    """Precision@k = (hits in the top k) / k.

    The denominator is always ``k``, even for a member with fewer than ``k`` relevant items
    (or fewer than ``k`` recommendable items), so such a member cannot reach 1.

    Args:
        hits: BoolTensor ``[B, K]``.
        n_relevant: LongTensor ``[B]``, >= 1 (only validated; precision does not use it).
        k: cut-off, ``1 <= k <= K``.

    Returns:
        FloatTensor ``[B]`` in [0, 1].
    """
    h = _check(hits, n_relevant, k)
    return h.sum(dim=1) / float(k)


def ndcg_at_k(hits: torch.Tensor, n_relevant: torch.Tensor, k: int) -> torch.Tensor:
    """NDCG@k with binary relevance.

    ``DCG = sum_{r=1..k} rel_r / log2(r + 1)``; ``IDCG`` is the DCG of ``min(n_relevant, k)``
    hits at the top ranks; NDCG = DCG / IDCG.

    Args:
        hits: BoolTensor ``[B, K]``.
        n_relevant: LongTensor ``[B]``, >= 1.
        k: cut-off, ``1 <= k <= K``.

    Returns:
        FloatTensor ``[B]`` in [0, 1].
    """
    h = _check(hits, n_relevant, k)
    disc = _discounts(k, hits.device)
    dcg = h @ disc
    ideal_cum = torch.cumsum(disc, dim=0)  # ideal_cum[m - 1] = IDCG with m ideal hits
    n_ideal = torch.clamp(n_relevant, max=k).to(torch.long) - 1
    return dcg / ideal_cum[n_ideal]


def hit_rate_at_k(hits: torch.Tensor, n_relevant: torch.Tensor, k: int) -> torch.Tensor:
    """HR@k = 1 if at least one relevant item is in the top k, else 0.

    Args:
        hits: BoolTensor ``[B, K]``.
        n_relevant: LongTensor ``[B]``, >= 1 (only validated).
        k: cut-off, ``1 <= k <= K``.

    Returns:
        FloatTensor ``[B]`` of 0.0 / 1.0.
    """
    h = _check(hits, n_relevant, k)
    return (h.sum(dim=1) > 0).to(torch.float32)


def mrr_at_k(hits: torch.Tensor, n_relevant: torch.Tensor, k: int) -> torch.Tensor:
    """MRR@k = 1 / (rank of the first relevant item) if it is within the top k, else 0.

    Args:
        hits: BoolTensor ``[B, K]``.
        n_relevant: LongTensor ``[B]``, >= 1 (only validated).
        k: cut-off, ``1 <= k <= K``.

    Returns:
        FloatTensor ``[B]`` in [0, 1].
    """
    h = _check(hits, n_relevant, k)
    ranks = torch.arange(1, k + 1, device=hits.device, dtype=torch.float32)
    # Reciprocal rank at every hit position; the first hit has the largest one.
    rr = h / ranks
    return rr.max(dim=1).values


def average_precision_at_k(hits: torch.Tensor, n_relevant: torch.Tensor, k: int) -> torch.Tensor:
    """AP@k (averaged over members it is MAP@k).

    ``AP@k = sum_{r=1..k} P@r * rel_r / min(n_relevant, k)``, where ``P@r`` is the precision
    of the top ``r``.

    Args:
        hits: BoolTensor ``[B, K]``.
        n_relevant: LongTensor ``[B]``, >= 1.
        k: cut-off, ``1 <= k <= K``.

    Returns:
        FloatTensor ``[B]`` in [0, 1].
    """
    h = _check(hits, n_relevant, k)
    ranks = torch.arange(1, k + 1, device=hits.device, dtype=torch.float32)
    precision_at_r = torch.cumsum(h, dim=1) / ranks
    return (precision_at_r * h).sum(dim=1) / torch.clamp(n_relevant, max=k).to(torch.float32)
