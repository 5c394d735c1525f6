"""Train / validation / test splits of an indexed interactions table.

``random``          per member: shuffle each member's interactions and cut by ``ratios``.
``leave_last_out``  per member, by time: the last ``holdout_test`` titles are test, the
                    ``holdout_val`` before them validation; members with too few titles
                    stay whole in train.
``temporal``        global, by time: the earliest ``ratios[0]`` of all interactions train,
                    then validation, then test (members may appear only in test).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from streamrec.data.schema import ITEM, TIMESTAMP, USER, DataError

SPLIT_METHODS = ("random", "leave_last_out", "temporal")
TRAIN, VAL, TEST = 0, 1, 2


@dataclass
class SplitSpec:
    """How interactions are divided; see the module docstring."""

    method: str = "random"
    # random / temporal: fractions of train, validation, test (validation may be 0).
    ratios: list[float] = field(default_factory=lambda: [0.8, 0.1, 0.1])
    # leave_last_out: titles per member held out for test and for validation.
    holdout_test: int = 1
    holdout_val: int = 1
    # Cold-start: this fraction of titles is held out entirely (all its interactions go to
    # test), so models must place those titles from their content alone.
    holdout_items: float = 0.0
    seed: int = 42

    def __post_init__(self) -> None:
        if self.method not in SPLIT_METHODS:
            raise DataError(f"split method {self.method!r}: choose one of {SPLIT_METHODS}.")
        ratios = [float(r) for r in self.ratios]
        if len(ratios) == 2:
            ratios = [ratios[0], 0.0, ratios[1]]
        if len(ratios) != 3 or min(ratios) < 0 or abs(sum(ratios) - 1) > 1e-6 or ratios[0] == 0:
            raise DataError(
                f"split ratios {list(self.ratios)}: give [train, test] or [train, val, test], "
                "non-negative, summing to 1, with a non-zero train part."
            )
        self.ratios = ratios
        if not 0 <= self.holdout_items < 1:
            raise DataError(f"holdout_items={self.holdout_items}: must lie in [0, 1).")
        if self.holdout_test < 1 or self.holdout_val < 0:
            raise DataError("holdout_test must be >= 1 and holdout_val >= 0.")

    @property
    def has_validation(self) -> bool:
        if self.method == "leave_last_out":
            return self.holdout_val > 0
        return self.ratios[1] > 0


def assign_parts(inter: pd.DataFrame, spec: SplitSpec) -> np.ndarray:
    """Part of each row of ``inter`` (indexed: ``user`` column): 0 train, 1 val, 2 test."""
    if spec.method != "random" and TIMESTAMP not in inter.columns:
        raise DataError(
            f"split method {spec.method!r} orders by time, but the data has no '{TIMESTAMP}' "
            "column. Use method=random or map a timestamp column."
        )
    if spec.holdout_items > 0:
        items = inter[ITEM].to_numpy()
        catalogue = np.unique(items)
        rng = np.random.default_rng([spec.seed, 1])
        cold = rng.choice(catalogue, int(round(spec.holdout_items * len(catalogue))), replace=False)
        is_cold = np.isin(items, cold)
        parts = np.full(len(inter), TEST, dtype=np.int8)
        warm = SplitSpec(spec.method, spec.ratios, spec.holdout_test, spec.holdout_val, 0.0, spec.seed)
        parts[~is_cold] = assign_parts(inter[~is_cold].reset_index(drop=True), warm)
        return parts
    users = inter[USER].to_numpy()
    n = len(inter)
    if spec.method == "temporal":
        order = np.argsort(inter[TIMESTAMP].to_numpy(), kind="stable")
        position = np.empty(n, dtype=np.int64)
        position[order] = np.arange(n)
        cuts = np.round(np.cumsum(spec.ratios)[:2] * n)
        return np.digitize(position, cuts, right=False).astype(np.int8)

    if spec.method == "random":
        key = np.random.default_rng(spec.seed).random(n)
    else:
        key = inter[TIMESTAMP].to_numpy()
    # Sort by (member, key); stable so equal timestamps keep file order.
    order = np.lexsort((np.arange(n), key, users))
    sorted_users = users[order]
    starts = np.flatnonzero(np.r_[True, sorted_users[1:] != sorted_users[:-1]])
    sizes = np.diff(np.r_[starts, n])
    rank = np.arange(n) - np.repeat(starts, sizes)
    size = np.repeat(sizes, sizes)
    part_sorted = np.full(n, TRAIN, dtype=np.int8)
    if spec.method == "random":
        train_end = np.round(size * spec.ratios[0])
        val_end = np.round(size * (spec.ratios[0] + spec.ratios[1]))
        part_sorted[rank >= train_end] = VAL
        part_sorted[rank >= val_end] = TEST
    else:
        held = spec.holdout_test + spec.holdout_val
        from_end = size - 1 - rank
        eligible = size > held
        part_sorted[eligible & (from_end < held)] = VAL
        part_sorted[eligible & (from_end < spec.holdout_test)] = TEST
    parts = np.empty(n, dtype=np.int8)
    parts[order] = part_sorted
    return parts
