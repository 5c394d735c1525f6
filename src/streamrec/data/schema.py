"""The canonical in-memory form every data source is turned into, and its validation.

Every source (MovieLens, generic CSV/parquet files, the simulator) produces a
:class:`RawData`: three pandas tables keyed by the publisher's own ("raw") ids.

``interactions`` (required columns ``user_id``, ``item_id``; optional ``timestamp``
in unix seconds, ``rating`` (explicit rating or play count, >= 0), ``watch_fraction``
in [0, 1], ``device``), ``items`` (``item_id``, optional ``title``, ``genres`` as a
list of strings, ``year``, ``text``) and ``users`` (``user_id`` plus any member
features).

Validation happens here, once, so that every source reports bad input the same way:
the error names the file, the column and the first offending row, and says how to fix it.
"""

from __future__ import annotations

import json
import logging
import math
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

log = logging.getLogger(__name__)

USER_ID = "user_id"
ITEM_ID = "item_id"
TIMESTAMP = "timestamp"
RATING = "rating"
WATCH_FRACTION = "watch_fraction"
DEVICE = "device"

INTERACTION_COLUMNS = (USER_ID, ITEM_ID, TIMESTAMP, RATING, WATCH_FRACTION, DEVICE)
ITEM_COLUMNS = (ITEM_ID, "title", "genres", "year", "text")

# Indexed form, after ids are mapped to contiguous indices.
USER = "user"
ITEM = "item"


class DataError(ValueError):
    """Bad input data: the message names the file, the column or row, and the fix."""


@dataclass
class RawData:
    """One source's tables, keyed by raw ids (see the module docstring for the columns)."""

    interactions: pd.DataFrame
    items: pd.DataFrame | None = None
    users: pd.DataFrame | None = None
    name: str = "data"
    # Where each table came from, for error messages ("<simulator>" for generated data).
    origin: dict[str, str] = field(default_factory=dict)

    def where(self, table: str) -> str:
        return self.origin.get(table, f"<{self.name} {table}>")


def _first_bad_row(mask: np.ndarray | pd.Series, frame: pd.DataFrame) -> str:
    positions = np.flatnonzero(np.asarray(mask))
    first = positions[0]
    example = frame.iloc[first].to_dict()
    return f"{len(positions)} row(s), first at data row {first} ({example})"


def validate_raw(data: RawData) -> RawData:
    """Check ``data`` against the canonical schema; return it with canonical dtypes.

    Raises:
        DataError: naming the file, column and first bad row, with the fix.
    """
    where = data.where("interactions")
    inter = data.interactions
    if len(inter) == 0:
        raise DataError(
            f"{where}: the interactions table is empty. Point the source at a file "
            "with at least one (user, item) row."
        )
    missing = [c for c in (USER_ID, ITEM_ID) if c not in inter.columns]
    if missing:
        raise DataError(
            f"{where}: missing column(s) {missing}; found {list(inter.columns)}. "
            "Map your column names to the canonical ones with the source's `columns` "
            "option, e.g. columns={user_id: userId, item_id: movieId}."
        )
    for col in (USER_ID, ITEM_ID):
        bad = inter[col].isna()
        if bad.any():
            raise DataError(
                f"{where}: column '{col}' has empty values in {_first_bad_row(bad, inter)}. "
                "Every interaction needs a user and an item id: fix or remove those rows."
            )
    inter = inter.copy()
    for col in (USER_ID, ITEM_ID):
        inter[col] = _canonical_ids(inter, col, where)
    exact_times = None
    if TIMESTAMP in inter.columns:
        inter[TIMESTAMP], exact_times = _to_unix_seconds(inter[TIMESTAMP], where)
    if RATING in inter.columns:
        rating = pd.to_numeric(inter[RATING], errors="coerce")
        bad = rating.isna() | (rating < 0) | np.isinf(rating)
        if bad.any():
            raise DataError(
                f"{where}: column '{RATING}' must be a finite non-negative number; "
                f"{_first_bad_row(bad, inter)} is NaN, negative, infinite or not a number. "
                "Fix those rows, or drop the rating column mapping if it is not a rating."
            )
        inter[RATING] = rating.astype(np.float32)
    if WATCH_FRACTION in inter.columns:
        frac = pd.to_numeric(inter[WATCH_FRACTION], errors="coerce")
        bad = frac.isna() | (frac < 0) | (frac > 1)
        if bad.any():
            raise DataError(
                f"{where}: column '{WATCH_FRACTION}' must lie in [0, 1]; "
                f"{_first_bad_row(bad, inter)} does not. Rescale it (e.g. seconds "
                "watched / runtime) or fix those rows."
            )
        inter[WATCH_FRACTION] = frac.astype(np.float32)
    if DEVICE in inter.columns:
        inter[DEVICE] = inter[DEVICE].astype("category")

    items = data.items
    if items is not None:
        items = _validate_items(items, data.where("items"))
        inter[ITEM_ID], items[ITEM_ID] = _one_id_type(inter[ITEM_ID], items[ITEM_ID])
        unknown = ~inter[ITEM_ID].isin(items[ITEM_ID])
        if unknown.any():
            ids = inter.loc[unknown, ITEM_ID].unique()
            raise DataError(
                f"{where}: {int(unknown.sum())} interactions refer to {len(ids)} item id(s) "
                f"missing from the items table {data.where('items')}, e.g. {ids[:5].tolist()}. "
                "Add those titles to the items table or remove their interactions."
            )
    users = data.users
    if users is not None:
        users = _validate_unique_ids(users, USER_ID, data.where("users"), "users").copy()
        inter[USER_ID], users[USER_ID] = _one_id_type(inter[USER_ID], users[USER_ID])
        known = inter[USER_ID].isin(users[USER_ID])
        if not known.any():
            raise DataError(
                f"{where}: no member id is in the users table {data.where('users')} (interactions: "
                f"{inter[USER_ID].dtype} ids such as {inter[USER_ID].iloc[:3].tolist()}; users: "
                f"{users[USER_ID].dtype} ids such as {users[USER_ID].iloc[:3].tolist()}). Give both files the "
                "same member ids, of one type."
            )
        if not known.all():
            log.warning("%s: %d of %d members have no row in the users table: their features are unknown",
                        where, inter.loc[~known, USER_ID].nunique(), inter[USER_ID].nunique())
    if exact_times is not None:
        # Whole seconds are kept; rows are put in exact time order first, so every later
        # ordering by time (stable, ties in row order) keeps the sub-second order.
        inter = inter.iloc[np.argsort(exact_times, kind="stable")].reset_index(drop=True)
    return RawData(inter, items, users, data.name, data.origin)


