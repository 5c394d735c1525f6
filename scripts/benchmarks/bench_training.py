"""Training-step throughput of the two-tower model on 2 CPU cores (no Lightning overhead
excluded: the steps run through a real ``pl.Trainer`` fit loop).

    python scripts/benchmarks/bench_training.py                      # default model
    python scripts/benchmarks/bench_training.py --interactions 1000000 --epochs 1
    python scripts/benchmarks/bench_training.py --ops     # the step's custom ops vs PyTorch's

Generates a simulator log, trains the default model (d=64, history 50, batch 1,024,
sampled softmax with logQ) for the given number of epochs without validation, and
prints examples/s and seconds per epoch as a markdown table.
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from omegaconf import OmegaConf

from streamrec.data import Preprocessing, SimulatorSource, SplitSpec, prepare_dataset
from streamrec.models.losses import accidental_hits
from streamrec.models.two_tower import weighted_bag
from streamrec.training.cuda_checks import runtime_cuda_checks_without_gpu
from streamrec.training.datamodule import RetrievalDataModule
from streamrec.training.module import TwoTowerModule
from streamrec.training.train import model_inputs


class _Timer(pl.Callback):
    def __init__(self):
        self.epoch_seconds: list[float] = []

    def on_train_epoch_start(self, trainer, module):
        self._start = time.perf_counter()

    def on_train_epoch_end(self, trainer, module):
        self.epoch_seconds.append(time.perf_counter() - self._start)


def _median_ms(fn, repeats: int = 60) -> float:
    for _ in range(5):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return float(np.median(times)) * 1e3


def bench_ops(batch: int, history: int, dim: int, items: int) -> None:
    """Forward + backward of the step's two bags (history, title tokens) and the
    accidental-hit mask at the benchmark's shapes: streamrec's ops against PyTorch's."""
    generator = torch.Generator().manual_seed(0)
    print("| op | shape | PyTorch ms | streamrec ms |\n|---|---|---:|---:|")
    for name, rows, width in [("history bag", items + 1, history), ("title-token bag", 16_385, 24)]:
        table = torch.randn(rows, dim, requires_grad=True)
        indices = torch.randint(0, rows, (batch, width), generator=generator)
        weights = torch.rand(batch, width, generator=generator) * (indices > 0)
        grad = torch.randn(batch, dim, generator=generator)

        def native(table=table, indices=indices, weights=weights, grad=grad):
            F.embedding_bag(indices, table, mode="sum", per_sample_weights=weights, padding_idx=0).backward(grad)
            table.grad = None

        def ours(table=table, indices=indices, weights=weights, grad=grad):
            weighted_bag(table, indices, weights).backward(grad)
            table.grad = None

        print(f"| {name}, forward + backward | {batch} x {width} of {rows:,} x {dim} "
              f"| {_median_ms(native):.2f} | {_median_ms(ours):.2f} |")
    # Popularity-skewed positives, as in-batch candidates are.
    probability = 1.0 / torch.arange(1, items + 1, dtype=torch.float64) ** 0.9
    ids = torch.multinomial(probability, batch, replacement=True, generator=generator)
    logits = torch.randn(batch, batch, requires_grad=True)

    def dense():
        same = ids.unsqueeze(0) == ids.unsqueeze(1)
        same.fill_diagonal_(False)
        (logits * 1.0).masked_fill_(same, -1e9).sum().backward()

    def pairs():
        rows, columns = accidental_hits(ids, batch)
        (logits * 1.0).index_put_((rows, columns), torch.tensor(-1e9)).sum().backward()

    def unmasked():
        (logits * 1.0).sum().backward()

    print(f"| logits pass with the accidental-hit mask, forward + backward (without it: "
          f"{_median_ms(unmasked):.2f} ms) | {batch} x {batch} | {_median_ms(dense):.2f} | {_median_ms(pairs):.2f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, default=50_000)
    parser.add_argument("--items", type=int, default=20_000)
    parser.add_argument("--interactions", type=int, default=1_000_000)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=1024)
    parser.add_argument("--history", type=int, default=50)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--pooling", default="mean")
    parser.add_argument("--loss", default="sampled")
    parser.add_argument("--history-mode", default="sequential")
    parser.add_argument("--ops", action="store_true", help="time the step's custom ops against PyTorch's and exit")
    args = parser.parse_args()
    if args.ops:
        bench_ops(args.batch_size, args.history, args.dim, args.items)
        return

    pl.seed_everything(0, verbose=False)
    source = SimulatorSource(n_users=args.users, n_items=args.items, n_interactions=args.interactions, seed=0)
    data = prepare_dataset(source, Preprocessing(), SplitSpec(method="leave_last_out", holdout_val=0))
    dm = RetrievalDataModule(data, batch_size=args.batch_size, max_history=args.history,
                             history_mode=args.history_mode)
    derived, buffers, _ = model_inputs(data, dm, text_buckets=16384, max_tokens=24)
    # The default model of configs/model/two_tower.yaml.
    cfg = OmegaConf.load(Path(__file__).resolve().parents[2] / "configs" / "model" / "two_tower.yaml")
    model_config = {**OmegaConf.to_container(cfg.model_config), **derived, "dim": args.dim, "pooling": args.pooling}
    optimizer = instantiate(cfg.optimizer)
    module = TwoTowerModule(model_config, loss=args.loss, temperature=cfg.temperature,
                            logq_correction=cfg.logq_correction, history_dropout=cfg.history_dropout,
                            optimizer=optimizer, item_features=buffers, item_probability=dm.item_probability())
    timer = _Timer()
    trainer = pl.Trainer(max_epochs=args.epochs, accelerator="cpu", logger=False, enable_checkpointing=False,
                         limit_val_batches=0, enable_progress_bar=False, enable_model_summary=False,
                         callbacks=[timer])
    with runtime_cuda_checks_without_gpu():  # as train.py fits
        trainer.fit(module, train_dataloaders=dm.train_dataloader())
    examples = len(dm.train_log.item)
    best = min(timer.epoch_seconds)
    print(f"\nmachine: {platform.platform()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
          f"{torch.get_num_threads()} torch threads\n")
    print("| examples/epoch | dim | history | batch | pooling | loss | s/epoch (best of %d) | examples/s |"
          % args.epochs)
    print("|---:|---:|---:|---:|---|---|---:|---:|")
    print(f"| {examples:,} | {args.dim} | {args.history} | {args.batch_size} | {args.pooling} | {args.loss} "
          f"| {best:.1f} | {examples / best:,.0f} |")
    print("epochs:", ", ".join(f"{s:.1f}s" for s in timer.epoch_seconds), "| mean",
          f"{np.mean(timer.epoch_seconds):.1f}s")


if __name__ == "__main__":
    main()
