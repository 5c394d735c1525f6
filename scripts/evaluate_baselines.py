"""Fit and evaluate the reference baselines (MostPopular, ItemKNN, EASE) on one split.

    python scripts/evaluate_baselines.py                       # built-in simulator
    python scripts/evaluate_baselines.py data=movielens data.root=../shared/datasets/ml-100k

Prints the table and writes ``baselines.csv`` to the run directory.
"""

from __future__ import annotations

import logging
from pathlib import Path

import hydra
from hydra.utils import instantiate
from omegaconf import DictConfig

from streamrec.baselines import evaluate_baselines
from streamrec.cli import build_dataset, markdown_table, usage_errors

log = logging.getLogger(__name__)


@hydra.main(version_base="1.3", config_path="../configs", config_name="evaluate_baselines")
def main(cfg: DictConfig) -> None:
    with usage_errors():
        data = build_dataset(cfg.data)
        log.info("data %s: %s", data.name, data.summary())
        models = {name: instantiate(spec) for name, spec in cfg.baselines.items()}
        table = evaluate_baselines(data, models, ks=tuple(cfg.ks), batch_size=cfg.batch_size)
    out = Path(cfg.paths.output_dir) / "baselines.csv"
    table.to_csv(out)
    shown = [c for c in cfg.show if c in table.columns]
    print(f"\n{data.name}: {data.summary()}\n")
    print(markdown_table(table[shown]))
    print(f"\nall metrics: {out}")


if __name__ == "__main__":
    main()
