"""PNG plots of a run's loss, accuracy and learning rate, drawn from its metrics records."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any


def lr_curve(schedule: Callable[[int], float], total_steps: int, points: int = 1000) -> list[tuple[int, float]]:
    """(step, LR) of ``schedule`` from step 0 to the last, at most ``points`` of them (the last always)."""
    every = max(1, -(-total_steps // points))
    steps = sorted({*range(0, total_steps, every), total_steps - 1}) if total_steps > 0 else []
    return [(s, float(schedule(s))) for s in steps]


def plot_metrics(records: list[dict[str, Any]], out_dir: str | Path, *, val_label: str = "validation",
                 lr_curve: list[tuple[int, float]] | None = None) -> list[Path]:
    """Write ``loss.png``, ``accuracy.png`` and ``lr.png`` into ``out_dir``; returns their paths.

    ``val_label`` names the held-out split the epoch records' ``val_*`` values come from ("test" if none).
    ``lr_curve`` ((step, LR) pairs, e.g. from :func:`lr_curve`) draws the whole schedule from step 0; without it
    the LR of the logged steps is drawn.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    steps = [r for r in records if r["kind"] == "step"]
    epochs = [r for r in records if r["kind"] == "epoch"]

    def series(rows: list[dict[str, Any]], key: str) -> tuple[list[float], list[float]]:
        pts = [(r["step"], r[key]) for r in rows if r.get(key) is not None]
        return [p[0] for p in pts], [p[1] for p in pts]

    figures = {
        "loss.png": ("loss", [(steps, "train_loss", "train (steps)", 0.4), (epochs, "train_loss", "train", 1),
                              (epochs, "val_loss", val_label, 1)]),
        "accuracy.png": ("top-1 accuracy (%)", [(steps, "train_acc", "train (steps)", 0.4),
                                                (epochs, "train_acc", "train", 1),
                                                (epochs, "val_acc", val_label, 1)]),
        "lr.png": ("learning rate", [] if lr_curve else [(steps, "lr", "learning rate", 1)]),
    }
    schedule_rows = [{"step": s, "lr": lr} for s, lr in lr_curve or []]
    if schedule_rows:
        figures["lr.png"][1].append((schedule_rows, "lr", "learning rate (schedule)", 1))
    paths = []
    for name, (ylabel, lines) in figures.items():
        fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
        for rows, key, label, alpha in lines:
            x, y = series(rows, key)
            if x:
                ax.plot(x, y, label=label, alpha=alpha, marker="o" if rows is epochs else None, markersize=3)
        ax.set_xlabel("step")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend()
        fig.tight_layout()
        path = out_dir / name
        fig.savefig(path)
        plt.close(fig)
        paths.append(path)
    return paths
