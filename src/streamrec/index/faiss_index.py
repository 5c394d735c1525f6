"""FAISS indexes over item vectors: choose, build, tune and measure.

The metric is always inner product, the score the two-tower model is trained with
(vectors are L2-normalised by the model when it is configured so, making it cosine).
Row ``i`` of the item vectors is FAISS id ``i``; every index takes explicit ids so titles
added later get the next rows.

Search parameters (``nprobe`` for IVF, ``efSearch`` for HNSW) are tuned against exact
search on held-out queries: the smallest value that reaches the target recall@K wins.
"""

from __future__ import annotations

import math
import re
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import faiss
import numpy as np
from tqdm.auto import tqdm

METRIC = faiss.METRIC_INNER_PRODUCT
FLAT_MAX_ITEMS = 50_000  # below this an exact scan of a query costs < ~0.5 ms on one core
IVF_TRAIN_POINTS_PER_LIST = 40  # FAISS warns below 39 training points per centroid
IVF_TRAIN_ITERATIONS = 10  # k-means iterations; recall is insensitive beyond ~10 at this size
LATENCY_ROUNDS = 3  # timing rounds over the swept search-parameter values
_CANDIDATES = {
    "nprobe": [1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024],
    "efSearch": [16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024],
}


def auto_factory(n_items: int) -> str:
    """An index by catalogue size, after the FAISS wiki ("Guidelines to choose an index").

    Exact ``Flat`` up to FLAT_MAX_ITEMS; ``IVF{K},Flat`` with K ~ 4·sqrt(N) (a power of
    two) up to 10M vectors; ``IVF65536_HNSW32,Flat`` above.

    The wiki advises IVF with 4·sqrt(N) to 16·sqrt(N) lists below 1M vectors, but
    IVF65536_HNSW32 from 1M to 10M and IVF262144_HNSW32 from 10M to 100M. Those lists want
    30 to 256 training vectors each (2M to 17M for 65,536 lists), more than a catalogue of
    1M to 2M titles holds. One k-means iteration of 65,536 centroids over 1M vectors took
    188 s on 2 cores, against the 60 s build bar. So up to 10M the lists stay at 4·sqrt(N)
    (4,096 at 1M, built in 10-32 s, meeting the latency bars). Above 10M, 65,536 lists are
    fewer than the wiki advises; that choice has not been measured here.
    """
    if n_items < 1:
        raise ValueError(f"n_items={n_items}: an index needs at least one vector.")
    if n_items <= FLAT_MAX_ITEMS:
        return "Flat"
    if n_items <= 10_000_000:
        lists = 2 ** round(math.log2(4 * math.sqrt(n_items)))
        return f"IVF{lists},Flat"
    return "IVF65536_HNSW32,Flat"


def search_parameter(index: faiss.Index) -> str | None:
    """Name of the speed/recall knob of ``index``: ``nprobe``, ``efSearch`` or None (exact)."""
    inner = _unwrap(index)
    if faiss.try_extract_index_ivf(inner) is not None:
        return "nprobe"
    if isinstance(inner, faiss.IndexHNSW):
        return "efSearch"
    return None


def scores_exactly(index: faiss.Index) -> bool:
    """Whether ``index`` scores by exact inner products of the vectors added (flat codes, no
    pre-transform), not from compressed codes (PQ, SQ) or transformed vectors."""
    index = _unwrap(index, _ID_MAPS)  # a pre-transform (PCA, rotation) scores transformed vectors
    if isinstance(index, faiss.IndexHNSW):
        index = faiss.downcast_index(index.storage)
    if isinstance(index, faiss.IndexIVF):
        return isinstance(index, faiss.IndexIVFFlat)
    return isinstance(index, faiss.IndexFlat)


def set_search_parameter(index: faiss.Index, value: int | None) -> None:
    name = search_parameter(index)
    if name is not None and value is not None:
        faiss.ParameterSpace().set_index_parameter(index, name, int(value))


