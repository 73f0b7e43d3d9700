"""What an export returns and how its check is judged, shared by every exporter (ONNX, TorchScript, Triton, Keras):
a leaf, so that :mod:`resnets.infer.export` may import the exporters and they need not import it back."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..errors import UserError

if TYPE_CHECKING:
    from .quantize import Fidelity

CHECK_BATCHES = (1, 3)
# Pass if max |ours - torch| <= ATOL + RTOL * max |torch| over both batches.
ATOL, RTOL = 1e-4, 1e-4


class ExportCheckError(RuntimeError):
    """The exported model's outputs differ from PyTorch's beyond tolerance; nothing was written."""


@dataclass
class ExportResult:
    """Where the model went, and how far its outputs were from PyTorch's on the check inputs."""

    path: str
    format: str
    max_abs_diff: float
    max_abs_ref: float
    batches: tuple[int, ...]
    int8: Fidelity | None = None  # the int8 model vs float32 PyTorch on real images
    calibration_images: int = 0
    image_source: str = ""
    int8_form: str = ""  # the int8 form kept and why (Quantization.summary)


def require_onnx() -> None:
    """A one-line UserError naming the extra to install when onnx or onnxruntime is missing."""
    import importlib.util

    if any(importlib.util.find_spec(m) is None for m in ("onnx", "onnxruntime")):
        raise UserError("ONNX export needs the onnx and onnxruntime packages: pip install 'resnets[export]'")
