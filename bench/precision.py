"""`streamrec bench precision`: what a narrower cache of encoder state costs in ranking quality
and saves in memory, through the serving path itself.

For every user with at least three clicks, the serving model (serving/research_model.py) is given
the history without its last click: the window but its last item is prefilled (computed in float32
whatever the cache type) and the last item is one incremental step, which reads every cached key,
value and block summary in the cache's type. The user vector ranks all items, history excluded,
against the held-out last click (leave-one-out, full ranking): NDCG@10 and HR@10 per cache type,
with the relative change from float32, the largest difference of user vectors and the seconds spent
encoding. The same is measured with the encoder's linear layers in int8 (dynamic quantization).
Prints a table and writes JSON with the commit, the command and the machine's load.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from streamrec.bench.machine import machine_load, save_record
from streamrec.datasets import load_dataset
from streamrec.model_bundle import load_bundle
from streamrec.serving.research_model import ResearchServingConfig, ResearchServingModel
from streamrec.serving.serving_model import UserHistory
from streamrec.settings import Settings
from streamrec.stream.schemas import CatalogueRecord

# (name, cache storage type, linear layers' type); the first is the reference.
VARIANTS = (
    ("float32", "float32", "float32"),
    ("float16", "float16", "float32"),
    ("bfloat16", "bfloat16", "float32"),
    ("int8", "int8", "float32"),
    ("float16+int8-linear", "float16", "int8"),
    ("int8+int8-linear", "int8", "int8"),
)


def leave_one_out(events: list, users: int) -> list[tuple[str, list[str], str]]:
    """(user, history without the last click, last click) of the first `users` users with >= 3 clicks."""
    by_user: dict[str, list[str]] = {}
    for e in events:
        by_user.setdefault(e.user_id, []).append(e.item_id)
    out = [(u, items[:-1], items[-1]) for u, items in by_user.items() if len(items) >= 3]
    return out[:users] if users > 0 else out


def rank_metrics(vectors: np.ndarray, matrix: np.ndarray, histories: list[list[int]], targets: list[int]) -> np.ndarray:
    """Per user NDCG@10 of the target among all rows, history rows excluded. vectors (U, D), matrix (R, D)."""
    scores = vectors @ matrix.T  # (U, R)
    out = np.zeros(len(targets))
    for u, (rows, target) in enumerate(zip(histories, targets, strict=True)):
        s = scores[u].copy()
        s[[r for r in rows if r != target]] = -np.inf
        rank = int((s > s[target]).sum())
        out[u] = 1.0 / np.log2(rank + 2) if rank < 10 else 0.0
    return out


def encode_last_clicks(
    model: ResearchServingModel, users: list[str], histories: list[list[int]], matrix: np.ndarray, batch: int
) -> tuple[np.ndarray, float]:
    """User vectors (U, D) after each history, and the seconds spent encoding.

    Two calls per batch, as a live worker sees them: the window but its last item (encoded in one
    pass, in float32), then the last item alone, a one-click step that reads every cached vector
    in the cache's type. One call with the whole window would never read the cache."""
    vectors = []
    seconds = 0.0
    for start in range(0, len(users), batch):
        chunk = range(start, min(start + batch, len(users)))
        before = [UserHistory(users[k], histories[k][:-1], len(histories[k]) - 1) for k in chunk]
        after = [UserHistory(users[k], histories[k], len(histories[k])) for k in chunk]
        t0 = time.perf_counter()
        model.encode_users(before, matrix, explain=False)
        vectors.append(model.encode_users(after, matrix, explain=False).vectors)
        seconds += time.perf_counter() - t0
    return np.concatenate(vectors), seconds


def run_precision_bench(settings: Settings, args: argparse.Namespace) -> int:
    assert args.checkpoint, "a checkpoint to measure (--checkpoint)"
    started = time.time()
    load = machine_load()
    bundle = load_bundle(Path(args.checkpoint), settings.data_dir, settings.feature_cache)
    dataset = load_dataset(bundle.meta.get("dataset", args.dataset), settings.data_dir)
    records = [
        CatalogueRecord(i.item_id, "upsert", 0, i.title, i.category_path, i.brand, i.price) for i in dataset.items
    ]
    row_of = {r.item_id: k for k, r in enumerate(records)}
    cases = leave_one_out(dataset.events, args.users)
    histories = [[row_of[i] for i in h] for _, h, _ in cases]
    targets = [row_of[t] for _, _, t in cases]
    results = {}
    reference: np.ndarray | None = None
    for name, state_dtype, linear_dtype in VARIANTS:
        cfg = ResearchServingConfig(state_memory_mb=args.memory_mb, state_dtype=state_dtype, linear_dtype=linear_dtype)
        model = ResearchServingModel(bundle, cfg)
        matrix = np.concatenate([model.encode_items(records[i : i + 1024]) for i in range(0, len(records), 1024)])
        vecs, encoding_s = encode_last_clicks(model, [u for u, _, _ in cases], histories, matrix, args.batch)
        ndcg = rank_metrics(vecs, matrix, histories, targets)
        if reference is None:
            reference = vecs
        results[name] = {
            "state_dtype": state_dtype,
            "linear_dtype": linear_dtype,
            "ndcg@10": float(ndcg.mean()),
            "hr@10": float((ndcg > 0).mean()),
            "state_bytes_per_user_at_2048": model.state_bytes_per_user(2048),
            "max_abs_vector_difference_from_float32": float(np.abs(vecs - reference).max()),
            # Prefill of every user's window plus one step each (the item scores are not timed).
            "encoding_seconds": round(encoding_s, 3),
        }
    base = results[VARIANTS[0][0]]["ndcg@10"]
    print(
        f"{'variant':<21}{'NDCG@10':>9}{'vs fp32':>9}{'HR@10':>8}{'state B/user':>14}{'max |dv|':>10}{'encode s':>10}"
    )
    for name, r in results.items():
        r["ndcg_relative_change"] = (r["ndcg@10"] - base) / base if base else 0.0
        print(
            f"{name:<21}{r['ndcg@10']:>9.4f}{r['ndcg_relative_change']:>+9.2%}{r['hr@10']:>8.4f}"
            f"{r['state_bytes_per_user_at_2048']:>14,}{r['max_abs_vector_difference_from_float32']:>10.2e}"
            f"{r['encoding_seconds']:>10.2f}"
        )
    print(f"{len(cases)} users of {dataset.name}, leave-one-out over {len(records)} items, history excluded")
    payload = {
        "dataset": dataset.name,
        "checkpoint": args.checkpoint,
        "users": len(cases),
        "results": results,
        "machine": load,
        "seconds": round(time.time() - started, 1),
    }
    print(f"wrote {save_record(args.out, payload, 'precision')}")
    return 0
