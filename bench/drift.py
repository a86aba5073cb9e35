"""`streamrec bench drift`: does fine-tuning from the stream help when the data moves on?

The dataset's clicks are cut at 80% of their time span. A base model is trained offline on the
head (leave-one-out early stopping, as `streamrec train`). The tail is then replayed in time order
in chunks of `--every` clicks; every tail click is first *predicted* (next-click, full ranking over
the whole catalogue, the user's earlier items excluded as in offline evaluation) by

  * the frozen base model, and
  * the continuously fine-tuned model: the `OnlineTrainer` (the same code `streamrec trainer`
    runs) observes each chunk after it has been predicted and runs a round (fine-tune, gate,
    promote into a model store) before the next chunk,

so no model ever sees a click before predicting it. Prints HR@10 / NDCG@10 over the tail for
both, per chunk and overall, and writes JSON.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from dataclasses import asdict, replace
from pathlib import Path

import torch

from streamrec.datasets import load_dataset
from streamrec.datasets.registry import default_max_len
from streamrec.features import build_catalog
from streamrec.model_bundle import load_bundle
from streamrec.models.checkpoint import save_checkpoint
from streamrec.models.presets import build_config
from streamrec.models.seqrec import SeqRec
from streamrec.models.sequence_data import leave_one_out
from streamrec.models.trainer import TrainConfig, evaluate, train
from streamrec.settings import Settings
from streamrec.state.model_store import ModelStore
from streamrec.training.online_trainer import OnlineTrainer, OnlineTrainerConfig, import_checkpoint


def run_drift_bench(settings: Settings, args: argparse.Namespace) -> int:
    if args.threads:
        torch.set_num_threads(args.threads)
    ds = load_dataset(args.dataset, settings.data_dir)
    catalog = build_catalog(ds, text=args.text, cache_dir=settings.feature_cache, progress=False)
    times = [e.timestamp for e in ds.events]
    cut = min(times) + 0.8 * (max(times) - min(times))
    head = [e for e in ds.events if e.timestamp <= cut]
    tail = [e for e in ds.events if e.timestamp > cut]
    if args.tail_limit:
        tail = tail[: args.tail_limit]
    row_of = catalog.row_of
    history: dict[str, list[int]] = {}
    for e in head:
        history.setdefault(e.user_id, []).append(row_of[e.item_id])
    max_len = args.max_len or default_max_len(ds)
    device = torch.device("cpu")
    torch.manual_seed(args.seed)
    cfg = build_config(args.preset, len(catalog.item_ids), max_len, 64)
    base = SeqRec(cfg, catalog.features)
    split = leave_one_out(list(history.values()), len(catalog.item_ids))
    started = time.monotonic()
    base_run = train(
        base, split, TrainConfig(max_minutes=args.base_minutes, patience=5, seed=args.seed), device, progress=False
    )
    print(
        f"base model on the head ({len(head):,} clicks): best epoch {base_run.best_epoch}, "
        f"{(time.monotonic() - started) / 60:.1f} min; tail: {len(tail):,} clicks",
        flush=True,
    )
    with tempfile.TemporaryDirectory(prefix="streamrec-drift-") as tmp:
        ckpt = Path(tmp) / "base.pt"
        meta = {"dataset": ds.name, "model": args.preset, "text": args.text}
        save_checkpoint(ckpt, base, cfg, f"{ds.name}-{args.preset}-drift-base", meta)
        store = ModelStore(Path(tmp) / "store")
        stored = import_checkpoint(store, ckpt)
        frozen = load_bundle(stored.path, settings.data_dir, settings.feature_cache)
        frozen.model.to(device)
        tcfg = OnlineTrainerConfig(
            every_events=args.every, epochs=args.epochs, lr=args.lr, window_users=100_000, window_len=max_len
        )
        online = OnlineTrainer(tcfg, store, frozen, device)
        for e in head:
            online.observe_click(e.user_id, e.item_id)
        rows: list[dict] = []
        totals = {"frozen": [], "fine-tuned": []}
        for start in range(0, len(tail), args.every):
            chunk = tail[start : start + args.every]
            pairs = []
            for e in chunk:
                h = history.setdefault(e.user_id, [])
                if h:
                    pairs.append((list(h), row_of[e.item_id]))
                h.append(row_of[e.item_id])
            row = {"chunk": start // args.every, "clicks": len(chunk), "predicted": len(pairs)}
            for name, model in (("frozen", frozen.model), ("fine-tuned", online.current.model)):
                res = evaluate(model, pairs, 512, device)["excl_history"]
                row[name] = {"HR@10": res["HR@10"], "NDCG@10": res["NDCG@10"]}
                totals[name].append((len(pairs), res))
            for e in chunk:
                online.observe_click(e.user_id, e.item_id)
            result = online.run_round()
            row["round"] = {k: v for k, v in asdict(result).items() if k in ("decision", "reason", "fine_tune_seconds")}
            rows.append(row)
            print(
                f"chunk {row['chunk']}: frozen NDCG@10 {row['frozen']['NDCG@10']:.4f}, "
                f"fine-tuned {row['fine-tuned']['NDCG@10']:.4f}; round: {result.decision} "
                f"({result.fine_tune_seconds:.0f} s, {result.sequences_per_s:.0f} seq/s)",
                flush=True,
            )
    overall = {}
    for name, parts in totals.items():
        n = sum(k for k, _ in parts)
        overall[name] = {m: sum(k * r[m] for k, r in parts) / n for m in ("HR@10", "NDCG@10")}
    print(f"\n{'model':<12}{'HR@10':>10}{'NDCG@10':>10}   over {sum(r['predicted'] for r in rows):,} tail clicks")
    for name, m in overall.items():
        print(f"{name:<12}{m['HR@10']:>10.4f}{m['NDCG@10']:>10.4f}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "dataset": ds.name,
        "model": args.preset,
        "cut_unix_s": cut,
        "head_clicks": len(head),
        "tail_clicks": len(tail),
        "overall": overall,
        "chunks": rows,
        "online_config": asdict(replace(tcfg)),
        "base_best_epoch": base_run.best_epoch,
        "command": "streamrec bench drift "
        + " ".join(
            f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if k not in ("func", "bench", "command")
        ),
    }
    out.write_text(json.dumps(payload, indent=2))
    print(f"wrote {out}")
    return 0
