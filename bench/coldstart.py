"""`streamrec bench coldstart`: how well items never seen in training are recommended.

A random share of the catalogue (`--holdout`, seeded) is held out: every click on those items is
removed from training and they are left out of the training softmax (they do not exist yet), so
the model never learns their ID rows nor pushes them down. At evaluation they are placed the
way live serving places an unseen item: by content alone (ID row zeroed, see docs/models.md,
"Live serving"), and scored through the new-item calibration (`models/cold_start.py`) whose scale
and offset are fitted on *validation* pairs only: users whose second-last click is a held-out
item (cold) or a training item (warm). Test cases are the users whose last click (leave-one-out,
by time) is a held-out item; their history is the earlier clicks minus held-out items. Ranking
is over the whole catalogue, history excluded, as in every other evaluation here; warm test
cases (last click on a training item) are reported beside, with and without the calibration.
"""

from __future__ import annotations

import argparse
import random
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch

from streamrec.bench.machine import machine_load, save_record
from streamrec.cli import hygiene_options
from streamrec.datasets import load_dataset
from streamrec.datasets.registry import default_max_len
from streamrec.errors import UserError
from streamrec.features import build_catalog, catalogue_payload
from streamrec.models.checkpoint import read_checkpoint, save_checkpoint
from streamrec.models.cold_start import ColdStartConfig, calibrated_scores, calibration_grid, fit_id_map
from streamrec.models.presets import build_config
from streamrec.models.ranking_metrics import mask_history, metrics_from_ranks, target_rank
from streamrec.models.seqrec import SeqRec
from streamrec.models.sequence_data import Split, eval_batches, item_clicks
from streamrec.models.trainer import TrainConfig, train
from streamrec.settings import Settings

Pairs = list[tuple[list[int], int]]


@dataclass
class ColdSplit:
    train: Split  # training data, validation and warm test: held-out items removed everywhere
    cold_valid: Pairs  # (history without held-out items, held-out second-last click)
    cold_test: Pairs  # (history without held-out items, held-out last click)
    held_out: set[int]


def coldstart_split(sequences: list[list[int]], n_items: int, holdout: float, seed: int) -> ColdSplit:
    rng = random.Random(seed)
    cold = set(rng.sample(range(1, n_items + 1), int(holdout * n_items)))
    train, valid, warm_test, cold_valid, cold_test = [], [], [], [], []
    for seq in sequences:
        if len(seq) < 3:
            continue
        kept = [r for r in seq[:-1] if r not in cold]  # history and training data: warm items only
        if len(kept) >= 2:
            train.append(kept[:-1])
            valid.append((kept[:-1], kept[-1]))
        if kept:
            (cold_test if seq[-1] in cold else warm_test).append((kept, seq[-1]))
        before = [r for r in seq[:-2] if r not in cold]
        if seq[-2] in cold and before:
            cold_valid.append((before, seq[-2]))
    return ColdSplit(Split(n_items, train, valid, warm_test), cold_valid, cold_test, cold)


