"""Weights in and out: safetensors with metadata, foreign checkpoints, and loading that never runs code.

A file written by ``save_weights`` rebuilds its model alone (``load_model``). ``load_weights`` accepts
resnets, torchvision and timm weights, training checkpoints, plain state dicts and the forms CIFAR
repositories publish (``linear.`` head, no ``num_batches_tracked``); pickled files are read with
``torch.load(weights_only=True)``, which refuses anything but tensors and plain containers.

A file is untrusted until checked: ``read_metadata`` reads only the safetensors header (at most
:data:`MAX_HEADER_BYTES`), checks every tensor's dtype, shape and offsets against the file's size, and bounds
every spec value (:data:`SPEC_LIMITS`); ``load_model`` builds the spec on the meta device and compares its
tensor names, shapes and dtypes with the header's before any real memory is allocated.
"""

from __future__ import annotations

import json
import math
import os
import pickle
import struct
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn
from torch.overrides import TorchFunctionMode

from .errors import UserError
from .models import ResNetBase, create_model
from .outputs import atomic_write

FORMAT_VERSION = 1
METADATA_KEY = "resnets"
_WRAPPER_KEYS = ("state_dict", "model_state_dict", "model", "net", "module")
_PREFIXES = ("module.", "_orig_mod.", "model.")
_MAX_NESTING = 3
_COUNTER = "num_batches_tracked"
_OLD_PREACT_BN = "layer1.0.bn1."  # only earlier pre-activation nets have it; see load_weights

#: Largest safetensors header read, in bytes: names, dtypes, shapes and the metadata (class names included).
MAX_HEADER_BYTES = 16 << 20
#: Bounds on what a weights file's spec and metadata may ask for: classes, input channels, blocks per stage of
#: an ImageNet net (``blocks=``; resnet152 has 36), and the side of the input it was trained at.
SPEC_LIMITS = {"num_classes": 100_000, "in_chans": 1024, "blocks": 100, "input_size": 4096}
#: The spec keys checked one by one (type and bound); any other key may only hold true/false or a short name
#: (``create_model`` refuses an option it does not know), so a new numeric option needs its bound here.
_SPEC_KEYS = {"name", "variant", "num_classes", "shortcut", "zero_init_residual", "in_chans", "blocks",
              "tf_padding"}  # shortcut_pad ("after"/"both") is a short name: checked by create_model
#: safetensors dtype names and their sizes in bytes.
_DTYPE_BYTES = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1, "I16": 2, "U16": 2, "F16": 2,
                "BF16": 2, "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8}
_TORCH_DTYPES = {torch.bool: "BOOL", torch.uint8: "U8", torch.int8: "I8", torch.int16: "I16",
                 torch.float16: "F16", torch.bfloat16: "BF16", torch.int32: "I32", torch.float32: "F32",
                 torch.int64: "I64", torch.float64: "F64"}


def save_weights(
    model: ResNetBase,
    path: str | os.PathLike[str],
    *,
    classes: list[str] | None = None,
    normalization: Mapping[str, list[float]] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> Path:
    """Write ``model``'s weights as safetensors with the metadata that rebuilds it; atomic.

    ``classes``: class names in index order; ``normalization``: ``{"mean": [...], "std": [...]}`` in 0..1.
    Both default to the model's card (``model.card.classes``/``.normalization``).
    """
    card = model.card
    if card.name is None:
        raise UserError("this model has no registry name; build it with resnets.create_model to save it "
                        "with metadata")
    classes = classes if classes is not None else card.classes
    if classes is not None and len(classes) != card.num_classes:
        raise UserError(f"{len(classes)} class names given for a {card.num_classes}-class model")
    meta = {
        "format_version": FORMAT_VERSION,
        "spec": card.spec,
        "classes": list(classes) if classes is not None else None,
        "normalization": dict(normalization or card.normalization or {}) or None,
        **(dict(extra) if extra else {}),
    }
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    return atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata={METADATA_KEY: json.dumps(meta)}))


