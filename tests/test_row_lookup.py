"""RowLookup: raw item id -> catalogue row, as a table for compact integer ids, else a dict."""

import numpy as np
import pytest

from streamrec.inference.row_lookup import ABSENT, RowLookup

ID_SETS = {
    "ints from 1": np.arange(1, 1001) * 3,  # compact enough for the table
    "ints from 0": np.arange(0, 1000),
    "sparse ints": np.array([5, 10**12, 2**62, 7]),
    "strings": np.array(["tt01", "tt02", "x", ""], dtype=object),
}
PROBES = [-1, -(2**63), 2**63 - 1, 2**63, 2**70, 10**12 + 1, 3001, 3003, 1000, 999, 0, "tt01", "nope", 4.0, None]


def _reference(ids: np.ndarray) -> dict:
    rows = np.random.default_rng(0).permutation(len(ids)) * 2  # rows are not positions
    return dict(zip(ids.tolist(), rows.tolist()))


@pytest.mark.parametrize("name", list(ID_SETS))
def test_lookup_agrees_with_a_dict_for_known_unknown_and_out_of_range_ids(name):
    expected = _reference(ID_SETS[name])
    lookup = RowLookup.of(np.asarray(list(expected), dtype=ID_SETS[name].dtype), list(expected.values()))
    probes = list(expected)[:20] + [p for p in PROBES if isinstance(p, type(next(iter(expected))))]
    want = [expected.get(p, ABSENT) for p in probes]
    assert lookup.rows(probes).tolist() == want
    assert lookup.rows(probes).dtype == np.int64
    if all(type(p) is int for p in probes):  # read without numpy's type discovery: the same rows
        assert lookup.rows(probes, plain_ints=True).tolist() == want
        assert lookup.rows(probes, plain_ints=True).dtype == np.int64
    assert [lookup.get(p) for p in PROBES] == [expected.get(p, ABSENT) if isinstance(p, (int, str)) else ABSENT
                                               for p in PROBES]
    assert len(lookup) == len(expected) and all(p in lookup for p in list(expected)[:5])
    assert lookup.rows([]).tolist() == []


def test_integer_ids_past_int64_or_unsigned_are_not_misread():
    lookup = RowLookup.of(np.array([1, 2, 3]), [10, 11, 12])
    assert lookup.rows([3, 2**64 + 3, 2**63 + 3]).tolist() == [12, ABSENT, ABSENT]
    assert lookup.rows([1, 2**63]).tolist() == [10, ABSENT]  # numpy makes this list float64
    assert lookup.rows([3, 2**64 + 3, 2**63 + 3], plain_ints=True).tolist() == [12, ABSENT, ABSENT]
    assert lookup.rows(np.array([3, 2**63 + 3], dtype=np.uint64)).tolist() == [12, ABSENT]
    assert lookup.rows(np.array([1, 3], dtype=np.int32)).tolist() == [10, 12]
    zero = RowLookup.of(np.array([0, 1]), [5, 6])
    assert zero.rows([2**63 - 1, -1, 0, 1]).tolist() == [ABSENT, ABSENT, 5, 6]


def test_updated_keeps_present_ids_and_adds_new_ones_across_both_kinds():
    lookup = RowLookup.of(np.array([1, 2, 3]), [0, 1, 2])
    grown = lookup.updated([3, 4, 10**15], [7, 8, 9])  # 3 keeps row 2; 10**15 forces a dict
    assert grown.rows([1, 2, 3, 4, 10**15, 5]).tolist() == [0, 1, 2, 8, 9, ABSENT]
    assert lookup.rows([4]).tolist() == [ABSENT]  # the original is unchanged
    strings = RowLookup.of(np.array(["a", "b"], dtype=object), [0, 1]).updated(["b", "c"], [5, 6])
    assert strings.rows(["a", "b", "c", "d"]).tolist() == [0, 1, 6, ABSENT]


def test_without_drops_ids_and_ignores_absent_ones():
    lookup = RowLookup.of(np.arange(1, 6), [0, 1, 2, 3, 4])
    smaller = lookup.without([2, 4, 99])
    assert smaller.rows([1, 2, 3, 4, 5]).tolist() == [0, ABSENT, 2, ABSENT, 4]
    assert len(smaller) == 3 and len(lookup) == 5
    assert RowLookup.of(np.array(["a", "b"], dtype=object), [0, 1]).without(["a"]).rows(["a", "b"]).tolist() \
        == [ABSENT, 1]


def test_updated_refuses_repeated_ids():
    with pytest.raises(ValueError, match="unique"):
        RowLookup.of(np.array([1, 2]), [0, 1]).updated([7, 7], [2, 3])
