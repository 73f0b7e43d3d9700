"""Issue 14's "bad day", scripted: every case of its sections 1-6 run through the real ``resnets`` command.

    .venv/bin/python scripts/bad_day.py [--keep DIR] [--quick] [--jobs N]

Builds its own fixtures in a temporary folder (``--keep DIR``: in DIR, kept afterwards): a tiny real training
run on the shipped sample (best.pt, last.pt, best.safetensors, ...), small image folders (mixed sizes, a test
set alone, train/ only, a corrupt first image, large streamed images, a class missing from test/), shards, a
corrupt CIFAR archive, a text file that is not an index, foreign ``.pth`` files. It then hashes every file
there (the user's files; the data cache is the tool's own and is not hashed), runs each case as a subprocess of
the ``resnets`` console script beside this Python (shell pipes, ``--nproc`` and a pseudo-terminal included), and
prints a Markdown table: case, exit code, the message printed (the error line, else the first stderr line,
else the stdout line the case looks at), PASS/FAIL.

A case FAILS if its stderr holds "Traceback", its exit code is not the expected one (2 for a refusal), a
refusal's stderr is not exactly one line ``resnets CMD: error: ...`` (plain progress lines aside), its own
check fails, or a pre-existing file's hash changed (with ``--jobs`` over 1 the change may come from a case run
alongside: rerun with ``--jobs 1`` to pin it down). Every case writes only under its own fresh folder and runs
in a scratch working directory. Exit status 1 if any case failed. ``--quick`` runs a representative subset
(one case or more of each section). The whole day is about 60 commands, each paying PyTorch's import: some
3-7 minutes on 2 cores, depending on what else runs; ``--quick`` about 2.

Issue 24's points 2 and 5 add their cases to sections 1 (no ``--out`` is an input or of the wrong kind), 5
(search takes a run folder, a short fine-tune's warm-up and ``--freeze`` said, a batch larger than the data,
ResNet-D weights as v1.5, ``bench infer --images``) and 6 (a created folder said, the stage named conv4_x).

Issue 24's point 4 adds section 7, the service: a real ``resnets serve`` (started by a small probe, see
``served``) whose ``/docs`` needs nothing off the server, whose ``/metrics`` counts ``/docs`` and ``/openapi.json``
under their routes, and whose KServe infer answers a body that is not JSON with 415.

Not run: a user error under plain ``torchrun`` (not the ``resnets`` command; tests/test_bad_day.py covers it).
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import json
import os
import pty
import re
import shlex
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import termios
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

#: A training run as small as the sample allows: 2 steps of 32, no loader processes.
TINY = ["--train-images", "64", "--test-images", "32", "--batch-size", "32", "--epochs", "1", "--no-progress",
        "--precision", "fp32", "--workers", "0", "--device", "cpu"]
#: A plain progress line (off a terminal), e.g. "decoding test: 256/1000 images (25%), 4 s": not an error line.
PROGRESS = re.compile(r"^(?!resnets )[\w .:/-]+: \d+(/\d+)? \w+( \(\d+%\))?, \d+ s$")
#: Training cases that are not about the plots skip drawing them (a second or two each).
NO_PLOTS = ["--set", "plots=false"]
CLASSES = ("ant", "bee", "cat")


@dataclass
class Result:
    """What one case's command did."""

    code: int
    stdout: str
    stderr: str
    seconds: float


@dataclass
class Case:
    """One command of the bad day: its argv (or a shell line), the exit code it must end with, and checks."""

    section: str
    name: str
    argv: list[str] | str  # str: run by bash, e.g. a pipeline
    expect: int = 2
    check: Callable[[Result], str | None] | None = None  # an extra check: what is wrong, or None
    show: str | None = None  # exit 0: the stdout line holding this text is the message shown
    before: Callable[[], None] | None = None
    quick: bool = False
    env: dict[str, str] = field(default_factory=dict)
    sigint_when: Path | None = None  # send Ctrl-C (SIGINT to the group) once this file exists
    tty: bool = False  # stderr is a terminal (a pseudo-terminal), as in an interactive shell
    timeout: float = 240.0


@dataclass
class Outcome:
    """A case and how it went."""

    case: Case
    result: Result
    problems: list[str]

    @property
    def passed(self) -> bool:
        return not self.problems


def sha256s(root: Path, skip: Path) -> dict[str, str]:
    """sha256 of every file under ``root`` except under ``skip``, by path."""
    return rehash([p for p in sorted(root.rglob("*")) if p.is_file() and not p.is_symlink() and skip not in p.parents])


def rehash(paths: list[Path]) -> dict[str, str]:
    """sha256 of each of ``paths`` that is still a file, by path (a missing one is left out)."""
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in paths if p.is_file()}


# ---- fixtures ------------------------------------------------------------------------------------------


