"""`streamrec train` and `streamrec eval`: offline training and full-ranking evaluation.

Checkpoints go to <state_dir>/models/<dataset>/<model>-s<seed>.pt (weights only, with config and
version); figures to results/<dataset>/<model>-s<seed>.json with the exact command that made them.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

import torch

from streamrec.datasets import load_dataset
from streamrec.datasets.registry import canonical_name
from streamrec.features import build_catalog
from streamrec.models.checkpoint import load_checkpoint, save_checkpoint
from streamrec.models.presets import build_config, preset_names
from streamrec.models.seqrec import SeqRec
from streamrec.models.sequence_data import leave_one_out
from streamrec.models.trainer import TrainConfig, evaluate, pick_device, train
from streamrec.settings import PROJECT_ROOT, Settings

DEFAULT_MAX_LEN = {"amazon-beauty": 50, "ml-100k": 200, "lastfm-2k-mm": 50}


def add_train_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dataset", default="amazon-beauty")
    p.add_argument("--model", default="sasrec", choices=preset_names())
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--epochs", type=int, default=200)
    p.add_argument("--patience", type=int, default=10)
    p.add_argument("--max-minutes", type=float, default=28.0)
    p.add_argument("--max-len", type=int, default=0, help="0 = the dataset's default")
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--id-dropout", type=float, default=0.0)
    p.add_argument("--text", default="minilm", choices=["minilm", "hashed"])
    p.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    p.add_argument("--results-dir", default=str(PROJECT_ROOT / "results"))
    p.add_argument("--quiet", action="store_true")


def run_train(args: argparse.Namespace, settings: Settings) -> int:
    if args.threads:
        torch.set_num_threads(args.threads)
    name = canonical_name(args.dataset)
    dataset = load_dataset(name, settings.data_dir)
    catalog = build_catalog(dataset, text=args.text, cache_dir=settings.feature_cache, progress=not args.quiet)
    split = leave_one_out(catalog.sequences(dataset), len(catalog.item_ids))
    max_len = args.max_len or DEFAULT_MAX_LEN[name]
    cfg = replace(build_config(args.model, len(catalog.item_ids), max_len, args.dim), id_dropout=args.id_dropout)
    torch.manual_seed(args.seed)
    device = pick_device()
    model = SeqRec(cfg, catalog.features.to(device))
    tcfg = TrainConfig(
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        patience=args.patience,
        seed=args.seed,
        max_minutes=args.max_minutes,
    )
    version = f"{name}-{args.model}-s{args.seed}-{time.strftime('%Y%m%d%H%M%S')}"
    ckpt = settings.state_dir / "models" / name / f"{args.model}-s{args.seed}.pt"
    meta = {"dataset": name, "model": args.model, "text": args.text, "seed": args.seed}
    result = train(model, split, tcfg, device, progress=not args.quiet)
    save_checkpoint(ckpt, model, cfg, version, meta | {"best_epoch": result.best_epoch})
    record = {
        "dataset": name,
        "model": args.model,
        "seed": args.seed,
        "command": "streamrec " + " ".join(sys.argv[1:]),
        "best_epoch": result.best_epoch,
        "epochs_run": result.epochs_run,
        "train_seconds": round(result.seconds, 1),
        "valid": result.best_valid,
        "test": result.test,
        "users": len(split.test),
        "items": split.n_items,
        "device": str(device),
        "threads": torch.get_num_threads(),
        "config": asdict(cfg),
        "train_config": asdict(tcfg),
        "history": [
            {"epoch": h["epoch"], "valid_ndcg10_excl": h["valid"]["excl_history"]["NDCG@10"]} for h in result.history
        ],
        "checkpoint": str(ckpt),
        "version": version,
    }
    out = Path(args.results_dir) / name / f"{args.model}-s{args.seed}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=2))
    t, ta = result.test["excl_history"], result.test["all"]
    print(
        f"{args.model} on {name}: test HR@10 {t['HR@10']:.4f} NDCG@10 {t['NDCG@10']:.4f} (history excluded); "
        f"{ta['HR@10']:.4f} / {ta['NDCG@10']:.4f} (all items); best epoch {result.best_epoch}, "
        f"{result.seconds / 60:.1f} min. Wrote {out} and {ckpt}"
    )
    return 0


def run_eval(args: argparse.Namespace, settings: Settings) -> int:
    cfg, state, version, meta = load_checkpoint(Path(args.checkpoint))
    dataset = load_dataset(meta["dataset"], settings.data_dir)
    catalog = build_catalog(dataset, text=meta["text"], cache_dir=settings.feature_cache)
    split = leave_one_out(catalog.sequences(dataset), len(catalog.item_ids))
    device = pick_device()
    model = SeqRec(cfg, catalog.features.to(device))
    model.load_state_dict(state)
    model.to(device)
    res = evaluate(model, split.test, 512, device)
    print(json.dumps({"version": version, "test": res}, indent=2))
    return 0
