"""``build_index(cfg)``: trained checkpoint -> serving artifact (the body of ``scripts/build_index.py``)."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from omegaconf import DictConfig, OmegaConf

from streamrec.cli import build_dataset, markdown_table
from streamrec.inference.export import export_artifact
from streamrec.training.datamodule import RetrievalDataModule
from streamrec.training.module import TwoTowerModule

log = logging.getLogger(__name__)


def resolve_checkpoint(checkpoint: str | None, checkpoint_dir: str | Path, option: str = "checkpoint=") -> Path:
    """``checkpoint`` if given, else the best checkpoint of the last ``train.py`` run.
    ``option`` is how the calling script takes a checkpoint, for the messages."""
    if checkpoint:
        path = Path(checkpoint)
        if not path.is_file():
            raise FileNotFoundError(f"{option}{checkpoint}: no such file.")
        return path
    record = Path(checkpoint_dir) / "last_run.json"
    if not record.is_file():
        raise FileNotFoundError(f"{record} not found: run `python scripts/train.py` first, or pass "
                                f"{option}path/to/model.ckpt.")
    path = Path(json.loads(record.read_text())["best_checkpoint"])
    if not path.is_file():
        raise FileNotFoundError(f"{record} names {path}, which no longer exists; pass {option}... .")
    return path
    record = Path(checkpoint_dir) / "last_run.json"
    if not record.is_file():
        raise FileNotFoundError(f"{record} not found: run `python scripts/train.py` first, or pass "
                                "checkpoint=path/to/model.ckpt.")
    path = Path(json.loads(record.read_text())["best_checkpoint"])
    if not path.is_file():
        raise FileNotFoundError(f"{record} names {path}, which no longer exists; pass checkpoint=... .")
    return path


def build_index(cfg: DictConfig) -> tuple[dict[str, Any], dict[str, Any]]:
    """Build the artifact described by ``cfg`` (see ``configs/build_index.yaml``).

    The catalogue comes from the checkpoint's own data config unless ``data=`` is given;
    held-out queries for tuning are the test members' query vectors.
    Returns the manifest and the objects built (module, data).
    """
    index_cfg = cfg.index
    for name, low in (("k", 1), ("tuning_queries", 1)):
        value = index_cfg.get(name)
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"index.{name}={value!r}: expected an integer >= {low}.")
    target = index_cfg.get("target_recall")
    if isinstance(target, bool) or not isinstance(target, (int, float)) or not 0 < target <= 1:
        raise ValueError(f"index.target_recall={target!r}: expected a number in (0, 1], e.g. 0.95.")
    for name in ("factory", "output_dir"):
        if not isinstance(index_cfg.get(name), str) or not index_cfg.get(name).strip():
            raise ValueError(f"index.{name}={index_cfg.get(name)!r}: expected a non-empty string "
                             f"(e.g. index.{name}={'auto' if name == 'factory' else 'checkpoints/recommender'}).")
    if isinstance(cfg.get("seed"), bool) or not isinstance(cfg.get("seed"), int) or cfg.seed < 0:
        raise ValueError(f"seed={cfg.get('seed')!r}: expected a non-negative integer.")
    checkpoint = resolve_checkpoint(cfg.get("checkpoint"), cfg.paths.checkpoint_dir)
    try:
        module = TwoTowerModule.load_from_checkpoint(checkpoint, map_location="cpu").eval()
    except Exception as error:  # torch and Lightning raise KeyError, OSError, RuntimeError, pickle errors...
        raise ValueError(f"checkpoint={checkpoint}: not a readable streamrec training checkpoint "
                         f"({type(error).__name__}: {error}); pass a .ckpt written by scripts/train.py.") from None
    spec = module.data_spec
    if not spec:
        raise ValueError(f"{checkpoint}: carries no data spec (id maps); retrain it with this version of streamrec.")
    data_cfg = cfg.get("data") or spec.get("data_config")
    if data_cfg is None:
        raise ValueError(f"{checkpoint}: does not record its data config; pass the one it was trained with, "
                         "e.g. data=movielens data.root=... .")
    data = build_dataset(OmegaConf.create(OmegaConf.to_container(data_cfg, resolve=True))
                         if isinstance(data_cfg, DictConfig) else OmegaConf.create(data_cfg))
    if data.item_map.to_dict() != spec["item_map"]:
        raise ValueError(f"the data config gives a different catalogue than {checkpoint} was trained on; "
                         "pass the same data config as training.")
    if index_cfg.k > data.n_items:
        raise ValueError(f"index.k={index_cfg.k}: the catalogue has {data.n_items} titles; choose k <= "
                         f"{data.n_items}.")
    queries, watched = _tuning_queries(module, data, spec, index_cfg.tuning_queries, cfg.seed)
    output = Path(index_cfg.output_dir)
    manifest = export_artifact(
        output, module.model, spec, data.items, data.item_popularity(), queries, factory=index_cfg.factory,
        target_recall=index_cfg.target_recall, k=index_cfg.k, seed=cfg.seed, exclude=watched,
    )
    info = manifest["index"]
    summary = pd.DataFrame([{
        "titles": info["n_items"], "dim": manifest["score"]["dim"], "factory": info["factory"],
        "parameter": f"{info['search_parameter']}={info['search_value']}" if info["search_parameter"] else "exact",
        f"recall@{info['k']}": info["measured_recall"], "build s": info["build_seconds"],
    }]).set_index("titles")
    print(f"\nartifact {output} from {checkpoint}:\n\n{markdown_table(summary, '.3f')}\n")
    print(f"recall vs latency: {output / 'recall_latency.png'}")
    return manifest, {"module": module, "data": data, "checkpoint": checkpoint}


def _tuning_queries(module: TwoTowerModule, data, spec: dict[str, Any], n: int,
                    seed: int) -> tuple[np.ndarray, list[np.ndarray]]:
    """Query vectors of up to ``n`` test members (held out from training) and the titles
    each has watched (excluded when serving them)."""
    datamodule = RetrievalDataModule(data, max_history=module.config.max_history,
                                     history_mode=spec.get("history_mode", "set"))
    users = datamodule.eval_users("test")
    if len(users) == 0:
        raise ValueError("the split has no test members to tune the index on.")
    users = np.random.default_rng(seed).permutation(users)[:n]
    with torch.inference_mode():
        batch = datamodule.eval_batch(users, "test")
        queries = module.model.query(batch).numpy()
    watched = [row[row >= 0] for row in batch["exclude"].numpy()]
    return queries, watched