def read_metadata(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The resnets metadata of a safetensors file written by ``save_weights``, checked (see the module doc)."""
    path = _existing(path)
    return check_metadata(read_header(path), path)


def metadata_text(path: str | os.PathLike[str]) -> str:
    """The resnets metadata of a safetensors file as stored, unparsed and unchecked (a header that cannot be read,
    or holds none, is a UserError): whether a file claims to be a resnets file, before ``read_metadata`` checks it."""
    path = _existing(path)
    raw = (read_header(path).get("__metadata__") or {}).get(METADATA_KEY)
    if raw is None:
        raise UserError(f"{path} has no resnets metadata")
    return raw


def read_header(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The safetensors header of ``path`` (``{name: {"dtype", "shape", "data_offsets"}, "__metadata__": ...}``),
    read without the tensor data and checked: at most :data:`MAX_HEADER_BYTES`, every tensor inside the file
    with the byte size its dtype and shape imply. UserError, in one line, for anything else."""
    path = _existing(path)
    bad = f"{path} is not a readable safetensors file"
    try:
        with open(path, "rb") as fh:
            prefix = fh.read(8)
            if len(prefix) < 8:
                raise UserError(f"{bad} (shorter than its 8-byte header length)")
            (size,) = struct.unpack("<Q", prefix)
            if size > MAX_HEADER_BYTES:
                raise UserError(f"{bad}: its header claims {size:,} bytes, over the limit of {MAX_HEADER_BYTES:,} "
                                "(resnets.weights.MAX_HEADER_BYTES); the file is damaged or crafted")
            raw = fh.read(size)
            file_size = os.fstat(fh.fileno()).st_size
    except OSError as exc:
        raise UserError(f"{bad} ({exc})") from None
    if len(raw) < size:
        raise UserError(f"{bad}: its {size:,}-byte header is cut short; the file is incomplete")
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise UserError(f"{bad}: its header is not valid JSON ({_first_line(exc)})") from None
    if not isinstance(header, dict):
        raise UserError(f"{bad}: its header is a JSON {type(header).__name__}, not an object")
    data_bytes = file_size - 8 - size
    for name, entry in header.items():
        if name == "__metadata__":
            if not isinstance(entry, dict) or not all(isinstance(v, str) for v in entry.values()):
                raise UserError(f"{bad}: its __metadata__ is not a mapping of strings")
            continue
        problem = _entry_problem(entry, data_bytes)
        if problem:
            raise UserError(f"{bad}: tensor {_short(name)} {problem}; the file is damaged or crafted")
    return header


def _entry_problem(entry: Any, data_bytes: int) -> str | None:
    """Why a header entry is not a tensor lying inside ``data_bytes`` bytes of data, or None."""
    if not isinstance(entry, dict):
        return "is not described by an object"
    dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
    if not isinstance(dtype, str) or not isinstance(shape, list) or not all(
            type(d) is int and d >= 0 for d in shape):
        return "has no valid dtype and shape"
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(type(o) is int for o in offsets)
            and 0 <= offsets[0] <= offsets[1] <= data_bytes):
        return f"has data offsets {_short(offsets)} outside the file's {data_bytes:,} bytes of data"
    if dtype in _DTYPE_BYTES and offsets[1] - offsets[0] != math.prod(shape) * _DTYPE_BYTES[dtype]:
        return f"holds {offsets[1] - offsets[0]:,} bytes, not the {math.prod(shape) * _DTYPE_BYTES[dtype]:,} " \
               f"its {dtype} shape {tuple(shape)} needs"
    return None


