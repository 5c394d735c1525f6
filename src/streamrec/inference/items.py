"""Item metadata held column by column, for fast per-result lookups and filter masks.

Scalar columns are numpy arrays; list columns (``genres``) are CSR pairs (offsets,
values), so a catalogue of a million titles loads in a fraction of a second and a filter
such as "any of these genres" is one vectorised pass.
"""

from __future__ import annotations

import datetime
import math
from typing import Any, Iterable

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from streamrec.data.schema import is_missing


class ItemTable:
    """Metadata of ``n`` titles in catalogue-row order.

    Args:
        n: number of rows.
        scalars: column -> [n] array.
        lists: column -> (offsets [n + 1] int64, values [offsets[-1]]).
    """

    def __init__(self, n: int, scalars: dict[str, np.ndarray], lists: dict[str, tuple[np.ndarray, np.ndarray]]):
        self.n = n
        self.scalars = scalars
        self.lists = lists

    @property
    def columns(self) -> list[str]:
        return [*self.scalars, *self.lists]

    @classmethod
    def from_arrow(cls, table: pa.Table) -> "ItemTable":
        scalars: dict[str, np.ndarray] = {}
        lists: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        for name in table.column_names:
            column = table.column(name).combine_chunks()
            if pa.types.is_list(column.type) or pa.types.is_large_list(column.type):
                offsets = column.offsets.to_numpy().astype(np.int64)
                inner = column.values.slice(offsets[0], offsets[-1] - offsets[0])
                if inner.null_count or pa.types.is_nested(inner.type):
                    # [1, None] would read [1.0, nan], and [[1], [2, 3]] as numpy arrays
                    values = np.empty(len(inner), dtype=object)
                    values[:] = inner.to_pylist()
                else:
                    values = inner.to_numpy(zero_copy_only=False)
                lists[name] = (offsets - offsets[0], values)
            elif pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
                scalars[name] = column  # converted one value at a time: a million titles load instantly
            elif (pa.types.is_integer(column.type) or pa.types.is_boolean(column.type)) and column.null_count:
                scalars[name] = column  # numpy would make floats (3 -> 3.0) or objects of them
            else:
                scalars[name] = column.to_numpy(zero_copy_only=False)
        return cls(len(table), scalars, lists)

    @classmethod
    def from_frame(cls, frame: pd.DataFrame) -> "ItemTable":
        lists = [c for c in frame.columns if frame[c].map(lambda v: isinstance(v, (list, tuple, np.ndarray))).any()]
        frame = frame.copy()
        for c in lists:  # a list column with missing cells: make them empty lists
            frame[c] = frame[c].map(lambda v: list(v) if isinstance(v, (list, tuple, np.ndarray)) else [])
        try:
            table = pa.Table.from_pandas(frame, preserve_index=False)
        except (pa.ArrowException, OverflowError, TypeError):
            # A column of mixed values ([3, "4"]): as text, which appending to a numeric
            # column reads back as numbers (and refuses where they are not).
            arrays = {}
            for c in frame.columns:
                try:
                    arrays[c] = pa.array(frame[c], from_pandas=True)
                except (pa.ArrowException, OverflowError, TypeError) as error:
                    if c in lists:
                        raise ValueError(f"items.{c}: the lists' values must be of one type ({error}).") from None
                    arrays[c] = pa.array([None if v is pd.NA or _python(v) is None else str(v) for v in frame[c]],
                                         type=pa.large_string())
            table = pa.table(arrays)
        return cls.from_arrow(table)

    def to_frame(self) -> pd.DataFrame:
        """All rows as a DataFrame (list columns as lists), e.g. to save them again."""
        columns: dict[str, Any] = {}
        for name, values in self.scalars.items():
            if isinstance(values, pa.Array) and not _text(values):
                columns[name] = values.to_pandas(types_mapper=pd.ArrowDtype)  # saved with their type and nulls
                continue
            if isinstance(values, np.ndarray) and values.dtype == np.dtype("datetime64[D]"):
                # a date column: pandas would make datetimes of it (date32 -> timestamp[s] once saved)
                columns[name] = pa.array(values).to_pandas(types_mapper=pd.ArrowDtype)
                continue
            columns[name] = values.to_pandas() if isinstance(values, pa.Array) else values
        for name, (offsets, values) in self.lists.items():
            columns[name] = [values[offsets[i]:offsets[i + 1]].tolist() for i in range(self.n)]
        return pd.DataFrame(columns)

    def value(self, column: str, i: int) -> Any:
        """Row ``i`` of scalar ``column`` as a Python value (None when missing)."""
        values = self.scalars.get(column)
        return None if values is None else _python(values[i])

    def row(self, i: int) -> dict[str, Any]:
        out = {name: _python(values[i]) for name, values in self.scalars.items()}
        for name, (offsets, values) in self.lists.items():
            out[name] = values[offsets[i]:offsets[i + 1]].tolist()
        return out

    def mask(self, column: str, allowed: Iterable[Any]) -> np.ndarray:
        """[n] bool: rows whose ``column`` is one of ``allowed`` (list columns: any element).
        A missing value (None, NaN, NA) in ``allowed`` matches nothing, as everywhere."""
        allowed = [a for a in allowed if _python(a) is not None and a is not pd.NA]
        if column in self.lists:
            offsets, values = self.lists[column]
            member = np.concatenate([[0], np.cumsum(np.isin(values, allowed))])
            return member[offsets[1:]] > member[offsets[:-1]]
        if column in self.scalars:
            values = self.scalars[column]
            if isinstance(values, pa.Array):
                if pa.types.is_integer(values.type):  # an integer column with missing values
                    dtype = np.dtype(values.type.to_pandas_dtype())
                    value_set = pa.array(_in_range(allowed, dtype), type=values.type)
                elif pa.types.is_boolean(values.type):  # a true/false column with missing values
                    value_set = pa.array(_booleans_in(allowed), type=pa.bool_())
                else:
                    value_set = pa.array([str(a) for a in allowed], type=values.type)  # typed: [] alone is null
                return pc.is_in(values, value_set=value_set).to_numpy(zero_copy_only=False)
            if values.dtype.kind in "iu":  # typed: numpy compares [7, "x"] to ints as strings, never equal
                allowed = np.array(_in_range(allowed, values.dtype), dtype=values.dtype)
            elif values.dtype.kind == "b":
                allowed = np.array(_booleans_in(allowed), dtype=bool)
            elif values.dtype.kind in "Mm":  # dates or durations: also as text
                allowed = _times_in(allowed, values.dtype)
            elif values.dtype.kind == "f":  # in the column's precision: float32(0.1) is not 0.1
                allowed = np.array([a for a in allowed if isinstance(a, (int, float, np.integer, np.floating))
                                    and not isinstance(a, (bool, np.bool_))], dtype=np.float64).astype(values.dtype)
            return np.isin(values, allowed)
        raise ValueError(f"filters: unknown metadata column {column!r}; the items have {self.columns}.")

    def append(self, other: "ItemTable") -> "ItemTable":
        """Rows of ``self`` then ``other``; a column missing on one side is None / empty there."""
        scalars = {}
        for name in dict.fromkeys([*self.scalars, *other.scalars]):
            parts = [t.scalars[name] if name in t.scalars else np.full(t.n, None, dtype=object) for t in (self, other)]
            existing, added = parts
            unset = isinstance(existing, np.ndarray) and existing.dtype == object and pd.isna(existing).all()
            if _integers(existing) or (unset and _integers(added)):
                scalars[name] = _joined_integers(name, existing, added)
                continue
            if _booleans(existing) or (unset and _booleans(added)):
                scalars[name] = _joined_booleans(name, existing, added)
                continue
            if isinstance(existing, np.ndarray) and existing.dtype.kind in "Mm":  # dates and times, durations
                scalars[name] = np.concatenate([existing, _times(name, added, existing.dtype)])
                continue
            if unset and isinstance(added, pa.Array) and _text(added):  # a text column new with these titles
                scalars[name] = pa.concat_arrays([_strings(p) for p in parts])
                continue
            if unset and isinstance(added, np.ndarray) and added.dtype.kind in "fMm":  # NaN / NaT before them
                scalars[name] = np.concatenate([existing.astype(added.dtype), added])
                continue
            if isinstance(existing, np.ndarray) and isinstance(added, pa.Array):
                added = np.asarray(added.to_pylist(), dtype=object)
            if isinstance(existing, pa.Array) or isinstance(added, pa.Array):
                scalars[name] = pa.concat_arrays([_strings(p) for p in parts])
                continue
            missing = np.array([_python(v) is None for v in added], dtype=bool)
            if len(added) and missing.all() and existing.dtype.kind != "f":
                # Nothing to coerce: keep the old values exactly, None for the new.
                existing, added = existing.astype(object), np.full(len(added), None, dtype=object)
            elif existing.dtype != added.dtype and existing.dtype.kind in "iufb":
                try:  # keep the column's type: a numeric column stays numeric
                    if existing.dtype.kind in "iuf" and any(isinstance(_python(v), bool) for v in added):
                        raise TypeError("a bool is not a number here")
                    added = pd.to_numeric(pd.Series(added, dtype=object), errors="raise").to_numpy()
                    added = added.astype(np.result_type(existing.dtype, added.dtype))
                except (TypeError, ValueError):
                    raise ValueError(f"items.{name}: the catalogue's {name} is numeric, "
                                     f"got {[_python(v) for v in added[:5]]}.") from None
                existing = existing.astype(added.dtype)
            elif existing.dtype != added.dtype:
                existing, added = existing.astype(object), added.astype(object)
            scalars[name] = _storable(name, np.concatenate([existing, added]), existing)
        lists = {}
        for name in dict.fromkeys([*self.lists, *other.lists]):
            o1, v1 = self.lists.get(name, _empty_lists(self.n))
            o2, v2 = other.lists.get(name, _empty_lists(other.n))
            lists[name] = (np.concatenate([o1, o2[1:] + o1[-1]]), _storable(name, np.concatenate([v1, v2]), v1))
        return ItemTable(self.n + other.n, scalars, lists)


