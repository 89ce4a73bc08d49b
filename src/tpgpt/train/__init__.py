"""Training: config, optimizer, the loop and its parts, pipeline stages, metrics."""
from .config import TrainConfig, load_config
from .trainer import Trainer

__all__ = ["TrainConfig", "Trainer", "load_config"]
