"""ResNet-50 batch-1 latency, paths interleaved: torchvision eager fp32 vs the resnets fast path (BN folded),
channels_last and NCHW, random weights, 224x224, float32.

Like ``resnets bench infer`` (whose ``time_interleaved`` it uses) the paths take turns in rounds, so a slow
spell of the machine is shared; this probe adds the NCHW folded path and reports p50 and minimum.

    .venv/bin/python benchmarks/batch1_latency.py [--rounds 3] [--per-round 10]
"""

from __future__ import annotations

import argparse

import torch
import torchvision

from resnets.infer.bench import time_interleaved
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
    with torch.inference_mode():
        per_path = time_interleaved(list(paths.values()), x, args.rounds * args.per_round, warmup=5,
                                    rounds=args.rounds)
    times = dict(zip(paths, per_path, strict=True))
    ref = sorted(times["torchvision eager fp32 [reference]"])[len(times["torchvision eager fp32 [reference]"]) // 2]
    print(f"resnet50 batch 1, {args.rounds} rounds x {args.per_round}, {torch.get_num_threads()} threads")
    print("| path | p50 ms | min ms | p50 vs reference |\n|---|---:|---:|---:|")
    for name, ts in times.items():
        ts.sort()
        p50 = ts[len(ts) // 2]
        print(f"| {name} | {p50 * 1e3:.1f} | {ts[0] * 1e3:.1f} | {ref / p50:.2f}x |")


if __name__ == "__main__":
    main()