def _storable(name: str, joined: np.ndarray, existing: np.ndarray) -> np.ndarray:
    """``joined`` (``existing`` values, then new ones), checked to be one column that ``save``
    can write: objects of the types no other rule reads (structs, decimals, bytes, nested
    lists, categories) mixed with others are refused, naming the column."""
    if joined.dtype != object:
        return joined
    try:
        pa.array(joined, from_pandas=True)
    except (pa.ArrowException, TypeError, ValueError, OverflowError) as error:
        kinds = sorted({type(v).__name__ for v in existing[:1000] if _python(v) is not None})
        raise ValueError(f"items.{name}: the new values cannot be stored beside the catalogue's "
                         f"({', '.join(kinds) or 'missing'}): {error}.") from None
    return joined


def _integers(values: pa.Array | np.ndarray) -> bool:
    """Whether ``values`` is an integer column (numpy ints, or arrow ints with missing values)."""
    if isinstance(values, pa.Array):
        return pa.types.is_integer(values.type)
    return values.dtype.kind in "iu"


def _joined_integers(name: str, existing: pa.Array | np.ndarray, added: pa.Array | np.ndarray) -> pa.Array | np.ndarray:
    """An integer column ``existing`` (or one missing so far) followed by ``added``.

    New values may be ints, whole floats, numeric strings or missing: the column stays
    integer, as numpy ints, or as an arrow integer array when values are missing. A
    fraction makes it float. Anything else (a bool, a word) is refused.
    """
    numbers = _python_numbers(name, added)
    if any(isinstance(v, float) and not v.is_integer() for v in numbers):  # e.g. a rank of 2.5
        old = existing.to_numpy(zero_copy_only=False) if isinstance(existing, pa.Array) else existing
        floats = old.astype(np.float64)
        whole = ~np.isnan(floats)
        if whole.any() and np.abs(floats[whole]).max() > 2.0**53:  # float64 would round the catalogue's own values
            fraction = next(v for v in numbers if isinstance(v, float) and not v.is_integer())
            raise ValueError(f"items.{name}: the catalogue's {name} holds integers past 2**53, which a fraction "
                             f"would round (the column would become float); got [{fraction}].")
        new = np.array([np.nan if v is None else v for v in numbers], dtype=np.float64)
        return np.concatenate([floats, new])
    ints = [None if v is None else int(v) for v in numbers]
    if isinstance(existing, pa.Array):
        old = existing
    elif existing.dtype == object:  # the column is new with these titles
        old = pa.nulls(len(existing), pa.int64())
    else:
        old = pa.array(existing)
    for common in (pa.int64(), pa.uint64()):  # a uint64 column's values may pass int64's range
        try:
            joined = pa.concat_arrays([old.cast(common), pa.array(ints, type=common)])
        except (pa.ArrowInvalid, OverflowError):
            continue
        return joined.to_numpy() if joined.null_count == 0 else joined
    raise ValueError(f"items.{name}: the values do not fit one integer type (int64 or uint64).")