def _validate_items(items: pd.DataFrame, where: str) -> pd.DataFrame:
    items = _validate_unique_ids(items, ITEM_ID, where, "items").copy()
    if "genres" in items.columns:
        items["genres"] = items["genres"].map(_as_genre_list)
    if "year" in items.columns:
        year = pd.to_numeric(items["year"], errors="coerce")
        bad = year.notna() & ((year != np.floor(year)) | (year.abs() > 10_000))
        if bad.any():
            raise DataError(f"{where}: column 'year' must hold whole years; {_first_bad_row(bad.to_numpy(), items)} "
                            "does not. Fix those rows, or leave the year empty where it is unknown.")
        items["year"] = year.astype("Int64")
    return items


def _as_genre_list(value: Any) -> list[str]:
    """A title's genres: "Action|Comedy" (spaces around names dropped) or a list; missing: none."""
    if isinstance(value, str):
        return [g for g in (part.strip() for part in value.split("|")) if g and g != "(no genres listed)"]
    if is_missing(value):
        return []
    if isinstance(value, (int, float, np.number)):  # a genre code
        return [_id_text(value)]
    return [g.strip() if isinstance(g, str) else _id_text(g) for g in value if not is_missing(g)
            and (not isinstance(g, str) or g.strip())]


def is_missing(value: Any) -> bool:
    """Whether one cell is empty: None, NaN (Python's or numpy's), pandas' NA or NaT, numpy's NaT."""
    if value is None or value is pd.NA or value is pd.NaT:
        return True
    if isinstance(value, (float, np.floating)):
        return math.isnan(value)
    return isinstance(value, (np.datetime64, np.timedelta64)) and bool(np.isnat(value))


def _validate_unique_ids(table: pd.DataFrame, id_col: str, where: str, what: str) -> pd.DataFrame:
    if id_col not in table.columns:
        raise DataError(
            f"{where}: the {what} table has no '{id_col}' column; found "
            f"{list(table.columns)}. Map it with the source's column options."
        )
    if table[id_col].isna().any():
        raise DataError(
            f"{where}: column '{id_col}' has empty values in "
            f"{_first_bad_row(table[id_col].isna(), table)}. Every row needs an id."
        )
    table = table.assign(**{id_col: _canonical_ids(table, id_col, where)})
    dup = table[id_col].duplicated(keep=False)
    if dup.any():
        ids = table.loc[dup, id_col].unique()[:5].tolist()
        raise DataError(
            f"{where}: duplicate {id_col} values in the {what} table ({int(dup.sum())} "
            f"rows share ids, e.g. {ids}). Each id must appear once: merge or drop "
            "the duplicates."
        )
    return table


