"""A model's layer table in the paper's own terms: output size, parameters and MACs per stage (or per block).

Rows are named as in the paper's Table 1. ImageNet nets: ``conv1`` (stem conv + BN + ReLU), ``pool`` (the 3x3
max pool), ``conv2_x`` .. ``conv5_x`` (``layer1`` .. ``layer4``), ``pool`` (global average pool) and ``fc``.
CIFAR nets (paper section 4.2) have no max pool and three stages, named on the same scheme ``conv2_x`` ..
``conv4_x`` (``layer1`` .. ``layer3``, output maps 32x32, 16x16, 8x8 for a 32x32 input). A pre-activation
net's final BN + ReLU belongs to its last stage, as in ``forward_stages``.

Output shapes come from forward hooks. MACs are counted, not looked up: one forward pass under
``torch.utils.flop_counter.FlopCounterMode``, whose per-module FLOPs (by fully-qualified module name) are
halved, since one multiply-add is two FLOPs. Only convolutions and matrix products count (batch norm, ReLU,
pooling and the residual additions are not multiply-adds), which is the convention of torchvision's published
figures and of the paper's "FLOPs". Counts are for the whole batch of ``input_size``.

A model built on the ``meta`` device (``with torch.device("meta"): create_model(...)``) is summarised without
allocating weights or computing anything, which makes even ResNet-152 at 224x224 instant.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from .errors import UserError
from .models import ResNetBase

DEPTHS = ("stages", "blocks")


@dataclass(frozen=True)
class SummaryRow:
    """One line of the table.

    ``kind`` is ``"stem"``, ``"pool"``, ``"stage"``, ``"block"`` or ``"head"``. ``output_shape`` is one sample's
    output, (C, H, W) or (C,). ``modules`` are the model's module names the row covers. Block rows also give
    ``block`` (e.g. ``"bottleneck"``, ``"preact basic"``) and ``shortcut``: ``"projection"`` (1x1 conv),
    ``"avgpool projection"`` (D variant), ``"zero-pad"`` (option A), ``"identity"``, or ``"none"`` (plain nets).
    """

    name: str
    kind: str
    output_shape: tuple[int, ...]
    params: int
    macs: int
    modules: tuple[str, ...]
    block: str | None = None
    shortcut: str | None = None

    @property
    def output_size(self) -> str:
        """The output as the paper writes it: ``56x56x256`` (H x W x C) for maps, ``2048`` for vectors."""
        if len(self.output_shape) == 3:
            c, h, w = self.output_shape
            return f"{h}x{w}x{c}"
        return "x".join(str(d) for d in self.output_shape)


@dataclass(frozen=True)
class ModelSummary:
    """The table of ``summary()``: rows in forward order, exact totals, and how it was made."""

    model: str
    variant: str | None
    input_size: tuple[int, ...]
    depth: str
    rows: list[SummaryRow] = field(default_factory=list)
    total_params: int = 0
    total_macs: int = 0

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready data (tuples become lists)."""
        return json.loads(json.dumps(asdict(self)))

    def to_json(self, indent: int | None = 2) -> str:
        """The summary as JSON; ``ModelSummary.from_dict(json.loads(s))`` rebuilds it."""
        return json.dumps(self.to_dict(), indent=indent)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelSummary:
        """Inverse of ``to_dict``."""
        rows = [
            SummaryRow(**{**r, "output_shape": tuple(r["output_shape"]), "modules": tuple(r["modules"])})
            for r in data["rows"]
        ]
        return cls(
            model=data["model"], variant=data["variant"], input_size=tuple(data["input_size"]),
            depth=data["depth"], rows=rows, total_params=data["total_params"], total_macs=data["total_macs"],
        )

    def __str__(self) -> str:
        header = ("layer", "output size", "params", "MACs", "block")
        body = []
        for r in self.rows:
            name = f"  {r.name}" if r.kind == "block" else r.name
            detail = f"{r.block}, {r.shortcut}" if r.kind == "block" else ""
            body.append((name, r.output_size, f"{r.params:,}", format_macs(r.macs), detail))
        if self.depth == "stages":
            header, body = header[:4], [line[:4] for line in body]
        widths = [max(len(line[i]) for line in [header, *body]) for i in range(len(header))]
        right = {2, 3}  # numbers are right-aligned

        def fmt(line: Sequence[str]) -> str:
            pairs = enumerate(zip(line, widths, strict=True))
            cells = [s.rjust(w) if i in right else s.ljust(w) for i, (s, w) in pairs]
            return "  ".join(cells).rstrip()

        title = self.model + (f" ({self.variant})" if self.variant else "")
        title += ", input " + "x".join(str(d) for d in self.input_size)
        rule = "-" * max(len(fmt(line)) for line in [header, *body])
        lines = [title, rule, fmt(header), rule, *(fmt(line) for line in body), rule]
        lines.append(f"Total params: {self.total_params:,}")
        lines.append(f"Total MACs:   {format_macs(self.total_macs)} ({self.total_macs:,} multiply-adds)")
        return "\n".join(lines)


