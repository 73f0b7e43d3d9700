"""A plain ``pip install`` of the checkout (no extras) into a fresh virtual environment is enough to summarise,
train, evaluate and predict; a missing optional package is named in one line.

Slow (a few minutes: it installs PyTorch) and needs the package index: it fails, never skips, without one.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from resnets.data import extract_sample

ROOT = Path(__file__).resolve().parents[1]
INSTALL_TIMEOUT_S = 900
COMMAND_TIMEOUT_S = 300


def run(args: list[str | Path], cwd: Path, env: dict[str, str], timeout: int = COMMAND_TIMEOUT_S
        ) -> subprocess.CompletedProcess[str]:
    """Run ``args``; fail with its output unless it exits 0."""
    done = subprocess.run([str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)
    assert done.returncode == 0, (f"{' '.join(map(str, args))} exited {done.returncode}\n"
                                  f"stdout:\n{done.stdout[-3000:]}\nstderr:\n{done.stderr[-3000:]}")
    return done


def test_plain_install_summarises_trains_evaluates_and_predicts(tmp_path: Path) -> None:
    started = time.perf_counter()
    venv, elsewhere = tmp_path / "venv", tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    env["MPLCONFIGDIR"] = str(tmp_path / "mpl")
    try:
        run([sys.executable, "-m", "venv", venv], elsewhere, env)  # no system site packages
        python, resnets = venv / "bin" / "python", venv / "bin" / "resnets"
        # pip as configured here; PyTorch comes with its CUDA libraries (~3 GB of wheels), as for a user
        run([python, "-m", "pip", "install", "--quiet", ROOT], elsewhere, env, timeout=INSTALL_TIMEOUT_S)
        installed = time.perf_counter()

        site = next(venv.glob("lib/python*/site-packages"))  # a copy, not the checkout; no extras
        assert (site / "resnets" / "__init__.py").is_file() and not (site / "resnets.pth").exists()
        assert not any((site / name).exists() for name in ("onnx", "onnxruntime", "faiss"))

        out = run([resnets, "summary", "resnet18"], elsewhere, env).stdout
        assert "Total params: 11,689,512" in out and "1.814G" in out

        cache = tmp_path / "cache"
        out = run([resnets, "train", "--epochs", "1", "--train-images", "64", "--test-images", "32",
                   "--batch-size", "32", "--device", "cpu", "--workers", "0", "--cache-dir", cache,
                   "--out", "run"], elsewhere, env).stdout
        run_dir = elsewhere / "run"
        assert "best test accuracy" in out  # no --val-split: picked on the test split
        for name in ("best.safetensors", "final.safetensors", "loss.png", "accuracy.png", "lr.png", "config.json"):
            assert (run_dir / name).is_file(), name

        out = run([resnets, "eval", "--weights", run_dir / "best.safetensors", "--data", "sample",
                   "--max-images", "32", "--device", "cpu", "--cache-dir", cache, "--out", "eval"],
                  elsewhere, env).stdout
        assert "top-1" in out and "confusion matrix" in out
        assert (elsewhere / "eval" / "eval-sample.json").is_file()
        assert (elsewhere / "eval" / "eval-sample-confusion.png").stat().st_size > 1000

        images = elsewhere / "images"
        images.mkdir()
        classes = sorted(p for p in (extract_sample() / "test").iterdir() if p.is_dir())[:4]
        for cls in classes:
            shutil.copy(sorted(cls.iterdir())[0], images / f"{cls.name}.jpg")
        out = run([resnets, "predict", "--weights", run_dir / "best.safetensors", "images", "--topk", "2",
                   "--format", "csv"], elsewhere, env).stdout
        rows = out.strip().splitlines()
        assert rows[0] == "path,rank,label,index,prob" and len(rows) == 1 + 4 * 2

        # an optional feature without its extra: one line naming what to install, exit status 2
        done = subprocess.run([str(resnets), "export", "--weights", str(run_dir / "best.safetensors")],
                              cwd=elsewhere, env=env, capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S)
        assert done.returncode == 2 and "pip install 'resnets[export]'" in done.stderr, done.stderr
        assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr
    finally:
        shutil.rmtree(venv, ignore_errors=True)  # a gigabyte of PyTorch
    total = time.perf_counter() - started
    print(f"plain install: {installed - started:.0f} s install, {total:.0f} s in all")
