"""resnets: every ResNet of the paper, exact to its numbers, visible, trainable and deployable."""

from .errors import UserError
from .models import create_model, list_models
from .summary import ModelSummary, summary
from .weights import load_model, load_weights, read_metadata, save_weights

__version__ = "0.1.0"
__all__ = ["UserError", "create_model", "list_models", "load_keras", "load_model", "load_weights", "read_metadata", "save_weights", "summary", "ModelSummary", "__version__"]


def __getattr__(name: str) -> object:
    """``load_keras`` on first use, so that ``import resnets`` never imports Keras (an optional extra)."""
    if name == "load_keras":
        from .keras import load_keras

        return load_keras
    raise AttributeError(f"module 'resnets' has no attribute {name!r}")