def check_metadata(header: dict[str, Any], path: str | os.PathLike[str]) -> dict[str, Any]:
    """The checked resnets metadata in ``header`` (``read_header(path)``'s, so that a caller reads it once);
    UserError in one line if it is missing or malformed."""
    raw = (header.get("__metadata__") or {}).get(METADATA_KEY)
    if raw is None:
        raise UserError(f"{path} has no resnets metadata; build the model with create_model(...) "
                        "and load it with load_weights(model, path)")
    try:
        meta = json.loads(raw)
    except (ValueError, RecursionError) as exc:
        raise UserError(f"{path}: its resnets metadata is not valid JSON ({_first_line(exc)}); the file is "
                        "damaged or was not written by resnets") from None
    if not isinstance(meta, dict):
        raise UserError(f"{path}: its resnets metadata is a JSON {type(meta).__name__}, not an object")
    version = meta.get("format_version")
    if type(version) is not int or version > FORMAT_VERSION:
        raise UserError(f"{path}: resnets weights format {_short(version)} is not one this resnets reads "
                        f"(format {FORMAT_VERSION}); upgrade resnets or write the file again")
    problem = spec_problem(meta.get("spec")) or _card_problem(meta)
    if problem:
        raise UserError(f"{path}: {problem}; the file is damaged or crafted")
    return meta


def spec_problem(spec: Any) -> str | None:
    """Why ``spec`` (a weights file's ``create_model`` arguments) is not one to build, or None: known keys only,
    each of its type and within :data:`SPEC_LIMITS`."""
    if not isinstance(spec, dict):
        return f"its spec is a {type(spec).__name__}, not an object of create_model arguments"
    loose = [k for k in spec if k not in _SPEC_KEYS and not (
        type(spec[k]) is bool or isinstance(spec[k], str) and len(spec[k]) <= 64)]
    if loose:
        return (f"its spec's {_short(str(loose[0]))} is not a create_model option this resnets bounds (numbers and "
                "lists are read only for " + ", ".join(sorted(_SPEC_KEYS - {"name", "variant"})) + ")")
    if not isinstance(spec.get("name"), str) or len(spec["name"]) > 64:
        return f"its spec's name {_short(spec.get('name'))} is not a model name"
    if not isinstance(spec.get("variant", ""), str) or len(spec.get("variant", "")) > 64:
        return f"its spec's variant {_short(spec.get('variant'))} is not a variant name"
    for key, low in (("num_classes", 1), ("in_chans", 1)):
        value, high = spec.get(key, low), SPEC_LIMITS[key]
        if type(value) is not int or not low <= value <= high:
            return f"its spec's {key} {_short(value)} is not a whole number from {low} to {high:,}"
    blocks = spec.get("blocks", [1, 1, 1, 1])
    if not isinstance(blocks, list) or len(blocks) != 4 or not all(
            type(b) is int and 1 <= b <= SPEC_LIMITS["blocks"] for b in blocks):
        return f"its spec's blocks {_short(blocks)} are not four block counts from 1 to {SPEC_LIMITS['blocks']}"
    if not isinstance(spec.get("shortcut", ""), str) or type(spec.get("zero_init_residual", False)) is not bool:
        return "its spec's shortcut is not a name or its zero_init_residual not true/false"
    tf = spec.get("tf_padding", False)
    if not (type(tf) is bool or isinstance(tf, list) and len(tf) <= 3 and all(isinstance(p, str) for p in tf)):
        return f"its spec's tf_padding {_short(tf)} is not true/false or a list of places"
    return None


def _card_problem(meta: dict[str, Any]) -> str | None:
    """Why the metadata's classes, normalisation or training sizes are malformed or out of bounds, or None."""
    classes, norm = meta.get("classes"), meta.get("normalization")
    if classes is not None and (not isinstance(classes, list) or len(classes) != meta["spec"].get("num_classes")
                                or not all(isinstance(c, str) for c in classes)):
        return "its classes are not one name per class"
    if norm is not None:
        if not isinstance(norm, dict) or not all(
                isinstance(norm.get(k), list) and 1 <= len(norm[k]) <= SPEC_LIMITS["in_chans"] and all(
                    type(v) in (int, float) and math.isfinite(v) for v in norm[k]) for k in ("mean", "std")) \
                or len(norm["mean"]) != len(norm["std"]):
            return "its normalization is not a mean and a std of finite numbers, one per channel"
    trained = meta.get("trained")
    if trained is not None and not isinstance(trained, dict):
        return "its training record is not an object"
    for key in ("input_size", "resize", "image_size", "fit_images"):
        value = (trained or {}).get(key)
        if value is not None and (type(value) is not int or not 1 <= value <= SPEC_LIMITS["input_size"]):
            return f"its trained {key} {_short(value)} is not a side from 1 to {SPEC_LIMITS['input_size']}"
    return None