def image_folder(root: Path, splits: dict[str, int], *, sizes: tuple[tuple[int, int], ...] = ((32, 32),),
                 classes: tuple[str, ...] = CLASSES, skip: tuple[tuple[str, str], ...] = ()) -> Path:
    """``root/<split>/<class>/NNN.png``: ``splits[split]`` images per class, sizes cycling through ``sizes``;
    (split, class) pairs in ``skip`` get no folder."""
    rng = np.random.default_rng(0)
    for split, count in splits.items():
        for ci, name in enumerate(classes):
            if (split, name) in skip:
                continue
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(count):
                h, w = sizes[i % len(sizes)]
                pixels = (rng.random((h, w, 3)) * 80 + ci * 60).astype(np.uint8)
                Image.fromarray(pixels).save(folder / f"{i:03d}.png")
    return root


def corrupt(path: Path) -> Path:
    path.write_bytes(b"this is not an image")
    return path


@dataclass
class Fixtures:
    """The files of the bad day, all under ``root``."""

    root: Path
    cache: Path
    work: Path  # the commands' working directory
    outs: Path  # each case's own output folder is outs/<n>
    run: Path
    sample: Path
    image: Path
    paths: dict[str, Path]


def build_fixtures(root: Path, resnets: str, env: dict[str, str]) -> Fixtures:
    """Make every file the cases need; the run folder comes from a real ``resnets train``."""
    import torch

    from resnets.data.sample import extract_sample
    from resnets.data.shards import write_shards
    from resnets.infer.embed import embed
    from resnets.models import create_model
    from resnets.weights import save_weights

    cache, work, outs = root / "cache", root / "work", root / "outs"
    for d in (cache, work, outs):
        d.mkdir(parents=True)
    run = root / "runs" / "R"
    proc = subprocess.run([resnets, "train", *TINY, "--out", str(run)], env=env, cwd=work, capture_output=True,
                          text=True, timeout=600)
    if proc.returncode != 0 or not (run / "best.safetensors").is_file():
        sys.exit(f"bad_day: the fixture run failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    sample = extract_sample(cache)
    image = sorted((sample / "test" / "airplane").iterdir())[0]
    p: dict[str, Path] = {}
    p["blocker"] = root / "afile"
    p["blocker"].write_text("mine\n")
    p["notes"] = root / "notes.txt"
    p["notes"].write_text("not an index\n")
    p["archive"] = root / "noise" / "cifar-10-python.tar.gz"
    p["archive"].parent.mkdir()
    p["archive"].write_bytes(np.random.default_rng(1).bytes(50_000))
    p["mixed"] = image_folder(root / "mixed", {"train": 3, "test": 2}, sizes=((32, 32), (40, 36), (30, 44)))
    p["badfirst"] = image_folder(root / "badfirst", {"train": 3, "test": 1}, skip=(("test", "cat"),))
    corrupt(p["badfirst"] / "train" / "ant" / "000.png")
    p["withtrain"] = image_folder(root / "withtrain", {"train": 4, "test": 2})
    corrupt(p["withtrain"] / "train" / "ant" / "000.png")  # a bad image in a split eval never reads
    p["testonly"] = image_folder(root / "testonly", {"x": 2}) / "x"
    p["missing"] = image_folder(root / "missing", {"test": 2}, skip=(("test", "bee"),))
    p["trainonly"] = image_folder(root / "trainonly", {"train": 20}, classes=("c0", "c1"))
    p["big"] = image_folder(root / "big", {"train": 6}, sizes=((80, 80),), classes=("c0", "c1"))
    p["bigtv"] = image_folder(root / "bigtv", {"train": 2, "val": 2}, sizes=((80, 80),), classes=("c0", "c1"))
    p["bigbad"] = image_folder(root / "bigbad", {"train": 4, "val": 2}, sizes=((80, 96),), classes=("c0", "c1"))
    corrupt(p["bigbad"] / "train" / "c0" / "000.png")  # the first file: streamed or not is decided from a sample
    p["evalbad"] = image_folder(root / "evalbad", {"x": 2}) / "x"
    corrupt(p["evalbad"] / "ant" / "000.png")
    small = image_folder(root / "small", {"train": 4, "val": 4}, classes=("c0", "c1"))
    p["shards"] = root / "shards"
    write_shards(small, p["shards"], log=lambda _: None)
    p["dot"] = root / "dot.png"
    Image.new("RGB", (1, 1), (1, 2, 3)).save(p["dot"])
    torch.manual_seed(0)
    p["preact"] = root / "preact.pth"
    torch.save(create_model("resnet20", variant="preact").state_dict(), p["preact"])
    p["cifar100"] = root / "cifar100.pth"
    torch.save(create_model("resnet20", num_classes=100).state_dict(), p["cifar100"])
    norm = {"mean": [0.5] * 3, "std": [0.25] * 3}
    p["w3"] = root / "w3.safetensors"
    save_weights(create_model("resnet20", num_classes=3), p["w3"], classes=list(CLASSES), normalization=norm)
    p["w2"] = root / "w2.safetensors"
    save_weights(create_model("resnet20", num_classes=2), p["w2"], classes=["c0", "c1"], normalization=norm)
    # issue 24: a photo as a .jpg, an index of the run's weights, timm-style ResNet-D weights
    p["photo"] = root / "cat.jpg"
    Image.open(image).convert("RGB").save(p["photo"])
    p["index"] = root / "index.safetensors"
    embed(run / "best.safetensors", [image, p["photo"]], out=p["index"], precision="fp32", progress=False)
    p["resnet18d"] = root / "resnet18d.pth"
    torch.save(create_model("resnet18", variant="d").state_dict(), p["resnet18d"])
    return Fixtures(root, cache, work, outs, run, sample, image, p)


# ---- checks --------------------------------------------------------------------------------------------


def has(text: str, where: str = "stderr") -> Callable[[Result], str | None]:
    """Check: ``text`` is in the case's stderr (or stdout)."""
    def check(r: Result) -> str | None:
        return None if text in getattr(r, where) else f"{where} lacks {text!r}"
    return check


def all_of(*checks: Callable[[Result], str | None]) -> Callable[[Result], str | None]:
    def check(r: Result) -> str | None:
        return next((msg for c in checks if (msg := c(r)) is not None), None)
    return check


def file_check(path: Path, what: str, test: Callable[[Path], bool]) -> Callable[[Result], str | None]:
    def check(r: Result) -> str | None:
        try:
            return None if test(path) else f"{path}: {what}"
        except OSError as exc:
            return f"{path}: {exc.strerror}"
    return check


def no_warnings(r: Result) -> str | None:
    """Check: no warning on stderr (progress lines are fine)."""
    warned = [line for line in r.stderr.splitlines() if "warning" in line.lower()]
    return f"a warning: {warned[0].strip()}" if warned else None


def redraws(r: Result) -> str | None:
    """Check: stderr redraws a line in place (a carriage return not ending a line), as a progress bar does."""
    return None if re.search("\r[^\n]", r.stderr) else "no progress bar (no line redrawn in place)"


def pipe_quiet(r: Result) -> str | None:
    """Check: one line came through the pipe and nothing on stderr is an error (progress lines are fine)."""
    if len(r.stdout.splitlines()) != 1:
        return f"{len(r.stdout.splitlines())} lines through head -1"
    noisy = [line for line in r.stderr.splitlines() if any(w in line.lower() for w in ("error", "pipe", "exception"))]
    return f"stderr: {noisy[0].strip()}" if noisy else None


def json_stdout(r: Result) -> str | None:
    try:
        json.loads(r.stdout)
    except ValueError:
        return "stdout is not one JSON document"
    return None


def no_carriage_returns(r: Result) -> str | None:
    if "\r" in r.stdout + r.stderr:
        return "carriage returns in the output"
    steps = [line for line in r.stdout.splitlines() if " step " in line]
    return None if steps else "no plain progress lines"


def no_train_cache(cache: Path) -> Callable[[Result], str | None]:
    """Check: no image-folder cache entry in ``cache`` was decoded from a ``train`` folder."""
    def check(r: Result) -> str | None:
        from resnets.data.cache import load_entry

        for f in sorted((cache / "folders").glob("*.safetensors")):
            entry = load_entry(f)
            if entry is not None and Path(entry[1]["source"]).name == "train" and "withtrain" in entry[1]["source"]:
                return f"the training split was cached: {f}"
        return None
    return check


#: Section 7's probe, run by this Python: ``resnets serve --weights W --port 0`` started, one check of ``WHAT``
#: (docs, metrics, kserve) made over HTTP, one line printed, the server stopped; exit 1 when the check fails.
SERVE_PROBE = r"""
import json, re, subprocess, sys, threading, time, urllib.error, urllib.request
resnets, weights, what = sys.argv[1:4]
proc = subprocess.Popen([resnets, "serve", "--weights", weights, "--port", "0", "--threads", "1"],
                        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
url = None
for line in proc.stderr:
    if m := re.search(r" on (http://127\.0\.0\.1:\d+) ", line):
        url = m.group(1)
        break
threading.Thread(target=proc.stderr.read, daemon=True).start()
def get(path, data=None, ctype=None):
    req = urllib.request.Request(url + path, data=data, headers={"Content-Type": ctype} if ctype else {})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, r.read().decode(errors="replace")
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode(errors="replace")
try:
    if url is None:
        sys.exit("resnets serve printed no address")
    while True:  # the address is printed just before uvicorn listens
        try:
            if get("/readyz")[0] == 200:
                break
        except urllib.error.URLError:
            if proc.poll() is not None:
                sys.exit(f"resnets serve exited with {proc.returncode}")
        time.sleep(0.2)
    ok = True
    if what == "docs":
        links = re.findall(r"(?:src|href)=[\"']([^\"']+)[\"']", get("/docs")[1])
        away = [u for u in links if not u.startswith("/")] + [u for u in links if u.startswith("/") and get(u)[0] != 200]
        ok = bool(links) and not away
        print(f"/docs: {len(links)} assets, all served here" if ok else f"/docs asks for {away or 'nothing'}")
    elif what == "metrics":
        get("/docs"), get("/openapi.json")
        time.sleep(0.5)
        text = get("/metrics")[1]
        seen = [r for r in ("/docs", "/openapi.json") if f'route="{r}"' in text]
        ok = len(seen) == 2
        print(f"/metrics counts routes {', '.join(seen) or 'neither'} (of /docs, /openapi.json)")
    else:
        name = json.loads(get("/v1/model")[1])["name"]
        code, body = get(f"/v2/models/{name}/infer", b"inputs=images", "application/x-www-form-urlencoded")
        ok = code == 415
        print(f"infer, a form body: {code} {body}")
    sys.exit(0 if ok else 1)
finally:
    proc.terminate()
    proc.wait(30)
"""


def served(what: str, weights: str) -> str:
    """Section 7's shell line: :data:`SERVE_PROBE` checking ``what`` on a server of ``weights``."""
    resnets = str(Path(sys.executable).with_name("resnets"))
    if not Path(resnets).is_file():
        resnets = shutil.which("resnets") or "resnets"
    return " ".join(shlex.quote(a) for a in (sys.executable, "-c", SERVE_PROBE, resnets, weights, what))


# ---- the cases -----------------------------------------------------------------------------------------


def cases(fx: Fixtures, resnets: str) -> list[Case]:
    """Every case of issue 14, sections 1-6, in order."""
    p, run = fx.paths, fx.run
    weights = str(run / "best.safetensors")
    image = str(fx.image)
    n = iter(range(1, 1000))

    def out(name: str = "") -> Path:  # a fresh folder of this case's own, not made
        return fx.outs / f"{next(n):02d}{name}"

    below = str(p["blocker"] / "x")
    locked = Path("/sys/kernel/resnets-out") if os.geteuid() == 0 else fx.root / "locked" / "x"
    resumed = out("-resumed")
    nproc_env = {"OMP_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": "lo", "RESNETS_DIST_TIMEOUT": "60",
                 "PYTHONUNBUFFERED": "1"}
    ctrl_c = out("-ctrl-c")
    streamed = ["--model", "resnet18", "--image-size", "32", "--batch-size", "2", "--epochs", "1", "--workers",
                "0", "--no-progress", "--device", "cpu", "--precision", "fp32", *NO_PLOTS]
    small_train = ["--iterations", "1", "--batch-size", "6", "--device", "cpu", "--precision", "fp32",
                   "--no-progress", "--workers", "0", *NO_PLOTS]
    ev = ["--device", "cpu", "--precision", "fp32", "--workers", "0"]
    bigbad_run = out("-bigbad")
    lr_run = out("-progress")
    return [
        # 1. never overwrite a user's file
        Case("1", "export --format torchscript: its own name, best.pt untouched",
             ["export", "--weights", weights, "--format", "torchscript"], 0, quick=True,
             check=file_check(run / "best.torchscript.pt", "not written", Path.is_file), show="best.torchscript.pt"),
        Case("1", "export again: refuses to replace its own export",
             ["export", "--weights", weights, "--format", "torchscript"], check=has("exists; give --force")),
        Case("1", "export --out the weights being exported", ["export", "--weights", weights, "--out", weights]),
        Case("1", "train --out a folder holding a run", ["train", *TINY, "--out", str(run)],
             check=has("already holds a run")),
        # issue 24, point 2: no --out is one of the command's inputs, or of the wrong kind
        Case("1", "explain IMAGE.jpg --out IMAGE.jpg (the photo itself)",
             ["explain", "--weights", weights, str(p["photo"]), "--out", str(p["photo"])], quick=True,
             check=has("is the image")),
        Case("1", "embed --out the weights it reads", ["embed", "--weights", weights, str(p["testonly"]), "--out",
                                                       weights], check=has("is the --weights file")),
        Case("1", "embed DIR --out inside DIR", ["embed", "--weights", weights, str(p["testonly"]), "--out",
                                                 str(p["testonly"] / "index.safetensors")], check=has("is inside")),
        Case("1", "explain --out a .jpg (it writes a PNG)", ["explain", "--weights", weights, image, "--out",
                                                             str(out("-cam.jpg"))], check=has("must end in .png")),
        Case("1", "embed --out a .txt", ["embed", "--weights", weights, image, "--out", str(out("-index.txt"))],
             check=has(".safetensors or .npz")),
        Case("1", "export --format torchscript --out a .onnx",
             ["export", "--weights", weights, "--format", "torchscript", "--out", str(out("-model.onnx"))],
             check=has("must end in .pt")),
        Case("1", "shard DIR --out inside DIR", ["shard", str(p["mixed"]), "--out", str(p["mixed"] / "shards")],
             check=has("is inside DIR")),
        Case("1", "eval --out inside --data", ["eval", "--weights", str(p["w3"]), "--data", str(p["testonly"]),
                                               "--out", str(p["testonly"] / "ant" / "report")],
             check=has("is inside the --data folder")),
        Case("1", "train --out the --data folder", ["train", *TINY, "--data", str(p["trainonly"]), "--out",
                                                    str(p["trainonly"])], check=has("is the --data folder")),
        # 2. every mistake is one line
        Case("2", "train --out below a file", ["train", *TINY, "--out", below], quick=True),
        Case("2", "eval --out below a file", ["eval", "--weights", weights, "--max-images", "32", "--out", below]),
        Case("2", "embed --out below a file", ["embed", "--weights", weights, image, "--out", below + ".st"]),
        Case("2", "explain --out below a file", ["explain", "--weights", weights, image, "--out", below + ".png"]),
        Case("2", "export --out below a file",
             ["export", "--weights", weights, "--format", "torchscript", "--out", below + ".pt"]),
        Case("2", "shard --out below a file", ["shard", str(fx.sample), "--out", below]),
        Case("2", "experiment --out below a file",
             ["experiment", "degradation", "--depths", "20", "--kinds", "resnet", "--out", below]),
        Case("2", "eval --out a folder that cannot be written",
             ["eval", "--weights", weights, "--out", str(locked)],
             before=lambda: (locked.parent.mkdir(exist_ok=True), locked.parent.chmod(0o500))
             if os.geteuid() != 0 else None),
        Case("2", "train --out an existing file", ["train", *TINY, "--out", str(p["blocker"])]),
        Case("2", "explain --out a folder", ["explain", "--weights", weights, image, "--out", str(run)]),
        Case("2", "search --index a text file", ["search", "--index", str(p["notes"]), image], quick=True,
             check=has("embedding index")),
        Case("2", "train --data a corrupt CIFAR archive", ["train", *TINY, "--data", str(p["archive"]), "--out",
                                                           str(out())], check=has("download it again")),
        Case("2", "eval --data a corrupt CIFAR archive",
             ["eval", "--weights", weights, "--data", str(p["archive"]), "--out", str(out())]),
        Case("2", "train --set lr=abc", ["train", "--set", "lr=abc", "--out", str(out())],
             check=has("lr must be a number")),
        Case("2", "predict FOLDER | head -1 (a closed pipe)",
             f"set -o pipefail; '{resnets}' predict --weights '{weights}' '{fx.sample / 'test'}' | head -1", 141,
             quick=True, check=pipe_quiet),
        Case("2", "train --nproc 2 with a wrong --data",
             ["train", *TINY, "--nproc", "2", "--data", str(fx.root / "nope"), "--out", str(out())], quick=True,
             env=nproc_env),
        Case("2", "train --nproc 2, Ctrl-C", ["train", *TINY, "--epochs", "500", "--train-images", "256",
                                              "--checkpoint-every", "2", "--nproc", "2", "--out", str(ctrl_c)],
             130, env=nproc_env, sigint_when=ctrl_c / "last.pt", check=has("continue with", "stdout")),
        # 3. evaluation takes what people have
        Case("3", "eval a test set alone (class folders, no train/)",
             ["eval", "--weights", str(p["w3"]), "--data", str(p["testonly"]), *ev, "--out", str(out())], 0,
             show="top-1", quick=True),
        Case("3", "eval a test/ folder given directly",
             ["eval", "--weights", str(p["w3"]), "--data", str(p["withtrain"] / "test"), *ev, "--out", str(out())],
             0, show="top-1"),
        Case("3", "eval --max-images 4, bad image in train/: train/ never decoded",
             ["eval", "--weights", str(p["w3"]), "--data", str(p["withtrain"]), "--max-images", "4", *ev, "--out",
              str(out())], 0, check=no_train_cache(fx.cache), show="top-1", quick=True),
        Case("3", "eval on shards", ["eval", "--weights", str(p["w2"]), "--data", str(p["shards"]), *ev,
                                     "--out", str(out())], 0, show="top-1"),
        Case("3", "eval --max-images 0", ["eval", "--weights", weights, "--max-images", "0", "--out", str(out())]),
        Case("3", "eval --max-images -3", ["eval", "--weights", weights, "--max-images", "-3", "--out", str(out())]),
        Case("3", "eval a foreign .pth without --model",
             ["eval", "--weights", str(p["preact"]), "--out", str(out())], check=has("--model NAME")),
        Case("3", "eval a foreign preact .pth with --model --variant",
             ["eval", "--weights", str(p["preact"]), "--model", "resnet20", "--variant", "preact", "--max-images",
              "20", *ev, "--out", str(out())], 0, show="top-1"),
        Case("3", "predict --variant", ["predict", "--weights", str(p["preact"]), "--model", "resnet20", "--variant",
                                        "preact", image], 0, show=Path(image).name),
        Case("3", "embed --variant", ["embed", "--weights", str(p["preact"]), "--model", "resnet20", "--variant",
                                      "preact", image, "--out", str(out("-index.safetensors"))], 0),
        Case("3", "explain --variant", ["explain", "--weights", str(p["preact"]), "--model", "resnet20",
                                        "--variant", "preact", image, "--out", str(out("-cam.png"))], 0),
        Case("3", "export --variant", ["export", "--weights", str(p["preact"]), "--model", "resnet20", "--variant",
                                       "preact", "--format", "torchscript", "--out", str(out("-preact.pt"))], 0),
        Case("3", "predict --weights RUN/last.pt", ["predict", "--weights", str(run / "last.pt"), image],
             check=has("best.safetensors")),
        Case("3", "predict --weights RUN (a folder)", ["predict", "--weights", str(run), image], 0,
             show=Path(image).name),
        # 4. folders as people have them
        Case("4", "train on mixed sizes, no --image-size",
             ["train", "--data", str(p["mixed"]), *small_train, "--out", str(out())], check=has("--image-size N")),
        Case("4", "train on mixed sizes --image-size 24",
             ["train", "--data", str(p["mixed"]), *small_train, "--image-size", "24", "--out", str(out())], 0,
             quick=True, show="training resnet20"),
        Case("4", "train, corrupt first image", ["train", "--data", str(p["badfirst"]), *small_train, "--out",
                                                 str(out())], check=has("bad image")),
        Case("4", "train, corrupt first image, --skip-bad-images: listed; class missing from test/ reported",
             ["train", "--data", str(p["badfirst"]), *small_train, "--skip-bad-images", "--out", str(out())], 0,
             check=all_of(has("skipped 1 bad image(s)", "stdout"), has("has no images of cat", "stdout")),
             show="skipped 1 bad image"),
        Case("4", "train streamed (large images), corrupt image, --skip-bad-images: listed",
             ["train", "--data", str(p["bigbad"]), *streamed, "--batch-size", "4", "--skip-bad-images", "--out",
              str(bigbad_run)], 0,
             check=all_of(has("skipped 1 bad image", "stdout"),
                          file_check(bigbad_run / "bad_images.txt", "does not list the bad image",
                                     lambda f: "c0/000.png" in f.read_text())),
             show="skipped 1 bad image", quick=True),
        Case("4", "eval, corrupt first image", ["eval", "--weights", str(p["w3"]), "--data", str(p["evalbad"]), *ev,
                                                "--out", str(out())], check=has("bad image")),
        Case("4", "eval, corrupt first image, --skip-bad-images", ["eval", "--weights", str(p["w3"]), "--data",
                                                                   str(p["evalbad"]), *ev, "--skip-bad-images",
                                                                   "--out", str(out())], 0,
             check=has("skipped 1 bad image(s)", "stdout"), show="skipped 1 bad image"),
        Case("4", "eval, class missing from the test set",
             ["eval", "--weights", str(p["w3"]), "--data", str(p["missing"]), *ev, "--out", str(out())], 0,
             check=has("classes with no images in", "stdout"), show="no images in"),
        # 5. no option silently ignored
        Case("5", "streamed folder, train/ only: --val-split, --train-images, --test-images, flip=false",
             ["train", *streamed, "--data", str(p["big"]), "--val-split", "4", "--train-images", "6",
              "--test-images", "3", "--set", "flip=false", "--out", str(out())], 0,
             check=has("6 train / 3 validation images", "stdout"), show="(streamed)"),
        Case("5", "streamed folder --set pad=2", ["train", *streamed, "--data", str(p["bigtv"]), "--set", "pad=2",
                                                  "--out", str(out())], check=has("drop pad")),
        Case("5", "train --download on the sample", ["train", *TINY, "--download", "--out", str(out())]),
        Case("5", "shards --val-split", ["train", "--data", str(p["shards"]), "--val-split", "2", "--out",
                                         str(out())], check=has("does not apply to shards")),
        Case("5", "in-memory folder with only train/ --val-split 8",
             ["train", "--data", str(p["trainonly"]), "--val-split", "8", "--epochs", "1", "--batch-size", "16",
              "--no-progress", "--device", "cpu", "--precision", "fp32", *NO_PLOTS, "--out", str(out())], 0,
             quick=True,
             check=has("32 train / 8 validation images", "stdout"), show="validation images"),
        Case("5", "train --resume with a changed --model", ["train", "--resume", str(run), "--model", "resnet56"],
             quick=True, check=has("drop --model")),
        Case("5", "train --resume with --set lr=0.5", ["train", "--resume", str(run), "--set", "lr=0.5"]),
        Case("5", "train --resume --epochs 2 on a finished run (a copy)",
             ["train", "--resume", str(resumed), "--epochs", "2", "--no-progress"], 0,
             before=lambda: shutil.copytree(run, resumed) and None, check=has("length changed", "stdout"),
             show="length changed"),
        Case("5", "train --json: stdout is only JSON", ["train", *TINY, *NO_PLOTS, "--json", "--out", str(out())], 0,
             check=json_stdout, quick=True),
        Case("5", "train --deterministic (a flag, not only --set)",
             ["train", *TINY, *NO_PLOTS, "--deterministic", "--out", str(out())], 0, show="best test accuracy"),
        Case("5", "eval a 100-class .pth on 10-class data (the head-size message)",
             ["eval", "--weights", str(p["cifar100"]), "--model", "resnet20", "--out", str(out())],
             check=lambda r: "--reinit-head" in r.stderr and "names --reinit-head" or None),
        Case("5", "eval --data cifar10, not downloaded", ["eval", "--weights", weights, "--data", "cifar10",
                                                          "--out", str(out())],
             check=has("resnets train --data cifar10 --download")),
        Case("5", "train --shortcut B", ["train", *TINY, *NO_PLOTS, "--shortcut", "B", "--out", str(out())], 0,
             show="best test accuracy"),
        Case("5", "train --model resnet18 --shortcut B", ["train", *TINY, "--model", "resnet18", "--shortcut", "B",
                                                           "--out", str(out())]),
        # issue 24, point 5
        Case("5", "search --weights RUN (a folder, as every command takes it)",
             ["search", "--index", str(p["index"]), "--weights", str(run), image, "--topk", "1"], 0, quick=True,
             show=Path(image).name),
        Case("5", "fine-tune shorter than its warm-up, --freeze: both said",
             ["train", *TINY, *NO_PLOTS, "--init", weights, "--freeze", "conv1,conv2_x", "--out", str(out())], 0,
             check=all_of(has("no longer than its warm-up", "stdout"),
                          has("frozen conv1, conv2_x (weights and BN statistics kept): ", "stdout")),
             show="frozen conv1"),
        Case("5", "train, training set smaller than one batch", ["train", *TINY, "--batch-size", "128", "--out",
                                                                 str(out())], check=has("give a smaller --batch-size")),
        Case("5", "predict a ResNet-D .pth as v1.5", ["predict", "--weights", str(p["resnet18d"]), "--model",
                                                      "resnet18", image], check=has("--variant d")),
        Case("5", "bench infer --images a missing folder", ["bench", "infer", "--images", str(fx.root / "nope")],
             check=has("is not a folder")),
        # 6. quiet, informative output
        Case("6", "train off a terminal with progress on: plain lines; best 'test' accuracy; LR plot, short run",
             ["train", *[a for a in TINY if a != "--no-progress"], "--log-every", "1", "--out", str(lr_run)], 0,
             check=all_of(no_carriage_returns, has("chosen on the test split, so optimistic", "stdout"),
                          file_check(lr_run / "lr.png", "missing", lambda f: f.stat().st_size > 0)),
             show="epoch 1/1 step 1/2", quick=True),
        Case("6", "predict 1000 files with stderr a terminal: a progress bar",
             ["predict", "--weights", weights, str(fx.sample / "test")], 0, tty=True,
             check=all_of(has("predicting"), redraws), show=Path(image).name),
        Case("6", "eval streamed images, default workers: no warnings",
             ["eval", "--weights", str(p["w2"]), "--data", str(p["bigtv"]), "--device", "cpu", "--precision",
              "fp32", "--out", str(out())], 0, check=no_warnings, show="top-1"),
        Case("6", "predict a 1x1 image: no NumPy warning", ["predict", "--weights", weights, str(p["dot"])], 0,
             check=no_warnings, show="dot.png"),
        Case("6", "explain --out in folders that do not exist: their creation said; the stage named conv4_x",
             ["explain", "--weights", weights, image, "--out", str(out("-new") / "deeper" / "cam.png")], 0,
             check=all_of(has("created folder"), has("Grad-CAM on conv4_x", "stdout")), show="Grad-CAM"),
        # 7. the service (issue 24, point 4)
        Case("7", "serve /docs offline: Swagger UI's files from the server, none from a CDN",
             served("docs", weights), 0, check=has("all served here", "stdout"), show="/docs"),
        Case("7", "serve /metrics counts /docs and /openapi.json under their routes",
             served("metrics", weights), 0, check=has("routes /docs, /openapi.json", "stdout"), show="/metrics"),
        Case("7", "serve KServe infer with a body that is not JSON: 415 with the reason",
             served("kserve", weights), 0, check=has("415", "stdout"), show="infer"),
    ]


# ---- running -------------------------------------------------------------------------------------------


def run_case(case: Case, resnets: str, env: dict[str, str], cwd: Path) -> Result:
    """Run one case's command; with ``sigint_when``, Ctrl-C its process group once that file exists."""
    if case.before is not None:
        case.before()
    argv = ["bash", "-c", case.argv] if isinstance(case.argv, str) else [resnets, *case.argv]
    start = time.monotonic()
    terminal: list[bytes] = []
    if case.tty:
        master, replica = pty.openpty()
        fcntl.ioctl(replica, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))  # a terminal's size
        reader = threading.Thread(target=_drain, args=(master, terminal), daemon=True)
        reader.start()
    proc = subprocess.Popen(argv, env={**env, **case.env}, cwd=cwd, stdout=subprocess.PIPE,
                            stderr=replica if case.tty else subprocess.PIPE, text=True, start_new_session=True)
    if case.tty:
        os.close(replica)
    try:
        if case.sigint_when is not None:
            while not case.sigint_when.exists() and proc.poll() is None \
                    and time.monotonic() - start < case.timeout:
                time.sleep(0.2)
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=max(1.0, case.timeout - (time.monotonic() - start)))
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        stdout, stderr = proc.communicate()
        stderr = (stderr or "") + f"\n(bad_day: killed after {case.timeout:.0f} s)"
    if case.tty:
        reader.join(timeout=10)
        stderr = b"".join(terminal).decode(errors="replace") + (stderr or "")
    return Result(proc.returncode, stdout, stderr, time.monotonic() - start)


