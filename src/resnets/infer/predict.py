"""Top-k class predictions for image files, batched, skipping (and reporting) files that cannot be read."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from ..errors import UserError
from .fastpath import FastModel
from .loading import LoadedModel, expand_paths, load_for_inference, read_batches_reporting, report_failure


@dataclass
class Prediction:
    """One image's top-k: ``labels[i]`` is ``(class name, class index, probability)``, most likely first."""

    path: str
    labels: list[tuple[str, int, float]]


@dataclass
class PredictResult:
    """Predictions for every readable image, and ``(path, message)`` for each input that failed."""

    predictions: list[Prediction] = field(default_factory=list)
    failures: list[tuple[str, str]] = field(default_factory=list)
    precision: str = "fp32"


def predict(
    weights: str | os.PathLike[str] | LoadedModel,
    paths: Sequence[str | os.PathLike[str]],
    *,
    model_name: str | None = None,
    topk: int = 5,
    batch_size: int = 32,
    precision: str = "auto",
    on_failure: object = None,
    progress: bool = True,
) -> PredictResult:
    """Predict the top ``topk`` classes of the images at ``paths`` (files, folders, globs).

    ``precision``: ``"auto"`` (bf16 where the probe timed it faster on this CPU, else fp32), ``"bf16"`` or ``"fp32"``.
    ``on_failure(path, message)`` is called for each unreadable input as it happens. The images done are shown
    on stderr (see :mod:`resnets.progress`) unless ``progress=False``.
    """
    loaded = load_for_inference(weights, model_name)
    if topk < 1:
        raise UserError(f"--topk must be at least 1, not {topk}")
    k = min(topk, len(loaded.classes))
    files, problems = expand_paths(paths)
    result = PredictResult(precision="fp32")
    for item in problems:
        report_failure(result.failures, item, on_failure)
    if not files:
        return result
    fast = FastModel(loaded.model, precision, input_size=loaded.input_size, model_key=loaded.name)
    result.precision = fast.precision
    for good, inputs in read_batches_reporting(files, loaded, batch_size, result.failures, on_failure,
                                               what="predicting", progress=progress):
        probs = torch.softmax(fast(inputs), dim=1)
        values, indices = probs.topk(k, dim=1)
        for path, vals, idxs in zip(good, values.tolist(), indices.tolist(), strict=True):
            result.predictions.append(
                Prediction(path, [(loaded.classes[i], i, v) for v, i in zip(vals, idxs, strict=True)]))
    return result

