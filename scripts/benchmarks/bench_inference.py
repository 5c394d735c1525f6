"""Benchmark serving: artifact build and load, recommend() latency, recommend_batch() throughput.

Synthetic catalogue with the default model's shape (d=64, hidden 128, history 50, 20
genres): an untrained two-tower whose item and history id embeddings are drawn from a
Gaussian mixture of 1,000 clusters (so vectors are clustered like a trained model's, not
uniform on the sphere, the worst case for any ANN index). Each member's 50-title history
comes from 2 clusters; the untrained watch-fraction and recency terms are scaled to ~5% of
the history signal (a trained model learns them as modulations). The index is built and
tuned by the same `export_artifact` that `scripts/build_index.py` uses (factory `auto`,
target recall@10 0.95 on 1,000 held-out members with their watched titles excluded);
recall@10 is then measured on other members against exact search with the same exclusion.

Columns:
- tower: the served query tower alone for one member (numpy, inputs prepared); torch tower:
  the same forward in eager torch, for comparison;
- faiss: raw `index.search` of that member's query vector for k + 50 (what recommend asks,
  to survive excluding the 50 seen titles), one thread;
- recommend p50/p99: the whole call (validation, id mapping, tower, search, exclusion,
  metadata);
- overhead (all but tower and faiss): (recommend − tower − faiss) / faiss at p50: request
  validation, id mapping, tower input preparation, exclusion and results, plus what the
  tower and FAISS cost each other when they run back to back (each timed alone runs on its
  own warm caches);
- tower then faiss: the same tower and raw search run back to back on prepared inputs, the
  least a service could do for the same answer; overhead over it: (recommend − that) /
  faiss, the module's own work without that interference;
- search stage: the module's wrapper around FAISS alone (search + seen-title exclusion +
  result objects, from the query vector), and its overhead over the raw search.
- similar_items: the public call whose query is a catalogue vector (no tower), against a
  raw ``index.search`` of that title's vector for k + 1 (the title itself is dropped).

- load s: ``Recommender.load`` in the benchmark process right after the export; fresh
  process: in a new interpreter after its module imports (the artifact's files are in the
  page cache: a service restarting on the same host).
- python floor: a function that only looks up the 50 history ids (one numpy gather, as the
  recommender does) and returns 10 (row, score) pairs: the least any Python call serving a
  history does besides the tower and FAISS.
- bare call: the least whole serving call for these requests, run in the same way as
  recommend: the recommender's id lookup and numpy tower, one FAISS search into reused
  outputs, the 50 watched titles excluded by flags, 10 raw ids and scores as lists; no
  argument checks, repeated or unknown ids, filters or result objects. Its overhead (all
  but tower and faiss) is about the least a correct Python call can read on that reading
  (FAISS and the tower costing each other cache included); recommend over bare call is
  what the module's checks and features add.

Each stage is timed over all members 3 times (p50 of all calls), the stages interleaved in
blocks of 50 members (see ``timed_blocks``): every stage is sampled evenly over the whole
run, so this VM's slow swings in speed hit all stages alike, and no stage runs on caches
another has just warmed with the same members. Overheads are differences of those p50s.

    python scripts/benchmarks/bench_inference.py                      # 100,000 and 1,000,000 titles
    python scripts/benchmarks/bench_inference.py --sizes 100000 --members 500
    python scripts/benchmarks/bench_inference.py --towers          # query tower: numpy vs torch by batch
    python scripts/benchmarks/bench_inference.py --lookups         # a history's id lookups: dict vs table
    python scripts/benchmarks/bench_inference.py --against HEAD~1 --sizes 100000  # A/B against a revision
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import types
from pathlib import Path

import faiss
import numpy as np
import pandas as pd
import torch

from streamrec.cli import markdown_table
from streamrec.inference import Recommender, export_artifact
from streamrec.inference.row_lookup import RowLookup
from streamrec.models.two_tower import TwoTower, TwoTowerConfig

CLUSTERS, HISTORY, GENRES = 1000, 50, 20
NOISE, ID_SCALE = 1.0, 1.0  # within-cluster spread; id embeddings dominate content, as after training
ROUNDS = 3  # timed calls per stage and member
BLOCK = 50  # members a stage runs back to back (see timed_blocks)
REPO = Path(__file__).resolve().parents[2]


def synthetic_model(n_items: int, seed: int) -> tuple[TwoTower, np.ndarray]:
    """Model plus each title's cluster [n_items]."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    config = TwoTowerConfig(n_items=n_items, n_genres=GENRES, text_buckets=0, dim=64, hidden=128,
                            max_history=HISTORY, dropout=0.0)
    cluster = rng.integers(0, CLUSTERS, n_items)
    centres = rng.normal(size=(CLUSTERS, 64)).astype(np.float32)
    ids = centres[cluster] + NOISE * rng.normal(size=(n_items, 64)).astype(np.float32)
    genres = torch.zeros(n_items, GENRES)
    genres[torch.arange(n_items), torch.from_numpy(rng.integers(0, GENRES, n_items))] = 1.0
    model = TwoTower(config, genres=genres, year=torch.zeros(n_items), year_known=torch.zeros(n_items),
                     tokens=torch.zeros(n_items, config.max_tokens), has_id=torch.ones(n_items, dtype=torch.bool))
    with torch.no_grad():
        model.item_tower.id_embedding.weight.copy_(torch.from_numpy(ids) * ID_SCALE)
        model.query_tower.history_embedding.weight[1:].copy_(torch.from_numpy(ids) * ID_SCALE)
        # Untrained watch-fraction and recency terms are random offsets as large as the
        # history itself, shared by every query; a trained model learns them as small
        # modulations. Scale them down so queries are driven by the history.
        for parameter in (*model.query_tower.watch_proj.parameters(), model.query_tower.recency_embedding.weight):
            parameter.mul_(0.05)
    return model.eval(), cluster


