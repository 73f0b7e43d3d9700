"""Evaluation: top-1, top-5, per-class accuracy and the confusion matrix, with optional flip or 10-crop TTA.

``evaluate_model`` scores a model on batches already normalised (used by the training loop every epoch);
``evaluate`` is the whole job behind ``resnets eval``: weights file + data set -> JSON report + confusion PNG.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .errors import UserError
from .runtime import autocast_context, autocast_dtype, choose_precision, resolve_device

TTA_MODES = ("flip", "10crop")




def ten_crop_views(x: torch.Tensor, crop: int) -> list[torch.Tensor]:
    """The four corner crops and the centre crop of side ``crop``, each also mirrored: ten views of ``x``."""
    h, w = x.shape[-2:]
    if h < crop or w < crop:
        raise UserError(f"10-crop needs images of at least {crop} pixels, got {h}x{w}")
    top, left = (h - crop) // 2, (w - crop) // 2
    views = [x[..., :crop, :crop], x[..., :crop, w - crop:], x[..., h - crop:, :crop], x[..., h - crop:, w - crop:],
             x[..., top:top + crop, left:left + crop]]
    return views + [v.flip(-1) for v in views]


def tta_views(x: torch.Tensor, tta: str | None, *, crop: int | None = None, pad: int = 4) -> list[torch.Tensor]:
    """The views whose softmax outputs are averaged: ``x``; ``flip``: x and its mirror; ``10crop``: see
    ``ten_crop_views`` (``crop`` given: crops of that side from ``x``; else ``x`` padded by ``pad``, crops of
    its own size)."""
    if tta is None:
        return [x]
    if tta == "flip":
        return [x, x.flip(-1)]
    if tta == "10crop":
        if crop is None:
            crop = x.shape[-1]
            x = F.pad(x, (pad, pad, pad, pad))
        return ten_crop_views(x, crop)
    raise UserError(f"unknown TTA mode '{tta}'; choose one of: {', '.join(TTA_MODES)}")


@torch.no_grad()
def evaluate_model(
    model: nn.Module,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    *,
    num_classes: int,
    device: torch.device | str = "cpu",
    autocast_dtype: torch.dtype | None = None,
    tta: str | None = None,
    crop: int | None = None,
    channels_last: bool = False,
    progress: bool = False,
) -> dict[str, Any]:
    """Loss, top-1 and top-5 accuracy (%), and the confusion matrix (rows: true class) of ``model``.

    With ``tta`` the class probabilities of the views are averaged; the loss is the NLL of that average.
    ``progress``: show the batches done on stderr (see :mod:`resnets.progress`).
    """
    from .progress import Progress

    try:
        total: int | None = len(batches)  # type: ignore[arg-type]
    except TypeError:  # an iterable of unknown length
        total = None
    device = torch.device(device)
    was_training = model.training
    model.eval()
    # summed on the device, read once at the end: no host sync per batch
    confusion = torch.zeros(num_classes * num_classes, dtype=torch.int64, device=device)
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    top5 = torch.zeros((), dtype=torch.int64, device=device)
    n = 0
    k = min(5, num_classes)
    views = len(tta_views(torch.zeros(1, 1, 1, 1), tta, crop=1))  # how many views a batch has (unknown: refused)
    with Progress(total, "evaluating", unit="batches", enabled=progress) as bar:
        for x, y in batches:
            x = x.to(device, non_blocking=True)
            y = y.to(device, non_blocking=True)
            probs = None
            for view in tta_views(x, tta, crop=crop):
                if channels_last:
                    view = view.contiguous(memory_format=torch.channels_last)
                with autocast_context(device, autocast_dtype):
                    logits = model(view)
                p = logits.float().softmax(1)
                probs = p if probs is None else probs + p
            assert probs is not None
            probs /= views
            loss_sum += F.nll_loss(probs.clamp_min(1e-12).log(), y, reduction="sum").double()
            pred = probs.argmax(1)
            top5 += (probs.topk(k, 1).indices == y[:, None]).any(1).sum()
            confusion += torch.bincount(y * num_classes + pred, minlength=num_classes**2)
            n += len(y)
            bar.update()
    model.train(was_training)
    if n == 0:
        raise UserError("nothing to evaluate: the data set is empty")
    confusion = confusion.cpu().view(num_classes, num_classes)
    correct = int(confusion.diag().sum())
    return {"loss": float(loss_sum) / n, "top1": 100.0 * correct / n, "top5": 100.0 * int(top5) / n, "n": n,
            "confusion": confusion}


def evaluate(
    weights: str | Path,
    data: str,
    *,
    tta: str | None = None,
    device: str = "auto",
    precision: str = "auto",
    batch_size: int = 256,
    out_dir: str | Path | None = None,
    cache_dir: str | None = None,
    skip_bad_images: bool = False,
    workers: int | None = None,
    max_images: int | None = None,
    model_name: str | None = None,
    variant: str | None = None,
    image_size: int | None = None,
    progress: bool = True,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Score weights on the test (or val) split of ``data``; write a JSON report and a PNG.

    ``weights``: a ``save_weights`` file or run folder, or with ``model_name`` (and ``variant``) a
    torchvision/timm ``.pth``. ``data``: as for ``open_data``, a folder of class folders (a test set alone, or
    a ``test/``/``val/`` folder itself), or shards; the training split is never read. Returns the report:
    top1, top5, loss, per-class accuracy, confusion matrix, skipped images, classes missing from the data,
    and where the files went (``out_dir``, default the weights' folder, the current one for a weights name:
    ``eval-<data>[-<tta>].json`` and
    ``...-confusion.png``). ``max_images`` scores a fixed seeded subset only, for quick checks.
    ``image_size`` (default: the side the weights record they were trained at, as predict and serve feed
    them) scales small images to that side (upscaled on the device if all one smaller square size; else
    shorter side, centre crop), or sets the crop of streamed large images; ``log`` gets one line when it
    overrides the recorded side. ``progress=False`` hides the progress (decoding, batches evaluated)
    otherwise shown on stderr.
    """
    from .data.sources import open_eval
    from .infer.loading import load_for_inference, trained_sizes
    from .outputs import atomic_write, check_out_dir

    if tta is not None and tta not in TTA_MODES:
        raise UserError(f"unknown TTA mode '{tta}'; choose one of: {', '.join(TTA_MODES)}")
    if max_images is not None and max_images < 1:
        raise UserError(f"--max-images must be at least 1, got {max_images}")
    if image_size is not None and image_size < 1:
        raise UserError(f"--image-size must be a positive number of pixels, got {image_size}")
    if workers is None:
        from .train.config import default_workers

        workers = default_workers()  # the cores this process may use, at most 4
    dev = resolve_device(device)
    choose_precision(precision, dev)  # a wrong name fails here, before any work
    from .pretrained import resolve_name

    named = resolve_name(weights, model_name)  # a weights name: the report goes to the current folder, not the cache
    loaded = load_for_inference(weights, model_name, variant=variant)
    weights = loaded.source
    default_out = Path.cwd() if named is not None else Path(weights).parent
    out = check_out_dir(out_dir if out_dir is not None else default_out)  # before the work, not after
    model = loaded.model.to(dev)
    classes = model.card.classes
    trained_side, trained_resize = trained_sizes(weights)  # (0, 0): the weights record none (a .pth)
    if image_size and trained_side and image_size != trained_side and log is not None:
        log(f"feeding {image_size} px though the weights were trained at {trained_side} px (--image-size)")
    side = image_size or trained_side or None
    start = time.perf_counter()
    opened = open_eval(data, dev, mean=loaded.mean, std=loaded.std, batch_size=batch_size, cache_dir=cache_dir,
                       skip_bad_images=skip_bad_images, workers=workers, tta=tta, channels_last=True,
                       max_images=max_images, classes=classes, image_size=side,
                       resize=trained_resize if side == trained_side else None, progress=progress)
    batches, data_classes, crop = opened.batches, opened.classes, opened.crop
    if model.num_classes != len(data_classes):
        raise UserError(f"the weights classify {model.num_classes} classes but {data} has {len(data_classes)}")
    if classes is not None and list(classes) != list(data_classes):
        raise UserError(f"the weights' classes ({_some(classes)}) differ from {data}'s ({_some(data_classes)})")
    classes = list(data_classes)
    from .models.registry import model_family

    name = loaded.name
    side = crop or side or (224 if model_family(name) == "imagenet" else 32)
    dtype = autocast_dtype(choose_precision(precision, dev, model, image_size=side, model_key=name))
    result = evaluate_model(model, batches, num_classes=len(classes), device=dev, autocast_dtype=dtype, tta=tta,
                            crop=crop, channels_last=True, progress=progress)
    confusion = result.pop("confusion")
    totals = confusion.sum(1)
    per_class = {c: (100.0 * int(confusion[i, i]) / int(totals[i]) if totals[i] else None)
                 for i, c in enumerate(classes)}
    out.mkdir(parents=True, exist_ok=True)
    stem = "eval-" + _slug(data) + (f"-{tta}" if tta else "")
    report: dict[str, Any] = {
        "weights": str(weights), "data": str(data), "model": model.card.spec, "tta": tta, "images": result["n"],
        "top1": result["top1"], "top5": result["top5"], "loss": result["loss"], "per_class": per_class,
        "classes": classes, "confusion": confusion.tolist(), "seconds": time.perf_counter() - start,
        "device": str(dev), "precision": str(dtype).removeprefix("torch.") if dtype else "fp32",
        "report": str(out / f"{stem}.json"), "confusion_png": str(out / f"{stem}-confusion.png"),
        "bad_images": [list(b) for b in opened.bad_images], "missing_classes": opened.missing_classes,
    }
    atomic_write(out / f"{stem}-confusion.png", lambda tmp: plot_confusion(
        confusion, classes, tmp, title=f"{name} on {data}: top-1 {result['top1']:.2f}%"))
    atomic_write(out / f"{stem}.json", lambda tmp: Path(tmp).write_text(json.dumps(report, indent=2) + "\n"))
    return report


