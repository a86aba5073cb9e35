"""Nearest-item search: the interface, the FAISS index and an exact brute-force twin.

Items are addressed by a stable int64 row id (assigned by the catalogue store). Scores are inner
products, so callers L2-normalise vectors when they want cosine similarity. `search` takes, per
query, a set of ids to exclude (the user's history) and over-fetches just enough to return `k`
results after excluding them.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence

import faiss
import numpy as np

# Items fetched beyond k in a query's first search, for its history to take (most users' own top
# items hold only a few they already clicked).
FIRST_MARGIN = 32

# From this many queries in one call, FAISS's exact search computes the scores with one matrix
# product (BLAS) instead of query by query. faiss-cpu 1.15 ships with 128,000, so the worker's
# batches never took the BLAS path. Measured on this machine (one thread, 64 dimensions, k = 42):
# 12,101 items, 64 queries 2.2 ms with BLAS against 6.7 ms without, 256 queries 7.6 against
# 28.6 ms; 4 queries 0.38 against 0.41 ms; one query 0.32 against 0.11 ms. A process-wide FAISS
# setting, set where the index is defined.
BLAS_FROM_QUERIES = 8
faiss.cvar.distance_compute_blas_threshold = BLAS_FROM_QUERIES


class ItemIndex(ABC):
    """What the worker needs from an item index."""

    dim: int

    @abstractmethod
    def upsert(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        """Insert or replace items. ids: (N,) int64, vectors: (N, D) float32."""

    @abstractmethod
    def remove(self, ids: np.ndarray) -> int:
        """Remove items; returns how many were present."""

    @abstractmethod
    def _search_raw(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-k without exclusions: scores (B, k) float32, ids (B, k) int64 (-1 = none)."""

    @abstractmethod
    def __len__(self) -> int: ...

    @abstractmethod
    def empty_like(self) -> ItemIndex:
        """A new, empty index of the same kind and settings (the second index of a model swap)."""

    def search(
        self, queries: np.ndarray, k: int, exclude: Sequence[set[int]] | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-k per query, never returning an excluded id.

        queries: (B, D) float32. Returns scores (B, k) and ids (B, k); rows are padded with
        id -1 and score -inf when fewer than k items remain.

        A query is first searched for k + FIRST_MARGIN items, and again, for four times as many
        each round, only while its history took so many of them that fewer than k remain; at
        k + its history's size it needs no more. The cost of a flat or IVF search grows with the
        number fetched, and fetching k + the longest history in the batch for every query made a
        batch with one long history cost as if every history were long.
        """
        assert queries.ndim == 2 and queries.shape[1] == self.dim, f"queries must be (B, {self.dim})"
        b = queries.shape[0]
        exclude = exclude if exclude is not None else [set() for _ in range(b)]
        assert len(exclude) == b, "one exclusion set per query"
        out_scores = np.full((b, k), -np.inf, dtype=np.float32)
        out_ids = np.full((b, k), -1, dtype=np.int64)
        n = len(self)
        if n == 0 or b == 0:
            return out_scores, out_ids
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        enough = np.array([min(n, k + len(e)) for e in exclude])  # (B,) a fetch that cannot fall short
        rows = np.arange(b)
        fetch = k + FIRST_MARGIN
        while rows.size:
            take = min(fetch, int(enough[rows].max()))
            scores, ids = self._search_raw(queries[rows], take)  # (R, take) each
            short = []
            for j, row in enumerate(rows.tolist()):
                got = fill_excluding(out_scores[row], out_ids[row], scores[j], ids[j], exclude[row])
                if got < k and take < enough[row]:
                    short.append(row)
            rows = np.array(short, dtype=np.int64)
            fetch = take * 4
        return out_scores, out_ids


def fill_excluding(
    out_scores: np.ndarray, out_ids: np.ndarray, scores: np.ndarray, ids: np.ndarray, excl: set[int]
) -> int:
    """Write the best results not in `excl` into one output row, best first; returns how many."""
    k = len(out_ids)
    col = 0
    for s, i in zip(scores, ids, strict=True):
        if i < 0 or int(i) in excl:
            continue
        out_scores[col] = s
        out_ids[col] = i
        col += 1
        if col == k:
            break
    return col


class ExactItemIndex(ItemIndex):
    """Brute-force numpy twin: the reference that FAISS results are checked against."""

    def __init__(self, dim: int) -> None:
        self.dim = dim
        self._rows: dict[int, np.ndarray] = {}

    def empty_like(self) -> ExactItemIndex:
        return ExactItemIndex(self.dim)

    def upsert(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        assert vectors.shape == (len(ids), self.dim), f"vectors must be ({len(ids)}, {self.dim})"
        for i, v in zip(ids, vectors, strict=True):
            self._rows[int(i)] = np.asarray(v, dtype=np.float32).copy()

    def remove(self, ids: np.ndarray) -> int:
        return sum(self._rows.pop(int(i), None) is not None for i in ids)

    def _search_raw(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        keys = np.fromiter(self._rows.keys(), dtype=np.int64, count=len(self._rows))
        mat = np.stack([self._rows[int(i)] for i in keys])
        scores = queries @ mat.T  # (B, N)
        # Ties broken by id, as FAISS's flat index does.
        order = np.lexsort((np.broadcast_to(keys, scores.shape), -scores), axis=1)[:, :k]
        return np.take_along_axis(scores, order, axis=1), keys[order]

    def __len__(self) -> int:
        return len(self._rows)


class FaissItemIndex(ItemIndex):
    """FAISS inner-product index with explicit ids: exact (`IndexFlatIP`) for small catalogues,
    approximate (`IndexIVFFlat`, trained on the catalogue it holds) once it reaches
    `ann_threshold` items (0 = always exact).

    Updates remove the old vector first, so an id is never held twice. The IVF index probes
    `nprobe` of its `nlist` lists; nprobe = nlist is exact. Recall against exact search is
    measured by `streamrec bench index` (README, docs/results.md).
    """

    def __init__(self, dim: int, ann_threshold: int = 0, nprobe: int = 16, nlist: int = 0, threads: int = 0) -> None:
        self.dim = dim
        # FAISS's threads per search (0 = its default, one per core). OpenMP's thread count belongs
        # to the calling thread, and the worker searches from its compute thread: so it is set on
        # every search, not once per process. FAISS's OpenMP threads spin while they wait; measured
        # on 2 cores with the model process and a training job beside it, a batch of 100 exact
        # searches over 12,101 items took 159 ms on 2 threads and 4 ms on one.
        self.threads = threads
        self.ann_threshold = ann_threshold
        self.nprobe = nprobe
        self.nlist = nlist  # 0 = about 4 sqrt(N) lists when the index turns approximate
        self._index: faiss.Index = faiss.IndexIDMap2(faiss.IndexFlatIP(dim))
        # Vectors by id, kept to (re)build the approximate index; 4 D bytes per item.
        self._vectors: dict[int, np.ndarray] = {}
        self.approximate = False

    def empty_like(self) -> FaissItemIndex:
        return FaissItemIndex(self.dim, self.ann_threshold, self.nprobe, self.nlist, self.threads)

    def upsert(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        ids = np.ascontiguousarray(ids, dtype=np.int64)
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        assert vectors.shape == (len(ids), self.dim), f"vectors must be ({len(ids)}, {self.dim})"
        assert len(set(ids.tolist())) == len(ids), "ids in one upsert must be distinct"
        self._index.remove_ids(ids)
        self._index.add_with_ids(vectors, ids)
        for i, v in zip(ids.tolist(), vectors, strict=True):
            self._vectors[i] = v
        if not self.approximate and self.ann_threshold and len(self._vectors) >= self.ann_threshold:
            self._make_approximate()

    def _make_approximate(self) -> None:
        ids = np.fromiter(self._vectors, dtype=np.int64, count=len(self._vectors))
        vecs = np.stack([self._vectors[int(i)] for i in ids])
        nlist = min(len(ids), self.nlist or max(1, int(4 * np.sqrt(len(ids)))))
        quantizer = faiss.IndexFlatIP(self.dim)
        ivf = faiss.IndexIVFFlat(quantizer, self.dim, nlist, faiss.METRIC_INNER_PRODUCT)
        ivf.train(vecs)
        ivf.add_with_ids(vecs, ids)
        ivf.nprobe = min(self.nprobe, nlist)
        self._quantizer = quantizer  # the IVF index refers to it: keep it alive
        self._index = ivf
        self.nlist = nlist
        self.approximate = True

    def remove(self, ids: np.ndarray) -> int:
        ids = np.ascontiguousarray(ids, dtype=np.int64)
        for i in ids.tolist():
            self._vectors.pop(i, None)
        return int(self._index.remove_ids(ids))

    def _search_raw(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        if self.threads:
            faiss.omp_set_num_threads(self.threads)
        scores, ids = self._index.search(queries, k)
        return scores, ids

    def __len__(self) -> int:
        return int(self._index.ntotal)
