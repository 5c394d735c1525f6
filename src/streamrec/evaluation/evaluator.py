"""Full-ranking evaluation over the whole catalogue, batched over members.

For each batch of members: score every item -> mask the member's already-seen items with
``-inf`` -> deterministic top-k -> look the top-k up in the test matrix -> accumulate the
per-member metrics and the per-item exposure counts. Only one ``[batch_size, n_items]`` score
matrix is alive at a time; there are no sampled negatives.

Ranking is deterministic: items are ordered by score descending, ties broken by the lower
item index first. An item whose score is ``-inf`` (masked, or scored ``-inf`` by the model)
is never recommended: if a member has fewer than ``k`` such items, the remaining slots of its
list are empty (index ``-1``), are never hits, and are ignored by the beyond-accuracy
metrics; precision still divides by ``k``.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence

import numpy as np
import scipy.sparse as sp
import torch
from tqdm.auto import tqdm

from streamrec.evaluation import beyond_accuracy as ba
from streamrec.evaluation import metrics as m

__all__ = ["evaluate_ranking", "topk_items", "mask_items_"]

# Tied rows are re-ranked in chunks of this many rows to bound the temporary memory
# (a bool and an int32 [chunk, n_items] matrix).
_TIE_CHUNK_ROWS = 128

_ACCURACY_METRICS: dict[str, Callable[[torch.Tensor, torch.Tensor, int], torch.Tensor]] = {
    "recall": m.recall_at_k,
    "ndcg": m.ndcg_at_k,
    "hr": m.hit_rate_at_k,
    "precision": m.precision_at_k,
    "mrr": m.mrr_at_k,
    "map": m.average_precision_at_k,
}


def _ranked_topk(scores: torch.Tensor, k: int, source: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Deterministic top-k of each row: ``(item indices [B, k], scores [B, k])``.

    Order is (-score, item index); slots whose score is ``-inf`` get index ``-1``.
    """
    if scores.dim() != 2:
        raise ValueError(f"{source} must be a 2-D [B, n_items] tensor, got shape {tuple(scores.shape)}.")
    n_rows, n_items = scores.shape
    if not 1 <= k <= n_items:
        raise ValueError(f"k={k} must be in [1, n_items={n_items}]; lower the largest k in ks.")
    # One extra column tells whether the k-th value is tied with an item outside the top-k.
    kk = min(k + 1, n_items)
    vals, idx = torch.topk(scores, kk, dim=1, largest=True, sorted=True)
    # torch.topk ranks NaN above every number, so any NaN among the unmasked items shows up.
    if bool(torch.isnan(vals).any()):
        bad = int(torch.isnan(vals).any(dim=1).nonzero()[0, 0])
        raise ValueError(
            f"{source} contains NaN scores (first in batch row {bad}); the model produced NaN "
            "(diverged training, log of 0, 0/0 in a normalisation?). Fix the model or replace "
            "NaN by -inf yourself if those items must simply never be recommended."
        )
    if kk > k:
        kth = vals[:, k - 1]
        # Rows whose k-th value is -inf have fewer than k recommendable items: all of them are
        # already in the top-k and the rest become empty slots, so there is nothing to fix.
        tied = (vals[:, k] == kth) & (kth != float("-inf"))
        vals, idx = vals[:, :k], idx[:, :k]
        tied_rows = tied.nonzero().squeeze(1)
        if tied_rows.numel():
            # torch.topk picks an arbitrary subset of the items tied at the boundary; take the
            # lowest-index ones instead: everything above the k-th value, then the first
            # (k - n_above) items equal to it.
            idx = idx.clone()
            for rows in tied_rows.split(_TIE_CHUNK_ROWS):
                sub = scores[rows]
                t = kth[rows].unsqueeze(1)
                above = sub > t
                equal = sub == t
                need = k - above.sum(dim=1, keepdim=True, dtype=torch.int32)
                chosen = above | (equal & (equal.cumsum(dim=1, dtype=torch.int32) <= need))
                idx[rows] = chosen.nonzero()[:, 1].view(-1, k)
            vals = torch.gather(scores, 1, idx)
    # Final order (-score, index): sort by index, then a stable sort by score descending.
    idx, perm = torch.sort(idx, dim=1)
    vals = torch.gather(vals, 1, perm)
    vals, perm = torch.sort(vals, dim=1, descending=True, stable=True)
    idx = torch.gather(idx, 1, perm)
    idx = idx.masked_fill(vals == float("-inf"), -1)
    return idx, vals


