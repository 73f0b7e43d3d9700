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


def run_faiss(gallery, queries, k, m, ef_construction, ef_search):
    import faiss

    index = faiss.IndexHNSWFlat(gallery.shape[1], m, faiss.METRIC_INNER_PRODUCT)
    index.hnsw.efConstruction = ef_construction
    t = time.perf_counter()
    index.add(gallery)
    build = time.perf_counter() - t
    index.hnsw.efSearch = ef_search
    t = time.perf_counter()
    _, ids = index.search(queries, k)
    return ids, build, time.perf_counter() - t


def run_hnswlib(gallery, queries, k, m, ef_construction, ef_search):
    import hnswlib

    index = hnswlib.Index(space="ip", dim=gallery.shape[1])
    t = time.perf_counter()
    index.init_index(max_elements=len(gallery), M=m, ef_construction=ef_construction)
    index.add_items(gallery)
    build = time.perf_counter() - t
    index.set_ef(ef_search)
    t = time.perf_counter()
    ids, _ = index.knn_query(queries, k=k)
    return ids, build, time.perf_counter() - t


def run_usearch(gallery, queries, k, m, ef_construction, ef_search):
    from usearch.index import Index

    index = Index(ndim=gallery.shape[1], metric="ip", dtype="f32", connectivity=m,
                  expansion_add=ef_construction, expansion_search=ef_search)
    t = time.perf_counter()
    index.add(np.arange(len(gallery)), gallery)
    build = time.perf_counter() - t
    t = time.perf_counter()
    matches = index.search(queries, k)
    return np.asarray(matches.keys), build, time.perf_counter() - t


LIBRARIES = {"faiss": run_faiss, "hnswlib": run_hnswlib, "usearch": run_usearch}


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
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    rng = np.random.default_rng(0)
    data = make_vectors(args.n + args.queries, args.dim, args.clusters, args.uniform, rng)
    gallery, queries = np.ascontiguousarray(data[:args.n]), np.ascontiguousarray(data[args.n:])
    t = time.perf_counter()
    truth = exact(gallery, queries, args.k)
    exact_s = time.perf_counter() - t
    rows = [{"method": "exact (numpy matmul)", "build_s": 0.0, "qps": args.queries / exact_s, "recall": 1.0}]
    for lib in args.libraries:
        for ef in args.ef_search:
            try:
                ids, build, search_s = LIBRARIES[lib](gallery, queries, args.k, args.m, args.ef_construction, ef)
            except ImportError as exc:
                rows.append({"method": lib, "error": f"not installed ({exc})"})
                break
            rows.append({"method": f"{lib} HNSW M={args.m} efC={args.ef_construction} ef={ef}",
                         "build_s": build, "qps": args.queries / search_s, "recall": recall(ids, truth)})
    if args.json:
        print(json.dumps({"args": vars(args), "machine": platform.processor(), "rows": rows}, indent=1))
        return
    kind = "uniform" if args.uniform else f"{args.clusters} clusters"
    print(f"gallery {args.n} x {args.dim} ({kind}), {args.queries} queries, recall@{args.k}")
    print(f"{'method':<40} {'build s':>8} {'queries/s':>10} {'recall':>7}")
    for r in rows:
        if "error" in r:
            print(f"{r['method']:<40} {r['error']}")
        else:
            print(f"{r['method']:<40} {r['build_s']:>8.1f} {r['qps']:>10.0f} {r['recall']:>7.3f}")


if __name__ == "__main__":
    main()
