"""Callbacks: the training-curve picture saved beside the checkpoints; random state in checkpoints."""

from __future__ import annotations

import json
from pathlib import Path

import pytorch_lightning as pl
import torch


class TrainingCurve(pl.Callback):
    """Records the epoch-mean training loss and validation metric; saves a PNG at the end.

    The picture goes to ``dirpath`` (the checkpoint folder) as ``training_curve.png``,
    with the numbers as ``training_curve.json`` beside it.
    """

    def __init__(self, dirpath: str, monitor: str = "val/ndcg@10"):
        self.dirpath = Path(dirpath)
        self.monitor = monitor
        self.history: dict[str, list[float]] = {"epoch": [], "train_loss": [], "val": []}

    def state_dict(self) -> dict:
        return {"history": self.history}

    def load_state_dict(self, state_dict: dict) -> None:
        self.history = state_dict["history"]

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        metrics = trainer.callback_metrics
        if "train/loss_epoch" in metrics:
            self.history["epoch"].append(trainer.current_epoch)
            self.history["train_loss"].append(float(metrics["train/loss_epoch"]))
            value = metrics.get(self.monitor)
            self.history["val"].append(float(value) if value is not None else float("nan"))

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.is_global_zero and self.history["epoch"]:
            self.save()

    def save(self) -> Path:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        self.dirpath.mkdir(parents=True, exist_ok=True)
        (self.dirpath / "training_curve.json").write_text(json.dumps(self.history))
        fig, loss_ax = plt.subplots(figsize=(7, 4))
        loss_ax.plot(self.history["epoch"], self.history["train_loss"], "o-", color="tab:blue")
        loss_ax.set_xlabel("epoch")
        loss_ax.set_ylabel("training loss", color="tab:blue")
        val_ax = loss_ax.twinx()
        val_ax.plot(self.history["epoch"], self.history["val"], "s-", color="tab:orange")
        val_ax.set_ylabel(self.monitor, color="tab:orange")
        fig.suptitle("two-tower training")
        fig.tight_layout()
        path = self.dirpath / "training_curve.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        return path


class RandomState(pl.Callback):
    """Keeps torch's random number generators in checkpoints and restores them on resume.

    Shuffling, dropout and sampled negatives draw from them; with this (and the data
    module's own generator, saved by its ``state_dict``) a run resumed from ``last.ckpt``
    trains exactly as the uninterrupted run would. Loading weights alone
    (``load_from_checkpoint``) leaves the generators as they are.
    """

    def state_dict(self) -> dict:
        cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else []
        return {"torch": torch.get_rng_state(), "cuda": cuda}

    def load_state_dict(self, state_dict: dict) -> None:
        torch.set_rng_state(state_dict["torch"])
        if state_dict["cuda"] and torch.cuda.is_available() and len(state_dict["cuda"]) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(state_dict["cuda"])
