"""Training: recipes, the loop, checkpoints, metrics and plots.

``train(resolve_config({...}, recipe="cifar-paper"))`` runs and returns a ``RunResult``.
"""

from .config import RECIPES, TrainConfig, default_recipe, load_config_file, resolve_config
from .loop import Callback, NonFiniteLossError, RunResult, TrainState, train

__all__ = ["RECIPES", "Callback", "NonFiniteLossError", "RunResult", "TrainConfig", "TrainState",
           "default_recipe", "load_config_file", "resolve_config", "train"]
