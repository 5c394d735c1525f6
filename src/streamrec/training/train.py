"""``train(cfg)``: data -> two-tower training -> best checkpoint -> test metrics beside baselines.

A plain function so tests and notebooks call it directly; ``scripts/train.py`` is only the
``@hydra.main`` wrapper around it.
"""

from __future__ import annotations

import inspect
import itertools
import json
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytorch_lightning as pl
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from streamrec.baselines import evaluate_baselines, ranking_inputs
from streamrec.cli import build_dataset, markdown_table
from streamrec.data import SplitData
from streamrec.data.features import build_item_features
from streamrec.data.schema import atomic_write_text
from streamrec.evaluation import evaluate_ranking
from streamrec.training.cuda_checks import runtime_cuda_checks_without_gpu
from streamrec.training.datamodule import RetrievalDataModule
from streamrec.training.module import TwoTowerModule

log = logging.getLogger(__name__)


def _checkpoint_run(ckpt_path: str | None, checkpoint_dir: str, new_name: str) -> str:
    """``run_name``'s default: the run folder of a checkpoint resumed from ``checkpoint_dir``,
    else a new name.

    A resumed run keeps writing into its own folder, so its best checkpoint so far (kept in
    that folder's checkpoint state) still competes with the epochs that follow. A
    checkpoint from elsewhere (or Lightning's ``last`` / ``best``) starts a new folder.
    """
    if ckpt_path:
        # Lexical paths, not resolved ones: a run folder may be a link to another disk.
        run = Path(os.path.abspath(Path(ckpt_path).expanduser())).parent
        if run.parent == Path(os.path.abspath(Path(checkpoint_dir).expanduser())):
            return run.name
    return _claimed(Path(checkpoint_dir).expanduser(), new_name)


def _claimed(checkpoint_dir: Path, name: str) -> str:
    """``name``, or ``name-1``, ``name-2`` ...: the first run folder this process creates
    (runs started in the same second, or the jobs of a Hydra multirun, which share one
    ``${now:}``, wrote into one folder and crashed)."""
    checkpoint_dir.mkdir(parents=True, exist_ok=True)
    for n in itertools.count():
        candidate = name if n == 0 else f"{name}-{n}"
        try:
            (checkpoint_dir / candidate).mkdir()
        except FileExistsError:
            continue
        return candidate
    raise AssertionError("unreachable")


OmegaConf.register_new_resolver("checkpoint_run", _checkpoint_run, use_cache=True, replace=True)


def model_inputs(data: SplitData, datamodule: RetrievalDataModule, text_buckets: int, max_tokens: int,
                 use_hour: bool = True):
    """Data-derived model sizes and the content buffers of the catalogue.

    ``use_hour`` is the config's choice; the hour is used only if the data also has times.
    """
    features = build_item_features(data.items, text_buckets=text_buckets, max_tokens=max_tokens)
    derived = {
        "n_items": data.n_items,
        "n_genres": len(features.genre_vocab),
        "text_buckets": text_buckets,
        "max_tokens": max_tokens,
        "max_history": datamodule.max_history,
        "user_feature_cardinalities": datamodule.user_spec.cardinalities,
        "n_devices": datamodule.n_devices,
        "use_hour": use_hour and datamodule.has_time,
    }
    buffers = {
        "genres": features.genres, "year": features.year, "year_known": features.year_known,
        "tokens": features.tokens, "has_id": torch.from_numpy(data.item_popularity() > 0),
    }
    return derived, buffers, features


def data_spec(data: SplitData, datamodule: RetrievalDataModule, features,
              data_config: dict[str, Any] | None = None) -> dict[str, Any]:
    """Raw-id maps and feature vocabularies a checkpoint needs to serve raw ids, and the
    data config that rebuilds its catalogue (for ``scripts/build_index.py``)."""
    spec = datamodule.user_spec
    return {
        "item_map": data.item_map.to_dict(),
        "item_features": features.encoder_args(),
        "user_features": {"columns": spec.columns, "vocabularies": spec.vocabularies, "edges": spec.edges},
        "device_vocab": datamodule.device_vocab,
        "history_mode": datamodule.history_mode,
        "data_config": data_config,
    }


def score_function(module: TwoTowerModule, datamodule: RetrievalDataModule, part: str):
    """``users [B] -> scores [B, n_items]`` with histories as of ``part`` (``val`` / ``test``)."""
    module.eval()
    items = module.model.all_item_vectors()

    @torch.no_grad()
    def score(users: torch.Tensor) -> torch.Tensor:
        batch = datamodule.eval_batch(users.numpy(), part, with_targets=False)
        return module.model.query(batch) @ items.T

    return score


