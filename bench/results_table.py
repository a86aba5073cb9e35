"""Markdown tables of offline results: `python -m streamrec.bench.results_table [results_dir]`.

Reads results/<dataset>/<model>-s<seed>.json (written by `streamrec train`) and prints, per
dataset, mean and spread over seeds of the test metrics, ranking all items and with history items
excluded, with the command of each run. `--coldstart FILE...` prints the cold-start table instead,
one row per group of `streamrec bench coldstart` records (same dataset, model, ID dropout, ID map
and ID evidence).
`--compare BASE FILE...` prints one row per model of the given training records (seeds pooled; a
model whose records differ in lr, dropout or weight decay gets a row per setting, named like
"sasrec-content dropout=0.5", which BASE may name) with
what stopped each run, the machine's load, and a paired test over users against the model BASE
(bench/paired.py); a record without per-user ranks takes them from `<stem>.ranks.json` beside it,
written by `streamrec eval --out` from the same checkpoint.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections import defaultdict
from pathlib import Path

from streamrec.bench.paired import UNEVEN_SEEDS_NOTE, compare, load_record
from streamrec.errors import EXIT_USER_ERROR, UserError
from streamrec.settings import PROJECT_ROOT

METRICS = ("HR@10", "NDCG@10", "HR@20", "NDCG@20", "MRR")


def _fmt(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.4f}"
    return f"{statistics.mean(values):.4f} ± {statistics.stdev(values):.4f}"


def tables(root: Path) -> str:
    out = []
    for ds_dir in sorted(p for p in root.iterdir() if p.is_dir()):
        runs: dict[str, list[dict]] = defaultdict(list)
        for f in sorted(ds_dir.glob("*.json")):
            if f.name.endswith(".ranks.json"):
                continue  # per-user ranks of a record beside it (load_record), not a run of its own
            rec = json.loads(f.read_text())
            runs[rec["model"]].append(rec)
        out.append(f"\n### {ds_dir.name}\n")
        head = " | ".join(f"{m} (excl.)" for m in METRICS[:2]) + " | " + " | ".join(f"{m} (all)" for m in METRICS[:2])
        out.append(f"| model | seeds | {head} | HR@20 (excl.) | NDCG@20 (excl.) | MRR (excl.) | epochs (best) | min |")
        out.append("|---" * 11 + "|")
        for model, recs in sorted(runs.items()):
            ex = [r["test"]["excl_history"] for r in recs]
            al = [r["test"]["all"] for r in recs]
            cells = [_fmt([m[k] for m in ex]) for k in METRICS[:2]] + [_fmt([m[k] for m in al]) for k in METRICS[:2]]
            cells += [_fmt([m[k] for m in ex]) for k in METRICS[2:]]
            epochs = ", ".join(f"{r['epochs_run']} ({r['best_epoch']})" for r in recs)
            minutes = ", ".join(f"{r['train_seconds'] / 60:.0f}" for r in recs)
            out.append(f"| {model} | {len(recs)} | " + " | ".join(cells) + f" | {epochs} | {minutes} |")
        out.append("")
        for model, recs in sorted(runs.items()):
            for r in recs:
                out.append(f"- `{model}` seed {r['seed']}: `{r['command']}`")
    return "\n".join(out)


def coldstart_table(files: list[Path]) -> str:
    groups: dict[tuple[str, str, float, str, float], list[dict]] = defaultdict(list)
    for f in files:
        rec = json.loads(f.read_text())
        key = (rec["dataset"], rec["model"], rec["id_dropout"], rec.get("id_map", "none"), rec.get("id_evidence", 0.0))
        groups[key].append(rec)
    out = [
        "| dataset, model, ID dropout, ID map, ID evidence | seeds | cold NDCG@10 | warm NDCG@10 | cold / warm | "
        "cold HR@10 | uncalibrated: cold NDCG@10 | warm NDCG@10 | cold / warm | "
        "pooled fit: cold NDCG@10 | warm NDCG@10 | new items only: cold NDCG@10 | best epochs |",
        "|---" * 13 + "|",
    ]
    for (ds, model, drop, id_map, evidence), recs in sorted(groups.items()):

        def col(path: tuple[str, ...], recs: list[dict] = recs) -> list[float]:
            vals = []
            for r in recs:
                v = r
                for k in path:
                    v = v[k]
                vals.append(float(v))
            return vals

        def ratio(kind: str, recs: list[dict] = recs) -> list[float]:
            return [r[kind]["cold"]["NDCG@10"] / r[kind]["warm"]["NDCG@10"] for r in recs]

        cells = [
            _fmt(col(("calibrated", "cold", "NDCG@10"))),
            _fmt(col(("calibrated", "warm", "NDCG@10"))),
            _fmt(ratio("calibrated")),
            _fmt(col(("calibrated", "cold", "HR@10"))),
            _fmt(col(("uncalibrated", "cold", "NDCG@10"))),
            _fmt(col(("uncalibrated", "warm", "NDCG@10"))),
            _fmt(ratio("uncalibrated")),
            _fmt(col(("other_fits", "pooled", "cold", "NDCG@10"))),
            _fmt(col(("other_fits", "pooled", "warm", "NDCG@10"))),
            _fmt(col(("cold_ranked_among_held_out_items_only", "NDCG@10"))),
            ", ".join(f"{r['best_epoch']}/{r['epochs_run']}" for r in recs),
        ]
        out.append(f"| {ds}, {model}, {drop}, {id_map}, {evidence} | {len(recs)} | " + " | ".join(cells) + " |")
    floors = _floor_rows(groups)
    if floors:
        out += [
            "",
            "Test figures of each warm floor's fit (chosen on validation; `--warm-floor`, `--warm-floors`):",
            "",
            "| dataset, model, ID dropout, ID map, ID evidence | warm floor | seeds | cold NDCG@10 | warm NDCG@10 | "
            "cold / warm |",
            "|---" * 6 + "|",
            *floors,
        ]
    return "\n".join(out)


def _floor_rows(groups: dict[tuple[str, str, float, str, float], list[dict]]) -> list[str]:
    """One row per group and warm floor fitted in all of the group's records."""
    rows = []
    for (ds, model, drop, id_map, evidence), recs in sorted(groups.items()):
        per_rec = []
        for r in recs:
            fits = (
                {f"{r['calibration']['warm_floor']:g}": r["calibrated"]}
                if r["calibration"]["fit"] == "warm_floor"
                else {}
            )
            for how, fit in r.get("other_fits", {}).items():
                if how.startswith("warm_floor="):
                    fits[how.split("=", 1)[1]] = fit
            per_rec.append(fits)
        common = set.intersection(*(set(f) for f in per_rec)) if per_rec else set()
        for floor in sorted(common, key=float, reverse=True):
            cold = [f[floor]["cold"]["NDCG@10"] for f in per_rec]
            warm = [f[floor]["warm"]["NDCG@10"] for f in per_rec]
            ratio = [c / w for c, w in zip(cold, warm, strict=True)]
            rows.append(
                f"| {ds}, {model}, {drop}, {id_map}, {evidence} | {floor} | {len(recs)} | "
                f"{_fmt(cold)} | {_fmt(warm)} | {_fmt(ratio)} |"
            )
    return rows