def plot_confusion(confusion: torch.Tensor, classes: list[str], path: str | Path, *, title: str = "") -> Path:
    """A PNG of the row-normalised confusion matrix (rows: true class, columns: predicted)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    k = len(classes)
    rates = confusion.double() / confusion.sum(1, keepdim=True).clamp_min(1)
    size = min(12.0, 3 + 0.45 * k)
    fig, ax = plt.subplots(figsize=(size, size * 0.9), dpi=100)
    im = ax.imshow(rates.numpy(), cmap="Blues", vmin=0, vmax=1)
    if k <= 30:
        ax.set_xticks(range(k), classes, rotation=60, ha="right", fontsize=8)
        ax.set_yticks(range(k), classes, fontsize=8)
        if k <= 15:
            for i in range(k):
                for j in range(k):
                    if confusion[i, j]:
                        ax.text(j, i, int(confusion[i, j]), ha="center", va="center", fontsize=7,
                                color="white" if rates[i, j] > 0.5 else "black")
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title, fontsize=10)
    fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    fig.savefig(path, format="png")
    plt.close(fig)
    return Path(path)


def _slug(text: str) -> str:
    name = Path(text).name or text
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)[:60] or "data"


def _some(items: list[str], n: int = 4) -> str:
    return ", ".join(items[:n]) + (", ..." if len(items) > n else "")