def _to_unix_seconds(column: pd.Series, where: str) -> tuple[pd.Series, np.ndarray | None]:
    """(whole unix seconds int64, the exact seconds where some have a fraction, else None).

    Numbers are taken as unix seconds; strings and datetimes are parsed. A string that no
    date format reads but that is a number is unix seconds, so a CSV column of seconds
    made text by one bad cell points at that cell.
    """
    if pd.api.types.is_bool_dtype(column):
        raise DataError(f"{where}: column '{TIMESTAMP}' holds booleans. Use unix seconds or an ISO 8601 string "
                        "such as 2024-05-01T20:15:00Z.")
    if pd.api.types.is_integer_dtype(column) and not column.isna().any() and (
            not pd.api.types.is_unsigned_integer_dtype(column) or not len(column)
            or column.max() <= np.iinfo(np.int64).max):
        return column.astype(np.int64), None
    if pd.api.types.is_datetime64_any_dtype(column):
        exact = _datetime_seconds(column)
    elif pd.api.types.is_numeric_dtype(column):
        exact = column.astype(np.float64)
        empty, infinite = exact.isna(), np.isinf(exact)
        if empty.any() or infinite.any():
            what = "is empty" if empty.any() else "is infinite"
            raise DataError(
                f"{where}: column '{TIMESTAMP}' {what} in {_first_bad_row(empty | infinite, column.to_frame())}. "
                "Fill in the time of those interactions or drop the rows."
            )
    else:  # objects: numbers are unix seconds; text is a date ("20240501" too) or else unix seconds
        if pd.api.types.infer_dtype(column, skipna=True) == "string":  # the usual case, without a pass per cell
            text, number = column.notna().to_numpy(), np.zeros(len(column), dtype=bool)
        else:
            text = column.map(lambda v: isinstance(v, str)).to_numpy(dtype=bool)
            number = column.map(lambda v: isinstance(v, (int, float, np.number))
                                and not isinstance(v, (bool, np.bool_))).to_numpy(dtype=bool)
        exact = pd.Series(np.nan, index=column.index, dtype=np.float64)
        exact[number] = pd.to_numeric(column[number], errors="coerce")
        dated = ~number & column.notna().to_numpy()  # text, dates, datetimes, Timestamps
        exact[dated] = _date_seconds(column[dated])
        rest = text & exact.isna().to_numpy()
        exact[rest] = pd.to_numeric(column[rest], errors="coerce")
    bad = ~np.isfinite(exact) | (np.abs(exact) >= 2.0**62)  # past int64 seconds: not a time (and would wrap)
    if bad.any():
        raise DataError(
            f"{where}: column '{TIMESTAMP}' could not be parsed as a time in "
            f"{_first_bad_row(bad, column.to_frame())}. Use unix seconds or an ISO 8601 "
            "string such as 2024-05-01T20:15:00Z."
        )
    seconds = np.floor(exact).astype(np.int64)
    return seconds, (exact.to_numpy() if (exact != seconds).any() else None)


def _date_seconds(values: pd.Series) -> pd.Series:
    """Unix seconds of ``values`` read as dates; NaN where one is none (or one pandas cannot hold)."""
    try:
        return _datetime_seconds(pd.to_datetime(values, errors="coerce", utc=True, format="mixed"))
    except (OverflowError, ValueError):  # e.g. "1000", a year pandas cannot hold, raises for the whole column
        if len(values) == 1:
            return pd.Series(math.nan, index=values.index, dtype=np.float64)
        half = len(values) // 2  # halves: only the cells around such a one are parsed apart
        return pd.concat([_date_seconds(values.iloc[:half]), _date_seconds(values.iloc[half:])])


def _datetime_seconds(parsed: pd.Series) -> pd.Series:
    """Unix seconds (float64, NaN for NaT) of a datetime column; naive times are UTC."""
    if parsed.dt.tz is None:
        parsed = parsed.dt.tz_localize("UTC")
    return (parsed - pd.Timestamp(0, tz="UTC")) / pd.Timedelta(seconds=1)


