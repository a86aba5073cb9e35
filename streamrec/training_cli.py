"""`streamrec train` and `streamrec eval`: offline training and full-ranking evaluation.

Checkpoints go to <state_dir>/models/<dataset>/<model>-s<seed>.pt (weights only, with config,
version and the item catalogue serving needs); figures to results/<dataset>/<model>-s<seed>.json
with the exact command that made them and the dataset's fingerprint. `--dataset` is a known name
or the path of the user's own RecBole or CSV file (datasets/own.py). The arguments are declared in
streamrec/cli.py, so `streamrec --help` does not import torch.
"""

from __future__ import annotations

import argparse
import json
import pickle
import shlex
import sys
import time
from dataclasses import asdict, replace
from itertools import combinations
from pathlib import Path

import torch

from streamrec.bench.machine import LoadSampler, code_version
from streamrec.bench.results_table import stopped_by
from streamrec.cli import build_parser, hygiene_options
from streamrec.datasets import load_dataset
from streamrec.datasets.own import is_own_dataset
from streamrec.datasets.registry import default_max_len
from streamrec.errors import UserError
from streamrec.features import build_catalog, catalogue_payload
from streamrec.model_bundle import load_bundle
from streamrec.models.checkpoint import save_checkpoint
from streamrec.models.presets import build_config
from streamrec.models.seqrec import SeqRec
from streamrec.models.sequence_data import item_clicks, leave_one_out
from streamrec.models.trainer import (
    TrainConfig,
    evaluate,
    load_train_state,
    pick_device,
    resume_conflicts,
    train,
)
from streamrec.settings import Settings


def write_record(out: Path, record: dict) -> None:
    """A results record as indented JSON, its per-user ranks (tens of thousands of numbers) kept
    on one line each so the file stays readable and its diff small."""
    ranks = record.get("test_ranks")
    text = json.dumps({k: v for k, v in record.items() if k != "test_ranks"}, indent=2)
    if ranks is not None:
        lines = ",\n".join(f"    {json.dumps(g)}: {json.dumps(r)}" for g, r in ranks.items())
        text = text[: -len("\n}")] + f',\n  "test_ranks": {{\n{lines}\n  }}\n}}'
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)


def _saved_state(path: Path, tcfg: TrainConfig, tag: dict) -> dict | None:
    """The training state a cut or killed run left at `path`, checked against this run's settings."""
    if not path.exists():
        print(f"no saved training state at {path}: training from the first epoch")
        return None
    try:
        saved = load_train_state(path)
    except (OSError, RuntimeError, EOFError, AssertionError, pickle.UnpicklingError) as exc:
        raise UserError(f"cannot read the training state {path}: {exc}", "delete it, or drop --resume") from exc
    differ = resume_conflicts(saved, tcfg, tag)
    if differ:
        raise UserError(
            f"{path} was saved by a run with other settings ({'; '.join(differ)})",
            "give that run's settings to continue it, or drop --resume to train afresh",
        )
    print(
        f"continuing {path.name} after epoch {saved['epoch']} ({saved['seconds'] / 60:.1f} min so far, "
        f"best epoch {saved['best_epoch']}, {saved['stopped_by']})"
    )
    return saved


