"""Turn a trained :class:`~streamrec.models.TwoTower` into a serving artifact directory."""

from __future__ import annotations

import logging
import platform
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import pandas as pd
import torch

import streamrec
from streamrec.index.faiss_index import auto_factory, build_index, plot_sweep, search_parameter, sweep_records, tune
from streamrec.inference.artifact import write_artifact
from streamrec.models.two_tower import TwoTower

log = logging.getLogger(__name__)


def library_versions() -> dict[str, str]:
    """The versions an artifact's files are written with (its manifest's ``versions``)."""
    return {"streamrec": streamrec.__version__, "torch": torch.__version__, "faiss": faiss.__version__,
            "numpy": np.__version__, "python": platform.python_version()}


def export_artifact(
    path: str | Path,
    model: TwoTower,
    data_spec: dict[str, Any],
    items: pd.DataFrame,
    popularity: np.ndarray,
    queries: np.ndarray,
    factory: str = "auto",
    target_recall: float = 0.95,
    k: int = 10,
    seed: int = 0,
    progress: bool = True,
    item_vectors: np.ndarray | None = None,
    exclude: list[np.ndarray] | None = None,
) -> dict[str, Any]:
    """Embed the catalogue, build and tune the index, write the artifact atomically.

    Args:
        path: the artifact directory (replaced atomically if it exists).
        model: the trained two-tower model (its content buffers cover the whole catalogue,
            titles never seen in training included).
        data_spec: the checkpoint's ``streamrec_data_spec`` (id map, vocabularies).
        items: catalogue metadata, row ``i`` = item index ``i``, with an ``item_id`` column.
        popularity: [n_items] training views per title (popularity fallback).
        queries: [Q, d] held-out query vectors for tuning the search parameter.
        factory: FAISS factory string or ``auto`` (by catalogue size).
        target_recall: recall@k against exact search that the search parameter must reach.
        item_vectors: precomputed [n_items, d] vectors (default: computed from ``model``).
        exclude: per query, the item rows its member watched: tuning then measures
            recall@k of what is served (watched titles excluded), not of the raw top-k.

    Returns the manifest.
    """
    n = model.config.n_items
    if len(items) != n or len(popularity) != n:
        raise ValueError(f"items ({len(items)} rows) and popularity ({len(popularity)}) must have one entry per "
                         f"catalogue title ({n}).")
    if "item_id" not in items.columns:
        raise ValueError("items: the 'item_id' column (raw ids, row i = item index i) is required.")
    if not 0 < target_recall <= 1:
        raise ValueError(f"target_recall={target_recall}: choose a value in (0, 1].")
    started = time.perf_counter()
    model = model.eval()
    if item_vectors is None:
        item_vectors = model.all_item_vectors(progress=progress).numpy()
    item_vectors = np.ascontiguousarray(item_vectors, dtype=np.float32)
    factory = auto_factory(n) if factory == "auto" else factory
    embedded = time.perf_counter()
    index = build_index(item_vectors, factory, seed=seed, progress=progress)
    built = time.perf_counter()
    value, measured, sweep = tune(index, item_vectors, queries, k=min(k, n), target_recall=target_recall,
                                  exclude=exclude)
    parameter = search_parameter(index)
    if measured < target_recall:
        log.warning("%s reached recall@%d %.3f < target %.3f at best; consider another factory string.",
                    factory, k, measured, target_recall)

    def write_files(tmp: Path) -> dict[str, Any]:
        torch.save(model.query_tower.state_dict(), tmp / "query_tower.pt")
        item_state = {key: value for key, value in model.item_tower.state_dict().items()
                      if not key.startswith("id_embedding.")}
        torch.save(item_state, tmp / "item_tower.pt")
        np.save(tmp / "item_vectors.npy", item_vectors, allow_pickle=False)
        faiss.write_index(index, str(tmp / "index.faiss"))
        frame = items.reset_index(drop=True).assign(popularity=np.asarray(popularity, dtype=np.int64))
        frame.to_parquet(tmp / "items.parquet", index=False)
        plot_sweep(sweep, parameter, value, tmp / "recall_latency.png",
                   title=f"{factory}, {n:,} titles: recall@{k} vs latency", target_recall=target_recall)
        return {
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "versions": library_versions(),
            "model": asdict(model.config),
            "score": {"metric": "inner_product", "normalized": model.config.normalize, "dim": model.config.dim},
            "index": {"factory": factory, "search_parameter": parameter, "search_value": value,
                      "k": k, "target_recall": target_recall, "measured_recall": measured,
                      "tuning_queries": len(queries), "watched_titles_excluded": exclude is not None, "n_items": n,
                      "embed_seconds": round(embedded - started, 3), "build_seconds": round(built - embedded, 3),
                      "sweep": sweep_records(sweep)},
            "data": {
                "item_id_kind": data_spec["item_map"]["kind"],
                "item_features": data_spec["item_features"],
                "user_features": data_spec["user_features"],
                "device_vocab": data_spec["device_vocab"],
                "history_mode": data_spec["history_mode"],
            },
        }

    manifest = write_artifact(path, write_files)
    searched = f"{parameter}={value}" if parameter else "exact search"
    log.info("artifact %s: %s, %s, recall@%d %.3f", path, factory, searched, k, measured)
    return manifest