def _booleans(values: pa.Array | np.ndarray) -> bool:
    """Whether ``values`` is a true/false column (numpy bools, or arrow bools with missing values)."""
    if isinstance(values, pa.Array):
        return pa.types.is_boolean(values.type)
    return values.dtype.kind == "b"


def _joined_booleans(name: str, existing: pa.Array | np.ndarray, added: pa.Array | np.ndarray) -> pa.Array | np.ndarray:
    """A true/false column ``existing`` (or one missing so far) followed by ``added``, whose
    values must be bools or missing (as numpy bools, or arrow bools when values are missing)."""
    new = []
    for given in added.to_pylist() if isinstance(added, pa.Array) else added.tolist():
        value = _python(given)
        if value is not None and not isinstance(value, bool):
            raise ValueError(f"items.{name}: the catalogue's {name} is true/false, got {[given]!r}.")
        new.append(value)
    old = existing if isinstance(existing, pa.Array) else (
        pa.nulls(len(existing), pa.bool_()) if existing.dtype == object else pa.array(existing))
    joined = pa.concat_arrays([old, pa.array(new, type=pa.bool_())])
    return joined.to_numpy(zero_copy_only=False) if joined.null_count == 0 else joined


def _times(name: str, values: pa.Array | np.ndarray, dtype: np.dtype) -> np.ndarray:
    """``values`` as ``dtype`` (datetime64 or timedelta64): dates and times (or durations),
    their text, or missing; anything else is refused with the column named."""
    what = "dates and times" if dtype.kind == "M" else "durations"
    if isinstance(values, np.ndarray) and values.dtype.kind == dtype.kind:
        cast = values.astype(dtype)
        lost = ~np.isnat(values) & (cast.astype(values.dtype) != values)
        if lost.any():
            raise ValueError(f"items.{name}: the catalogue's {name} holds {what} that fit {dtype}, got "
                             f"{[values[lost][0]]!r}.")
        return cast
    out = []
    for given in values.to_pylist() if isinstance(values, pa.Array) else values.tolist():
        try:
            out.append(None if is_missing(given) else _time(given, dtype))
        except (TypeError, ValueError):
            raise ValueError(f"items.{name}: the catalogue's {name} holds {what} that fit {dtype}, got "
                             f"{[given]!r}.") from None
    return np.array(out, dtype=object).astype(dtype)


