"""Validation NDCG@10 against wall-clock minutes, from training records:
`python -m streamrec.bench.time_to_quality RECORD.json... --out docs/time-to-quality.png`.

Each record written by `streamrec train` carries its per-epoch history (epoch, minutes since the
start of training, validation NDCG@10 with history excluded), the command, the commit and the
machine's load. This prints one row per record (its curve and where it first reached a target)
and draws the curves in one PNG, with an outside reference point (a figure measured elsewhere,
e.g. a public implementation's test NDCG@10 after so many minutes on this machine).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def curve(record: dict) -> list[tuple[float, float]]:
    """(minutes, validation NDCG@10) per epoch of one training record."""
    return [(float(h["minutes"]), float(h["valid_ndcg10_excl"])) for h in record.get("history", [])]


def first_reaching(points: list[tuple[float, float]], target: float) -> float | None:
    """Minutes at which the curve first reaches `target`, or None."""
    return next((m for m, v in points if v >= target), None)


def label(record: dict, path: Path) -> str:
    return f"{record.get('model', '?')} s{record.get('seed', '?')} ({path.parent.parent.name}/{path.stem})"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("records", nargs="+", type=Path)
    parser.add_argument("--target", type=float, default=0.0247, help="NDCG@10 whose first reach is reported")
    parser.add_argument("--reference", default="0.0247@25:public SASRec (pmixer), test NDCG@10, this machine")
    parser.add_argument("--out", type=Path, default=Path("docs/time-to-quality.png"))
    args = parser.parse_args(argv)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2))
    print(f"{'record':<48}{'epochs':>7}{'minutes':>9}{'best valid':>12}{f'reach {args.target}':>14}  load")
    for path in args.records:
        record = json.loads(path.read_text())
        points = curve(record)
        assert points, f"{path} has no per-epoch history"
        reach = first_reaching(points, args.target)
        machine = record.get("machine_load") or {}
        load = f"load {machine.get('loadavg_1min_mean', '?')}{' busy' if machine.get('busy') else ''}"
        best = max(v for _, v in points)
        reach_s = f"{reach:.1f} min" if reach is not None else "not reached"
        print(f"{label(record, path):<48}{len(points):>7}{points[-1][0]:>9.1f}{best:>12.4f}{reach_s:>14}  {load}")
        ax.plot([m for m, _ in points], [v for _, v in points], marker="o", label=label(record, path))
    value, rest = args.reference.split("@", 1)
    minutes, text = rest.split(":", 1)
    ax.scatter([float(minutes)], [float(value)], marker="*", s=160, color="black", zorder=5, label=text)
    ax.axhline(args.target, color="grey", linewidth=0.8, linestyle="--")
    ax.set_xlabel("wall-clock minutes of training")
    ax.set_ylabel("validation NDCG@10 (history excluded)")
    ax.set_title("Time to quality, Amazon Beauty")
    ax.legend(fontsize=7)
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=120)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
