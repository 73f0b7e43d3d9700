"""The model behind the server: loaded once, with its backend (the torch fast path, or onnxruntime on an ONNX
export made at startup), the embedding path, and Grad-CAM on the plain model under a lock."""

from __future__ import annotations

import hashlib
import os
import tempfile
import threading
from pathlib import Path

import torch

from ..errors import UserError
from ..infer.explain import Explanation, explain_image, overlay_png
from ..infer.fastpath import FastModel
from ..infer.loading import LoadedModel, load_for_inference
from .settings import ServeSettings


class ExplainCancelled(Exception):
    """A Grad-CAM stopped because its request gave up waiting (``--timeout-s``)."""


class Engine:
    """Logits and embeddings for preprocessed batches, and Grad-CAM PNGs for single images."""

    def __init__(self, settings: ServeSettings, loaded: LoadedModel | None = None) -> None:
        self.settings = settings
        self.loaded = loaded or load_for_inference(settings.weights, settings.model, variant=settings.variant)
        lm = self.loaded
        self.backend = settings.backend
        self.sha256 = file_sha256(lm.source)
        self.parameters = sum(p.numel() for p in lm.model.parameters())
        self.fast = FastModel(lm.model, settings.precision, input_size=lm.input_size, model_key=lm.name)
        self.precision = self.fast.precision
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        self._session = None
        if self.backend in ("onnx", "int8"):
            self._session = self._onnx_session()
            self.precision = "int8" if self.backend == "int8" else "fp32"
        self._explain_lock = threading.Lock()
        self._explain_fast: FastModel | None = None  # whose class and probability explain reports

    def _onnx_session(self) -> object:
        """An onnxruntime session on the model exported (and checked) into a temporary folder."""
        from ..infer.export import ExportCheckError, export, require_onnx
        from ..infer.quantize import onnx_session

        require_onnx()
        self._tmp = tempfile.TemporaryDirectory(prefix="resnets-serve-")
        name = "model.int8.onnx" if self.backend == "int8" else "model.onnx"
        try:
            result = export(self.loaded, "onnx", out=Path(self._tmp.name) / name, int8=self.backend == "int8")
        except ExportCheckError as exc:  # the export's own check refused it: a one-line error, not a traceback
            self.close()
            raise UserError(f"--backend {self.backend}: {exc}") from None
        return onnx_session(result.path)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """Float32 logits of a normalised N x 3 x S x S batch."""
        if self._session is not None:
            out = self._session.run(None, {"images": x.float().contiguous().numpy()})[0]  # type: ignore[attr-defined]
            return torch.from_numpy(out).float()
        return self.fast(x)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """L2-normalised pooled features of a normalised batch (always the torch fast path)."""
        return torch.nn.functional.normalize(self.fast.embed(x), dim=1)

    def explain(self, image: torch.Tensor, class_index: int | None, cancel: threading.Event | None = None
                ) -> tuple[Explanation, bytes]:
        """Grad-CAM of a decoded (and resized) image on the plain (unfolded) model, one at a time, and its
        overlay PNG. Setting ``cancel`` stops it at the next layer it enters: ExplainCancelled."""
        cancel = cancel or threading.Event()

        def check(*_: object) -> None:
            if cancel.is_set():
                raise ExplainCancelled

        with self._explain_lock:
            check()
            if self._explain_fast is None:  # predict's path and number format; ONNX backends predict in fp32
                lm = self.loaded
                self._explain_fast = self.fast if self._session is None else FastModel(
                    lm.model, "fp32", input_size=lm.input_size, model_key=lm.name)
            hooks = [m.register_forward_pre_hook(check) for m in self.loaded.model.modules()]
            try:
                exp = explain_image(self.loaded, image, class_index, fast=self._explain_fast)
            finally:
                for hook in hooks:
                    hook.remove()
        check()
        return exp, overlay_png(exp)

    def warm_up(self) -> None:
        """Run one batch of zeros through each path, so the first request pays no start-up cost."""
        size = self.loaded.input_size
        x = torch.zeros(1, 3, size, size)
        self.logits(x)
        self.embed(x)

    def close(self) -> None:
        """Remove the temporary export, if any."""
        self._session = None
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def describe(self) -> dict[str, object]:
        """The model's description for ``GET /v1/model``."""
        lm = self.loaded
        return {"name": lm.name, "variant": getattr(lm.model.card, "variant", None), "classes": lm.classes,
                "num_classes": len(lm.classes), "input_size": lm.input_size,
                "normalization": {"mean": list(lm.mean), "std": list(lm.std)}, "parameters": self.parameters,
                "weights_sha256": self.sha256, "weights_file": os.path.basename(lm.source),
                "backend": self.backend, "precision": self.precision}


def file_sha256(path: str | os.PathLike[str]) -> str:
    """The SHA-256 of the file at ``path``, in hex."""
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
    except OSError as exc:
        raise UserError(f"cannot read weights {path}: {exc}") from None
    return digest.hexdigest()