def load_model(path: str | os.PathLike[str], *, device: str | torch.device = "cpu",
               header: dict[str, Any] | None = None) -> ResNetBase:
    """Rebuild a model from a ``save_weights`` file alone, its card's ``classes`` and ``normalization`` set.

    The spec is built on the meta device first and its tensors' names, shapes and dtypes compared with the
    file's header; only a file that matches is read into memory (a mismatch names the first tensor that differs).
    ``header``: ``read_header(path)``'s result when the caller has it (the file's header is then not read again).
    """
    path = _existing(path)
    header = read_header(path) if header is None else header
    meta = check_metadata(header, path)
    model = _skeleton(meta["spec"])
    _check_tensors(model, header, path)
    state = _load_file(path)
    model = model.to_empty(device="cpu")  # fresh, aligned memory, as a model built on the CPU has
    model.load_state_dict(state, strict=True)
    model.card.classes = meta.get("classes")
    model.card.normalization = meta.get("normalization")
    return model.to(device).eval()


class _NoRandomInit(TorchFunctionMode):
    """Skips the random initialisers (``normal_``, ``kaiming_uniform_``, ...): on the meta device they have no
    values to fill, and ``normal_`` there would import torch's compiler stack (~3 s, 150+ MB, once per process)."""

    def __torch_function__(self, func: Any, types: Any, args: tuple[Any, ...] = (),
                           kwargs: dict[str, Any] | None = None) -> Any:
        kwargs = kwargs or {}
        if getattr(func, "__name__", "").endswith(("normal_", "uniform_")):
            return args[0] if args else kwargs["tensor"]
        return func(*args, **kwargs)


def _skeleton(spec: dict[str, Any]) -> ResNetBase:
    """``create_model(**spec)`` on the meta device: every tensor's shape and dtype, no memory for their values."""
    with torch.device("meta"), _NoRandomInit():
        return create_model(**spec)


def _check_tensors(model: ResNetBase, header: dict[str, Any], path: Path) -> None:
    """UserError naming the first tensor whose name, shape or dtype differs between ``model`` and ``header``."""
    held = {k: v for k, v in header.items() if k != "__metadata__"}
    spec = model.card.spec
    for key, tensor in model.state_dict().items():
        entry = held.get(key)
        want = f"{_TORCH_DTYPES.get(tensor.dtype, tensor.dtype)} {tuple(tensor.shape)}"
        if entry is None:
            problem = f"tensor {key} ({want}) is missing"
        elif entry["dtype"] != _TORCH_DTYPES.get(tensor.dtype) or tuple(entry["shape"]) != tuple(tensor.shape):
            problem = f"tensor {key} is {entry['dtype']} {tuple(entry['shape'])}, the spec's is {want}"
        else:
            continue
        raise UserError(f"{path}: its tensors do not match its spec ({_spec_text(spec)}): {problem}; the file is "
                        "damaged or crafted")
    own = model.state_dict()
    extra = [k for k in held if k not in own]
    if extra and spec.get("variant") == "preact" and all(k.startswith(_OLD_PREACT_BN) for k in extra):
        raise UserError(_old_preact_message(str(spec["name"])))
    if extra:
        raise UserError(f"{path}: its tensors do not match its spec ({_spec_text(spec)}): tensor "
                        f"{_short(extra[0])} is not in the spec's model{f' (+{len(extra) - 1} more)' if len(extra) > 1 else ''}; "
                        "the file is damaged or crafted")


