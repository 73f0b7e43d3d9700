"""Image embeddings (L2-normalised pooled features) written as an index, and similarity search over it.

An index is a safetensors file: tensor ``embeddings`` (N x D float32, unit rows) and metadata holding the
image paths, the weights file and the precision used, so that ``search`` embeds its queries the same way.
A ``.npz`` index (no pickles: paths as a unicode array) is also read and written.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..errors import UserError
from .fastpath import FastModel
from .loading import LoadedModel, expand_paths, load_for_inference, read_batches_reporting, report_failure

INDEX_FORMAT = "resnets-embeddings-1"
# When an installed approximate-nearest-neighbour library (faiss HNSW) replaces exact search: galleries of at
# least ANN_THRESHOLD vectors searched with at least ANN_MIN_QUERIES queries at once. The index is built per
# call, and benchmarks/ann_search.py (100k x 512) measured ~100 s to build it against 230 exact vs ~1800 HNSW
# queries/s: building pays off only from some 30k queries (docs/results.md, "Inference on CPU").
ANN_THRESHOLD = 50_000
ANN_MIN_QUERIES = 20_000


@dataclass
class Embeddings:
    """Unit-length feature vectors, one row per readable image, with the failures."""

    paths: list[str]
    vectors: np.ndarray  # N x D float32
    failures: list[tuple[str, str]] = field(default_factory=list)
    meta: dict[str, object] = field(default_factory=dict)


@dataclass
class SearchHit:
    """A gallery image and its cosine similarity to the query."""

    path: str
    score: float


@dataclass
class SearchResult:
    """The gallery's most similar images to one query, most similar first."""

    query: str
    hits: list[SearchHit]


def embed(
    weights: str | os.PathLike[str] | LoadedModel,
    paths: Sequence[str | os.PathLike[str]],
    *,
    out: str | os.PathLike[str] | None = None,
    model_name: str | None = None,
    batch_size: int = 32,
    precision: str = "auto",
    on_failure: object = None,
    progress: bool = True,
) -> Embeddings:
    """Embed the images at ``paths`` (files, folders, globs): ``forward_head(forward_features(x),
    pre_logits=True)``, L2-normalised. With ``out`` the index is written there atomically. The images done
    are shown on stderr (see :mod:`resnets.progress`) unless ``progress=False``."""
    loaded = load_for_inference(weights, model_name)
    files, problems = expand_paths(paths)
    failures: list[tuple[str, str]] = []
    for item in problems:
        report_failure(failures, item, on_failure)
    fast = FastModel(loaded.model, precision, input_size=loaded.input_size, model_key=loaded.name)
    good_paths: list[str] = []
    chunks: list[np.ndarray] = []
    for good, inputs in read_batches_reporting(files, loaded, batch_size, failures, on_failure,
                                               what="embedding", progress=progress):
        feats = torch.nn.functional.normalize(fast.embed(inputs), dim=1)
        chunks.append(feats.numpy().astype(np.float32))
        good_paths += [os.path.abspath(p) for p in good]
    width = int(loaded.model.num_features)
    vectors = np.concatenate(chunks) if chunks else np.zeros((0, width), np.float32)
    meta = {"format": INDEX_FORMAT, "weights": loaded.source, "model": loaded.name,
            "precision": fast.precision, "dim": width}
    result = Embeddings(good_paths, vectors, failures, meta)
    if out is not None:
        if not good_paths:
            raise UserError("no image could be embedded; nothing written")
        save_index(result, out)
    return result



def save_index(emb: Embeddings, path: str | os.PathLike[str]) -> Path:
    """Write ``emb`` to ``path`` (``.safetensors`` or ``.npz``) atomically: a temporary file, then rename."""
    from safetensors.numpy import save_file

    from ..outputs import atomic_write

    path = Path(path)
    meta = {**emb.meta, "paths": emb.paths}
    vectors = np.ascontiguousarray(emb.vectors, dtype=np.float32)
    if path.suffix == ".npz":
        def write(tmp: str) -> None:
            with open(tmp, "wb") as fh:
                np.savez(fh, embeddings=vectors, paths=np.array(emb.paths, dtype=str),
                         meta=np.array(json.dumps(emb.meta)))
    else:
        def write(tmp: str) -> None:
            save_file({"embeddings": vectors}, tmp, metadata={"resnets_index": json.dumps(meta)})
    return atomic_write(path, write)


