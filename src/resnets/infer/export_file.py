"""Export a model to one file, ONNX (dynamic batch) or TorchScript, checked before it is kept.

The file is written to a temporary path, checked (ONNX through onnxruntime, TorchScript by running it) on
random inputs at two batch sizes, and only renamed into place when the check passes. ``int8=True`` (ONNX
only) then quantises the checked float32 graph (``resnets.infer.quantize``) and checks the int8 model against
float32 PyTorch on real images instead: top-1 agreement and the logits' relative error.
"""

from __future__ import annotations

import json
import os
import tempfile
import warnings
from pathlib import Path

import torch

from ..errors import UserError
from ..loading import LoadedModel, load_for_inference
from ..outputs import atomic_write, check_out_file
from .export_result import ATOL, CHECK_BATCHES, RTOL, ExportCheckError, ExportResult, require_onnx
from .quantize import (
    BATCH,
    CALIBRATION_IMAGES,
    CHECK_IMAGES,
    MAX_REL_ERROR,
    MIN_AGREEMENT,
    fidelity,
    load_images,
    onnx_session,
    quantize_onnx,
    run_session,
)

FORMATS = ("onnx", "torchscript")
SUFFIX = {"onnx": ".onnx", "torchscript": ".torchscript.pt"}  # never a checkpoint's .pt


def export_file(
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
    """Export ``weights`` to ``format`` (``"onnx"`` or ``"torchscript"``) at ``out`` (default: beside the
    weights: ``.onnx``, ``.int8.onnx``, ``.torchscript.pt``); raises ExportCheckError, leaving no file, when the
    check fails. A default-named file that exists is replaced only with ``force``; an explicit ``out`` is replaced.

    ``int8``: quantise the ONNX model, calibrated on ``calibration_images`` real images from ``calibration``
    (default: the shipped sample), and require top-1 agreement >= ``min_agreement`` and relative logits error
    <= ``max_rel_error`` against float32 PyTorch on ``check_images`` other images.
    """
    if format not in FORMATS:
        raise UserError(f"{format!r} is not a one-file export format; choose one of {', '.join(FORMATS)}")
    if int8 and format != "onnx":
        raise UserError("int8 export is ONNX only (--format onnx)")
    if format == "onnx":
        require_onnx()
    loaded = load_for_inference(weights, model_name)
    model = loaded.model.eval()
    suffix = ".int8.onnx" if int8 else SUFFIX[format]
    out_path = Path(out) if out is not None else Path(loaded.source).with_suffix(suffix)
    check_out_file(out_path, replace=force or out is not None, suffix=suffix)
    if out_path.resolve() == Path(loaded.source).resolve():
        raise UserError(f"--out {out_path} is the weights being exported; choose another --out")
    if int8:
        return _export_int8(model, loaded, out_path, opset, calibration, calibration_images, check_images,
                            min_agreement, max_rel_error)
    size = loaded.input_size
    gen = torch.Generator().manual_seed(0)
    inputs = [torch.randn(b, 3, size, size, generator=gen) for b in CHECK_BATCHES]
    with torch.inference_mode():
        refs = [model(x) for x in inputs]
    diff = ref_max = 0.0

    def write_checked(tmp: str) -> None:
        """Export to ``tmp`` and check it; raising leaves ``out_path`` as it was."""
        nonlocal diff, ref_max
        with warnings.catch_warnings():  # the exporters' deprecation and constant-folding chatter
            warnings.simplefilter("ignore", (UserWarning, FutureWarning, DeprecationWarning))
            if format == "onnx":
                _write_onnx(model, loaded, inputs[0], tmp, opset)
                outs = _run_onnx(tmp, inputs)
            else:
                _write_torchscript(model, inputs[0], tmp)
                scripted = torch.jit.load(tmp)
                with torch.inference_mode():
                    outs = [scripted(x) for x in inputs]
        diff = max(float((o - r).abs().max()) for o, r in zip(outs, refs, strict=True))
        ref_max = max(float(r.abs().max()) for r in refs)
        if not diff <= ATOL + RTOL * ref_max:
            raise ExportCheckError(f"{format} outputs differ from PyTorch by up to {diff:.3g} "
                                   f"(allowed {ATOL + RTOL * ref_max:.3g}); nothing written")

    atomic_write(out_path, write_checked)  # renamed into place only once the check passed
    return ExportResult(str(out_path), format, diff, ref_max, CHECK_BATCHES)


def _export_int8(model: torch.nn.Module, loaded: LoadedModel, out_path: Path, opset: int,
                 calibration: str | os.PathLike[str] | None, n_calibration: int, n_check: int,
                 min_agreement: float, max_rel_error: float) -> ExportResult:
    calib, check, source = load_images(loaded, calibration, n_calibration, n_check)
    with torch.inference_mode():
        reference = torch.cat([model(check[s:s + BATCH]) for s in range(0, len(check), BATCH)])
    with tempfile.TemporaryDirectory(prefix="resnets-export-") as tmp:
        fp32 = export_file(loaded, "onnx", out=Path(tmp) / "fp32.onnx", opset=opset)
        result = ExportResult(str(out_path), "onnx", fp32.max_abs_diff, fp32.max_abs_ref, fp32.batches,
                              calibration_images=len(calib), image_source=source)

        def write(path: str) -> None:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", (UserWarning, FutureWarning, DeprecationWarning))
                result.int8_form = quantize_onnx(fp32.path, path, calib).summary()
            result.int8 = fidelity(run_session(onnx_session(path), check), reference)
            got = result.int8
            if not (got.top1_agreement >= min_agreement and got.rel_error <= max_rel_error):
                raise ExportCheckError(
                    f"int8 ({result.int8_form}) vs float32 PyTorch on {got.images} real images: top-1 agreement "
                    f"{got.top1_agreement:.2%} (need >= {min_agreement:.2%}), logits relative error "
                    f"{got.rel_error:.3g} (need <= {max_rel_error:.3g}); nothing written")
        atomic_write(out_path, write)  # which gives the file the umask's mode
    return result


def _write_onnx(model: torch.nn.Module, loaded: LoadedModel, example: torch.Tensor, path: str, opset: int) -> None:
    import onnx

    torch.onnx.export(model, (example,), path, dynamo=False, opset_version=opset, input_names=["images"],
                      output_names=["logits"], dynamic_axes={"images": {0: "batch"}, "logits": {0: "batch"}})
    proto = onnx.load(path)
    meta = {"model": loaded.name, "classes": json.dumps(loaded.classes), "mean": json.dumps(loaded.mean),
            "std": json.dumps(loaded.std), "input_size": str(loaded.input_size), "resize": str(loaded.resize)}
    for key, value in meta.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.checker.check_model(proto)
    onnx.save(proto, path)


def _run_onnx(path: str, inputs: list[torch.Tensor]) -> list[torch.Tensor]:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    return [torch.from_numpy(session.run(None, {"images": x.numpy()})[0]) for x in inputs]


def _write_torchscript(model: torch.nn.Module, example: torch.Tensor, path: str) -> None:
    with torch.no_grad():
        traced = torch.jit.trace(model, example, check_trace=False)
    traced.save(path)

