"""Markdown tables of offline results: `python -m streamrec.bench.results_table [results_dir]`.

Reads results/<dataset>/<model>-s<seed>.json (written by `streamrec train`) and prints, per
dataset, mean and spread over seeds of the test metrics, ranking all items and with history items
excluded, with the command of each run.
"""

from __future__ import annotations

import json
import statistics
import sys
from collections import defaultdict
from pathlib import Path

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


if __name__ == "__main__":
    print(tables(Path(sys.argv[1]) if len(sys.argv) > 1 else PROJECT_ROOT / "results"))