def build_index(vectors: np.ndarray, factory: str = "auto", seed: int = 0, progress: bool = True,
                chunk: int = 65536) -> faiss.Index:
    """An inner-product index over ``vectors`` [N, d] float32, ids ``0..N-1``.

    Trained indexes (IVF, PQ) use a random sample of 40 vectors per centroid of their
    largest k-means: ``40 x lists``, or ``40 x 256`` for 8-bit product-quantizer codes.
    """
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    n, d = vectors.shape
    factory = auto_factory(n) if factory == "auto" else factory
    for m in re.findall(r"HNSW(\d+)", factory):
        if int(m) < 2:  # FAISS aborts the process (an assertion, not an exception) on HNSW0 / HNSW1
            raise ValueError(f"index factory string {factory!r}: HNSW needs at least 2 links per node, "
                             f"got {m}; e.g. 'HNSW32'.")
    try:
        index = faiss.index_factory(d, factory, METRIC)
    except RuntimeError as error:
        raise ValueError(f"index factory string {factory!r} is not valid for FAISS: {error}. "
                         "Examples: 'Flat', 'IVF1024,Flat', 'HNSW32', 'IVF4096,PQ32'.") from error
    if isinstance(_unwrap(index), faiss.IndexRefine):
        # Adding with ids, removing and the skip-removed search do not pass through a refine stage.
        raise ValueError(f"index factory string {factory!r}: refinement (RFlat, Refine(...)) is not supported; "
                         "raise the search parameter instead (e.g. 'IVF4096,Flat', 'HNSW32', 'IVF4096,PQ32').")
    ivf = faiss.try_extract_index_ivf(index)
    if ivf is not None and ivf.nlist < 1:
        raise ValueError(f"index factory string {factory!r}: an IVF index needs at least 1 list; e.g. 'IVF1024,Flat'.")
    if ivf is None:
        index = faiss.IndexIDMap2(index)  # Flat / HNSW store rows in order: map them to our ids
    if not index.is_trained:
        # k-means wants ~40 points per centroid: per list for the coarse quantizer, per code
        # (256 for 8 bits) for each PQ sub-quantizer; the larger need decides.
        centroids = ivf.nlist if ivf is not None else 256
        inner = faiss.downcast_index(ivf if ivf is not None else index.index)
        if hasattr(inner, "pq"):
            centroids = max(centroids, inner.pq.ksub)
        points = min(n, IVF_TRAIN_POINTS_PER_LIST * centroids)
        if ivf is not None:
            if n < ivf.nlist:
                raise ValueError(f"{factory!r} needs at least {ivf.nlist} vectors to train, got {n}; "
                                 "use fewer lists or factory='auto'.")
            ivf.cp.niter = IVF_TRAIN_ITERATIONS
            ivf.cp.seed = seed
        sample = np.random.default_rng(seed).choice(n, size=points, replace=False) if points < n else slice(None)
        index.train(vectors[sample])
    with tqdm(total=n, desc=f"indexing ({factory})", unit="items", disable=not progress) as bar:
        for start in range(0, n, chunk):
            stop = min(start + chunk, n)
            index.add_with_ids(vectors[start:stop], np.arange(start, stop, dtype=np.int64))
            bar.update(stop - start)
    return index


