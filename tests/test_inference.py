"""The serving artifact and streamrec.inference: round trip, exactness, tampering, threads, bad input."""

from __future__ import annotations

import datetime
import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import faiss
import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
import torch

from streamrec.index import auto_factory, build_index, exact_search, recall, search_parameter, tune
from streamrec.index.faiss_index import scores_exactly
from streamrec.inference import ArtifactError, Recommender, UnknownItemsError, export_artifact, read_manifest
from streamrec.inference.artifact import write_artifact
from streamrec.models.two_tower import TwoTower, TwoTowerConfig, hour_code

N_ITEMS, GENRES = 400, ["Action", "Comedy", "Drama", "Romance"]


def tiny_catalogue(seed: int = 0, n_items: int = N_ITEMS):
    """An untrained two-tower over ``n_items`` (400) titles with content, member features, device and hour."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    genre_lists = [sorted(set(rng.choice(GENRES, size=rng.integers(1, 3)).tolist())) for _ in range(n_items)]
    items = pd.DataFrame({
        "item_id": np.arange(1000, 1000 + n_items),
        "title": [f"Title {i}" for i in range(n_items)],
        "genres": genre_lists,
        "year": rng.integers(1950, 2024, size=n_items).astype(float),
    })
    genres = torch.zeros(n_items, len(GENRES))
    for i, gs in enumerate(genre_lists):
        for g in gs:
            genres[i, GENRES.index(g)] = 1.0
    config = TwoTowerConfig(n_items=n_items, n_genres=len(GENRES), text_buckets=0, dim=16, hidden=32,
                            max_history=10, user_feature_cardinalities=[3], n_devices=2, use_hour=True)
    year = torch.from_numpy(((items["year"] - 1990) / 20).to_numpy(np.float32))
    model = TwoTower(config, genres=genres, year=year, year_known=torch.ones(n_items),
                     tokens=torch.zeros(n_items, config.max_tokens),
                     has_id=torch.ones(n_items, dtype=torch.bool)).eval()
    spec = {
        "item_map": {"kind": "int", "ids": items["item_id"].tolist()},
        "item_features": {"genre_vocab": GENRES, "year_mean": 1990.0, "year_std": 20.0, "text_buckets": 0,
                          "max_tokens": config.max_tokens},
        "user_features": {"columns": ["plan"], "vocabularies": {"plan": ["basic", "premium"]}, "edges": {}},
        "device_vocab": ["mobile", "tv"],
        "history_mode": "set",
    }
    popularity = rng.integers(0, 1000, size=n_items)
    return model, spec, items, popularity


def exported(path: Path, model: TwoTower, spec: dict, items: pd.DataFrame, popularity: np.ndarray,
             factory: str) -> Recommender:
    """``export_artifact`` of this catalogue at ``path`` (tuned on 20 item vectors), loaded."""
    export_artifact(path, model, spec, items, popularity, model.all_item_vectors().numpy()[:20], factory=factory,
                    progress=False)
    return Recommender.load(path)


@pytest.fixture(scope="module")
def artifact(tmp_path_factory):
    model, spec, items, popularity = tiny_catalogue()
    path = tmp_path_factory.mktemp("artifact") / "recommender"
    queries = model.all_item_vectors().numpy()[:50]
    manifest = export_artifact(path, model, spec, items, popularity, queries, factory="Flat", progress=False)
    return path, model, items, popularity, manifest


@pytest.fixture
def recommender(artifact):
    return Recommender.load(artifact[0])


def model_scores(model: TwoTower, rows: list[int], plan: int = 0, device: int = 0, hour: int = 0) -> torch.Tensor:
    """Brute-force scores of every title for one history of item rows (oldest first)."""
    length = model.config.max_history
    rows = rows[-length:]
    history = torch.zeros(1, length, dtype=torch.long)
    history[0, length - len(rows):] = torch.tensor(rows) + 1
    watch = (history > 0).float()
    batch = {"history": history, "history_watch": watch, "history_age_days": torch.zeros(1, length),
             "user_features": torch.tensor([[plan]]), "device": torch.tensor([device]), "hour": torch.tensor([hour])}
    with torch.no_grad():
        return (model.query(batch) @ model.all_item_vectors().T)[0]


# -- index ---------------------------------------------------------------------------------
@pytest.mark.parametrize("factory", ["Flat", "IVF8,Flat", "HNSW16"])
def test_index_top_k_equals_brute_force_inner_product(factory):
    rng = np.random.default_rng(1)
    vectors = rng.normal(size=(2000, 16)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    queries = rng.normal(size=(30, 16)).astype(np.float32)
    index = build_index(vectors, factory, progress=False)
    if search_parameter(index) == "nprobe":
        tune(index, vectors, queries, k=10, target_recall=1.0)  # nprobe = all lists -> exact
    elif search_parameter(index) == "efSearch":
        tune(index, vectors, queries, k=10, target_recall=1.0)
    scores, ids = index.search(queries, 10)
    truth = np.argsort(-(queries @ vectors.T), axis=1, kind="stable")[:, :10]
    np.testing.assert_array_equal(ids, truth)
    np.testing.assert_allclose(scores, np.take_along_axis(queries @ vectors.T, truth, axis=1), rtol=1e-5)


def test_tuning_picks_the_smallest_parameter_reaching_the_target():
    rng = np.random.default_rng(2)
    centres = rng.normal(size=(20, 16))
    vectors = (centres[rng.integers(0, 20, 5000)] + 0.3 * rng.normal(size=(5000, 16))).astype(np.float32)
    queries = vectors[:200] + 0.05 * rng.normal(size=(200, 16)).astype(np.float32)
    index = build_index(vectors, "IVF64,Flat", progress=False)
    value, measured, sweep = tune(index, vectors, queries, k=10, target_recall=0.9)
    assert measured >= 0.9
    before = [p for p in sweep if p.value < value]
    assert all(p.recall < 0.9 for p in before)
    assert index.nprobe == value
    assert [p.value for p in sweep] == sorted(p.value for p in sweep)


def test_auto_factory_follows_catalogue_size():
    assert auto_factory(1_000) == "Flat"
    assert auto_factory(100_000) == "IVF1024,Flat"
    assert auto_factory(1_000_000) == "IVF4096,Flat"
    with pytest.raises(ValueError):
        auto_factory(0)


@pytest.mark.parametrize("factory, n, trained_on", [
    ("IVF8,Flat", 5_000, 320),  # 40 per list
    ("IVF16,PQ4", 12_000, 10_240),  # 40 per code of the 8-bit sub-quantizers, not 40 x 16 lists
    ("PQ4x10", 45_000, 40_960),  # 1,024 codes
    ("PQ4", 5_000, 5_000),  # fewer vectors than wanted: all of them
])
def test_trained_indexes_sample_40_points_per_centroid(monkeypatch, factory, n, trained_on):
    import faiss

    class Sampled(Exception):
        pass

    def train(self, x):  # record the sample and stop: the k-means itself is FAISS's
        raise Sampled(len(x))

    for cls in (faiss.IndexIVFFlat, faiss.IndexIVFPQ, faiss.IndexIDMap2):
        monkeypatch.setattr(cls, "train", train)
    vectors = np.random.default_rng(3).normal(size=(n, 16)).astype(np.float32)
    with pytest.raises(Sampled) as sampled:
        build_index(vectors, factory, progress=False)
    assert sampled.value.args == (trained_on,)


def test_bad_factory_string_is_a_clear_error():
    with pytest.raises(ValueError, match="factory string"):
        build_index(np.zeros((10, 4), np.float32), "NotAnIndex", progress=False)
    with pytest.raises(ValueError, match="HNSW needs at least 2 links per node, got 0"):  # FAISS would abort
        build_index(np.zeros((10, 4), np.float32), "HNSW0", progress=False)
    with pytest.raises(ValueError, match="an IVF index needs at least 1 list"):
        build_index(np.zeros((10, 4), np.float32), "IVF0,Flat", progress=False)
    for refined in ("IVF2,Flat,RFlat", "HNSW16,Refine(Flat)"):  # FAISS: "add_with_ids not implemented"
        with pytest.raises(ValueError, match=r"refinement \(RFlat, Refine\(\.\.\.\)\) is not supported"):
            build_index(np.zeros((10, 4), np.float32), refined, progress=False)


@pytest.mark.parametrize("factory, exact", [
    ("Flat", True), ("IDMap,Flat", True), ("IVF4,Flat", True), ("HNSW8", True), ("IDMap2,HNSW8", True),
    ("IVF4,PQ4", False), ("SQ8", False), ("HNSW8_SQ8", False), ("PCA8,Flat", False), ("RR16,HNSW8", False),
])
def test_scores_exactly_tells_flat_codes_from_compressed_or_transformed(factory, exact):
    # Serving re-scores the candidates of the inexact ones on the item vectors.
    index = faiss.index_factory(16, factory, faiss.METRIC_INNER_PRODUCT)
    assert scores_exactly(index) is exact


def test_a_pre_transformed_hnsw_index_is_tuned_and_serves_changes(tmp_path):
    """``RR16,HNSW16`` (a rotation before HNSW) used to read as exact: efSearch stayed at
    FAISS's 16 however low its recall."""
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(3000, 16)).astype(np.float32)
    queries = rng.normal(size=(50, 16)).astype(np.float32)
    index = build_index(vectors, "RR16,HNSW8", progress=False)
    assert search_parameter(index) == "efSearch"
    value, measured, sweep = tune(index, vectors, queries, k=10, target_recall=0.98)
    assert value > 16 and measured >= 0.98 > sweep[0].recall  # efSearch 16 reads 0.866 here
    model, spec, items, popularity = tiny_catalogue()
    served = exported(tmp_path / "a", model, spec, items, popularity, "RR16,HNSW16")
    assert served.manifest["index"]["search_parameter"] == "efSearch"
    ids = items["item_id"].tolist()
    first = served.recommend(ids[:3], k=10).item_ids
    served.remove_items(first[:5])  # HNSW cannot delete: its searches skip them
    assert served.recommend(ids[:3], k=10).item_ids[:5] == first[5:10]


def test_an_unwritable_artifact_location_is_named(tmp_path):
    (tmp_path / "a-file").write_text("")
    with pytest.raises(OSError, match=r"a-file/artifact: cannot write an artifact in"):
        write_artifact(tmp_path / "a-file" / "artifact", lambda tmp: {})


# -- artifact round trip ------------------------------------------------------------------
def test_manifest_describes_the_model_index_and_files(artifact):
    path, model, _, _, manifest = artifact
    on_disk = json.loads((path / "manifest.json").read_text())
    assert on_disk == manifest
    assert manifest["format_version"] == 1
    assert manifest["score"] == {"metric": "inner_product", "normalized": True, "dim": 16}
    assert manifest["model"]["n_items"] == N_ITEMS
    assert manifest["index"]["factory"] == "Flat" and manifest["index"]["measured_recall"] == 1.0
    assert set(manifest["files"]) == {"query_tower.pt", "item_tower.pt", "item_vectors.npy", "index.faiss",
                                      "items.parquet", "recall_latency.png"}
    assert {"torch", "faiss", "streamrec"} <= set(manifest["versions"])
    # Weights load without unpickling code.
    state = torch.load(path / "query_tower.pt", weights_only=True)
    assert torch.equal(state["history_embedding.weight"], model.query_tower.history_embedding.weight)
    assert "id_embedding.weight" not in torch.load(path / "item_tower.pt", weights_only=True)
    np.testing.assert_allclose(np.load(path / "item_vectors.npy"), model.all_item_vectors().numpy(), atol=1e-6)


