"""Paired comparison of two models on the same test users:
`python -m streamrec.bench.paired --base A.json [A2.json...] --other B.json [B2.json...]`.

Each record is one written by `streamrec train` (or `streamrec eval --out`), which keeps every test
user's target rank (`test_ranks`) in the split's order; an older record without them takes them from
`<stem>.ranks.json` beside it, written by `streamrec eval --out` from its checkpoint. With several
records per side (seeds), a user's figure is the mean over that side's seeds, so the test is over
users, not over runs. Two tests, both over users:

- a paired bootstrap of the relative change in mean NDCG@10 (users resampled with replacement, the
  same draw for both sides), giving a 95% interval;
- the Wilcoxon signed-rank test on per-user differences (zero differences dropped, normal
  approximation with the tie correction; tens of thousands of users make the approximation exact
  enough), giving a two-sided p-value.

A table row reads "B vs A: +x% [lo, hi], p". Records of different datasets or splits are refused in one line.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from streamrec.errors import EXIT_USER_ERROR, UserError


def per_user(ranks: np.ndarray, metric: str = "NDCG@10") -> np.ndarray:
    """Per-user figure from target ranks (from 1), as ranking_metrics.metrics_from_ranks averages it."""
    name, _, k = metric.partition("@")
    r = ranks.astype(np.float64)
    if name == "MRR":
        return 1.0 / r
    hit = (r <= int(k)).astype(np.float64)
    if name == "HR":
        return hit
    assert name == "NDCG", f"unknown metric {metric!r}: HR@K, NDCG@K or MRR"
    return hit / np.log2(r + 1.0)


def _average_ranks(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Ranks from 1 with ties sharing their mean rank, and the size of each tie group."""
    order = np.argsort(x, kind="mergesort")
    xs = x[order]
    starts = np.r_[0, np.flatnonzero(np.diff(xs)) + 1]
    ends = np.r_[starts[1:], len(x)]
    ranks = np.empty(len(x))
    ranks[order] = np.repeat((starts + ends + 1) / 2.0, ends - starts)
    return ranks, ends - starts