def run_train(args: argparse.Namespace, settings: Settings) -> int:
    if args.threads:
        torch.set_num_threads(args.threads)
    dataset = load_dataset(args.dataset, settings.data_dir)
    name = dataset.name
    catalog = build_catalog(dataset, text=args.text, cache_dir=settings.feature_cache, progress=not args.quiet)
    split = leave_one_out(catalog.sequences(dataset), len(catalog.item_ids))
    if not split.test:
        raise UserError(f"{args.dataset}: no user has the 3 clicks leave-one-out needs", "give a larger click log")
    max_len = args.max_len or default_max_len(dataset)
    cfg = replace(
        build_config(args.preset, len(catalog.item_ids), max_len, args.dim),
        id_dropout=args.id_dropout,
        id_evidence=args.id_evidence,
    )
    dropout = _flags(vars(args))["dropout"]
    cfg = replace(cfg, encoder=replace(cfg.encoder, pos_init_std=args.pos_init_std, dropout=dropout))
    torch.manual_seed(args.seed)
    device = pick_device()
    model = SeqRec(cfg, catalog.features.to(device))
    if cfg.id_evidence:
        model.set_item_clicks(item_clicks(split.train, split.n_items))
    tcfg = TrainConfig(
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        weight_decay=args.weight_decay,
        patience=args.patience,
        seed=args.seed,
        max_minutes=args.max_minutes,
        **hygiene_options(args),
    )
    version = f"{name}-{args.preset}-s{args.seed}-{time.strftime('%Y%m%d%H%M%S')}"
    ckpt = settings.checkpoint_path(name, args.preset, args.seed)
    # A known dataset by its name (any alias), your own by its absolute path.
    source = str(Path(args.dataset).resolve()) if is_own_dataset(args.dataset) else name
    meta = {
        "dataset": name,
        "dataset_source": source,
        "dataset_fingerprint": dataset.fingerprint,
        "model": args.preset,
        "text": args.text,
        "seed": args.seed,
    }
    # Saved after every epoch beside the checkpoint, so `--resume` continues a run cut or killed.
    state_file = ckpt.with_name(ckpt.stem + ".train-state.pt")
    state_file.parent.mkdir(parents=True, exist_ok=True)
    tag = {"dataset_fingerprint": dataset.fingerprint, "model": args.preset, "text": args.text, "config": asdict(cfg)}
    saved = _saved_state(state_file, tcfg, tag) if args.resume else None
    command = "streamrec " + " ".join(sys.argv[1:])
    with LoadSampler() as load:
        result = train(
            model,
            split,
            tcfg,
            device,
            progress=not args.quiet,
            state_file=state_file,
            resume_from=saved,
            tag=tag,
            piece_info=lambda: {"command": command, "commit": code_version(), "machine_load": load.summary()},
        )
    titles = {it.item_id: it.title for it in dataset.items}
    meta["best_epoch"] = result.best_epoch
    test_ranks = result.test.pop("ranks")
    save_checkpoint(ckpt, model, cfg, version, meta, catalogue_payload(catalog, titles))
    record = {
        "dataset": name,
        "dataset_fingerprint": dataset.fingerprint,
        "model": args.preset,
        "seed": args.seed,
        "command": command,
        "commit": code_version(),
        "machine_load": load.summary(),
        # More than one when the run was continued with --resume: each piece's epochs, command,
        # commit and load (the fields above are the last piece's; train_seconds is the whole run's).
        "pieces": result.pieces,
        "best_epoch": result.best_epoch,
        "epochs_run": result.epochs_run,
        "stopped_by": result.stopped_by,
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
            {"epoch": h["epoch"], "minutes": h["minutes"], "valid_ndcg10_excl": h["valid"]["excl_history"]["NDCG@10"]}
            for h in result.history
        ],
        "checkpoint": str(ckpt),
        "version": version,
        # Each test user's target rank, in the split's order: the paired tests of bench/paired.py.
        "test_ranks": test_ranks,
    }
    out = Path(args.results_dir) / name / f"{args.preset}-s{args.seed}.json"
    write_record(out, record)
    t, ta = result.test["excl_history"], result.test["all"]
    print(
        f"{args.preset} on {name}: test HR@10 {t['HR@10']:.4f} NDCG@10 {t['NDCG@10']:.4f} (history excluded); "
        f"{ta['HR@10']:.4f} / {ta['NDCG@10']:.4f} (all items); best epoch {result.best_epoch}, "
        f"{result.seconds / 60:.1f} min. Wrote {out} and {ckpt}"
    )
    return 0


def _axis_name(spec: str) -> str:
    """The train flag a grid axis runs over: "weight-decay=0,0.1" -> "weight_decay"."""
    return spec.partition("=")[0].strip().replace("-", "_")


def _tag(combo: dict[str, float | int]) -> str:
    """A grid point's directory name: {"lr": 0.001, "dropout": 0.2} -> "lr0.001_dropout0.2"."""
    return "_".join(f"{k}{v}" for k, v in combo.items())


def parse_grid(grid: list[str], args: argparse.Namespace) -> list[dict[str, float | int]]:
    """["lr=0.001,0.002", "dropout=0.2,0.5"] -> every combination, typed like the train flag."""
    axes: list[tuple[str, list[float | int]]] = []
    for spec in grid:
        name, values = _axis_name(spec), spec.partition("=")[2]
        if not values or not hasattr(args, name) or isinstance(getattr(args, name), (str, bool)):
            raise UserError(f"--grid {spec!r}: not NAME=V1,V2 over a numeric train flag", "e.g. --grid lr=0.001,0.002")
        kind = type(getattr(args, name))
        try:
            axes.append((name, [kind(v) for v in values.split(",")]))
        except ValueError as exc:
            raise UserError(f"--grid {spec!r}: {exc}", f"give {kind.__name__} values for {name}") from exc
    combos: list[dict[str, float | int]] = [{}]
    for name, values in axes:
        combos = [{**c, name: v} for c in combos for v in values]
    return combos


