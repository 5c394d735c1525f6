"""Plain ``nn.Module`` models and their losses (no Lightning, no Hydra)."""

from streamrec.models.losses import FullSoftmaxLoss, SampledSoftmaxLoss, mixture_log_q
from streamrec.models.two_tower import ItemTower, QueryTower, TwoTower, TwoTowerConfig

__all__ = ["FullSoftmaxLoss", "ItemTower", "QueryTower", "SampledSoftmaxLoss", "TwoTower", "TwoTowerConfig",
           "mixture_log_q"]