def histories(cluster: np.ndarray, n: int, seed: int) -> list[np.ndarray]:
    """``n`` histories of HISTORY item rows, each from 2 clusters."""
    rng = np.random.default_rng(seed)
    members = np.argsort(cluster, kind="stable")
    starts = np.searchsorted(cluster[members], np.arange(CLUSTERS + 1))
    out = []
    for _ in range(n):
        picks = []
        for c in rng.choice(CLUSTERS, 2, replace=False):
            pool = members[starts[c]:starts[c + 1]]
            picks.append(rng.choice(pool, HISTORY // 2, replace=len(pool) < HISTORY // 2))
        out.append(np.unique(np.concatenate(picks)))
    return out


def load_in_fresh_process(path: Path) -> float:
    """Seconds of ``Recommender.load`` in a new interpreter, its module imports not counted
    (the files are in the page cache: a service restarting on the same host)."""
    code = ("import sys, time\nfrom streamrec.inference import Recommender\n"
            "start = time.perf_counter()\nRecommender.load(sys.argv[1])\nprint(time.perf_counter() - start)")
    done = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, check=True)
    return float(done.stdout.split()[-1])


def _python_floor(history: list[int], lookup) -> list[tuple[int, float]]:
    """The least a Python serving call does besides the tower and FAISS: look up the
    history's rows (one numpy gather, as the recommender does) and hand back k = 10
    (row, score) pairs."""
    found = lookup.rows(history).tolist()
    return [(row, 0.0) for row in found[:10]]


def timed_blocks(ways: dict, inputs: list) -> dict[str, list[float]]:
    """Seconds of each call ``ways[name](x)``, ROUNDS times for every x in ``inputs``.

    The inputs are cut into blocks of BLOCK. In each time slot every way runs one block, each
    way a different one while there are at least as many blocks as ways (way j: block
    slot + j * stride, stride = blocks / ways), in an order rotated from slot to slot. So
    every way is sampled evenly over the whole run: this VM's speed swings by up to 1.5x over
    seconds, and when each way ran as one pass of its own, the same code measured -9% to
    +65% over raw FAISS from run to run. And no way runs on caches another has just warmed
    with the same inputs: a block's previous visit, by any way, was about one whole pass over
    the inputs before (when the stages were timed one after another per member, the search
    stage measured faster than the raw search it wraps).
    """
    names = list(ways)
    blocks = [inputs[start:start + BLOCK] for start in range(0, len(inputs), BLOCK)]
    stride = max(len(blocks) // len(names), 1)
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(ROUNDS):
        for slot in range(len(blocks)):
            turn = (slot + r) % len(names)
            for j in [*range(turn, len(names)), *range(turn)]:
                way, out = ways[names[j]], times[names[j]]
                for x in blocks[(slot + j * stride) % len(blocks)]:
                    start = time.perf_counter()
                    way(x)
                    out.append(time.perf_counter() - start)
    return times


def percentiles(times: list[float]) -> tuple[float, float]:
    ms = np.array(times) * 1e3
    return float(np.percentile(ms, 50)), float(np.percentile(ms, 99))


def export_synthetic(n_items: int, path: Path, seed: int = 0) -> tuple[dict, np.ndarray, np.ndarray, float]:
    """The synthetic catalogue's artifact at ``path``: (manifest, each title's cluster, raw
    item ids, export seconds)."""
    model, cluster = synthetic_model(n_items, seed)
    item_ids = np.arange(1, n_items + 1)  # raw ids differ from rows, as in real data
    items = pd.DataFrame({"item_id": item_ids, "title": [f"Title {i}" for i in item_ids],
                          "genres": [[f"g{g}"] for g in np.random.default_rng(seed).integers(0, GENRES, n_items)]})
    popularity = np.random.default_rng(seed).zipf(1.5, n_items).clip(max=10**6)
    tuning = histories(cluster, 1000, seed + 1)
    spec = {"item_map": {"kind": "int", "ids": []},
            "item_features": {"genre_vocab": [f"g{g}" for g in range(GENRES)], "year_mean": 0.0, "year_std": 1.0,
                              "text_buckets": 0, "max_tokens": model.config.max_tokens},
            "user_features": {"columns": [], "vocabularies": {}, "edges": {}}, "device_vocab": [],
            "history_mode": "set"}
    with torch.inference_mode():
        queries = model.query(tower_inputs(tuning)).numpy()  # exactly what recommend() feeds the tower
    start = time.perf_counter()
    manifest = export_artifact(path, model, spec, items, popularity, queries, progress=False, seed=seed,
                               exclude=tuning)
    return manifest, cluster, item_ids, time.perf_counter() - start


def bench(n_items: int, members: int, workdir: Path, plots: Path | None, seed: int = 0) -> dict:
    row: dict = {"titles": f"{n_items:,}"}
    path = workdir / f"artifact-{n_items}"
    manifest, cluster, item_ids, row["export s"] = export_synthetic(n_items, path, seed)
    info = manifest["index"]
    row["index"] = (f"{info['factory']} {info['search_parameter']}={info['search_value']}"
                    if info["search_parameter"] else f"{info['factory']} (exact)")
    row["index build s"] = info["build_seconds"]

    start = time.perf_counter()
    recommender = Recommender.load(path)
    row["load s"] = time.perf_counter() - start
    row["load s (fresh process)"] = load_in_fresh_process(path)

    test = histories(cluster, members, seed + 2)
    raw = [item_ids[h].tolist() for h in test]
    for h in raw[:50]:  # warm-up
        recommender.recommend(h, k=10)
    codes = [h + 1 for h in test]  # the served tower's input: each member's history codes (row + 1)
    vectors = np.concatenate([recommender._encode(c) for c in codes])
    index = recommender._catalogue.index
    faiss.omp_set_num_threads(1)
    batch = tower_inputs(test)
    tensors = [{key: value[i:i + 1] for key, value in batch.items()} for i in range(members)]
    catalogue_vectors = recommender._catalogue.vectors
    similar_rows = [int(t[0]) for t in test]  # one watched title per member, as "because you watched"
    similar_ids = item_ids[similar_rows].tolist()

    def tower_then_faiss(i):
        index.search(recommender._encode(codes[i]), 10 + len(raw[i]))

    def torch_tower(i):
        with torch.inference_mode():
            recommender.query_tower(**tensors[i])

    lookup, unseen = recommender._catalogue.history_rows, np.ones(n_items + 1, dtype=bool)
    bare_scores, bare_labels = np.empty(10 + HISTORY, dtype=np.float32), np.empty(10 + HISTORY, dtype=np.int64)
    bare_pointers = faiss.swig_ptr(bare_scores), faiss.swig_ptr(bare_labels)

    def bare_call(i):
        """The least whole call for this request: the bench's histories are 50 known plain
        ints, so nothing is checked or handled, and the answer is two lists."""
        history = raw[i]
        if set(map(type, history)) - {int}:
            raise TypeError("bare_call serves lists of ints")
        rows = lookup.rows(history, True)
        query = recommender._encode(rows + 1)
        index.search_c(1, faiss.swig_ptr(query), 10 + HISTORY, *bare_pointers, None)
        unseen[rows] = False
        picked = unseen[bare_labels].nonzero()[0][:10]
        unseen[rows] = True
        return item_ids[bare_labels[picked]].tolist(), bare_scores[picked].tolist()

    def search_stage(i):
        catalogue = recommender._catalogue
        rows, scores = recommender._search_one(catalogue, vectors[i:i + 1], 10, test[i], None, 0.0)
        recommender._result(catalogue, rows, scores, [], "model")

    stages = {
        "torch tower": torch_tower,
        "tower": lambda i: recommender._encode(codes[i]),
        "faiss": lambda i: index.search(vectors[i:i + 1], 10 + len(raw[i])),
        "tower then faiss": tower_then_faiss,
        "recommend": lambda i: recommender.recommend(raw[i], k=10),
        "search-stage": search_stage,
        "similar_items": lambda i: recommender.similar_items(similar_ids[i], k=10),
        "faiss (similar)": lambda i: index.search(catalogue_vectors[similar_rows[i]:similar_rows[i] + 1], 11),
        "python floor": lambda i: _python_floor(raw[i], recommender._catalogue.history_rows),
        "bare call": bare_call,
    }
    for i in range(100):  # the bare call answers what recommend() does
        ids, scores = bare_call(i)
        served = recommender.recommend(raw[i], k=10)
        if ids != served.item_ids or not np.allclose(scores, served.scores, rtol=1e-6):
            raise AssertionError(f"bare_call and recommend differ for member {i}")
    times = timed_blocks(stages, list(range(members)))
    found = [np.array(recommender.recommend(h, k=10).item_ids) - 1 for h in raw]
    hits = 0
    for i in range(min(members, 500)):
        scores = catalogue_vectors @ vectors[i]
        scores[test[i]] = -np.inf
        hits += len(np.intersect1d(np.argpartition(-scores, 10)[:10], found[i]))
    row["recall@10"] = hits / (10 * min(members, 500))
    for name in ("torch tower", "tower", "faiss"):
        row[f"{name} p50 ms"] = percentiles(times[name])[0]
    row["recommend p50 ms"], row["recommend p99 ms"] = percentiles(times["recommend"])
    row["overhead % (all but tower and faiss)"] = (
        100 * (row["recommend p50 ms"] - row["tower p50 ms"] - row["faiss p50 ms"]) / row["faiss p50 ms"])
    row["tower then faiss p50 ms"] = percentiles(times["tower then faiss"])[0]
    row["overhead % over tower then faiss"] = (
        100 * (row["recommend p50 ms"] - row["tower then faiss p50 ms"]) / row["faiss p50 ms"])
    row["search-stage p50 ms"] = percentiles(times["search-stage"])[0]
    row["search-stage overhead %"] = 100 * (row["search-stage p50 ms"] - row["faiss p50 ms"]) / row["faiss p50 ms"]
    row["similar_items p50 ms"] = percentiles(times["similar_items"])[0]
    row["faiss (similar) p50 ms"] = percentiles(times["faiss (similar)"])[0]
    row["similar_items overhead %"] = (100 * (row["similar_items p50 ms"] - row["faiss (similar) p50 ms"])
                                       / row["faiss (similar) p50 ms"])
    row["python floor p50 ms"] = percentiles(times["python floor"])[0]
    row["python floor % of faiss"] = 100 * row["python floor p50 ms"] / row["faiss p50 ms"]
    row["bare call p50 ms"] = percentiles(times["bare call"])[0]
    row["bare call overhead % (all but tower and faiss)"] = (
        100 * (row["bare call p50 ms"] - row["tower p50 ms"] - row["faiss p50 ms"]) / row["faiss p50 ms"])
    row["recommend over bare call, % of faiss"] = (
        100 * (row["recommend p50 ms"] - row["bare call p50 ms"]) / row["faiss p50 ms"])

    # FAISS 1.15 raised distance_compute_blas_threshold to 128,000 queries, so a batch of
    # 1,000 uses its SIMD loops, not BLAS, for the coarse quantizer: measure both.
    default_threshold = faiss.cvar.distance_compute_blas_threshold
    for threshold in (128_000, 20):
        faiss.cvar.distance_compute_blas_threshold = threshold
        recommender.recommend_batch(raw[:100], k=10)
        start = time.perf_counter()
        for s in range(0, len(raw), 1000):
            recommender.recommend_batch(raw[s:s + 1000], k=10)
        row[f"batch members/s (BLAS from {threshold:,} queries)"] = len(raw) / (time.perf_counter() - start)
    faiss.cvar.distance_compute_blas_threshold = default_threshold

    for threads in (2, 4):  # many callers: concurrent single recommend() calls
        chunks = [raw[t::threads] for t in range(threads)]
        workers = [threading.Thread(target=lambda c: [recommender.recommend(h, k=10) for h in c], args=(c,))
                   for c in chunks]
        start = time.perf_counter()
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        row[f"{threads} threads calls/s"] = len(raw) / (time.perf_counter() - start)
    row["peak RSS GB"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    if plots is not None:
        plots.mkdir(parents=True, exist_ok=True)
        shutil.copy(path / "recall_latency.png", plots / f"recall_latency_{n_items}.png")
    shutil.rmtree(path)
    return row


def against(rev: str, n_items: int, members: int, workdir: Path, seed: int = 0) -> pd.DataFrame:
    """In-process A/B: this tree's ``Recommender`` against the one in ``rev``'s
    ``recommender.py`` (the rest of the package as checked out), loaded side by side on the
    same artifact, with raw FAISS, their calls interleaved in blocks (``timed_blocks``).
    Its query tower and id lookup (``query_encoder.py``, ``row_lookup.py``) come from ``rev``
    too. Both must give the same ids, and scores equal to float32 rounding, for the first
    300 members, or this raises."""
    old = _module_at(rev, "recommender")
    for name in ("query_encoder", "row_lookup"):  # the names recommender.py imported from them
        helper = _module_at(rev, name)
        for attribute, value in list(old.__dict__.items()):
            if getattr(value, "__module__", None) == f"streamrec.inference.{name}" and hasattr(helper, attribute):
                setattr(old, attribute, getattr(helper, attribute))
    path = workdir / f"artifact-{n_items}"
    _, cluster, item_ids, _ = export_synthetic(n_items, path, seed)
    served = {"this tree": Recommender.load(path), rev: old.Recommender.load(path)}
    test = histories(cluster, members, seed + 2)
    raw = [item_ids[h].tolist() for h in test]
    titles = [int(item_ids[h[0]]) for h in test]
    for i in range(min(members, 300)):
        new_list, old_list = (r.recommend(raw[i], k=10) for r in served.values())
        new_similar, old_similar = (r.similar_items(titles[i], k=10) for r in served.values())
        if (new_list.item_ids, new_similar.item_ids) != (old_list.item_ids, old_similar.item_ids) or not (
                np.allclose(new_list.scores, old_list.scores, rtol=1e-5, atol=1e-6)
                and np.allclose(new_similar.scores, old_similar.scores, rtol=1e-5, atol=1e-6)):
            raise AssertionError(f"member {i}: {rev} and this tree give different lists")
    catalogue = served["this tree"]._catalogue
    vectors = np.concatenate([served["this tree"]._encode(h + 1) for h in test])
    faiss.omp_set_num_threads(1)
    ways = {"raw FAISS, k + 50": lambda i: catalogue.index.search(vectors[i:i + 1], 10 + len(raw[i])),
            "raw FAISS, k + 1": lambda i: catalogue.index.search(catalogue.vectors[test[i][0]:test[i][0] + 1], 11)}
    for name, recommender in served.items():
        ways[f"recommend ({name})"] = lambda i, r=recommender: r.recommend(raw[i], k=10)
        ways[f"similar_items ({name})"] = lambda i, r=recommender: r.similar_items(titles[i], k=10)
    p50 = {name: percentiles(t)[0] * 1e3 for name, t in timed_blocks(ways, list(range(members))).items()}
    shutil.rmtree(path)
    rows = []
    for call, raw_search in (("recommend", "raw FAISS, k + 50"), ("similar_items", "raw FAISS, k + 1")):
        new_us, old_us = p50[f"{call} (this tree)"], p50[f"{call} ({rev})"]
        row = {"call": call, "this tree µs": new_us, f"{rev} µs": old_us, "difference µs": new_us - old_us,
               "raw FAISS µs": p50[raw_search]}
        if call == "similar_items":  # recommend's includes the tower: its share over FAISS says little
            row["this tree over raw FAISS %"] = 100 * (new_us - p50[raw_search]) / p50[raw_search]
            row[f"{rev} over raw FAISS %"] = 100 * (old_us - p50[raw_search]) / p50[raw_search]
        rows.append(row)
    return pd.DataFrame(rows).set_index("call")


def _module_at(rev: str, name: str) -> types.ModuleType:
    """``streamrec/inference/<name>.py`` as it was in ``rev``, as a module of its own (its
    imports resolve to the package as checked out)."""
    source = subprocess.run(["git", "show", f"{rev}:src/streamrec/inference/{name}.py"], cwd=REPO,
                            capture_output=True, text=True, check=True).stdout
    module = types.ModuleType(f"{name}_at_rev")
    sys.modules[module.__name__] = module  # dataclasses look their module up
    exec(compile(source, f"{rev}:{name}.py", "exec"), module.__dict__)
    return module


def tower_batches(n_items: int = 100_000, sizes=(1, 8, 32, 64, 128, 256, 512, 1000)) -> pd.DataFrame:
    """The query tower alone by batch size (best of 3 repeats): the numpy tower one member at
    a time, as ``recommend_batch`` runs it up to NUMPY_TOWER_MAX_BATCH members, against one
    pass of eager torch."""
    from streamrec.inference.query_encoder import NumpyQueryTower
    from streamrec.models.two_tower import QueryTower

    torch.manual_seed(0)
    tower = QueryTower(TwoTowerConfig(n_items=n_items, dim=64, hidden=128, max_history=HISTORY)).eval()
    encode = NumpyQueryTower(tower)
    rng = np.random.default_rng(0)
    rows = []
    for b in sizes:
        history = rng.integers(1, n_items + 1, (b, HISTORY))
        tensors = [torch.from_numpy(history), torch.ones(b, HISTORY), torch.zeros(b, HISTORY)]
        repeats = max(5, 2000 // b)
        best = {"numpy": np.inf, "torch": np.inf}
        for _ in range(3):
            start = time.perf_counter()
            for _ in range(repeats):
                np.concatenate([encode(h) for h in history])
            best["numpy"] = min(best["numpy"], (time.perf_counter() - start) / repeats)
            start = time.perf_counter()
            with torch.inference_mode():
                for _ in range(repeats):
                    tower(*tensors)
            best["torch"] = min(best["torch"], (time.perf_counter() - start) / repeats)
        rows.append({"members": b, "numpy one by one ms": best["numpy"] * 1e3, "torch ms": best["torch"] * 1e3,
                     "torch threads": torch.get_num_threads()})
    return pd.DataFrame(rows).set_index("members")


def lookup_costs(sizes=(100_000, 1_000_000), members: int = 2000, seed: int = 0) -> pd.DataFrame:
    """Looking up a 50-id history (p50 µs over ``members`` histories, 3 rounds): a dict, the
    same dict asked for one history again and again (cache-warm, for reference), the
    RowLookup table the recommender uses, and binary search on the sorted ids."""
    rng = np.random.default_rng(seed)
    rows = []
    for n in sizes:
        ids = np.arange(1, n + 1)  # raw ids differ from rows
        mapping = dict(zip(ids.tolist(), range(n)))
        table = RowLookup.of(ids, np.arange(n))
        order = np.argsort(ids)
        ordered = ids[order]
        histories = [rng.integers(1, n + 1, HISTORY).tolist() for _ in range(members)]

        def binary_search(history):
            found = np.asarray(history)
            at = ordered.searchsorted(found).clip(max=n - 1)
            return np.where(ordered[at] == found, order[at], -1)

        ways = {"dict": lambda h: list(map(mapping.get, h)),
                "dict, one history again": lambda h: list(map(mapping.get, histories[0])),
                "RowLookup table": table.rows,
                "sorted ids + searchsorted": binary_search}
        times = timed_blocks(ways, histories)
        rows.append({"titles": f"{n:,}", **{f"{name} µs": np.median(t) * 1e6 for name, t in times.items()}})
    return pd.DataFrame(rows).set_index("titles")


def tower_inputs(rows: list[np.ndarray]) -> dict[str, torch.Tensor]:
    """Query-tower inputs as ``recommend`` builds them (watch fraction 1, no timestamps)."""
    history = _padded(rows)
    return {"history": history, "history_watch": (history > 0).float(),
            "history_age_days": torch.zeros(len(rows), HISTORY)}


def _padded(rows: list[np.ndarray]) -> torch.Tensor:
    out = torch.zeros(len(rows), HISTORY, dtype=torch.long)
    for i, r in enumerate(rows):
        r = r[-HISTORY:]
        out[i, HISTORY - len(r):] = torch.from_numpy(r + 1)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--members", type=int, default=2000)
    parser.add_argument("--workdir", type=Path, default=None, help="where artifacts are built (default: a temp dir)")
    parser.add_argument("--plots", type=Path, default=None,
                        help="copy each artifact's recall_latency.png here (e.g. docs/)")
    parser.add_argument("--towers", action="store_true",
                        help="only time the query tower by batch size, numpy vs torch")
    parser.add_argument("--lookups", action="store_true",
                        help="only time a 50-id history's lookups: dict, RowLookup table, searchsorted")
    parser.add_argument("--against", metavar="REV", default=None,
                        help="only A/B recommend and similar_items against git revision REV's recommender.py")
    args = parser.parse_args()
    if args.towers:
        print(markdown_table(tower_batches(), floatfmt=".3f"))
        return
    if args.lookups:
        print(markdown_table(lookup_costs(args.sizes, args.members).T.rename_axis("titles"), floatfmt=".2f"))
        return
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="bench-inference-"))
    workdir.mkdir(parents=True, exist_ok=True)
    if args.against:
        for n in args.sizes:
            print(f"\n{n:,} titles, {args.members} members\n")
            print(markdown_table(against(args.against, n, args.members, workdir).T.rename_axis("p50"),
                                 floatfmt=".2f"))
        return
    rows = [bench(n, args.members, workdir, args.plots) for n in args.sizes]
    table = pd.DataFrame(rows).set_index("titles")
    print(f"\n{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
          f"faiss {faiss.__version__}, python {sys.version.split()[0]}; {args.members} members, k=10\n")
    print(markdown_table(table.T.rename_axis("titles"), floatfmt=".3f"))


if __name__ == "__main__":
    main()