def _load_file(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file whose header :func:`read_header` has checked."""
    try:
        return load_file(str(path))
    except (SafetensorError, OSError) as exc:
        raise UserError(f"{path} is not a readable safetensors file ({_first_line(exc)})") from None


def _spec_text(spec: Mapping[str, Any]) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in spec.items())


def read_state_dict(source: str | os.PathLike[str] | Mapping[str, Any], *,
                    header: dict[str, Any] | None = None) -> dict[str, torch.Tensor]:
    """Tensors from a safetensors file, a ``.pth``/checkpoint (read without unpickling code) or a mapping;
    ``header``: a safetensors file's ``read_header`` result when the caller has it (then not read again).

    A checkpoint's weights are taken from ``state_dict``, ``model_state_dict``, ``model``, ``net`` or
    ``module``, nested up to three deep; other entries (epoch, optimizer, EMA copies) are ignored, and
    different weights under two of those keys are refused. A ``module.`` (DataParallel/DDP),
    ``_orig_mod.`` (torch.compile) or ``model.`` prefix is removed when every key has it.
    """
    if isinstance(source, Mapping):
        obj: Any = source
    else:
        path = _existing(source)
        if _is_safetensors(path):
            if header is None:
                read_header(path)  # bounded and checked before the tensors are read
            obj = _load_file(path)
        else:
            try:
                obj = torch.load(path, map_location="cpu", weights_only=True)
            except pickle.UnpicklingError as exc:
                detail = _unpickler_detail(str(exc))
                if "GLOBAL" not in detail:
                    raise UserError(f"{path} is not a readable weights file ({detail})") from None
                raise UserError(f"refusing to load {path}: it holds objects other than tensors, and loading "
                                f"it could run code ({detail}); re-save it as safetensors from a trusted "
                                "source") from None
            except (RuntimeError, EOFError, OSError) as exc:
                raise UserError(f"{path} is not a readable weights file ({str(exc).splitlines()[0][:160]})") \
                    from None
    return _unwrap(obj, str(source) if not isinstance(source, Mapping) else "the state dict")


class StateDict(dict):  # type: ignore[type-arg]
    """A state dict (``{name: tensor}``) that remembers what its checkpoint said of its origin: ``best_prec1``,
    an entry of akamaster/pytorch_resnet_cifar10's checkpoints, beside the weights."""

    best_prec1 = False
    source = ""  # the file it was read from, to name in messages


def akamaster_layout(state: Mapping[str, Any]) -> str | None:
    """Why ``state`` is akamaster/pytorch_resnet_cifar10's CIFAR net, or None: a CIFAR net (3x3 stem of 16) with
    parameter-free (option A) shortcuts and either its ``linear.`` head or its checkpoints' ``best_prec1``."""
    stem = state.get("conv1.weight")
    if stem is None or tuple(stem.shape)[:1] != (16,) or tuple(stem.shape)[2:] != (3, 3) \
            or "layer3.0.conv1.weight" not in state or "layer4.0.conv1.weight" in state:
        return None
    if any(".shortcut." in k or ".downsample." in k for k in state):
        return None  # projection shortcuts: option B, nothing to place
    linear = "linear.weight" in state and "fc.weight" not in state
    best = getattr(state, "best_prec1", False)
    if not (linear or best):
        return None
    return " and ".join(w for w, on in (("a linear. head", linear), ("a best_prec1 entry", best)) if on)


def _place_zero_padding(model: nn.Module, state: Mapping[str, Any], source: object,
                        shortcut_pad: str | None, say: Any) -> None:
    """Set the option-A shortcuts of ``model`` to ``shortcut_pad``, or, when None and the model's card does not
    fix it, to akamaster's placement (both sides) if ``state`` is that repository's net (saying so in one line)."""
    from .models.blocks import ZeroPadShortcut, check_shortcut_pad

    shortcuts = [m for m in model.modules() if isinstance(m, ZeroPadShortcut)]
    if not shortcuts:
        if shortcut_pad not in (None, "after"):
            raise UserError(f"shortcut_pad={shortcut_pad!r} places option A's zeros, but this model has no option-A "
                            "shortcuts")
        return
    card = model.card if isinstance(model, ResNetBase) else None
    if shortcut_pad is None:
        if card is not None and "shortcut_pad" in card.options:
            return  # chosen when the model was built
        why = akamaster_layout(state)
        if why is None:
            return
        shortcut_pad = "both"
        where = source if isinstance(source, str | os.PathLike) else getattr(state, "source", "") or "the weights"
        (say or (lambda line: print(line, file=sys.stderr)))(
            f"{where}: akamaster/pytorch_resnet_cifar10's layout ({why}, option-A shortcuts): computed as its "
            "code does, the new channels zero-padded on both sides (shortcut_pad='both'; force with shortcut_pad)")
    try:
        for m in shortcuts:
            m.pad = check_shortcut_pad(shortcut_pad, m.extra_channels)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    if card is not None:
        card.options["shortcut_pad"] = shortcut_pad


def load_weights(
    model: nn.Module,
    source: str | os.PathLike[str] | Mapping[str, Any],
    *,
    reinit_head: bool = False,
    shortcut_pad: str | None = None,
    say: Any = None,
) -> nn.Module:
    """Load weights into ``model`` exactly; a mismatch names the keys and shapes that differ.

    Checkpoints saved before PyTorch 0.4.1 (no ``num_batches_tracked``) load with those counters at 0;
    a ``linear.`` head (popular CIFAR repositories) loads as ``fc.`` when the weights have no ``fc.``.
    A different number of classes is an error unless ``reinit_head=True``, which keeps the model's fresh
    head (fine-tuning). Earlier resnets pre-activation weights (with ``layer1.0.bn1``) are refused with that
    reason: that net had an extra BN-ReLU, so no weights of the current one compute the same function.

    Option-A zero padding: ``shortcut_pad`` (``"after"``, ``"both"``) sets where the shortcuts put their zeros;
    None keeps the model's, except that weights laid out as akamaster/pytorch_resnet_cifar10's (see
    :func:`akamaster_layout`) load into a model built without a placement as that code computes them (both
    sides), said in one line to ``say`` (default: stderr).
    """
    own = model.state_dict()
    raw = read_state_dict(source)
    state = _fit_names(raw, own)
    head = _head_keys(model)
    if reinit_head:
        state = {k: v for k, v in state.items() if k not in head}
    missing = [k for k in own if k not in state and not (reinit_head and k in head)]
    unexpected = [k for k in state if k not in own]
    shapes = [k for k in state if k in own and state[k].shape != own[k].shape]
    if shapes and set(shapes) <= head and not missing and not unexpected:
        got, want = state[shapes[0]].shape[0], own[shapes[0]].shape[0]
        raise UserError(f"the weights have a {got}-class head but the model has {want} classes; "
                        f"build the model with num_classes={got}, or call load_weights(model, weights, "
                        "reinit_head=True) to fine-tune with a fresh head")
    card = model.card if isinstance(model, ResNetBase) else None  # else a torchvision or other net
    name = card.name if card is not None and card.name else type(model).__name__
    if card is not None and card.variant == "preact" and unexpected and not missing and not shapes and all(
            k.startswith(_OLD_PREACT_BN) for k in unexpected):
        raise UserError(_old_preact_message(name))
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)} key(s): {_some(missing)}")
        if unexpected:
            parts.append(f"unexpected {len(unexpected)} key(s): {_some(unexpected)}")
        if shapes:
            parts.append("shape mismatch: " + _some(
                [f"{k} {tuple(state[k].shape)} vs model {tuple(own[k].shape)}" for k in shapes]))
        if "conv1.0.weight" in unexpected or any(k.endswith("downsample.1.weight") and state[k].ndim == 4
                                                 for k in shapes):  # timm's deep stem, avg-pool shortcuts
            parts.append("these look like ResNet-D weights (timm's resnet50d): load them with --variant d "
                         "(create_model(name, variant='d'))")
        raise UserError(f"weights do not fit {name}: " + "; ".join(parts))
    _place_zero_padding(model, raw, source, shortcut_pad, say)
    model.load_state_dict(state, strict=not reinit_head)
    return model


