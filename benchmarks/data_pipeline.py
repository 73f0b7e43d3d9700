"""Data pipeline figures: decoding CIFAR-10 JPEGs into the cache (cold, cached) and DeviceBatches throughput.

    .venv/bin/python benchmarks/data_pipeline.py --data ../shared/data/cifar10-jpeg/train

"Cold" decodes into a fresh, empty cache directory (the JPEG files themselves may be in the OS page cache;
the first read after a reboot is slower). Figures depend on the machine and on what else is running.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

import torch

from resnets.data import DeviceBatches, load_image_folder
from resnets.data.decode import decode_files
from resnets.data.folder import find_classes, scan_split

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "cifar10-jpeg" / "train")
    parser.add_argument("--workers", type=int, nargs="*", default=[1, 2],
                        help="decoder thread counts to compare on a 10k-image subset")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--batches", type=int, default=100)
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}")

    rows = scan_split(args.data, find_classes(args.data))
    subset = [args.data / r[0] for r in rows[:: max(1, len(rows) // 10000)]][:10000]
    for workers in args.workers:
        start = time.perf_counter()
        decode_files(subset, workers=workers)
        print(f"decode {len(subset)} files, {workers} thread(s): {len(subset) / (time.perf_counter() - start):,.0f} images/s")

    cache = Path(tempfile.mkdtemp(prefix="resnets-bench-"))
    try:
        data, report = load_image_folder(args.data, cache_dir=cache)
        print(f"cold (decode + write cache): {len(data):,} images in {report.seconds:.1f} s")
        data, report = load_image_folder(args.data, cache_dir=cache)
        assert report.cache_hit
        print(f"cached (scan + read cache):  {len(data):,} images in {report.seconds:.2f} s")
    finally:
        shutil.rmtree(cache, ignore_errors=True)

    loader = DeviceBatches(data, args.batch_size, train=True, mean=data.mean(), std=data.std(), seed=0)
    it = loader.iter_from(0)
    next(it)  # warm-up
    start = time.perf_counter()
    count = 0
    for _, (x, _) in zip(range(args.batches), it, strict=False):
        count += x.shape[0]
    print(f"DeviceBatches train (pad 4 + crop + flip + normalise, channels_last) batch {args.batch_size}, "
          f"CPU, {torch.get_num_threads()} torch threads: {count / (time.perf_counter() - start):,.0f} images/s")


if __name__ == "__main__":
    main()
