"""End-to-end: every YAML instantiates, train(cfg) runs on a tiny simulator, resume, determinism, DDP."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.utils import instantiate
from omegaconf import DictConfig, open_dict

from streamrec.training.train import train

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
TINY = [
    "data.source.n_users=200", "data.source.n_items=120", "data.source.n_interactions=4000",
    "datamodule.batch_size=256", "datamodule.max_history=20", "model.model_config.dim=16",
    "model.model_config.hidden=32", "features.text_buckets=256", "trainer.max_epochs=2",
    "trainer.accelerator=cpu", "trainer.enable_progress_bar=false", "trainer.enable_model_summary=false",
]


def make_cfg(tmp_path: Path, overrides: list[str], config_name: str = "train") -> DictConfig:
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        cfg = compose(config_name=config_name, overrides=overrides)
    with open_dict(cfg):
        cfg.paths.root_dir = str(tmp_path)
        cfg.paths.output_dir = str(tmp_path / "run")
        cfg.paths.cache_dir = str(tmp_path / "cache")
    return cfg


def group_options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONFIGS / group).glob("*.yaml"))


@pytest.mark.parametrize("data", group_options("data"))
def test_every_data_config_composes_and_instantiates(tmp_path, data):
    cfg = make_cfg(tmp_path, [f"data={data}"])
    assert cfg.datamodule.history_mode in ("set", "sequential")
    for part in ("source", "preprocessing", "split"):
        assert instantiate(cfg.data[part], _convert_="all") is not None


@pytest.mark.parametrize("group", ["model", "trainer", "logger", "callbacks", "baselines"])
def test_every_config_group_instantiates(tmp_path, group, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "disabled")
    for option in group_options(group):
        package = "eval.baselines" if group == "baselines" else group
        override = f"baselines@eval.baselines={option}" if group == "baselines" else f"{package}={option}"
        cfg = make_cfg(tmp_path, [override])
        node = cfg.eval.baselines if group == "baselines" else cfg[group]
        if group == "model":
            module = instantiate(node, model_config={**node.model_config, "n_items": 10}, _convert_="all")
            assert module.config.n_items == 10
        elif group == "trainer":
            assert instantiate(node).max_epochs == cfg.trainer.max_epochs
        else:
            assert all(instantiate(spec) is not None for spec in node.values())


@pytest.mark.parametrize("experiment", group_options("experiment"))
def test_every_experiment_composes(tmp_path, experiment):
    cfg = make_cfg(tmp_path, [f"experiment={experiment}"])
    instantiate(cfg.model, model_config={**cfg.model.model_config, "n_items": 10}, _convert_="all")
    instantiate(cfg.data.split, _convert_="all")


def test_train_end_to_end_on_tiny_simulator(tmp_path, capsys):
    cfg = make_cfg(tmp_path, TINY)
    metrics, objects = train(cfg)
    for name in ("ndcg@10", "recall@10", "precision@10", "coverage@10", "gini@10"):
        assert 0.0 <= metrics[f"test/{name}"] <= 1.0
    table = objects["table"]
    assert list(table.index) == ["TwoTower", "MostPopular", "ItemKNN", "EASE"]
    printed = capsys.readouterr().out
    assert "| TwoTower |" in printed and "| EASE |" in printed
    # Test metrics land in the CSV log under test/..., checkpoints and curve beside them.
    logged = pd.read_csv(tmp_path / "run" / "csv" / "metrics.csv")
    assert logged["test/ndcg@10"].dropna().iloc[0] == pytest.approx(metrics["test/ndcg@10"])
    record = json.loads((tmp_path / "checkpoints" / "last_run.json").read_text())
    best = Path(record["best_checkpoint"])
    assert best.exists() and (best.parent / "last.ckpt").exists()
    assert (best.parent / "training_curve.png").stat().st_size > 0
    # The checkpoint alone rebuilds the model.
    ckpt = torch.load(best, map_location="cpu", weights_only=False)
    assert ckpt["hyper_parameters"]["model_config"]["n_items"] == 120
    # ... and carries the raw-id map, so a raw id means the same title at serving time.
    spec = ckpt["streamrec_data_spec"]
    assert spec["item_map"]["ids"] == objects["data"].item_map.raw_ids.tolist()
    assert spec["device_vocab"] == ["mobile", "tablet", "tv", "web"]


def test_training_is_deterministic_with_a_seed(tmp_path):
    first, _ = train(make_cfg(tmp_path / "a", TINY + ["eval.baselines=null"]))
    second, _ = train(make_cfg(tmp_path / "b", TINY + ["eval.baselines=null"]))
    assert first == second


def test_resume_continues_where_it_stopped(tmp_path):
    one = TINY + ["eval.baselines=null", "trainer.max_epochs=1", "run_name=resume"]
    _, objects = train(make_cfg(tmp_path, one))
    steps_after_one = objects["trainer"].global_step
    last = tmp_path / "checkpoints" / "resume" / "last.ckpt"
    assert last.exists()
    two = TINY + ["eval.baselines=null", "trainer.max_epochs=2", "run_name=resume", f"ckpt_path={last}"]
    _, resumed = train(make_cfg(tmp_path, two))
    assert resumed["trainer"].current_epoch == 2
    assert resumed["trainer"].global_step == 2 * steps_after_one
    # Exactly the uninterrupted run: same shuffles, history windows, dropout and negatives.
    straight = TINY + ["eval.baselines=null", "trainer.max_epochs=2", "run_name=straight"]
    train(make_cfg(tmp_path / "straight", straight))
    final = torch.load(last, weights_only=False)
    other = torch.load(tmp_path / "straight" / "checkpoints" / "straight" / "last.ckpt", weights_only=False)
    assert final["epoch"] == other["epoch"] == 1
    for name, value in final["state_dict"].items():
        assert torch.equal(value, other["state_dict"][name]), name


def test_last_checkpoint_is_the_last_epoch_and_resuming_keeps_the_runs_folder_and_best(tmp_path):
    # mode=min on NDCG: the first epoch stays "best" while training improves NDCG, so the
    # later epochs are ones that do not improve on the best.
    worse = ["eval.baselines=null", "callbacks.model_checkpoint.mode=min", "callbacks.early_stopping=null"]
    cfg = make_cfg(tmp_path, TINY + worse + ["trainer.max_epochs=3"])
    _, objects = train(cfg)
    run = tmp_path / "checkpoints" / cfg.run_name
    best = objects["trainer"].checkpoint_callback
    assert torch.load(run / "last.ckpt", weights_only=False)["epoch"] == 2  # not the best epoch's copy
    first_best = (best.best_model_path, float(best.best_model_score))
    resumed_cfg = make_cfg(tmp_path, TINY + worse + ["trainer.max_epochs=4", f"ckpt_path={run / 'last.ckpt'}"])
    assert resumed_cfg.run_name == cfg.run_name  # no run_name given: the checkpoint's own folder
    _, resumed = train(resumed_cfg)
    assert resumed["trainer"].current_epoch == 4
    kept = resumed["trainer"].checkpoint_callback
    assert float(kept.best_model_score) <= first_best[1]  # the best so far still competed
    assert Path(kept.best_model_path).parent == run
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir() if p.is_dir()) == [cfg.run_name]


def test_validation_counts_a_repeated_member_once(tmp_path):
    # Lightning's DistributedSampler pads an odd member list with repeats; one process
    # fed the same repeats must give the metric of the members alone.
    import pytorch_lightning as pl
    from torch.utils.data import DataLoader

    _, objects = train(make_cfg(tmp_path, TINY + ["eval.baselines=null", "trainer.max_epochs=1"]))
    module, datamodule = objects["module"], objects["datamodule"]
    users = datamodule.eval_users("val").tolist()

    def validate(members):
        loader = DataLoader(members, batch_size=16, collate_fn=lambda batch: datamodule.eval_batch(batch, "val"))
        trainer = pl.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False)
        return trainer.validate(module, dataloaders=loader, verbose=False)[0]

    alone, padded = validate(users), validate(users + users[:5])
    assert padded == pytest.approx(alone, abs=1e-7)
    assert alone["val/ndcg@10"] > 0


def test_a_checkpoint_from_elsewhere_starts_a_new_run_folder(tmp_path):
    from streamrec.training.train import _checkpoint_run

    runs = tmp_path / "checkpoints"
    assert _checkpoint_run(str(runs / "train-1" / "last.ckpt"), str(runs), "new") == "train-1"
    assert _checkpoint_run(str(tmp_path / "downloads" / "model.ckpt"), str(runs), "new") == "new"
    # Each new run claims its own folder: runs started in the same second (or a multirun's jobs) shared one.
    assert _checkpoint_run("last", str(runs), "new") == "new-1"
    assert _checkpoint_run(None, str(runs), "new") == "new-2"
    assert sorted(p.name for p in runs.iterdir()) == ["new", "new-1", "new-2"]
    (tmp_path / "other-disk").mkdir()
    (runs / "train-2").symlink_to(tmp_path / "other-disk")  # a run folder linked elsewhere is still that run
    assert _checkpoint_run(str(runs / "train-2" / "last.ckpt"), str(runs), "new") == "train-2"


def test_run_settings_checks_know_the_models_default_cut_offs(tmp_path):
    from streamrec.training.train import _check_run_settings

    _check_run_settings(make_cfg(tmp_path, ["~model.eval_ks"]))  # the module's default logs val/ndcg@10
    _check_run_settings(make_cfg(tmp_path, ["model.eval_ks=[10,50]", "monitor=val/recall@50", "trainer.max_epochs=-1"]))


@pytest.mark.parametrize("overrides, message", [
    (["trainer.max_epochs=0"], r"trainer\.max_epochs=0: train at least one epoch"),
    (["monitor=val/nonexistent"], r"monitor=val/nonexistent: the model logs \['val/ndcg@10', 'val/recall@10'\]"),
    # Each of these failed after an epoch or after the whole run, with a traceback:
    (["monitor=null"], r"monitor=None: the model logs"),
    (["model.eval_ks=[]"], r"model\.eval_ks=\[\]: expected a non-empty list of cut-offs >= 1"),
    (["eval.ks=[0]"], r"eval\.ks=\[0\]: expected a non-empty list of cut-offs >= 1"),
    (["model.lr_schedule=one_cycle", "trainer.max_epochs=-1"], r"model\.lr_schedule=one_cycle with "
     r"trainer\.max_epochs=-1: the schedule spans a fixed number of epochs"),
])
def test_run_settings_that_would_fail_late_are_refused_first(tmp_path, overrides, message):
    with pytest.raises(ValueError, match=message):
        train(make_cfg(tmp_path, TINY + overrides))
    assert not (tmp_path / "checkpoints").exists()  # refused before any training


@pytest.mark.parametrize("overrides, message", [
    (["index.k=0"], r"index\.k=0: expected an integer >= 1"),
    (["index.tuning_queries=0"], r"index\.tuning_queries=0: expected an integer >= 1"),
    (["index.target_recall=abc"], r"index\.target_recall='abc': expected a number in \(0, 1\]"),
    (["index.target_recall=true"], r"index\.target_recall=True: expected a number in \(0, 1\]"),
    (["index.target_recall=1.5"], r"index\.target_recall=1\.5: expected a number in \(0, 1\]"),
    (["index.factory=null"], r"index\.factory=None: expected a non-empty string"),
    (["index.factory=123"], r"index\.factory=123: expected a non-empty string"),
    (["index.output_dir=null"], r"index\.output_dir=None: expected a non-empty string"),
    (["seed=abc"], r"seed='abc': expected a non-negative integer"),
    (["checkpoint={bad}"], r"checkpoint=.*not-a-checkpoint\.ckpt: not a readable streamrec training checkpoint"),
])
def test_build_index_refuses_bad_settings_naming_them(tmp_path, overrides, message):
    from streamrec.training.export import build_index

    bad = tmp_path / "not-a-checkpoint.ckpt"
    torch.save({"a": 1}, bad)
    with pytest.raises(ValueError, match=message):
        build_index(make_cfg(tmp_path, [o.format(bad=bad) for o in overrides], config_name="build_index"))


def test_cold_start_split_reports_content_only_recall(tmp_path):
    cfg = make_cfg(tmp_path, TINY + ["eval.baselines=null", "+data.split.holdout_items=0.1", "data.source.n_items=300"])
    metrics, objects = train(cfg)
    cold = objects["cold_start"]
    assert list(cold.index) == ["TwoTower (content only)", "Popularity by genre (known at release)",
                                "Popularity (oracle, held-out period)", "Random"]
    assert 0.0 <= metrics["test/cold_recall@20"] <= 1.0


def test_missing_validation_split_is_a_clear_error(tmp_path):
    cfg = make_cfg(tmp_path, TINY + ["data.split.ratios=[0.8,0.2]"])
    with pytest.raises(ValueError, match="no validation part"):
        train(cfg)


@pytest.mark.parametrize("overrides, message", [
    (["data.split.ratios=[0.9,0.1,0.0]"], "the split has no test part"),  # was a ZeroDivisionError after training
    (["eval.ks=[10,100000]"], r"eval\.ks=\[10, 100000\]: the catalogue has \d+ titles"),  # failed after training
    (["model.eval_ks=[100000]", "monitor=val/ndcg@100000"], r"model\.eval_ks=\[100000\]: the catalogue has"),
])
def test_splits_and_cut_offs_that_would_fail_after_training_are_refused_first(tmp_path, overrides, message):
    with pytest.raises(ValueError, match=message):
        train(make_cfg(tmp_path, TINY + overrides))
    assert not list((tmp_path / "checkpoints").glob("*/*.ckpt"))  # refused before any training


@pytest.mark.slow
def test_wandb_offline_logger(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    metrics, _ = train(make_cfg(tmp_path, TINY + ["eval.baselines=null", "logger=wandb", "trainer.max_epochs=1"]))
    assert "test/ndcg@10" in metrics
    assert list((tmp_path / "run").rglob("offline-run-*"))


@pytest.mark.slow
def test_ddp_two_cpu_processes(tmp_path):
    """`trainer=ddp` on CPU (gloo), two processes, exactly as a user runs it.

    Lightning's DDP re-launches the command line for each rank, so this runs the script
    in a subprocess rather than inside pytest.
    """
    from streamrec.cli import build_dataset
    from streamrec.training import TwoTowerModule
    from streamrec.training.train import evaluate_model

    root = Path(__file__).resolve().parents[1]
    tiny = TINY + ["eval.baselines=null", "data.source.n_users=203"]  # 187 validation members: an odd count
    overrides = tiny + ["trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2", f"paths.root_dir={tmp_path}",
                        f"paths.cache_dir={tmp_path / 'cache'}", f"hydra.run.dir={tmp_path / 'run'}"]
    done = subprocess.run([sys.executable, str(root / "scripts" / "train.py"), *overrides], cwd=root,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "world_size=2" in done.stdout + done.stderr or "GLOBAL_RANK: 1" in done.stdout + done.stderr
    metrics = json.loads((tmp_path / "run" / "test_metrics.json").read_text())
    assert 0.0 <= metrics["test/ndcg@10"] <= 1.0
    # The validation metric that picked the checkpoint counts every member once, as one
    # process does (a DistributedSampler pads an odd member list with a repeat).
    cfg = make_cfg(tmp_path, tiny)
    datamodule = instantiate(cfg.datamodule, _partial_=True)(data=build_dataset(cfg.data))
    assert len(datamodule.eval_users("val")) % 2 == 1
    best = json.loads((tmp_path / "checkpoints" / "last_run.json").read_text())["best_checkpoint"]
    state = torch.load(best, map_location="cpu", weights_only=False)
    logged = next(value["best_model_score"] for key, value in state["callbacks"].items()
                  if key.startswith("ModelCheckpoint{'monitor': 'val/ndcg@10'"))
    alone = evaluate_model(TwoTowerModule.load_from_checkpoint(best, map_location="cpu"), datamodule, (10,), "val")
    assert float(logged) == pytest.approx(alone["ndcg@10"], abs=1e-6)
    assert "It is recommended to use `self.log('val/" not in done.stdout + done.stderr


def test_build_index_after_training_serves_what_evaluation_ranks(tmp_path, capsys):
    """train.py -> build_index.py -> Recommender: the served top-10 of test members equals the
    model's own full-ranking top-10 used by evaluation."""
    from streamrec.inference import Recommender
    from streamrec.training.export import build_index
    from streamrec.training.train import score_function

    _, objects = train(make_cfg(tmp_path, TINY + ["eval.baselines=null"]))
    with pytest.raises(ValueError, match=r"index\.k=1000: the catalogue has 120 titles"):
        build_index(make_cfg(tmp_path, ["index.k=1000"], config_name="build_index"))
    manifest, built = build_index(make_cfg(tmp_path, ["index.tuning_queries=50"], config_name="build_index"))
    artifact = tmp_path / "checkpoints" / "recommender"
    assert "recall vs latency" in capsys.readouterr().out
    assert manifest["index"]["factory"] == "Flat" and manifest["index"]["measured_recall"] == 1.0
    recommender = Recommender.load(artifact)

    data, datamodule = objects["data"], objects["datamodule"]
    seen = pd.concat([data.train, data.val]).sort_values(["user", "timestamp"], kind="stable")
    users = datamodule.eval_users("test")[:20]
    scores = score_function(objects["module"], datamodule, "test")(torch.from_numpy(users))
    raw_items = data.item_map.raw_ids
    member_features = data.users.set_index("user_id")
    for user, row in zip(users, scores):
        views = seen[seen["user"] == user]
        row[torch.from_numpy(views["item"].to_numpy().copy())] = float("-inf")
        expected = raw_items[torch.topk(row, 10).indices.numpy()].tolist()
        features = member_features.loc[data.user_map.to_raw([user])[0]].to_dict()
        served = recommender.recommend(
            raw_items[views["item"].to_numpy()].tolist(), k=10, timestamps=views["timestamp"].tolist(),
            watch_fractions=views["watch_fraction"].tolist(), device=views["device"].iloc[-1],
            member_features=features,
        )
        assert served.item_ids == expected