def _old_preact_message(name: str) -> str:
    return (f"weights do not fit {name}: they hold {_OLD_PREACT_BN[:-1]}, the extra BN-ReLU that "
            "earlier resnets pre-activation nets had in their first unit; the paper's net (this one) "
            "uses the stem's BN-ReLU there, and the extra one cannot be folded into conv1 exactly "
            "(a ReLU follows it), so these weights need retraining")


def _unwrap(obj: Any, where: str) -> dict[str, torch.Tensor]:
    if not isinstance(obj, Mapping):
        raise UserError(f"{where} holds a {type(obj).__name__}, not a state dict")
    state = _find_state(obj, where, _MAX_NESTING)
    if not state:
        raise UserError(f"{where} holds no state dict (keys: {_some([str(k) for k in obj])})")
    while prefix := next((p for p in _PREFIXES if all(k.startswith(p) for k in state)), None):
        state = {k[len(prefix):]: v for k, v in state.items()}
    out = StateDict(state)
    out.best_prec1 = "best_prec1" in obj or bool(getattr(obj, "best_prec1", False))
    out.source = getattr(obj, "source", "") or ("" if where == "the state dict" else where)
    return out


def _find_state(obj: Mapping[Any, Any], where: str, depth: int) -> dict[str, torch.Tensor]:
    """The state dict under a wrapper key (refusing two that differ), else ``obj``'s own tensors."""
    found: dict[str, dict[str, torch.Tensor]] = {}
    for key in _WRAPPER_KEYS if depth else ():
        inner = obj.get(key)
        if isinstance(inner, Mapping) and (state := _find_state(inner, where, depth - 1)):
            found[key] = state
    if found:
        first, *others = found.values()
        if any(not _same_tensors(first, other) for other in others):
            raise UserError(f"{where} holds different weights under {', '.join(found)}; pass the one you "
                            f"want, e.g. load_weights(model, torch.load(path, weights_only=True)[{next(iter(found))!r}])")
        return first
    return {k: v for k, v in obj.items() if isinstance(k, str) and isinstance(v, torch.Tensor)}