def test_recommend_equals_the_models_own_ranking(artifact, recommender):
    _, model, items, _, _ = artifact
    history_rows = [3, 17, 42, 99, 250]
    ids = items["item_id"].to_numpy()
    result = recommender.recommend(ids[history_rows].tolist(), k=10, member_features={"plan": "premium"},
                                   device="tv", now=3600 * 5 + 60)
    scores = model_scores(model, history_rows, plan=2, device=2, hour=6)
    scores[history_rows] = float("-inf")
    top = torch.topk(scores, 10).indices.numpy()
    assert result.item_ids == ids[top].tolist()
    np.testing.assert_allclose([r.score for r in result], scores[top].numpy(), rtol=1e-4, atol=1e-5)
    assert result.source == "model" and result.unknown_ids == ()
    first = result[0]
    assert first.title == items["title"].iloc[top[0]]
    assert first.metadata["genres"] == items["genres"].iloc[top[0]]
    assert isinstance(first.item_id, int)


def test_seen_titles_are_excluded_by_default_and_kept_on_request(recommender, artifact):
    items = artifact[2]
    history = items["item_id"].iloc[:8].tolist()
    assert not set(recommender.recommend(history, k=50).item_ids) & set(history)
    kept = recommender.recommend(history, k=N_ITEMS, exclude_seen=False)
    assert set(history) <= set(kept.item_ids)


@pytest.mark.parametrize("factory", ["IVF8,Flat", "HNSW16"])
def test_a_members_watched_titles_do_not_leak_into_the_next_members_list(tmp_path, factory):
    """Exclusion marks a member's watched rows in per-thread flags and unmarks them after:
    the next member (same thread), who watched nothing of it, may be recommended them."""
    model, spec, items, popularity = tiny_catalogue()
    recommender = exported(tmp_path / "a", model, spec, items, popularity, factory)
    ids = items["item_id"].tolist()
    member = ids[40:45]
    alone = recommender.recommend(member, k=10).item_ids
    for history in ([*alone, *ids[:20]], alone[:3], ids[100:150]):  # watched the first member's list
        recommender.recommend(history, k=10, filters={"genres": ["Comedy"]})
        recommender.recommend_batch([history, member], k=10, diversity=0.3)
        assert recommender.recommend(member, k=10).item_ids == alone
    flags = recommender._scratch(recommender._catalogue).unseen
    assert flags[:-1].all() and not flags[-1]  # the last entry stands for FAISS's -1


@pytest.mark.parametrize("reused_results", [4096, 100])
def test_one_query_results_do_not_share_the_threads_reused_search_buffers(recommender, artifact, monkeypatch,
                                                                         reused_results):
    """recommend and similar_items search into this thread's reused output buffers: a result
    read after later calls have overwritten them is unchanged, and a k past the buffers'
    size (64) grows them (up to REUSED_RESULTS; past it, fresh outputs serve the one call)
    to give what a batch search (fresh outputs) gives."""
    from streamrec.inference import recommender as module

    monkeypatch.setattr(module, "REUSED_RESULTS", reused_results)
    ids = artifact[2]["item_id"].tolist()
    first = recommender.recommend(ids[:5], k=5)  # its items are built only when read, below
    similar = recommender.similar_items(ids[30], k=7)
    big = recommender.recommend(ids[5:10], k=300)
    recommender.similar_items(ids[7], k=200)
    assert first == recommender.recommend(ids[:5], k=5) and similar == recommender.similar_items(ids[30], k=7)
    assert len(big) == 300 and big.item_ids == recommender.recommend_batch([ids[5:10]], k=300)[0].item_ids
    kept = len(recommender._scratch(recommender._catalogue).outputs(1)[0])
    assert kept == (305 if reused_results == 4096 else 64)  # 300 + the 5 watched titles asked of FAISS


def test_an_interrupted_growth_of_the_search_buffers_leaves_them_consistent(recommender, artifact, monkeypatch):
    """A signal handler's exception (or a MemoryError) while the thread's buffers grow must
    not leave SWIG pointers to freed arrays: the next call serves what it served before."""
    import faiss

    ids = artifact[2]["item_id"].tolist()
    expected = recommender.recommend(ids[:5], k=10)
    real = faiss.swig_ptr

    def interrupted(array):
        if array.dtype == np.int64 and array.size > 64:  # the grown labels buffer
            raise KeyboardInterrupt
        return real(array)

    monkeypatch.setattr(faiss, "swig_ptr", interrupted)
    with pytest.raises(KeyboardInterrupt):
        recommender.recommend(ids[5:10], k=200)
    monkeypatch.undo()
    assert recommender.recommend(ids[:5], k=10) == expected


def test_batch_equals_one_by_one(recommender, artifact):
    ids = artifact[2]["item_id"].tolist()
    histories = [ids[i:i + 5] for i in range(0, 100, 10)] + [[]]
    batch = recommender.recommend_batch(histories, k=7)
    assert [b.item_ids for b in batch] == [recommender.recommend(h, k=7).item_ids for h in histories]
    assert batch[-1].source == "popularity"


def test_a_batch_too_big_for_the_numpy_tower_equals_one_by_one(recommender, artifact):
    from streamrec.inference.recommender import NUMPY_TOWER_MAX_BATCH

    ids = artifact[2]["item_id"].tolist()
    rng = np.random.default_rng(0)
    histories = [rng.choice(ids, size=rng.integers(1, 15), replace=False).tolist()
                 for _ in range(NUMPY_TOWER_MAX_BATCH + 20)]
    times = [[1e9 + 3600 * j for j in range(len(h))] for h in histories]
    batch = recommender.recommend_batch(histories, k=5, timestamps=times, devices=["tv"] * len(histories))
    for history, when, result in zip(histories, times, batch):
        single = recommender.recommend(history, k=5, timestamps=when, device="tv")
        assert result.item_ids == single.item_ids
        np.testing.assert_allclose([r.score for r in result], [r.score for r in single], rtol=1e-5, atol=1e-6)


def test_a_members_batch_list_does_not_depend_on_the_other_members(tmp_path, monkeypatch):
    """HNSW's results, and whether a short result falls back to an exact scan, depend on how
    many results FAISS is asked for: one search sized by a batch's longest history changed
    the other members' filtered lists (every member here, before)."""
    from streamrec.inference import recommender as module
    from streamrec.index import set_search_parameter

    monkeypatch.setattr(module, "EXACT_SEARCH_MAX_ROWS", 0)  # filtered searches go through FAISS here too
    model, spec, items, popularity = tiny_catalogue(n_items=3000)  # enough for HNSW to miss titles
    served = exported(tmp_path / "a", model, spec, items, popularity, "HNSW4")
    set_search_parameter(served._catalogue.index, 16)
    ids = items["item_id"].tolist()
    heavy = ids[::10]  # 300 titles: asks FAISS for 310 or more results
    for filters in ({"genres": ["Romance"]}, None):
        for start in range(0, 60, 3):
            member = ids[start + 1:start + 4]
            alone = served.recommend(member, k=10, filters=filters)
            beside = served.recommend_batch([member, heavy], k=10, filters=filters)[0]
            assert beside.item_ids == alone.item_ids
            np.testing.assert_allclose(beside.scores, alone.scores, rtol=1e-6)


def test_a_compressed_index_serves_exact_scores_in_their_order(tmp_path):
    """IVF-PQ scores from its codes: a filter that every title passes (an exact scan) put the
    same titles in another order, with other scores."""
    model, spec, items, popularity = tiny_catalogue()
    served = exported(tmp_path / "a", model, spec, items, popularity, "IVF4,PQ4")
    ids = items["item_id"].tolist()
    vectors = model.all_item_vectors().numpy()
    every_genre = {"genres": GENRES}
    for history in (ids[:3], ids[50:60]):
        plain = served.recommend(history, k=10)
        assert plain.item_ids == served.recommend(history, k=10, filters=every_genre).item_ids
        assert plain.scores == sorted(plain.scores, reverse=True)
        query = served._queries([served._request(history, served._catalogue, None, None, None, None, None, False,
                                                 "history")])[0]
        np.testing.assert_allclose(plain.scores, vectors[[ids.index(i) for i in plain.item_ids]] @ query, rtol=1e-5)
        similar = served.similar_items(history[0], k=5)
        np.testing.assert_allclose(similar.scores, vectors[[ids.index(i) for i in similar.item_ids]]
                                   @ vectors[ids.index(history[0])], rtol=1e-5)


def test_views_from_the_distant_past_still_serve(recommender, artifact):
    ids = artifact[2]["item_id"].tolist()[:3]
    far = recommender.recommend(ids, k=5, timestamps=[0.0, 1.0, 2.0], now=1e44)  # ages overflow float32
    assert len(far) == 5 and far.source == "model"
    same_hour = 86400 * 10**7 + 3600 * (hour_code(1e44) - 1)  # also in the last recency bucket
    near = recommender.recommend(ids, k=5, timestamps=[0.0, 1.0, 2.0], now=float(same_hour))
    assert far.item_ids == near.item_ids


def test_timestamps_order_the_history_and_set_the_recency(recommender, artifact):
    ids = artifact[2]["item_id"].tolist()[:12]
    times = [1_000_000.0 + 86400 * i for i in range(12)]
    in_order = recommender.recommend(ids, k=10, timestamps=times)
    shuffled = list(reversed(range(12)))
    assert recommender.recommend([ids[i] for i in shuffled], k=10,
                                 timestamps=[times[i] for i in shuffled]).item_ids == in_order.item_ids


def test_similar_items_excludes_the_title_itself_and_follows_vectors(recommender, artifact):
    _, model, items, _, _ = artifact
    vectors = model.all_item_vectors()
    similar = recommender.similar_items(int(items["item_id"].iloc[5]), k=5)
    scores = vectors @ vectors[5]
    scores[5] = float("-inf")
    assert similar.item_ids == items["item_id"].to_numpy()[torch.topk(scores, 5).indices.numpy()].tolist()


def test_filters_keep_only_allowed_genres_and_match_brute_force(recommender, artifact):
    _, model, items, _, _ = artifact
    history_rows = [1, 2, 3]
    ids = items["item_id"].to_numpy()
    result = recommender.recommend(ids[history_rows].tolist(), k=10, filters={"genres": ["Romance"]})
    allowed = np.array(["Romance" in g for g in items["genres"]])
    scores = model_scores(model, history_rows)
    scores[~torch.from_numpy(allowed)] = float("-inf")
    scores[history_rows] = float("-inf")
    assert result.item_ids == ids[torch.topk(scores, 10).indices.numpy()].tolist()
    assert all("Romance" in r.metadata["genres"] for r in result)
    with pytest.raises(ValueError, match="unknown metadata column 'maturity'"):
        recommender.recommend(ids[:3].tolist(), filters={"maturity": ["PG"]})


def test_diversity_raises_intra_list_distance(recommender, artifact):
    _, model, items, _, _ = artifact
    vectors = model.all_item_vectors().numpy()
    rows = dict(zip(items["item_id"], range(N_ITEMS)))

    def spread(result) -> float:
        v = vectors[[rows[i] for i in result.item_ids]]
        return float(1 - (v @ v.T)[np.triu_indices(len(v), 1)].mean())

    history = items["item_id"].iloc[10:20].tolist()
    plain = recommender.recommend(history, k=10)
    assert recommender.recommend(history, k=10, diversity=0.0).item_ids == plain.item_ids
    diverse = recommender.recommend(history, k=10, diversity=0.7)
    assert spread(diverse) > spread(plain)
    assert diverse[0].item_id == plain[0].item_id  # MMR starts from the most relevant title


# -- popularity fallback and bad input ---------------------------------------------------------
def test_empty_or_unknown_history_falls_back_to_popularity(recommender, artifact):
    items, popularity = artifact[2], artifact[3]
    expected = items["item_id"].to_numpy()[np.argsort(-popularity, kind="stable")[:5]].tolist()
    empty = recommender.recommend([], k=5)
    assert empty.source == "popularity" and empty.item_ids == expected
    unknown = recommender.recommend([1, 2], k=5)
    assert unknown.source == "popularity" and unknown.unknown_ids == (1, 2)


