"""``resnets bench infer``: CPU inference speed, latency, memory and fidelity of our fast path against
torchvision's eager float32 ResNet and onnxruntime (float32 and static int8), in one run.

Weights are random (there are no pretrained weights offline), shared by every path: torchvision's init,
with batch-norm statistics calibrated on real images so activations have a trained net's scale. Top-1
agreement with float32 on real images is then a check of numerical fidelity, not of accuracy; random
weights' logits are near ties, so it understates the agreement trained weights give (most of all for int8).
Timed batches are interleaved: the paths take turns in rounds, so a slow spell of a shared machine is spread
over all of them instead of landing on one.
"""

from __future__ import annotations

import os
import resource
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..data.normalization import CIFAR_MEAN, CIFAR_STD, IMAGENET_MEAN, IMAGENET_STD
from ..errors import UserError
from ..hardware import cpu_has_native_bf16, cpu_name
from .fastpath import FastModel
from .loading import LoadedModel, preprocess


@dataclass
class PathResult:
    """One inference path's measurements."""

    name: str
    images_per_s: float
    p50_ms: float
    p99_ms: float
    peak_rss_mib: float
    top1_agreement: float
    rel_error: float
    speedup: float = 1.0
    note: str = ""
    max_flipped_margin: float = 0.0  # largest reference top-1/top-2 logit gap among images whose top-1 changed


@dataclass
class BenchReport:
    """Everything ``bench_infer`` measured, and on what."""

    model: str
    batch: int
    iters: int
    input_size: int
    images: str
    agreement_images: int
    threads: int
    cpu: str
    native_bf16: bool
    gflop_per_image: float
    matmul_tflops_bf16: float
    matmul_tflops_fp32: float
    matmul_size: int
    load_before: tuple[float, float, float]
    load_after: tuple[float, float, float] = (0.0, 0.0, 0.0)
    median_margin: float = 0.0  # median reference top-1/top-2 logit gap
    paths: list[PathResult] = field(default_factory=list)

    @property
    def floor_images_per_s(self) -> float:
        """Images/s if every FLOP ran at the measured large-matmul bf16 rate."""
        return self.matmul_tflops_bf16 * 1e12 / (self.gflop_per_image * 1e9)

    def as_dict(self) -> dict[str, object]:
        return {**asdict(self), "floor_images_per_s": self.floor_images_per_s}


def images_root(folder: str | os.PathLike[str] | None) -> Path:
    """The folder real images come from: ``folder``, or the shipped sample's test split; UserError if
    ``folder`` is not a folder."""
    if folder is None:
        from ..data import extract_sample

        return extract_sample() / "test"
    root = Path(folder).expanduser()
    if not root.is_dir():
        raise UserError(f"--images {folder} is not a folder; give a folder of images, or leave --images out "
                        "for the shipped sample's test images")
    return root


def real_images(count: int, size_family: str, folder: str | os.PathLike[str] | None = None) -> tuple[torch.Tensor, str]:
    """``count`` real images (spread over the folder's classes) from :func:`images_root` of ``folder``,
    preprocessed for ``size_family``."""
    from ..data import read_rgb
    from ..data.images import is_image_file

    root = images_root(folder)
    files = sorted(str(p) for p in root.rglob("*") if p.is_file() and is_image_file(p))
    if not files:
        raise UserError(f"no images under {root}")
    picks = [files[i] for i in np.linspace(0, len(files) - 1, min(count, len(files))).round().astype(int)]
    mean, std = (IMAGENET_MEAN, IMAGENET_STD) if size_family == "imagenet" else (CIFAR_MEAN, CIFAR_STD)
    x = torch.stack([preprocess(read_rgb(p), size_family, mean, std) for p in picks])
    return x, str(root)


def calibrate_batchnorm(model: nn.Module, images: torch.Tensor, batch: int = 16) -> None:
    """Set every batch norm's running statistics to the average over ``images`` (train-mode passes)."""
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None
    model.train()
    with torch.no_grad():
        for s in range(0, len(images), batch):
            model(images[s:s + batch])
    for bn in bns:
        bn.momentum = 0.1
    model.eval()


def matmul_tflops(dtype: torch.dtype, n: int = 4096, reps: int = 3) -> float:
    """Measured rate of an n x n x n matrix product in ``dtype``, TFLOP/s (best of ``reps``)."""
    a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
    torch.mm(a, b)
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best / 1e12