def _drain(fd: int, into: list[bytes]) -> None:
    """Read a pseudo-terminal until its other end is closed."""
    try:
        while chunk := os.read(fd, 4096):
            into.append(chunk)
    except OSError:  # EIO: the process and its children closed it
        pass
    finally:
        os.close(fd)


def cost(case: Case) -> int:
    """A rough rank of how long ``case`` runs: processes under --nproc, then trainings, then the rest."""
    argv = case.argv if isinstance(case.argv, list) else []
    return 2 if "--nproc" in argv else int(argv[:1] == ["train"] and case.expect == 0)


def judge(case: Case, r: Result) -> list[str]:
    """What is wrong with how ``case`` went (empty: it passed)."""
    problems = []
    if "Traceback" in r.stderr:
        problems.append("traceback")
    if r.code != case.expect:
        problems.append(f"exit {r.code}, expected {case.expect}")
    lines = [line for line in r.stderr.splitlines() if line.strip() and not PROGRESS.match(line)]
    if case.expect == 2 and r.code == 2:
        cmd = case.argv[0] if isinstance(case.argv, list) else ""
        if len(lines) != 1 or not lines[0].startswith(f"resnets {cmd}: error: "):
            problems.append(f"{len(lines)} stderr lines (progress aside), not one 'resnets {cmd}: error: ...'")
    if case.check is not None and (msg := case.check(r)) is not None:
        problems.append(msg)
    return problems


