"""Training and evaluation loop pieces used by ``tools/train_net.py``."""

from .distributed import create_ddp_model
from .trainer import PointSupTrainer

__all__ = ["PointSupTrainer", "create_ddp_model"]
