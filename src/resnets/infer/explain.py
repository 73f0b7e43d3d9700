"""Grad-CAM (Selvaraju et al. 2017) on a ResNet's last stage, drawn as a heat map over the image.

The stage is named as in the paper's Table 1 and everywhere else in resnets: ``conv5_x`` for ImageNet nets,
``conv4_x`` for CIFAR nets (the modules ``layer4`` and ``layer3``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import UserError
from ..runtime import autocast_context, autocast_dtype
from .fastpath import FastModel
from .loading import LoadedModel, load_for_inference, require


@dataclass
class Explanation:
    """A Grad-CAM map (H x W in 0..1, input resolution) for one class of one image."""

    path: str
    class_index: int
    class_name: str
    probability: float
    cam: np.ndarray
    image: np.ndarray  # H x W x 3 uint8: the network's view of the image (resized, cropped)
    layer: str  # the stage explained, by the paper's name: conv5_x (CIFAR nets: conv4_x)
    out: str | None = None


def grad_cam(model: torch.nn.Module, x: torch.Tensor, class_index: int | None = None, *,
             dtype: torch.dtype | None = None) -> tuple[torch.Tensor, torch.Tensor, str]:
    """``(cam, logits, stage)`` for a 1 x 3 x H x W input: the last stage's activations weighted by the mean
    gradient of the class score (predicted class by default), ReLU'd, upsampled to H x W, scaled to 0..1;
    ``stage`` is the paper's name of that stage (``conv5_x``, CIFAR nets ``conv4_x``). ``dtype``: run the
    model under that autocast (bf16, as predict may), else in float32."""
    stages = model.stage_names
    layer = f"conv{len(stages) + 1}_x"
    feats: list[torch.Tensor] = []
    handle = getattr(model, stages[-1]).register_forward_hook(lambda _m, _i, out: feats.append(out))
    try:
        with torch.enable_grad():
            x = x.detach().requires_grad_(False)
            with autocast_context(x.device, dtype):
                logits = model(x)
            idx = int(logits.argmax(1)) if class_index is None else class_index
            (grads,) = torch.autograd.grad(logits[0, idx], feats[0])
    finally:
        handle.remove()
    acts = feats[0].detach().float()
    weights = grads.float().mean(dim=(2, 3), keepdim=True)
    cam = torch.relu((weights * acts).sum(1, keepdim=True))
    cam = F.interpolate(cam, size=x.shape[-2:], mode="bilinear", align_corners=False)[0, 0]
    top = cam.max()
    cam = cam / top if top > 0 else cam
    return cam, logits.detach().float(), layer


def explain(
    weights: str | os.PathLike[str] | LoadedModel,
    image: str | os.PathLike[str],
    *,
    out: str | os.PathLike[str] | None = None,
    class_name: str | None = None,
    model_name: str | None = None,
    precision: str = "auto",
) -> Explanation:
    """Grad-CAM of ``image`` for the predicted class or ``class_name`` (a name or an index); with ``out``,
    a PNG of the heat map over the image is written atomically. ``precision`` as for ``predict`` (the same
    choice, so the class and probability are predict's)."""
    from ..data import read_rgb

    if out is not None:
        require("matplotlib", "explain")
    loaded = load_for_inference(weights, model_name)
    idx = None if class_name is None else class_index(loaded.classes, class_name)
    fast = FastModel(loaded.model, precision, input_size=loaded.input_size, model_key=loaded.name)  # predict's
    result = explain_image(loaded, read_rgb(image), idx, path=str(image), fast=fast)
    if out is not None:
        result.out = str(save_overlay(result, out))
    return result


def explain_image(loaded: LoadedModel, raw: torch.Tensor, class_index: int | None = None, *,
                  path: str = "<image>", fast: FastModel | None = None) -> Explanation:
    """Grad-CAM of a decoded uint8 3 x H x W image for class ``class_index`` (the predicted one by default).

    The class and probability are ``fast``'s (predict's fast path; default: predict's ``auto`` choice), and
    the map is taken on the plain model in ``fast``'s number format: one model, one format, predict's answer.
    """
    x = loaded.preprocess(raw).unsqueeze(0)
    if fast is None:
        fast = FastModel(loaded.model, "auto", input_size=loaded.input_size, model_key=loaded.name)
    probs = torch.softmax(fast(x), 1)[0]
    idx = int(probs.argmax()) if class_index is None else class_index
    model = loaded.model.eval()
    cam, _logits, layer = grad_cam(model, x, idx, dtype=autocast_dtype(fast.precision))
    mean = torch.tensor(loaded.mean).view(3, 1, 1)
    std = torch.tensor(loaded.std).view(3, 1, 1)
    view = ((x[0] * std + mean).clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()
    return Explanation(path, idx, loaded.classes[idx], float(probs[idx]), cam.numpy(), view, layer)


def class_index(classes: list[str], name: str) -> int:
    """Index of class ``name`` (exact, then case-insensitive, then a number); UserError otherwise."""
    if name in classes:
        return classes.index(name)
    lowered = [c.lower() for c in classes]
    if name.lower() in lowered:
        return lowered.index(name.lower())
    if name.isdigit() and int(name) < len(classes):
        return int(name)
    import difflib

    close = difflib.get_close_matches(name, classes, n=3)
    hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    raise UserError(f"no class named {name!r} among the model's {len(classes)} classes{hint}")


def save_overlay(exp: Explanation, out: str | os.PathLike[str]) -> Path:
    """Write the image, the heat map over it and its colour bar as a PNG, atomically."""
    from ..outputs import atomic_write

    return atomic_write(out, lambda tmp: _overlay_figure(exp).savefig(tmp, format="png"))


def overlay_png(exp: Explanation) -> bytes:
    """The PNG ``save_overlay`` writes, as bytes."""
    import io

    buffer = io.BytesIO()
    _overlay_figure(exp).savefig(buffer, format="png")
    return buffer.getvalue()


def _overlay_figure(exp: Explanation):  # noqa: ANN202 - matplotlib is optional
    """The image, the heat map over it and its colour bar, as a matplotlib Figure."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    fig = Figure(figsize=(4.2, 4.6), dpi=100)
    ax = fig.add_subplot()
    ax.imshow(exp.image, interpolation="bilinear")
    shown = ax.imshow(exp.cam, cmap="jet", alpha=0.45, vmin=0.0, vmax=1.0, interpolation="bilinear")
    fig.colorbar(shown, ax=ax, fraction=0.046, pad=0.04)
    ax.set_title(f"{exp.class_name} ({exp.probability:.1%}), Grad-CAM on {exp.layer}", fontsize=9)
    ax.set_axis_off()
    fig.tight_layout()
    return fig