class _Encoded:
    """The users of some pairs encoded once (the model's item table must not change after):
    every calibration point re-scores them with one product instead of a forward pass."""

    def __init__(self, model: SeqRec, pairs: Pairs) -> None:
        model.eval()
        self.model = model
        self.table = model.item_table()
        self.batches: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []  # users, targets, history
        with torch.no_grad():
            for seqs, lengths, targets, history in eval_batches(pairs, model.cfg.encoder.max_len, 512):
                users = model.last_hidden(model.encode(seqs, self.table), lengths)  # (B, D)
                self.batches.append((users, targets, history))

    def scores(self, only: torch.Tensor | None = None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """History-masked scores (B, N+1) and targets (B,), held-out items by content alone
        (their ID rows zero, or mapped); `only` (N+1,) bool keeps just those candidates."""
        with torch.no_grad():
            for users, targets, history in self.batches:
                scores = mask_history(self.model.scores(users, self.table), history, targets)  # (B, N+1)
                if only is not None:
                    scores = scores.masked_fill(~only, float("-inf"))
                yield scores, targets

    def metrics(self, new_rows: torch.Tensor, cfg: ColdStartConfig, only: torch.Tensor | None = None) -> dict:
        """Full-ranking metrics with new items scored through the calibration `cfg` (no clicks yet)."""
        ranks = []
        no_clicks = torch.zeros(len(new_rows))
        for scores, targets in self.scores(only):
            scores[:, new_rows] = calibrated_scores(scores[:, new_rows], no_clicks, cfg)
            ranks.append(target_rank(scores, targets))
        return metrics_from_ranks(torch.cat(ranks)) if ranks else {}


def run_coldstart_bench(settings: Settings, args: argparse.Namespace) -> int:
    if args.threads:
        torch.set_num_threads(args.threads)
    ds = load_dataset(args.dataset, settings.data_dir)
    catalog = build_catalog(ds, text=args.text, cache_dir=settings.feature_cache, progress=False)
    cs = coldstart_split(catalog.sequences(ds), len(catalog.item_ids), args.holdout, args.seed)
    split = cs.train
    max_len = args.max_len or default_max_len(ds)
    device = torch.device("cpu")
    torch.manual_seed(args.seed)
    cold_cfg = ColdStartConfig(fit=args.fit, warm_floor=args.warm_floor, cold_share=args.cold_share)
    cfg = replace(
        build_config(args.preset, len(catalog.item_ids), max_len, 64),
        id_dropout=args.id_dropout,
        id_evidence=args.id_evidence,
        cold=cold_cfg,
    )
    cfg = replace(cfg, encoder=replace(cfg.encoder, pos_init_std=args.pos_init_std))
    new_rows = torch.tensor(sorted(cs.held_out))
    load_before = machine_load()
    started = time.monotonic()
    tcfg = TrainConfig(
        lr=args.lr, patience=args.patience, max_minutes=args.minutes, seed=args.seed, **hygiene_options(args)
    )
    if args.checkpoint:
        # A model this bench trained and saved before: same split (seed, holdout), no training.
        ck = read_checkpoint(Path(args.checkpoint))
        held = [catalog.item_ids[r - 1] for r in sorted(cs.held_out)]
        if ck.meta.get("held_out_items") != held:
            raise UserError(f"{args.checkpoint} was trained on another split", "give the --seed and --holdout it used")
        cfg = replace(ck.config, cold=cold_cfg)
        model = SeqRec(cfg, catalog.features)
        model.load_state_dict({k: v for k, v in ck.state_dict.items() if k != "id_map"})
        run = None
    else:
        model = SeqRec(cfg, catalog.features)
        if cfg.id_evidence:  # held-out items have no training clicks: content only, as served
            model.set_item_clicks(item_clicks(split.train, split.n_items))
        # Held-out items do not exist at training time: not negatives either (they would be pushed
        # down by every training step while never being a target).
        model.excluded_rows = new_rows
        run = train(model, split, tcfg, device, progress=False)
        model.excluded_rows = None
    train_minutes = (time.monotonic() - started) / 60
    best_epoch = run.best_epoch if run else ck.meta.get("best_epoch")
    epochs_run = run.epochs_run if run else ck.meta.get("epochs_run")
    load_after = machine_load()
    model.eval()
    with torch.no_grad():
        model.id_emb.weight[new_rows] = 0.0  # unseen items: content only, as served
        if args.id_map == "ridge":
            # New items' ID vectors predicted from content, fitted on the warm items only.
            table = model.item_table()
            content = table.aux["fused"] if "fused" in table.aux else table.vectors - model.id_emb.weight
            warm_rows = torch.tensor([r for r in range(1, split.n_items + 1) if r not in cs.held_out])
            model.set_id_map(fit_id_map(content[warm_rows], model.id_emb.weight[warm_rows], args.id_map_ridge))
    # Users encoded once, with the item table as served (held-out ID rows zero, or mapped).
    valid, cold_valid = _Encoded(model, split.valid), _Encoded(model, cs.cold_valid)
    warm_test, cold_test = _Encoded(model, split.test), _Encoded(model, cs.cold_test)
    # The configured fit is the one reported; the others (pooled, and the warm floors of
    # --warm-floors) are chosen from the same validation grid and their test figures kept beside,
    # to show the trade-off each choice makes on test.
    cal_grid = calibration_grid(valid.scores, cold_valid.scores, new_rows) if args.fit != "none" else None
    rules = {args.fit: model.cfg.cold, "pooled": replace(model.cfg.cold, fit="pooled")}
    for floor in args.warm_floors:
        rules.setdefault(f"warm_floor={floor:g}", replace(model.cfg.cold, fit="warm_floor", warm_floor=floor))
    fits = {how: cal_grid.choose(c) if cal_grid else c for how, c in rules.items()}
    fitted, grid = fits[args.fit], cal_grid.points if cal_grid else []
    plain = ColdStartConfig(fit="none")
    only_new = torch.zeros(split.n_items + 1, dtype=torch.bool)
    only_new[new_rows] = True
    res = {
        "calibrated": {
            "cold": cold_test.metrics(new_rows, fitted),
            "warm": warm_test.metrics(new_rows, fitted),
        },
        "uncalibrated": {
            "cold": cold_test.metrics(new_rows, plain),
            "warm": warm_test.metrics(new_rows, plain),
        },
        "other_fits": {
            how: {
                "calibration": asdict(c),
                "cold": cold_test.metrics(new_rows, c),
                "warm": warm_test.metrics(new_rows, c),
            }
            for how, c in fits.items()
            if how != args.fit
        },
        "cold_ranked_among_held_out_items_only": cold_test.metrics(new_rows, plain, only_new),
        # Warm quality as if no new item competed: what the calibration may cost a share of.
        "warm_without_new_items": warm_test.metrics(new_rows, plain, ~only_new),
    }
    if args.save:
        # Held-out items keep their zero ID rows: served, they are placed by content and calibrated.
        titles = {it.item_id: it.title for it in ds.items}
        version = f"{ds.name}-{args.preset}-coldstart-s{args.seed}-{time.strftime('%Y%m%d%H%M%S')}"
        meta = {
            "dataset": ds.name,
            "model": args.preset,
            "text": args.text,
            "seed": args.seed,
            "best_epoch": best_epoch,
            "epochs_run": epochs_run,
            "held_out_items": [catalog.item_ids[r - 1] for r in sorted(cs.held_out)],
        }
        save_checkpoint(
            Path(args.save), model, replace(model.cfg, cold=fitted), version, meta, catalogue_payload(catalog, titles)
        )
    cal, unc = res["calibrated"], res["uncalibrated"]
    out = {
        "dataset": ds.name,
        "model": args.preset,
        "seed": args.seed,
        "id_dropout": cfg.id_dropout,
        "id_evidence": cfg.id_evidence,
        "id_map": args.id_map,
        "source_checkpoint": args.checkpoint or None,
        "holdout_items": len(cs.held_out),
        "cold_valid_users": len(cs.cold_valid),
        "cold_test_users": len(cs.cold_test),
        "warm_test_users": len(split.test),
        **res,
        "cold_over_warm_ndcg10": cal["cold"]["NDCG@10"] / max(1e-12, cal["warm"]["NDCG@10"]),
        "calibration": asdict(fitted),
        "calibration_grid": grid,
        "valid_warm_ndcg10_without_new_items": cal_grid.warm_alone if cal_grid else None,
        "chance_hr10": {"all_items": 10 / len(catalog.item_ids), "held_out_only": 10 / len(cs.held_out)},
        "best_epoch": best_epoch,
        "epochs_run": epochs_run,
        "train_config": asdict(tcfg),
        "train_minutes": round(train_minutes, 1),
        "valid_history": [h["valid"]["excl_history"]["NDCG@10"] for h in run.history] if run else None,
        "machine_load": {"before": load_before, "after": load_after},
    }
    print(
        f"{args.preset} {ds.name} seed {args.seed}: calibration scale {fitted.scale} offset {fitted.offset:.3f}; "
        f"cold ({len(cs.cold_test)} users) NDCG@10 {cal['cold']['NDCG@10']:.4f} (uncalibrated "
        f"{unc['cold']['NDCG@10']:.4f}); warm ({len(split.test)} users) NDCG@10 {cal['warm']['NDCG@10']:.4f} "
        f"(uncalibrated {unc['warm']['NDCG@10']:.4f}); cold/warm {out['cold_over_warm_ndcg10']:.2f}; "
        f"best epoch {best_epoch} of {epochs_run}, {train_minutes:.1f} min"
    )
    for how, fit in out["other_fits"].items():
        print(
            f"  fit {how} (scale {fit['calibration']['scale']}, offset {fit['calibration']['offset']:.3f}): "
            f"cold NDCG@10 {fit['cold']['NDCG@10']:.4f}, warm {fit['warm']['NDCG@10']:.4f}, "
            f"cold/warm {fit['cold']['NDCG@10'] / max(1e-12, fit['warm']['NDCG@10']):.2f}"
        )
    out_path = args.out or f"bench/results/coldstart-{ds.name}-{args.preset}-s{args.seed}.json"
    print(f"wrote {save_record(out_path, out, 'coldstart')}")
    return 0