def format_macs(macs: int) -> str:
    """``4.089G`` from 1e9 up, ``115.6M`` from 1e6 up, ``640`` below, ``-`` for none."""
    if macs == 0:
        return "-"
    if macs >= 10**9:
        return f"{macs / 1e9:.3f}G"
    if macs >= 10**6:
        return f"{macs / 1e6:.1f}M"
    return f"{macs:,}"


def _params(module: nn.Module | None) -> int:
    return 0 if module is None else sum(p.numel() for p in module.parameters())


def _paper_name(stage_index: int) -> str:
    return f"conv{stage_index + 2}_x"


def _block_kind(block: nn.Module) -> str:
    name = type(block).__name__  # BasicBlock, Bottleneck, PreActBasicBlock, PreActBottleneck
    kind = "bottleneck" if "Bottleneck" in name else "basic"
    return f"preact {kind}" if name.startswith("PreAct") else kind


def _shortcut_kind(block: nn.Module) -> str:
    if not getattr(block, "residual", True):
        return "none"
    down = getattr(block, "downsample", None)
    if down is None:
        return "identity"
    if isinstance(down, nn.Sequential):
        if any(isinstance(m, nn.AvgPool2d) for m in down):
            return "avgpool projection"
        return "projection"
    return "zero-pad"


def _input_shape(model: nn.Module, input_size: int | Sequence[int]) -> tuple[int, ...]:
    if isinstance(input_size, int):
        first_conv = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
        input_size = (1, first_conv.in_channels, input_size, input_size)
    shape = tuple(int(d) for d in input_size)
    if len(shape) != 4 or min(shape) < 1:
        raise UserError(f"input_size must be N x C x H x W with positive sizes, got {tuple(input_size)}")
    return shape


def summary(
    model: ResNetBase,
    input_size: int | Sequence[int] = (1, 3, 224, 224),
    depth: str = "stages",
) -> ModelSummary:
    """Run one forward pass of ``model`` on zeros of ``input_size`` and tabulate it.

    ``input_size`` is N x C x H x W, or an int for a 1 x C x size x size input. ``depth="stages"`` gives the
    paper's rows; ``"blocks"`` adds, after each stage, one row per residual block. The model is run in eval
    mode without gradients on its own device and dtype, and left in the mode it was in.
    """
    if depth not in DEPTHS:
        raise UserError(f"unknown depth '{depth}'; choose one of: {', '.join(DEPTHS)}")
    shape = _input_shape(model, input_size)
    stage_names: list[str] = list(model.stage_names)
    final_bn = model.final_bn

    # (row name, kind, module names covered, module whose output is the row's output)
    plan: list[tuple[str, str, list[str], str]] = []
    stem = [n for n in model.stem_names if n != "maxpool"]
    plan.append(("conv1", "stem", stem, stem[-1]))
    if "maxpool" in model.stem_names:
        plan.append(("pool", "pool", ["maxpool"], "maxpool"))
    for i, stage in enumerate(stage_names):
        covered = [stage] + (["final_bn"] if final_bn is not None and i == len(stage_names) - 1 else [])
        plan.append((_paper_name(i), "stage", covered, stage))
        if depth == "blocks":
            for j, _ in enumerate(getattr(model, stage)):
                plan.append((f"{_paper_name(i)} block{j + 1}", "block", [f"{stage}.{j}"], f"{stage}.{j}"))
    plan.append(("pool", "pool", ["avgpool"], "avgpool"))
    plan.append(("fc", "head", ["fc"], "fc"))

    named = dict(model.named_modules())
    shapes: dict[str, tuple[int, ...]] = {}

    def hook(name: str) -> Callable[[nn.Module, Any, torch.Tensor], None]:
        def record(_module: nn.Module, _inputs: Any, output: torch.Tensor) -> None:
            shapes[name] = tuple(output.shape[1:])
        return record

    handles = [named[out].register_forward_hook(hook(out)) for *_, out in plan]
    param = next(model.parameters(), None)
    x = torch.zeros(shape, device=param.device if param is not None else "cpu",
                    dtype=param.dtype if param is not None else torch.float32)
    counter = FlopCounterMode(display=False)
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad(), counter:
            model(x)
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()

    # FlopCounterMode names modules "<RootClass>.<qualified name>" and counts each op once per enclosing module.
    prefix = type(model).__name__ + "."
    flops = {k.removeprefix(prefix): sum(v.values()) for k, v in counter.get_flop_counts().items()}

    rows = []
    for name, kind, covered, out in plan:
        block = named[covered[0]] if kind == "block" else None
        rows.append(SummaryRow(
            name=name,
            kind=kind,
            output_shape=shapes[out][:1] if out == "avgpool" else shapes[out],  # pooled to a C-vector
            params=sum(_params(named[m]) for m in covered),
            macs=sum(flops.get(m, 0) for m in covered) // 2,
            modules=tuple(covered),
            block=_block_kind(block) if block is not None else None,
            shortcut=_shortcut_kind(block) if block is not None else None,
        ))
    return ModelSummary(
        model=model.card.name or type(model).__name__,
        variant=model.card.variant,
        input_size=shape,
        depth=depth,
        rows=rows,
        total_params=_params(model),
        total_macs=counter.get_total_flops() // 2,
    )