def test_unknown_ids_are_skipped_and_reported_or_raise_in_strict_mode(recommender, artifact):
    ids = artifact[2]["item_id"].tolist()
    result = recommender.recommend([ids[0], 999_999, ids[1]], k=5)
    assert result.unknown_ids == (999_999,)
    assert result.item_ids == recommender.recommend([ids[0], ids[1]], k=5).item_ids
    with pytest.raises(UnknownItemsError, match="999999"):
        recommender.recommend([ids[0], 999_999], k=5, strict=True)


def test_ids_that_are_not_servable_do_not_widen_the_search(tmp_path):
    """Unknown and removed ids exclude nothing, so they must not raise how many results
    FAISS is asked for (with HNSW that k also widens the graph search and changes the list)."""
    model, spec, items, popularity = tiny_catalogue()
    recommender = exported(tmp_path / "h", model, spec, items, popularity, "HNSW16")
    ids = items["item_id"].tolist()
    asked = []
    search = recommender._catalogue.index.search_c  # search_c(n, x, k, distances, labels, params)
    recommender._catalogue.index.search_c = lambda *args: asked.append(args[2]) or search(*args)
    history = ids[3:8]
    expected = recommender.recommend(history, k=10)
    assert recommender.recommend(history + [99_999_999] * 60, k=10).item_ids == expected.item_ids
    assert asked == [15, 15]
    recommender.remove_items(ids[100:160])
    asked.clear()
    index = recommender._catalogue.index
    search = index.search_c
    index.search_c = lambda *args: asked.append(args[2]) or search(*args)
    recommender.recommend(history + ids[100:160], k=10)
    assert asked == [15]


def test_membership_and_removal_take_only_the_catalogues_id_type(recommender, artifact):
    ids = artifact[2]["item_id"].tolist()
    assert ids[3] in recommender and np.int64(ids[3]) in recommender
    assert float(ids[3]) not in recommender and True not in recommender and [ids[3]] not in recommender
    with pytest.raises(ValueError, match=r"item_ids\[1\]: item ids of this catalogue are integers"):
        recommender.remove_items([ids[3], float(ids[4])])
    assert ids[3] in recommender  # nothing was removed


@pytest.mark.parametrize("kwargs, message", [
    ({"k": 0}, "k: expected a positive integer"),
    ({"k": -3}, "k: expected a positive integer"),
    ({"k": 2.5}, "k: expected a positive integer"),
    ({"history": [1000, "1001"]}, r"history\[1\]: item ids of this catalogue are integers"),
    ({"history": [1000.0]}, r"history\[0\]: item ids of this catalogue are integers"),
    ({"history": "1000"}, "history: expected a sequence of item ids"),
    ({"timestamps": [1.0, float("nan")]}, r"timestamps \(history\)\[1\] is nan"),
    ({"timestamps": [1.0]}, "timestamps .* 1 values for 2 history items"),
    ({"watch_fractions": [0.5, float("nan")]}, r"watch_fractions \(history\)\[1\] is nan"),
    ({"watch_fractions": [0.5, 1.5]}, r"watch_fractions .* must lie in \[0, 1\]"),
    ({"member_features": {"plan": float("nan")}}, r"member_features\[.plan.\] is nan"),
    ({"now": float("nan")}, "now: expected unix seconds"),
    ({"diversity": 1.5}, r"diversity: expected a number in \[0, 1\]"),
    ({"filters": {"genres": "Comedy"}}, r"filters\['genres'\]: expected a list"),
    ({"history": np.array(1000)}, "history: expected a sequence of item ids, got a 0-d array"),
    ({"timestamps": 5.0}, r"timestamps \(history\): expected a sequence of numbers \(one per history item\), got fl"),
    ({"watch_fractions": 0.5}, r"watch_fractions \(history\): expected a sequence of numbers"),
    ({"now": True}, "now: expected unix seconds"),
    ({"timestamps": {2e9, 1e9}}, r"timestamps \(history\): expected a sequence of numbers"),  # a set has no order
    # Each of these was taken before: as a number, as unknown, or as true.
    ({"timestamps": [10**400, 1]},
     r"timestamps \(history\): expected unix seconds or datetimes within float64's range"),
    ({"now": 10**400}, "now: expected unix seconds"),
    ({"timestamps": ["1700000000", "1700000060"]}, r"timestamps \(history\): expected unix seconds or datetimes"),
    ({"watch_fractions": [True, False]}, r"watch_fractions \(history\): expected numbers"),
    ({"timestamps": [1.7e12, 1.7e12], "now": 1.7e9}, r"timestamps \(history\): a view at 1700000000000 is more than "
     r"a day after now=1700000000\.0; both are unix seconds \(not milliseconds\)"),
    ({"member_features": {"plan": ["premium"]}}, r"member_features\['plan'\]: expected one value"),
    ({"member_features": {"plna": "premium"}}, r"member_features: 'plna' is not a feature this model was trained "
     r"with \(its features are \['plan'\]\)"),
    ({"device": 1.5}, "device: expected a value of the training data's device column"),
    ({"device": ["tv"]}, "device: expected a value of the training data's device column"),
    ({"exclude_seen": "False"}, "exclude_seen: expected True or False, got str 'False'"),
    ({"strict": 1}, "strict: expected True or False"),
])
def test_bad_input_raises_value_error_naming_the_argument(recommender, kwargs, message):
    arguments = {"history": [1000, 1001], **kwargs}
    with pytest.raises(ValueError, match=message):
        recommender.recommend(**arguments)


@pytest.mark.parametrize("kwargs, message", [
    ({"timestamps": [["1700000000", "1700000060"]]},
     r"timestamps \(histories\[0\]\): expected unix seconds or datetimes"),
    ({"member_features": [{"plna": "premium"}]}, "member_features: 'plna' is not a feature"),
    ({"devices": [["tv"]]}, "device: expected a value of the training data's device column"),
    ({"exclude_seen": "False"}, "exclude_seen: expected True or False"),
    ({"strict": None}, "strict: expected True or False"),
])
def test_bad_batch_input_raises_value_error_naming_the_argument(recommender, kwargs, message):
    with pytest.raises(ValueError, match=message):
        recommender.recommend_batch([[1000, 1001]], **kwargs)


def test_missing_request_values_count_as_unknown(recommender):
    """What pandas hands over for an empty cell (NaN in a text column, NA) is an unknown device
    or feature, as None is; numpy bools are bools."""
    plain = recommender.recommend([1000, 1001], k=5)
    for device in (float("nan"), np.float32("nan"), pd.NA, pd.NaT, None):  # float32's NaN was refused
        assert recommender.recommend([1000, 1001], k=5, device=device) == plain
    assert recommender.recommend([1000, 1001], k=5, member_features={"plan": pd.NA}) == plain
    assert recommender.recommend_batch([[1000, 1001]], k=5, devices=[float("nan")])[0] == plain
    assert recommender.recommend([1000, 1001], k=5, member_features={"plan": np.True_}) == recommender.recommend(
        [1000, 1001], k=5, member_features={"plan": True})


def test_a_title_watched_again_counts_once_at_its_last_view(recommender, artifact):
    """Training keeps one view per title (duplicates: keep_last); repeats pushed the other
    titles out of the tower's window (max_history 10 here)."""
    ids = artifact[2]["item_id"].tolist()
    others = ids[1:10]
    repeated = recommender.recommend(others + [ids[0]] * 10, k=8)
    assert (repeated.item_ids, repeated.scores) == (recommender.recommend(others + [ids[0]], k=8).item_ids,
                                                    recommender.recommend(others + [ids[0]], k=8).scores)
    times = [1e9 + 60 * i for i in range(4)]
    watched = recommender.recommend([ids[0], ids[1], ids[0], ids[2]], k=8, timestamps=times,
                                    watch_fractions=[0.1, 1.0, 0.9, 1.0])
    last = recommender.recommend([ids[1], ids[0], ids[2]], k=8, timestamps=times[1:], watch_fractions=[1.0, 0.9, 1.0])
    assert (watched.item_ids, watched.scores) == (last.item_ids, last.scores)


@pytest.mark.parametrize("dtype", [np.int64, np.uint8])
def test_a_numpy_k_serves_like_a_python_int(recommender, artifact, dtype):
    ids = artifact[2]["item_id"].tolist()
    history = ids[3:8]
    for k, diversity in ((10, 0.0), (60, 0.3)):  # uint8 60 * MMR_POOL would wrap
        expected = recommender.recommend(history, k=k, diversity=diversity).item_ids
        assert recommender.recommend(history, k=dtype(k), diversity=diversity).item_ids == expected
        assert len(expected) == k
    assert recommender.recommend_batch([history], k=dtype(10))[0].item_ids == recommender.recommend(history).item_ids
    assert recommender.similar_items(ids[0], k=dtype(10)).item_ids == recommender.similar_items(ids[0]).item_ids


def test_searching_queries_of_the_wrong_shape_is_refused(recommender):
    from streamrec.inference.recommender import _index_search

    catalogue = recommender._catalogue
    for queries in (np.zeros(16, np.float32), np.zeros((1, 8), np.float32)):  # the model makes 16-d vectors
        with pytest.raises(ValueError, match=r"queries: expected \[n, 16\] vectors"):
            _index_search(catalogue, queries, 5, 1)
    scores, labels = _index_search(catalogue, np.zeros((2, 16), np.float64), 5, 1)  # converted, not refused
    assert labels.shape == scores.shape == (2, 5)


def test_batch_argument_lengths_must_match(recommender):
    with pytest.raises(ValueError, match="devices: 1 entries for 2 histories"):
        recommender.recommend_batch([[1000], [1001]], devices=["tv"])
    with pytest.raises(ValueError, match="timestamps: expected a sequence with one entry per history, got float"):
        recommender.recommend_batch([[1000], [1001]], timestamps=5.0)


def test_a_skipped_ids_timestamp_does_not_move_the_reference_time(recommender):
    history, times = [1005, 1006], [1e9, 1e9 + 60]
    alone = recommender.recommend(history, k=5, timestamps=times)
    with_unknown = recommender.recommend([*history, 999_999], k=5, timestamps=[*times, 1.7e9])
    assert with_unknown.unknown_ids == (999_999,)
    assert (with_unknown.item_ids, with_unknown.scores) == (alone.item_ids, alone.scores)
    # The reference is still the latest kept view: a later one moves it (the hour, the ages).
    later = recommender.recommend(history, k=5, timestamps=[1e9, 1e9 + 6 * 3600])
    assert later.scores != alone.scores


def test_an_empty_allowed_list_filters_everything_out_on_any_column(recommender):
    assert recommender.recommend([1005], k=5, filters={"title": []}).item_ids == []
    assert recommender.recommend([1005], k=5, filters={"genres": []}).item_ids == []
    assert recommender.recommend([1005], k=5, filters={"title": ["Title 7"]}).item_ids == [1007]


# -- catalogue changes -------------------------------------------------------------------------
def test_add_items_embeds_from_content_and_makes_them_recommendable(artifact):
    recommender = Recommender.load(artifact[0])
    model = artifact[1]
    new = pd.DataFrame({"item_id": [5000, 5001], "title": ["New A", "New B"], "genres": [["Comedy"], ["Drama"]],
                        "year": [2025.0, 2026.0]})
    assert recommender.add_items(new) == [5000, 5001]
    assert 5000 in recommender and recommender.n_items == N_ITEMS + 2
    # The vector is the item tower's content-only vector (no id embedding for a new title).
    with torch.no_grad():
        content = model.item_tower.content(torch.tensor([[0.0, 1.0, 0.0, 0.0]]), torch.tensor([(2025 - 1990) / 20]),
                                           torch.ones(1), torch.zeros(1, model.config.max_tokens, dtype=torch.long))
        expected = model.item_tower.encode(content, None, None)[0].numpy()
    similar_to_new = recommender.similar_items(5000, k=N_ITEMS + 1)
    assert 5001 in similar_to_new.item_ids and 5000 not in similar_to_new.item_ids
    vectors = recommender._catalogue.vectors
    np.testing.assert_allclose(vectors[N_ITEMS], expected, atol=1e-5)
    found = recommender.recommend([1000], k=N_ITEMS + 1)
    assert {5000, 5001} <= set(found.item_ids)
    # A title added after training is excluded once watched, but the query tower cannot read it.
    assert recommender.recommend([5000], k=3).source == "popularity"
    assert 5000 not in recommender.recommend([1000, 5000], k=N_ITEMS).item_ids
    assert next(r for r in found if r.item_id == 5000).metadata["title"] == "New A"
    with pytest.raises(ValueError, match="already in the catalogue"):
        recommender.add_items(new.iloc[:1])
    with pytest.raises(ValueError, match="integers"):
        recommender.add_items([{"item_id": "x", "title": "bad"}])


