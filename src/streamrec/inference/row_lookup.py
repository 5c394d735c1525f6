"""``RowLookup``: raw item id -> catalogue row, for a whole history per call.

Serving looks up every id of a member's history on every request. With a million titles a
Python dict misses the CPU caches several times per lookup (table slot, entry, key
object): 50 ids took 15.4–17.1 µs at 1M titles against 1.4–1.5 µs for the same ids looked
up again and again (``bench_inference.py --lookups``, docs/benchmarks.md). Integer ids in a
compact range (the usual case: MovieLens, Last.fm and most catalogues number their titles)
are instead kept in an array indexed by the id, so a history is one numpy gather: 2.1 µs at
1M, the reading of the caller's ints included. Strings and sparse integers use a dict.
"""

from __future__ import annotations

from collections import Counter
from typing import Any, Sequence

import numpy as np

# Integer ids use a table while it has at most this many slots per id (8 bytes each), plus
# DENSE_SLACK: the table costs at most ~32 bytes per title, a dict ~100.
DENSE_SLOTS_PER_ID = 4
DENSE_SLACK = 1024
ABSENT = -1


class RowLookup:
    """Immutable map of raw item ids to catalogue rows (``ABSENT`` for unknown ids).

    Build with :meth:`of`; change with :meth:`updated` / :meth:`without`, which return a
    new lookup (a catalogue snapshot never changes under a reader).
    """

    __slots__ = ("_table", "_shift", "_dict", "_size")

    def __init__(self, table: np.ndarray | None, shift: int, mapping: dict[Any, int] | None, size: int):
        self._table, self._shift, self._dict, self._size = table, shift, mapping, size

    @classmethod
    def of(cls, ids: np.ndarray | Sequence[Any], rows: np.ndarray | Sequence[int]) -> "RowLookup":
        """Lookup of ``ids[i] -> rows[i]``; a repeated id raises ``ValueError``."""
        ids = np.asarray(ids)
        rows = np.asarray(rows, dtype=np.int64)
        low, high = (int(ids.min()), int(ids.max())) if len(ids) and ids.dtype.kind == "i" else (-1, 0)
        if low >= 0 and high < DENSE_SLOTS_PER_ID * len(ids) + DENSE_SLACK:
            # Slot id + shift; slot 0 stays ABSENT when 0 is not an id (else the ids move
            # up one), so negative ids clip onto an ABSENT slot, as do ids past the end.
            shift = int(low == 0)
            table = np.full(high + shift + 2, ABSENT, dtype=np.int64)
            table[ids + shift] = rows
            lookup, size = cls(table, shift, None, len(ids)), np.count_nonzero(table != ABSENT)
        else:
            mapping = dict(zip(ids.tolist(), rows.tolist()))
            lookup, size = cls(None, 0, mapping, len(ids)), len(mapping)
        if size != len(ids):
            repeated = [item_id for item_id, count in Counter(ids.tolist()).items() if count > 1]
            raise ValueError(f"item ids must be unique; repeated: {repeated[:10]}")
        return lookup

    def __len__(self) -> int:
        return self._size

    def __contains__(self, item_id: Any) -> bool:
        return self.get(item_id) != ABSENT

    def get(self, item_id: Any) -> int:
        """Row of one id, or ``ABSENT``."""
        if self._dict is not None:
            try:
                return self._dict.get(item_id, ABSENT)
            except TypeError:  # unhashable
                return ABSENT
        if isinstance(item_id, bool) or not isinstance(item_id, (int, np.integer)):
            return ABSENT
        slot = int(item_id) + self._shift
        return self._table.item(slot) if 0 < slot < len(self._table) else ABSENT  # .item: a Python int

    def rows(self, ids: Sequence[Any] | np.ndarray, plain_ints: bool = False) -> np.ndarray:
        """Rows of ``ids`` [len(ids)] int64, ``ABSENT`` for unknown ids.

        The ids must have the catalogue's type (the recommender checks them first): in a
        list of integers numpy reads ``True`` as 1.

        Args:
            plain_ints: ``ids`` is a list of Python ints (the caller checked every type):
                converted with the dtype given, without numpy's type discovery (1.7
                against 2.0 µs for 50 ids, ``np.fromiter`` 2.3, on an AVX2 EPYC).
                Anything else would be misread (a given int64 dtype cuts 1.5 to 1 and
                parses "7").
        """
        if self._dict is not None:
            return np.fromiter(map(self._dict.get, ids, [ABSENT] * len(ids)), dtype=np.int64, count=len(ids))
        array = None
        if plain_ints:
            try:
                array = np.array(ids, dtype=np.int64)
            except OverflowError:  # past int64: looked up one by one below
                pass
        if array is None:
            array = np.asarray(ids)
        if array.dtype != np.int64:  # ids past int64 (numpy makes floats or objects of them), other dtypes
            values = ids.tolist() if isinstance(ids, np.ndarray) else ids
            return np.fromiter(map(self.get, values), dtype=np.int64, count=len(array))
        if self._shift:
            array = array + 1  # an id of 2**63 - 1 wraps below zero and clips onto slot 0, ABSENT
        return self._table.take(array, mode="clip")

    def items(self) -> tuple[np.ndarray, np.ndarray]:
        """(ids, rows) of every entry."""
        if self._dict is not None:
            return _id_array(list(self._dict)), np.fromiter(self._dict.values(), np.int64, len(self._dict))
        slots = np.flatnonzero(self._table != ABSENT)
        return slots - self._shift, self._table[slots]

    def updated(self, ids: Sequence[Any], rows: Sequence[int]) -> "RowLookup":
        """A new lookup that also maps each of ``ids`` (unique) not present yet to its row in
        ``rows`` (ids already present keep theirs)."""
        ids = list(ids)
        if len(set(ids)) != len(ids):
            raise ValueError("RowLookup.updated: ids must be unique.")
        ids = _id_array(ids)
        fresh = self.rows(ids) == ABSENT
        old_ids, old_rows = self.items()
        if old_ids.dtype == ids.dtype == np.int64:
            merged = np.concatenate([old_ids, ids[fresh]])
        else:
            merged = _id_array([*old_ids.tolist(), *ids[fresh].tolist()])
        return RowLookup.of(merged, np.concatenate([old_rows, np.asarray(rows, dtype=np.int64)[fresh]]))

    def without(self, ids: Sequence[Any]) -> "RowLookup":
        """A new lookup without ``ids`` (ids not present are ignored)."""
        old_ids, old_rows = self.items()
        keep = ~np.isin(old_rows, self.rows(_id_array(list(ids))))
        return RowLookup.of(old_ids[keep], old_rows[keep])


def _id_array(ids: list[Any]) -> np.ndarray:
    """int64 array of integer ids, else an object array (strings, ints past int64)."""
    if ids and all(type(i) is int or isinstance(i, np.signedinteger) for i in ids):
        try:
            return np.asarray(ids, dtype=np.int64)
        except OverflowError:
            pass
    array = np.empty(len(ids), dtype=object)
    array[:] = ids
    return array