def _times_in(allowed: Iterable[Any], dtype: np.dtype) -> np.ndarray:
    """The dates (or durations) among ``allowed``, text read as in ``_times`` (others match no row)."""
    found = []
    for value in allowed:
        try:
            found.append(_time(value, dtype))
        except (TypeError, ValueError):
            continue
    return np.array(found, dtype=object).astype(dtype)


def _time(given: Any, dtype: np.dtype) -> np.datetime64 | np.timedelta64:
    """A date and time (datetime64 ``dtype``) or a duration (timedelta64) from itself or its
    text. Numbers raise ``TypeError``: their unit is unknown. A time with a zone is taken in
    UTC, as a zoned column reads when loaded."""
    if dtype.kind == "M":
        if not isinstance(given, (str, datetime.date, np.datetime64)) or is_missing(given):
            raise TypeError(given)
        value = pd.Timestamp(given)
        if value.tzinfo is not None:
            value = value.tz_convert("UTC").tz_localize(None)
        exact = value.to_datetime64()
    else:
        if not isinstance(given, (str, datetime.timedelta, np.timedelta64)) or is_missing(given):
            raise TypeError(given)
        exact = pd.Timedelta(given).to_timedelta64()
    cast = exact.astype(dtype)
    if cast.astype(exact.dtype) != exact:  # past the column's range (9999-12-31 in nanoseconds): numpy wraps
        raise ValueError(f"{given!r} does not fit {dtype}")
    return cast


