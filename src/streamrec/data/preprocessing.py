"""Turning raw logs into implicit feedback: duplicates, thresholds, k-core filtering.

Every step logs how many rows it removed and records it in the returned report, so that
nothing is dropped silently beyond what the config asks for.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import pandas as pd

from streamrec.data.schema import ITEM_ID, RATING, TIMESTAMP, USER_ID, WATCH_FRACTION, DataError, RawData

log = logging.getLogger(__name__)

DUPLICATE_POLICIES = ("keep_last", "keep_first", "error")


@dataclass
class Preprocessing:
    """What counts as a positive interaction and which members/titles are kept."""

    # Keep interactions with rating >= min_rating (e.g. 4 on MovieLens); None keeps all.
    min_rating: float | None = None
    # Keep views watched at least this far (0..1); None keeps all.
    min_watch_fraction: float | None = None
    # Repeated (member, title) pairs: keep the latest, the earliest, or raise.
    duplicates: str = "keep_last"
    # k-core: repeatedly drop members / titles with fewer interactions than these.
    min_user_interactions: int = 0
    min_item_interactions: int = 0

    def __post_init__(self) -> None:
        if self.duplicates not in DUPLICATE_POLICIES:
            raise DataError(f"duplicates={self.duplicates!r}: choose one of {DUPLICATE_POLICIES}.")
        if self.min_watch_fraction is not None and not 0 <= self.min_watch_fraction <= 1:
            raise DataError(f"min_watch_fraction={self.min_watch_fraction}: must lie in [0, 1].")
        if self.min_user_interactions < 0 or self.min_item_interactions < 0:
            raise DataError("min_user_interactions and min_item_interactions must be >= 0.")


def preprocess(data: RawData, config: Preprocessing) -> tuple[RawData, dict[str, int]]:
    """Apply ``config`` to validated ``data``; return the result and rows removed per step."""
    inter = data.interactions
    report: dict[str, int] = {"rows_in": len(inter)}

    def record(step: str, before: int, after: int) -> None:
        report[step] = before - after
        if before != after:
            log.info("%s: %s removed %d of %d rows", data.name, step, before - after, before)

    # Duplicates first, so a threshold applies to the interaction we keep.
    order = [TIMESTAMP] if TIMESTAMP in inter.columns else []
    dup = inter.duplicated([USER_ID, ITEM_ID], keep=False)
    if dup.any():
        if config.duplicates == "error":
            example = inter.loc[dup, [USER_ID, ITEM_ID]].iloc[0].tolist()
            raise DataError(
                f"{data.where('interactions')}: {int(dup.sum())} rows repeat a (user_id, item_id) "
                f"pair, e.g. {example}. Set duplicates to keep_last or keep_first, or deduplicate."
            )
        before = len(inter)
        inter = inter.sort_values(order, kind="stable") if order else inter
        keep = "last" if config.duplicates == "keep_last" else "first"
        inter = inter.drop_duplicates([USER_ID, ITEM_ID], keep=keep)
        record("duplicates", before, len(inter))

    for column, threshold, step in (
        (RATING, config.min_rating, "min_rating"),
        (WATCH_FRACTION, config.min_watch_fraction, "min_watch_fraction"),
    ):
        if threshold is None:
            continue
        if column not in inter.columns:
            raise DataError(
                f"{data.where('interactions')}: {step}={threshold} needs a '{column}' column, "
                f"which this data lacks (it has {list(inter.columns)}). Set {step} to null."
            )
        before = len(inter)
        inter = inter[inter[column] >= threshold]
        record(step, before, len(inter))

    items = data.items
    if config.min_user_interactions > 1 or config.min_item_interactions > 1:
        before = len(inter)
        inter = k_core(inter, config.min_user_interactions, config.min_item_interactions)
        record("k_core", before, len(inter))
        if items is not None:
            # k-core removes titles below the core from the catalogue, including titles
            # nobody watched; without k-core the whole published catalogue is kept.
            kept = items[ITEM_ID].isin(inter[ITEM_ID].unique())
            report["k_core_items_dropped"] = int((~kept).sum())
            items = items[kept]
    if inter.empty:
        raise DataError(
            f"{data.name}: no interactions left after preprocessing ({report}). "
            "Lower the thresholds or the k-core sizes."
        )
    report["rows_out"] = len(inter)
    users = data.users
    if users is not None:
        users = users[users[USER_ID].isin(inter[USER_ID].unique())]
    return RawData(inter.reset_index(drop=True), items, users, data.name, data.origin), report


def k_core(inter: pd.DataFrame, min_user: int, min_item: int) -> pd.DataFrame:
    """Keep the largest subset where every member has >= min_user and every title >= min_item rows."""
    while True:
        users = inter[USER_ID].to_numpy()
        items = inter[ITEM_ID].to_numpy()
        keep = np.ones(len(inter), dtype=bool)
        if min_user > 1:
            _, inverse, counts = np.unique(users, return_inverse=True, return_counts=True)
            keep &= counts[inverse] >= min_user
        if min_item > 1:
            _, inverse, counts = np.unique(items, return_inverse=True, return_counts=True)
            keep &= counts[inverse] >= min_item
        if keep.all():
            return inter
        inter = inter[keep]