def count_gflop(model: nn.Module, size: int) -> float:
    """FLOPs (2 x multiply-adds) of one image's forward pass, in GFLOP."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(torch.zeros(1, 3, size, size))
    return counter.get_total_flops() / 1e9


def _reset_peak_rss() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def _peak_rss_mib() -> float:
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


ROUNDS = 3  # timed batches are spread over this many rounds through all paths


def time_interleaved(fns: Sequence[Callable[[torch.Tensor], torch.Tensor]], x: torch.Tensor, iters: int,
                      warmup: int, rounds: int = ROUNDS) -> list[list[float]]:
    """Seconds per batch of each of ``fns``, ``iters`` each, timed in rounds through all of them (so a slow
    spell of the machine is shared, not landed on one path), after ``warmup`` untimed batches each."""
    for fn in fns:
        for _ in range(warmup):
            fn(x)
    times: list[list[float]] = [[] for _ in fns]
    rounds = max(1, min(rounds, iters))
    for r in range(rounds):
        count = iters // rounds + (1 if r < iters % rounds else 0)
        for fn, out in zip(fns, times, strict=True):
            for _ in range(count):
                t = time.perf_counter()
                fn(x)
                out.append(time.perf_counter() - t)
    return times


def _logits(fn: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor, batch: int) -> torch.Tensor:
    return torch.cat([fn(images[s:s + batch]).float() for s in range(0, len(images), batch)])


def bench_infer(
    model: str = "resnet50",
    batch: int = 16,
    iters: int = 20,
    *,
    warmup: int = 3,
    agreement_images: int = 256,
    images: str | os.PathLike[str] | None = None,
    compile: bool = False,
    onnx: bool = True,
    int8: bool = True,
    int8_calibration: int = 128,
    matmul_size: int = 4096,
    progress: Callable[[str], None] | None = None,
) -> BenchReport:
    """Measure each inference path on ``model`` at ``batch`` for ``iters`` timed batches (see module doc);
    ``int8`` (with ``onnx``) adds onnxruntime int8, calibrated on ``int8_calibration`` further real images."""
    import torchvision

    from ..models import create_model, model_family

    say = progress or (lambda _msg: None)
    if batch < 1 or iters < 1:
        raise UserError("--batch and --iters must be at least 1")
    family = model_family(model)
    size = 224 if family == "imagenet" else 32
    load_before = os.getloadavg()
    say("measuring the bf16 and fp32 matmul rate")
    tf_bf16 = matmul_tflops(torch.bfloat16, matmul_size)
    tf_fp32 = matmul_tflops(torch.float32, matmul_size)
    calib_n = 32
    quant_n = int8_calibration if onnx and int8 else 0
    pool, root = real_images(agreement_images + calib_n + quant_n, family, images)
    calib, evaluation = pool[:calib_n], pool[calib_n + quant_n:]
    quant_calib = pool[calib_n:calib_n + quant_n]
    timing_x = pool[:batch] if len(pool) >= batch else pool[torch.arange(batch) % len(pool)]

    torch.manual_seed(0)
    ours = create_model(model)
    reference: nn.Module | None = None
    ref_name = f"resnets {model} eager fp32"
    if family == "imagenet" and hasattr(torchvision.models, model):
        reference = getattr(torchvision.models, model)()
        ours.load_state_dict(reference.state_dict())
        ref_name = f"torchvision {model} eager fp32"
    say(f"calibrating batch norm on {calib_n} real images")
    calibrate_batchnorm(ours, calib)
    if reference is not None:
        reference.load_state_dict(ours.state_dict())
    else:
        reference = ours
    reference.eval()

    report = BenchReport(model, batch, iters, size, root, len(evaluation), torch.get_num_threads(),
                         cpu_name(), cpu_has_native_bf16(), count_gflop(ours, size), tf_bf16, tf_fp32, matmul_size,
                         load_before)

    def ref_fn(x: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return reference(x)

    paths: list[tuple[str, Callable[[torch.Tensor], torch.Tensor], str]] = [(ref_name, ref_fn, "reference")]
    default = FastModel(ours, "auto", input_size=size, model_key=model).precision
    for precision in ("fp32", "bf16"):
        fast = FastModel(ours, precision, input_size=size)
        note = "default of predict/embed here" if precision == default else ""
        paths.append((f"resnets {precision} (" + fast.describe() + ")", fast, note))
    if compile:
        say("compiling (torch.compile, inductor freezing)")
        comp = FastModel(ours, "bf16", compile=True)
        t = time.perf_counter()
        comp(timing_x)
        paths.append(("resnets bf16 compiled (" + comp.describe() + ")", comp,
                      f"first call {time.perf_counter() - t:.0f} s"))
    tmpdir = tempfile.TemporaryDirectory(prefix="resnets-bench-")
    if onnx:
        say("exporting to ONNX")
        fp32_path = _onnx_export(ours, model, family, tmpdir.name)
        paths.append(("onnxruntime fp32 (exported model)", _onnx_runner(fp32_path), ""))
        if int8:
            from .quantize import quantize_onnx

            say(f"quantising to int8, calibrated on {len(quant_calib)} other real images")
            int8_path = str(Path(tmpdir.name) / f"{model}.int8.onnx")
            kept = quantize_onnx(fp32_path, int8_path, quant_calib)
            paths.append((f"onnxruntime int8 (QDQ {kept.form.name} per-channel, {len(quant_calib)} calibration "
                          "images)",
                          _onnx_runner(int8_path), ""))

    ref_logits: torch.Tensor | None = None
    try:
        say(f"timing {len(paths)} paths, interleaved in {min(ROUNDS, iters)} rounds")
        all_times = time_interleaved([fn for _name, fn, _note in paths], timing_x, iters, warmup)
        for (name, fn, note), times in zip(paths, all_times, strict=True):
            say(f"fidelity and memory of {name}")
            _reset_peak_rss()
            fn(timing_x)  # peak memory covers a timing-sized batch, not only the evaluation batches
            logits = _logits(fn, evaluation, batch)
            peak = _peak_rss_mib()
            if ref_logits is None:
                ref_logits = logits
                top2 = ref_logits.topk(2, 1).values
                margins = top2[:, 0] - top2[:, 1]
                report.median_margin = float(margins.median())
            same = logits.argmax(1) == ref_logits.argmax(1)
            agree = float(same.float().mean())
            flipped = float(margins[~same].max()) if (~same).any() else 0.0
            rel = float((logits - ref_logits).norm() / ref_logits.norm())
            ms = np.array(times) * 1e3
            report.paths.append(PathResult(name, batch * len(times) / sum(times), float(np.percentile(ms, 50)),
                                           float(np.percentile(ms, 99)), peak, agree, rel, note=note,
                                           max_flipped_margin=flipped))
    finally:
        tmpdir.cleanup()
    base = report.paths[0].images_per_s
    for r in report.paths:
        r.speedup = r.images_per_s / base
    report.load_after = os.getloadavg()
    return report


def _onnx_export(model: nn.Module, name: str, family: str, folder: str) -> str:
    from .export import export

    mean, std = (IMAGENET_MEAN, IMAGENET_STD) if family == "imagenet" else (CIFAR_MEAN, CIFAR_STD)
    loaded = LoadedModel(model, [str(i) for i in range(model.num_classes)], mean, std, family, "<bench>", name)
    return export(loaded, "onnx", out=Path(folder) / f"{name}.onnx").path


def _onnx_runner(path: str) -> Callable[[torch.Tensor], torch.Tensor]:
    from .quantize import onnx_session

    session = onnx_session(path)

    def run(x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(session.run(None, {"images": x.numpy()})[0])

    return run


def format_report(r: BenchReport) -> str:
    """The report as a Markdown table with a header of what was measured, on what."""
    lines = [
        f"{r.model} {r.input_size}x{r.input_size}, batch {r.batch}, {r.iters} timed batches; "
        f"{r.threads} threads on {r.cpu} (native bf16: {'yes' if r.native_bf16 else 'no'})",
        f"load average {r.load_before[0]:.1f} before, {r.load_after[0]:.1f} after (other processes share the CPU)",
        f"fidelity on {r.agreement_images} real images from {r.images}, random weights with calibrated BN: "
        "agreement and relative error of the logits vs the reference (random weights' near-tie logits "
        "understate the agreement trained weights give)",
        "",
        "| path | images/s | vs reference | p50 ms/batch | p99 ms/batch | top-1 agreement | logits rel. error "
        "| peak RSS MiB |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for p in r.paths:
        name = p.name + (f" [{p.note}]" if p.note else "")
        lines.append(f"| {name} | {p.images_per_s:.1f} | {p.speedup:.2f}x | {p.p50_ms:.1f} | {p.p99_ms:.1f} | "
                     f"{p.top1_agreement:.2%} | {p.rel_error:.2e} | {p.peak_rss_mib:.0f} |")
    best = max(r.paths, key=lambda p: p.images_per_s)
    flips = [f"{p.name.split(' (')[0]}: {p.max_flipped_margin:.3f}" for p in r.paths if p.max_flipped_margin]
    lines += [
        "",
        f"median top-1/top-2 logit gap of the reference: {r.median_margin:.3f}; largest gap among changed top-1s: "
        + ("; ".join(flips) if flips else "none changed"),
        f"matmul {r.matmul_size}^3: bf16 {r.matmul_tflops_bf16:.2f} TFLOP/s, fp32 {r.matmul_tflops_fp32:.2f} TFLOP/s; "
        f"{r.gflop_per_image:.2f} GFLOP per image -> floor {r.floor_images_per_s:.0f} images/s at the bf16 rate; "
        f"fastest path reaches {best.images_per_s / r.floor_images_per_s:.0%} of it",
    ]
    return "\n".join(lines)
