"""Beyond-accuracy metrics: catalogue coverage, exposure Gini, popularity, novelty, diversity.

They work on top-k item index matrices ``top_items: LongTensor[B, k]`` as produced by
:func:`streamrec.evaluation.topk_items`, where ``-1`` marks an empty slot (a member with
fewer than ``k`` recommendable items). Empty slots are ignored everywhere.

Catalogue-level metrics (coverage, Gini) take exposure counts accumulated over batches with
:func:`exposure_counts`, so the evaluator never holds all members' lists at once.
Per-member metrics (popularity, novelty, ILD) return ``FloatTensor[B]`` with NaN for members
whose list is too short for the metric to be defined; average them with ``nanmean``.
"""

from __future__ import annotations

import torch

__all__ = [
    "exposure_counts",
    "catalogue_coverage",
    "gini_index",
    "mean_item_value",
    "average_popularity",
    "item_self_information",
    "novelty",
    "unit_genre_vectors",
    "intra_list_diversity",
]


def exposure_counts(top_items: torch.Tensor, n_items: int) -> torch.Tensor:
    """How often each item appears in the given top-k lists.

    Args:
        top_items: LongTensor ``[B, k]`` of item indices, ``-1`` for empty slots.
        n_items: catalogue size.

    Returns:
        LongTensor ``[n_items]``; sum these over batches.
    """
    flat = top_items.reshape(-1)
    flat = flat[flat >= 0]
    if flat.numel() and int(flat.max()) >= n_items:
        raise ValueError(
            f"top_items contains item index {int(flat.max())} but n_items={n_items}; "
            "pass the catalogue size the scores were computed over."
        )
    return torch.bincount(flat, minlength=n_items)


def catalogue_coverage(exposure: torch.Tensor) -> float:
    """Fraction of the catalogue recommended to at least one member.

    Args:
        exposure: ``[n_items]`` exposure counts over ALL catalogue items (see
            :func:`exposure_counts`).

    Returns:
        ``|{i : exposure_i > 0}| / n_items``, in [0, 1].
    """
    if exposure.dim() != 1 or exposure.numel() == 0:
        raise ValueError(
            f"exposure must be a non-empty 1-D tensor [n_items], got shape {tuple(exposure.shape)}."
        )
    return float((exposure > 0).sum()) / exposure.numel()


def gini_index(exposure: torch.Tensor) -> float:
    """Gini index of item exposure over the whole catalogue.

    With the exposures sorted ascending, ``x_(1) <= ... <= x_(n)`` over ALL ``n`` catalogue
    items (never-recommended items count with exposure 0)::

        G = sum_{i=1..n} (2 i - n - 1) x_(i) / (n * sum_i x_i)

    0 means every item is recommended equally often; all exposure on one item gives
    ``(n - 1) / n`` (-> 1 for large catalogues). Returns NaN if nothing was recommended.

    Args:
        exposure: ``[n_items]`` non-negative exposure counts.

    Returns:
        The Gini index as a float.
    """
    if exposure.dim() != 1 or exposure.numel() == 0:
        raise ValueError(
            f"exposure must be a non-empty 1-D tensor [n_items], got shape {tuple(exposure.shape)}."
        )
    x = torch.sort(exposure.to(torch.float64)).values
    total = x.sum()
    if total <= 0:
        return float("nan")
    n = x.numel()
    i = torch.arange(1, n + 1, dtype=torch.float64, device=x.device)
    return float(((2 * i - n - 1) * x).sum() / (n * total))


def mean_item_value(top_items: torch.Tensor, item_values: torch.Tensor) -> torch.Tensor:
    """Per-member mean of a per-item value over the recommended items.

    ``out_u = (1 / |L_u|) * sum_{i in L_u} v_i`` over the non-empty slots ``L_u``.

    Args:
        top_items: LongTensor ``[B, k]``, ``-1`` for empty slots.
        item_values: ``[n_items]`` per-item values (popularity, self-information, ...).

    Returns:
        FloatTensor ``[B]`` (float64), NaN for members with an empty list.
    """
    valid = top_items >= 0
    flat = top_items.clamp(min=0).reshape(-1)
    values = item_values.index_select(0, flat).view(top_items.shape).to(torch.float64)
    values = torch.where(valid, values, torch.zeros((), dtype=torch.float64))
    n = valid.sum(dim=1)
    out = values.sum(dim=1) / n.clamp(min=1)
    return torch.where(n > 0, out, torch.full_like(out, float("nan")))


