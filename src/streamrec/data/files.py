"""Generic interaction logs from CSV / TSV / parquet files, with configurable column names.

A user brings their own logs without writing code: name the files and say which of their
columns holds the member id, the title id, the time, and so on, e.g. for Last.fm::

    load_files(
        interactions="user_artists.dat", sep="\\t",
        columns={"user_id": "userID", "item_id": "artistID", "rating": "weight"},
        items="artists.dat", item_columns={"item_id": "id", "title": "name"},
    )
"""

from __future__ import annotations

import csv
import warnings
from pathlib import Path
from typing import Collection, Mapping

import pandas as pd

from streamrec.data.schema import INTERACTION_COLUMNS, ITEM_ID, USER_ID, DataError, RawData

# pandas' own list of cells it reads as missing ("NA", "null", "None", "NaN", "n/a", "#N/A", ...).
MISSING_MARKERS = ("", "#N/A", "#N/A N/A", "#NA", "-1.#IND", "-1.#QNAN", "-NaN", "-nan", "1.#IND", "1.#QNAN",
                   "<NA>", "N/A", "NA", "NULL", "NaN", "None", "n/a", "nan", "null")
# Canonical columns that are labels or free text, read verbatim from text files: a title id
# "NA", a member "null", a film called "None" are data. Other columns keep pandas' markers.
VERBATIM_COLUMNS = {"interactions": (USER_ID, ITEM_ID), "items": (ITEM_ID, "title", "text"), "users": (USER_ID,)}