@pytest.mark.parametrize("factory", ["Flat", "HNSW16", "IVF8,Flat"])
def test_remove_items_never_returns_them(tmp_path, factory):
    model, spec, items, popularity = tiny_catalogue()
    queries = model.all_item_vectors().numpy()[:20]
    export_artifact(tmp_path / "a", model, spec, items, popularity, queries, factory=factory, progress=False)
    recommender = Recommender.load(tmp_path / "a")
    history = items["item_id"].iloc[:3].tolist()
    top = recommender.recommend(history, k=5).item_ids
    recommender.remove_items(top[:2])
    after = recommender.recommend(history, k=N_ITEMS)
    assert not set(top[:2]) & set(after.item_ids)
    assert len(after) == N_ITEMS - 3 - 2
    assert top[0] not in recommender.recommend([], k=N_ITEMS).item_ids
    with pytest.raises(UnknownItemsError):
        recommender.remove_items(top[:1])


@pytest.mark.parametrize("factory", ["Flat", "HNSW16", "IVF8,Flat"])
def test_a_mapped_index_and_a_read_one_serve_and_change_alike(tmp_path, monkeypatch, factory):
    """The index is memory-mapped where FAISS can, and read where it cannot (macOS); both
    serve the same and take catalogue changes (on a mapped index a plain clone would
    crash the process)."""
    import faiss

    model, spec, items, popularity = tiny_catalogue()
    mapped = exported(tmp_path / "a", model, spec, items, popularity, factory)
    read_index = faiss.read_index

    def cannot_map(path, flags=0):
        if flags & faiss.IO_FLAG_MMAP_IFC:
            raise RuntimeError("Error: mmap is not implemented on this platform")
        return read_index(path, flags)

    monkeypatch.setattr(faiss, "read_index", cannot_map)
    read = Recommender.load(tmp_path / "a")
    assert mapped._catalogue.mapped and not read._catalogue.mapped
    ids = items["item_id"].tolist()
    for recommender in (mapped, read):
        recommender.remove_items(ids[:3])
        recommender.add_items([{"item_id": 9000, "title": "New", "genres": ["Comedy"], "year": 2024.0}])
        recommender.remove_items(ids[3:4])  # the second change clones the now in-memory index
        assert not recommender._catalogue.mapped
    for history in ([ids[5], ids[6]], ids[10:20], [9000]):
        assert mapped.recommend(history, k=12).item_ids == read.recommend(history, k=12).item_ids
    assert not set(ids[:4]) & set(mapped.recommend(ids[10:12], k=N_ITEMS).item_ids)


# -- concurrency ---------------------------------------------------------------------------------
def run_in_threads(work, n_threads: int) -> list[BaseException]:
    """Run ``work(worker)`` for each worker index in its own thread; the errors they raised."""
    errors: list[BaseException] = []

    def guarded(worker: int) -> None:
        try:
            work(worker)
        except BaseException as error:  # noqa: BLE001 - returned to the test
            errors.append(error)

    threads = [threading.Thread(target=guarded, args=(w,)) for w in range(n_threads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return errors


def test_concurrent_calls_equal_sequential_results(recommender, artifact):
    ids = artifact[2]["item_id"].tolist()
    histories = [ids[i:i + 1 + i % 9] for i in range(120)]
    expected = [recommender.recommend(h, k=10).item_ids for h in histories]
    expected_similar = [recommender.similar_items(ids[i], k=5).item_ids for i in range(120)]
    results: dict[int, list] = {}

    def work(worker: int) -> None:
        for i in range(worker, 120, 8):
            results[i] = (recommender.recommend(histories[i], k=10).item_ids,
                          recommender.similar_items(ids[i], k=5).item_ids)

    assert run_in_threads(work, 8) == []
    assert [results[i][0] for i in range(120)] == expected
    assert [results[i][1] for i in range(120)] == expected_similar


def test_readers_see_a_consistent_catalogue_while_titles_are_added(artifact):
    recommender = Recommender.load(artifact[0])
    stop = threading.Event()
    errors: list[BaseException] = []

    def read() -> None:
        try:
            while not stop.is_set():
                result = recommender.recommend([1000, 1001], k=20)
                assert len(result) == 20 and len(set(result.item_ids)) == 20
        except BaseException as error:  # noqa: BLE001
            errors.append(error)

    readers = [threading.Thread(target=read) for _ in range(4)]
    for t in readers:
        t.start()
    for i in range(20):
        recommender.add_items([{"item_id": 6000 + i, "title": f"New {i}", "genres": ["Action"], "year": 2020.0}])
    stop.set()
    for t in readers:
        t.join()
    assert not errors
    assert recommender.n_items == N_ITEMS + 20


# -- corrupted artifacts ---------------------------------------------------------------------
@pytest.fixture
def copy_of_artifact(artifact, tmp_path):
    import shutil

    target = tmp_path / "copy"
    shutil.copytree(artifact[0], target)
    return target


@pytest.mark.parametrize("damage, message", [
    (lambda path: (path / "item_vectors.npy").write_bytes(b""), r"item_vectors\.npy: not a readable array"),
    (lambda path: torch.save(torch.zeros(3), path / "query_tower.pt"),
     r"query_tower\.pt: holds a Tensor, not a state dict"),
    (lambda path: torch.save([1, 2], path / "item_tower.pt"), r"item_tower\.pt: holds a list, not a state dict"),
    (lambda path: torch.save({"unexpected.weight": torch.zeros(2)}, path / "item_tower.pt"),
     r"item_tower\.pt: weights do not match"),
    (lambda path: pd.read_parquet(path / "items.parquet").drop(columns="item_id").to_parquet(path / "items.parquet"),
     r"items\.parquet: has no item_id column"),
    (lambda path: pd.read_parquet(path / "items.parquet").assign(item_id=lambda f: f["item_id"].where(
        f.index != 1, 1000)).to_parquet(path / "items.parquet"), r"items\.parquet: item ids must be unique; "
     r"repeated: \[1000\]"),
])
def test_a_damaged_file_with_a_matching_checksum_is_named(copy_of_artifact, damage, message):
    damage(copy_of_artifact)
    with pytest.raises(ArtifactError, match=message):
        Recommender.load(copy_of_artifact, verify=False)


def test_saving_never_replaces_a_directory_that_is_not_an_artifact(recommender, tmp_path):
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "thesis.txt").write_text("years of work")
    with pytest.raises(FileExistsError, match="is not a streamrec artifact"):
        recommender.save(precious)
    assert (precious / "thesis.txt").read_text() == "years of work"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["precious"]  # no temporary directory left
    (tmp_path / "empty").mkdir()
    recommender.save(tmp_path / "empty")  # an empty directory, or a previous artifact, is replaced
    recommender.save(tmp_path / "empty")
    assert Recommender.load(tmp_path / "empty").n_items == recommender.n_items


def test_a_directory_with_some_other_manifest_is_not_replaced(recommender, tmp_path):
    site = tmp_path / "site"
    site.mkdir()
    (site / "manifest.json").write_text('{"name": "my web app"}')
    (site / "index.html").write_text("<html>")
    with pytest.raises(FileExistsError, match="is not a streamrec artifact"):
        recommender.save(site)
    assert sorted(p.name for p in site.iterdir()) == ["index.html", "manifest.json"]


@pytest.mark.parametrize("swap", ["exchange", "two renames"])
def test_what_a_killed_writer_left_is_cleaned_up_and_its_moved_bundle_put_back(recommender, tmp_path, monkeypatch,
                                                                             swap):
    from streamrec.inference import artifact as artifact_module

    if swap == "two renames":
        monkeypatch.setattr(artifact_module, "_exchange", lambda a, b: False)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True)
    host, dead_pid = artifact_module._HOST, int(dead.stdout)
    recommender.save(tmp_path / "rec")
    first = (tmp_path / "rec" / "manifest.json").read_text()
    # A writer on this host killed between moving the old bundle aside and renaming its new one in:
    (tmp_path / "rec").rename(tmp_path / f".rec.{host}-{dead_pid}.1700000000000000000.old")
    (tmp_path / f".rec.{host}-{dead_pid}.abc_12xy.tmp").mkdir()  # and one killed while writing
    kept = [f".rec.{host}-{os.getpid()}.live1234.tmp",  # a writer still running
            ".rec.0badc0de-1.live1234.tmp",  # a writer on another host (a shared volume), not a day old
            f".rec.5.{host}-{dead_pid}.x.tmp",  # another artifact's (".rec.5")
            ".rec.20240301.before-retrain.old",  # the user's own
            f".rec.{host}-99999999999.abc.tmp"]  # no process has such an id
    for name in kept:
        (tmp_path / name).mkdir()
    with pytest.raises(RuntimeError, match="disk full"):
        write_artifact(tmp_path / "rec", lambda tmp: (_ for _ in ()).throw(RuntimeError("disk full")))
    assert (tmp_path / "rec" / "manifest.json").read_text() == first  # put back, and kept by the failed write
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["rec", *kept])
    recommender.save(tmp_path / "rec")
    assert Recommender.load(tmp_path / "rec").n_items == recommender.n_items
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["rec", *kept])  # no bundle of its own left


@pytest.mark.parametrize("swap", ["exchange", "two renames"])
def test_two_writers_creating_one_new_artifact_at_once_both_succeed(tmp_path, monkeypatch, swap):
    """The other writer's bundle lands between this writer's check that the path is free and
    its rename: this one then replaces it like any previous bundle (the last writer wins)."""
    from streamrec.inference import artifact as artifact_module

    if swap == "two renames":
        monkeypatch.setattr(artifact_module, "_exchange", lambda a, b: False)
    path, rename = tmp_path / "rec", os.replace

    def bundle(writer: str):
        def write_files(tmp: Path) -> dict:
            for name in artifact_module.SERVED_FILES:
                (tmp / name).write_text(writer)
            return {"writer": writer}
        return write_files

    def other_writer_lands_first(src, dst):
        if Path(dst) == path and not path.exists():  # this writer's rename into the free path
            monkeypatch.setattr(os, "replace", rename)
            write_artifact(path, bundle("other"))
        rename(src, dst)

    monkeypatch.setattr(os, "replace", other_writer_lands_first)
    assert write_artifact(path, bundle("this"))["writer"] == "this"
    assert read_manifest(path)["writer"] == "this"  # every checksum matches: one whole bundle
    assert {(path / name).read_text() for name in artifact_module.SERVED_FILES} == {"this"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rec"]  # no temporary or moved-aside bundle left


def test_a_damaged_artifact_is_rebuilt_in_place(recommender, copy_of_artifact):
    (copy_of_artifact / "manifest.json").write_text('{"format": "streamrec-retr')  # cut short
    with pytest.raises(ArtifactError, match="corrupted"):
        Recommender.load(copy_of_artifact)
    recommender.save(copy_of_artifact)  # its files are an artifact's: replaced
    assert Recommender.load(copy_of_artifact).n_items == recommender.n_items


def test_every_file_load_reads_must_be_listed_with_its_checksum(copy_of_artifact):
    manifest_path = copy_of_artifact / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    files = {name: digest for name, digest in manifest["files"].items() if name != "item_vectors.npy"}
    manifest_path.write_text(json.dumps({**manifest, "files": files}))
    np.save(copy_of_artifact / "item_vectors.npy", np.zeros((N_ITEMS, 16), np.float32))  # swapped, unlisted
    with pytest.raises(ArtifactError, match=r"item_vectors\.npy: not listed with a checksum in manifest\.json"):
        Recommender.load(copy_of_artifact)


def test_tampered_file_fails_the_checksum_naming_the_file(copy_of_artifact):
    path = copy_of_artifact / "item_vectors.npy"
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match=r"item_vectors\.npy: checksum mismatch"):
        Recommender.load(copy_of_artifact)