def stopped_by(rec: dict) -> str:
    """What ended a training run; inferred for records written before runs said so, "unknown" for
    a record too thin to tell."""
    if "stopped_by" in rec:
        return rec["stopped_by"]
    tc = rec.get("train_config", {})
    if not {"epochs_run", "best_epoch", "train_seconds"} <= rec.keys() or not {"patience", "max_minutes"} <= tc.keys():
        return "unknown"
    if rec["epochs_run"] - rec["best_epoch"] >= tc["patience"]:
        return "patience"
    return "budget" if rec["train_seconds"] / 60 > tc["max_minutes"] else "epochs"


def _tuned(rec: dict) -> dict[str, float | None]:
    """The settings a grid tunes, as a record states them."""
    return {
        "lr": rec.get("train_config", {}).get("lr"),
        "dropout": rec.get("config", {}).get("encoder", {}).get("dropout"),
        "weight_decay": rec.get("train_config", {}).get("weight_decay"),
    }


def _rows(recs: list[dict]) -> dict[str, list[dict]]:
    """Records by row: one row per model, split by the tuned settings where one model's records
    differ in them (a row then reads e.g. "sasrec-content dropout=0.5")."""
    by_model: dict[str, list[dict]] = defaultdict(list)
    for rec in recs:
        by_model[rec["model"]].append(rec)
    rows: dict[str, list[dict]] = defaultdict(list)
    for model, group in by_model.items():
        tuned = [_tuned(rec) for rec in group]
        differ = [k for k in tuned[0] if len({t[k] for t in tuned}) > 1]
        for rec, t in zip(group, tuned, strict=True):
            rows[" ".join([model, *(f"{k}={t[k]}" for k in differ)])].append(rec)
    return rows


