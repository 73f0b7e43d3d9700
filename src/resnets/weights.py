"""Weights in and out: safetensors with metadata, foreign checkpoints, and loading that never runs code.

A file written by ``save_weights`` rebuilds its model alone (``load_model``). ``load_weights`` accepts
resnets, torchvision and timm weights, training checkpoints, plain state dicts and the forms CIFAR
repositories publish (``linear.`` head, no ``num_batches_tracked``); pickled files are read with
``torch.load(weights_only=True)``, which refuses anything but tensors and plain containers.
"""

from __future__ import annotations

import json
import os
import pickle
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import nn

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
    """The resnets metadata of a safetensors file written by ``save_weights``."""
    path = _existing(path)
    try:
        with safe_open(str(path), framework="pt") as fh:
            raw = (fh.metadata() or {}).get(METADATA_KEY)
    except (SafetensorError, OSError) as exc:
        raise UserError(f"{path} is not a readable safetensors file ({exc})") from None
    if raw is None:
        raise UserError(f"{path} has no resnets metadata; build the model with create_model(...) "
                        "and load it with load_weights(model, path)")
    return json.loads(raw)


def load_model(path: str | os.PathLike[str], *, device: str | torch.device = "cpu") -> ResNetBase:
    """Rebuild a model from a ``save_weights`` file alone, its card's ``classes`` and ``normalization`` set."""
    meta = read_metadata(path)
    model = create_model(**meta["spec"])
    load_weights(model, path)
    model.card.classes = meta.get("classes")
    model.card.normalization = meta.get("normalization")
    return model.to(device).eval()


def read_state_dict(source: str | os.PathLike[str] | Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """Tensors from a safetensors file, a ``.pth``/checkpoint (read without unpickling code) or a mapping.

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
            obj = load_file(str(path))
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


def load_weights(
    model: nn.Module,
    source: str | os.PathLike[str] | Mapping[str, Any],
    *,
    reinit_head: bool = False,
) -> nn.Module:
    """Load weights into ``model`` exactly; a mismatch names the keys and shapes that differ.

    Checkpoints saved before PyTorch 0.4.1 (no ``num_batches_tracked``) load with those counters at 0;
    a ``linear.`` head (popular CIFAR repositories) loads as ``fc.`` when the weights have no ``fc.``.
    A different number of classes is an error unless ``reinit_head=True``, which keeps the model's fresh
    head (fine-tuning). Earlier resnets pre-activation weights (with ``layer1.0.bn1``) are refused with that
    reason: that net had an extra BN-ReLU, so no weights of the current one compute the same function.
    """
    own = model.state_dict()
    state = _fit_names(read_state_dict(source), own)
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
        raise UserError(f"weights do not fit {name}: they hold {_OLD_PREACT_BN[:-1]}, the extra BN-ReLU that "
                        "earlier resnets pre-activation nets had in their first unit; the paper's net (this one) "
                        "uses the stem's BN-ReLU there, and the extra one cannot be folded into conv1 exactly "
                        "(a ReLU follows it), so these weights need retraining")
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)} key(s): {_some(missing)}")
        if unexpected:
            parts.append(f"unexpected {len(unexpected)} key(s): {_some(unexpected)}")
        if shapes:
            parts.append("shape mismatch: " + _some(
                [f"{k} {tuple(state[k].shape)} vs model {tuple(own[k].shape)}" for k in shapes]))
        raise UserError(f"weights do not fit {name}: " + "; ".join(parts))
    model.load_state_dict(state, strict=not reinit_head)
    return model


def _unwrap(obj: Any, where: str) -> dict[str, torch.Tensor]:
    if not isinstance(obj, Mapping):
        raise UserError(f"{where} holds a {type(obj).__name__}, not a state dict")
    state = _find_state(obj, where, _MAX_NESTING)
    if not state:
        raise UserError(f"{where} holds no state dict (keys: {_some([str(k) for k in obj])})")
    while prefix := next((p for p in _PREFIXES if all(k.startswith(p) for k in state)), None):
        state = {k[len(prefix):]: v for k, v in state.items()}
    return state


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


def _some(items: list[str], n: int = 5) -> str:
    return ", ".join(items[:n]) + (f" (+{len(items) - n} more)" if len(items) > n else "")
