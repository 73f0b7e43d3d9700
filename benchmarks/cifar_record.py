"""CIFAR-10 speed record check: N seeds of ``resnets train --recipe cifar-record``, test accuracy and time per run.

Each seed is one ordinary run of the engine (``resnets.train.train``, the recipe's own TTA in its evaluation),
so what is timed is what ``resnets train --model resnet9 --recipe cifar-record`` does. Per run it reports:

* ``setup_s``: opening the data (decoded once into ``--cache-dir``, then read from there), building the net and
  setting its whitening layer, up to the trainer's first log line;
* ``compile_s``: the first optimiser step beyond the mean step (cudnn autotuning, ``--compile``'s compilation),
  reported apart as the records do;
* ``train_s``: training and the final evaluation, timed with CUDA events on a GPU (``perf_counter`` on the
  CPU), from the end of the first step to the end of the run, plus that first step at the mean step time;
* ``test_acc``: the final test accuracy with the recipe's TTA.

Then one summary line: mean +- sd of ``test_acc`` and ``train_s`` over the seeds, the mean ``compile_s`` and
the whole command's wall time. One JSON line per run as it finishes, the summary last.

    python benchmarks/cifar_record.py --data ../shared/data/cifar10-jpeg --seeds 5 --device cuda
    python benchmarks/cifar_record.py --model resnet18-cifar --data ../shared/data/cifar10-jpeg --seeds 5
    python benchmarks/cifar_record.py --device cpu --quick        # a smoke test on the shipped sample
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch


class _Clock:
    """Marks on the device's timeline (CUDA events) or the host's (``perf_counter``)."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"

    def mark(self) -> Any:
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            return event
        return time.perf_counter()

    def seconds(self, a: Any, b: Any) -> float:
        if self.cuda:
            torch.cuda.synchronize()
            return a.elapsed_time(b) / 1e3
        return b - a


def run_seed(settings: dict[str, Any], seed: int, out: Path) -> dict[str, Any]:
    """One run of the recipe with ``seed``: its accuracy and times (see the module docstring)."""
    from resnets.runtime import resolve_device
    from resnets.train import resolve_config, train

    cfg = resolve_config({**settings, "seed": seed, "out": str(out / f"seed{seed}")})
    clock = _Clock(resolve_device(cfg.device))
    marks: dict[str, Any] = {}
    t0 = time.perf_counter()

    def on_log(line: str) -> None:
        if "setup" not in marks:  # the trainer's first line: set up, about to train (it names the precision)
            marks["setup"] = time.perf_counter() - t0
            marks["begin"] = clock.mark()
            found = re.search(r", (bf16|fp16|fp32)( \(auto\))?; run dir", line)
            marks["precision"] = found.group(1) if found else cfg.precision

    def on_step(state: Any) -> None:
        if "first" not in marks:
            marks["first"] = clock.mark()

    result = train(cfg, on_step=[on_step], log=on_log)
    end = clock.mark()
    steps = result.step
    first = clock.seconds(marks["begin"], marks["first"])
    rest = clock.seconds(marks["first"], end)
    mean_step = rest / max(1, steps - 1)
    return {"seed": seed, "model": cfg.model, "recipe": cfg.recipe, "precision": marks["precision"],
            "device": "cuda" if clock.cuda else "cpu", "steps": steps, "test_acc": result.final.get("val_acc"),
            "tta": cfg.tta, "setup_s": round(marks["setup"], 3), "compile_s": round(max(0.0, first - mean_step), 3),
            "train_s": round(rest + mean_step, 3)}


def _mean_sd(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="resnet9")
    p.add_argument("--recipe", default="cifar-record")
    p.add_argument("--data", default="../shared/data/cifar10-jpeg")
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--precision", default="auto")
    p.add_argument("--compile", action="store_true", help="resnets train --compile")
    p.add_argument("--epochs", type=float, default=None, help="replace the recipe's length")
    p.add_argument("--cache-dir", default=None, help="decoded data (default: a temporary folder)")
    p.add_argument("--out", default=None, help="the runs' folders (default: a temporary folder, removed)")
    p.add_argument("--quick", action="store_true", help="smoke test: the shipped sample, 2 seeds, 1 epoch")
    args = p.parse_args()
    wall = time.perf_counter()
    settings: dict[str, Any] = {"model": args.model, "recipe": args.recipe, "data": args.data,
                                "device": args.device, "precision": args.precision, "compile": args.compile,
                                "progress": False, "plots": False, "log_every": 10**6}
    if args.epochs is not None:
        settings["epochs"] = args.epochs
    if args.quick:
        settings.update(data="sample", epochs=1, train_images=512, test_images=256, batch_size=128)
        args.seeds = min(args.seeds, 2)
    scratch = Path(tempfile.mkdtemp(prefix="cifar-record-"))
    settings["cache_dir"] = args.cache_dir or str(scratch / "cache")
    out = Path(args.out) if args.out else scratch / "runs"
    rows = []
    try:
        for seed in range(args.seeds):
            row = run_seed(settings, seed, out)
            rows.append(row)
            print(json.dumps(row), flush=True)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    acc, acc_sd = _mean_sd([r["test_acc"] for r in rows])
    secs, secs_sd = _mean_sd([r["train_s"] for r in rows])
    summary = {"benchmark": "cifar_record", "model": args.model, "recipe": args.recipe, "seeds": len(rows),
               "device": rows[0]["device"], "tta": rows[0]["tta"], "test_acc_mean": round(acc, 2),
               "test_acc_sd": round(acc_sd, 2), "train_s_mean": round(secs, 3), "train_s_sd": round(secs_sd, 3),
               "compile_s_mean": round(statistics.fmean(r["compile_s"] for r in rows), 3),
               "wall_s": round(time.perf_counter() - wall, 1)}
    print(json.dumps(summary), flush=True)
    print(f"{args.model} {args.recipe}: {acc:.2f} +- {acc_sd:.2f}% test accuracy ({summary['tta']} TTA), "
          f"{secs:.2f} +- {secs_sd:.2f} s a run (+{summary['compile_s_mean']:.2f} s compile), {len(rows)} seeds, "
          f"wall {summary['wall_s']:.0f} s", flush=True)


if __name__ == "__main__":
    main()
