"""The degradation experiment (paper section 4.2, Figures 6 and 7, Table 6): plain nets beside ResNets.

For each depth, the plain net and the ResNet are trained with the same recipe and seed, each as an ordinary
resumable training run in ``<out>/<model>/``. Then the experiment writes, into ``<out>``:

* ``fig6_errors.png`` - training error (dashed) and test error (solid) per depth, plain left, ResNets right;
* ``table.md``, ``results.csv``, ``results.json`` - final errors beside the paper's Table 6;
* ``fig7_responses.png``, ``responses.json``, ``responses.csv`` - std of every 3x3 layer's response.

A rerun of the same command skips finished models and resumes an interrupted one.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..errors import UserError
from ..models.registry import PLAIN_CIFAR_DEPTHS
from ..train import RECIPES, Callback, resolve_config, train
from ..train.metrics import read_metrics

# Paper Table 6: ResNet test error (%) on CIFAR-10. ResNet-110 is the best of 5 runs (mean 6.61 +- 0.16).
PAPER_TABLE6 = {20: 8.75, 32: 7.51, 44: 7.17, 56: 6.97, 110: 6.43, 1202: 7.93}
PLAIN_NOTE = ("The paper gives the plain nets' errors only as curves (Figure 6), not in a table, so the "
              "plain columns have no paper figure.")

# The short default: the paper's recipe (SGD 0.9, weight decay 1e-4, LR 0.1 / 10 at 50% and 75% of the run,
# pad-crop-flip) on a fixed 10k-image subset for 12 epochs, to run four nets in about half an hour on two CPU
# cores. Two changes, the same for every net. Batch 64, not 128: the same images in twice the
# steps (1872), and faster per image on a CPU (smaller activations stay in cache). At this length ResNet-56
# against ResNet-20 is still within run-to-run noise (docs/degradation.md). A warm-up: the LR rises linearly
# from 0 to 0.1 over the first tenth of the run; without it ResNet-56's first steps diverge, and after the
# paper's constant 0.01 (its remedy for ResNet-110) the jump to 0.1 diverges too.
SHORT = {"base": "cifar-paper", "epochs": 12.0, "train_images": 10000, "test_images": 2000, "batch_size": 64,
         "lr": 0.1, "warmup_fraction": 0.1}
# Where bf16 is fast (a GPU, or a CPU whose probe times bf16 ahead of float32), the short recipe runs three
# times as long at batch 128 in the same wall time: that setting shows all three of Figure 6's effects, with
# ResNet-56 ahead of ResNet-20 (30.7 minutes in bf16 on a 2-core Zen 5; docs/degradation.md).
FAST_SHORT = {"epochs": 36.0, "batch_size": 128}
RECIPE_CHOICES = ("short", "cifar-paper", "cifar-fast")
DEFAULT_OUT = "runs/degradation"


@dataclass
class DegradationOptions:
    """What to run. ``None`` takes the recipe's value; ``train_images``/``test_images`` 0 means all."""

    depths: tuple[int, ...] = (20, 56)
    kinds: tuple[str, ...] = ("plain", "resnet")  # which nets of each depth to train: plain, resnet or both
    data: str = "sample"
    out: str = DEFAULT_OUT
    recipe: str = "short"
    epochs: float | None = None
    train_images: int | None = None
    test_images: int | None = None
    batch_size: int | None = None
    lr: float | None = None
    warmup: float | None = None  # short recipe: the linear warm-up's length, as a fraction of the run
    seed: int = 0
    device: str = "auto"
    precision: str = "auto"  # one format for every net; auto: bf16 where it is fast here (GPU or CPU probe)
    response_images: int = 500
    cache_dir: str | None = None
    progress: bool = True


@dataclass
class DegradationResult:
    """Where everything went, and the final errors per model."""

    out: Path
    rows: list[dict[str, Any]]
    files: dict[str, Path] = field(default_factory=dict)


def model_names(depths: Sequence[int], kinds: Sequence[str] = ("plain", "resnet")) -> list[str]:
    """Training order: per depth (ascending), the plain net then the ResNet (those of ``kinds``)."""
    return [f"{kind}{d}" for d in sorted(set(depths)) for kind in ("plain", "resnet") if kind in kinds]


def parse_kinds(text: str) -> tuple[str, ...]:
    """``"resnet"`` -> ``("resnet",)``; ``"plain,resnet"`` -> both."""
    kinds = tuple(sorted({t.strip() for t in text.split(",") if t.strip()}))
    if not kinds or set(kinds) - {"plain", "resnet"}:
        raise UserError(f"--kinds takes plain, resnet or plain,resnet, not {text!r}")
    return kinds


