"""Static int8 quantisation of an exported ONNX model with onnxruntime, calibrated and checked on real images.

Format: QDQ, weights int8 symmetric per output channel, activations uint8 asymmetric (U8S8: the form whose
kernels use VNNI on x86; S8S8 ran at a third of its speed here, symmetric activations lost accuracy), ranges by
MinMax over the calibration images (percentile and entropy calibration gave no clear gain on ResNet-18/20). The
final fully connected layer stays float: quantising its output rounds the logits onto 256 levels, which turns
near ties into exact ties (a ResNet-20 trained 3 epochs: 92.6% top-1 agreement with float32 with it, 98.3%
without).

The form is chosen by measurement on the exporting CPU: each form of :data:`FORMS` is tried in turn, and the
first whose onnxruntime kernels compute what its QDQ graph says (logits within :data:`KERNEL_TOLERANCE` of the
same graph run unfused in float, on calibration images) is kept. x86 U8S8 kernels without VNNI
(``vpmaddubsw``) add u8 x s8 products in pairs into int16, which saturates at 32767 (255 x 127 x 2 = 64770):
on a virtualised AMD EPYC with AVX2, U8S8 logits were 22% off their own graph and 26% off float32 (94.5%
top-1 agreement), against 0.2% for the forms below. 7-bit weights (|q| <= 64: 255 x 64 x 2 < 32768) cannot
saturate and keep U8S8's speed (1.6x float32 there); U8U8 is exact but only 1.1x float32. A model keeps the
form chosen where it was exported: one exported as full-range U8S8 on a VNNI CPU saturates on CPUs without it.

Images are read and preprocessed exactly as ``resnets predict`` does. Calibration and check images are
disjoint: by default calibration comes from the shipped sample's ``train/`` and the check from its ``test/``;
with a folder, both are drawn (without overlap) from it.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..errors import UserError
from ..loading import LoadedModel
from .loading import expand_paths, read_batches

CALIBRATION_IMAGES = 256
CHECK_IMAGES = 256
# The int8 check passes when top-1 agreement with float32 PyTorch >= MIN_AGREEMENT and the logits' relative
# L2 error <= MAX_REL_ERROR on the check images (ResNet-20s trained 3 and 8 epochs on the sample, 25-29%
# accurate: 98.7% and 1-3.5% on its 1000 test images).
MIN_AGREEMENT = 0.95
MAX_REL_ERROR = 0.10
BATCH = 32
DESCRIPTION = "QDQ, per-channel {weights} weights, uint8 activations, MinMax calibration, float classifier"
# A form is kept when its optimised onnxruntime logits are within KERNEL_TOLERANCE (relative L2) of its QDQ
# graph run unfused in float on KERNEL_CHECK_IMAGES calibration images (measured: 0.2% for exact kernels, 22%
# for saturating U8S8 on a ResNet-20).
KERNEL_CHECK_IMAGES = 32
KERNEL_TOLERANCE = 0.02


@dataclass(frozen=True)
class Int8Form:
    """One way to quantise: activation and weight types, and 7-bit weights (``reduce_range``)."""

    name: str
    weights: str  # as the description names them
    activation_type: str  # onnxruntime QuantType member name
    weight_type: str
    reduce_range: bool = False


# Tried in this order; see the module docstring for why and what each costs.
FORMS = (
    Int8Form("U8S8", "int8", "QUInt8", "QInt8"),
    Int8Form("U8S8 7-bit weights", "7-bit int8", "QUInt8", "QInt8", reduce_range=True),
    Int8Form("U8U8", "uint8", "QUInt8", "QUInt8"),
)


@dataclass
class Quantization:
    """The form :func:`quantize_onnx` kept, how far its kernels were from its graph, and the forms rejected."""

    form: Int8Form
    kernel_error: float  # relative L2 distance of onnxruntime's logits from the unfused QDQ graph's
    rejected: tuple[tuple[str, float], ...] = ()  # (form name, kernel error) of the other forms tried

    def summary(self) -> str:
        """One line: the form kept, and the kernel errors of the other forms tried."""
        why = "".join(f"; {name} rejected: its kernels were {err:.1%} off its graph on this CPU"
                      for name, err in self.rejected)
        return f"{self.form.name} (kernels {self.kernel_error:.1%} off the graph{why})"


@dataclass
class Fidelity:
    """How far a model's logits are from the float32 reference's on some images."""

    images: int
    top1_agreement: float
    rel_error: float  # ||ours - ref|| / ||ref|| over all logits
    max_abs_diff: float
    max_abs_ref: float


def fidelity(logits: torch.Tensor, reference: torch.Tensor) -> Fidelity:
    """Top-1 agreement, relative L2 error and largest absolute difference of ``logits`` vs ``reference``."""
    logits, reference = logits.float(), reference.float()
    return Fidelity(len(reference), float((logits.argmax(1) == reference.argmax(1)).float().mean()),
                    float((logits - reference).norm() / reference.norm()),
                    float((logits - reference).abs().max()), float(reference.abs().max()))


def load_images(loaded: LoadedModel, folder: str | os.PathLike[str] | None = None,
                calibration: int = CALIBRATION_IMAGES, check: int = CHECK_IMAGES
                ) -> tuple[torch.Tensor, torch.Tensor, str]:
    """``(calibration, check, source)``: disjoint real images, preprocessed for ``loaded`` as predict does.

    Without ``folder``, calibration images come from the shipped sample's ``train/`` and check images from
    its ``test/``; with one, both are drawn from it, evenly spread over its sorted files. Unreadable files
    are skipped.
    """
    if calibration < 1 or check < 1:
        raise UserError("--calibration-images and --check-images must be at least 1")
    if folder is None:
        from ..data import extract_sample

        root = extract_sample()
        calib_files = _spread(_image_files(root / "train"), calibration)
        check_files = _spread(_image_files(root / "test"), check)
        source = f"the shipped sample ({root}): train/ for calibration, test/ for the check"
    else:
        root = Path(folder)
        if not root.is_dir():
            raise UserError(f"calibration folder {root} not found")
        files = _image_files(root)
        if len(files) < 2:
            raise UserError(f"{root} holds {len(files)} image files; calibration and the check need at least 2")
        picks = _spread(files, calibration + check)
        n_check = min(len(picks) - 1, max(1, round(len(picks) * check / (calibration + check))))
        chosen = set(np.linspace(0, len(picks) - 1, n_check).round().astype(int).tolist())
        check_files = [p for i, p in enumerate(picks) if i in chosen]
        calib_files = [p for i, p in enumerate(picks) if i not in chosen]
        source = str(root)
    return _read(calib_files, loaded), _read(check_files, loaded), source


def _image_files(root: Path) -> list[str]:
    if not root.is_dir():
        raise UserError(f"no image folder at {root}")
    paths, _problems = expand_paths([root])
    return paths


def _spread(files: Sequence[str], count: int) -> list[str]:
    if len(files) <= count:
        return list(files)
    return [files[i] for i in np.linspace(0, len(files) - 1, count).round().astype(int)]


def _read(paths: Sequence[str], loaded: LoadedModel) -> torch.Tensor:
    batches = [x for _good, x, _failures in read_batches(paths, loaded, 64) if x is not None]
    if not batches:
        raise UserError(f"none of the {len(paths)} images could be read")
    return torch.cat(batches)


def quantize_onnx(fp32_path: str | os.PathLike[str], out: str | os.PathLike[str], calibration: torch.Tensor,
                  *, batch: int = BATCH, forms: Sequence[Int8Form] = FORMS) -> Quantization:
    """Write the int8 (QDQ) version of the float32 ONNX model at ``fp32_path`` to ``out``, with activation
    ranges calibrated on the images ``calibration`` (N x 3 x H x W, preprocessed), in the first of ``forms``
    whose kernels match its graph on this CPU (else the closest); returns the form kept and the measurements."""
    import onnx
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if not forms:
        raise ValueError("no int8 forms to try")
    probe = calibration[:KERNEL_CHECK_IMAGES]
    tried: list[tuple[Int8Form, float, bytes]] = []
    with tempfile.TemporaryDirectory(prefix="resnets-quant-") as tmp:
        prepared = str(Path(tmp) / "prepared.onnx")
        quant_pre_process(str(fp32_path), prepared)
        classifier = [n.name for n in onnx.load(prepared).graph.node if n.op_type in ("Gemm", "MatMul")]
        for i, form in enumerate(forms):
            path = str(Path(tmp) / f"int8-{i}.onnx")
            _quantize(prepared, path, calibration, batch, form, classifier)
            error = kernel_error(path, probe)
            tried.append((form, error, Path(path).read_bytes()))
            if error <= KERNEL_TOLERANCE:
                break
    best = min(range(len(tried)), key=lambda i: tried[i][1]) if tried[-1][1] > KERNEL_TOLERANCE else -1
    form, error, data = tried[best]
    result = Quantization(form, error, tuple((f.name, e) for f, e, _ in tried if f is not form))
    proto = onnx.load_from_string(data)
    source = {p.key: p.value for p in onnx.load(str(fp32_path), load_external_data=False).metadata_props}
    source["quantization"] = (f"int8 ({DESCRIPTION.format(weights=form.weights)}; {len(calibration)} "
                              f"calibration images; form {result.summary()})")
    source["quantization_form"] = form.name
    del proto.metadata_props[:]
    for key, value in source.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(proto, str(out))
    return result


def _quantize(prepared: str, out: str, calibration: torch.Tensor, batch: int, form: Int8Form,
              exclude: list[str]) -> None:
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.starts = iter(range(0, len(calibration), batch))

        def get_next(self) -> dict[str, np.ndarray] | None:
            start = next(self.starts, None)
            return None if start is None else {"images": calibration[start:start + batch].numpy()}

    signed = form.weight_type == "QInt8"  # uint8 weights need a zero point: asymmetric
    quantize_static(prepared, out, Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    reduce_range=form.reduce_range, activation_type=QuantType[form.activation_type],
                    weight_type=QuantType[form.weight_type], calibrate_method=CalibrationMethod.MinMax,
                    nodes_to_exclude=exclude, extra_options={"WeightSymmetric": signed, "ActivationSymmetric": False})


def kernel_error(path: str | os.PathLike[str], images: torch.Tensor) -> float:
    """Relative L2 distance, on ``images``, of the QDQ model at ``path`` as onnxruntime runs it (fused int8
    kernels) from the same graph run unfused (dequantised, in float): what the kernels add to quantisation."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    graph = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    reference = run_session(graph, images)
    got = run_session(onnx_session(path), images)
    return float((got - reference).norm() / reference.norm().clamp_min(1e-12))


def onnx_session(path: str | os.PathLike[str]):  # noqa: ANN201 - onnxruntime is optional
    """An onnxruntime CPU session on ``path`` using torch's thread count."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def run_session(session: object, images: torch.Tensor, batch: int = BATCH) -> torch.Tensor:
    """Logits of an onnxruntime ``session`` (input ``images``) over ``images``, in batches."""
    outs = [session.run(None, {"images": images[s:s + batch].numpy()})[0]  # type: ignore[attr-defined]
            for s in range(0, len(images), batch)]
    return torch.from_numpy(np.concatenate(outs))
