"""`streamrec bench coldstart`: how well items never seen in training are recommended.

A random share of the catalogue (`--holdout`, seeded) is held out: every click on those items is
removed from training and they are left out of the training softmax (they do not exist yet), so
the model never learns their ID rows nor pushes them down. At evaluation they are placed the
way live serving places an unseen item: by content alone (ID row zeroed, see docs/models.md,
"Live serving"). Test cases are the users whose last click (leave-one-out, by time) is a held-out
item; their history is the earlier clicks minus held-out items. Ranking is over the whole
catalogue, history excluded, as in every other evaluation here. The same split is used for a
model trained with `--id-dropout` (which trains the content-only path) and without it, and the
warm test cases (last click on a training item) are reported beside, for scale.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from dataclasses import replace
from pathlib import Path

import torch

from streamrec.datasets import load_dataset
from streamrec.datasets.registry import default_max_len
from streamrec.features import build_catalog
from streamrec.models.presets import build_config
from streamrec.models.ranking_metrics import mask_history, metrics_from_ranks, target_rank
from streamrec.models.seqrec import SeqRec
from streamrec.models.sequence_data import Split, eval_batches
from streamrec.models.trainer import TrainConfig, evaluate, train
from streamrec.settings import Settings


def coldstart_split(
    sequences: list[list[int]], n_items: int, holdout: float, seed: int
) -> tuple[Split, list[tuple[list[int], int]], set[int]]:
    """(training split without held-out items, cold test pairs, held-out rows)."""
    rng = random.Random(seed)
    cold = set(rng.sample(range(1, n_items + 1), int(holdout * n_items)))
    train, valid, warm_test, cold_test = [], [], [], []
    for seq in sequences:
        if len(seq) < 3:
            continue
        kept = [r for r in seq[:-1] if r not in cold]  # history and training data: warm items only
        if len(kept) >= 2:
            train.append(kept[:-1])
            valid.append((kept[:-1], kept[-1]))
        if kept:
            (cold_test if seq[-1] in cold else warm_test).append((kept, seq[-1]))
    return Split(n_items, train, valid, warm_test), cold_test, cold


@torch.no_grad()
def rank_among(model: SeqRec, pairs: list[tuple[list[int], int]], candidates: set[int], max_len: int) -> dict:
    """Full-ranking metrics where only `candidates` (and nothing else) compete with the target:
    "which of the new items", the content model's own quality without the warm items' ID prior."""
    model.eval()
    table = model.item_table()
    allowed = torch.zeros(table.vectors.shape[0], dtype=torch.bool)
    allowed[torch.tensor(sorted(candidates))] = True
    ranks = []
    for seqs, lengths, targets, history in eval_batches(pairs, max_len, 512):
        scores = model.recommend_scores(seqs, lengths, table)  # (B, N+1)
        scores = mask_history(scores, history, targets).masked_fill(~allowed, float("-inf"))
        ranks.append(target_rank(scores, targets))
    return metrics_from_ranks(torch.cat(ranks))


def run_coldstart_bench(settings: Settings, args: argparse.Namespace) -> int:
    if args.threads:
        torch.set_num_threads(args.threads)
    ds = load_dataset(args.dataset, settings.data_dir)
    catalog = build_catalog(ds, text=args.text, cache_dir=settings.feature_cache, progress=False)
    split, cold_test, cold = coldstart_split(catalog.sequences(ds), len(catalog.item_ids), args.holdout, args.seed)
    max_len = args.max_len or default_max_len(ds)
    device = torch.device("cpu")
    torch.manual_seed(args.seed)
    cfg = replace(build_config(args.preset, len(catalog.item_ids), max_len, 64), id_dropout=args.id_dropout)
    model = SeqRec(cfg, catalog.features)
    # Held-out items do not exist at training time: not negatives either (they would be pushed
    # down by every training step while never being a target).
    model.excluded_rows = torch.tensor(sorted(cold))
    started = time.monotonic()
    run = train(model, split, TrainConfig(max_minutes=args.minutes, seed=args.seed), device, progress=False)
    warm = evaluate(model, split.test, 512, device)["excl_history"]
    with torch.no_grad():
        model.id_emb.weight[torch.tensor(sorted(cold))] = 0.0  # unseen items: content only, as served
    cold_res = evaluate(model, cold_test, 512, device)["excl_history"]
    warm_after = evaluate(model, split.test, 512, device)["excl_history"]
    among_cold = rank_among(model, cold_test, cold, max_len)
    out = {
        "dataset": ds.name,
        "model": args.preset,
        "id_dropout": args.id_dropout,
        "holdout_items": len(cold),
        "cold_test_users": len(cold_test),
        "warm_test_users": len(split.test),
        "cold": cold_res,
        "cold_ranked_among_held_out_items_only": among_cold,
        "chance_hr10": {"all_items": 10 / len(catalog.item_ids), "held_out_only": 10 / len(cold)},
        "warm": warm,
        "warm_with_cold_items_content_only": warm_after,
        "best_epoch": run.best_epoch,
        "minutes": round((time.monotonic() - started) / 60, 1),
        "command": (
            f"streamrec bench coldstart --dataset {args.dataset} --preset {args.preset} --id-dropout {args.id_dropout} "
            f"--holdout {args.holdout} --minutes {args.minutes} --seed {args.seed} --threads {args.threads}"
        ),
    }
    print(
        f"{args.preset} id_dropout {args.id_dropout}: cold items ({len(cold_test)} users) "
        f"HR@10 {cold_res['HR@10']:.4f} "
        f"NDCG@10 {cold_res['NDCG@10']:.4f} (among held-out items only: HR@10 {among_cold['HR@10']:.4f}, "
        f"NDCG@10 {among_cold['NDCG@10']:.4f}); warm ({len(split.test)} users) HR@10 {warm['HR@10']:.4f} "
        f"NDCG@10 {warm['NDCG@10']:.4f}; best epoch {run.best_epoch}"
    )
    path = Path(args.out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=2))
    print(f"wrote {path}")
    return 0
