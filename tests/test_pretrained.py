"""Pretrained weights by name, against a real HTTP server on loopback serving files these tests make, with their
own table entries: download with progress, cache hit, resume after a cut, hash mismatch refused (nothing kept),
404, timeout, offline, mirror, a damaged cached file; ``resnets weights list/get`` through the command; a named
weight fed with its recorded preprocessing; the Hugging Face cache checked offline."""

from __future__ import annotations

import hashlib
import http.server
import io
import json
import threading
import time
from pathlib import Path

import pytest
import torch

import resnets
from resnets.cli import main
from resnets.errors import UserError
from resnets.pretrained import fetch, lookup, registered
from resnets.pretrained.download import DownloadError, Limits
from resnets.pretrained.table import TABLE_ENV, Entry, entry_to_dict

FAST = Limits(timeout=2.0, attempts=3, total=30.0, backoff=0.0)


class Files(http.server.ThreadingHTTPServer):
    """Serves ``files`` ({path: bytes}) with Range support; ``cut`` paths send half the body on their first request
    and close; ``slow`` paths wait ``delay`` seconds before answering; every request's path and Range is logged."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), Handler)
        self.files: dict[str, bytes] = {}
        self.cut: set[str] = set()
        self.slow: set[str] = set()
        self.delay = 3.0
        self.log: list[tuple[str, str | None]] = []

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class Handler(http.server.BaseHTTPRequestHandler):
    server: Files

    def log_message(self, *args: object) -> None:
        pass

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        try:
            self._get()
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up (the timeout test)

    def _get(self) -> None:
        srv = self.server
        rng = self.headers.get("Range")
        srv.log.append((self.path, rng))
        if self.path in srv.slow:
            time.sleep(srv.delay)
        body = srv.files.get(self.path)
        if body is None:
            self.send_error(404, "Not Found")
            return
        start = int(rng.removeprefix("bytes=").split("-")[0]) if rng else 0
        self.send_response(206 if rng else 200)
        if rng:
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        self.send_header("Content-Length", str(len(body) - start))
        self.end_headers()
        part = body[start:]
        if self.path in srv.cut:
            srv.cut.discard(self.path)
            self.wfile.write(part[: len(part) // 2])
            self.wfile.flush()
            self.connection.shutdown(2)  # the connection is cut mid-body
            return
        self.wfile.write(part)


@pytest.fixture
def server():
    srv = Files()
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()


@pytest.fixture(autouse=True)
def caches(tmp_path, monkeypatch):
    """Every cache in the test's folder; no mirror, online."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    for name in ("RESNETS_OFFLINE", "HF_HUB_OFFLINE", "RESNETS_WEIGHTS_MIRROR", TABLE_ENV):
        monkeypatch.delenv(name, raising=False)
    return tmp_path


def _weights(seed: int = 0, **options: object) -> tuple[bytes, dict[str, torch.Tensor]]:
    """A random resnet20's state dict (BN statistics too), as torch.save bytes."""
    torch.manual_seed(seed)
    model = resnets.create_model("resnet20", **options)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
    state = model.state_dict()
    buf = io.BytesIO()
    torch.save(state, buf)
    return buf.getvalue(), state


def _entry(server: Files, body: bytes, *, name: str = "resnet20.test_cifar10", checksum: str | None = None,
           url: str | None = None, **fields: object) -> Entry:
    digest = hashlib.sha256(body).hexdigest()
    path = f"/w/resnet20-{digest[:8]}.pth"
    server.files[path] = body
    return Entry(name, "resnet20", "v1", "tests", "none", url or server.base + path,
                 checksum or f"sha256:{digest}", classes="cifar10", resize=32, crop=32, **fields)  # type: ignore[arg-type]


def _checkpoints(tmp_path: Path) -> list[str]:
    folder = tmp_path / "torch" / "hub" / "checkpoints"
    return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []


def test_download_progress_then_cache_hit(server, caches):
    body, state = _weights()
    entry = _entry(server, body)
    seen: list[tuple[int, int | None]] = []
    with registered(entry):
        path = fetch(entry, limits=FAST, on_progress=lambda d, t: seen.append((d, t)))
        assert path == caches / "torch" / "hub" / "checkpoints" / entry.file_name  # torchvision's cache and name
        assert path.read_bytes() == body
        assert seen[-1] == (len(body), len(body)) and [d for d, _ in seen] == sorted(d for d, _ in seen)
        assert len(seen) > 1  # streamed, not read at once
        requests = len(server.log)
        model = resnets.create_model("resnet20", weights=entry.name)  # the cached file: no request
        assert len(server.log) == requests
    assert all(torch.equal(model.state_dict()[k], v) for k, v in state.items())
    assert model.card.classes[0] == "airplane" and model.card.normalization["mean"] == list(entry.mean)
    assert _checkpoints(caches) == [entry.file_name]  # no partial file left