def run_load(rec: dict) -> tuple[float, float]:
    """The machine's 1-minute load over a whole training run: (mean, max). A run continued with
    --resume lists its pieces, and the record's own machine_load is only the last piece's, so the
    mean is weighted by each piece's seconds and the max taken over all of them: a busy first piece
    must not hide behind a quiet continuation."""
    pieces = [p for p in rec.get("pieces", []) if "machine_load" in p and p.get("seconds")]
    if len(pieces) < 2:
        return rec["machine_load"]["loadavg_1min_mean"], rec["machine_load"]["loadavg_1min_max"]
    seconds = sum(p["seconds"] for p in pieces)
    mean = sum(p["machine_load"]["loadavg_1min_mean"] * p["seconds"] for p in pieces) / seconds
    return mean, max(p["machine_load"]["loadavg_1min_max"] for p in pieces)


def comparison_table(files: list[Path], base: str, metric: str = "NDCG@10") -> str:
    runs = _rows([load_record(f) for f in files])
    if base not in runs:
        raise UserError(f"no record of the base model {base!r} among {sorted(runs)}", "name one of those as BASE")
    out = [
        f"| model | seeds | {metric} excl. | HR@10 excl. | {metric} all | vs {base}: {metric} excl., paired over users "
        "(95% interval, p) | epochs (best) | minutes | stopped by | load (1-min mean, max) |",
        "|---" * 10 + "|",
    ]
    uneven = False
    for model, recs in sorted(runs.items(), key=lambda kv: (kv[0] != base, kv[0])):
        recs.sort(key=lambda r: r["seed"])
        ex = [r["test"]["excl_history"] for r in recs]
        paired = ""
        if model != base:
            c = compare(runs[base], recs, metric)
            paired, uneven = c.cell(), uneven or c.uneven
        load = ", ".join("{:.2f}/{:.2f}".format(*run_load(r)) for r in recs)
        cells = [
            _fmt([m[metric] for m in ex]),
            _fmt([m["HR@10"] for m in ex]),
            _fmt([r["test"]["all"][metric] for r in recs]),
            paired,
            ", ".join(f"{r['epochs_run']} ({r['best_epoch']})" for r in recs),
            ", ".join(f"{r['train_seconds'] / 60:.1f}" for r in recs),
            ", ".join(stopped_by(r) for r in recs),
            load,
        ]
        out.append(f"| {model} | {len(recs)} | " + " | ".join(cells) + " |")
    out.append("")
    if uneven:
        out.append(UNEVEN_SEEDS_NOTE)
    for model, recs in sorted(runs.items()):
        for r in recs:
            out.append(f"- `{model}` seed {r['seed']} (commit {r.get('commit', '?')}): `{r['command']}`")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m streamrec.bench.results_table", description=__doc__.split("\n\n")[0])
    ap.add_argument("results_dir", nargs="?", type=Path, default=PROJECT_ROOT / "results")
    ap.add_argument("--coldstart", nargs="+", type=Path, metavar="FILE", help="`streamrec bench coldstart` records")
    ap.add_argument("--compare", nargs="+", metavar=("BASE", "FILE"), help="base model name, then training records")
    args = ap.parse_args(argv)
    try:
        if args.coldstart:
            print(coldstart_table(_existing(args.coldstart)))
        elif args.compare:
            if len(args.compare) < 2:
                raise UserError("--compare needs a base model name and at least one record", "--compare BASE FILE...")
            print(comparison_table(_existing([Path(a) for a in args.compare[1:]]), args.compare[0]))
        else:
            if not args.results_dir.is_dir():
                raise UserError(f"{args.results_dir} is not a folder", "give the folder `streamrec train` wrote to")
            print(tables(args.results_dir))
    except UserError as exc:
        print(exc.line("results_table"), file=sys.stderr)
        return EXIT_USER_ERROR
    return 0


def _existing(paths: list[Path]) -> list[Path]:
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise UserError(f"no such record: {', '.join(missing)}", "give records written by streamrec train or bench")
    return paths


if __name__ == "__main__":
    raise SystemExit(main())
