"""Transfer learning on CIFAR-10 split in two (issue 16): pretrain on five classes, fine-tune on the other five.

Source task: airplane, automobile, bird, cat, deer (all 25,000 training images, 5,000 test images). Target task:
dog, frog, horse, ship, truck, with N labelled training images per class (a fixed seeded choice; N = 20, 100,
500) and the target classes' 5,000 test images. Each step is a ``resnets train`` command (printed, and run as a
subprocess, as a user would run it); a step whose result is already in ``OUT/results.jsonl`` is skipped, so the
script resumes where it stopped.

1. pretrain ResNet-20 on the source task (32 px), and an ImageNet-shaped resnet18 at 64 px, saved as a plain
   torchvision-format state dict (``resnet18-source.pth``);
2. on the target task, for each N: from scratch; linear probe; fine-tune everything; fine-tune with conv1 and
   conv2_x frozen; head first, then everything with per-stage learning rates;
3. ``--report``: the Markdown table (final-epoch test accuracy, wall time) and the plot of accuracy against
   labelled images per class.

    .venv/bin/python benchmarks/transfer.py --out runs/transfer --threads 1      # everything (about 70 minutes here)
    .venv/bin/python benchmarks/transfer.py --out runs/transfer --steps source  # the two pretraining runs only
    .venv/bin/python benchmarks/transfer.py --out runs/transfer --report --plot docs/img/finetune_transfer.png
    .venv/bin/python benchmarks/transfer.py --quick                             # smoke test, a few minutes

Accuracy is the last epoch's (``final["val_acc"]``): the test split is the run's held-out set, so its best
epoch would be chosen on test. Wall time is the whole command: start-up, loading, training and evaluation.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

DATA = "../shared/data/cifar10-jpeg"
SOURCE = ("airplane", "automobile", "bird", "cat", "deer")
TARGET = ("dog", "frog", "horse", "ship", "truck")
METHODS = ("scratch", "scratch3x", "probe", "finetune", "freeze", "headfirst")
DEFAULT_METHODS = ("scratch", "probe", "finetune", "freeze", "headfirst")  # scratch3x: asked for by --rows
LONGER = 3  # scratch3x: from scratch with this many times the epochs (a baseline given more compute)
THREADS: int | None = None  # --threads: OMP_NUM_THREADS of the runs (None: PyTorch's default, one per core)
LABELS = {"scratch": "from scratch", "scratch3x": f"from scratch, {LONGER}x the epochs", "probe": "linear probe", "finetune": "fine-tune all",
          "freeze": "fine-tune, conv1+conv2_x frozen", "headfirst": "head first, then all (stage LR decay)"}


# ---- data folders ---------------------------------------------------------------------------------------


def link_split(src: Path, dst: Path, classes: tuple[str, ...], per_class: int | None, seed: int) -> None:
    """``dst/<class>/`` of symlinks to ``per_class`` files of ``src/<class>/`` (a seeded choice; None: all)."""
    if dst.is_dir():
        return
    tmp = dst.with_name(dst.name + ".tmp")
    for name in classes:
        files = sorted(p.name for p in (src / name).iterdir() if not p.name.startswith("."))
        if per_class is not None:
            if per_class > len(files):
                raise SystemExit(f"{src / name} has {len(files)} images, fewer than {per_class}")
            files = sorted(random.Random(f"{seed}-{name}").sample(files, per_class))
        (tmp / name).mkdir(parents=True, exist_ok=True)
        for f in files:
            link = tmp / name / f
            if not link.exists():
                link.symlink_to((src / name / f).resolve())
    tmp.rename(dst)


def source_folder(out: Path, data: Path) -> Path:
    """``OUT/data/source``: train/ (25,000) and test/ (5,000) of the source classes."""
    root = out / "data" / "source"
    link_split(data / "train", root / "train", SOURCE, None, 0)
    link_split(data / "test", root / "test", SOURCE, None, 0)
    return root


def target_folder(out: Path, data: Path, per_class: int, seed: int) -> Path:
    """``OUT/data/target-N-sS``: train/ with ``per_class`` seeded images per target class, test/ all 5,000."""
    root = out / "data" / f"target-{per_class}-s{seed}"
    link_split(data / "train", root / "train", TARGET, per_class, seed)
    link_split(data / "test", root / "test", TARGET, None, 0)
    return root


# ---- running and recording --------------------------------------------------------------------------------


def load_results(out: Path) -> dict[str, dict[str, Any]]:
    """The recorded steps of ``OUT/results.jsonl`` by name."""
    path = out / "results.jsonl"
    if not path.is_file():
        return {}
    return {r["name"]: r for r in map(json.loads, path.read_text().splitlines()) if r}


def train(out: Path, name: str, flags: list[str], record: dict[str, Any], log_dir: Path) -> dict[str, Any] | None:
    """Run ``resnets train FLAGS --out OUT/runs/NAME --json``; record accuracy and wall time in results.jsonl.
    A step already recorded is skipped; a failed one is reported (its log kept) and None returned."""
    done = load_results(out)
    if name in done:
        print(f"= {name}: recorded ({done[name]['acc']:.2f}%, {done[name]['wall_s']:.0f} s)", flush=True)
        return done[name]
    run_dir = out / "runs" / name
    if run_dir.exists():  # an interrupted attempt: start it again
        import shutil

        shutil.rmtree(run_dir)
    argv = ["train", *flags, "--out", str(run_dir), "--no-progress", "--json"]
    shown = "resnets " + shlex.join(argv[:-1])
    print(f"> {shown}", flush=True)
    log_dir.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    with open(log_dir / f"{name}.log", "w") as log:
        proc = subprocess.run([sys.executable, "-m", "resnets", *argv], stdout=subprocess.PIPE, stderr=log, text=True,
                              env=dict(os.environ, **({"OMP_NUM_THREADS": str(THREADS)} if THREADS else {})))
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        tail = (log_dir / f"{name}.log").read_text().strip().splitlines()[-3:]
        print(f"! {name} failed (exit {proc.returncode}, {wall:.0f} s): {' | '.join(tail)}", flush=True)
        return None
    result = json.loads(proc.stdout)
    row = {**record, "name": name, "acc": result["final"]["val_acc"], "best_acc": result["best"].get("val_acc"),
           "train_acc": result["final"].get("train_acc"), "epoch": result["final"].get("epoch"),
           "step": result["step"], "wall_s": round(wall, 1), "command": shown,
           "load_avg": round(os.getloadavg()[0], 2), "threads": THREADS}
    with open(out / "results.jsonl", "a") as f:
        f.write(json.dumps(row) + "\n")
    print(f"  {name}: {row['acc']:.2f}% (train {row['train_acc']}), {wall:.0f} s", flush=True)
    return row


def pretrain(args: argparse.Namespace, data: Path) -> None:
    """The source runs: ResNet-20 at 32 px, resnet18 at 64 px (then its plain state dict)."""
    src = source_folder(args.out, data)
    common = ["--data", str(src), "--recipe", "cifar-fast", "--no-ema", "--set", "plots=false"]
    quick = ["--train-images", "512", "--test-images", "200"] if args.quick else []
    e20, e18 = args.source_epochs
    train(args.out, "source-resnet20", ["--model", "resnet20", *common, "--batch-size", str(args.source_batch[0]),
                                        "--epochs", f"{e20:g}", "--eval-every", str(max(1, round(e20))),
                                        "--seed", "0", *quick],
          {"kind": "source", "model": "resnet20", "epochs": e20}, args.out / "logs")
    if "resnet18" in args.models:
        row = train(args.out, "source-resnet18", ["--model", "resnet18", "--image-size", str(args.r18_size), *common,
                                                  "--batch-size", str(args.source_batch[1]), "--epochs", f"{e18:g}",
                                                  "--eval-every", str(max(1, round(e18))), "--seed", "0", *quick],
                    {"kind": "source", "model": "resnet18", "epochs": e18}, args.out / "logs")
        pth = args.out / "resnet18-source.pth"
        if row is not None and not pth.is_file():
            import torch

            from resnets.weights import load_model

            model = load_model(args.out / "runs" / "source-resnet18" / "final.safetensors")
            torch.save(model.state_dict(), pth)  # what a torchvision user has: a plain state dict
            print(f"  wrote {pth}", flush=True)


def method_flags(method: str, init: str | None, epochs: int, head_epochs: int, stage_decay: float) -> list[str]:
    """The flags that make ``method`` (beyond data, model, size, batch, epochs, seed)."""
    if method in ("scratch", "scratch3x"):
        return ["--recipe", "cifar-fast", "--no-ema"]
    assert init is not None
    flags = ["--init", init]
    if method == "probe":
        return flags + ["--linear-probe"]
    if method == "freeze":
        return flags + ["--freeze", "conv1,conv2_x"]
    if method == "headfirst":
        return flags + ["--freeze-epochs", str(head_epochs), "--lr-stage-decay", f"{stage_decay:g}"]
    return flags


def target_rows(args: argparse.Namespace, data: Path) -> None:
    """Every (model, images per class, seed, method) row asked for."""
    epochs = dict(args.epochs)
    for model in args.models:
        if model == "resnet20":
            init, size_flags, per_classes = str(args.out / "runs/source-resnet20/final.safetensors"), [], args.per_class
        else:
            init = str(args.out / "resnet18-source.pth")
            size_flags, per_classes = ["--image-size", str(args.r18_size)], args.r18_per_class
        for n in per_classes:
            seeds = args.seeds if n == 100 else args.seeds[:1]
            for seed in seeds:
                folder = target_folder(args.out, data, n, seed)
                for method in args.rows:
                    if model == "resnet18" and method not in args.r18_rows:
                        continue
                    if not method.startswith("scratch") and not Path(init).is_file():
                        print(f"! {init} is missing: run the source step first", flush=True)
                        continue
                    e = (epochs[n] if model == "resnet20" else dict(args.r18_epochs)[n]) * (
                        LONGER if method == "scratch3x" else 1)
                    flags = ["--model", model, *size_flags, "--data", str(folder),
                             *method_flags(method, init, e, max(1, round(e * args.head_fraction)), args.stage_decay),
                             "--batch-size", str(args.batch_size), "--epochs", str(e), "--eval-every", str(e),
                             "--seed", str(seed), "--set", "plots=false", *args.extra]
                    if args.quick:
                        flags += ["--test-images", "200"]
                    train(args.out, f"{model}-{n}-s{seed}-{method}", flags,
                          {"kind": "target", "model": model, "per_class": n, "seed": seed, "method": method,
                           "epochs": e, "images": n * len(TARGET)}, args.out / "logs")


# ---- report ---------------------------------------------------------------------------------------------


def report(out: Path, plot: Path | None) -> None:
    """Print the Markdown tables of ``OUT/results.jsonl``; draw the plot to ``plot``."""
    rows = [r for r in load_results(out).values()]
    for r in rows:
        if r["kind"] == "source":
            print(f"source {r['model']}: {r['epochs']:g} epochs, source-test accuracy {r['acc']:.2f}%, "
                  f"{r['wall_s']:.0f} s\n    {r['command']}")
    target = [r for r in rows if r["kind"] == "target"]
    groups: dict[tuple[str, int, str], list[dict[str, Any]]] = {}
    for r in target:
        groups.setdefault((r["model"], r["per_class"], r["method"]), []).append(r)
    print("\n| model | images/class | method | epochs | test acc % | wall s (per seed) | seeds |"
          "\n|---|---:|---|---:|---:|---:|---|")
    for (model, n, method), rs in sorted(groups.items(), key=lambda kv: (kv[0][0] != "resnet20", kv[0][1],
                                                                         METHODS.index(kv[0][2]))):
        accs = [r["acc"] for r in rs]
        if len(rs) > 1:
            acc = f"{statistics.mean(accs):.2f} ± {statistics.stdev(accs):.2f} ({min(accs):.1f}-{max(accs):.1f})"
        else:
            acc = f"{accs[0]:.2f}"
        rs.sort(key=lambda r: r["seed"])
        wall = " / ".join(f"{r['wall_s']:.0f}" + ("*" if r.get("threads") != 1 else "") for r in rs)
        print(f"| {model} | {n} | {LABELS[method]} | {rs[0]['epochs']} | {acc} | {wall} | "
              f"{','.join(str(r['seed']) for r in rs)} |")
    if plot is not None and target:
        draw(groups, plot)


def draw(groups: dict[tuple[str, int, str], list[dict[str, Any]]], plot: Path) -> None:
    """Accuracy against labelled images per class, one line per (model, method); error bars: min-max."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=90)
    lines: dict[tuple[str, str], list[tuple[int, float, float, float]]] = {}
    for (model, n, method), rs in groups.items():
        accs = [r["acc"] for r in rs]
        lines.setdefault((model, method), []).append((n, statistics.mean(accs), min(accs), max(accs)))
    for (model, method), pts in sorted(lines.items(), key=lambda kv: (kv[0][0] != "resnet20",
                                                                      METHODS.index(kv[0][1]))):
        pts.sort()
        xs, ys = [p[0] for p in pts], [p[1] for p in pts]
        err = [[p[1] - p[2] for p in pts], [p[3] - p[1] for p in pts]]
        style = "-" if model == "resnet20" else ":"
        ax.errorbar(xs, ys, yerr=err, fmt=style, marker="o" if model == "resnet20" else "s", markersize=4,
                    capsize=3, label=f"{model}: {LABELS[method]}")
    ax.set_xscale("log")
    ax.minorticks_off()
    ax.set_xticks([20, 100, 500], ["20", "100", "500"])
    ax.set_xlim(15, 650)
    ax.axhline(20, color="grey", linestyle="--", linewidth=1, label="chance (20%)")
    ax.set_xlabel("labelled training images per class (target task, 5 classes)")
    ax.set_ylabel("test accuracy on 5,000 target images (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    plot.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(plot)
    print(f"wrote {plot} ({plot.stat().st_size // 1024} KB)")


# ---- main -----------------------------------------------------------------------------------------------


def pairs(text: str) -> list[tuple[int, int]]:
    """'20:40,100:30' -> [(20, 40), (100, 30)]."""
    return [(int(a), int(b)) for a, b in (p.split(":") for p in text.split(","))]


def ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",")]