def load_index(path: str | os.PathLike[str]) -> Embeddings:
    """Read an index written by ``save_index`` (or ``resnets embed``)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"index {path} not found; make one with: resnets embed --weights W IMAGES --out {path}")
    import zipfile

    from safetensors import SafetensorError

    try:
        if path.suffix == ".npz":
            with np.load(path, allow_pickle=False) as z:
                vectors, paths = z["embeddings"], [str(p) for p in z["paths"]]
                meta = json.loads(str(z["meta"]))
        else:
            from safetensors import safe_open

            with safe_open(str(path), framework="numpy") as fh:
                raw = (fh.metadata() or {}).get("resnets_index")
                if raw is None:
                    raise UserError(f"{path} is not a resnets embedding index")
                vectors = fh.get_tensor("embeddings")
            meta = json.loads(raw)
            paths = meta.pop("paths")
    except UserError:
        raise
    except (OSError, ValueError, KeyError, SafetensorError, zipfile.BadZipFile) as exc:
        raise UserError(f"{path} is not a readable embedding index ({exc}); make one with: resnets embed "
                        f"--weights W IMAGES --out INDEX") from None
    if meta.get("format") != INDEX_FORMAT or len(paths) != len(vectors):
        raise UserError(f"{path} is not a resnets embedding index of format {INDEX_FORMAT}")
    return Embeddings(paths, np.ascontiguousarray(vectors, dtype=np.float32), [], meta)


def ann_library() -> str | None:
    """The installed approximate-nearest-neighbour library used for large galleries, or None."""
    try:
        import faiss  # noqa: F401
    except ImportError:
        return None
    return "faiss"


def nearest(gallery: np.ndarray, queries: np.ndarray, k: int, *, method: str = "auto"
            ) -> tuple[np.ndarray, np.ndarray]:
    """``(scores, indices)``, each Q x k, of the ``k`` gallery rows with the largest inner product per query,
    best first. ``method``: ``"exact"`` (matrix product), ``"ann"`` (faiss HNSW) or ``"auto"`` (ANN from
    ``ANN_THRESHOLD`` rows and ``ANN_MIN_QUERIES`` queries when faiss is installed)."""
    k = min(k, len(gallery))
    if method not in ("auto", "exact", "ann"):
        raise UserError(f"unknown search method {method!r}; use auto, exact or ann")
    if method == "auto":
        big = len(gallery) >= ANN_THRESHOLD and len(queries) >= ANN_MIN_QUERIES
        method = "ann" if big and ann_library() else "exact"
    if method == "ann":
        if ann_library() is None:
            raise UserError("approximate search needs faiss: pip install 'resnets[ann]'")
        import faiss

        index = faiss.IndexHNSWFlat(gallery.shape[1], 32, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = 100
        index.add(np.ascontiguousarray(gallery, dtype=np.float32))
        index.hnsw.efSearch = max(128, k)
        scores, ids = index.search(np.ascontiguousarray(queries, dtype=np.float32), k)
        return scores, ids
    g = torch.from_numpy(np.ascontiguousarray(gallery, dtype=np.float32))
    q = torch.from_numpy(np.ascontiguousarray(queries, dtype=np.float32))
    scores, ids = (q @ g.T).topk(k, dim=1)
    return scores.numpy(), ids.numpy()


def search(
    index: str | os.PathLike[str] | Embeddings,
    queries: Sequence[str | os.PathLike[str]],
    *,
    topk: int = 5,
    weights: str | os.PathLike[str] | LoadedModel | None = None,
    model_name: str | None = None,
    method: str = "auto",
    on_failure: object = None,
) -> list[SearchResult]:
    """The ``topk`` gallery images most similar (cosine) to each query image, embedded with the index's
    weights and precision (or ``weights``)."""
    gallery = index if isinstance(index, Embeddings) else load_index(index)
    if topk < 1:
        raise UserError(f"--topk must be at least 1, not {topk}")
    if len(gallery.paths) == 0:
        raise UserError("the index is empty")
    source = weights if weights is not None else gallery.meta.get("weights")
    if source is None or (isinstance(source, str) and not Path(source).is_file()):
        raise UserError(f"the index's weights {source} are not there; pass --weights")
    precision = str(gallery.meta.get("precision", "auto"))
    q = embed(source, queries, model_name=model_name or _index_model(gallery, source),
              precision=precision, on_failure=on_failure)
    if q.vectors.shape[1:] != gallery.vectors.shape[1:]:
        raise UserError(f"the weights give {q.vectors.shape[1]}-wide features but the index holds "
                        f"{gallery.vectors.shape[1]}-wide ones")
    if len(q.paths) == 0:
        return []
    scores, ids = nearest(gallery.vectors, q.vectors, topk, method=method)
    return [SearchResult(path, [SearchHit(gallery.paths[i], float(s)) for s, i in zip(srow, irow, strict=True)
                                if i >= 0])
            for path, srow, irow in zip(q.paths, scores.tolist(), ids.tolist(), strict=True)]


def _index_model(gallery: Embeddings, source: object) -> str | None:
    """The index's model name (needed to rebuild a foreign ``.pth``), unless a loaded model is given."""
    name = gallery.meta.get("model")
    return None if isinstance(source, LoadedModel) or not name else str(name)
