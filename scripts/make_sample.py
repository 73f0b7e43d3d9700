"""Regenerate the shipped CIFAR-10 sample, src/resnets/assets/cifar10-sample.tar.gz, deterministically.

Draws a fixed seeded choice of JPEG files per class from an ImageFolder copy of CIFAR-10 (train/<class>/,
test/<class>/) and writes them, unchanged, into a gzipped tar with normalised metadata (sorted members,
mtime 0, owner 0, mode 0644, no gzip name or time), so the same input always gives a byte-identical archive.
Gzip matters here even though JPEGs are compressed: every CIFAR JPEG repeats the same ~600 bytes of
tables and every tar member has a 512-byte header, so gzip shrinks the tar about 4.8x.

    .venv/bin/python scripts/make_sample.py --source ../shared/data/cifar10-jpeg
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import random
import tarfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = ROOT / "src" / "resnets" / "assets" / "cifar10-sample.tar.gz"


def choose(source: Path, split: str, per_class: int, seed: int) -> list[Path]:
    """``per_class`` files of every class of ``source/split``, a seeded choice, in sorted order."""
    chosen: list[Path] = []
    for class_dir in sorted(p for p in (source / split).iterdir() if p.is_dir() and not p.name.startswith(".")):
        files = sorted(p for p in class_dir.iterdir() if p.suffix.lower() in (".jpg", ".jpeg"))
        if len(files) < per_class:
            raise SystemExit(f"{class_dir} has only {len(files)} images, need {per_class}")
        chosen += sorted(random.Random(f"{seed}:{split}:{class_dir.name}").sample(files, per_class))
    return chosen


def write_tar(out: Path, source: Path, files: list[Path]) -> None:
    """Gzipped tar of ``files`` (paths relative to ``source``) with normalised metadata."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for path in files:
            data = path.read_bytes()
            info = tarfile.TarInfo(path.relative_to(source).as_posix())
            info.size, info.mtime, info.mode, info.uid, info.gid = len(data), 0, 0o644, 0, 0
            info.uname = info.gname = ""
            tar.addfile(info, io.BytesIO(data))
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "wb") as raw, gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0, compresslevel=9) as gz:
        gz.write(buf.getvalue())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, default=ROOT.parent / "shared" / "data" / "cifar10-jpeg")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--train-per-class", type=int, default=300)
    parser.add_argument("--test-per-class", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    files = choose(args.source, "train", args.train_per_class, args.seed)
    files += choose(args.source, "test", args.test_per_class, args.seed)
    write_tar(args.out, args.source, files)
    digest = hashlib.sha256(args.out.read_bytes()).hexdigest()
    print(f"{args.out}: {len(files)} images, {args.out.stat().st_size / 1e6:.2f} MB, sha256 {digest}")


if __name__ == "__main__":
    main()