def test_resume_after_a_cut_connection(server, caches):
    body, _ = _weights()
    entry = _entry(server, body)
    server.cut.add(entry.url.removeprefix(server.base))
    path = fetch(entry, limits=FAST, progress=False)
    assert path.read_bytes() == body
    ranges = [r for _, r in server.log]
    assert ranges[0] is None and ranges[1] is not None
    assert int(ranges[1].removeprefix("bytes=").rstrip("-")) > 0  # the second asked for the rest only


def test_hash_mismatch_refused_and_nothing_kept(server, caches):
    body, _ = _weights()
    entry = _entry(server, body, checksum="sha256:" + "0" * 64)
    with registered(entry), pytest.raises(DownloadError) as err:
        resnets.create_model("resnet20", weights=entry.name)
    message = str(err.value)
    assert "\n" not in message and entry.url in message and str(caches / "torch" / "hub" / "checkpoints") in message
    assert "by hand" in message and "not 0000" in message
    assert _checkpoints(caches) == []


def test_404_is_one_line_without_retries(server, caches):
    entry = Entry("resnet20.gone", "resnet20", "v1", "tests", "none", server.base + "/w/missing-1234abcd.pth",
                  "sha256:1234abcd", classes="cifar10")
    with pytest.raises(DownloadError, match=r"HTTP 404 .*by hand, fetch .*missing-1234abcd.pth elsewhere and copy "
                                            r"it to .*checkpoints/missing-1234abcd.pth") as err:
        fetch(entry, limits=FAST, progress=False)
    assert "\n" not in str(err.value) and len(server.log) == 1
    assert _checkpoints(caches) == []


def test_timeout_is_bounded_by_attempts(server, caches):
    body, _ = _weights()
    entry = _entry(server, body)
    server.slow.add(entry.url.removeprefix(server.base))
    with pytest.raises(DownloadError, match=r"after 2 attempt\(s\): (no data for 0.3 s|no connection)"):
        fetch(entry, limits=Limits(timeout=0.3, attempts=2, total=30.0, backoff=0.0), progress=False)
    assert len(server.log) == 2 and _checkpoints(caches) == []