def _canonical_ids(table: pd.DataFrame, column: str, where: str) -> pd.Series:
    """``table[column]`` as ids: integers or strings (float ids that are whole numbers,
    as pandas makes of integer ids beside a missing one, become integers)."""
    ids = table[column]
    if pd.api.types.is_bool_dtype(ids):
        raise DataError(f"{where}: column '{column}' holds booleans; ids must be integers or strings.")
    if pd.api.types.is_float_dtype(ids):
        values = ids.to_numpy(dtype=np.float64)
        whole = np.isfinite(values) & (values == np.floor(values)) & (np.abs(values) < 2.0**63)
        if not whole.all():
            raise DataError(
                f"{where}: column '{column}' has numbers that are not whole (or beyond int64) in "
                f"{_first_bad_row(~whole, table)}. Ids must be integers or strings."
            )
        return ids.astype(np.int64)
    if pd.api.types.is_unsigned_integer_dtype(ids) and len(ids) and ids.max() > np.iinfo(np.int64).max:
        log.warning("%s: column '%s' has ids beyond int64; all its ids are read as text", where, column)
        return ids.map(str)  # an id is a label: past int64 it would wrap
    if pd.api.types.is_object_dtype(ids) or pd.api.types.is_string_dtype(ids):
        for bad, what in ((lambda v: isinstance(v, str) and not v.strip(), "blank ids"),
                          (lambda v: isinstance(v, (bool, np.bool_)), "booleans")):
            rows = ids.map(bad).to_numpy(dtype=bool)
            if rows.any():
                raise DataError(
                    f"{where}: column '{column}' has {what} in {_first_bad_row(rows, table)}. "
                    "Every row needs an id, an integer or a string: fix or remove those rows."
                )
        text = ids.map(lambda v: isinstance(v, str)).to_numpy(dtype=bool)
        if text.any() and not text.all():  # 7 and "A99": one type, as text ("7")
            log.warning("%s: column '%s' mixes numbers and text; all its ids are read as text", where, column)
            return ids.map(_id_text)
    return ids


def _id_text(value: Any) -> str:
    """An id as text: whole-number floats without their ".0"."""
    if isinstance(value, (float, np.floating)) and float(value).is_integer():
        return str(int(value))
    return str(value)


def _one_id_type(ids: pd.Series, other: pd.Series) -> tuple[pd.Series, pd.Series]:
    """The same ids in two tables, of one type: integers on one side and text on the other
    (a table with one id such as "X1" is all text) become text on both."""
    text = [pd.api.types.infer_dtype(t, skipna=True) == "string" for t in (ids, other)]
    numeric = [pd.api.types.infer_dtype(t, skipna=True) == "integer" for t in (ids, other)]
    if not (text[0] and numeric[1] or text[1] and numeric[0]):
        return ids, other
    return tuple(t.map(_id_text) if n else t for t, n in zip((ids, other), numeric))  # type: ignore[return-value]


class IdMap:
    """A bijection between raw ids and contiguous indices ``0..n-1``.

    Saved with every model so that a raw id means the same item everywhere.
    """

    def __init__(self, raw_ids: Sequence[Any] | np.ndarray | pd.Index):
        index = pd.Index(raw_ids)
        if not index.is_unique:
            raise DataError("IdMap: raw ids must be unique.")
        self._index = index

    def __len__(self) -> int:
        return len(self._index)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, IdMap) and self._index.equals(other._index)

    @property
    def raw_ids(self) -> np.ndarray:
        return self._index.to_numpy()

    def to_index(self, raw_ids: Sequence[Any] | np.ndarray | pd.Series) -> np.ndarray:
        """Indices of ``raw_ids``; unknown ids map to -1."""
        return self._index.get_indexer(pd.Index(raw_ids)).astype(np.int64)

    def to_raw(self, indices: Sequence[int] | np.ndarray) -> np.ndarray:
        return self._index.to_numpy()[np.asarray(indices, dtype=np.int64)]

    def to_dict(self) -> dict[str, Any]:
        ids = self._index.to_numpy()
        kind = "int" if np.issubdtype(ids.dtype, np.integer) else "str"
        values = ids.astype(np.int64).tolist() if kind == "int" else [str(v) for v in ids]
        return {"kind": kind, "ids": values}

    @classmethod
    def from_dict(cls, payload: dict[str, Any]) -> "IdMap":
        ids = payload["ids"]
        return cls(np.asarray(ids, dtype=np.int64) if payload["kind"] == "int" else ids)

    def save(self, path: str | Path) -> None:
        atomic_write_text(path, json.dumps(self.to_dict()))

    @classmethod
    def load(cls, path: str | Path) -> "IdMap":
        return cls.from_dict(json.loads(Path(path).read_text()))


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write ``text`` to a temporary file beside ``path``, then rename it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