# Flags that do not change what a grid point trains: the subcommand (train or tune), the grid
# around it, where things are written, how it reports, and how many threads compute it (at most
# the last bits of float sums; on Beauty a point retrained at 1 thread gave the 2-thread record's
# ranks exactly).
_NOT_A_SETTING = frozenset({"command", "func", "grid", "seeds", "resume", "out", "results_dir", "quiet", "threads"})
# Safety caps: a run that validation patience stopped never met them, so they did not shape it.
_CAPS = frozenset({"max_minutes", "epochs"})


def _flags(ns: dict) -> dict:
    """Train flags with the preset's dropout written out (-1 on the command line means "the preset's")."""
    if ns.get("dropout", 0) < 0:
        ns = {**ns, "dropout": build_config(ns["preset"], 1, 1, ns["dim"]).encoder.dropout}
    return ns


def differing_settings(record: dict, args: argparse.Namespace, combo: dict[str, float | int]) -> list[str]:
    """The train flags whose value differs between a grid point's record and this run's point;
    empty when the record can stand for the point. A record a grid wrote was trained at the point
    its directory names; any other (a `streamrec train` record) is read by its own flags."""
    try:
        recorded = vars(build_parser().parse_args(shlex.split(record["command"])[1:]))
    except (KeyError, ValueError, SystemExit):
        return ["command (missing or unreadable)"]
    if recorded.get("grid"):
        # Its directory names its own grid's axes; a wider grid's other axes it ran at its own flags.
        axes = {_axis_name(spec) for spec in recorded["grid"]}
        own_point = {k: v for k, v in combo.items() if k in axes}
        recorded = {**recorded, **own_point, "seed": record.get("seed", recorded["seed"])}
    ignored = _NOT_A_SETTING | (_CAPS if stopped_by(record) == "patience" else frozenset())
    recorded, mine = _flags(recorded), _flags({**vars(args), **combo})
    return sorted(k for k in mine.keys() - ignored if recorded.get(k) != mine[k])


def _seed_list(args: argparse.Namespace) -> list[int]:
    if not args.seeds:
        return [args.seed]
    try:
        return [int(s) for s in args.seeds.split(",")]
    except ValueError as exc:
        raise UserError(f"--seeds {args.seeds!r}: {exc}", "give seeds as integers, e.g. --seeds 0,1,2") from exc


def _narrower_point(tune_dir: Path, pattern: str, args: argparse.Namespace, combo: dict) -> list[Path]:
    """A grid widened by an axis (weight_decay=0,0.1 after a grid without it) reads the points it
    already has where the narrower grid wrote them: under the tag without the axes whose value is
    the run's own flag, fewest left out first. The point where every axis is at the run's own flag
    (the preset's dropout counting as written) is what `streamrec train` wrote into the same
    results directory, so a grid around a trained run does not train it again.
    `differing_settings` then checks the record."""
    flags = _flags(vars(args))
    own = [k for k, v in combo.items() if v == flags.get(k)]
    for n in range(1, len(own) + 1):
        for left_out in combinations(own, n):
            tag = _tag({k: v for k, v in combo.items() if k not in left_out})
            found = sorted((tune_dir / tag if tag else tune_dir.parent).glob(pattern))
            if found:
                return found
    return []