def _same_tensors(a: Mapping[str, torch.Tensor], b: Mapping[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(a[k].shape == b[k].shape and torch.equal(a[k], b[k]) for k in a)


def _fit_names(state: dict[str, torch.Tensor], own: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename an unambiguous ``linear.`` head to ``fc.``; zero counters for batch norms saved without them."""
    def has(keys: Iterable[str], prefix: str) -> bool:
        return any(k.startswith(prefix) for k in keys)

    state = dict(state)
    if has(state, "linear.") and not has(state, "fc.") and has(own, "fc.") and not has(own, "linear."):
        state = {("fc." + k[len("linear."):] if k.startswith("linear.") else k): v for k, v in state.items()}
    for key, value in own.items():
        base = key[: -len(_COUNTER)]
        if key.endswith("." + _COUNTER) and key not in state and base + "running_mean" in state:
            state[key] = torch.zeros_like(value, device="cpu")
    return state


def _unpickler_detail(message: str) -> str:
    """The one informative line of torch's weights-only refusal, e.g. the blocked ``GLOBAL posix.system``."""
    lines = [ln.strip() for ln in message.splitlines() if ln.strip()]
    detail = next((ln for ln in lines if "GLOBAL" in ln), None) or next(
        (ln for ln in lines if ln.startswith("Unsupported")), lines[0] if lines else "unpickling error")
    return detail[:160]


def _head_keys(model: nn.Module) -> set[str]:
    return {"fc.weight", "fc.bias"}


def _is_safetensors(path: Path) -> bool:
    with open(path, "rb") as fh:
        header = fh.read(9)
    return len(header) == 9 and header[8:9] == b"{"


def _existing(path: str | os.PathLike[str]) -> Path:
    p = Path(path)
    if not p.is_file():
        raise UserError(f"weights file not found: {p}")
    return p


def _short(value: Any, n: int = 80) -> str:
    """``repr(value)`` cut to ``n`` characters (a crafted file's values can be any length)."""
    text = value if isinstance(value, str) else repr(value)
    return text if len(text) <= n else text[:n] + "..."


def _first_line(exc: BaseException) -> str:
    lines = str(exc).splitlines()
    return (lines[0] if lines else type(exc).__name__)[:160]


def _some(items: list[str], n: int = 5) -> str:
    return ", ".join(items[:n]) + (f" (+{len(items) - n} more)" if len(items) > n else "")