def parse_depths(text: str) -> tuple[int, ...]:
    """``"20,56"`` -> ``(20, 56)``; only depths that have a plain CIFAR net."""
    try:
        depths = tuple(sorted({int(t) for t in text.split(",") if t.strip()}))
    except ValueError:
        raise UserError(f"--depths takes comma-separated integers, e.g. 20,56, not {text!r}") from None
    bad = [d for d in depths if d not in PLAIN_CIFAR_DEPTHS]
    if not depths or bad:
        raise UserError(f"depths must be among {', '.join(map(str, PLAIN_CIFAR_DEPTHS))} (the plain CIFAR nets), "
                        f"got {text!r}")
    return depths


def resolve_settings(opts: DegradationOptions) -> dict[str, Any]:
    """The experiment's settings, every ``None`` replaced: recipe, base trainer recipe, sizes, length, seed."""
    if opts.recipe not in RECIPE_CHOICES:
        raise UserError(f"unknown recipe {opts.recipe!r}; choose one of: {', '.join(RECIPE_CHOICES)}")
    short = opts.recipe == "short"
    base = SHORT["base"] if short else opts.recipe
    precision = experiment_precision(opts)
    # the short recipe's length and batch: three times the training where bf16 is fast, unless given
    shape = dict(SHORT, **FAST_SHORT) if short and precision in ("bf16", "auto") else SHORT
    settings = {
        "recipe": opts.recipe, "base_recipe": base, "data": opts.data, "seed": opts.seed,
        "epochs": opts.epochs if opts.epochs is not None else (shape["epochs"] if short else None),
        "train_images": opts.train_images if opts.train_images is not None else (SHORT["train_images"] if short else 0),
        "test_images": opts.test_images if opts.test_images is not None else (SHORT["test_images"] if short else 0),
        "batch_size": opts.batch_size or (shape["batch_size"] if short else RECIPES[base]["batch_size"]),
        "lr": opts.lr or (SHORT["lr"] if short else RECIPES[base]["lr"]),
        "precision": precision,
    }
    if short:
        settings["warmup_fraction"] = SHORT["warmup_fraction"] if opts.warmup is None else opts.warmup
        if not 0 <= settings["warmup_fraction"] < 1:
            raise UserError("--warmup is a fraction of the run, from 0 to below 1 (e.g. 0.1)")
    elif opts.warmup is not None:
        raise UserError("--warmup belongs to the short recipe; the other recipes keep their own warm-up")
    if settings["epochs"] is not None and settings["epochs"] <= 0:
        raise UserError("--epochs must be positive")
    if settings["train_images"] < 0 or settings["test_images"] < 0 or opts.response_images < 1:
        raise UserError("image counts must be positive (0: all images)")
    return settings


def experiment_precision(opts: DegradationOptions) -> str:
    """The number format of every net, chosen as the trainer chooses (``runtime.choose_precision``), once for
    all nets so the comparison stays fair: ``opts.precision`` if given; on CPU ``auto`` is what the probe finds
    faster for training the deepest ResNet of the experiment; on CUDA ``auto`` stays (bf16 where native)."""
    from ..models import create_model
    from ..runtime import choose_precision, resolve_device

    device = resolve_device(opts.device)
    if opts.precision == "auto" and device.type == "cuda":
        return "auto"
    name = f"resnet{max(opts.depths)}"
    model = create_model(name) if opts.precision == "auto" else None
    return choose_precision(opts.precision, device, model, image_size=32, training=True, model_key=name)


def _check_settings(out: Path, settings: dict[str, Any]) -> None:
    path = out / "experiment.json"
    if path.is_file():
        saved = json.loads(path.read_text())
        saved.setdefault("precision", "fp32")  # experiments from before the precision choice ran in float32
        if saved != settings:
            diff = ", ".join(f"{k}: {saved.get(k)!r} -> {v!r}" for k, v in settings.items() if saved.get(k) != v)
            raise UserError(f"{out} holds an experiment with other settings ({diff}); rerun it with the same "
                            "options to resume, or pick another --out")
    else:
        out.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(settings, indent=2) + "\n")


def _open_splits(opts: DegradationOptions, settings: dict[str, Any]) -> tuple[Any, Any]:
    """The training and test images the runs use: the trainer's fixed seeded subsets of ``opts.data``."""
    from ..data import open_data
    from ..data.splits import limit_images

    splits = open_data(opts.data, cache_dir=opts.cache_dir, progress=opts.progress)
    return (limit_images(splits.train, settings["train_images"] or None),
            limit_images(splits.test, settings["test_images"] or None))


