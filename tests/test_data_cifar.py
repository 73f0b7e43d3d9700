"""CIFAR archives in the official python format: parsing, safety, download with checksum."""

from __future__ import annotations

import functools
import hashlib
import http.server
import io
import pickle
import tarfile
import threading

import numpy as np
import pytest
import torch

from resnets.data import download_cifar, load_cifar, open_data
from resnets.errors import UserError

CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def _batch(seed: int, n: int) -> dict:
    rng = np.random.default_rng(seed)
    return {b"batch_label": b"batch", b"labels": rng.integers(0, 10, n).tolist(),
            b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
            b"filenames": [f"{seed}_{i}.png".encode() for i in range(n)]}


def _official_members() -> dict[str, bytes]:
    """A tiny CIFAR-10 in the official layout: pickled dicts with bytes keys and uint8 ndarrays."""
    members = {f"cifar-10-batches-py/data_batch_{i}": pickle.dumps(_batch(i, 3), protocol=2) for i in range(1, 6)}
    members["cifar-10-batches-py/test_batch"] = pickle.dumps(_batch(9, 4), protocol=2)
    members["cifar-10-batches-py/batches.meta"] = pickle.dumps(
        {b"label_names": [c.encode() for c in CLASSES], b"num_cases_per_batch": 3, b"num_vis": 3072}, protocol=2)
    return members