def topk_items(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Deterministic top-k items per row of an (already masked) score matrix.

    Items are ordered by score descending, ties broken by the lower item index. Items scored
    ``-inf`` count as not recommendable: if a row has fewer than ``k`` finite-or-``+inf``
    scores, its remaining slots are ``-1``.

    Args:
        scores: FloatTensor ``[B, n_items]``; mask seen items with ``-inf`` first (see
            :func:`mask_items_`). Must not contain NaN.
        k: list length, ``1 <= k <= n_items``.

    Returns:
        LongTensor ``[B, k]`` of item indices, ``-1`` for empty slots.

    Raises:
        ValueError: if ``scores`` contains NaN or ``k`` is out of range.
    """
    return _ranked_topk(scores, k, source="scores")[0]


def mask_items_(scores: torch.Tensor, mask: sp.csr_matrix) -> torch.Tensor:
    """Set ``scores[b, i] = -inf`` for every stored entry ``(b, i)`` of ``mask``, in place.

    Args:
        scores: FloatTensor ``[B, n_items]``.
        mask: CSR ``[B, n_items]``; stored entries are the items to mask (e.g. the members'
            training items, ``exclude[users]``).

    Returns:
        ``scores`` (the same tensor), for chaining.
    """
    if mask.shape != tuple(scores.shape):
        raise ValueError(f"mask has shape {mask.shape} but scores has shape {tuple(scores.shape)}.")
    if mask.nnz == 0:
        return scores
    rows = np.repeat(np.arange(mask.shape[0], dtype=np.int64), np.diff(mask.indptr))
    cols = mask.indices.astype(np.int64, copy=False)
    rows_t = torch.from_numpy(rows).to(scores.device)
    cols_t = torch.from_numpy(cols).to(scores.device)
    scores[rows_t, cols_t] = float("-inf")
    return scores


def _binary_csr(x: object, name: str, shape: tuple[int, int] | None) -> sp.csr_matrix:
    """A CSR copy of ``x`` with explicit zeros and duplicates removed and indices sorted."""
    if not sp.issparse(x):
        raise TypeError(
            f"{name} must be a scipy.sparse matrix [n_users, n_items] (e.g. scipy.sparse.csr_matrix), "
            f"got {type(x).__name__}."
        )
    out = sp.csr_matrix(x, copy=True)
    if shape is not None and out.shape != shape:
        raise ValueError(
            f"{name} has shape {out.shape} but test has shape {shape}; both must be "
            "[n_users, n_items] over the same user and item indices."
        )
    out.sum_duplicates()
    out.eliminate_zeros()
    out.sort_indices()
    return out


def _check_users(users: np.ndarray | None, test: sp.csr_matrix) -> np.ndarray:
    n_test = np.diff(test.indptr)
    if users is None:
        if not n_test.any():
            raise ValueError("test has no interactions: no member can be evaluated (give the split a test part).")
        return np.flatnonzero(n_test > 0).astype(np.int64)
    users = np.asarray(users)
    if users.ndim != 1 or not (np.issubdtype(users.dtype, np.integer) or users.size == 0):
        raise ValueError(
            "users must be a 1-D integer array of user indices, "
            f"got dtype={users.dtype} shape={users.shape}."
        )
    users = users.astype(np.int64, copy=False)
    if users.size == 0:
        raise ValueError("users is empty; pass None to evaluate every user with at least one test item.")
    if users.min() < 0 or users.max() >= test.shape[0]:
        raise ValueError(
            f"users must be in [0, {test.shape[0]}) (rows of test), got min={users.min()} max={users.max()}."
        )
    if np.unique(users).size != users.size:
        raise ValueError("users contains duplicates; each member must be evaluated once (use np.unique).")
    empty = users[n_test[users] == 0]
    if empty.size:
        raise ValueError(
            f"{empty.size} of the requested users have no test items (e.g. user {int(empty[0])}); ranking "
            "metrics are undefined for them. Drop them, or pass users=None to evaluate every user with "
            "at least one test item."
        )
    return users


def evaluate_ranking(
    score_fn: Callable[[torch.Tensor], torch.Tensor],
    test: sp.csr_matrix,
    exclude: sp.csr_matrix | None,
    ks: Sequence[int] = (10, 20),
    batch_size: int = 1024,
    item_popularity: np.ndarray | None = None,
    item_genres: sp.csr_matrix | np.ndarray | None = None,
    users: np.ndarray | None = None,
    progress: bool = False,
) -> dict[str, float]:
    """Full-ranking top-k evaluation of a recommender over the whole catalogue.

    Args:
        score_fn: maps a CPU LongTensor of user indices ``[B]`` to scores ``[B, n_items]``
            (float; any device — masking and top-k run where the scores are). The returned
            tensor is masked IN PLACE (a view is cloned first), so return a fresh tensor or a
            buffer you overwrite on the next call. Higher is better; ``-inf`` means "never
            recommend"; NaN raises ``ValueError``.
        test: CSR ``[n_users, n_items]``; stored nonzeros are the relevant items (binary
            relevance).
        exclude: CSR ``[n_users, n_items]``; stored nonzeros are masked (the member's
            training (+ validation) items) and can never be recommended or count as hits.
            ``None`` masks nothing. Test items also present in ``exclude`` still count in
            ``n_relevant`` (a warning is emitted: usually a leaky split).
        ks: cut-offs; each must be in ``[1, n_items]``.
        batch_size: members scored per batch; peak memory is about
            ``batch_size * n_items * 4`` bytes for float32 scores, plus what score_fn needs.
        item_popularity: ``[n_items]`` training interaction counts (ideally distinct
            members per item), enabling ``avg_pop@k`` and ``novelty@k``; novelty uses
            ``n_users = test.shape[0]`` (see :func:`beyond_accuracy.novelty`).
        item_genres: ``[n_items, n_genres]`` multi-hot genres (dense or sparse), enabling
            ``ild@k``. It is held densely as float32.
        users: user indices to evaluate (1-D, unique). Default: every user with at least one
            test item. Explicitly given users without test items raise ``ValueError``.
        progress: show a tqdm progress bar over members.

    Returns:
        ``{"recall@k", "ndcg@k", "hr@k", "precision@k", "mrr@k", "map@k", "coverage@k",
        "gini@k"[, "avg_pop@k", "novelty@k"][, "ild@k"]}`` for each ``k`` in ``ks``, plus
        ``"n_users"``. Accuracy metrics, avg_pop, novelty and ild are means over evaluated
        members (avg_pop/novelty over members with >= 1 recommended item, ild over members
        with >= 2; NaN if there are none); coverage and gini are over the whole catalogue.

    Raises:
        ValueError: NaN among a member's unmasked scores, a score_fn output of the wrong
            shape or dtype, inconsistent shapes, ``ks`` out of ``[1, n_items]``, or
            explicitly requested users without test items.
        TypeError: ``test`` or ``exclude`` is not a scipy sparse matrix.
    """
    test = _binary_csr(test, "test", None)
    n_users, n_items = test.shape
    if exclude is not None:
        exclude = _binary_csr(exclude, "exclude", (n_users, n_items))
        overlap = test.multiply(exclude).nnz
        if overlap:
            warnings.warn(
                f"{overlap} test interactions are also in exclude: they are masked, so they can "
                "never be hits but still count as relevant. Check the train/test split for leakage.",
                stacklevel=2,
            )

    ks = sorted({int(k) for k in ks})
    if not ks or ks[0] < 1 or ks[-1] > n_items:
        raise ValueError(f"ks must be non-empty cut-offs in [1, n_items={n_items}], got {ks}.")
    k_max = ks[-1]
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}.")

    pop_t: torch.Tensor | None = None
    self_info_t: torch.Tensor | None = None  # -log2(max(pop, 1) / n_users) per item
    if item_popularity is not None:
        pop = np.asarray(item_popularity, dtype=np.float64)
        if pop.shape != (n_items,):
            raise ValueError(f"item_popularity must have shape [n_items]=({n_items},), got {pop.shape}.")
        if not np.all(np.isfinite(pop)) or pop.min(initial=0.0) < 0:
            raise ValueError("item_popularity must hold finite, non-negative training counts.")
        pop_t = torch.from_numpy(pop)
        self_info_t = ba.item_self_information(pop_t, n_users)

    genres_t: torch.Tensor | None = None
    if item_genres is not None:
        g = item_genres.toarray() if sp.issparse(item_genres) else np.asarray(item_genres)
        if g.ndim != 2 or g.shape[0] != n_items:
            raise ValueError(f"item_genres must have shape [n_items={n_items}, n_genres], got {g.shape}.")
        genres_t = ba.unit_genre_vectors(torch.as_tensor(g, dtype=torch.float32))

    users = _check_users(users, test)
    n_eval = users.size

    acc_sums = {(name, k): 0.0 for name in _ACCURACY_METRICS for k in ks}
    exposure = {k: torch.zeros(n_items, dtype=torch.int64) for k in ks}
    # Per-member beyond-accuracy metrics: (sum over defined members, number defined).
    per_member_sums = {(name, k): [0.0, 0] for name in ("avg_pop", "novelty", "ild") for k in ks}

    bar = tqdm(total=n_eval, desc="evaluate", unit="user", disable=not progress)
    with torch.inference_mode(), bar:
        for start in range(0, n_eval, batch_size):
            batch_users = users[start : start + batch_size]
            b = batch_users.size
            scores = score_fn(torch.from_numpy(batch_users))
            if not isinstance(scores, torch.Tensor) or scores.shape != (b, n_items):
                got = tuple(scores.shape) if isinstance(scores, torch.Tensor) else type(scores).__name__
                raise ValueError(
                    f"score_fn must return a tensor of shape [B={b}, n_items={n_items}] for B user "
                    f"indices, got {got}."
                )
            if not scores.is_floating_point():
                raise ValueError(f"score_fn must return floating-point scores, got dtype {scores.dtype}.")
            if scores._base is not None:
                scores = scores.clone()  # do not write -inf into the caller's storage
            if exclude is not None:
                mask_items_(scores, exclude[batch_users])
            top, _ = _ranked_topk(scores, k_max, source="score_fn output")
            del scores
            top = top.cpu()

            # Hits: look up (row, item) keys in the batch's sorted test keys.
            test_b = test[batch_users]
            n_rel = np.diff(test_b.indptr)
            test_keys = np.repeat(np.arange(b, dtype=np.int64), n_rel) * n_items + test_b.indices
            top_np = top.numpy()
            cand_keys = np.arange(b, dtype=np.int64)[:, None] * n_items + top_np
            pos = np.minimum(np.searchsorted(test_keys, cand_keys), test_keys.size - 1)
            hits = torch.from_numpy((test_keys[pos] == cand_keys) & (top_np >= 0))
            n_rel_t = torch.from_numpy(n_rel)

            for k in ks:
                for name, fn in _ACCURACY_METRICS.items():
                    acc_sums[(name, k)] += float(fn(hits, n_rel_t, k).to(torch.float64).sum())
                top_k = top[:, :k]
                exposure[k] += ba.exposure_counts(top_k, n_items)
                per_member: dict[str, torch.Tensor] = {}
                if pop_t is not None and self_info_t is not None:
                    per_member["avg_pop"] = ba.mean_item_value(top_k, pop_t)
                    per_member["novelty"] = ba.mean_item_value(top_k, self_info_t)
                if genres_t is not None:
                    per_member["ild"] = ba.intra_list_diversity(top_k, genres_t, unit_rows=True)
                for name, values in per_member.items():
                    defined = ~torch.isnan(values)
                    acc = per_member_sums[(name, k)]
                    acc[0] += float(values[defined].sum())
                    acc[1] += int(defined.sum())
            bar.update(b)

    results: dict[str, float] = {}
    for k in ks:
        for name in _ACCURACY_METRICS:
            results[f"{name}@{k}"] = acc_sums[(name, k)] / n_eval
        results[f"coverage@{k}"] = ba.catalogue_coverage(exposure[k])
        results[f"gini@{k}"] = ba.gini_index(exposure[k])
        names = ["avg_pop", "novelty"] if pop_t is not None else []
        for name in names + (["ild"] if genres_t is not None else []):
            total, count = per_member_sums[(name, k)]
            results[f"{name}@{k}"] = total / count if count else math.nan
    results["n_users"] = float(n_eval)
    return results
