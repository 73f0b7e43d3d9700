"""Export a model, checked before it is kept: to ONNX (dynamic batch, optionally int8) or TorchScript
(:mod:`resnets.infer.export_file`), a Triton model repository (:mod:`resnets.infer.triton`) or Keras
(:mod:`resnets.keras.write`). This module only chooses the exporter; the exporters share their result and
check types through :mod:`resnets.infer.export_result` and never import this module.

The file is written to a temporary path, checked (ONNX through onnxruntime, TorchScript by running it) on
random inputs at two batch sizes, and only renamed into place when the check passes. ``int8=True`` (ONNX
only) then quantises the checked float32 graph (``resnets.infer.quantize``) and checks the int8 model against
float32 PyTorch on real images instead: top-1 agreement and the logits' relative error.
"""

from __future__ import annotations

import os

from ..errors import UserError
from ..loading import LoadedModel
from .export_file import SUFFIX, export_file
from .export_result import ATOL, CHECK_BATCHES, RTOL, ExportCheckError, ExportResult, require_onnx
from .quantize import CALIBRATION_IMAGES, CHECK_IMAGES, MAX_REL_ERROR, MIN_AGREEMENT
from .triton import export_triton

FORMATS = ("onnx", "torchscript", "triton", "keras")

__all__ = ["ATOL", "CHECK_BATCHES", "FORMATS", "RTOL", "SUFFIX", "ExportCheckError", "ExportResult", "export",
           "require_onnx"]


def export(
    weights: str | os.PathLike[str] | LoadedModel,
    format: str = "onnx",
    *,
    out: str | os.PathLike[str] | None = None,
    model_name: str | None = None,
    opset: int = 18,
    int8: bool = False,
    calibration: str | os.PathLike[str] | None = None,
    calibration_images: int = CALIBRATION_IMAGES,
    check_images: int = CHECK_IMAGES,
    min_agreement: float = MIN_AGREEMENT,
    max_rel_error: float = MAX_REL_ERROR,
    force: bool = False,
) -> ExportResult:
    """Export ``weights`` to ``format`` (``"onnx"`` or ``"torchscript"``: :func:`export_file`) at ``out``
    (default: beside the weights: ``.onnx``, ``.int8.onnx``, ``.torchscript.pt``); raises ExportCheckError,
    leaving no file, when the check fails. A default-named file that exists is replaced only with ``force``; an
    explicit ``out`` is replaced. ``"triton"`` (a model repository folder, :mod:`resnets.infer.triton`) and
    ``"keras"`` (a ``.keras`` file, :mod:`resnets.keras.write`) are written and checked by their own modules.

    ``int8``: quantise the ONNX model, calibrated on ``calibration_images`` real images from ``calibration``
    (default: the shipped sample), and require top-1 agreement >= ``min_agreement`` and relative logits error
    <= ``max_rel_error`` against float32 PyTorch on ``check_images`` other images.
    """
    if format not in FORMATS:
        raise UserError(f"unknown export format {format!r}; choose one of {', '.join(FORMATS)}")
    if int8 and format != "onnx":
        raise UserError("int8 export is ONNX only (--format onnx)")
    if format == "triton":
        return export_triton(weights, out=out, model_name=model_name, opset=opset, force=force)
    if format == "keras":
        from ..keras.write import export_keras  # numpy and the Keras writer only when asked for

        return export_keras(weights, out=out, model_name=model_name, force=force)
    return export_file(weights, format, out=out, model_name=model_name, opset=opset, int8=int8,
                       calibration=calibration, calibration_images=calibration_images, check_images=check_images,
                       min_agreement=min_agreement, max_rel_error=max_rel_error, force=force)
