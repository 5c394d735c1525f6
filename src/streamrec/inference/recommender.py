"""``Recommender``: load an artifact directory, answer "what should this member watch next".

The query tower turns a member's recent history (raw item ids, optionally with view times,
watch fractions, member features and the request's device) into a vector; the FAISS
index finds the titles with the highest inner product. Titles already watched are
excluded, optional metadata filters and an MMR diversity knob re-shape the list, and an
empty history falls back to the most popular titles.

Concurrency: any number of threads may call the read methods at once. ``add_items`` and
``remove_items`` build a new catalogue snapshot (index copy included) under a lock and
swap it in, so a reader always sees one consistent catalogue and never waits. Each calling
thread keeps one flag per catalogue row (1 MB at a million titles) to exclude what a
member watched from what FAISS found, and reuses its own output buffers for one-query
searches.
"""

from __future__ import annotations

import datetime
import logging
import math
import shutil
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Sequence

import faiss
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import torch

from streamrec.data.features import UserFeatureSpec, build_item_features
from streamrec.data.schema import is_missing
from streamrec.index.faiss_index import scores_exactly, set_search_parameter
from streamrec.inference.artifact import ArtifactError, read_manifest, write_artifact
from streamrec.inference.export import library_versions
from streamrec.inference.items import ItemTable
from streamrec.inference.query_encoder import NumpyQueryTower, supports
from streamrec.inference.row_lookup import ABSENT, RowLookup
from streamrec.models.two_tower import SECONDS_PER_DAY, ItemTower, QueryTower, TwoTowerConfig, hour_code
from streamrec.validation import is_finite_number

log = logging.getLogger(__name__)

EXACT_SEARCH_MAX_ROWS = 20_000  # filtered searches over fewer allowed titles scan them exactly
MMR_POOL = 5  # diversity re-ranks the top MMR_POOL * k candidates (at least 50)
NUMPY_TOWER_MAX_BATCH = 16  # numpy one member at a time up to here; torch batches above (--towers)
FILTER_CACHE_SIZE = 64  # distinct filters whose [n_items] masks are kept
ACTIVE = "_active"  # items.parquet column of a saved catalogue with removed titles
PAGE_BYTES = 4096  # memory page size, for faulting a mapped index in
NOTHING = np.empty(0, dtype=np.int64)  # no rows to exclude
REUSED_RESULTS = 4096  # one-query searches reuse per-thread outputs up to this many results (48 KB)


class UnknownItemsError(ValueError):
    """Raised in strict mode when a history names titles that are not in the catalogue."""


class Recommendation:
    """One recommended title: its raw id, score (inner product, or training views for the
    popularity fallback) and metadata (title, genres, year, popularity, ...), read from the
    catalogue only when asked for."""

    __slots__ = ("item_id", "score", "_table", "_row")

    def __init__(self, item_id: Any, score: float, table: ItemTable, row: int):
        self.item_id, self.score, self._table, self._row = item_id, score, table, row

    @property
    def metadata(self) -> dict[str, Any]:
        return self._table.row(self._row)

    @property
    def title(self) -> str | None:
        return self._table.value("title", self._row)

    def __repr__(self) -> str:
        return f"Recommendation(item_id={self.item_id!r}, score={self.score:.4f}, title={self.title!r})"

    def __eq__(self, other: object) -> bool:
        return (isinstance(other, Recommendation) and (self.item_id, self.score) == (other.item_id, other.score)
                and self.metadata == other.metadata)

    __hash__ = None  # type: ignore[assignment]


class Recommendations(Sequence):
    """A ranked list of :class:`Recommendation` plus how it was made.

    ``item_ids``, ``scores``: plain lists in rank order (what a service usually passes
    on); the :class:`Recommendation` objects, with their metadata, are made when the list
    itself is read.
    ``unknown_ids``: history ids skipped because the catalogue does not have them.
    ``source``: ``model`` or ``popularity`` (empty or all-unknown history).
    """

    __slots__ = ("_ids", "_scores", "_rows", "_table", "_items", "_unknown", "_source")

    def __init__(self, item_ids: list[Any], scores: list[float], rows: np.ndarray | list[int], table: ItemTable,
                 unknown_ids: tuple[Any, ...] = (), source: str = "model"):
        self._ids, self._scores, self._rows, self._table = item_ids, scores, rows, table
        self._items: tuple[Recommendation, ...] | None = None
        self._unknown, self._source = unknown_ids, source

    @property
    def unknown_ids(self) -> tuple[Any, ...]:
        return self._unknown

    @property
    def source(self) -> str:
        return self._source

    @property
    def item_ids(self) -> list[Any]:
        return list(self._ids)

    @property
    def scores(self) -> list[float]:
        return list(self._scores)

    @property
    def items(self) -> tuple[Recommendation, ...]:
        if self._items is None:  # a benign race: two threads may both build the same tuple
            table = self._table
            self._items = tuple(Recommendation(i, s, table, r)
                                for i, s, r in zip(self._ids, self._scores, np.asarray(self._rows).tolist()))
        return self._items

    def __len__(self) -> int:
        return len(self._ids)

    def __getitem__(self, i):  # type: ignore[override]
        return self.items[i]

    def __iter__(self) -> Iterator[Recommendation]:
        return iter(self.items)

    def __eq__(self, other: object) -> bool:
        return (isinstance(other, Recommendations) and (self.unknown_ids, self.source) == (other.unknown_ids,
                                                                                          other.source)
                and self.items == other.items)

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"Recommendations({list(self.items)!r}, unknown_ids={self.unknown_ids!r}, source={self.source!r})"


@dataclass(frozen=True)
class _Catalogue:
    """One consistent state of the servable titles; replaced whole, never mutated."""

    index: faiss.Index
    vectors: np.ndarray  # [rows, d]; row i = FAISS id i (removed rows stay, inactive)
    item_ids: np.ndarray  # [rows] raw id of each row
    rows: RowLookup  # raw id -> row, active titles only (what can be recommended)
    # raw id -> row the query tower reads (removed titles too; a re-added title keeps its
    # trained row); the same object as `rows` while every row is active and unique
    history_rows: RowLookup
    active: np.ndarray  # [rows] bool
    table: ItemTable  # metadata per row
    popular: np.ndarray  # active rows, most training views first
    popularity: np.ndarray  # [rows] training views
    version: int = 0  # bumped by every change (keys the filter cache)
    # Removed rows the index cannot delete (HNSW): searches skip them with a FAISS selector.
    search_params: Any = None
    keep_alive: Any = None  # the selector and its bitmap (SWIG holds no Python reference)
    # The index is a read-only view of the memory-mapped index.faiss (as loaded): change only
    # a _writable_copy of it.
    mapped: bool = False
    searchable: int = field(init=False)  # index.ntotal (a SWIG read costs ~0.3 µs)
    # The index scores from compressed codes (PQ, SQ) or transformed vectors: its candidates
    # are scored again on the item vectors.
    rescore: bool = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "searchable", self.index.ntotal)
        object.__setattr__(self, "rescore", not scores_exactly(self.index))


@dataclass
class _Request:
    seen: np.ndarray  # catalogue rows of the history's servable titles (to exclude)
    unknown: list[Any]
    codes: np.ndarray  # the history the query tower reads (row + 1): titles it was trained with, in time order
    watch: np.ndarray | None  # [len(codes)] float32; None = fully watched
    times: np.ndarray | None  # [len(codes)] unix seconds
    now: float | None  # the request's moment: `now`, else the latest given view time
    features: Mapping[str, Any] | None
    device: Any


