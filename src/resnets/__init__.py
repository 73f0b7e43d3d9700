"""resnets: every ResNet of the paper, exact to its numbers, visible, trainable and deployable."""

from .errors import UserError
from .models import create_model, list_models

__version__ = "0.1.0"
__all__ = ["UserError", "create_model", "list_models", "__version__"]
