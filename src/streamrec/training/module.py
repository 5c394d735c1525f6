"""The Lightning training task around :class:`~streamrec.models.two_tower.TwoTower`.

Cheap in-batch loss every step; full-ranking NDCG@K / Recall@K over the whole catalogue
at the end of each validation epoch (members' seen titles masked).
"""

from __future__ import annotations

from typing import Any, Callable, Iterable

import numpy as np
import pytorch_lightning as pl
import torch

from streamrec.evaluation import ndcg_at_k, recall_at_k, topk_items
from streamrec.models.losses import FullSoftmaxLoss, SampledSoftmaxLoss, mixture_log_q
from streamrec.models.two_tower import TwoTower, TwoTowerConfig
from streamrec.validation import is_finite_number, is_whole_number

LOSSES = ("sampled", "full")
LR_SCHEDULES = ("constant", "one_cycle")
OptimizerFactory = Callable[[Iterable[torch.nn.Parameter]], torch.optim.Optimizer]


class TwoTowerModule(pl.LightningModule):
    """Trains a two-tower model with a retrieval loss.

    Args:
        model_config: :class:`TwoTowerConfig` fields (saved in the checkpoint so the model
            can be rebuilt from it alone).
        loss: ``sampled`` (in-batch + ``num_uniform_negatives`` uniform negatives) or
            ``full`` (softmax over the whole catalogue).
        temperature, logq_correction, remove_accidental_hits: see the losses.
        num_uniform_negatives: extra uniformly drawn negatives per step (mixed negatives).
        history_dropout: train-time probability of dropping each history position.
        optimizer: factory ``params -> Optimizer`` (Hydra ``_partial_``); default Adam(1e-3).
        lr_schedule: ``constant`` or ``one_cycle`` (warm-up then cosine decay over
            ``trainer.max_epochs``).
        eval_ks: cut-offs of the validation NDCG / Recall (logged as ``val/ndcg@K``).
        item_features: content buffers for the model (genres, year, year_known, tokens,
            has_id), only when training starts; a checkpoint restores them.
        item_probability: [n_items] share of training positives per title (for logQ).
    """

    def __init__(
        self,
        model_config: dict[str, Any],
        loss: str = "sampled",
        temperature: float = 0.05,
        logq_correction: bool = True,
        remove_accidental_hits: bool = True,
        num_uniform_negatives: int = 0,
        history_dropout: float = 0.1,
        optimizer: OptimizerFactory | None = None,
        lr_schedule: str = "constant",
        eval_ks: tuple[int, ...] = (10,),
        item_features: dict[str, torch.Tensor] | None = None,
        item_probability: torch.Tensor | None = None,
    ):
        super().__init__()
        if loss not in LOSSES:
            raise ValueError(f"loss={loss!r}: choose one of {LOSSES}.")
        if lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"lr_schedule={lr_schedule!r}: choose one of {LR_SCHEDULES}.")
        if not is_whole_number(num_uniform_negatives) or num_uniform_negatives < 0:
            raise ValueError(f"num_uniform_negatives={num_uniform_negatives!r}: expected a whole number >= 0.")
        if not is_finite_number(history_dropout) or not 0 <= history_dropout < 1:
            raise ValueError(f"history_dropout={history_dropout!r}: expected a probability in [0, 1) "
                             "(1 would drop every history).")
        # Plain Python numbers in the saved hyperparameters (a sweep may pass numpy's).
        num_uniform_negatives, history_dropout = int(num_uniform_negatives), float(history_dropout)
        self.save_hyperparameters(ignore=["optimizer", "item_features", "item_probability"])
        self.config = TwoTowerConfig(**model_config)
        self.model = TwoTower(self.config, **(item_features or {}))
        n_items = self.config.n_items
        probability = item_probability if item_probability is not None else torch.full((n_items,), 1.0 / n_items)
        self.register_buffer("item_probability", probability.float())
        self.sampled_loss = SampledSoftmaxLoss(temperature, logq_correction, remove_accidental_hits)
        self.full_loss = FullSoftmaxLoss(temperature)
        self.optimizer_factory = optimizer
        self._item_vectors: torch.Tensor | None = None
        # How raw ids and features map to model inputs (id maps, vocabularies): not
        # hyperparameters, but saved in every checkpoint so the model can serve raw ids.
        self.data_spec: dict[str, Any] = {}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["streamrec_data_spec"] = self.data_spec

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.data_spec = checkpoint.get("streamrec_data_spec", {})

    def transfer_batch_to_device(self, batch: dict[str, torch.Tensor], device: torch.device,
                                 dataloader_idx: int) -> dict[str, torch.Tensor]:
        # Batches are flat dicts of tensors; Lightning's generic collection walk costs ~3 ms a step.
        return {key: value.to(device, non_blocking=True) for key, value in batch.items()}

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.model.query(batch)

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        hp = self.hparams
        history = batch["history"]
        if hp.history_dropout > 0:
            keep = torch.rand(history.shape, device=self.device) >= hp.history_dropout
            batch = {**batch, "history": history * keep}
        query = self.model.query(batch)
        target = batch["target"]
        if hp.loss == "full":
            all_items = self.model.item_vectors(torch.arange(self.config.n_items, device=self.device))
            # Titles dropped from the input are still the member's positives, not negatives.
            loss = self.full_loss(query, all_items, target, history)
        else:
            ids = target
            if hp.num_uniform_negatives > 0:
                extra = torch.randint(self.config.n_items, (hp.num_uniform_negatives,), device=self.device)
                ids = torch.cat([target, extra])
            log_q = mixture_log_q(self.item_probability, len(target), hp.num_uniform_negatives)[ids]
            loss = self.sampled_loss(query, self.model.item_vectors(ids), ids, log_q)
        # The step value is this process's (for the progress bar); the epoch mean is over
        # every process, synced once at the epoch's end.
        self.log("train/loss_step", loss, prog_bar=True, on_step=True, on_epoch=False, batch_size=len(target))
        self.log("train/loss_epoch", loss, on_step=False, on_epoch=True, batch_size=len(target), sync_dist=True)
        return loss

    def on_validation_epoch_start(self) -> None:
        self._item_vectors = self.model.all_item_vectors()
        self._val_members: list[np.ndarray] = []
        self._val_values: list[np.ndarray] = []

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        ks = sorted(self.hparams.eval_ks)
        scores = self.model.query(batch) @ self._item_vectors.T
        exclude = batch["exclude"]
        rows = torch.arange(len(exclude), device=self.device).unsqueeze(1).expand_as(exclude)
        valid = exclude >= 0
        scores[rows[valid], exclude[valid]] = float("-inf")
        top = topk_items(scores, min(ks[-1], scores.shape[1]))
        targets = batch["targets"]
        # Padding (-1) in both `top` and `targets` must never match.
        hits = ((top.unsqueeze(-1) == targets.unsqueeze(1)) & (targets >= 0).unsqueeze(1)).any(-1)
        n_relevant = (targets >= 0).sum(1)
        values = []
        for k in ks:
            k_hits = hits[:, :k]
            values += [ndcg_at_k(k_hits, n_relevant, k_hits.shape[1]), recall_at_k(k_hits, n_relevant, k_hits.shape[1])]
        self._val_members.append(batch["user"].cpu().numpy())
        self._val_values.append(torch.stack(values, 1).double().cpu().numpy())

    def on_validation_epoch_end(self) -> None:
        """Log the validation metrics: means over the members, each counted once.

        Under DDP, Lightning's DistributedSampler pads the member list by repeating its first
        members so that every process gets as many; averaging per process would count those
        twice, making the metric that picks checkpoints depend on the number of processes.
        So every process's (member, values) are gathered and the repeats dropped.
        """
        self._item_vectors = None
        members = np.concatenate(self._val_members) if self._val_members else np.zeros(0, np.int64)
        values = np.concatenate(self._val_values) if self._val_values else np.zeros((0, 2 * len(self.hparams.eval_ks)))
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            gathered: list[Any] = [None] * torch.distributed.get_world_size()
            torch.distributed.all_gather_object(gathered, (members, values))
            members = np.concatenate([m for m, _ in gathered])
            values = np.concatenate([v for _, v in gathered])
        if not len(members):
            return
        _, first = np.unique(members, return_index=True)
        means = values[first].mean(axis=0)
        ks = sorted(self.hparams.eval_ks)
        # The same value on every process: sync_dist averages equal numbers (and keeps
        # Lightning from warning that an epoch-level metric is not synced).
        for i, k in enumerate(ks):
            self.log(f"val/ndcg@{k}", float(means[2 * i]), prog_bar=k == ks[0], sync_dist=True)
            self.log(f"val/recall@{k}", float(means[2 * i + 1]), sync_dist=True)

    def configure_optimizers(self) -> Any:
        factory = self.optimizer_factory or (lambda params: torch.optim.Adam(params, lr=1e-3))
        optimizer = factory(self.parameters())
        if self.hparams.lr_schedule == "constant":
            return optimizer
        # One-cycle: a short warm-up, then cosine decay to ~0 over the planned steps, which
        # settles the noisy end of training that a constant rate leaves.
        scheduler = torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=[g["lr"] for g in optimizer.param_groups],
            total_steps=max(2, int(self.trainer.estimated_stepping_batches)), pct_start=0.1,
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

