"""Use a trained ResNet: predict, embed and search, explain (Grad-CAM), export, and infer fast on a CPU.

* :func:`predict` - top-k labels for image files, folders and globs.
* :func:`embed`, :func:`search` - L2-normalised pooled features as an index; cosine nearest neighbours.
* :func:`explain` - Grad-CAM on the last stage, as a heat-map PNG.
* :func:`export` - ONNX (dynamic batch; int8 via :mod:`.quantize`) or TorchScript, checked against PyTorch.
* :class:`FastModel`, :func:`fold_batchnorm` - the fast CPU path (BN folded, channels_last, bf16).
* :func:`bench_infer` - speed, latency, memory and fidelity against torchvision and onnxruntime.
"""

from ..hardware import cpu_has_native_bf16
from .bench import bench_infer
from .embed import Embeddings, SearchResult, embed, load_index, nearest, save_index, search
from .explain import Explanation, explain, grad_cam
from .export import ExportCheckError, ExportResult, export
from .fastpath import FastModel, fold_batchnorm, fuse_conv_bn
from .loading import LoadedModel, expand_paths, imagenet_classes, load_for_inference, preprocess
from .predict import Prediction, PredictResult, predict

__all__ = [
    "Embeddings", "ExportCheckError", "ExportResult", "Explanation", "FastModel", "LoadedModel", "Prediction",
    "PredictResult", "SearchResult", "bench_infer", "cpu_has_native_bf16", "embed", "expand_paths", "explain",
    "export", "fold_batchnorm", "fuse_conv_bn", "grad_cam", "imagenet_classes", "load_for_inference",
    "load_index", "nearest", "predict", "preprocess", "save_index", "search",
]
