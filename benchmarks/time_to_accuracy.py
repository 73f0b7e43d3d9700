"""Time to accuracy: wall time from the ``resnets train`` command to the test-accuracy number, with the curve.

Runs the command as a user would (a subprocess, data decode included), then prints per-epoch elapsed wall
time and test accuracy from the run's metrics.jsonl, the final figure, and the flip-TTA figure from
``resnets eval``. Defaults: ResNet-20 on full CIFAR-10 (JPEG folder) with the cifar-fast recipe.

    .venv/bin/python benchmarks/time_to_accuracy.py --epochs 8 --out runs/t2a

With ``--plot-runs DIR ...`` it trains nothing: it draws those runs' test accuracy against training time into
``--plot PNG`` (each run's evaluated epochs; the target as a line).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

DATA = "../shared/data/cifar10-jpeg"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=DATA)
    ap.add_argument("--model", default="resnet20")
    ap.add_argument("--recipe", default="cifar-fast")
    ap.add_argument("--epochs", default="8")
    ap.add_argument("--target", type=float, default=88.0, help="test accuracy to reach, percent")
    ap.add_argument("--out", default="runs/t2a")
    ap.add_argument("--plot-runs", nargs="+", metavar="RUN_DIR", help="only plot these finished runs")
    ap.add_argument("--plot", default="time_to_accuracy.png", help="PNG for --plot-runs")
    ap.add_argument("extra", nargs="*", help="more `resnets train` flags, after --")
    args = ap.parse_args()
    if args.plot_runs:
        plot_runs([Path(d) for d in args.plot_runs], args.target, Path(args.plot))
        return
    resnets = [sys.executable, "-m", "resnets"]
    cmd = [*resnets, "train", "--model", args.model, "--data", args.data, "--recipe", args.recipe,
           "--epochs", args.epochs, "--out", args.out, "--no-progress", *args.extra]
    print("#", " ".join(cmd[2:]), f"(load average {os.getloadavg()[0]:.1f} at start)", flush=True)
    start = time.perf_counter()
    subprocess.run(cmd, check=True)
    train_wall = time.perf_counter() - start
    records = [json.loads(line) for line in (Path(args.out) / "metrics.jsonl").read_text().splitlines()]
    epochs = [r for r in records if r["kind"] == "epoch" and "val_acc" in r]  # the evaluated epochs
    print("\n| epoch | train size | train time s | train acc % | test acc % |\n|---:|---:|---:|---:|---:|")
    for r in epochs:
        print(f"| {r['epoch']} | {r.get('train_size', '')} | {r['elapsed_s']:.0f} | {r['train_acc']:.2f} | "
              f"{r['val_acc']:.2f} |")
    reached = next((r for r in epochs if r["val_acc"] >= args.target), None)
    t0 = time.perf_counter()
    done = subprocess.run([*resnets, "eval", "--weights", str(Path(args.out) / "best.safetensors"), "--data",
                           args.data, "--tta", "flip", "--out", str(Path(args.out) / "eval-flip"), "--json"],
                          check=True, capture_output=True, text=True)
    tta = json.loads(done.stdout)["top1"]
    print(f"\nwall time, command to final number: {train_wall:.0f} s; final test accuracy "
          f"{epochs[-1]['val_acc']:.2f}% (best {max(r['val_acc'] for r in epochs):.2f}%); "
          f"with flip TTA {tta:.2f}% (+{time.perf_counter() - t0:.0f} s)")
    print(f"target {args.target}%: " + (f"reached at epoch {reached['epoch']}" if reached else "not reached")
          + f"; load average {os.getloadavg()[0]:.1f} at end")


def plot_runs(run_dirs: list[Path], target: float, out: Path) -> None:
    """Test accuracy against training time (the runs' ``elapsed_s``) for each run, with the target line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    for run in run_dirs:
        records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        epochs = [r for r in records if r["kind"] == "epoch" and "val_acc" in r]
        ax.plot([r["elapsed_s"] for r in epochs], [r["val_acc"] for r in epochs], marker="o", markersize=3,
                label=f"{run.name} ({epochs[-1]['val_acc']:.1f}%)")
    ax.axhline(target, color="grey", linestyle="--", linewidth=1, label=f"target {target:g}%")
    ax.axvline(600, color="grey", linestyle=":", linewidth=1, label="600 s")
    ax.set_xlabel("training time (s)")
    ax.set_ylabel("test top-1 accuracy (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