def train_config(name: str, settings: dict[str, Any], n_train: int, run_dir: Path, opts: DegradationOptions) -> Any:
    """The ``TrainConfig`` of one model: the base recipe, with the experiment's batch, LR, length and data.

    Recipes whose schedule counts iterations (the paper's) keep its shape: with ``epochs`` given, the run
    lasts that many epochs and the milestones move in proportion (the paper: 32k and 48k of 64k).
    """
    base = RECIPES[settings["base_recipe"]]
    batch = settings["batch_size"]
    steps_per_epoch = n_train // batch
    if steps_per_epoch < 1:
        raise UserError(f"the training set ({n_train} images) is smaller than one batch ({batch}); give a "
                        f"smaller --batch-size (at most {n_train})")
    overrides: dict[str, Any] = {
        "model": name, "data": settings["data"], "train_images": settings["train_images"] or None,
        "test_images": settings["test_images"] or None, "out": str(run_dir), "seed": settings["seed"],
        "batch_size": batch, "lr": settings["lr"], "device": opts.device, "cache_dir": opts.cache_dir,
        "progress": opts.progress, "log_every": max(1, steps_per_epoch // 8),
        "precision": settings.get("precision", "auto"),
    }
    epochs = settings["epochs"]
    if base.get("schedule_unit") == "iterations" and base.get("iterations"):
        iterations = base["iterations"] if epochs is None else max(1, math.ceil(epochs * steps_per_epoch))
        scale = iterations / base["iterations"]
        overrides.update(iterations=iterations, milestones=[round(m * scale) for m in base["milestones"]])
        if settings["recipe"] == "short":
            # the same warm-up for every net (a fair comparison): a linear ramp over warmup_fraction of the run
            overrides.update(warmup=round(iterations * settings["warmup_fraction"]), warmup_lr=None)
    elif epochs is not None:
        overrides["epochs"] = epochs
    return resolve_config(overrides, recipe=settings["base_recipe"])


def _train_model(name: str, cfg: Any, run_dir: Path, log: Callable[[str], None],
                 on_step: Sequence[Callback]) -> None:
    done = run_dir / "done.json"
    if done.is_file():
        log(f"{name}: finished earlier, skipped ({run_dir})")
        return
    resume = run_dir if (run_dir / "last.pt").is_file() else None
    result = train(cfg, resume=resume, on_step=on_step, log=log)
    if result.interrupted:
        raise KeyboardInterrupt
    done.write_text(json.dumps({"step": result.step, "final": result.final}, indent=2) + "\n")


def error_curves(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """A run's training error (its step records: measured on the training batches, as the paper's curves)
    and test error (its epoch records), as ``(iteration, error %)`` lists."""
    records = read_metrics(run_dir)
    train_pts = [(r["step"], 100.0 - r["train_acc"]) for r in records if r["kind"] == "step"]
    test_pts = [(r["step"], 100.0 - r["val_acc"]) for r in records if r["kind"] == "epoch" and "val_acc" in r]
    return {"train": train_pts, "test": test_pts}


def final_errors(run_dir: Path) -> tuple[float, float]:
    """Training error over the last epoch (as measured during training) and final test error, in %."""
    epochs = [r for r in read_metrics(run_dir) if r["kind"] == "epoch"]
    if not epochs:
        raise UserError(f"{run_dir} has no finished epoch")
    return 100.0 - epochs[-1]["train_acc"], 100.0 - epochs[-1]["val_acc"]


def results_table(rows: list[dict[str, Any]]) -> str:
    """Markdown: per depth, plain and ResNet final training/test errors beside the paper's Table 6."""
    by = {(r["kind"], r["depth"]): r for r in rows}
    depths = sorted({r["depth"] for r in rows})
    lines = ["| depth | plain train err | plain test err | ResNet train err | ResNet test err | "
             "paper ResNet test err (Table 6) |", "|---:|---:|---:|---:|---:|---:|"]

    def pct(row: dict[str, Any] | None, key: str) -> str:
        return f"{row[key]:.2f}%" if row else "-"

    for d in depths:
        plain, res = by.get(("plain", d)), by.get(("resnet", d))
        paper = f"{PAPER_TABLE6[d]:.2f}%" if d in PAPER_TABLE6 else "-"
        lines.append(f"| {d} | {pct(plain, 'train_error')} | {pct(plain, 'test_error')} | "
                     f"{pct(res, 'train_error')} | {pct(res, 'test_error')} | {paper} |")
    lines += ["", PLAIN_NOTE]
    if len(depths) >= 2:
        lo, hi = depths[0], depths[-1]
        for kind, label in (("plain", "plain"), ("resnet", "ResNet")):
            a, b = by.get((kind, lo)), by.get((kind, hi))
            if a and b:
                verb = "higher" if b["train_error"] > a["train_error"] else \
                    "lower" if b["train_error"] < a["train_error"] else "the same"
                lines.append(f"{label}-{hi} ends with {verb} training error than {label}-{lo}: "
                             f"{b['train_error']:.2f}% vs {a['train_error']:.2f}%.")
    return "\n".join(lines) + "\n"


def _write_results(out: Path, rows: list[dict[str, Any]], settings: dict[str, Any]) -> dict[str, Path]:
    table = out / "table.md"
    table.write_text(results_table(rows))
    with open(out / "results.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, ["model", "kind", "depth", "train_error", "test_error", "paper_test_error",
                                     "steps"])
        writer.writeheader()
        writer.writerows(rows)
    (out / "results.json").write_text(json.dumps({"settings": settings, "rows": rows, "note": PLAIN_NOTE},
                                                 indent=2) + "\n")
    return {"table": table, "results_csv": out / "results.csv", "results_json": out / "results.json"}


def _responses(names: list[str], out: Path, test: Any, opts: DegradationOptions) -> dict[str, Any]:
    """Figure 7 statistics of every trained model, on the first ``response_images`` of a seeded shuffle of
    the test images."""
    from ..data import DeviceBatches
    from ..data.splits import limit_images
    from ..models import create_model
    from ..train.checkpoint import load_checkpoint
    from .responses import response_stds

    images = limit_images(test, opts.response_images)
    results = {}
    for name in names:
        ckpt = load_checkpoint(out / name / "last.pt")
        model = create_model(name, num_classes=len(ckpt["classes"]))
        model.load_state_dict(ckpt["model"])
        norm = ckpt["normalization"]
        batches = DeviceBatches(images, 250, train=False, mean=norm["mean"], std=norm["std"], channels_last=False)
        results[name] = response_stds(model, batches)
    return results


def run_degradation(opts: DegradationOptions, *, log: Callable[[str], None] = print,
                    on_step: Sequence[Callback] = ()) -> DegradationResult:
    """Train every plain net and ResNet of ``opts.depths`` (skipping finished ones, resuming a partial one),
    then write the Figure 6 plot, the Table 6 comparison and the Figure 7 response analysis into ``opts.out``."""
    from .plots import plot_error_curves, plot_responses
    from .responses import write_responses

    settings = resolve_settings(opts)
    out = Path(opts.out)
    _check_settings(out, settings)
    train_set, test_set = _open_splits(opts, settings)
    names = model_names(opts.depths, opts.kinds)
    for i, name in enumerate(names, start=1):
        log(f"[{i}/{len(names)}] {name}")
        cfg = train_config(name, settings, len(train_set), out / name, opts)
        try:
            _train_model(name, cfg, out / name, log, on_step)
        except KeyboardInterrupt:
            log(f"{name} interrupted; run the same command again to resume the experiment")
            raise

    rows = []
    for name in names:
        kind, depth = ("plain", int(name[5:])) if name.startswith("plain") else ("resnet", int(name[6:]))
        train_err, test_err = final_errors(out / name)
        rows.append({"model": name, "kind": kind, "depth": depth, "train_error": round(train_err, 2),
                     "test_error": round(test_err, 2),
                     "paper_test_error": PAPER_TABLE6.get(depth) if kind == "resnet" else None,
                     "steps": json.loads((out / name / "done.json").read_text())["step"]})
    files = _write_results(out, rows, {**settings, "depths": list(opts.depths)})
    files["fig6"] = plot_error_curves({n: error_curves(out / n) for n in names}, out / "fig6_errors.png")
    log("measuring layer responses (Figure 7)")
    with torch.no_grad():
        responses = _responses(names, out, test_set, opts)
    files["responses_json"], files["responses_csv"] = write_responses(responses, out)
    files["fig7"] = plot_responses(responses, out / "fig7_responses.png")
    log((out / "table.md").read_text())
    log("wrote " + ", ".join(str(p) for p in files.values()))
    return DegradationResult(out=out, rows=rows, files=files)


__all__ = ["PAPER_TABLE6", "DegradationOptions", "DegradationResult", "run_degradation"]
