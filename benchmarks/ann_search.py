"""Approximate nearest-neighbour search vs exact, for ``resnets search``: recall@10 and queries/s.

Gallery: N unit vectors of dimension D, clustered like image embeddings (a mixture of Gaussian clusters;
``--uniform`` for structureless random vectors, the hardest case). Queries: held-out vectors of the same
distribution. Exact search is a float32 matrix product + top-k; each library that imports is measured
(faiss-cpu HNSW, hnswlib, usearch) on inner product over unit vectors (= cosine).

    python benchmarks/ann_search.py --n 100000 --dim 512 --queries 1000
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

import numpy as np


def make_vectors(n: int, dim: int, clusters: int, uniform: bool, rng: np.random.Generator) -> np.ndarray:
    """``n`` unit vectors: clustered (centres + noise) or uniform on the sphere."""
    if uniform:
        x = rng.standard_normal((n, dim), dtype=np.float32)
    else:
        centres = rng.standard_normal((clusters, dim), dtype=np.float32)
        x = centres[rng.integers(0, clusters, n)] + 0.7 * rng.standard_normal((n, dim), dtype=np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x


def exact(gallery: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    """Indices of the ``k`` most similar gallery vectors per query, best first (blocked matrix product)."""
    out = np.empty((len(queries), k), dtype=np.int64)
    for s in range(0, len(queries), 256):
        scores = queries[s:s + 256] @ gallery.T
        part = np.argpartition(-scores, k, axis=1)[:, :k]
        order = np.argsort(-np.take_along_axis(scores, part, 1), axis=1)
        out[s:s + 256] = np.take_along_axis(part, order, 1)
    return out


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    """Mean fraction of the true top-k found."""
    return float(np.mean([len(set(f) & set(t)) / len(t) for f, t in zip(found, truth, strict=True)]))


def build_faiss(gallery, m, ef_construction, threads):
    """A faiss HNSW index over ``gallery``: ``(build seconds, search(queries, k, ef) -> ids)``."""
    import faiss

    faiss.omp_set_num_threads(threads)
    index = faiss.IndexHNSWFlat(gallery.shape[1], m, faiss.METRIC_INNER_PRODUCT)
    index.hnsw.efConstruction = ef_construction
    t = time.perf_counter()
    index.add(gallery)
    build = time.perf_counter() - t

    def search(queries, k, ef):
        index.hnsw.efSearch = ef
        return index.search(queries, k)[1]

    return build, search


def build_hnswlib(gallery, m, ef_construction, threads):
    """An hnswlib index over ``gallery``: ``(build seconds, search(queries, k, ef) -> ids)``."""
    import hnswlib

    index = hnswlib.Index(space="ip", dim=gallery.shape[1])
    t = time.perf_counter()
    index.init_index(max_elements=len(gallery), M=m, ef_construction=ef_construction)
    index.set_num_threads(threads)
    index.add_items(gallery)
    build = time.perf_counter() - t

    def search(queries, k, ef):
        index.set_ef(ef)
        return index.knn_query(queries, k=k)[0]

    return build, search


def build_usearch(gallery, m, ef_construction, threads):
    """A usearch index over ``gallery``: ``(build seconds, search(queries, k, ef) -> ids)``."""
    from usearch.index import Index

    index = Index(ndim=gallery.shape[1], metric="ip", dtype="f32", connectivity=m, expansion_add=ef_construction)
    t = time.perf_counter()
    index.add(np.arange(len(gallery)), gallery, threads=threads)
    build = time.perf_counter() - t

    def search(queries, k, ef):
        index.expansion_search = ef
        return np.asarray(index.search(queries, k, threads=threads).keys)

    return build, search


LIBRARIES = {"faiss": build_faiss, "hnswlib": build_hnswlib, "usearch": build_usearch}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=100_000, help="gallery size")
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--clusters", type=int, default=1000)
    ap.add_argument("--uniform", action="store_true", help="uniform random vectors instead of clustered")
    ap.add_argument("--m", type=int, default=32, help="HNSW graph degree")
    ap.add_argument("--ef-construction", type=int, default=100)
    ap.add_argument("--ef-search", type=int, nargs="+", default=[64, 128])
    ap.add_argument("--libraries", nargs="+", default=list(LIBRARIES))
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="threads for every library")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    rng = np.random.default_rng(0)
    data = make_vectors(args.n + args.queries, args.dim, args.clusters, args.uniform, rng)
    gallery, queries = np.ascontiguousarray(data[:args.n]), np.ascontiguousarray(data[args.n:])
    kind = "uniform" if args.uniform else f"{args.clusters} clusters"
    if not args.json:
        print(f"gallery {args.n} x {args.dim} ({kind}), {args.queries} queries, recall@{args.k}")
        print(f"{'method':<40} {'build s':>8} {'queries/s':>10} {'recall':>7}", flush=True)
    rows: list[dict[str, object]] = []

    def emit(row: dict[str, object]) -> None:
        rows.append(row)
        if args.json:
            return
        if "error" in row:
            print(f"{row['method']:<40} {row['error']}", flush=True)
        else:
            print(f"{row['method']:<40} {row['build_s']:>8.1f} {row['qps']:>10.0f} {row['recall']:>7.3f}", flush=True)

    t = time.perf_counter()
    truth = exact(gallery, queries, args.k)
    emit({"method": "exact (numpy matmul)", "build_s": 0.0, "qps": args.queries / (time.perf_counter() - t),
          "recall": 1.0})
    for lib in args.libraries:
        try:
            build, search = LIBRARIES[lib](gallery, args.m, args.ef_construction, args.threads)
        except ImportError as exc:
            emit({"method": lib, "error": f"not installed ({exc})"})
            continue
        for ef in args.ef_search:
            t = time.perf_counter()
            ids = search(queries, args.k, ef)
            emit({"method": f"{lib} HNSW M={args.m} efC={args.ef_construction} ef={ef}",
                  "build_s": build, "qps": args.queries / (time.perf_counter() - t), "recall": recall(ids, truth)})
    if args.json:
        print(json.dumps({"args": vars(args), "machine": platform.processor(), "rows": rows}, indent=1))

if __name__ == "__main__":
    main()