def average_popularity(top_items: torch.Tensor, item_popularity: torch.Tensor) -> torch.Tensor:
    """Per-member mean training popularity of the recommended items (ARP).

    ``avg_pop_u = (1 / |L_u|) * sum_{i in L_u} pop_i`` over the non-empty slots ``L_u``.

    Args:
        top_items: LongTensor ``[B, k]``, ``-1`` for empty slots.
        item_popularity: ``[n_items]`` training interaction counts.

    Returns:
        FloatTensor ``[B]`` (float64), NaN for members with an empty list.
    """
    return mean_item_value(top_items, item_popularity)


def item_self_information(item_popularity: torch.Tensor, n_users: int) -> torch.Tensor:
    """Self-information of each item in bits: ``-log2(max(pop_i, 1) / n_users)``.

    Args:
        item_popularity: ``[n_items]`` training counts (distinct members per item).
        n_users: number of members in the training data.

    Returns:
        FloatTensor ``[n_items]`` (float64).
    """
    if n_users < 1:
        raise ValueError(f"n_users must be >= 1 for novelty, got {n_users}.")
    pop = item_popularity.to(torch.float64).clamp(min=1.0)
    return -torch.log2(pop / float(n_users))


def novelty(top_items: torch.Tensor, item_popularity: torch.Tensor, n_users: int) -> torch.Tensor:
    """Per-member mean self-information of the recommended items, in bits.

    ``novelty_u = (1 / |L_u|) * sum_{i in L_u} -log2(max(pop_i, 1) / n_users)``
    (Zhou et al., PNAS 2010). ``pop_i`` should count distinct training members who
    interacted with item ``i``, so that ``pop_i / n_users`` is the probability that a member
    knows the item; popularity is clipped to >= 1 so unseen items stay finite
    (``log2(n_users)`` bits). In a loop, precompute :func:`item_self_information` once and
    call :func:`mean_item_value`.

    Args:
        top_items: LongTensor ``[B, k]``, ``-1`` for empty slots.
        item_popularity: ``[n_items]`` training counts.
        n_users: number of members in the training data (the evaluator passes the number
            of rows of the user-item matrices).

    Returns:
        FloatTensor ``[B]`` (float64), NaN for members with an empty list.
    """
    return mean_item_value(top_items, item_self_information(item_popularity, n_users))


def unit_genre_vectors(item_genres: torch.Tensor) -> torch.Tensor:
    """Rows of ``item_genres`` scaled to unit L2 norm; rows without a genre stay zero.

    Args:
        item_genres: ``[n_items, n_genres]`` multi-hot (or non-negative weights).

    Returns:
        FloatTensor ``[n_items, n_genres]`` (float32).
    """
    g = item_genres.to(torch.float32)
    return g / g.norm(dim=-1, keepdim=True).clamp(min=1e-30)


def intra_list_diversity(
    top_items: torch.Tensor, item_genres: torch.Tensor, unit_rows: bool = False
) -> torch.Tensor:
    """Per-member intra-list diversity by genre.

    ``ILD_u = 1 - mean_{i < j in L_u} cos(g_i, g_j)`` over the unordered pairs of non-empty
    slots, where ``g_i`` is the multi-hot genre vector of item ``i``. An item without any
    genre has cosine 0 with everything.

    Args:
        top_items: LongTensor ``[B, k]``, ``-1`` for empty slots.
        item_genres: FloatTensor ``[n_items, n_genres]`` (multi-hot, or any non-negative
            weights).
        unit_rows: True if ``item_genres`` already went through :func:`unit_genre_vectors`,
            to skip the normalisation in a loop.

    Returns:
        FloatTensor ``[B]`` (float64; similarities are summed in float32), NaN for members
        with fewer than 2 recommended items.
    """
    if item_genres.dim() != 2:
        raise ValueError(
            f"item_genres must be [n_items, n_genres], got shape {tuple(item_genres.shape)}."
        )
    valid = top_items >= 0
    flat = top_items.clamp(min=0).reshape(-1)
    unit = item_genres.index_select(0, flat).view(*top_items.shape, -1)  # [B, k, G]
    if not unit_rows:
        unit = unit_genre_vectors(unit)
    unit = unit * valid.unsqueeze(2)  # empty slots become the zero vector
    # sum_{i<j} cos(g_i, g_j) = (|sum_i u_i|^2 - sum_i |u_i|^2) / 2: O(k G) instead of O(k^2 G).
    total = unit.sum(dim=1)
    pair_sim_sum = ((total * total).sum(dim=1) - (unit * unit).sum(dim=(1, 2))) / 2.0
    n = valid.sum(dim=1).to(torch.float64)
    n_pairs = n * (n - 1) / 2.0
    out = 1.0 - pair_sim_sum.to(torch.float64) / n_pairs.clamp(min=1.0)
    return torch.where(n_pairs > 0, out, torch.full_like(out, float("nan")))