def _grid_run(args: argparse.Namespace, settings: Settings, tag: str, combo: dict, seed: int) -> dict:
    """One point at one seed: trained into RESULTS_DIR/tune/<tag>, or with --resume its record read."""
    folder = Path(args.results_dir) / "tune" / tag
    ns = argparse.Namespace(**{**vars(args), **combo, "seed": seed, "results_dir": str(folder)})
    pattern = f"*/{args.preset}-s{seed}.json"
    found = sorted(folder.glob(pattern))
    if args.resume and not found:
        found = _narrower_point(folder.parent, pattern, args, combo)
    reuse = args.resume and bool(found)
    if not reuse:
        # Each point keeps its own checkpoint, beside its record.
        point = replace(settings, state_dir=settings.state_dir / "tune" / tag, features_dir=settings.feature_cache)
        run_train(ns, point)
        found = sorted(folder.glob(pattern))
    # The pattern matches every dataset's record in the folder: read the one trained at this point.
    records = {path: json.loads(path.read_text()) for path in found}
    differs = {path: differing_settings(rec, ns, combo) for path, rec in records.items()}
    found = [path for path, differ in differs.items() if not differ] or found
    if differs[found[0]]:
        raise UserError(
            f"{found[0]} was trained with other settings ({', '.join(differs[found[0]])})",
            f"move it away or give another --results-dir to train {tag} again",
        )
    if reuse:
        print(f"{tag} seed {seed}: reusing {found[0]}")
    rec = records[found[0]]
    keep = ("dataset", "valid", "test", "best_epoch", "train_seconds")
    return {"seed": seed, "record": str(found[0]), **{k: rec.get(k) for k in keep}, "stopped_by": stopped_by(rec)}


def run_tune(args: argparse.Namespace, settings: Settings) -> int:
    """Train every grid point with validation patience, at every seed given; choose by validation
    NDCG@10 (history excluded, mean over the seeds) alone; record the grid, every point's and
    seed's validation and test figures, and the choice. With --resume, a point whose record exists
    and was trained with the same settings is read, not trained again: a grid cut short continues,
    and its points may be trained in parallel."""
    combos = parse_grid(args.grid, args)
    seeds = _seed_list(args)
    points = []
    for combo in combos:
        tag = _tag(combo)
        runs = [_grid_run(args, settings, tag, combo, seed) for seed in seeds]
        points.append(
            {
                "settings": combo,
                "dataset": runs[0]["dataset"],
                "valid_ndcg10_mean": _mean_ndcg10(runs, "valid"),
                "test_ndcg10_mean": _mean_ndcg10(runs, "test"),
                "seeds": runs,
            }
        )
    best = max(points, key=lambda p: p["valid_ndcg10_mean"])
    name = f"{points[0]['dataset']}-{args.preset}-s{'-'.join(map(str, seeds))}-grid.json"
    out = Path(args.out) if args.out else Path(args.results_dir) / "tune" / name
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps(
            {
                "command": "streamrec " + " ".join(sys.argv[1:]),
                "commit": code_version(),
                "grid": args.grid,
                "seeds": seeds,
                "chosen_by": "validation NDCG@10, history excluded, mean over the seeds",
                "choice": best["settings"],
                "points": points,
            },
            indent=2,
        )
    )
    print(f"chosen on validation: {best['settings']} (valid NDCG@10 {best['valid_ndcg10_mean']:.4f}); wrote {out}")
    return 0


def _mean_ndcg10(runs: list[dict], split: str) -> float:
    return round(sum(r[split]["excl_history"]["NDCG@10"] for r in runs) / len(runs), 6)


def run_eval(args: argparse.Namespace, settings: Settings) -> int:
    # The model with the catalogue its checkpoint carries; the dataset only for the held-out clicks.
    bundle = load_bundle(Path(args.checkpoint), settings.data_dir, settings.feature_cache)
    meta = bundle.meta
    dataset = load_dataset(args.dataset or meta.get("dataset_source", meta["dataset"]), settings.data_dir)
    if meta.get("dataset_fingerprint") and dataset.fingerprint != meta["dataset_fingerprint"]:
        raise UserError(
            f"{args.checkpoint} was trained on another version of {meta['dataset']} (fingerprints differ)",
            "evaluate on the files it was trained on (--dataset PATH)",
        )
    split = leave_one_out(bundle.catalog.sequences(dataset), len(bundle.catalog.item_ids))
    device = pick_device()
    res = evaluate(bundle.model.to(device), split.test, 512, device, keep_ranks=True)
    ranks = res.pop("ranks")
    print(json.dumps({"version": bundle.version, "test": res}, indent=2))
    if args.out:
        record = {
            "dataset": meta["dataset"],
            "dataset_fingerprint": dataset.fingerprint,
            "model": meta.get("model"),
            "seed": meta.get("seed"),
            "command": "streamrec " + " ".join(sys.argv[1:]),
            "commit": code_version(),
            "checkpoint": args.checkpoint,
            "version": bundle.version,
            "best_epoch": meta.get("best_epoch"),
            "test": res,
            "users": len(split.test),
            "test_ranks": ranks,
        }
        write_record(Path(args.out), record)
    return 0
