"""The paper's Figure 7 analysis: the standard deviation of every 3x3 layer's response.

A layer's *response* is the output of the batch norm that directly follows a 3x3 convolution: after BN,
before the ReLU and, in a residual block, before the shortcut is added (paper section 4.2). Its standard
deviation is taken over every value the layer produces for a batch of images (images x channels x
positions, population std), with the model in eval mode. Layers are found by forward hooks: a BN counts
when its input is the very tensor a 3x3 convolution just returned.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn


@dataclass
class LayerResponse:
    """One 3x3 layer: its 1-based position in forward order, its BN and conv names, and the response std."""

    index: int
    layer: str
    conv: str
    std: float


class _Recorder:
    """Forward hooks that accumulate sum and sum of squares of each 3x3 conv's BN output, in float64."""

    def __init__(self, model: nn.Module) -> None:
        self.last: tuple[str, torch.Tensor] | None = None
        self.stats: dict[str, list[float]] = {}  # bn name -> [count, sum, sum of squares]
        self.convs: dict[str, str] = {}  # bn name -> conv name, in forward order
        self.handles: list[torch.utils.hooks.RemovableHandle] = []
        for name, module in model.named_modules():
            if isinstance(module, nn.Conv2d) and tuple(module.kernel_size) == (3, 3):
                self.handles.append(module.register_forward_hook(self._conv_hook(name)))
            elif isinstance(module, nn.BatchNorm2d):
                self.handles.append(module.register_forward_hook(self._bn_hook(name)))

    def _conv_hook(self, name: str) -> Callable[..., None]:
        def hook(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
            self.last = (name, output)
        return hook

    def _bn_hook(self, name: str) -> Callable[..., None]:
        def hook(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
            if self.last is None or inputs[0] is not self.last[1]:
                return
            values = output.detach().double()
            entry = self.stats.setdefault(name, [0.0, 0.0, 0.0])
            entry[0] += values.numel()
            entry[1] += float(values.sum())
            entry[2] += float(values.square().sum())
            self.convs.setdefault(name, self.last[0])
            self.last = None
        return hook

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()


@torch.no_grad()
def response_stds(model: nn.Module, batches: Iterable[torch.Tensor | tuple[torch.Tensor, ...]]) -> list[LayerResponse]:
    """The std of each 3x3 layer's response (BN output) over all ``batches``, in forward order.

    ``batches`` yields normalised input tensors, or tuples whose first item is one (e.g. ``(x, y)``). The
    model is run in eval mode and left in the mode it was in.
    """
    was_training = model.training
    model.eval()
    recorder = _Recorder(model)
    device = next(model.parameters()).device
    try:
        for batch in batches:
            x = batch[0] if isinstance(batch, tuple | list) else batch
            model(x.to(device))
    finally:
        recorder.remove()
        model.train(was_training)
    out = []
    for i, (name, conv) in enumerate(recorder.convs.items(), start=1):
        count, total, squares = recorder.stats[name]
        mean = total / count
        var = max(0.0, squares / count - mean * mean)
        out.append(LayerResponse(index=i, layer=name, conv=conv, std=var**0.5))
    return out


def sorted_stds(responses: list[LayerResponse]) -> list[float]:
    """The stds in descending order (Figure 7, bottom)."""
    return sorted((r.std for r in responses), reverse=True)


def write_responses(results: dict[str, list[LayerResponse]], out_dir: str | Path) -> tuple[Path, Path]:
    """Write ``responses.json`` and ``responses.csv`` (model, index, layer, conv, std, rank by std)."""
    out_dir = Path(out_dir)
    json_path, csv_path = out_dir / "responses.json", out_dir / "responses.csv"
    payload = {
        "definition": "population std of the output of each BN that follows a 3x3 conv (after BN, before "
                      "the addition and ReLU), over all images, channels and positions; model in eval mode",
        "models": {name: {"layers": [asdict(r) for r in layers], "sorted_std": sorted_stds(layers)}
                   for name, layers in results.items()},
    }
    json_path.write_text(json.dumps(payload, indent=2) + "\n")
    with open(csv_path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["model", "index", "layer", "conv", "std", "rank"])
        for name, layers in results.items():
            ranks = {r.index: k for k, r in enumerate(sorted(layers, key=lambda r: -r.std), start=1)}
            for r in layers:
                writer.writerow([name, r.index, r.layer, r.conv, f"{r.std:.6g}", ranks[r.index]])
    return json_path, csv_path