def evaluate_model(module: TwoTowerModule, datamodule: RetrievalDataModule, ks: tuple[int, ...],
                   part: str = "test") -> dict[str, float]:
    """Full-ranking metrics of ``module`` on ``part`` with everything seen before masked."""
    target, seen, popularity, genres = ranking_inputs(datamodule.data, part)
    with torch.inference_mode():
        return evaluate_ranking(score_function(module, datamodule, part), target, exclude=seen, ks=ks,
                                item_popularity=popularity, item_genres=genres)


def evaluate_cold_start(module: TwoTowerModule, datamodule: RetrievalDataModule, k: int = 20) -> pd.DataFrame:
    """Recall@k / NDCG@k ranking only the titles held out of training entirely.

    The model's vectors for those titles come from their content alone (they have no
    trained id). Baselines: popularity known from content (each cold title scored by the
    mean training popularity of warm titles sharing its genres: what a catalogue team
    can know before release), popularity measured on the held-out period itself (an
    oracle nobody has at release time), and a random order.
    """
    data = datamodule.data
    cold = data.cold_items()
    if len(cold) == 0:
        raise ValueError("the split has no cold titles; set data.split.holdout_items > 0.")
    k = min(k, len(cold))
    test = data.matrix("test")[:, cold]
    model_scores = score_function(module, datamodule, "test")
    oracle_popularity = torch.from_numpy(np.asarray(test.sum(axis=0)).ravel().astype(np.float32))
    genres, _ = data.genre_matrix()
    popularity = data.item_popularity().astype(np.float64)
    warm = popularity > 0
    genre_mean = (genres[warm].T @ popularity[warm]) / np.maximum(np.asarray(genres[warm].sum(axis=0)).ravel(), 1)
    n_genres = np.maximum(np.asarray(genres[cold].sum(axis=1)).ravel(), 1)
    genre_popularity = torch.from_numpy((genres[cold] @ genre_mean / n_genres).astype(np.float32))
    generator = torch.Generator().manual_seed(0)
    scorers = {
        "TwoTower (content only)": lambda users: model_scores(users)[:, cold],
        "Popularity by genre (known at release)": lambda users: genre_popularity.expand(len(users), -1).clone(),
        "Popularity (oracle, held-out period)": lambda users: oracle_popularity.expand(len(users), -1).clone(),
        "Random": lambda users: torch.rand(len(users), len(cold), generator=generator),
    }
    rows = []
    with torch.inference_mode():
        for name, scorer in scorers.items():
            metrics = evaluate_ranking(scorer, test, exclude=None, ks=(k,))
            rows.append({"model": name, f"recall@{k}": metrics[f"recall@{k}"], f"ndcg@{k}": metrics[f"ndcg@{k}"],
                         "members": metrics["n_users"], "cold titles": len(cold)})
    return pd.DataFrame(rows).set_index("model")


def _check_run_settings(cfg: DictConfig) -> None:
    """Settings that would otherwise fail after an epoch of training, or export a stale model."""
    epochs = cfg.trainer.get("max_epochs")
    if epochs is not None and (epochs == 0 or epochs < -1):
        raise ValueError(f"trainer.max_epochs={epochs}: train at least one epoch (-1: until early stopping); "
                         "the checkpoint build_index.py exports comes from an epoch.")
    ks = cfg.model.get("eval_ks")
    ks = inspect.signature(TwoTowerModule).parameters["eval_ks"].default if ks is None else list(ks)
    for name, cut_offs in (("model.eval_ks", ks), ("eval.ks", list(cfg.eval.ks))):
        if not cut_offs or any(isinstance(k, bool) or not isinstance(k, int) or k < 1 for k in cut_offs):
            raise ValueError(f"{name}={cut_offs}: expected a non-empty list of cut-offs >= 1, e.g. [10, 20].")
    logged = [f"val/{metric}@{k}" for metric in ("ndcg", "recall") for k in ks]
    if cfg.get("monitor") not in logged:  # early stopping and the best checkpoint follow it
        raise ValueError(f"monitor={cfg.get('monitor')}: the model logs {logged}; choose one of them, or add its "
                         "K to model.eval_ks.")
    if cfg.model.get("lr_schedule") == "one_cycle" and (epochs is None or epochs == -1):
        raise ValueError(f"model.lr_schedule=one_cycle with trainer.max_epochs={epochs}: the schedule spans a fixed "
                         "number of epochs; set trainer.max_epochs (e.g. 20), or use model.lr_schedule=constant.")