class Recommender:
    """Serve a trained two-tower model from an artifact directory. Build with :meth:`load`."""

    def __init__(self, path: Path, manifest: dict[str, Any], query_tower: QueryTower, item_tower: ItemTower,
                 catalogue: _Catalogue, threads: int):
        self.path = path
        self.manifest = manifest
        self.config = TwoTowerConfig(**manifest["model"])
        self.query_tower = query_tower
        # The tower's arithmetic in numpy, one member at a time, for up to
        # NUMPY_TOWER_MAX_BATCH members (~15x faster than eager torch for one); torch for
        # bigger batches and the transformer.
        self._encode = NumpyQueryTower(query_tower) if supports(query_tower) else None
        self.item_tower = item_tower
        self.threads = threads
        self._catalogue = catalogue
        self._write_lock = threading.Lock()
        self._masks: OrderedDict = OrderedDict()  # (version, column, values) -> [rows] bool, LRU
        self._masks_lock = threading.Lock()
        self._per_thread = threading.local()  # per calling thread: its _Scratch
        spec = manifest["data"]
        self._id_kind = spec["item_id_kind"]
        self._device_codes = {d: i + 1 for i, d in enumerate(spec["device_vocab"])}
        users = spec["user_features"]
        self._user_spec = UserFeatureSpec(users["columns"], users["vocabularies"], users["edges"])
        self._item_encoder = spec["item_features"]

    # -- loading -----------------------------------------------------------------------
    @classmethod
    def load(cls, path: str | Path, verify: bool = True, threads: int | None = None,
             blas_threshold: int | None = None) -> "Recommender":
        """Rebuild everything from the artifact directory ``path`` alone.

        Args:
            verify: check every file's sha256 against the manifest (a mismatch raises
                :class:`ArtifactError` naming the file).
            threads: OpenMP threads for batch searches (default: all cores). Single
                ``recommend`` calls always search on the calling thread only, so many
                concurrent callers do not oversubscribe the cores.
            blas_threshold: if given, sets FAISS's process-wide
                ``distance_compute_blas_threshold`` (queries per search from which
                distances go through BLAS; FAISS 1.15 made it 128,000, so batches never
                use BLAS). At 1,000-member batches the two settings measured within this
                machine's run-to-run noise (docs/benchmarks.md), so the default (None)
                leaves FAISS's setting alone.
        """
        path = Path(path)
        manifest = read_manifest(path, verify=verify)
        if blas_threshold is not None:
            faiss.cvar.distance_compute_blas_threshold = int(blas_threshold)
        try:
            config = TwoTowerConfig(**manifest["model"])
            query_tower = _load_module(path / "query_tower.pt",
                                       lambda state: QueryTower(config, state.get("history_embedding.weight")))
            item_config = TwoTowerConfig(**{**manifest["model"], "use_item_ids": False})
            item_tower = _load_module(path / "item_tower.pt", lambda state: ItemTower(item_config))
            index, mapped = _read_index(path / "index.faiss")
            set_search_parameter(index, manifest["index"]["search_value"])
            # A plain ndarray over the mapping: indexing an np.memmap costs ~1.8 µs more per call.
            vectors = np.asarray(_read_npy(path / "item_vectors.npy"))
            table = ItemTable.from_arrow(_read_parquet(path / "items.parquet"))
        except (KeyError, TypeError) as error:
            raise ArtifactError(f"{path / 'manifest.json'}: missing or unexpected field ({error}); "
                                "rebuild the artifact.") from None
        item_ids = table.scalars.pop("item_id", None)
        if item_ids is None:
            raise ArtifactError(f"{path / 'items.parquet'}: has no item_id column; rebuild the artifact.")
        if not isinstance(item_ids, np.ndarray):  # string ids arrive as an arrow array
            item_ids = np.asarray(item_ids.to_pylist(), dtype=object)
        n = len(item_ids)
        # Saved after remove_items (see save): inactive rows stay for members' histories.
        active = table.scalars.pop(ACTIVE, None)
        active = np.ones(n, dtype=bool) if active is None else np.asarray(active, dtype=bool)
        if index.d != config.dim:  # searches hand FAISS [n, config.dim] queries unchecked
            raise ArtifactError(f"{path / 'index.faiss'}: holds {index.d}-dimensional vectors, the model makes "
                                f"{config.dim}; rebuild the artifact.")
        if vectors.shape != (n, config.dim) or index.ntotal not in (n, int(active.sum())):
            raise ArtifactError(f"{path}: item_vectors.npy {vectors.shape}, index.faiss {index.ntotal} vectors and "
                                f"items.parquet {n} rows disagree; rebuild the artifact.")
        popularity = np.asarray(table.scalars.get("popularity", np.zeros(n)), dtype=np.float64)
        try:
            if active.all():
                rows = history_rows = RowLookup.of(item_ids, np.arange(n))
            else:
                rows = RowLookup.of(item_ids[active], np.flatnonzero(active))
                _, first = np.unique(item_ids, return_index=True)  # a re-added title's trained row
                history_rows = RowLookup.of(item_ids[first], first)
        except ValueError as error:
            raise ArtifactError(f"{path / 'items.parquet'}: {error}; rebuild the artifact.") from None
        popular = np.argsort(-popularity, kind="stable")
        catalogue = _Catalogue(
            index=index, mapped=mapped, vectors=vectors, item_ids=item_ids, rows=rows, history_rows=history_rows,
            active=active, table=table, popular=popular[active[popular]], popularity=popularity,
            **_removal_search(index, active, manifest["index"]["search_value"], index.ntotal > active.sum()),
        )
        try:
            return cls(path, manifest, query_tower, item_tower, catalogue, threads or faiss.omp_get_max_threads())
        except (KeyError, TypeError) as error:
            raise ArtifactError(f"{path / 'manifest.json'}: missing or unexpected field ({error}); "
                                "rebuild the artifact.") from None

    # -- public API --------------------------------------------------------------------
    @property
    def n_items(self) -> int:
        """Titles currently servable."""
        return len(self._catalogue.rows)

    def __contains__(self, item_id: Any) -> bool:
        try:
            self._check_id(item_id, "item_id")
        except ValueError:
            return False
        return item_id in self._catalogue.rows

    def recommend(
        self,
        history: Sequence[Any],
        k: int = 10,
        *,
        timestamps: Sequence[float] | None = None,
        watch_fractions: Sequence[float] | None = None,
        now: float | None = None,
        member_features: Mapping[str, Any] | None = None,
        device: Any = None,
        exclude_seen: bool = True,
        filters: Mapping[str, Iterable[Any]] | None = None,
        diversity: float = 0.0,
        strict: bool = False,
    ) -> Recommendations:
        """The ``k`` titles this member is most likely to watch next.

        Args:
            history: raw item ids the member watched, oldest first (or in any order with
                ``timestamps``); a title watched again counts once, at its last view.
                Ids not in the catalogue are skipped and listed in
                ``unknown_ids`` (``strict=True`` raises :class:`UnknownItemsError`).
                Empty (or all unknown): the most popular titles (``source="popularity"``).
            k: number of titles (>= 1).
            timestamps: unix seconds of each view (same length as ``history``), or
                datetimes (numpy's datetime64, pandas' or Python's; naive ones are UTC).
            watch_fractions: share of each title watched, in [0, 1] (default 1).
            now: unix seconds (or a datetime) of the request, the reference for recency
                and hour of day (default: the latest of ``timestamps`` of ids in the
                catalogue, the reference the model was evaluated with in ``set`` history
                mode; pass the real time for ``sequential`` models and live traffic).
            member_features: member attributes the model was trained with (e.g.
                ``{"age": 31, "country": "SE"}``); absent ones count as unknown, others
                raise ``ValueError``.
            device: the request's device (a value of the training data's device column).
            exclude_seen: leave out titles in ``history``.
            filters: metadata column -> allowed values, e.g. ``{"genres": ["Comedy"]}``;
                a list column (genres) passes when any of its values is allowed.
            diversity: 0 = pure relevance; up to 1 = maximal marginal relevance
                re-ranking on item vectors (trades relevance for intra-list diversity).
        """
        k = _checked_k(k)
        _check_diversity(diversity)
        if exclude_seen is not True and exclude_seen is not False or strict is not False and strict is not True:
            _check_flags(exclude_seen=exclude_seen, strict=strict)
        catalogue = self._catalogue
        request = self._request(history, catalogue, timestamps, watch_fractions, now, member_features, device,
                                strict, "history")
        mask = self._filter_mask(catalogue, filters)
        if not len(request.codes):
            return self._popular(catalogue, request, k, exclude_seen, mask)
        query = self._queries([request])
        # One thread per call (OpenMP's setting is per calling thread): concurrent callers
        # share the cores instead of each starting a team of its own.
        rows, scores = self._search_one(catalogue, query, k, request.seen if exclude_seen else NOTHING, mask,
                                        diversity)
        return self._result(catalogue, rows, scores, request.unknown, "model")

    def recommend_batch(
        self,
        histories: Sequence[Sequence[Any]],
        k: int = 10,
        *,
        timestamps: Sequence[Sequence[float] | None] | None = None,
        watch_fractions: Sequence[Sequence[float] | None] | None = None,
        now: Sequence[float | None] | float | None = None,
        member_features: Sequence[Mapping[str, Any] | None] | None = None,
        devices: Sequence[Any] | None = None,
        exclude_seen: bool = True,
        filters: Mapping[str, Iterable[Any]] | None = None,
        diversity: float = 0.0,
        strict: bool = False,
    ) -> list[Recommendations]:
        """:meth:`recommend` for many members at once (one tower pass, one index search per
        history length).

        Per-member arguments are sequences parallel to ``histories`` (``now`` may also be
        one value for all). Up to NUMPY_TOWER_MAX_BATCH (16) members get :meth:`recommend`'s
        scores exactly; bigger batches go through the torch tower in one pass, whose sums
        can differ from one member's in the last bits of a float32, so titles whose scores
        tie that closely may swap places.
        """
        k = _checked_k(k)
        _check_diversity(diversity)
        _check_flags(exclude_seen=exclude_seen, strict=strict)
        if isinstance(histories, (str, bytes)) or not isinstance(histories, Sequence):
            raise ValueError("histories: expected a list of histories (one list of item ids per member).")
        b = len(histories)
        if isinstance(now, (np.ndarray, pd.Series, pd.Index)):
            if now.ndim == 0:  # one value for all
                now = now[()]
            elif now.ndim > 1:
                raise ValueError(f"now: expected one value, or one per history, got {_described(now)}.")
            else:  # datetime64's .tolist() gives nanoseconds as ints
                now = _seconds(now, "now", "") if now.dtype.kind == "M" else now.tolist()
        per_member = {"timestamps": timestamps, "watch_fractions": watch_fractions, "member_features": member_features,
                      "devices": devices, "now": now if isinstance(now, Sequence) else None}
        for name, values in per_member.items():
            if values is None:
                continue
            if not _ordered(values) or getattr(values, "ndim", 1) == 0:
                hint = " (a DataFrame's rows would be padded: pass a list, e.g. .to_dict('records'))" \
                    if isinstance(values, pd.DataFrame) else ""
                raise ValueError(f"{name}: expected a sequence with one entry per history, got "
                                 f"{_described(values)}{hint}.")
            if len(values) != b:
                raise ValueError(f"{name}: {len(values)} entries for {b} histories; give one per member.")
        # Read by position (a pandas Series would index by label).
        timestamps, watch_fractions, member_features, devices = (
            values if values is None or isinstance(values, list) else list(values)
            for values in (timestamps, watch_fractions, member_features, devices))
        catalogue = self._catalogue
        requests = [
            self._request(
                histories[i], catalogue, timestamps[i] if timestamps is not None else None,
                watch_fractions[i] if watch_fractions is not None else None,
                now[i] if isinstance(now, Sequence) else now,
                member_features[i] if member_features is not None else None,
                devices[i] if devices is not None else None, strict, f"histories[{i}]",
            )
            for i in range(b)
        ]
        mask = self._filter_mask(catalogue, filters)
        results: list[Recommendations | None] = [None] * b
        modelled = [i for i, r in enumerate(requests) if len(r.codes)]
        if modelled:
            queries = self._queries([requests[i] for i in modelled])
            excludes = [requests[i].seen if exclude_seen else NOTHING for i in modelled]
            found = self._search(catalogue, queries, k, excludes, mask, diversity, threads=self.threads)
            for i, (rows, scores) in zip(modelled, found):
                results[i] = self._result(catalogue, rows, scores, requests[i].unknown, "model")
        for i, request in enumerate(requests):
            if results[i] is None:
                results[i] = self._popular(catalogue, request, k, exclude_seen, mask)
        return results  # type: ignore[return-value]

    def similar_items(self, item_id: Any, k: int = 10, *, filters: Mapping[str, Iterable[Any]] | None = None,
                      diversity: float = 0.0) -> Recommendations:
        """Titles closest to ``item_id`` by item vector ("because you watched ...")."""
        k = _checked_k(k)
        _check_diversity(diversity)
        catalogue = self._catalogue
        self._check_id(item_id, "item_id")
        row = catalogue.rows.get(item_id)
        if row == ABSENT:
            raise UnknownItemsError(f"item_id: {item_id!r} is not in the catalogue.")
        if not filters and not diversity and k < catalogue.searchable and not catalogue.rescore:
            return self._similar(catalogue, row, k)
        mask = self._filter_mask(catalogue, filters)
        rows, scores = self._search_one(catalogue, catalogue.vectors[row:row + 1], k, np.array([row]), mask,
                                        diversity)
        return self._result(catalogue, rows, scores, [], "model")

    def add_items(self, items: pd.DataFrame | Sequence[Mapping[str, Any]]) -> list[Any]:
        """Embed new titles from their content and make them recommendable at once.

        ``items`` has an ``item_id`` column plus whatever content the model uses
        (``genres`` list, ``year``, ``title``, ``text``) and any metadata to return.
        Returns the added ids. Ids already in the catalogue raise ``ValueError``.
        """
        ids = None
        if isinstance(items, pd.DataFrame):
            frame = items.reset_index(drop=True)
        else:
            if isinstance(items, (str, bytes, Mapping)) or not isinstance(items, Iterable):
                raise ValueError(f"items: expected a DataFrame or a list of records (mappings), "
                                 f"got {_described(items)}.")
            records = list(items)
            try:
                frame = _records_frame(records)  # mappings, Series, dataclasses, named tuples
            except (TypeError, ValueError) as error:
                raise ValueError(f"items: expected a DataFrame or a list of records (mappings) ({error}).") from None
            if records and all(isinstance(record, Mapping) for record in records):
                for i, record in enumerate(records):
                    if "item_id" not in record:
                        raise ValueError(f"items[{i}]: an 'item_id' is required.")
                # From the records: pandas makes floats of integer ids beside a missing one.
                ids = [_plain(record["item_id"]) for record in records]
        if ids is None:
            if len(frame) and "item_id" not in frame.columns:
                raise ValueError(f"items: an 'item_id' column is required; got {list(frame.columns)}.")
            ids = [_plain(item_id) for item_id in frame["item_id"].tolist()] if len(frame) else []
        bounds = np.iinfo(self._catalogue.item_ids.dtype) if self._id_kind == "int" else None
        for i, item_id in enumerate(ids):
            if bounds is not None and isinstance(item_id, float):  # not whole: NaN (a missing id), inf, 5000.5
                raise ValueError(f"items.item_id[{i}]: {item_id} is not an integer id (a missing id makes "
                                 "pandas turn the others into floats).")
            self._check_id(item_id, f"items.item_id[{i}]")
            if bounds is not None and not bounds.min <= item_id <= bounds.max:
                raise ValueError(f"items.item_id[{i}]: {item_id} does not fit the catalogue's ids "
                                 f"({bounds.dtype}, {bounds.min} to {bounds.max}).")
        if len(set(ids)) != len(ids):
            raise ValueError("items: duplicate item_id values.")
        if not ids:
            return []
        table = self._catalogue.table
        shapes = {c: frame[c].map(_listed).to_numpy(dtype=bool) for c in frame.columns if c != "item_id"}
        listed = [c for c, cells in shapes.items() if cells.any()]
        for column in listed:
            if column in table.scalars and column != "genres":
                i = int(np.flatnonzero(shapes[column])[0])
                raise ValueError(f"items.{column}[{i}]: the catalogue's {column} holds one value per title, got "
                                 f"{_described(frame[column][i])}.")
        for column in dict.fromkeys(("genres", *table.lists, *listed)):  # a list (or missing) per title
            if column in frame.columns:
                values = frame[column].tolist()
                for i, value in enumerate(values):
                    if isinstance(value, (set, frozenset)):
                        values[i] = sorted(value, key=str)
                    elif not _listed(value) and not is_missing(value):
                        hint = f" (e.g. [{value!r}])" if isinstance(value, str) else ""
                        raise ValueError(f"items.{column}[{i}]: expected a list of values{hint}, "
                                         f"got {_described(value)}.")
                frame = frame.assign(**{column: values})
        vectors = self._embed(frame)
        with self._write_lock:
            old = self._catalogue
            present = [i for i in ids if i in old.rows]
            if present:
                raise ValueError(f"items: ids already in the catalogue: {present[:10]}; remove_items them first "
                                 "to replace them.")
            start = len(old.item_ids)
            new_rows = np.arange(start, start + len(ids), dtype=np.int64)
            index = _writable_copy(old)
            index.add_with_ids(vectors, new_rows)
            set_search_parameter(index, self.manifest["index"]["search_value"])
            metadata = frame.drop(columns=["item_id"]).assign(popularity=0)
            rows = old.rows.updated(ids, new_rows)
            # A re-added title keeps its trained history row (updated() keeps present ids).
            history_rows = rows if old.history_rows is old.rows else old.history_rows.updated(ids, new_rows)
            item_ids = np.empty(len(old.item_ids) + len(ids), dtype=old.item_ids.dtype)
            item_ids[:start] = old.item_ids
            item_ids[start:] = ids
            active = np.concatenate([old.active, np.ones(len(ids), dtype=bool)])
            self._catalogue = _Catalogue(
                index=index, vectors=np.concatenate([old.vectors, vectors]), item_ids=item_ids, rows=rows,
                history_rows=history_rows, active=active, table=old.table.append(ItemTable.from_frame(metadata)),
                popular=np.concatenate([old.popular, new_rows]),
                popularity=np.concatenate([old.popularity, np.zeros(len(ids))]), version=old.version + 1,
                **_removal_search(index, active, self.manifest["index"]["search_value"], old.search_params),
            )
        log.info("added %d titles", len(ids))
        return ids

    def remove_items(self, item_ids: Iterable[Any]) -> None:
        """Stop recommending ``item_ids`` (unknown ids raise ``UnknownItemsError``).

        Members who watched a removed title still have it read from their history.
        """
        if isinstance(item_ids, (str, bytes)) or not isinstance(item_ids, Iterable):
            raise ValueError(f"item_ids: expected a list of item ids, got {_described(item_ids)}.")
        item_ids = list(item_ids)
        for i, item_id in enumerate(item_ids):
            self._check_id(item_id, f"item_ids[{i}]")
        item_ids = list(dict.fromkeys(item_ids))
        with self._write_lock:
            old = self._catalogue
            rows = old.rows.rows(item_ids)
            missing = [i for i, row in zip(item_ids, rows.tolist()) if row == ABSENT]
            if missing:
                raise UnknownItemsError(f"item_ids: not in the catalogue: {missing[:10]}.")
            index = _writable_copy(old)
            deleted = True
            try:
                index.remove_ids(rows)
            except RuntimeError:  # HNSW cannot delete: searches skip the rows instead
                deleted = False
            set_search_parameter(index, self.manifest["index"]["search_value"])
            active = old.active.copy()
            active[rows] = False
            remaining = old.rows.without(item_ids)
            self._catalogue = _Catalogue(
                index=index, vectors=old.vectors, item_ids=old.item_ids, rows=remaining,
                history_rows=old.history_rows, active=active, table=old.table,
                popular=old.popular[active[old.popular]], popularity=old.popularity, version=old.version + 1,
                **_removal_search(index, active, self.manifest["index"]["search_value"],
                                  old.search_params if deleted else True),
            )

    def save(self, path: str | Path) -> dict[str, Any]:
        """Write the current catalogue (after add_items / remove_items) as a new artifact.

        Atomic like the original build; ``Recommender.load(path)`` serves exactly what this
        object serves now. The search parameter and its measured recall are carried over
        (they were tuned on the original catalogue). Returns the new manifest.
        """
        catalogue = self._catalogue
        manifest = self.manifest

        def write_files(tmp: Path) -> dict[str, Any]:
            torch.save(self.query_tower.state_dict(), tmp / "query_tower.pt")
            torch.save(self.item_tower.state_dict(), tmp / "item_tower.pt")
            np.save(tmp / "item_vectors.npy", np.ascontiguousarray(catalogue.vectors), allow_pickle=False)
            faiss.write_index(catalogue.index, str(tmp / "index.faiss"))
            frame = catalogue.table.to_frame()
            frame.insert(0, "item_id", catalogue.item_ids)
            if not catalogue.active.all():
                frame[ACTIVE] = catalogue.active
            frame.to_parquet(tmp / "items.parquet", index=False)
            source = self.path / "recall_latency.png"
            if source.is_file():
                shutil.copyfile(source, tmp / "recall_latency.png")
            kept = {key: value for key, value in manifest.items() if key not in ("format", "format_version", "files")}
            return {**kept, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "versions": library_versions(),
                    "index": {**manifest["index"], "n_items": len(catalogue.rows)},
                    "saved_from": {"artifact": str(self.path), "rows": len(catalogue.item_ids),
                                   "active_titles": len(catalogue.rows), "versions": manifest.get("versions")}}

        return write_artifact(path, write_files)

    # -- request encoding ----------------------------------------------------------------
    def _check_id(self, item_id: Any, name: str) -> None:
        if self._id_kind == "int":
            if isinstance(item_id, bool) or not isinstance(item_id, (int, np.integer)):
                raise ValueError(f"{name}: item ids of this catalogue are integers, got {item_id!r} "
                                 f"({type(item_id).__name__}).")
        elif not isinstance(item_id, str):
            raise ValueError(f"{name}: item ids of this catalogue are strings, got {item_id!r} "
                             f"({type(item_id).__name__}).")

    def _request(self, history: Sequence[Any], catalogue: _Catalogue, timestamps, watch_fractions, now,
                 member_features, device, strict: bool, name: str) -> _Request:
        if type(history) is not list and (isinstance(history, (str, bytes))
                                          or not isinstance(history, (Sequence, np.ndarray, pd.Series))
                                          or getattr(history, "ndim", 1) != 1):
            raise ValueError(f"{name}: expected a sequence of item ids, got {_described(history)}.")
        n = len(history)
        times = _numbers(timestamps, n, "timestamps", name, dates=True) if timestamps is not None else None
        watch = _numbers(watch_fractions, n, "watch_fractions", name) if watch_fractions is not None else None
        if watch is not None and any(w < 0 or w > 1 for w in watch):
            raise ValueError(f"watch_fractions ({name}): values must lie in [0, 1].")
        if isinstance(now, _DATETIMES):
            now = _seconds([now], "now", "")[0]
        if now is not None and not is_finite_number(now):
            raise ValueError(f"now: expected unix seconds or a datetime, got {now!r}.")
        if now is not None and times and max(times) > now + SECONDS_PER_DAY:  # clock skew aside
            raise ValueError(f"timestamps ({name}): a view at {max(times):.0f} is more than a day after now={now!r}; "
                             "both are unix seconds (not milliseconds).")
        if device is not None and (isinstance(device, bool) or not isinstance(device, (str, int, np.integer))) \
                and not is_missing(device):  # missing (NaN, as pandas reads an empty text cell; NA): unknown
            raise ValueError(f"device: expected a value of the training data's device column (text or an "
                             f"integer), got {_described(device)}.")
        if type(history) is not list:
            history = history.tolist() if isinstance(history, (np.ndarray, pd.Series)) else list(history)
        exact_type = int if self._id_kind == "int" else str
        plain_ints = exact_type is int
        if set(map(type, history)) - {exact_type}:  # exact types: bool is not an id
            for position, item_id in enumerate(history):
                self._check_id(item_id, f"{name}[{position}]")
            plain_ints = False  # numpy integers among them
        rows = catalogue.history_rows.rows(history, plain_ints)
        if catalogue.rows is catalogue.history_rows:
            seen = rows
        else:  # after changes: only titles still servable are excluded
            seen = catalogue.rows.rows(history, plain_ints)
            seen = seen[seen != ABSENT]
        codes = rows + 1  # the tower's code of a row; 0 = padding, not read
        trained = self.config.n_items
        if len(catalogue.item_ids) > trained:
            codes[rows >= trained] = 0  # added after training: no history embedding (excluded, not read)
        kept = None
        unknown: list[Any] = []
        if np.count_nonzero(codes) < n:
            unknown = [history[p] for p in np.flatnonzero(rows == ABSENT).tolist()]
            kept = np.flatnonzero(codes)
            codes = codes[kept]
            if seen is rows:
                seen = rows[rows != ABSENT]
        if unknown:
            if strict:
                raise UnknownItemsError(f"{name}: ids not in the catalogue: {unknown[:10]} (strict mode).")
            log.debug("%s: skipped %d unknown ids", name, len(unknown))
        watch_kept = _kept(watch, kept, np.float32)
        times_kept = _kept(times, kept, np.float64)
        if times_kept is not None and len(codes) > 1 and (times_kept[1:] < times_kept[:-1]).any():
            order = np.argsort(times_kept, kind="stable")
            codes, times_kept = codes[order], times_kept[order]
            watch_kept = watch_kept[order] if watch_kept is not None else None
        if len(codes) > 1 and len(set(history)) < n:
            # A title watched again: its last view only, as training keeps one view per title
            # (repeats would crowd the other titles out of the tower's window).
            last = np.fromiter(sorted({code: i for i, code in enumerate(codes.tolist())}.values()), np.int64)
            if len(last) < len(codes):
                codes = codes[last]
                times_kept = times_kept[last] if times_kept is not None else None
                watch_kept = watch_kept[last] if watch_kept is not None else None
        if member_features is not None:
            self._check_features(member_features)
        reference = now
        if reference is None and times:  # the latest view; skipped ids do not count
            reference = max(times) if not unknown else max(
                (t for t, row in zip(times, rows.tolist()) if row != ABSENT), default=None)
        # Positional: keywords cost 0.25 µs more for these eight fields.
        return _Request(seen, unknown, codes, watch_kept, times_kept, reference, member_features, device)

    def _check_features(self, features: Mapping[str, Any]) -> None:
        if not isinstance(features, Mapping):
            raise ValueError(f"member_features: expected a mapping of feature -> value, got {type(features).__name__}.")
        known = self._user_spec.columns
        for key, value in features.items():
            if key not in known:
                raise ValueError(f"member_features: {key!r} is not a feature this model was trained with "
                                 f"({'its features are ' + str(list(known)) if known else 'it has none'}).")
            if isinstance(value, (float, np.floating)) and not math.isfinite(value):
                raise ValueError(f"member_features[{key!r}] is {value}; leave the feature out when it is unknown.")
            if value is not None and value is not pd.NA and not isinstance(value, (str, int, float, np.number,
                                                                                 np.bool_)):
                raise ValueError(f"member_features[{key!r}]: expected one value (text or a number), "
                                 f"got {_described(value)}.")

    def _queries(self, requests: list[_Request]) -> np.ndarray:
        """Query-tower vectors [B, d] float32: numpy one member at a time for up to
        NUMPY_TOWER_MAX_BATCH members, else torch's batched kernels."""
        if self._encode is not None and len(requests) <= NUMPY_TOWER_MAX_BATCH:
            if len(requests) == 1:
                return self._query(requests[0])
            return np.concatenate([self._query(r) for r in requests])
        config = self.config
        b, length = len(requests), config.max_history
        history = np.zeros((b, length), dtype=np.int64)
        watch = np.zeros((b, length), dtype=np.float32)
        age = np.zeros((b, length), dtype=np.float32)
        for i, r in enumerate(requests):
            codes = r.codes[-length:]
            m = len(codes)
            history[i, length - m:] = codes
            watch[i, length - m:] = r.watch[-length:] if r.watch is not None else 1.0
            if r.now is not None and r.times is not None:
                age[i, length - m:] = _age_days(r.now, r.times[-length:])
        batch = {"history": history, "history_watch": watch, "history_age_days": age}
        if config.user_feature_cardinalities:
            batch["user_features"] = np.array([self._user_spec.encode_member(r.features) for r in requests],
                                              dtype=np.int64)
        if config.n_devices:
            batch["device"] = np.array([self._device_code(r.device) for r in requests], dtype=np.int64)
        if config.use_hour:
            batch["hour"] = np.array([_hour(r.now) for r in requests], dtype=np.int64)
        with torch.inference_mode():
            return self.query_tower(**{key: torch.from_numpy(value) for key, value in batch.items()}).numpy()

    def _query(self, r: _Request) -> np.ndarray:
        """One member's query vector [1, d] from the numpy tower."""
        config, length = self.config, self.config.max_history
        age = _age_days(r.now, r.times[-length:]) if r.now is not None and r.times is not None else None
        return self._encode(
            r.codes[-length:], r.watch[-length:] if r.watch is not None else None, age,
            np.array(self._user_spec.encode_member(r.features), dtype=np.int64)
            if config.user_feature_cardinalities else None,
            self._device_code(r.device) if config.n_devices else 0,
            _hour(r.now) if config.use_hour else 0,
        )

    def _device_code(self, device: Any) -> int:
        return self._device_codes.get(str(device), 0) if device is not None else 0

    # -- search --------------------------------------------------------------------------
    def _filter_mask(self, catalogue: _Catalogue,
                     filters: Mapping[str, Iterable[Any]] | None) -> tuple[np.ndarray, int] | None:
        """[rows] bool of active titles passing every filter, and how many pass (cached, LRU)."""
        if not filters:
            return None
        if not isinstance(filters, Mapping):
            raise ValueError("filters: expected a mapping of metadata column -> allowed values.")
        key_parts = []
        for column, allowed in filters.items():
            if isinstance(allowed, (str, bytes)) or not isinstance(allowed, Iterable):
                raise ValueError(f"filters[{column!r}]: expected a list of allowed values, got {allowed!r}.")
            allowed = list(allowed)
            try:  # typed: True == 1 == 1.0 and 0.0 == -0.0 as set members, not as a string column's values
                key_parts.append((column, frozenset((type(a), a, str(a)) for a in allowed), allowed))
            except TypeError:
                raise ValueError(f"filters[{column!r}]: allowed values must be plain values (str, int, ...), "
                                 f"got {allowed!r}.") from None
        key = (catalogue.version, tuple(sorted((part[:2] for part in key_parts), key=lambda part: str(part[0]))))
        with self._masks_lock:
            cached = self._masks.get(key)
            if cached is not None:
                self._masks.move_to_end(key)
                return cached
        mask = catalogue.active.copy()
        for column, _, allowed in key_parts:
            mask &= catalogue.table.mask(column, allowed)
        entry = (mask, int(mask.sum()))
        with self._masks_lock:
            self._masks[key] = entry
            while len(self._masks) > FILTER_CACHE_SIZE:
                self._masks.popitem(last=False)
        return entry

    def _search(self, catalogue: _Catalogue, queries: np.ndarray, k: int, excludes: list[np.ndarray],
                filtered: tuple[np.ndarray, int] | None, diversity: float,
                threads: int) -> list[tuple[np.ndarray, np.ndarray]]:
        """Top rows and scores per query, after excluding rows ``excludes[i]``, filters and MMR.

        One FAISS search per number of excluded rows, each asking what :meth:`_search_one`
        asks for such a query: HNSW's results, and whether a short result falls back to an
        exact scan, depend on how many results are asked for, so one search sized for the
        longest history in a batch changed the other members' lists.
        """
        groups: dict[int, list[int]] = {}
        for i, seen in enumerate(excludes):
            groups.setdefault(len(seen), []).append(i)
        unseen = self._scratch(catalogue).unseen
        out: list[tuple[np.ndarray, np.ndarray]] = [None] * len(queries)  # type: ignore[list-item]
        for most_seen, members in groups.items():
            pool, mask, wanted = _search_sizes(catalogue, k, most_seen, filtered, diversity)
            if not wanted:
                for i in members:
                    out[i] = self._top(catalogue, None, queries[i], None, None, excludes[i], mask, pool, k, diversity)
                continue
            scores, labels = _index_search(catalogue, queries[members] if len(groups) > 1 else queries, wanted,
                                           threads)
            for j, i in enumerate(members):
                out[i] = self._top(catalogue, unseen, queries[i], labels[j], scores[j], excludes[i], mask, pool, k,
                                   diversity)
        return out

    def _search_one(self, catalogue: _Catalogue, query: np.ndarray, k: int, seen: np.ndarray,
                    filtered: tuple[np.ndarray, int] | None, diversity: float) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`_search` of one query [1, d], on the calling thread only, into this
        thread's reused output buffers."""
        pool, mask, wanted = _search_sizes(catalogue, k, len(seen), filtered, diversity)
        if not wanted:
            return self._top(catalogue, None, query, None, None, seen, mask, pool, k, diversity)
        scratch = self._scratch(catalogue)
        scores, labels, score_ptr, label_ptr = scratch.outputs(wanted)
        _faiss_search(catalogue, query, wanted, 1, score_ptr, label_ptr, len(labels))
        return self._top(catalogue, scratch.unseen, query, labels[:wanted], scores[:wanted], seen, mask, pool, k,
                         diversity)

    def _similar(self, catalogue: _Catalogue, row: int, k: int) -> Recommendations:
        """:meth:`similar_items` without filters or diversity: FAISS's k + 1 nearest, the title
        itself dropped (or the last, when FAISS did not return the title), as plain lists.
        When FAISS returns fewer (HNSW skipping removed titles, sparse IVF lists), an exact
        scan, as in the general path.

        The general path's seen-title flags and numpy picks cost more than k + 1 labels are
        worth: read as lists, a call takes 6 µs less at 100,000 titles (docs/benchmarks.md).
        """
        wanted = k + 1
        scores, labels, score_ptr, label_ptr = self._scratch(catalogue).outputs(wanted)
        _faiss_search(catalogue, catalogue.vectors[row:row + 1], wanted, 1, score_ptr, label_ptr, len(labels))
        found = labels[:wanted]
        rows = found.tolist()
        if rows[-1] < 0:  # FAISS pads a short result with -1 at the end
            exact_rows, exact_scores = self._exact(catalogue, catalogue.vectors[row], k, np.array([row]), None)
            return self._result(catalogue, exact_rows, exact_scores, [], "model")
        drop = rows.index(row) if row in rows else k
        # The ids are gathered by the labels' array: by the list, 1 µs more.
        ids, found_scores = catalogue.item_ids[found].tolist(), scores[:wanted].tolist()
        del rows[drop], ids[drop], found_scores[drop]
        return Recommendations(ids, found_scores, rows, catalogue.table, (), "model")

    def _top(self, catalogue: _Catalogue, unseen: np.ndarray | None, query: np.ndarray, found: np.ndarray | None,
             found_scores: np.ndarray | None, seen: np.ndarray, mask: np.ndarray | None, pool: int, k: int,
             diversity: float) -> tuple[np.ndarray, np.ndarray]:
        """One query's list from what FAISS ``found`` (None: scan exactly): the first ``pool``
        rows not in ``seen`` (with this thread's flags ``unseen``) and passing ``mask``, then
        MMR. The returned arrays are new (``found`` may be a thread's reused buffer)."""
        rows = None
        if found is not None:
            if catalogue.rescore:
                found, found_scores = _rescored(catalogue.vectors, query, found)
            keep = _not_seen(unseen, seen, found)
            if mask is not None:
                keep &= mask[found]
            picked = keep.nonzero()[0][:pool]
            if len(picked) == pool:
                rows, row_scores = found[picked], found_scores[picked]
        if rows is None:  # no index search, or the index ran short (big k, HNSW's ef, sparse IVF lists)
            rows, row_scores = self._exact(catalogue, query, pool, seen, mask)
        if diversity > 0:
            rows, row_scores = _mmr(catalogue.vectors, rows, row_scores, k, diversity)
        return rows, row_scores

    def _scratch(self, catalogue: _Catalogue) -> "_Scratch":
        """This thread's search memory, sized for ``catalogue``."""
        scratch = getattr(self._per_thread, "scratch", None)
        if scratch is None or len(scratch.unseen) != len(catalogue.item_ids) + 1:
            scratch = self._per_thread.scratch = _Scratch(len(catalogue.item_ids))
        return scratch

    def _exact(self, catalogue: _Catalogue, query: np.ndarray, k: int, seen: np.ndarray,
               mask: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        allowed = catalogue.active.copy() if mask is None else mask.copy()
        allowed[seen] = False
        rows = np.flatnonzero(allowed)
        scores = catalogue.vectors[rows] @ query.reshape(-1)  # query: [d] or [1, d]
        top = np.argsort(-scores, kind="stable")[:k]
        return rows[top], scores[top]

    def _popular(self, catalogue: _Catalogue, request: _Request, k: int, exclude_seen: bool,
                 filtered: tuple[np.ndarray, int] | None) -> Recommendations:
        order = catalogue.popular if filtered is None else catalogue.popular[filtered[0][catalogue.popular]]
        seen = request.seen if exclude_seen else NOTHING
        # At most len(seen) of the first k + len(seen) titles can be excluded.
        candidates = order[:k + len(seen)]
        rows = candidates[_not_seen(self._scratch(catalogue).unseen, seen, candidates)][:k]
        return self._result(catalogue, rows, catalogue.popularity[rows], request.unknown, "popularity")

    def _result(self, catalogue: _Catalogue, rows: np.ndarray, scores: np.ndarray, unknown: list[Any],
                source: str) -> Recommendations:
        return Recommendations(catalogue.item_ids[rows].tolist(), scores.tolist(), rows, catalogue.table,
                               tuple(unknown), source)

    # -- new titles ------------------------------------------------------------------------
    def _embed(self, frame: pd.DataFrame) -> np.ndarray:
        encoder = self._item_encoder
        if "genres" in frame.columns:
            frame = frame.assign(genres=[list(g) if isinstance(g, (list, tuple, np.ndarray)) else []
                                         for g in frame["genres"]])
        for column in ("year",):
            if column in frame.columns and pd.to_numeric(frame[column], errors="coerce").isna().any():
                bad = frame[column][pd.to_numeric(frame[column], errors="coerce").isna()].tolist()
                if not all(map(is_missing, bad)):  # missing (None, NaN, pandas' NA): the year is unknown
                    raise ValueError(f"items.{column}: non-numeric values {[v for v in bad if not is_missing(v)][:5]}.")
        features = build_item_features(frame, genre_vocab=encoder["genre_vocab"], year_mean=encoder["year_mean"],
                                       year_std=encoder["year_std"], text_buckets=encoder["text_buckets"],
                                       max_tokens=encoder["max_tokens"])
        with torch.inference_mode():
            content = self.item_tower.content(features.genres, features.year, features.year_known, features.tokens)
            vectors = self.item_tower.encode(content, None, None)
        return np.ascontiguousarray(vectors.numpy(), dtype=np.float32)


# -- helpers -------------------------------------------------------------------------------
class _Scratch:
    """One calling thread's reused search memory: a flag per catalogue row for excluding
    watched titles (1 byte each, all True but the last, which FAISS's -1 indexes) and one
    query's FAISS outputs with their SWIG pointers (a call then allocates neither)."""

    __slots__ = ("unseen", "_outputs")

    def __init__(self, rows: int):
        self.unseen = np.ones(rows + 1, dtype=bool)
        self.unseen[-1] = False
        self._outputs = _outputs(64)

    def outputs(self, k: int) -> tuple[np.ndarray, np.ndarray, Any, Any]:
        """(scores, labels, their SWIG pointers) with room for one query's ``k`` results:
        this thread's buffers, grown up to REUSED_RESULTS; past that, fresh ones for this
        call only (a rare huge k does not keep megabytes per thread)."""
        outputs = self._outputs
        if len(outputs[0]) < k:
            outputs = _outputs(k)
            if k <= REUSED_RESULTS:
                # One assignment: an exception midway (a signal handler's, a MemoryError)
                # cannot leave pointers to arrays that were freed.
                self._outputs = outputs
        return outputs


def _outputs(k: int) -> tuple[np.ndarray, np.ndarray, Any, Any]:
    scores, labels = np.empty(k, dtype=np.float32), np.empty(k, dtype=np.int64)
    return scores, labels, faiss.swig_ptr(scores), faiss.swig_ptr(labels)


def _search_sizes(catalogue: _Catalogue, k: int, most_seen: int, filtered: tuple[np.ndarray, int] | None,
                  diversity: float) -> tuple[int, np.ndarray | None, int]:
    """(candidates per query, filter mask or None, results to ask FAISS for; 0 = scan exactly).

    FAISS is asked for enough extra results to survive excluding ``most_seen`` watched
    titles and the filter (which keeps a share allowed / active of titles); an exact scan
    covers any shortfall. Filters that allow few titles, or an empty index, scan exactly.
    """
    pool = max(MMR_POOL * k, 50) if diversity > 0 else k
    if filtered is None:
        return pool, None, min(pool + most_seen, catalogue.searchable)
    mask, allowed = filtered
    if allowed <= EXACT_SEARCH_MAX_ROWS:
        return pool, mask, 0
    wanted = math.ceil((pool + most_seen) * 1.2 * max(len(catalogue.rows), 1) / max(allowed, 1))
    return pool, mask, min(wanted, catalogue.searchable)


def _index_search(catalogue: _Catalogue, queries: np.ndarray, k: int, threads: int) -> tuple[np.ndarray, np.ndarray]:
    """``catalogue.index.search(queries, k)`` on ``threads`` OpenMP threads: (scores, labels)."""
    scores = np.empty((len(queries), k), dtype=np.float32)
    labels = np.empty((len(queries), k), dtype=np.int64)
    _faiss_search(catalogue, queries, k, threads, faiss.swig_ptr(scores), faiss.swig_ptr(labels), scores.size)
    return scores, labels


def _faiss_search(catalogue: _Catalogue, queries: np.ndarray, k: int, threads: int, scores: Any, labels: Any,
                  room: int) -> None:
    """FAISS's ``search_c`` of ``queries`` into the buffers behind the SWIG pointers
    ``scores`` and ``labels`` (``room`` entries each; FAISS writes len(queries) * k), on
    ``threads`` OpenMP threads (a per-thread setting, restored after).

    ``index.search``'s Python wrapper reads ``index.d`` through SWIG and resolves a numeric
    type on every call (1.3–1.5 µs at 100,000 titles against ``search_c`` with outputs
    allocated once); skipping it pays for the thread setting. The queries' shape is
    checked against the item vectors', whose width ``load`` checked against the index's.
    """
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    if queries.ndim != 2 or queries.shape[1] != catalogue.vectors.shape[1]:  # FAISS would read past the buffer
        raise ValueError(f"queries: expected [n, {catalogue.vectors.shape[1]}] vectors, got shape {queries.shape}.")
    if len(queries) * k > room:  # FAISS would write past the buffers
        raise ValueError(f"queries: {len(queries)} x {k} results do not fit in outputs of {room}.")
    previous = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(threads)
    try:
        catalogue.index.search_c(len(queries), faiss.swig_ptr(queries), k, scores, labels, catalogue.search_params)
    finally:
        faiss.omp_set_num_threads(previous)


def _rescored(vectors: np.ndarray, query: np.ndarray, found: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """FAISS's candidates ``found`` (-1 padding last) ordered by their exact inner product
    with ``query``, and those scores: a compressed index's own scores are approximations
    (IVF-PQ's put titles in another order than a filtered search's exact scan did)."""
    valid = found[found >= 0]
    scores = vectors[valid] @ query.reshape(-1)
    order = np.argsort(-scores, kind="stable")
    padding = len(found) - len(valid)
    return (np.concatenate([valid[order], np.full(padding, -1, dtype=found.dtype)]),
            np.concatenate([scores[order], np.full(padding, -np.inf, dtype=scores.dtype)]))


def _not_seen(unseen: np.ndarray, seen: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """[len(rows)] bool: which of ``rows`` (FAISS's -1 allowed: False) are not in ``seen``.

    Vectorised against a thread's flags ``unseen`` (:class:`_Scratch`) rather than a set:
    ``seen`` is marked, the rows' flags read, and the marks undone.
    """
    unseen[seen] = False
    try:
        return unseen[rows]
    finally:  # even on an interrupt: the flags serve this thread's next calls
        unseen[seen] = True


def _removal_search(index: faiss.Index, active: np.ndarray, value: int | None, needed: Any) -> dict[str, Any]:
    """Search parameters that skip inactive rows, for indexes that cannot delete (HNSW).

    ``needed``: falsy when no row was ever left in the index after removal.
    """
    if not needed:
        return {"search_params": None, "keep_alive": None}
    bits = np.packbits(active, bitorder="little")
    selector = faiss.IDSelectorBitmap(len(active), faiss.swig_ptr(bits))
    # Pre-translated to the wrapped index's positions: given a plain selector, IndexIDMap
    # swaps a translated one into the shared parameters during each search, which races
    # (and crashed) when threads search at once.
    translated = faiss.IDSelectorTranslated(index.id_map, selector)
    params = faiss.SearchParametersHNSW(sel=translated, efSearch=int(value or 16))
    return {"search_params": params, "keep_alive": (selector, translated, bits)}


def _kept(values: list[float] | None, kept: np.ndarray | None, dtype) -> np.ndarray | None:
    """``values`` as an array, at positions ``kept`` (None: all)."""
    if values is None:
        return None
    array = np.asarray(values, dtype=dtype)
    return array if kept is None else array[kept]


def _age_days(now: float, times: np.ndarray) -> np.ndarray:
    """Days from each view in ``times`` (unix seconds) to ``now`` [len(times)] float32,
    clipped so that far-apart times stay finite in float32 (buckets end at 2^16 days)."""
    return (np.clip(now - times, 0, 1e15) / SECONDS_PER_DAY).astype(np.float32)


def _hour(now: float | None) -> int:
    """The hour-of-day code of the request's moment (0 = unknown)."""
    return int(hour_code(now)) if now is not None else 0


def _checked_k(k: Any) -> int:
    """``k`` as a Python int (a numpy integer would overflow in ``MMR_POOL * k`` as uint8,
    and SWIG's ``search_c`` refuses one)."""
    if type(k) is int and k > 0:  # the usual case, checked in a third of the time
        return k
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k <= 0:
        raise ValueError(f"k: expected a positive integer, got {k!r}.")
    return int(k)


def _check_diversity(diversity: Any) -> None:
    if type(diversity) is float and 0.0 <= diversity <= 1.0:  # the usual case (NaN fails it)
        return
    if isinstance(diversity, bool) or not isinstance(diversity, (int, float, np.integer, np.floating)) \
            or not 0.0 <= diversity <= 1.0:
        raise ValueError(f"diversity: expected a number in [0, 1], got {diversity!r}.")


def _numbers(values: Sequence[float], n: int, what: str, name: str, dates: bool = False) -> list[float]:
    """``n`` finite floats from ``values``; with ``dates``, datetimes are read as unix
    seconds (numpy's datetime64, pandas' or Python's datetimes; naive ones as UTC)."""
    if not _ordered(values) or getattr(values, "ndim", 1) != 1:
        raise ValueError(f"{what} ({name}): expected a sequence of numbers (one per history item), "
                         f"got {_described(values)}.")
    if len(values) != n:
        raise ValueError(f"{what} ({name}): {len(values)} values for {n} history items; give one per item.")
    if getattr(getattr(values, "dtype", None), "kind", None) == "M":  # .tolist() of datetime64[ns] gives ns ints
        if not dates:
            raise ValueError(f"{what} ({name}): expected numbers, got datetimes.")
        return _seconds(values, what, name)
    given = values.tolist() if isinstance(values, (np.ndarray, pd.Series)) else list(values)
    try:
        if any(isinstance(v, _NOT_NUMBERS) for v in given):
            raise TypeError
        numbers = [float(v) for v in given]
    except (TypeError, ValueError, OverflowError):  # OverflowError: an int past float64's range
        if dates and given and all(isinstance(v, _DATETIMES) for v in given):
            return _seconds(given, what, name)
        raise ValueError(f"{what} ({name}): expected {'unix seconds or datetimes' if dates else 'numbers'} "
                         f"within float64's range, got {given[:5]}.") from None
    for position, v in enumerate(numbers):
        if not math.isfinite(v):
            raise ValueError(f"{what} ({name})[{position}] is {v}; give finite numbers.")
    return numbers


_DATETIMES = (datetime.datetime, np.datetime64)  # pandas' Timestamp and NaT are datetimes
# Values float() would misread: '1700000000' as a number, a datetime64[ns] as nanoseconds.
_NOT_NUMBERS = (str, bytes, bool, np.bool_, *_DATETIMES)


def _seconds(values: Any, what: str, name: str) -> list[float]:
    """Unix seconds of datetimes (naive ones read as UTC)."""
    where = f"{what} ({name})" if name else what
    try:
        stamps = pd.to_datetime(pd.Index(values, dtype=object) if isinstance(values, list) else values, utc=True)
    except (TypeError, ValueError, OverflowError) as error:  # values pandas cannot read as times
        raise ValueError(f"{where}: could not read the datetimes ({error}).") from None
    missing = np.flatnonzero(pd.isna(stamps))
    if len(missing):
        raise ValueError(f"{where}[{missing[0]}] is NaT: give every entry a time.")
    # In microseconds: pandas keeps a datetime's own unit, and the difference of one past
    # 2262 from the epoch does not fit in nanoseconds.
    try:
        micros = np.asarray(pd.DatetimeIndex(stamps).tz_convert(None).as_unit("us").asi8, dtype=np.float64)
    except (ValueError, OverflowError) as error:  # pandas' OutOfBoundsDatetime is a ValueError
        raise ValueError(f"{where}: could not read the datetimes ({error}).") from None
    return (micros / 1e6).tolist()


def _check_flags(**flags: Any) -> None:
    for name, value in flags.items():
        if not isinstance(value, (bool, np.bool_)):  # 'False' would be true
            raise ValueError(f"{name}: expected True or False, got {_described(value)}.")


def _described(value: Any) -> str:
    """A short description of a wrong argument for an error message."""
    if isinstance(value, np.ndarray):
        return f"a {value.ndim}-d array"
    text = repr(value)
    return f"{type(value).__name__} {text[:60]}{'...' if len(text) > 60 else ''}"


def _ordered(values: Any) -> bool:
    """Values in a meaningful order: indexable with a length (not a string, mapping or set)."""
    if isinstance(values, (str, bytes, Mapping, pd.DataFrame)):
        return False
    return hasattr(values, "__len__") and (hasattr(values, "__getitem__") or hasattr(values, "__array__"))


def _plain(value: Any) -> Any:
    """An id as a Python value: numpy scalars unwrapped, whole-number floats (as pandas
    makes of integer ids beside a missing one) as ints; anything else as it is."""
    value = value.item() if isinstance(value, np.generic) else value
    if isinstance(value, float) and value.is_integer() and abs(value) < 2.0**63:
        return int(value)
    return value


def _records_frame(records: list[Any]) -> pd.DataFrame:
    """``records`` as a DataFrame typed by pandas, except where pandas makes floats or
    objects of ints or bools beside a missing value ([5, missing] -> [5.0, NaN]: a
    catalogue's int column would take 2**60 + 1 rounded, a bool column 1.0): those stay
    nullable ints, or bools and None."""
    typed = pd.DataFrame(records)
    raw = pd.DataFrame(records, dtype=object)
    for column in typed.columns:
        if typed[column].dtype.kind not in "fO":
            continue
        present = [v for v in raw[column] if not is_missing(v)]
        if not present or len(present) == len(raw):
            continue
        if all(isinstance(v, (bool, np.bool_)) for v in present):
            typed[column] = raw[column].map(lambda v: None if is_missing(v) else bool(v))
        elif all(isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_)) for v in present):
            low, high = min(map(int, present)), max(map(int, present))
            dtype = "Int64" if high <= np.iinfo(np.int64).max else "UInt64"
            if low < np.iinfo(dtype.lower()).min or high > np.iinfo(dtype.lower()).max:
                continue  # no one integer type holds them: appending refuses them by name
            typed[column] = pd.array([None if is_missing(v) else int(v) for v in raw[column]], dtype=dtype)
    return typed


def _listed(value: Any) -> bool:
    """A list-like metadata value (a list column's cell)."""
    return isinstance(value, (list, tuple, np.ndarray, set, frozenset))


def _mmr(vectors: np.ndarray, rows: np.ndarray, scores: np.ndarray, k: int,
         diversity: float) -> tuple[np.ndarray, np.ndarray]:
    """Maximal marginal relevance: greedily pick argmax (1-λ)·score − λ·max similarity to picks."""
    if len(rows) <= 1:
        return rows, scores
    candidates = vectors[rows]
    similarity = candidates @ candidates.T
    chosen = [int(np.argmax(scores))]
    closest = similarity[chosen[0]].copy()
    available = np.ones(len(rows), dtype=bool)
    available[chosen[0]] = False
    while len(chosen) < min(k, len(rows)):
        value = np.where(available, (1 - diversity) * scores - diversity * closest, -np.inf)
        pick = int(np.argmax(value))
        chosen.append(pick)
        available[pick] = False
        np.maximum(closest, similarity[pick], out=closest)
    return rows[chosen], scores[chosen]


def _load_module(path: Path, build) -> torch.nn.Module:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except FileNotFoundError:
        raise ArtifactError(f"{path}: missing from the artifact.") from None
    except Exception as error:  # torch raises several types for a corrupted file
        raise ArtifactError(f"{path}: cannot be read as weights ({error}).") from None
    if not isinstance(state, Mapping):
        raise ArtifactError(f"{path}: holds a {type(state).__name__}, not a state dict of weights; rebuild the "
                            "artifact.")
    try:
        module = build(state)
        module.load_state_dict(state, assign=True)
    except (RuntimeError, ValueError, TypeError, KeyError, AttributeError) as error:
        raise ArtifactError(f"{path}: weights do not match the manifest's model arguments ({error}).") from None
    return module.eval()


def _read_index(path: Path) -> tuple[faiss.Index, bool]:
    """The index, and whether it is memory-mapped.

    Mapped where FAISS can (Linux, Windows, FreeBSD), like ``item_vectors.npy``: no copy
    into fresh memory at load (a fresh process loaded 1M titles in 1.39–1.61 s mapped and
    2.09–2.40 s read, docs/benchmarks.md), and processes serving one artifact share the
    pages. Elsewhere FAISS refuses to map and the file is read.
    """
    if not path.is_file():
        raise ArtifactError(f"{path}: missing from the artifact.")
    try:
        index = faiss.read_index(str(path), faiss.IO_FLAG_MMAP_IFC)
    except RuntimeError:
        pass
    else:
        _fault_in(index)
        return index, True
    try:
        return faiss.read_index(str(path)), False
    except RuntimeError as error:
        raise ArtifactError(f"{path}: not a readable FAISS index ({str(error).splitlines()[0]}).") from None


def _fault_in(index: faiss.Index) -> None:
    """Touch one byte per page of a mapped IVF index's lists (~40–80 ms at 1M titles).

    Even with the file in the page cache (as after the checksums), each page of the mapping
    faults on first use: without this, the first 400 searches after a load took
    0.08–0.10 ms p50 at 1M titles against 0.05 ms once touched.
    Flat and HNSW indexes are left as they are (``auto`` uses Flat only up to 50,000).
    """
    ivf = faiss.try_extract_index_ivf(index)
    if ivf is None:
        return
    lists = faiss.downcast_InvertedLists(ivf.invlists)
    if not isinstance(lists, faiss.ArrayInvertedLists):
        return
    for number in range(ivf.nlist):
        size = lists.list_size(number)
        if size:
            faiss.rev_swig_ptr(lists.get_codes(number), size * lists.code_size)[::PAGE_BYTES].max()
            faiss.rev_swig_ptr(lists.get_ids(number), size)[::PAGE_BYTES // 8].max()


def _writable_copy(catalogue: _Catalogue) -> faiss.Index:
    """A copy of the catalogue's index that can be added to and removed from.

    ``faiss.clone_index`` of a memory-mapped index shares the mapped codes, and adding to
    or removing from it kills the process (a FAISS assertion or a segfault, not an
    exception), so a mapped index is copied through a serialised round trip (1.35–1.49 s
    and ~0.85 GB transient at 1M titles, against 0.15 s for a clone); once changed, the
    index lives in memory and later changes clone it.
    """
    if catalogue.mapped:
        return faiss.deserialize_index(faiss.serialize_index(catalogue.index))
    return faiss.clone_index(catalogue.index)


def _read_npy(path: Path) -> np.ndarray:
    try:
        # Memory-mapped and read-only: pages load on first use; snapshots never write to it.
        return np.load(path, allow_pickle=False, mmap_mode="r")
    except FileNotFoundError:
        raise ArtifactError(f"{path}: missing from the artifact.") from None
    except (ValueError, EOFError, OSError) as error:  # a bad header, an empty or truncated file
        raise ArtifactError(f"{path}: not a readable array ({error or type(error).__name__}).") from None


def _read_parquet(path: Path):
    try:
        return pq.read_table(path)
    except FileNotFoundError:
        raise ArtifactError(f"{path}: missing from the artifact.") from None
    except Exception as error:  # pyarrow's ArrowInvalid and friends
        raise ArtifactError(f"{path}: not a readable parquet file ({error}).") from None
