"""A Triton Inference Server model repository: ``<out>/<model>/config.pbtxt``, ``labels.txt`` and
``1/model.onnx`` (the checked ONNX export), built in a temporary folder beside ``<out>`` and renamed into place.

The config is parsed with tritonclient's ``ModelConfig`` protobuf (when tritonclient is installed) and compared
with the ONNX graph's inputs and outputs before the repository is kept. Preprocessing (resize, crop, mean, std)
is in a comment at the top of ``config.pbtxt`` and in its ``parameters`` (``resnets_*`` keys).
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import sys
import tempfile
from pathlib import Path
from types import ModuleType
from typing import Any, Literal

from ..errors import UserError
from ..loading import LoadedModel, load_for_inference
from ..outputs import _check_writable
from .export_file import export_file
from .export_result import ExportCheckError, ExportResult, require_onnx

MAX_BATCH_SIZE = 64
PREFERRED_BATCH_SIZES = (8, 16, 32, 64)
MAX_QUEUE_DELAY_US = 2000
MARKER = "# resnets Triton model:"  # the first line of every config.pbtxt we write
InstanceKind = Literal["KIND_CPU", "KIND_GPU", "KIND_AUTO"]
_SAFE_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")


def export_triton(
    weights: str | os.PathLike[str] | LoadedModel,
    *,
    out: str | os.PathLike[str] | None = None,
    model_name: str | None = None,
    opset: int = 18,
    force: bool = False,
    max_batch_size: int = MAX_BATCH_SIZE,
    instance_kind: InstanceKind = "KIND_CPU",
) -> ExportResult:
    """Write a Triton model repository for ``weights`` at ``out`` (default: beside the weights,
    ``<stem>-triton/``) holding one model folder named after the architecture (e.g. ``resnet20``).

    A default-named repository that exists is replaced only with ``force``; an explicit ``out`` is replaced,
    but only if it is empty or holds nothing but model folders this function wrote. Raises ExportCheckError,
    leaving ``out`` as it was, when the ONNX model or the config fails its check.
    """
    require_onnx()
    if max_batch_size < 1:
        raise UserError(f"max_batch_size must be at least 1, not {max_batch_size}")
    loaded = load_for_inference(weights, model_name)
    name = loaded.name
    if not _SAFE_NAME.fullmatch(name):
        raise UserError(f"model name {name!r} is not a safe folder name for a Triton repository")
    bad = next((c for c in loaded.classes if "\n" in c or "\r" in c), None)
    if bad is not None:
        raise UserError(f"class name {bad!r} holds a line break; labels.txt needs one name per line")
    source = Path(loaded.source)
    repo = Path(out).expanduser() if out is not None else source.with_name(f"{source.stem}-triton")
    check_out_repository(repo, replace=force or out is not None)
    if source.resolve().is_relative_to(repo.resolve()):
        raise UserError(f"--out {repo} holds the weights being exported; choose another --out")

    repo.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{repo.name}.", suffix=".tmp", dir=repo.parent))
    try:
        model_dir = tmp / name
        (model_dir / "1").mkdir(parents=True)
        checked = export_file(loaded, "onnx", out=model_dir / "1" / "model.onnx", opset=opset)
        (model_dir / "labels.txt").write_text("".join(f"{c}\n" for c in loaded.classes), encoding="utf-8")
        config = config_text(loaded, max_batch_size=max_batch_size, instance_kind=instance_kind)
        (model_dir / "config.pbtxt").write_text(config, encoding="utf-8")
        check_repository(tmp, name)
        _settle(tmp)
        _replace_folder(tmp, repo)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return ExportResult(str(repo), "triton", checked.max_abs_diff, checked.max_abs_ref, checked.batches)


def check_out_repository(path: str | os.PathLike[str], *, replace: bool, flag: str = "--out") -> Path:
    """``path`` as a Path; UserError if it is a file, if it exists and ``replace`` is false, if it exists and
    holds anything but model folders written by resnets (never deleted), or if its folder cannot be written."""
    folder = Path(path).expanduser()
    if folder.exists() and not folder.is_dir():
        raise UserError(f"{flag} {path} is a file; give a folder for the Triton model repository")
    if folder.exists():
        if not replace:
            raise UserError(f"{path} exists; give --force to replace it, or choose another {flag}")
        foreign = [p.name for p in sorted(folder.iterdir()) if not _is_ours(p)]
        if foreign:
            raise UserError(f"{flag} {path} holds {foreign[0]!r}, not written by resnets export; "
                            f"give a new or empty folder")
    _check_writable(folder.parent, f"{flag} {path}", flag)
    return folder


def config_text(loaded: LoadedModel, *, max_batch_size: int = MAX_BATCH_SIZE,
                instance_kind: InstanceKind = "KIND_CPU") -> str:
    """The ``config.pbtxt`` for ``loaded``: ONNX Runtime, float32 ``images`` Nx3xSxS in, ``logits`` NxC out
    (named by ``labels.txt``), dynamic batching, one instance of ``instance_kind``; preprocessing as comments
    and ``resnets_*`` parameters."""
    size, n = loaded.input_size, len(loaded.classes)
    resize, crop = loaded.resize, size  # as the weights were trained (see LoadedModel)
    mean, std = [float(m) for m in loaded.mean], [float(s) for s in loaded.std]
    preferred = [b for b in PREFERRED_BATCH_SIZES if b <= max_batch_size] or [max_batch_size]
    params = {
        "resnets_input_size": str(size),
        "resnets_resize": str(resize),
        "resnets_crop": str(crop),
        "resnets_mean": json.dumps(mean),
        "resnets_std": json.dumps(std),
        "resnets_family": loaded.family,
    }
    lines = [
        f"{MARKER} {loaded.name}, {n} classes, written by resnets export --format triton",
        f"# Input images: RGB, resize shorter side to {resize} (bilinear, antialiased), centre crop {crop}x{crop},",
        f"# scale to 0..1, subtract mean {json.dumps(mean)}, divide by std {json.dumps(std)}; float32 NCHW.",
        "# Output logits: one per class in labels.txt order (softmax for probabilities).",
        f'name: "{loaded.name}"',
        'platform: "onnxruntime_onnx"',
        f"max_batch_size: {max_batch_size}",
        "input [",
        "  {",
        '    name: "images"',
        "    data_type: TYPE_FP32",
        "    format: FORMAT_NCHW",
        f"    dims: [ 3, {size}, {size} ]",
        "  }",
        "]",
        "output [",
        "  {",
        '    name: "logits"',
        "    data_type: TYPE_FP32",
        f"    dims: [ {n} ]",
        '    label_filename: "labels.txt"',
        "  }",
        "]",
        "dynamic_batching {",
        f"  preferred_batch_size: [ {', '.join(map(str, preferred))} ]",
        f"  max_queue_delay_microseconds: {MAX_QUEUE_DELAY_US}",
        "}",
        "instance_group [",
        "  {",
        "    count: 1",
        f"    kind: {instance_kind}",
        "  }",
        "]",
    ]
    for key, value in params.items():
        lines += ["parameters {", f'  key: "{key}"', f"  value: {{ string_value: {json.dumps(value)} }}", "}"]
    return "\n".join(lines) + "\n"


def model_config_pb2() -> ModuleType | None:
    """tritonclient's ``model_config_pb2`` (Triton's ``ModelConfig`` protobuf), or None without tritonclient.

    ``tritonclient.grpc`` refuses to import without grpcio (``tritonclient[http]``), but its generated
    ``model_config_pb2.py`` needs only protobuf, so it is loaded from its file then."""
    try:
        from tritonclient.grpc import model_config_pb2 as module  # needs tritonclient[grpc]

        return module
    except (ImportError, RuntimeError):
        pass
    spec = importlib.util.find_spec("tritonclient")
    if spec is None or not spec.submodule_search_locations:
        return None
    file = Path(next(iter(spec.submodule_search_locations))) / "grpc" / "model_config_pb2.py"
    name = "resnets._triton_model_config_pb2"
    if name in sys.modules:
        return sys.modules[name]
    file_spec = importlib.util.spec_from_file_location(name, file)
    if not file.is_file() or file_spec is None or file_spec.loader is None:
        return None
    module = importlib.util.module_from_spec(file_spec)
    file_spec.loader.exec_module(module)
    sys.modules[name] = module
    return module


def parse_config(text: str) -> Any:
    """``text`` parsed into Triton's ``ModelConfig`` message; None without tritonclient; ExportCheckError if it
    does not parse."""
    pb2 = model_config_pb2()
    if pb2 is None:
        return None
    from google.protobuf import text_format

    try:
        return text_format.Parse(text, pb2.ModelConfig())
    except text_format.ParseError as exc:
        raise ExportCheckError(f"config.pbtxt does not parse as a Triton ModelConfig: {exc}") from None


def check_repository(repo: str | os.PathLike[str], name: str) -> None:
    """ExportCheckError unless ``repo/name`` holds a config that parses (with tritonclient, when installed) and
    agrees with its ``1/model.onnx`` inputs and outputs and with ``labels.txt``."""
    import onnx

    model_dir = Path(repo) / name
    text = (model_dir / "config.pbtxt").read_text(encoding="utf-8")
    graph = onnx.load(str(model_dir / "1" / "model.onnx"), load_external_data=False).graph
    shape = {v.name: [d.dim_value or d.dim_param for d in v.type.tensor_type.shape.dim]
             for v in [*graph.input, *graph.output]}
    labels = (model_dir / "labels.txt").read_text(encoding="utf-8").splitlines()
    problems = []
    if list(shape) != ["images", "logits"]:
        problems.append(f"the ONNX model's inputs and outputs are {list(shape)}, not images and logits")
    else:
        in_dims, out_dims = shape["images"][1:], shape["logits"][1:]
        if not isinstance(shape["images"][0], str):
            problems.append("the ONNX model's batch axis is fixed")
        if out_dims != [len(labels)]:
            problems.append(f"labels.txt has {len(labels)} names for {out_dims} logits")
        config = parse_config(text)
        if config is not None:
            got = (config.name, config.platform, [list(i.dims) for i in config.input],
                   [list(o.dims) for o in config.output], config.max_batch_size > 0,
                   config.HasField("dynamic_batching"))
            want = (name, "onnxruntime_onnx", [in_dims], [out_dims], True, True)
            if got != want:
                problems.append(f"config.pbtxt says (name, platform, input dims, output dims, batched, "
                                f"dynamic batching) {got}; the model is {want}")
    if problems:
        raise ExportCheckError("; ".join(problems) + "; nothing written")


def _is_ours(entry: Path) -> bool:
    """Whether ``entry`` (in an existing repository folder) is a model folder written by resnets export."""
    config = entry / "config.pbtxt"
    if not entry.is_dir() or entry.is_symlink() or not config.is_file():
        return False
    with open(config, encoding="utf-8", errors="replace") as fh:
        return fh.readline().startswith(MARKER)


def _settle(root: Path) -> None:
    """Give ``root``'s folders and files the umask's modes (mkdtemp makes 0700) and fsync them all."""
    umask = os.umask(0)
    os.umask(umask)
    for dirpath, _, filenames in os.walk(root, topdown=False):
        for f in filenames:
            path = os.path.join(dirpath, f)
            os.chmod(path, 0o666 & ~umask)
            with open(path, "rb+") as fh:
                os.fsync(fh.fileno())
        os.chmod(dirpath, 0o777 & ~umask)
        _fsync_dir(dirpath)


def _replace_folder(new: Path, dest: Path) -> None:
    """Rename ``new`` to ``dest``; an existing ``dest`` is moved aside first and deleted after."""
    old = None
    if dest.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".old", dir=dest.parent))
        os.replace(dest, old / dest.name)
    try:
        os.replace(new, dest)
    except BaseException:
        if old is not None:
            os.replace(old / dest.name, dest)
            shutil.rmtree(old, ignore_errors=True)
        raise
    _fsync_dir(dest.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _fsync_dir(path: str | os.PathLike[str]) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