def exact_search(vectors: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    """Ids [Q, k] of the exact inner-product top-k."""
    flat = faiss.IndexFlatIP(vectors.shape[1])
    flat.add(np.ascontiguousarray(vectors, dtype=np.float32))
    return flat.search(np.ascontiguousarray(queries, dtype=np.float32), k)[1]


TIE_TOLERANCE = 1e-5  # relative: scores this close to the k-th exact one count as tied with it


def recall(found: np.ndarray, truth: np.ndarray, vectors: np.ndarray, queries: np.ndarray) -> float:
    """Recall@k of the ids ``found`` [Q, k'] against the exact top-k ids ``truth`` [Q, k]
    (-1 = none) of ``queries`` [Q, d] over ``vectors`` [n, d].

    Titles tied with the k-th exact score (the same vector: content-only titles with the
    same content, say) are interchangeable, and exact search returns an arbitrary few of
    them: counting shared ids scored a full IVF scan 0.973 on a catalogue of titles three
    times over. So per query, the distinct found ids scoring above the k-th exact score
    are hits, and those tied with it (relative tolerance TIE_TOLERANCE) count up to as
    many as the exact list holds tied; a tied copy never stands in for a missed title
    that scores higher.
    """
    hits = valid = 0
    for f, t, q in zip(found, truth, queries):
        t = t[t >= 0]
        if not len(t):
            continue
        f = np.unique(f[f >= 0])
        ids = np.union1d(t, f)  # each title scored once: two products could round one apart
        score = vectors[ids] @ q
        exact, scores = score[np.searchsorted(ids, t)], score[np.searchsorted(ids, f)]
        kth = float(exact.min())
        tolerance = TIE_TOLERANCE * max(abs(kth), 1e-12)
        above = int(np.count_nonzero(scores > kth + tolerance))
        tied = min(int(np.count_nonzero(np.abs(scores - kth) <= tolerance)),
                   int(np.count_nonzero(exact <= kth + tolerance)))
        hits += min(above + tied, len(t))
        valid += len(t)
    return hits / max(valid, 1)


def _without(ids: np.ndarray, exclude: list[np.ndarray] | None, k: int) -> np.ndarray:
    """First ``k`` ids of each row not in that row's exclusions, padded with -1."""
    if exclude is None:
        return ids[:, :k]
    out = np.full((len(ids), k), -1, dtype=np.int64)
    for i, (row, excluded) in enumerate(zip(ids, exclude)):
        kept = row[(row >= 0) & ~np.isin(row, excluded)][:k]
        out[i, : len(kept)] = kept
    return out


@dataclass
class SweepPoint:
    value: int | None  # the search parameter (None for an exact index)
    recall: float  # recall@k against exact search (after the same exclusions)
    p50_ms: float  # one query at a time, one thread
    p99_ms: float


def _recall_at(index: faiss.Index, vectors: np.ndarray, queries: np.ndarray, truth: np.ndarray,
               value: int | None, exclude: list[np.ndarray] | None) -> float:
    """Recall@k of ``index`` at search parameter ``value`` against ``truth`` [Q, k].

    With ``exclude`` (per query, e.g. the member's watched titles), the search asks for
    k + len(exclusions) ids and drops the excluded ones, exactly as serving does.
    """
    set_search_parameter(index, value)
    k = truth.shape[1]
    extra = max((len(e) for e in exclude), default=0) if exclude is not None else 0
    return recall(_without(index.search(queries, k + extra)[1], exclude, k), truth, vectors, queries)


def _latencies(index: faiss.Index, queries: np.ndarray, k: int, exclude: list[np.ndarray] | None,
               values: list[int | None], timed_queries: int = 200,
               rounds: int = LATENCY_ROUNDS) -> dict[int | None, tuple[float, float]]:
    """p50 and p99 ms of one query at a time on one thread, for each search parameter value.

    The values take turns over ``rounds`` rounds, so a transient slowdown (the cores
    still busy after building the index, say) spreads over all of them instead of bending
    the curve at whichever values it hit.
    """
    extra = [len(e) for e in exclude] if exclude is not None else [0] * len(queries)
    times: dict[int | None, list[float]] = {value: [] for value in values}
    previous = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    try:
        for _ in range(rounds):
            for value in values:
                set_search_parameter(index, value)
                for q, e in zip(queries[:timed_queries], extra):
                    start = time.perf_counter()
                    index.search(q[None], k + e)
                    times[value].append(time.perf_counter() - start)
    finally:
        faiss.omp_set_num_threads(previous)
    return {value: tuple(float(ms) for ms in np.percentile(np.array(t) * 1e3, [50, 99])) for value, t in times.items()}


def tune(index: faiss.Index, vectors: np.ndarray, queries: np.ndarray, k: int = 10,
         target_recall: float = 0.95,
         exclude: list[np.ndarray] | None = None) -> tuple[int | None, float, list[SweepPoint]]:
    """Smallest search parameter reaching ``target_recall`` @k on ``queries`` [Q, d].

    ``exclude``: per query, ids removed from both the exact and the approximate lists
    (the member's watched titles): the titles served are deeper in the ranking than the
    plain top-k, so tuning without them can overstate recall.

    Returns (value, its recall, the whole sweep). Exact indexes return (None, 1.0, [point]).
    The sweep continues a few values past the target so the recall-latency curve shows the
    trade-off; if no value reaches the target, the best one is returned. Latencies are
    timed after the sweep, the values taking turns (see ``_latencies``).
    """
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    vectors = np.asarray(vectors, dtype=np.float32)
    if exclude is not None and len(exclude) != len(queries):
        raise ValueError(f"exclude has {len(exclude)} entries for {len(queries)} queries.")
    depth = k + max((len(e) for e in exclude), default=0) if exclude is not None else k
    truth = _without(exact_search(vectors, queries, min(depth, len(vectors))), exclude, k)
    name = search_parameter(index)
    recalls: dict[int | None, float] = {}
    if name is None:
        recalls[None] = _recall_at(index, vectors, queries, truth, None, exclude)
    else:
        ivf = faiss.try_extract_index_ivf(_unwrap(index))
        past_target = 0
        for value in [v for v in _CANDIDATES[name] if ivf is None or v <= ivf.nlist]:
            recalls[value] = _recall_at(index, vectors, queries, truth, value, exclude)
            if past_target or recalls[value] >= target_recall:
                past_target += 1
                if past_target > 3 or recalls[value] >= 0.9999:
                    break
    timing = _latencies(index, queries, k, exclude, list(recalls))
    sweep = [SweepPoint(value, r, *timing[value]) for value, r in recalls.items()]
    reached = [p for p in sweep if p.recall >= target_recall]
    chosen = reached[0] if reached else max(sweep, key=lambda p: p.recall)
    set_search_parameter(index, chosen.value)
    return chosen.value, chosen.recall, sweep


def plot_sweep(sweep: list[SweepPoint], parameter: str | None, chosen: int | None, path: str | Path,
               title: str = "", target_recall: float | None = None) -> None:
    """Recall@k against single-query latency, one point per search-parameter value."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot([p.p50_ms for p in sweep], [p.recall for p in sweep], marker="o")
    for i, p in enumerate(sweep):
        label = f"{parameter}={p.value}" if parameter else "exact"
        # Alternately below and above the point, so neighbours near the top do not overlap.
        ax.annotate(label, (p.p50_ms, p.recall), textcoords="offset points", xytext=(4, -10 if i % 2 == 0 else 5),
                    fontsize=7,
                    fontweight="bold" if p.value == chosen else "normal")
    if target_recall is not None:
        ax.axhline(target_recall, color="grey", linestyle="--", linewidth=1, label=f"target {target_recall:g}")
        ax.legend(loc="lower right", fontsize=8)
    ax.set_xscale("log")
    ax.margins(x=0.1)  # room for the last point's label
    ax.set_xlabel("p50 latency per query (ms, 1 thread)")
    ax.set_ylabel("recall@k vs exact search")
    ax.set_title(title or "recall vs latency")
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def sweep_records(sweep: list[SweepPoint]) -> list[dict]:
    return [asdict(p) for p in sweep]


_ID_MAPS = (faiss.IndexIDMap, faiss.IndexIDMap2)


def _unwrap(index: faiss.Index, wrappers: tuple[type, ...] = (*_ID_MAPS, faiss.IndexPreTransform)) -> faiss.Index:
    """The index under ``wrappers``: by default id maps and pre-transforms (``RR64,HNSW32``,
    ``PCA32,IVF1024,Flat``)."""
    index = faiss.downcast_index(index)
    while isinstance(index, wrappers):
        index = faiss.downcast_index(index.index)
    return index
