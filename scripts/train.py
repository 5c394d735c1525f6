"""Train the two-tower retrieval model; print its test metrics beside the baselines.

    python scripts/train.py                                   # built-in simulator
    python scripts/train.py data=movielens data.root=../shared/datasets/ml-100k 'data.split.ratios=[0.8,0.1,0.1]'
    python scripts/train.py experiment=ml100k data.root=../shared/datasets/ml-100k
    python scripts/train.py ckpt_path=checkpoints/<run>/last.ckpt   # resume
"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from streamrec.cli import usage_errors
from streamrec.training.train import train


@hydra.main(version_base="1.3", config_path="../configs", config_name="train")
def main(cfg: DictConfig) -> float | None:
    with usage_errors():
        metrics, _ = train(cfg)
    return metrics.get("test/ndcg@10")


if __name__ == "__main__":
    main()
