"""Lightning training of the two-tower model: DataModule, LightningModule, callbacks, ``train``."""

from streamrec.training.callbacks import RandomState, TrainingCurve
from streamrec.training.datamodule import RetrievalDataModule
from streamrec.training.module import TwoTowerModule

__all__ = ["RandomState", "RetrievalDataModule", "TrainingCurve", "TwoTowerModule"]
