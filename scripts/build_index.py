"""Export a trained two-tower checkpoint as a serving artifact (FAISS index + towers + metadata).

    python scripts/build_index.py                           # best checkpoint of the last train.py run
    python scripts/build_index.py checkpoint=checkpoints/<run>/epoch009.ckpt index.factory=HNSW32
"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from streamrec.cli import usage_errors
from streamrec.training.export import build_index


@hydra.main(version_base="1.3", config_path="../configs", config_name="build_index")
def main(cfg: DictConfig) -> None:
    with usage_errors():
        build_index(cfg)


if __name__ == "__main__":
    main()