def read_table(path: str | Path, sep: str | None = None, encoding: str = "utf-8",
               verbatim: Collection[str] = ()) -> pd.DataFrame:
    """Read a CSV/TSV (separator from ``sep`` or the extension) or parquet file.

    Columns are typed from all their rows (a big file's ids are not ints in one chunk and
    text in the next). Rows with one field more than the header are either row names (R's
    ``write.table``), dropped, or a delimiter ending every row, which does not shift the
    columns. In the ``verbatim`` columns (the file's names) only an empty cell is missing;
    in the others pandas' markers (:data:`MISSING_MARKERS`: ``NA``, ``null``, ...) are too.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise DataError(f"{path}: file not found. Check the path in your data config.")
    if path.stat().st_size == 0:
        raise DataError(f"{path}: the file is empty. Point the config at a file with a header and rows.")
    suffix = path.suffix.lower()
    if suffix in (".parquet", ".pq"):
        try:
            return pd.read_parquet(path)
        except (OSError, ValueError) as err:  # pyarrow's ArrowInvalid is a ValueError
            raise DataError(f"{path}: not a readable parquet file ({err}).") from err
    if sep is None:
        sep = "\t" if suffix in (".tsv", ".dat", ".tab") else ","
    try:
        # Comma files quote as RFC 4180 (`"American President, The (1995)"`, as pandas, Excel and
        # R write them); in tab-separated logs quotes are data (Last.fm's `"Weird Al" Yankovic`).
        quoting = csv.QUOTE_MINIMAL if sep == "," else csv.QUOTE_NONE
        options = dict(sep=sep, encoding=encoding, quoting=quoting)
        header = pd.read_csv(path, nrows=0, index_col=False, **options).columns
        na_values: dict[str | int, list[str]] = {
            name: [""] if name in verbatim else list(MISSING_MARKERS) for name in header}
        na_values[len(header)] = [""]  # a delimiter ending every row: its empty last field, named by position
        options.update(keep_default_na=False, na_values=na_values)
        with warnings.catch_warnings(record=True) as caught:  # index_col=False: an empty last field is dropped
            warnings.simplefilter("always", pd.errors.ParserWarning)
            warnings.simplefilter("always", pd.errors.DtypeWarning)
            frame = pd.read_csv(path, index_col=False, **options)
        if any(issubclass(w.category, pd.errors.DtypeWarning) for w in caught):
            # Typed chunk by chunk, a column mixed ints and text: typed from all its rows (2x slower).
            options["low_memory"] = False
            frame = pd.read_csv(path, index_col=False, **options)
        if any(issubclass(w.category, pd.errors.ParserWarning) for w in caught):  # a field more, not empty
            frame = pd.read_csv(path, **options).reset_index(drop=True)  # the first: row names
    except pd.errors.EmptyDataError as err:
        raise DataError(f"{path}: the file is empty ({err}).") from err
    except pd.errors.ParserError as err:
        quoting_hint = (" or a field that opens a quote and does not close it (comma files use standard CSV "
                        "quoting: write a quote inside a quoted field as two)") if sep == "," else ""
        raise DataError(f"{path}: could not be parsed with separator {sep!r} ({err}). Check the separator (`sep`)"
                        f"{quoting_hint}.") from err
    except UnicodeDecodeError as err:
        raise DataError(f"{path}: not valid {encoding} ({err}). Set `encoding`, e.g. latin-1.") from err
    if frame.empty:
        raise DataError(f"{path}: the file has a header but no rows.")
    return frame


def _read(path: Path, table: str, columns: Mapping[str, str] | None, sep: str | None, encoding: str) -> pd.DataFrame:
    """``table`` ("interactions", "items", "users") from ``path``, its columns mapped by ``columns``."""
    verbatim = {(columns or {}).get(canon, canon) for canon in VERBATIM_COLUMNS[table]}  # the file's names
    return _rename(read_table(path, sep, encoding, verbatim), columns, path)


def _rename(frame: pd.DataFrame, columns: Mapping[str, str] | None, path: Path) -> pd.DataFrame:
    columns = dict(columns or {})
    missing = [src for src in columns.values() if src not in frame.columns]
    if missing:
        raise DataError(
            f"{path}: column(s) {missing} named in the config are not in the file; it has "
            f"{list(frame.columns)}. Fix the column mapping (canonical name: your column)."
        )
    frame = frame.rename(columns={src: canon for canon, src in columns.items()})
    repeated = sorted(set(frame.columns[frame.columns.duplicated()]))
    if repeated:
        raise DataError(f"{path}: after the column mapping {columns}, more than one column is called {repeated} "
                        "(the file has its own column of that name too). Map or rename one of them.")
    return frame


def load_files(
    interactions: str | Path,
    columns: Mapping[str, str] | None = None,
    items: str | Path | None = None,
    item_columns: Mapping[str, str] | None = None,
    users: str | Path | None = None,
    user_columns: Mapping[str, str] | None = None,
    sep: str | None = None,
    encoding: str = "utf-8",
    keep_columns: bool = False,
    name: str | None = None,
) -> RawData:
    """Load interaction logs (and optional item/user tables) into :class:`RawData`.

    Args:
        interactions: CSV/TSV/parquet with one row per (member, title) event.
        columns: canonical name -> your column, e.g. ``{"user_id": "member", "item_id":
            "title_id", "timestamp": "ts", "watch_fraction": "pct"}``; unmapped columns
            that already carry a canonical name are used as they are.
        items, users: optional tables; ``item_columns`` / ``user_columns`` map their columns.
        sep: field separator; default from the extension (tab for .tsv/.dat/.tab, comma
            else). Comma-separated files use standard CSV quoting; with any other
            separator quotes are read as data. Ids, ``title`` and ``text`` are read
            verbatim (a title id "NA" is kept; only an empty cell is missing); in the
            other columns pandas' markers such as ``NA`` or ``null`` are missing too.
        keep_columns: keep columns that are not canonical (default: drop them).
    """
    inter_path = Path(interactions).expanduser()
    inter = _read(inter_path, "interactions", columns, sep, encoding)
    missing = [c for c in (USER_ID, ITEM_ID) if c not in inter.columns]
    if missing:  # checked here, while the message can still list the file's own columns
        raise DataError(
            f"{inter_path}: missing column(s) {missing}; found {list(inter.columns)}. Map your column names to "
            "the canonical ones with `columns`, e.g. columns={user_id: member, item_id: title_id}."
        )
    if not keep_columns:
        inter = inter[[c for c in inter.columns if c in INTERACTION_COLUMNS]]
    origin = {"interactions": str(inter_path)}
    item_frame = user_frame = None
    if items is not None:
        item_path = Path(items).expanduser()
        item_frame = _read(item_path, "items", item_columns, sep, encoding)
        origin["items"] = str(item_path)
    if users is not None:
        user_path = Path(users).expanduser()
        user_frame = _read(user_path, "users", user_columns, sep, encoding)
        origin["users"] = str(user_path)
    for frame, table, key in ((item_frame, "items", ITEM_ID), (user_frame, "users", USER_ID)):
        if frame is not None and key not in frame.columns:
            raise DataError(
                f"{origin[table]}: no '{key}' column; it has {list(frame.columns)}. "
                f"Map the id column with {table[:-1]}_columns={{{key}: <your column>}}."
            )
    return RawData(inter, item_frame, user_frame, name=name or inter_path.stem, origin=origin)