def _write_targz(path, members: dict[str, bytes]) -> None:
    with tarfile.open(path, "w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def _expected(train: bool):
    batches = [_batch(i, 3) for i in range(1, 6)] if train else [_batch(9, 4)]
    images = np.concatenate([b[b"data"] for b in batches]).reshape(-1, 3, 32, 32)
    return torch.from_numpy(images), torch.tensor(sum((b[b"labels"] for b in batches), []))


def test_load_from_archive_and_extracted_folder(tmp_path):
    members = _official_members()
    _write_targz(tmp_path / "cifar-10-python.tar.gz", members)
    for name, data in members.items():
        (tmp_path / "x" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "x" / name).write_bytes(data)
    for source in (tmp_path / "cifar-10-python.tar.gz", tmp_path / "x", tmp_path / "x" / "cifar-10-batches-py"):
        for train in (True, False):
            data = load_cifar(source, "cifar10", train)
            images, labels = _expected(train)
            assert data.classes == CLASSES
            assert torch.equal(data.images, images) and torch.equal(data.labels, labels)
    splits = open_data(tmp_path / "cifar-10-python.tar.gz")
    assert splits.name == "cifar10" and len(splits.train) == 15 and len(splits.test) == 4


def test_cifar100_fine_labels(tmp_path):
    rng = np.random.default_rng(0)
    train = {b"data": rng.integers(0, 256, (4, 3072), dtype=np.uint8), b"fine_labels": [0, 99, 5, 7],
             b"coarse_labels": [0, 1, 2, 3], b"filenames": [b"a"] * 4}
    meta = {b"fine_label_names": [f"c{i}".encode() for i in range(100)], b"coarse_label_names": [b"x"] * 20}
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    (folder / "train").write_bytes(pickle.dumps(train, protocol=3))
    (folder / "test").write_bytes(pickle.dumps(train, protocol=3))
    (folder / "meta").write_bytes(pickle.dumps(meta, protocol=3))
    data = load_cifar(tmp_path, "cifar100", True)
    assert data.labels.tolist() == [0, 99, 5, 7] and len(data.classes) == 100 and data.classes[99] == "c99"


class _Evil:
    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        return (open, (str(self.target), "w"))  # would create a file if executed


def test_malicious_pickle_is_refused_and_runs_nothing(tmp_path):
    marker = tmp_path / "pwned"
    members = _official_members()
    members["cifar-10-batches-py/data_batch_3"] = pickle.dumps({b"data": _Evil(marker), b"labels": []}, protocol=2)
    _write_targz(tmp_path / "cifar-10-python.tar.gz", members)
    with pytest.raises(UserError, match="refusing to load global"):
        load_cifar(tmp_path / "cifar-10-python.tar.gz", "cifar10", True)
    assert not marker.exists()


@pytest.fixture
def served_dir(tmp_path):
    """A local http.server on 127.0.0.1 serving ``tmp_path/www``; stopped after the test."""
    root = tmp_path / "www"
    root.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    handler.log_message = lambda *args: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield root, f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def test_download_checks_md5(tmp_path, served_dir, monkeypatch):
    root, url = served_dir
    archive = root / "cifar-10-python.tar.gz"
    _write_targz(archive, _official_members())
    md5 = hashlib.md5(archive.read_bytes()).hexdigest()

    with pytest.raises(UserError, match="checksum mismatch"):  # the official md5 does not match
        download_cifar("cifar10", tmp_path / "dl", base_url=url)
    assert not list((tmp_path / "dl").iterdir())  # no partial or unverified file left

    got = download_cifar("cifar10", tmp_path / "dl", base_url=url, md5=md5)
    assert got == tmp_path / "dl" / "cifar-10-python.tar.gz" and got.read_bytes() == archive.read_bytes()

    import resnets.data.cifar as cifar

    monkeypatch.setitem(cifar.DATASETS["cifar10"], "md5", md5)
    monkeypatch.setenv("RESNETS_CIFAR_URL", url)
    with pytest.raises(UserError, match="download"):
        open_data("cifar10", cache_dir=tmp_path / "cache")
    splits = open_data("cifar10", cache_dir=tmp_path / "cache", download=True)
    assert len(splits.train) == 15 and (tmp_path / "cache" / "cifar" / "cifar-10-python.tar.gz").is_file()


def _one_line(exc: pytest.ExceptionInfo[UserError]) -> str:
    assert "\n" not in str(exc.value)
    return str(exc.value)


def test_oversized_archive_members_are_refused_before_they_are_read(tmp_path):
    members = _official_members()
    members["cifar-10-batches-py/data_batch_2"] = bytes(49 << 20)  # 49 MiB: the official batches are 31 MB
    archive = tmp_path / "cifar-10-python.tar.gz"
    _write_targz(archive, members)
    assert archive.stat().st_size < 1 << 20
    with pytest.raises(UserError, match=r"^archive .*cifar-10-python\.tar\.gz: cifar-10-batches-py/data_batch_2 "
                                        r"holds 51,380,224 bytes, over the 50,331,648-byte limit for a "
                                        r"cifar-10-batches-py member .*download it again \(resnets train --data "
                                        r"cifar10 --download\)$") as exc:
        load_cifar(archive, "cifar10", True)
    _one_line(exc)
    assert len(load_cifar(archive, "cifar10", False)) == 4  # the test split does not read that member
    members = _official_members()
    members["cifar-10-batches-py/batches.meta"] += bytes(2 << 20)  # class names padded to 2 MiB
    _write_targz(archive, members)
    with pytest.raises(UserError, match=r"batches\.meta holds 2,097,\d+ bytes, over the 1,048,576-byte limit"):
        load_cifar(archive, "cifar10", False)
    # the extracted folder: the same caps, checked by the file's size
    folder = tmp_path / "x" / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    for name, data in _official_members().items():
        (folder / name.rsplit("/", 1)[-1]).write_bytes(data)
    (folder / "test_batch").write_bytes(bytes(49 << 20))
    with pytest.raises(UserError, match=r"cifar-10-batches-py: test_batch holds 51,380,224 bytes, over the "):
        load_cifar(tmp_path / "x", "cifar10", False)


def test_an_archive_that_decompresses_past_its_cap_or_has_a_huge_header_is_refused(tmp_path, monkeypatch):
    import resnets.data.cifar as cifar

    members = {"cifar-10-batches-py/padding": bytes(8 << 20), **_official_members()}  # skipped, yet decompressed
    archive = tmp_path / "cifar-10-python.tar.gz"
    _write_targz(archive, members)
    monkeypatch.setattr(cifar, "MAX_ARCHIVE_BYTES", 4 << 20)
    with pytest.raises(UserError, match=r"^archive .*: member cifar-10-batches-py/padding ends 8,389,120 bytes into "
                                        r"the decompressed tar, over the limit of 4,194,304 bytes; it is not the "
                                        r"official archive") as exc:
        load_cifar(archive, "cifar10", False)
    _one_line(exc)
    monkeypatch.undo()
    assert len(load_cifar(archive, "cifar10", False)) == 4  # under the real 512 MiB
    with tarfile.open(archive, "w:gz", format=tarfile.GNU_FORMAT) as tar:
        info = tarfile.TarInfo("cifar-10-batches-py/" + "n" * (2 << 20))  # a 2 MiB GNU long name
        tar.addfile(info, io.BytesIO(b""))
    with pytest.raises(UserError, match=r"a \d+-byte tar header exceeds the limit of 1048576 bytes"):
        load_cifar(archive, "cifar10", False)