def names(choices: tuple[str, ...]) -> Any:
    """An argparse type: a comma-separated subset of ``choices``."""
    def parse(text: str) -> list[str]:
        got = [v for v in text.split(",") if v]
        bad = [v for v in got if v not in choices]
        if bad:
            raise argparse.ArgumentTypeError(f"unknown {bad[0]!r}; choose from {','.join(choices)}")
        return got
    return parse


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=DATA, help="CIFAR-10 image folder (train/, test/)")
    ap.add_argument("--out", type=Path, default=None, help="results folder (default runs/transfer, "
                                                           "runs/transfer-quick with --quick)")
    ap.add_argument("--quick", action="store_true", help="a smoke test: tiny source runs, 20/class, 2 epochs")
    ap.add_argument("--steps", type=names(("source", "target")), default=["source", "target"])
    ap.add_argument("--models", type=names(("resnet20", "resnet18")), default=["resnet20", "resnet18"])
    ap.add_argument("--rows", type=names(METHODS), default=list(DEFAULT_METHODS),
                    help=f"methods (default: all but scratch3x; {', '.join(METHODS)})")
    ap.add_argument("--per-class", type=ints, default=[20, 100, 500], help="ResNet-20: images per class")
    ap.add_argument("--seeds", type=ints, default=[0, 1, 2], help="seeds of the 100-per-class rows (others: the "
                                                                     "first); a seed picks the images and the init")
    ap.add_argument("--epochs", type=pairs, default=pairs("20:40,100:20,500:6"),
                    help="ResNet-20 target epochs per images/class (default 20:40,100:20,500:6)")
    ap.add_argument("--batch-size", type=int, default=32, help="target runs' batch (default 32)")
    ap.add_argument("--head-fraction", type=float, default=0.2, help="headfirst: the head alone for this "
                                                                      "fraction of the epochs (default 0.2)")
    ap.add_argument("--stage-decay", type=float, default=0.5, help="headfirst: --lr-stage-decay (default 0.5)")
    ap.add_argument("--source-epochs", type=float, nargs=2, default=[5, 0.5], metavar=("R20", "R18"),
                    help="source pretraining epochs, ResNet-20 and resnet18 (default 5 0.5)")
    ap.add_argument("--source-batch", type=int, nargs=2, default=[256, 64], metavar=("R20", "R18"))
    ap.add_argument("--r18-size", type=int, default=64, help="resnet18 image size (default 64)")
    ap.add_argument("--r18-per-class", type=ints, default=[100])
    ap.add_argument("--r18-rows", type=names(METHODS), default=["scratch", "probe", "finetune"])
    ap.add_argument("--r18-epochs", type=pairs, default=pairs("20:20,100:10,500:4"),
                    help="resnet18 target epochs per images/class (default 20:20,100:10,500:4)")
    ap.add_argument("--threads", type=int, help="OMP_NUM_THREADS of the runs (default: PyTorch's, one per core); "
                                                 "1 on a machine shared with other jobs")
    ap.add_argument("--report", action="store_true", help="only print the table (and draw --plot)")
    ap.add_argument("--plot", type=Path, help="with --report: the PNG to draw")
    ap.add_argument("extra", nargs="*", help="more `resnets train` flags for the target runs, after --")
    args = ap.parse_args()
    global THREADS
    THREADS = args.threads
    args.out = args.out or Path("runs/transfer-quick" if args.quick else "runs/transfer")
    if args.quick:
        args.source_epochs, args.per_class, args.r18_per_class = [1, 1], [20], [20]
        args.epochs, args.r18_epochs, args.seeds = [(20, 2)], [(20, 2)], [0]
    if args.report:
        report(args.out, args.plot)
        return
    args.out.mkdir(parents=True, exist_ok=True)
    data = Path(args.data)
    print(f"# {time.strftime('%H:%M:%S')} load average {os.getloadavg()[0]:.1f}", flush=True)
    if "source" in args.steps:
        pretrain(args, data)
    if "target" in args.steps:
        target_rows(args, data)
    print(f"# {time.strftime('%H:%M:%S')} done; load average {os.getloadavg()[0]:.1f}", flush=True)
    report(args.out, None)


if __name__ == "__main__":
    main()