def test_offline_never_connects_and_uses_the_cache(server, caches, monkeypatch):
    body, _ = _weights()
    entry = _entry(server, body)
    monkeypatch.setenv("RESNETS_OFFLINE", "1")
    with pytest.raises(DownloadError, match="RESNETS_OFFLINE.*forbid the network.*by hand"):
        fetch(entry, limits=FAST)
    assert server.log == []
    monkeypatch.delenv("RESNETS_OFFLINE")
    fetch(entry, limits=FAST, progress=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert fetch(entry, limits=FAST).read_bytes() == body  # cached and checked: no network needed
    assert len(server.log) == 1


def test_damaged_cached_file_fetched_again_or_refused_offline(server, caches, monkeypatch):
    body, _ = _weights()
    entry = _entry(server, body)
    path = fetch(entry, limits=FAST, progress=False)
    path.write_bytes(body[:-10] + b"0123456789")  # damaged in place
    monkeypatch.setenv("RESNETS_OFFLINE", "1")
    with pytest.raises(UserError, match="does not match its sha256.*damaged; offline"):
        fetch(entry, limits=FAST)
    assert len(server.log) == 1
    monkeypatch.delenv("RESNETS_OFFLINE")
    notes: list[str] = []
    assert fetch(entry, limits=FAST, progress=False, say=notes.append).read_bytes() == body
    assert len(server.log) == 2 and "fetching it again" in notes[0]


def test_mirror_keeps_the_path(server, caches, monkeypatch):
    body, _ = _weights()
    real = _entry(server, body)
    path = real.url.removeprefix(server.base)
    entry = Entry(real.name, "resnet20", "v1", "tests", "none", "https://weights.example.invalid" + path,
                  real.checksum, classes="cifar10")
    monkeypatch.setenv("RESNETS_WEIGHTS_MIRROR", server.base)
    assert fetch(entry, limits=FAST, progress=False).read_bytes() == body
    assert server.log == [(path, None)]


def test_weights_list_and_get_through_the_command(server, caches, monkeypatch, capsys):
    body, _ = _weights()
    entry = _entry(server, body, top1=12.5, size_mb=1.0)
    table = caches / "table.json"
    table.write_text(json.dumps([entry_to_dict(entry)]))
    monkeypatch.setenv(TABLE_ENV, str(table))
    assert main(["weights", "list"]) == 0
    out = capsys.readouterr().out
    row = next(line for line in out.splitlines() if line.startswith(entry.name))
    assert "12.50%" in row and row.split()[-1] == "no"
    assert "resnet50.tv2_in1k" in out and "80.86%" in out  # the built-in table too
    assert main(["weights", "get", entry.name, "--no-progress"]) == 0
    assert capsys.readouterr().out.strip() == str(caches / "torch" / "hub" / "checkpoints" / entry.file_name)
    assert main(["weights", "list", "--arch", "resnet20"]) == 0
    row = next(line for line in capsys.readouterr().out.splitlines() if line.startswith(entry.name))
    assert row.split()[-1] == "yes"
    assert main(["weights", "get", "resnet20.tset_cifar10"]) == 2
    assert "did you mean resnet20.test_cifar10" in capsys.readouterr().err


def test_predict_with_a_name_feeds_its_recorded_preprocessing(server, caches, tmp_path, capsys):
    from PIL import Image

    from resnets.data import read_rgb
    from resnets.infer.loading import load_for_inference, preprocess

    body, _ = _weights(3)
    entry = _entry(server, body, name="resnet20.big_cifar10")
    entry = Entry(**{**entry_to_dict(entry), "resize": 48, "crop": 32, "mean": (0.5, 0.5, 0.5),
                     "std": (0.25, 0.25, 0.25)})
    g = torch.Generator().manual_seed(1)
    image = tmp_path / "photo.png"
    Image.fromarray(torch.randint(0, 256, (60, 80, 3), generator=g, dtype=torch.uint8).numpy()).save(image)
    with registered(entry):
        loaded = load_for_inference(entry.name)
        assert (loaded.input_size, loaded.resize, loaded.mean) == (32, 48, (0.5, 0.5, 0.5))
        assert main(["predict", "--weights", entry.name, str(image), "--format", "json", "--topk", "10",
                     "--precision", "fp32"]) == 0
    got = {t["index"]: t["prob"] for t in json.loads(capsys.readouterr().out)[0]["top"]}
    x = preprocess(read_rgb(str(image)), "cifar", (0.5, 0.5, 0.5), (0.25, 0.25, 0.25), crop=32, resize=48)
    want = torch.softmax(loaded.model(x[None]).double(), 1)[0]
    assert max(abs(got[i] - want[i].item()) for i in range(10)) < 1e-4
    default = torch.softmax(loaded.model(preprocess(read_rgb(str(image)), "cifar", (0.5,) * 3, (0.25,) * 3)[None]), 1)[0]
    assert max(abs(got[i] - default[i].item()) for i in range(10)) > 1e-3  # the family's 32/32 would differ


def test_unknown_name_and_wrong_architecture(caches):
    with pytest.raises(UserError, match="unknown weights 'resnet50.tv3_in1k'; did you mean"):
        resnets.create_model("resnet50", weights="resnet50.tv3_in1k")
    with pytest.raises(UserError, match="are for resnet50, not resnet18"):
        resnets.create_model("resnet18", weights="resnet50.tv2_in1k")
    assert lookup("IMAGENET1K_V2", "resnet50").name == "resnet50.tv2_in1k"  # torchvision's enum name
    assert lookup("resnet101.IMAGENET1K_V1").url.endswith("/resnet101-63fe2227.pth")


def _hub_cache(root: Path, repo: str, data: bytes, blob_name: str | None = None) -> Path:
    """A Hugging Face cache holding ``repo``'s model.safetensors as the Hub lays it out (blob named by SHA-256)."""
    folder = root / ("models--" + repo.replace("/", "--"))
    blob = folder / "blobs" / (blob_name or hashlib.sha256(data).hexdigest())
    blob.parent.mkdir(parents=True)
    blob.write_bytes(data)
    snap = folder / "snapshots" / ("a" * 40)
    snap.mkdir(parents=True)
    (snap / "model.safetensors").symlink_to(Path("..", "..", "blobs", blob.name))
    (folder / "refs").mkdir()
    (folder / "refs" / "main").write_text("a" * 40)
    return blob


def test_hub_entries_offline_checked_by_their_blob_name(caches, monkeypatch):
    import huggingface_hub.constants as hf

    monkeypatch.setattr(hf, "HF_HUB_CACHE", str(caches / "hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    entry = lookup("resnet50.a1_in1k")
    with pytest.raises(UserError, match=r"timm/resnet50.a1_in1k/model.safetensors\) is not in the Hugging Face "
                                        r"cache and RESNETS_OFFLINE/HF_HUB_OFFLINE forbid the network"):
        fetch(entry)
    blob = _hub_cache(caches / "hf", entry.hf_repo, b"weights bytes")
    assert fetch(entry).resolve() == blob.resolve()
    blob.write_bytes(b"weights bytez")  # damaged: its SHA-256 is no longer its name
    with pytest.raises(UserError, match="does not match the SHA-256 it is named by: damaged; offline"):
        fetch(entry)


def test_train_init_name_takes_the_tables_architecture(server, caches):
    from resnets.train.config import resolve_config

    body, _ = _weights()
    entry = _entry(server, body, options={"shortcut": "A"})
    with registered(entry):
        cfg = resolve_config(typed={"init": entry.name, "data": "sample"})
        assert (cfg.model, cfg.variant, cfg.shortcut, cfg.recipe) == ("resnet20", "v1", "A", "finetune")
        with pytest.raises(UserError, match="are for resnet20, not resnet56"):
            resolve_config(typed={"init": entry.name, "model": "resnet56"})
    with pytest.raises(UserError, match="unknown weights 'resnet20.nothere'"):
        resolve_config(typed={"init": "resnet20.nothere"})


def test_eval_with_a_name_reports_in_the_current_folder(server, caches, tmp_path, monkeypatch):
    body, _ = _weights()
    entry = _entry(server, body)
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    with registered(entry):
        assert main(["eval", "--weights", entry.name, "--data", "sample", "--max-images", "20", "--no-progress",
                     "--workers", "0"]) == 0
    assert any(p.name.startswith("eval-") and p.suffix == ".json" for p in work.iterdir())
    assert _checkpoints(caches) == [entry.file_name]  # nothing written beside the cached weights


def test_no_network_is_one_line_after_the_attempts(caches):
    import socket

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    entry = Entry("resnet20.nowhere", "resnet20", "v1", "tests", "none", f"http://127.0.0.1:{port}/w/x-1234abcd.pth",
                  "sha256:1234abcd", classes="cifar10")
    with pytest.raises(DownloadError, match=r"after 3 attempt\(s\): no connection .*nothing kept in .*checkpoints; "
                                            r"to place it by hand") as err:
        fetch(entry, limits=FAST, progress=False)
    assert "\n" not in str(err.value) and _checkpoints(caches) == []


def test_weights_list_imports_no_torch():
    import subprocess
    import sys

    code = ("import sys; from resnets.cli import main; rc = main(['weights', 'list']); "
            "assert 'torch' not in sys.modules, 'torch imported'; sys.exit(rc)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "resnet50.a1_in1k" in done.stdout


def test_embed_and_search_with_a_name(server, caches, tmp_path, capsys):
    from PIL import Image

    body, _ = _weights(4, shortcut="B")  # projection shortcuts, as chenyaofo's: the entry's options say so
    entry = _entry(server, body, options={"shortcut": "B"})
    folder = tmp_path / "gallery"
    folder.mkdir()
    g = torch.Generator().manual_seed(3)
    for i in range(3):
        Image.fromarray(torch.randint(0, 256, (32, 32, 3), generator=g, dtype=torch.uint8).numpy()).save(
            folder / f"{i}.png")
    index = tmp_path / "index.safetensors"
    with registered(entry):
        assert main(["embed", "--weights", entry.name, str(folder), "--out", str(index)]) == 0
        capsys.readouterr()
        assert main(["search", "--index", str(index), "--weights", entry.name, str(folder / "1.png"),
                     "--format", "json", "--topk", "1"]) == 0
        hits = json.loads(capsys.readouterr().out)[0]["hits"]
        assert hits[0]["path"].endswith("1.png") and hits[0]["score"] > 0.999
        # the index records the cached file's path: that file loads as its entry says (projection shortcuts)
        assert main(["search", "--index", str(index), str(folder / "2.png"), "--format", "json", "--topk", "1"]) == 0
        hits = json.loads(capsys.readouterr().out)[0]["hits"]
        assert hits[0]["path"].endswith("2.png") and hits[0]["score"] > 0.999