def _booleans_in(allowed: Iterable[Any]) -> list[bool]:
    """The bools among ``allowed`` (a true/false column matches no number or text)."""
    return [bool(a) for a in allowed if isinstance(a, (bool, np.bool_))]


def _text(values: pa.Array) -> bool:
    return pa.types.is_string(values.type) or pa.types.is_large_string(values.type)


def _python_numbers(name: str, values: pa.Array | np.ndarray) -> list[int | float | None]:
    """``values`` as Python numbers (missing: None); numeric strings are read, bools and other
    text refused with the column named."""
    out: list[int | float | None] = []
    for given in values.to_pylist() if isinstance(values, pa.Array) else values.tolist():
        value = _python(given)
        if isinstance(value, str):
            try:
                value = _python(pd.to_numeric(value))
            except (TypeError, ValueError):
                value = True  # refused below
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
            raise ValueError(f"items.{name}: the catalogue's {name} is numeric, got {[given]!r}.")
        out.append(value)
    return out


def _in_range(allowed: Iterable[Any], dtype: np.dtype) -> list[int]:
    """The whole numbers among ``allowed`` that ``dtype`` can hold (others match no row)."""
    info = np.iinfo(dtype)
    return [int(a) for a in allowed if _whole(a) and info.min <= int(a) <= info.max]


def _whole(value: Any) -> bool:
    """An int (not a bool) or a float with no fraction."""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, bool):
        return False
    return isinstance(value, int) or (isinstance(value, float) and value.is_integer())


def _strings(values: pa.Array | np.ndarray) -> pa.Array:
    if isinstance(values, pa.Array) and _text(values):
        return values.cast(pa.large_string())
    if isinstance(values, pa.Array):  # ints or bools with missing values, into a text column: as str() writes them
        values = values.to_pylist()
    return pa.array([None if _python(v) is None else str(v) for v in values], type=pa.large_string())


def _empty_lists(n: int) -> tuple[np.ndarray, np.ndarray]:
    return np.zeros(n + 1, np.int64), np.array([], dtype=object)


def _python(value: Any) -> Any:
    if isinstance(value, pa.Scalar):
        return value.as_py()
    if isinstance(value, (np.datetime64, np.timedelta64)):  # a date, datetime or timedelta; None for NaT
        item = value.item()
        if isinstance(item, int):  # nanoseconds, which Python's types cannot hold: pandas' then
            return pd.Timestamp(value) if isinstance(value, np.datetime64) else pd.Timedelta(value)
        return item
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and math.isnan(value):
        return None
    return value