@pytest.mark.parametrize("arguments, message", [
    ({"loss": "hinge"}, r"^loss='hinge': choose one of"),
    ({"lr_schedule": "cosine"}, r"^lr_schedule='cosine': choose one of"),
    # These two were accepted: -3 negatives drew none, and a dropout of 1.5 dropped every history.
    ({"num_uniform_negatives": -3}, r"^num_uniform_negatives=-3: expected a whole number >= 0\.$"),
    ({"num_uniform_negatives": 2.5}, r"^num_uniform_negatives=2\.5: expected a whole number >= 0\.$"),
    ({"history_dropout": 1.5}, r"^history_dropout=1\.5: expected a probability in \[0, 1\)"),
    ({"history_dropout": 1}, r"^history_dropout=1: expected a probability in \[0, 1\)"),
    ({"history_dropout": -0.1}, r"^history_dropout=-0\.1: expected a probability in \[0, 1\)"),
    ({"history_dropout": "0.1"}, r"^history_dropout='0\.1': expected a probability in \[0, 1\)"),
])
def test_the_training_module_refuses_bad_settings_naming_them(arguments, message):
    from streamrec.training import TwoTowerModule

    with pytest.raises(ValueError, match=message):
        TwoTowerModule({"n_items": 5, "dim": 8, "hidden": 8}, **arguments)
    TwoTowerModule({"n_items": 5, "dim": 8, "hidden": 8}, num_uniform_negatives=0, history_dropout=0.0)
    module = TwoTowerModule({"n_items": 5, "dim": 8, "hidden": 8}, num_uniform_negatives=np.int64(5),
                            history_dropout=np.float32(0.25))  # numpy's numbers, as a sweep may pass them
    assert (module.hparams.num_uniform_negatives, module.hparams.history_dropout) == (5, 0.25)
    assert type(module.hparams.num_uniform_negatives) is int and type(module.hparams.history_dropout) is float