def test_missing_file_is_named(copy_of_artifact):
    (copy_of_artifact / "index.faiss").unlink()
    with pytest.raises(ArtifactError, match=r"index\.faiss: missing"):
        Recommender.load(copy_of_artifact)


def test_corrupted_file_is_named_even_without_checksums(copy_of_artifact):
    (copy_of_artifact / "query_tower.pt").write_bytes(b"not a torch file")
    with pytest.raises(ArtifactError, match=r"query_tower\.pt: cannot be read"):
        Recommender.load(copy_of_artifact, verify=False)


def test_an_index_of_the_wrong_dimension_is_named(copy_of_artifact):
    import faiss

    index = faiss.IndexFlatIP(8)  # the model makes 16-dimensional vectors
    index.add(np.zeros((N_ITEMS, 8), dtype=np.float32))
    faiss.write_index(index, str(copy_of_artifact / "index.faiss"))
    with pytest.raises(ArtifactError, match=r"index\.faiss: holds 8-dimensional vectors, the model makes 16"):
        Recommender.load(copy_of_artifact, verify=False)


def test_format_version_mismatch_and_bad_manifest_are_named(copy_of_artifact):
    manifest_path = copy_of_artifact / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    for version in (99, True, 1.0, "1"):  # the same number of another type is another format too
        manifest_path.write_text(json.dumps({**manifest, "format_version": version}))
        with pytest.raises(ArtifactError, match=f"format version {version!r} but this streamrec reads version 1"):
            read_manifest(copy_of_artifact)
    manifest_path.write_text("{ not json")
    with pytest.raises(ArtifactError, match=r"manifest\.json: corrupted"):
        Recommender.load(copy_of_artifact)
    with pytest.raises(ArtifactError, match="no artifact directory"):
        Recommender.load(copy_of_artifact / "nowhere")


