"""``ModelCard``: the metadata that travels with a model, in its weights file and through inference."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class ModelCard:
    """What rebuilds a model (``name``, ``variant``, ``num_classes``, ``options``) and what its
    inputs and outputs mean (``normalization``, ``classes``).

    ``name`` is the registry name (``create_model`` sets it); None for a net constructed directly, which
    can be used but not saved with metadata. ``options`` are the ``create_model`` options given
    (``shortcut``, ``zero_init_residual``, ``in_chans``), only those given.
    """

    name: str | None
    variant: str
    num_classes: int
    options: dict[str, Any] = field(default_factory=dict)
    classes: list[str] | None = None  # class names in index order
    normalization: dict[str, list[float]] | None = None  # {"mean": [...], "std": [...]} in 0..1

    @property
    def spec(self) -> dict[str, Any]:
        """``{"name", "variant", "num_classes", **options}``: ``create_model(**spec)`` rebuilds the net.
        Stored as the weights file's ``spec``."""
        return {"name": self.name, "variant": self.variant, "num_classes": self.num_classes, **self.options}

