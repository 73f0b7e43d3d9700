"""ResNet-50 batch-1 latency, paths interleaved: torchvision eager fp32 vs the resnets fast path (BN folded),
channels_last and NCHW, random weights, 224x224, float32.

``resnets bench infer`` times each path in one block, so a slow spell of the machine lands on one path only.
This probe rotates through the paths in rounds and reports each one's p50 and minimum over all rounds.

    .venv/bin/python benchmarks/batch1_latency.py [--rounds 3] [--per-round 10]
"""

from __future__ import annotations

import argparse
import time

import torch
import torchvision

from resnets.infer.fastpath import FastModel
from resnets.models import create_model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--per-round", type=int, default=10)
    args = ap.parse_args()
    torch.manual_seed(0)
    model = create_model("resnet50").eval()
    paths = {"torchvision eager fp32 [reference]": torchvision.models.resnet50().eval(),
             "resnets folded, channels_last": FastModel(model, precision="fp32", channels_last=True),
             "resnets folded, NCHW": FastModel(model, precision="fp32", channels_last=False)}
    x = torch.randn(1, 3, 224, 224)
    times: dict[str, list[float]] = {name: [] for name in paths}
    with torch.inference_mode():
        for run in paths.values():
            for _ in range(5):
                run(x)
        for _ in range(args.rounds):
            for name, run in paths.items():
                for _ in range(args.per_round):
                    start = time.perf_counter()
                    run(x)
                    times[name].append(time.perf_counter() - start)
    ref = sorted(times["torchvision eager fp32 [reference]"])[len(times["torchvision eager fp32 [reference]"]) // 2]
    print(f"resnet50 batch 1, {args.rounds} rounds x {args.per_round}, {torch.get_num_threads()} threads")
    print("| path | p50 ms | min ms | p50 vs reference |\n|---|---:|---:|---:|")
    for name, ts in times.items():
        ts.sort()
        p50 = ts[len(ts) // 2]
        print(f"| {name} | {p50 * 1e3:.1f} | {ts[0] * 1e3:.1f} | {ref / p50:.2f}x |")


if __name__ == "__main__":
    main()