def message(case: Case, r: Result) -> str:
    """The line the table shows: the error line, else the first stderr line, else the stdout line the case
    looks at."""
    err = [line.strip() for line in r.stderr.splitlines() if line.strip()]
    error = next((line for line in err if line.startswith("resnets ") and ": error: " in line), None)
    out = [line.strip() for line in r.stdout.replace("\r", "\n").splitlines() if line.strip()]
    picked = [line for line in out if case.show and case.show in line]
    if error or (err and not (picked and all(PROGRESS.match(line) for line in err))):
        return error or err[0]
    return ("(stdout) " + (picked or out)[0]) if out else ""


def cell(text: str, width: int = 220) -> str:
    text = text.replace("|", "\\|").replace("\n", " ")
    return text if len(text) <= width else text[: width - 3] + "..."


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--keep", metavar="DIR", help="build the fixtures in DIR (new or empty) and keep them")
    parser.add_argument("--quick", action="store_true", help="a representative subset only")
    parser.add_argument("--jobs", type=int, default=len(os.sched_getaffinity(0)),
                        help="cases run at once (default: the cores available)")
    args = parser.parse_args(argv)
    started = time.monotonic()
    resnets = str(Path(sys.executable).with_name("resnets"))
    if not Path(resnets).is_file():
        resnets = shutil.which("resnets") or sys.exit("bad_day: no resnets command beside this Python or on PATH")
    if args.keep:
        root = Path(args.keep).resolve()
        if root.exists() and any(root.iterdir()):
            sys.exit(f"bad_day: --keep {root} is not empty")
        root.mkdir(parents=True, exist_ok=True)
    else:
        root = Path(tempfile.mkdtemp(prefix="resnets-bad-day-"))
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR",
                                                           "MASTER_PORT", "TORCHELASTIC_RESTART_COUNT")}
    env.update(RESNETS_CACHE_DIR=str(root / "cache"), OMP_NUM_THREADS="1", MPLBACKEND="Agg")
    try:
        fx = build_fixtures(root, resnets, env)
        todo = [c for c in cases(fx, resnets) if c.quick or not args.quick]
        before = sha256s(root, fx.cache)
        print(f"bad_day: fixtures in {root} ({len(before)} files hashed, {time.monotonic() - started:.0f} s); "
              f"running {len(todo)} cases, {args.jobs} at a time", file=sys.stderr, flush=True)
        lock = threading.Lock()
        seen = dict(before)

        def one(case: Case) -> Outcome:
            result = run_case(case, resnets, env, fx.work)
            problems = judge(case, result)
            with lock:  # pre-existing files changed since the last look
                now = rehash([Path(f) for f in before])
                changed = [f for f, h in before.items() if now.get(f) != seen.get(f)]
                seen.update({f: now.get(f, "") for f in changed})
            if changed:
                problems.append("changed or removed: " + ", ".join(str(Path(f).relative_to(root)) for f in changed))
            print(f"  {'PASS' if not problems else 'FAIL'} {case.name} ({result.seconds:.0f} s)", file=sys.stderr,
                  flush=True)
            return Outcome(case, result, problems)

        with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
            # the export cases run in order (the second refuses what the first wrote); the rest in any order
            first = [c for c in todo if c.section == "1"]
            chain = pool.submit(lambda: [one(c) for c in first])
            rest = [c for c in todo if c.section != "1"]
            futures = {id(c): pool.submit(one, c) for c in sorted(rest, key=cost, reverse=True)}  # slow first
            outcomes = chain.result() + [futures[id(c)].result() for c in rest]
        after = rehash([Path(f) for f in before])
        untouched = [f for f, h in before.items() if after.get(f) != h]
    finally:
        locked = root / "locked"
        if locked.exists():
            locked.chmod(0o700)
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    failed = sum(not o.passed for o in outcomes) + bool(untouched)
    total = len(outcomes) + 1
    print("| # | section | case | exit | message printed | result |")
    print("|---|---|---|---|---|---|")
    for i, o in enumerate(outcomes, 1):
        verdict = "PASS" if o.passed else "FAIL: " + "; ".join(o.problems)
        print(f"| {i} | {o.case.section} | {cell(o.case.name)} | {o.result.code} | {cell(message(o.case, o.result))} "
              f"| {cell(verdict, 400)} |")
    print(f"| {len(outcomes) + 1} | 1 | every pre-existing file byte-identical ({len(before)} files) | | "
          f"{cell(', '.join(untouched)) or 'none changed'} | {'FAIL' if untouched else 'PASS'} |")
    print(f"\n{total - failed} of {total} passed in {time.monotonic() - started:.0f} s", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
