"""The degradation experiment's figures: the paper's Figure 6 (error curves) and Figure 7 (layer responses)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from .responses import LayerResponse, sorted_stds

# One colour per depth, the same in every panel and figure.
_DEPTH_COLOURS = {20: "tab:orange", 32: "tab:blue", 44: "tab:green", 56: "tab:red", 110: "black"}


def model_style(name: str) -> dict[str, Any]:
    """Matplotlib line options for a model: colour by depth, dashed for plain nets; label like the paper's."""
    match = re.fullmatch(r"(plain|resnet)(\d+)", name)
    if match is None:
        return {"label": name}
    kind, depth = match.group(1), int(match.group(2))
    return {"label": f"{'plain' if kind == 'plain' else 'ResNet'}-{depth}",
            "color": _DEPTH_COLOURS.get(depth, "tab:purple"), "linestyle": "--" if kind == "plain" else "-"}


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_error_curves(curves: dict[str, dict[str, list[tuple[int, float]]]], path: str | Path) -> Path:
    """Figure 6: training error (dashed) and test error (solid, bold) against iterations; plain nets on the
    left, ResNets on the right, one colour per depth.

    ``curves[name]`` holds ``"train"`` and ``"test"`` lists of ``(iteration, error %)``.
    """
    plt = _pyplot()
    kinds = [k for k in ("plain", "resnet") if any(n.startswith(k) for n in curves)] or ["plain", "resnet"]
    fig, axes = plt.subplots(1, len(kinds), figsize=(5.5 * len(kinds), 4.2), dpi=110, sharey=True,
                             squeeze=False)
    axes = axes[0]
    panels = dict(zip(kinds, axes, strict=True))  # only the kinds trained: one panel each
    for name, curve in curves.items():
        kind = "plain" if name.startswith("plain") else "resnet"
        ax, style = panels[kind], model_style(name)
        colour, label = style.get("color"), style["label"]
        if curve["train"]:
            x, y = zip(*curve["train"], strict=True)
            ax.plot(x, y, color=colour, linestyle="--", linewidth=0.9, alpha=0.8)
        if curve["test"]:
            x, y = zip(*curve["test"], strict=True)
            ax.plot(x, y, color=colour, linestyle="-", linewidth=2.0, marker="o", markersize=3, label=label)
    for kind, ax in panels.items():
        ax.set_title("plain networks" if kind == "plain" else "ResNets")
        ax.set_xlabel("iterations")
        ax.grid(alpha=0.3)
        handles, labels = ax.get_legend_handles_labels()
        if handles:
            ax.legend(handles, labels, fontsize=8, title="dashed: training, solid: test", title_fontsize=8)
    axes[0].set_ylabel("error (%)")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path)
    plt.close(fig)
    return path


def plot_responses(results: dict[str, list[LayerResponse]], path: str | Path) -> Path:
    """Figure 7: response std per 3x3 layer in forward order (top) and sorted by magnitude (bottom)."""
    plt = _pyplot()
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(7, 6.5), dpi=110)
    for name, layers in results.items():
        style = model_style(name)
        top.plot([r.index for r in layers], [r.std for r in layers], **style)
        bottom.plot(range(1, len(layers) + 1), sorted_stds(layers), **style)
    top.set_xlabel("layer index (original)")
    bottom.set_xlabel("layer index (sorted by magnitude)")
    for ax in (top, bottom):
        ax.set_ylabel("std")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("Std of 3x3 layer responses (after BN, before addition/ReLU)", fontsize=10)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path)
    plt.close(fig)
    return path