def train(cfg: DictConfig) -> tuple[dict[str, float], dict[str, Any]]:
    """Train and test the two-tower model described by ``cfg`` (see ``configs/train.yaml``).

    Returns the test metrics (``test/ndcg@10``, ...) and the objects built (data,
    datamodule, module, trainer, and the comparison table).
    """
    _check_run_settings(cfg)
    pl.seed_everything(cfg.seed, workers=True)
    data = build_dataset(cfg.data)
    log.info("data %s: %s", data.name, data.summary())
    if len(data.val) == 0:
        raise ValueError(
            f"{data.name}: the split has no validation part, which early stopping and checkpoint "
            "selection need. Give data.split.ratios three values, e.g. [0.8, 0.1, 0.1]."
        )
    if len(data.test) == 0:
        raise ValueError(f"{data.name}: the split has no test part, which the run ends by evaluating. Give "
                         "data.split.ratios a test share, e.g. [0.8, 0.1, 0.1].")
    for name, ks in (("model.eval_ks", cfg.model.get("eval_ks") or ()), ("eval.ks", cfg.eval.ks)):
        if any(k > data.n_items for k in ks):
            raise ValueError(f"{name}={list(ks)}: the catalogue has {data.n_items} titles; choose cut-offs up to "
                             f"{data.n_items}.")
    # Passed after instantiation: Hydra would turn the SplitData dataclass into a config.
    datamodule: RetrievalDataModule = instantiate(cfg.datamodule, _partial_=True)(data=data)
    derived, buffers, features = model_inputs(data, datamodule, cfg.features.text_buckets, cfg.features.max_tokens,
                                              use_hour=cfg.model.model_config.get("use_hour", True))
    model_config = {**OmegaConf.to_container(cfg.model.model_config, resolve=True), **derived}
    module: TwoTowerModule = instantiate(
        cfg.model, model_config=model_config, item_features=buffers,
        item_probability=datamodule.item_probability(), _convert_="all",
    )
    module.data_spec = data_spec(data, datamodule, features, OmegaConf.to_container(cfg.data, resolve=True))
    callbacks = [instantiate(c) for c in (cfg.get("callbacks") or {}).values() if c is not None]
    loggers = [instantiate(c) for c in (cfg.get("logger") or {}).values() if c is not None]
    trainer: pl.Trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)
    with runtime_cuda_checks_without_gpu():
        trainer.fit(module, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"))

    best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
    if best:
        log.info("best checkpoint %s (%s = %.4f)", best, trainer.checkpoint_callback.monitor,
                 float(trainer.checkpoint_callback.best_model_score))
        module = TwoTowerModule.load_from_checkpoint(best, map_location="cpu")
    objects: dict[str, Any] = {"data": data, "datamodule": datamodule, "module": module, "trainer": trainer}
    if not trainer.is_global_zero:
        return {}, objects

    ks = tuple(cfg.eval.ks)
    metrics = evaluate_model(module, datamodule, ks)
    test_metrics = {f"test/{name}": float(value) for name, value in metrics.items()}
    held_out = cfg.data.split.get("holdout_items", 0) > 0
    cold_table = evaluate_cold_start(module, datamodule) if held_out else None
    if cold_table is not None:
        recall = cold_table.filter(like="recall@").iloc[0]
        test_metrics[f"test/cold_{recall.index[0]}"] = float(recall.iloc[0])
    for logger in trainer.loggers:
        logger.log_metrics(test_metrics, step=trainer.global_step)
        logger.save()

    table = pd.DataFrame([{"model": "TwoTower", **metrics}]).set_index("model")
    if cfg.eval.get("baselines"):
        models = {name: instantiate(spec) for name, spec in cfg.eval.baselines.items()}
        table = pd.concat([table, evaluate_baselines(data, models, ks=ks).drop(columns=["fit_s", "eval_s"])])
    output_dir = Path(cfg.paths.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    table.to_csv(output_dir / "test_metrics.csv")
    atomic_write_text(output_dir / "test_metrics.json", json.dumps(test_metrics, indent=2))
    if cold_table is not None:
        cold_table.to_csv(output_dir / "cold_start.csv")
    if best:
        _record_last_run(Path(cfg.paths.checkpoint_dir), best, output_dir)

    shown = [c for c in cfg.eval.show if c in table.columns]
    print(f"\n{data.name} test split ({data.summary()}), full ranking, seen titles masked:\n")
    print(markdown_table(table[shown]))
    if cold_table is not None:
        print("\ncold start: ranking only the titles held out of training entirely\n")
        print(markdown_table(cold_table))
    print(f"\nbest checkpoint: {best or '(none)'}\nmetrics: {output_dir / 'test_metrics.csv'}")
    objects["table"], objects["cold_start"] = table, cold_table
    return test_metrics, objects


def _record_last_run(checkpoint_dir: Path, best: str, output_dir: Path) -> None:
    """``checkpoints/last_run.json`` names the best checkpoint of the latest run."""
    record = {"best_checkpoint": str(Path(best).resolve()), "run_dir": str(output_dir.resolve())}
    atomic_write_text(checkpoint_dir / "last_run.json", json.dumps(record, indent=2))