def test_a_failed_build_leaves_the_previous_artifact_untouched(copy_of_artifact):
    before = (copy_of_artifact / "manifest.json").read_text()

    def explode(tmp: Path) -> dict:
        (tmp / "index.faiss").write_bytes(b"half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        write_artifact(copy_of_artifact, explode)
    assert (copy_of_artifact / "manifest.json").read_text() == before
    Recommender.load(copy_of_artifact)
    assert [p.name for p in copy_of_artifact.parent.iterdir() if p.name.startswith(".")] == []


def test_rebuilding_replaces_the_artifact_atomically(copy_of_artifact):
    model, spec, items, popularity = tiny_catalogue(seed=1)
    export_artifact(copy_of_artifact, model, spec, items, popularity, model.all_item_vectors().numpy()[:10],
                    factory="Flat", progress=False)
    np.testing.assert_allclose(np.load(copy_of_artifact / "item_vectors.npy"), model.all_item_vectors().numpy(),
                               atol=1e-6)
    assert [p.name for p in copy_of_artifact.parent.iterdir() if p.name.startswith(".")] == []


# -- import weight -------------------------------------------------------------------------------
def test_importing_inference_does_not_import_lightning_hydra_or_wandb():
    code = ("import sys, streamrec.inference; heavy = sorted({m.split('.')[0] for m in sys.modules} & "
            "{'lightning', 'pytorch_lightning', 'lightning_fabric', 'hydra', 'omegaconf', 'wandb'}); print(heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_tuning_with_exclusions_measures_what_is_served():
    """Excluding watched titles pushes the served list deeper than the plain top-k; the
    recall tuning reports must be the recall of that served list."""
    rng = np.random.default_rng(3)
    centres = rng.normal(size=(30, 16))
    vectors = (centres[rng.integers(0, 30, 6000)] + 0.5 * rng.normal(size=(6000, 16))).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    queries = vectors[:100] + 0.1 * rng.normal(size=(100, 16)).astype(np.float32)
    watched = [np.argsort(-(vectors @ q))[:20] for q in queries]  # the query's own nearest titles
    index = build_index(vectors, "IVF32,Flat", progress=False)
    value, measured, _ = tune(index, vectors, queries, k=10, target_recall=0.9, exclude=watched)
    served = index.search(queries, 30)[1]
    truth = exact_search(vectors, queries, 30)
    hits = 0
    for found, best, seen in zip(served, truth, watched):
        top = [i for i in found if i not in set(seen)][:10]
        hits += len(set(top) & set([i for i in best if i not in set(seen)][:10]))
    assert measured == pytest.approx(hits / 1000)
    assert measured >= 0.9


@pytest.mark.parametrize("factory, full_scan", [("IVF8,Flat", 8), ("Flat", None)])
def test_tuning_counts_titles_tied_with_the_kth_as_hits(factory, full_scan):
    """Titles three times over (content-only titles with the same content): which of the
    tied ones exact search returns is arbitrary, so an exact scan must measure recall 1."""
    rng = np.random.default_rng(0)
    vectors = np.repeat(rng.normal(size=(200, 8)).astype(np.float32), 3, axis=0)
    queries = rng.normal(size=(100, 8)).astype(np.float32)
    index = build_index(vectors, factory, progress=False)
    value, measured, sweep = tune(index, vectors, queries, k=10, target_recall=0.999)
    assert (value, measured) == (full_scan, 1.0)
    assert [p.recall for p in sweep] == sorted(p.recall for p in sweep)
    truth = exact_search(vectors, queries, 10)
    swapped = truth.copy()  # the k-th title's other copy in its place, where the list lacks one
    for row in swapped:
        copies = [c for c in range(row[-1] // 3 * 3, row[-1] // 3 * 3 + 3) if c not in row]
        row[-1] = copies[0] if copies else row[-1]
    assert (swapped != truth).any() and recall(swapped, truth, vectors, queries) == 1.0
    assert recall(np.roll(truth, 1, axis=0), truth, vectors, queries) < 0.2  # other queries' lists
    line = np.array([[1, 0], [0.9, 0], [0.5, 0], [0.5, 0], [0.5, 0]], dtype=np.float32)
    query = np.array([[1, 0]], dtype=np.float32)
    top3 = exact_search(line, query, 3)  # 0, 1 and one of the three tied at 0.5
    assert recall(np.array([[0, 1, 4]]), top3, line, query) == 1.0
    assert recall(np.array([[2, 3, 4]]), top3, line, query) == pytest.approx(1 / 3)  # copies miss 0 and 1
    assert recall(np.array([[0, 0, 0]]), top3, line, query) == pytest.approx(1 / 3)  # one distinct hit
    for seed in range(5):  # an exact list against itself, k-th scores near 0 included
        many = np.random.default_rng(seed).normal(size=(550, 16)).astype(np.float32)
        deep = exact_search(many[:500], many[500:], 250)
        assert recall(deep, deep, many[:500], many[500:]) == 1.0


def test_artifact_directory_is_readable_by_others(artifact):
    import os
    import stat

    assert stat.S_IMODE(os.stat(artifact[0]).st_mode) == 0o755


def test_string_item_ids_serve_end_to_end(tmp_path):
    model, spec, items, popularity = tiny_catalogue()
    items = items.assign(item_id=[f"tt{i:05d}" for i in range(N_ITEMS)])
    spec = {**spec, "item_map": {"kind": "str", "ids": items["item_id"].tolist()}}
    export_artifact(tmp_path / "s", model, spec, items, popularity, model.all_item_vectors().numpy()[:10],
                    factory="Flat", progress=False)
    recommender = Recommender.load(tmp_path / "s")
    result = recommender.recommend(["tt00003", "tt00017", "nope"], k=5)
    assert all(isinstance(i, str) for i in result.item_ids) and result.unknown_ids == ("nope",)
    scores = model_scores(model, [3, 17])
    scores[[3, 17]] = float("-inf")
    assert result.item_ids == [f"tt{i:05d}" for i in torch.topk(scores, 5).indices.tolist()]
    assert recommender.similar_items("tt00003", k=3).item_ids[0].startswith("tt")
    assert recommender.recommend([], k=2).source == "popularity"
    recommender.add_items([{"item_id": "new-1", "title": "New", "genres": ["Drama"], "year": 2024.0}])
    assert "new-1" in recommender.recommend(["tt00003"], k=N_ITEMS + 1).item_ids
    with pytest.raises(ValueError, match="strings"):
        recommender.recommend([3])


def test_sparse_integer_ids_serve_like_compact_ones(tmp_path, recommender, artifact):
    """Ids far apart are looked up in a dict rather than a table indexed by the id: same answers."""
    model, spec, items, popularity = tiny_catalogue()
    compact = items["item_id"].to_numpy()
    sparse = 10**12 + 7 * (compact - 1000)
    export_artifact(tmp_path / "s", model, {**spec, "item_map": {"kind": "int", "ids": sparse.tolist()}},
                    items.assign(item_id=sparse), popularity, model.all_item_vectors().numpy()[:10], factory="Flat",
                    progress=False)
    served = Recommender.load(tmp_path / "s")
    to_sparse = dict(zip(compact.tolist(), sparse.tolist()))
    for rows in ([3, 17, 42], [5], list(range(0, 400, 37))):
        history = compact[rows].tolist()
        expected = recommender.recommend(history + [99999], k=12)
        got = served.recommend([to_sparse[i] for i in history] + [99999], k=12)
        assert got.item_ids == [to_sparse[i] for i in expected.item_ids]
        assert got.scores == expected.scores and got.unknown_ids == (99999,)
    assert served.similar_items(int(sparse[3]), k=4).item_ids == [to_sparse[i] for i in
                                                                  recommender.similar_items(int(compact[3]),
                                                                                            k=4).item_ids]
    assert int(sparse[3]) in served and int(compact[3]) not in served


def test_a_removed_title_is_still_read_from_histories(artifact):
    recommender = Recommender.load(artifact[0])
    ids = artifact[2]["item_id"].tolist()
    history = ids[:6]
    before = recommender.recommend(history, k=20)
    recommender.remove_items([history[0]])
    after = recommender.recommend(history, k=20)
    assert after.unknown_ids == ()
    assert after.item_ids == before.item_ids  # same query; the removed title was never a candidate here
    assert recommender.recommend(history, k=5, strict=True).source == "model"


def test_added_metadata_keeps_column_types(artifact):
    recommender = Recommender.load(artifact[0])
    recommender.add_items([{"item_id": 7000, "title": "T", "genres": ["Drama"], "year": "1999"}])
    table = recommender._catalogue.table
    assert table.scalars["year"].dtype.kind == "f"
    found = recommender.recommend([1000], k=N_ITEMS + 1, filters={"year": [1999]})
    assert 7000 in found.item_ids and all(r.metadata["year"] == 1999 for r in found)
    assert len(found) == 1 + int((artifact[2]["year"] == 1999).sum())


@pytest.mark.parametrize("kwargs, message", [
    ({"member_features": {"plan": np.float32("nan")}}, r"member_features\['plan'\]"),
    ({"timestamps": [1.0, float("inf")]}, r"timestamps \(history\)\[1\] is inf"),
    ({"now": float("inf")}, "now: expected unix seconds"),
    ({"filters": {"genres": [["Comedy"]]}}, r"filters\['genres'\]: allowed values must be plain"),
])
def test_more_bad_input_names_the_argument(recommender, kwargs, message):
    with pytest.raises(ValueError, match=message):
        recommender.recommend([1000, 1001], **kwargs)


def test_manifest_without_checksums_is_rejected(copy_of_artifact):
    manifest_path = copy_of_artifact / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    del manifest["files"]
    manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match="lists no files"):
        Recommender.load(copy_of_artifact)


def test_threads_search_an_hnsw_catalogue_with_removed_titles(tmp_path):
    """HNSW cannot delete: removed rows are skipped by a FAISS selector shared by all threads."""
    model, spec, items, popularity = tiny_catalogue()
    recommender = exported(tmp_path / "h", model, spec, items, popularity, "HNSW16")
    ids = items["item_id"].tolist()
    removed = set(ids[:50])
    recommender.remove_items(ids[:50])
    histories = [ids[50 + i:53 + i] for i in range(100)]
    expected = [recommender.recommend(h, k=10).item_ids for h in histories]
    results: dict[int, list] = {}

    def work(worker: int) -> None:
        for _ in range(5):
            for i in range(worker, 100, 4):
                results[i] = recommender.recommend(histories[i], k=10).item_ids

    assert run_in_threads(work, 4) == []
    assert [results[i] for i in range(100)] == expected
    assert not removed & {i for r in expected for i in r}


def test_appending_rows_without_a_column_keeps_the_old_values_exactly():
    from streamrec.inference.items import ItemTable

    old = ItemTable.from_frame(pd.DataFrame({"item_id": [1, 2], "rank": [3, 4], "kids": [True, False]}))
    new = ItemTable.from_frame(pd.DataFrame({"item_id": [9], "title": ["New"]}))
    both = old.append(new)
    assert both.row(0) == {"item_id": 1, "rank": 3, "kids": True, "title": None}
    assert both.row(2) == {"item_id": 9, "rank": None, "kids": None, "title": "New"}
    assert both.mask("rank", [4]).tolist() == [False, True, False]
    saved = ItemTable.from_arrow(pa.Table.from_pandas(both.to_frame(), preserve_index=False))  # as save() and load()
    assert [saved.row(i) for i in range(3)] == [both.row(i) for i in range(3)]
    assert type(saved.value("rank", 1)) is int and saved.mask("rank", [4]).tolist() == [False, True, False]


def test_add_items_accepts_missing_genres(artifact):
    recommender = Recommender.load(artifact[0])
    recommender.add_items([{"item_id": 7100, "title": "No genres", "genres": None, "year": 2020.0}])
    assert 7100 in recommender
    assert recommender.similar_items(7100, k=1).source == "model"


@pytest.mark.parametrize("items, message", [
    ([{"item_id": 7200, "title": "One genre", "genres": "Comedy", "year": 2020.0}],
     r"items\.genres\[0\]: expected a list of values \(e\.g\. \['Comedy'\]\), got str"),
    ([{"item_id": 2**63, "title": "Too big"}], r"items\.item_id\[0\]: 9223372036854775808 does not fit"),
    ([{"item_id": 7300}, {"item_id": None}], r"items\.item_id\[1\]: item ids of this catalogue are integers, "
                                             r"got None"),
    ([{"item_id": 7300}, {"title": "no id"}], r"items\[1\]: an 'item_id' is required"),
    (pd.DataFrame({"item_id": [7300, None]}), r"items\.item_id\[1\]: nan is not an integer id"),
    ([7300], r"items: an 'item_id' column is required; got \[0\]"),
    ("7300", r"items: expected a DataFrame or a list of records \(mappings\)"),
])
def test_add_items_refuses_bad_items_naming_them(recommender, items, message):
    with pytest.raises(ValueError, match=message):
        recommender.add_items(items)
    assert recommender.n_items == N_ITEMS and 7200 not in recommender and 7300 not in recommender


def test_array_likes_serve_like_lists(recommender):
    history, times, watch = [1005, 1006, 1007], [1e9, 1e9 + 60, 1e9 + 120], [0.5, 1.0, 0.25]
    expected = recommender.recommend(history, k=5, timestamps=times, watch_fractions=watch)
    as_series = recommender.recommend(history, k=5, timestamps=pd.Series(times, index=[7, 8, 9]),
                                      watch_fractions=torch.tensor(watch))
    assert (as_series.item_ids, as_series.scores) == (expected.item_ids, expected.scores)
    batch = recommender.recommend_batch([history, history[:1]], k=5, devices=pd.Series(["tv", "mobile"], index=[5, 6]),
                                        timestamps=pd.Series([times, times[:1]], index=[3, 4]))
    one = recommender.recommend(history[:1], k=5, device="mobile", timestamps=times[:1])
    assert batch[1].item_ids == one.item_ids
    pair = [history, history]
    grid = recommender.recommend_batch(pair, k=5, timestamps=np.array([times, times]),
                                       now=pd.Series([2e9, 2e9], index=[9, 8]))
    alone = recommender.recommend(history, k=5, timestamps=times, now=2e9)
    assert grid[0].item_ids == alone.item_ids  # the scores to float32 rounding: BLAS sums a batch in its own order
    np.testing.assert_allclose(grid[0].scores, alone.scores, rtol=1e-6)

    class Times:  # a sequence by duck typing, not registered as one
        def __len__(self):
            return len(times)

        def __getitem__(self, i):
            return times[i]

    assert recommender.recommend(history, k=5, timestamps=Times(), watch_fractions=watch) == expected
    with pytest.raises(ValueError, match="devices: expected a sequence with one entry per history, got set"):
        recommender.recommend_batch(pair, devices={"tv", "mobile"})
    with pytest.raises(ValueError, match=r"a DataFrame's rows would be padded"):
        recommender.recommend_batch(pair, timestamps=pd.DataFrame([times, times[:2]]))


def test_add_items_takes_rows_of_any_record_type(recommender):
    frame = pd.DataFrame({"item_id": np.array([7400], dtype=np.uint64), "title": ["Row"], "year": [2020.0]})
    frame["genres"] = [{"Drama", "Comedy"}]
    assert recommender.add_items([row for _, row in frame.iterrows()]) == [7400]
    assert type(recommender.add_items([{"item_id": np.uint64(7401), "title": "Dict"}])[0]) is int
    numeric = pd.DataFrame({"item_id": [7402], "year": [2020.0]})  # its rows are float Series
    assert recommender.add_items([row for _, row in numeric.iterrows()]) == [7402]
    assert recommender.add_items(numeric.assign(item_id=[7403.0]).astype(object)) == [7403]
    assert recommender.add_items([{"item_id": 7404.0}]) == [7404]
    added = recommender.similar_items(7401, k=recommender.n_items)
    assert next(r for r in added if r.item_id == 7400).metadata["genres"] == ["Comedy", "Drama"]


def test_add_items_of_nothing_and_remove_items_of_one_id(recommender):
    assert recommender.add_items([]) == [] and recommender.n_items == N_ITEMS
    with pytest.raises(ValueError, match="item_ids: expected a list of item ids, got int 1000"):
        recommender.remove_items(1000)
    assert 1000 in recommender


def test_manifest_with_paths_outside_the_artifact_is_rejected(copy_of_artifact):
    manifest_path = copy_of_artifact / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["files"]["../index.faiss"] = "0" * 64
    manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match="not a plain name"):
        Recommender.load(copy_of_artifact)
    manifest_path.write_text("[1, 2]")
    with pytest.raises(ArtifactError, match="format 'list'"):
        Recommender.load(copy_of_artifact)


@pytest.mark.parametrize("normalize", [True, False])
def test_similar_items_matches_brute_force_as_titles_come_and_go(tmp_path, normalize):
    """The unfiltered path (FAISS's k + 1, the title itself dropped) against exact scores over
    the active titles; unnormalised vectors make titles whose own vector is not their
    nearest, so the last of the k + 1 is dropped instead."""
    model, spec, items, popularity = tiny_catalogue()
    model.config.normalize = normalize
    recommender = exported(tmp_path / "a", model, spec, items, popularity, "Flat")
    ids = items["item_id"].tolist()
    not_own_nearest = 0

    def check(k):
        nonlocal not_own_nearest
        catalogue = recommender._catalogue
        vectors, active = catalogue.vectors, catalogue.active
        for row in np.flatnonzero(active)[::7]:
            scores = (vectors @ vectors[row]).astype(np.float64)
            not_own_nearest += bool(scores[active].max() > scores[row])
            scores[~active] = -np.inf
            scores[row] = -np.inf
            top = np.argsort(-scores, kind="stable")[:k]
            similar = recommender.similar_items(catalogue.item_ids[row].item(), k=k)
            assert similar.item_ids == catalogue.item_ids[top].tolist()
            np.testing.assert_allclose(similar.scores, scores[top], rtol=1e-5, atol=1e-6)
            assert [r.item_id for r in similar] == similar.item_ids and similar.source == "model"

    check(5)
    recommender.remove_items(ids[:40])
    check(10)
    recommender.add_items([{"item_id": 9000 + i, "title": f"New {i}", "genres": ["Drama"], "year": 2000.0 + i}
                           for i in range(10)])
    check(N_ITEMS - 40 + 10 - 1)  # every other title: FAISS returns exactly the active ones
    assert not_own_nearest > 0 if not normalize else not_own_nearest == 0


@pytest.mark.parametrize("factory", ["HNSW16", "IVF8,Flat"])
def test_similar_items_of_an_approximate_index_skip_removed_titles(tmp_path, factory):
    model, spec, items, popularity = tiny_catalogue()
    recommender = exported(tmp_path / "a", model, spec, items, popularity, factory)
    ids = items["item_id"].tolist()
    recommender.remove_items(ids[::2])
    for item_id in ids[1::10]:
        similar = recommender.similar_items(item_id, k=20).item_ids
        assert len(similar) == len(set(similar)) == 20 and item_id not in similar
        assert not set(similar) & set(ids[::2])
    every_other = recommender.similar_items(ids[1], k=N_ITEMS // 2 - 1).item_ids  # past what FAISS returns
    assert len(every_other) == N_ITEMS // 2 - 1 and set(every_other) == set(ids[3::2])


def test_integer_metadata_filters_and_appends_keep_their_type():
    from streamrec.inference.items import ItemTable

    def table(**columns):
        return ItemTable.from_frame(pd.DataFrame({"item_id": range(len(next(iter(columns.values())))), **columns}))

    nullable, plain = table(rank=pd.array([1, None, 3], dtype="Int64")), table(rank=[1, 2])
    assert nullable.mask("rank", [10**20, 3, True]).tolist() == [False, False, True]  # past int64: no row
    assert plain.mask("rank", [2**63, 2]).tolist() == [False, True]
    big = table(v=pd.array([2**63 + 5, None], dtype="UInt64"))
    assert big.row(0)["v"] == 2**63 + 5 and big.mask("v", [2**63 + 5]).tolist() == [True, False]
    saved = ItemTable.from_arrow(pa.Table.from_pandas(big.to_frame(), preserve_index=False))
    assert [saved.row(i)["v"] for i in range(2)] == [2**63 + 5, None]
    assert [big.append(table(v=[7])).value("v", i) for i in range(3)] == [2**63 + 5, None, 7]
    for bad in ([True], ["high"]):  # a bool or a word in a numeric column
        with pytest.raises(ValueError, match=r"items\.rank: the catalogue's rank is numeric"):
            nullable.append(table(rank=pd.Series(bad, dtype=object)))
        with pytest.raises(ValueError, match=r"items\.rank: the catalogue's rank is numeric"):
            plain.append(table(rank=pd.Series(bad, dtype=object)))
    joined = nullable.append(table(rank=["7"]))
    assert [joined.value("rank", i) for i in range(4)] == [1, None, 3, 7] and type(joined.value("rank", 3)) is int


def test_an_integer_column_with_missing_values_stays_integer_through_save(tmp_path):
    model, spec, items, popularity = tiny_catalogue()
    items["rank"] = np.arange(N_ITEMS)
    changed = exported(tmp_path / "a", model, spec, items, popularity, "Flat")
    assert changed.recommend([], k=3, filters={"rank": [7, "seven"]}).item_ids == [1007]  # a stray string
    assert changed.recommend([], k=3, filters={"rank": [True]}).item_ids == []  # cached apart from [1]
    assert changed.recommend([], k=3, filters={"rank": [1]}).item_ids == [1001]
    assert 1007 in changed.recommend([], k=N_ITEMS, filters={"year": [float(items["year"][7]), "x"]}).item_ids
    changed.add_items([{"item_id": 8000, "title": "No rank", "genres": ["Comedy"], "year": 2025.0}])
    changed.save(tmp_path / "b")
    saved = Recommender.load(tmp_path / "b")
    ranks = {r.item_id: r.metadata["rank"] for r in saved.recommend([], k=N_ITEMS + 1)}
    assert ranks[8000] is None and ranks[1007] == 7 and type(ranks[1007]) is int
    assert saved.recommend([], k=3, filters={"rank": [7, 7.0, "7"]}).item_ids == [1007]
    with pytest.raises(ValueError, match=r"items\.rank: the catalogue's rank is numeric, got \['high'\]"):
        saved.add_items([{"item_id": 8001, "title": "Bad", "rank": "high"}])
    # One record with a rank and one without: pandas makes [5.0, NaN] of them, still ranks.
    saved.add_items([{"item_id": 8002, "title": "Five", "rank": 5}, {"item_id": 8003, "title": "None"}])
    saved.save(tmp_path / "c")
    again = Recommender.load(tmp_path / "c")
    ranks = {r.item_id: r.metadata["rank"] for r in again.recommend([], k=N_ITEMS + 3)}
    assert (ranks[8002], ranks[8003], ranks[8000]) == (5, None, None) and type(ranks[8002]) is int
    assert 8001 not in again
    again.add_items([{"item_id": 8005, "rank": 3}, {"item_id": 8006, "rank": "4"}])  # a number, a numeric string
    ranks = {r.item_id: r.metadata["rank"] for r in again.recommend([], k=N_ITEMS + 5)}
    assert (ranks[8005], ranks[8006]) == (3, 4) and type(ranks[8006]) is int
    again.add_items([{"item_id": 8004, "title": "Half", "rank": 2.5}])  # a fraction makes the column float
    assert next(r for r in again.recommend([], k=N_ITEMS + 6) if r.item_id == 8004).metadata["rank"] == 2.5


def test_records_missing_a_flag_keep_true_false_and_exact_ints(tmp_path):
    """add_items' records keep their types: pandas alone makes floats of [True, missing] and
    [2**60 + 1, missing], which turned a maturity flag into 1.0 / 0.0 for every title."""
    model, spec, items, popularity = tiny_catalogue()
    items["kids"] = np.arange(N_ITEMS) % 2 == 0
    items["code"] = [f"c{i}" for i in range(N_ITEMS)]
    changed = exported(tmp_path / "a", model, spec, items, popularity, "Flat")
    changed.add_items([{"item_id": 9000, "title": "T", "kids": True, "rank": 2**60 + 1, "code": 7},
                       {"item_id": 9001, "title": "U"}])
    changed.save(tmp_path / "b")
    for served in (changed, Recommender.load(tmp_path / "b")):
        rows = {r.item_id: r.metadata for r in served.recommend([], k=N_ITEMS + 2)}
        assert [rows[i]["kids"] for i in (1000, 1001, 9000, 9001)] == [True, False, True, None]
        assert {type(rows[i]["kids"]) for i in (1000, 1001, 9000)} == {bool}  # 1.0 == True: check the type
        assert (rows[9000]["rank"], rows[9001]["rank"], rows[9000]["code"]) == (2**60 + 1, None, "7")
        kids = served.recommend([], k=N_ITEMS + 2, filters={"kids": [True]}).item_ids
        assert len(kids) == N_ITEMS // 2 + 1 and 9000 in kids and 9001 not in kids
        assert served.recommend([], k=3, filters={"rank": [2**60 + 1]}).item_ids == [9000]
    for flag in ("yes", 1):
        with pytest.raises(ValueError, match=r"items\.kids: the catalogue's kids is true/false"):
            changed.add_items([{"item_id": 9100, "title": "X", "kids": flag}])
    with pytest.raises(ValueError, match=r"items\.year: the catalogue's year is numeric, got \[True\]"):
        changed.add_items([{"item_id": 9101, "title": "X", "year": True}])  # a float column, as an int one
    # Values pandas would type otherwise: past int64 beside a missing one, a date, float32 then a big int,
    # a number beside a numeric string.
    items["big"], items["released"], items["score"] = np.uint64(2**63), pd.Timestamp("2020-01-01"), 0.5
    typed = exported(tmp_path / "c", model, spec, items, popularity, "Flat")
    years = typed.add_items([{"item_id": 9300, "title": "Dated", "year": 2030}, {"item_id": 9301, "year": pd.NA}])
    assert years == [9300, 9301]  # a year beside a missing one (pandas' nullable ints): still embedded
    typed.remove_items(years)
    with pytest.raises(ValueError, match=r"items\.big: the values do not fit one integer type"):
        typed.add_items([{"item_id": 9400, "big": -1}, {"item_id": 9401, "big": 2**63}, {"item_id": 9402}])
    typed.add_items([{"item_id": 9200, "big": 2**63 + 5, "released": np.datetime64("2031-01-01"),
                      "score": np.float32(0.5), "rank": 3},
                     {"item_id": 9201, "score": np.int64(16777217), "rank": "4"}])
    rows = {r.item_id: r.metadata for r in typed.recommend([], k=N_ITEMS + 2)}
    assert (rows[9200]["big"], rows[9201]["big"], rows[9201]["score"]) == (2**63 + 5, None, 16777217.0)
    assert (rows[9200]["rank"], rows[9201]["rank"]) == ("3", "4")  # a new column, given mixed: text
    assert pd.Timestamp(rows[9200]["released"]) == pd.Timestamp("2031-01-01")


def test_added_metadata_keeps_each_columns_shape_and_type_through_save(tmp_path):
    """A list for a one-value column, text in a date column and a text column new to the
    catalogue: each used to be taken and then served or saved wrong."""
    model, spec, items, popularity = tiny_catalogue()
    items["studio"], items["released"], items["runtime"] = "A", pd.Timestamp("2020-01-01"), pd.Timedelta("90min")
    items["logged"] = pd.to_datetime(np.arange(N_ITEMS) + 1)  # nanoseconds: once served as an int
    items["opened"] = [datetime.date(2020, 1, 2)] * N_ITEMS  # a date32 column: served as dates
    changed = exported(tmp_path / "a", model, spec, items, popularity, "Flat")
    with pytest.raises(ValueError, match=r"items\.studio\[1\]: the catalogue's studio holds one value per title, "
                                         r"got list \['B'\]"):
        changed.add_items([{"item_id": 9000, "studio": "B"}, {"item_id": 9001, "studio": ["B"]}])
    with pytest.raises(ValueError, match=r"items\.tags\[1\]: expected a list of values \(e\.g\. \['b'\]\)"):
        changed.add_items([{"item_id": 9000, "tags": ["a"]}, {"item_id": 9001, "tags": "b"}])
    for bad in ("soon", 20200101, True):
        with pytest.raises(ValueError, match=r"items\.released: the catalogue's released holds dates and times"):
            changed.add_items([{"item_id": 9002, "released": bad}])
    with pytest.raises(ValueError, match=r"items\.runtime: the catalogue's runtime holds durations that fit "
                                         r"timedelta64\[us\], got \[90\]"):
        changed.add_items([{"item_id": 9002, "runtime": 90}])
    with pytest.raises(ValueError, match=r"items\.logged: .* that fit datetime64\[ns\], got \['9999-12-31'\]"):
        changed.add_items([{"item_id": 9002, "logged": "9999-12-31"}])  # numpy would wrap it to 1816
    assert 9000 not in changed and 9001 not in changed and 9002 not in changed
    changed.add_items([{"item_id": 9003, "released": "2031-05-01", "runtime": "2h", "label": "7", "score": 0.5},
                       {"item_id": 9004, "released": "2031-05-01T02:00:00+02:00", "label": None},
                       {"item_id": 9005, "released": pd.Timestamp("2032-01-01"), "runtime": pd.Timedelta("1h")}])
    changed.save(tmp_path / "b")
    for served in (changed, Recommender.load(tmp_path / "b")):
        rows = {r.item_id: r.metadata for r in served.recommend([], k=N_ITEMS + 3)}
        assert [pd.Timestamp(rows[i]["released"]) for i in (1000, 9003, 9004, 9005)] == [
            pd.Timestamp("2020-01-01"), pd.Timestamp("2031-05-01"), pd.Timestamp("2031-05-01"),
            pd.Timestamp("2032-01-01")]  # a zoned time in UTC
        assert [rows[i]["runtime"] for i in (1000, 9003, 9004, 9005)] == [
            pd.Timedelta("90min"), pd.Timedelta("2h"), None, pd.Timedelta("1h")]
        assert (rows[1000]["label"], rows[9003]["label"], rows[9004]["label"]) == (None, "7", None)
        assert (rows[1000]["score"], rows[9003]["score"]) == (None, 0.5)
        assert (rows[1001]["logged"], rows[9003]["logged"]) == (pd.Timestamp(2), None)
        assert rows[1000]["opened"] == datetime.date(2020, 1, 2) and type(rows[1000]["opened"]) is datetime.date
        # A text column filters as text in memory as after loading: the number 7 is its text "7".
        assert served.recommend([], k=5, filters={"label": [7]}).item_ids == [9003]
        assert served.recommend([], k=5, filters={"score": [0.5]}).item_ids == [9003]
        assert served.recommend([], k=5, filters={"released": ["2032-01-01", 2032, "x"]}).item_ids == [9005]
        assert served.recommend([], k=5, filters={"runtime": ["120 min"]}).item_ids == [9003]


def test_added_titles_that_save_could_not_write_are_refused_and_odd_columns_read_back_as_given(tmp_path):
    model, spec, items, popularity = tiny_catalogue()
    items["codes"] = [[1, None] if i == 0 else [1, 2] for i in range(N_ITEMS)]  # read as [1.0, nan] before
    items["nested"] = [[[1], [2, 3]]] * N_ITEMS  # read as numpy arrays before
    items["kind"] = pd.Categorical(["x", "y"] * (N_ITEMS // 2))
    items["info"] = [{"a": 1}] * N_ITEMS
    items["unset"] = None
    items["weight"] = np.full(N_ITEMS, 0.1, dtype=np.float32)
    items["big"] = np.full(N_ITEMS, 2**62 + 1, dtype=np.int64)
    served = exported(tmp_path / "a", model, spec, items, popularity, "Flat")
    first = served.recommend([], k=N_ITEMS)
    row = next(r for r in first if r.item_id == 1000).metadata
    assert (row["codes"], row["nested"]) == ([1, None], [[1], [2, 3]])
    assert served.recommend([], k=5, filters={"unset": [None]}).item_ids == []  # None matches nothing, as elsewhere
    assert len(served.recommend([], k=N_ITEMS, filters={"weight": [0.1]})) == N_ITEMS  # float32(0.1) is 0.1 here
    # Each was accepted before, and then save() failed with a pyarrow error:
    for column, value in (("codes", ["x"]), ("kind", 5), ("info", 5), ("nested", [1])):
        with pytest.raises(ValueError, match=rf"items\.{column}: the new values cannot be stored beside the "):
            served.add_items([{"item_id": 9000, "title": "N", column: value}])
    with pytest.raises(ValueError, match=r"items\.big: the catalogue's big holds integers past 2\*\*53"):
        served.add_items([{"item_id": 9000, "title": "N", "big": 2.5}])  # 2**62 + 1 would read 2**62
    assert 9000 not in served
    served.add_items([{"item_id": 9001, "title": "M", "codes": [3, None], "kind": "z", "info": {"a": 2}}])
    served.save(tmp_path / "b")
    for copy in (served, Recommender.load(tmp_path / "b")):
        rows = {r.item_id: r.metadata for r in copy.recommend([], k=N_ITEMS + 1)}
        assert (rows[9001]["codes"], rows[9001]["kind"], rows[1000]["codes"]) == ([3, None], "z", [1, None])
        assert rows[1001]["big"] == 2**62 + 1


@pytest.mark.parametrize("factory", ["Flat", "HNSW16", "IVF8,Flat"])
def test_save_after_changes_serves_exactly_the_same(tmp_path, factory):
    model, spec, items, popularity = tiny_catalogue()
    changed = exported(tmp_path / "a", model, spec, items, popularity, factory)
    ids = items["item_id"].tolist()
    changed.add_items([{"item_id": 8000, "title": "Added", "genres": ["Comedy"], "year": 2025.0}])
    changed.remove_items(ids[:5])
    changed.add_items([{"item_id": ids[0], "title": "Back again", "genres": ["Drama"], "year": 2026.0}])
    built = changed.manifest["versions"]
    manifest_path = tmp_path / "a" / "manifest.json"  # as if built by older libraries
    manifest_path.write_text(json.dumps({**changed.manifest, "versions": {**built, "torch": "2.0.0"}}))
    changed.manifest = read_manifest(tmp_path / "a", verify=False)
    manifest = changed.save(tmp_path / "b")
    assert manifest["saved_from"]["active_titles"] == N_ITEMS - 5 + 2
    assert manifest["versions"] == built and manifest["saved_from"]["versions"]["torch"] == "2.0.0"  # written now
    saved = Recommender.load(tmp_path / "b")
    assert saved.n_items == changed.n_items
    histories = [ids[i:i + 4] for i in range(0, 60, 6)] + [[8000, ids[1]], []]
    for history in histories:
        assert saved.recommend(history, k=15).item_ids == changed.recommend(history, k=15).item_ids
    assert saved.similar_items(8000, k=5).item_ids == changed.similar_items(8000, k=5).item_ids
    served = set(saved.recommend(ids[10:12], k=N_ITEMS + 10).item_ids)
    assert not served & set(ids[1:5]) and {8000, ids[0]} <= served
    assert next(r for r in saved.recommend([], k=N_ITEMS + 10) if r.item_id == ids[0]).title == "Back again"


def test_popularity_fallback_respects_filters(recommender, artifact):
    items, popularity = artifact[2], artifact[3]
    romance = np.array(["Romance" in g for g in items["genres"]])
    order = [i for i in np.argsort(-popularity, kind="stable") if romance[i]]
    result = recommender.recommend([], k=5, filters={"genres": ["Romance"]})
    assert result.source == "popularity"
    assert result.item_ids == items["item_id"].to_numpy()[order[:5]].tolist()


def test_one_members_feature_codes_equal_the_training_encoding():
    from streamrec.data.features import UserFeatureSpec

    users = pd.DataFrame({"user_id": range(12), "plan": list("abcab") + [None] * 7,
                          "age": [15, 22, 35, 41, 58, 63, 70, 80, 18, 29, 33, 47]})
    spec = UserFeatureSpec.fit(users.drop(columns="user_id"), max_categories=5, numeric_bins=4)
    assert set(spec.edges) == {"age"} and set(spec.vocabularies) == {"plan"}
    probes = pd.DataFrame({"plan": ["a", "c", "zzz", None], "age": [15, spec.edges["age"][0], 99, 40]})
    expected = spec.encode(probes).tolist()
    members = [{k: v for k, v in row.items() if v is not None} for row in probes.to_dict("records")]
    assert [spec.encode_member(m) for m in members] == expected
    assert spec.encode_member(None) == [0, 0]
    with pytest.raises(ValueError, match=r"member_features\['age'\]: expected a finite number"):
        spec.encode_member({"age": "old"})


@pytest.mark.parametrize("pooling", ["mean", "attention"])
@pytest.mark.parametrize("options", [
    {},
    {"normalize": False, "use_watch_fraction": False, "use_recency": False},
    {"use_watch_fraction": False},
    {"use_recency": False, "normalize": False},
    {"user_feature_cardinalities": [3, 5], "n_devices": 4, "use_hour": True},
])
@pytest.mark.parametrize("given", [("watch", "age"), (), ("watch",), ("age",)])
def test_numpy_query_tower_equals_the_torch_tower(pooling, options, given):
    from streamrec.inference.query_encoder import NumpyQueryTower
    from streamrec.models.two_tower import QueryTower

    torch.manual_seed(0)
    config = TwoTowerConfig(n_items=300, dim=16, hidden=32, max_history=12, pooling=pooling, **options)
    tower = QueryTower(config).eval()
    with torch.no_grad():  # non-zero biases, so a dropped term would show
        for parameter in tower.parameters():
            parameter.add_(0.1 * torch.randn_like(parameter))
    numpy_tower = NumpyQueryTower(tower)
    g = torch.Generator().manual_seed(1)
    b = 9
    history = torch.randint(1, 301, (b, 12), generator=g)
    history[:, :4] = 0  # left padding
    history[2] = 0  # an empty history
    history[5, :11] = 0  # a single title
    # Not given: what the recommender gives torch for a request without them.
    watch = torch.rand(b, 12, generator=g) if "watch" in given else torch.ones(b, 12)
    age = torch.rand(b, 12, generator=g) * 3000 - 1 if "age" in given else torch.zeros(b, 12)
    inputs = [history, watch, age]
    if config.user_feature_cardinalities:
        inputs += [torch.randint(0, 3, (b, 2), generator=g), torch.randint(0, 5, (b,), generator=g),
                   torch.randint(0, 25, (b,), generator=g)]
    with torch.inference_mode():
        expected = tower(*inputs).numpy()
    for i in range(b):  # each member alone, unpadded, as one recommend() call reads it
        kept = history[i] > 0
        extra = [inputs[3][i].numpy(), int(inputs[4][i]), int(inputs[5][i])] if len(inputs) > 3 else []
        got = numpy_tower(history[i][kept].numpy(), watch[i][kept].numpy() if "watch" in given else None,
                          age[i][kept].numpy() if "age" in given else None, *extra)
        assert got.dtype == np.float32 and got.shape == (1, 16)
        np.testing.assert_allclose(got[0], expected[i], rtol=1e-5, atol=1e-6)


def test_numpy_query_tower_refuses_the_transformer_encoder():
    from streamrec.inference.query_encoder import NumpyQueryTower, supports
    from streamrec.models.two_tower import QueryTower

    tower = QueryTower(TwoTowerConfig(n_items=10, dim=8, hidden=16, pooling="transformer"))
    assert not supports(tower)
    with pytest.raises(ValueError, match="transformer"):
        NumpyQueryTower(tower)


def test_a_transformer_model_is_served_by_the_torch_tower(tmp_path):
    torch.manual_seed(0)
    config = TwoTowerConfig(n_items=50, dim=8, hidden=16, max_history=6, pooling="transformer", text_buckets=0)
    model = TwoTower(config).eval()
    items = pd.DataFrame({"item_id": np.arange(50), "title": [f"T{i}" for i in range(50)]})
    spec = {"item_map": {"kind": "int", "ids": list(range(50))},
            "item_features": {"genre_vocab": [], "year_mean": 0.0, "year_std": 1.0, "text_buckets": 0,
                              "max_tokens": config.max_tokens},
            "user_features": {"columns": [], "vocabularies": {}, "edges": {}}, "device_vocab": [],
            "history_mode": "set"}
    export_artifact(tmp_path / "a", model, spec, items, np.ones(50), model.all_item_vectors().numpy()[:5],
                    factory="Flat", progress=False)
    recommender = Recommender.load(tmp_path / "a")
    assert recommender._encode is None
    history = [3, 7, 11]
    padded = torch.zeros(1, 6, dtype=torch.long)
    padded[0, 3:] = torch.tensor(history) + 1
    with torch.no_grad():
        scores = (model.query({"history": padded, "history_watch": (padded > 0).float(),
                               "history_age_days": torch.zeros(1, 6)}) @ model.all_item_vectors().T)[0]
    scores[history] = float("-inf")
    assert recommender.recommend(history, k=5).item_ids == torch.topk(scores, 5).indices.tolist()


def test_datetimes_serve_as_their_unix_seconds(recommender, artifact):
    """A datetime64[ns] array was read as nanoseconds (ages of ~10^9 days), pandas' and
    Python's datetimes were refused."""
    ids = artifact[2]["item_id"].tolist()[:4]
    seconds = [1.6e9 + 86400 * 30 * j for j in range(4)]  # a month apart: different recency buckets
    now = seconds[-1] + 3 * 3600.5
    expected = recommender.recommend(ids, k=8, timestamps=seconds, now=now)
    stamps = pd.to_datetime(seconds, unit="s")  # naive: read as UTC
    zoned = pd.Series(stamps.tz_localize("UTC").tz_convert("Europe/Stockholm"))
    nanoseconds = stamps.values.astype("datetime64[ns]")
    for timestamps in (nanoseconds, stamps.values.astype("datetime64[s]"), zoned, list(stamps.to_pydatetime()),
                       list(nanoseconds), stamps):
        for when in (pd.Timestamp(now, unit="s"), np.datetime64(int(now * 1000), "ms"),
                     datetime.datetime.fromtimestamp(now, datetime.timezone.utc)):
            got = recommender.recommend(ids, k=8, timestamps=timestamps, now=when)
            assert (got.item_ids, got.scores) == (expected.item_ids, expected.scores)
    latest = recommender.recommend(ids, k=8, timestamps=seconds)  # now: the latest view
    assert recommender.recommend(ids, k=8, timestamps=stamps.values).scores == latest.scores
    batch = recommender.recommend_batch([ids, ids[:2]], k=8, timestamps=[stamps.values, stamps.values[:2]],
                                        now=np.array([int(now * 1e9)] * 2, dtype="datetime64[ns]"))
    assert batch[0].scores == expected.scores
    assert batch[1].scores == recommender.recommend(ids[:2], k=8, timestamps=seconds[:2], now=now).scores
    with pytest.raises(ValueError, match=r"timestamps \(history\)\[1\] is NaT"):
        recommender.recommend(ids[:2], timestamps=[stamps[0], pd.NaT])
    with pytest.raises(ValueError, match=r"timestamps \(history\): expected unix seconds or datetimes"):
        recommender.recommend(ids[:2], timestamps=[stamps[0], seconds[1]])
    with pytest.raises(ValueError, match=r"watch_fractions \(history\): expected numbers"):
        recommender.recommend(ids[:2], watch_fractions=stamps.values[:2])


def test_datetimes_past_2262_and_now_in_any_array_shape(recommender, artifact):
    """Past 2262 (nanoseconds' end) pandas' OutOfBoundsDatetime escaped; a 0-d or 2-d
    datetime64 `now`, or a DatetimeIndex, failed with an AttributeError / TypeError or was refused."""
    ids = artifact[2]["item_id"].tolist()[:3]
    far = 16725225600.0  # 2500-01-01
    seconds = [far, far + 60, far + 120]
    expected = recommender.recommend(ids, k=5, timestamps=seconds, now=far + 3600)
    got = recommender.recommend(ids, k=5, timestamps=[datetime.datetime(2500, 1, 1, 0, m) for m in (0, 1, 2)],
                                now=np.datetime64("2500-01-01T01:00", "s"))
    assert got.scores == expected.scores
    when = np.datetime64("2500-01-01T01:00", "s")
    for now in (np.array(when), pd.DatetimeIndex([when, when]), np.array([when, when])):
        batch = recommender.recommend_batch([ids, ids], k=5, timestamps=[seconds, seconds], now=now)
        assert [b.scores for b in batch] == [expected.scores] * 2
    with pytest.raises(ValueError, match=r"^now: expected one value, or one per history"):
        recommender.recommend_batch([ids, ids], k=5, now=np.array([[when, when]]))
