"""Scaling efficiency of data-parallel training from 1 to N processes on this machine (gloo on CPU).

Runs ``resnets train`` on the shipped sample once with one process and once with ``--nproc N`` at the same
global batch, and compares training throughput (images per second over the steps after the first epoch's
warm-up, from metrics.jsonl). Efficiency = throughput(N) / (N * throughput(1)).

    .venv/bin/python benchmarks/scaling.py --nproc 2 --iterations 60
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def run(nproc: int, args: argparse.Namespace, out: Path) -> dict[str, float]:
    """Train once; images/s of the step records after the first (warm-up) one, and the wall time."""
    cmd = [sys.executable, "-m", "resnets", "train", "--model", args.model, "--batch-size", str(args.batch_size),
           "--iterations", str(args.iterations), "--log-every", "10", "--precision", "fp32", "--no-progress",
           "--workers", "0", "--out", str(out), "--no-ema"]
    if nproc > 1:
        cmd += ["--nproc", str(nproc)] + (["--sync-bn"] if args.sync_bn else [])
    env = dict(os.environ, OMP_NUM_THREADS=str(max(1, args.threads // nproc)), GLOO_SOCKET_IFNAME="lo")
    start = time.perf_counter()
    subprocess.run(cmd, env=env, check=True, timeout=args.timeout, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - start
    steps = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in steps if r["kind"] == "step"][1:]
    rate = sum(r["images_per_s"] for r in steps) / len(steps)
    return {"images_per_s": rate, "wall_s": wall}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nproc", type=int, default=2)
    parser.add_argument("--model", default="resnet20")
    parser.add_argument("--batch-size", type=int, default=128, help="global batch (same for both runs)")
    parser.add_argument("--iterations", type=int, default=60)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="threads shared by all ranks")
    parser.add_argument("--sync-bn", action="store_true")
    parser.add_argument("--timeout", type=float, default=1200)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        one = run(1, args, Path(tmp) / "one")
        many = run(args.nproc, args, Path(tmp) / "many")
    efficiency = many["images_per_s"] / (args.nproc * one["images_per_s"])
    print(f"{args.model}, global batch {args.batch_size}, {args.iterations} steps, {args.threads} threads in all")
    print(f"1 process : {one['images_per_s']:8.1f} img/s  (wall {one['wall_s']:.0f} s)")
    print(f"{args.nproc} processes: {many['images_per_s']:8.1f} img/s  (wall {many['wall_s']:.0f} s)")
    print(f"speed-up {many['images_per_s'] / one['images_per_s']:.2f}x, scaling efficiency {100 * efficiency:.0f}%")


if __name__ == "__main__":
    main()
