"""resnets: every ResNet of the paper, exact to its numbers, visible, trainable and deployable.

The names below are imported on first use (PEP 562), so that ``import resnets`` (and the ``resnets``
command's parser, ``resnets --help``) imports neither PyTorch nor Keras until something needs them.
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import TYPE_CHECKING

from .errors import UserError

if TYPE_CHECKING:
    from .keras import load_keras
    from .loading import create_model
    from .models import list_models
    from .summary import ModelSummary, summary
    from .weights import load_model, load_weights, read_metadata, save_weights

__version__ = "0.1.0"
__all__ = ["UserError", "create_model", "list_models", "load_keras", "load_model", "load_weights", "read_metadata", "save_weights", "summary", "ModelSummary", "__version__"]

#: Where each public name lives, imported when first asked for (``create_model`` takes ``weights=``: the loading
#: layer's, above ``resnets.models``, which builds fresh nets only).
_LAZY = {"create_model": "loading", "list_models": "models", "ModelSummary": "summary", "summary": "summary",
         "load_model": "weights", "load_weights": "weights", "read_metadata": "weights", "save_weights": "weights",
         "load_keras": "keras"}


def __getattr__(name: str) -> object:
    """A public name on first use (then cached in the module): PyTorch, and Keras for ``load_keras``, load only
    now."""
    if name not in _LAZY:
        raise AttributeError(f"module 'resnets' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})


class _Package(types.ModuleType):
    """The package itself, so that ``resnets.summary`` stays the function: importing the submodule of that
    name binds the module here, as it would have before the function was imported eagerly over it."""

    def __setattr__(self, name: str, value: object) -> None:
        if name in _LAZY and isinstance(value, types.ModuleType) and hasattr(value, name):
            value = getattr(value, name)
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
