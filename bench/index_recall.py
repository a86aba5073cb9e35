"""`streamrec bench index`: recall and speed of the approximate FAISS index against exact search.

Uses a trained checkpoint's own vectors: every item of its dataset encoded by the serving path
(`ResearchServingModel.encode_items`) and the user vectors of a sample of real histories, so the
recall figure describes the served model, not random data. For each nprobe it reports recall@K
of the IVF index against the exact flat index (history items excluded in both, as served) and
the search time per query in batches of 256.

It also times the exact search with history exclusion in batches of the served size
(`--batch`): as served (`ItemIndex.search`, which fetches k + a margin and searches again only
the queries whose history took too many) against one fetch of k + the longest history in the
batch for every query (how it was done before), checking that both return the same items.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from streamrec.bench.machine import machine_load, save_record
from streamrec.datasets import load_dataset
from streamrec.serving.research_model import load_research_model
from streamrec.serving.serving_model import UserHistory
from streamrec.settings import Settings
from streamrec.state.item_index import FaissItemIndex, fill_excluding
from streamrec.stream.schemas import CatalogueRecord


def _search_all(
    index: FaissItemIndex, queries: np.ndarray, k: int, exclude: list[set[int]]
) -> tuple[np.ndarray, float]:
    started = time.perf_counter()
    ids = []
    for s in range(0, len(queries), 256):
        ids.append(index.search(queries[s : s + 256], k, exclude[s : s + 256])[1])
    return np.concatenate(ids), (time.perf_counter() - started) / len(queries)


def _one_fetch(index: FaissItemIndex, queries: np.ndarray, k: int, exclude: list[set[int]]) -> np.ndarray:
    """Ids of the top k per query with one raw search of k + the longest history for all."""
    fetch = min(len(index), k + max(len(e) for e in exclude))
    scores, ids = index._search_raw(queries, fetch)  # (B, fetch)
    out_scores = np.full((len(queries), k), -np.inf, dtype=np.float32)
    out_ids = np.full((len(queries), k), -1, dtype=np.int64)
    for row in range(len(queries)):
        fill_excluding(out_scores[row], out_ids[row], scores[row], ids[row], exclude[row])
    return out_ids


def _exclusion_cost(
    index: FaissItemIndex, queries: np.ndarray, k: int, exclude: list[set[int]], batch: int, rounds: int = 3
) -> dict[str, float]:
    """ms per batch of `batch` queries: as served, and with one fetch of k + the longest history
    (alternating, best of `rounds`, so both see the same machine)."""
    served, single = [], []
    for _ in range(rounds):
        for times, search in (
            (served, lambda q, e: index.search(q, k, e)[1]),
            (single, lambda q, e: _one_fetch(index, q, k, e)),
        ):
            started = time.perf_counter()
            for s in range(0, len(queries), batch):
                search(queries[s : s + batch], exclude[s : s + batch])
            times.append((time.perf_counter() - started) / -(-len(queries) // batch))
    for s in range(0, len(queries), batch):
        a = index.search(queries[s : s + batch], k, exclude[s : s + batch])[1]
        b = _one_fetch(index, queries[s : s + batch], k, exclude[s : s + batch])
        assert (a == b).all(), "both ways must return the same items"
    return {"served_ms_per_batch": round(1000 * min(served), 3), "one_fetch_ms_per_batch": round(1000 * min(single), 3)}


def run_index_bench(settings: Settings, args: argparse.Namespace) -> int:
    load = machine_load()
    ds = load_dataset(args.dataset, settings.data_dir)
    checkpoint = settings.checkpoint_or_default(args.checkpoint, ds.name)
    model = load_research_model(checkpoint, settings.data_dir, settings.feature_cache)
    records = [
        CatalogueRecord(it.item_id, "upsert", 0, it.title, it.category_path, it.brand, it.price) for it in ds.items
    ]
    vecs = np.concatenate([model.encode_items(records[s : s + 2048]) for s in range(0, len(records), 2048)])
    rows = np.arange(len(records), dtype=np.int64)
    row_of = {r.item_id: i for i, r in enumerate(records)}
    rng = np.random.default_rng(0)
    seqs = list(ds.user_sequences().items())
    sample = [seqs[i] for i in rng.choice(len(seqs), size=min(args.users, len(seqs)), replace=False)]
    histories = [UserHistory(u, [row_of[i] for i in items], len(items)) for u, items in sample]
    users = np.concatenate(
        [model.encode_users(histories[s : s + 256], vecs, False).vectors for s in range(0, len(histories), 256)]
    )
    exclude = [set(h.rows) for h in histories]
    exact = FaissItemIndex(vecs.shape[1])
    exact.upsert(rows, vecs)
    want, exact_s = _search_all(exact, users, args.k, exclude)
    exclusion = _exclusion_cost(exact, users, args.k, exclude, args.batch)
    lengths = np.array([len(e) for e in exclude])
    ann = FaissItemIndex(vecs.shape[1], ann_threshold=1, nprobe=1)
    ann.upsert(rows, vecs)
    table = []
    for nprobe in args.nprobe:
        ann._index.nprobe = min(nprobe, ann.nlist)
        got, ann_s = _search_all(ann, users, args.k, exclude)
        recall = float(
            np.mean([len(set(a) & set(b)) / args.k for a, b in zip(got.tolist(), want.tolist(), strict=True)])
        )
        table.append({"nprobe": nprobe, "recall": round(recall, 4), "ms_per_query": round(1000 * ann_s, 4)})
    result = {
        "dataset": args.dataset,
        "checkpoint": str(checkpoint),
        "items": len(records),
        "users": len(histories),
        "k": args.k,
        "nlist": ann.nlist,
        "exact_ms_per_query": round(1000 * exact_s, 4),
        "ivf": table,
        "history_exclusion": {
            "batch": args.batch,
            "history_length_p50_max": [int(np.median(lengths)), int(lengths.max())],
            **exclusion,
        },
        "machine": load,
    }
    print(f"{args.dataset}: {len(records)} items, {len(histories)} users, IVF nlist {ann.nlist}, recall@{args.k}")
    print(f"{'nprobe':>8} {'recall':>8} {'ms/query':>10}   (exact flat: {1000 * exact_s:.4f} ms/query)")
    for row in table:
        print(f"{row['nprobe']:>8} {row['recall']:>8.4f} {row['ms_per_query']:>10.4f}")
    print(
        f"exact search with history excluded, batches of {args.batch} (history p50 {int(np.median(lengths))}, "
        f"max {int(lengths.max())}): {exclusion['served_ms_per_batch']:.3f} ms as served, "
        f"{exclusion['one_fetch_ms_per_batch']:.3f} ms with one fetch of k + the longest history"
    )
    busy = " (BUSY machine)" if load.get("busy") else ""
    print(f"machine before the run: load {load.get('loadavg_1_5_15')}{busy}")
    print(f"wrote {save_record(args.out, result, 'index')}")
    return 0