def wilcoxon(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """Signed-rank test of b - a: (z, two-sided p). Zero differences are dropped (Wilcoxon's rule)."""
    d = b - a
    d = d[d != 0]
    n = len(d)
    if n == 0:
        return 0.0, 1.0
    ranks, ties = _average_ranks(np.abs(d))
    w_plus = float(ranks[d > 0].sum())
    mean = n * (n + 1) / 4.0
    var = n * (n + 1) * (2 * n + 1) / 24.0 - float((ties**3 - ties).sum()) / 48.0
    if var <= 0:
        return 0.0, 1.0
    z = (w_plus - mean) / math.sqrt(var)
    return z, math.erfc(abs(z) / math.sqrt(2.0))


def bootstrap_relative(a: np.ndarray, b: np.ndarray, rounds: int = 2000, seed: int = 0) -> tuple[float, float, float]:
    """Relative change of the mean, mean(b) / mean(a) - 1, and its 95% paired-bootstrap interval."""
    assert a.shape == b.shape and a.ndim == 1, f"paired per-user arrays expected, got {a.shape} and {b.shape}"
    rng = np.random.default_rng(seed)
    n = len(a)
    draws = rng.integers(0, n, size=(rounds, n))  # (R, U): one resampling of the users per round
    ma, mb = a[draws].mean(1), b[draws].mean(1)
    rel = mb / np.where(ma > 0, ma, np.nan) - 1.0
    lo, hi = np.nanpercentile(rel, [2.5, 97.5])
    return float(b.mean() / a.mean() - 1.0), float(lo), float(hi)


# Why: a user's figure averaged over several seeds is smoother than one run's (fewer exact zeros), so
# the signed-rank test on the differences reacts to that shape as well as to the models; the
# bootstrap interval on the mean is not affected. Seen on Beauty: +1.0% to +7.0% beside p = 0.39.
UNEVEN_SEEDS_NOTE = (
    "(seeds differ): one side averages more seeds than the other; its per-user figures are smoother, "
    "so the Wilcoxon p can disagree with the interval. Pair the same seeds on both sides for the test."
)


@dataclass(frozen=True)
class Comparison:
    metric: str
    users: int
    base_mean: float
    other_mean: float
    change: float  # other / base - 1
    change_lo: float
    change_hi: float
    wilcoxon_z: float
    p_value: float
    base_seeds: int
    other_seeds: int

    @property
    def uneven(self) -> bool:
        return self.base_seeds != self.other_seeds

    def cell(self) -> str:
        """'+12.3% [+8.1%, +16.4%], p=0.0002' for a table; ' (seeds differ)' after it when the sides
        average different numbers of seeds (UNEVEN_SEEDS_NOTE says what that means)."""
        p = f"{self.p_value:.4f}" if self.p_value >= 1e-4 else f"{self.p_value:.0e}"
        mark = " (seeds differ)" if self.uneven else ""
        return f"{self.change:+.1%} [{self.change_lo:+.1%}, {self.change_hi:+.1%}], p={p}{mark}"


def _side(records: list[dict], metric: str, group: str) -> np.ndarray:
    """Per-user mean over the side's records (seeds) of the metric: (U,)."""
    for r in records:
        if "test_ranks" not in r:
            raise UserError(
                f"the record of {r.get('model')} seed {r.get('seed')} keeps no per-user ranks",
                "re-evaluate its checkpoint: streamrec eval --checkpoint PATH --out RECORD.json",
            )
    values = [per_user(np.asarray(r["test_ranks"][group]), metric) for r in records]
    if len({len(v) for v in values}) != 1:
        raise UserError("records on one side have different numbers of test users", "compare runs of one split")
    return np.mean(values, axis=0)


def compare(
    base: list[dict], other: list[dict], metric: str = "NDCG@10", group: str = "excl_history", rounds: int = 2000
) -> Comparison:
    prints = {r.get("dataset_fingerprint") for r in base + other}
    if len(prints) != 1:
        raise UserError(
            f"records from different datasets or versions of one ({', '.join(sorted(map(str, prints)))})",
            "compare runs of one dataset",
        )
    a, b = _side(base, metric, group), _side(other, metric, group)
    if a.shape != b.shape:
        raise UserError(
            f"base has {len(a)} test users, other {len(b)}: not the same split", "compare runs of one split"
        )
    change, lo, hi = bootstrap_relative(a, b, rounds)
    z, p = wilcoxon(a, b)
    return Comparison(metric, len(a), float(a.mean()), float(b.mean()), change, lo, hi, z, p, len(base), len(other))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base", nargs="+", type=Path, required=True, help="records of the reference model")
    ap.add_argument("--other", nargs="+", type=Path, required=True, help="records of the model compared with it")
    ap.add_argument("--metric", default="NDCG@10")
    ap.add_argument("--group", default="excl_history", choices=("excl_history", "all"))
    ap.add_argument("--json", action="store_true", help="print the comparison as JSON")
    args = ap.parse_args(argv)
    try:
        base, other = _read(args.base), _read(args.other)
        c = compare(base, other, args.metric, args.group)
    except UserError as exc:
        print(exc.line("paired"), file=sys.stderr)
        return EXIT_USER_ERROR
    if args.json:
        print(json.dumps(asdict(c), indent=2))
    else:
        name = f"{other[0].get('model')} vs {base[0].get('model')}, {c.metric} ({args.group}, {c.users} users)"
        print(f"{name}: {c.base_mean:.4f} -> {c.other_mean:.4f}, {c.cell()}")
        if c.uneven:
            print(UNEVEN_SEEDS_NOTE)
    return 0


def load_record(path: Path) -> dict:
    """A training record, with per-user ranks from `<stem>.ranks.json` when it keeps none itself."""
    rec = json.loads(path.read_text())
    side = path.with_name(path.stem + ".ranks.json")
    if "test_ranks" not in rec and side.exists():
        ranks = json.loads(side.read_text())
        assert ranks["version"] == rec["version"], f"{side} evaluates another checkpoint than {path} records"
        rec["test_ranks"] = ranks["test_ranks"]
    return rec


def _read(paths: list[Path]) -> list[dict]:
    try:
        return [load_record(p) for p in paths]
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot read a record: {exc}", "give records written by streamrec train") from None


if __name__ == "__main__":
    raise SystemExit(main())
