"""`streamrec bench attention`: dense causal attention versus MUFASA's sparse attention on CPU.

For each length T: forward and forward+backward time of PyTorch SDPA (dense, causal) and of the
sparse attention (block compression + the efficient three-branch kernel), each in a fresh child
process so that its peak memory (max RSS above the process's baseline after inputs are built) is
its own, once after the forward passes (inference) and once after forward+backward (training);
and the per-event cost of the incremental step against a cache of T positions versus a full
recompute of the layer. Timings are taken under glibc's default allocator settings and under
settings that keep freed memory for reuse (see ALLOCATORS). Prints tables, writes JSON and a PNG plot.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

from streamrec.bench.machine import machine_load, save_record
from streamrec.models.attention_cache import CachedCall, LayerCache
from streamrec.models.sparse_attention import DenseCausalAttention, SparseAttention, SparseAttentionConfig
from streamrec.models.sparse_attention_math import compress_blocks, nsa_efficient

B, H, DH = 8, 2, 32
KINDS = ("dense", "sparse")
# glibc returns freed blocks above its mmap threshold to the system, so every large temporary is
# page-faulted in afresh; the sparse layer makes many (gathers, branch outputs) where dense SDPA
# makes one. These settings make glibc keep freed memory for reuse, as a caching allocator
# (jemalloc, tcmalloc) would. Both the default and this setting are measured, for both kinds.
ALLOCATORS: dict[str, dict[str, str]] = {
    "default": {},
    "retain": {"MALLOC_MMAP_THRESHOLD_": str(2**30), "MALLOC_TRIM_THRESHOLD_": str(2**33)},
}
BENCH_CFG = SparseAttentionConfig(block=32, num_selected=8, num_recent=1, window=128, chunk=512, impl="efficient")


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _time(fn: Callable[[], object], repeats: int) -> float:
    fn()  # warm-up
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def measure_one(kind: str, t: int, repeats: int) -> dict:
    """Runs in a child process: time and peak memory of one (kind, T)."""
    torch.manual_seed(0)
    layer = SparseAttention(H * DH, H, BENCH_CFG)
    q, k, v = (torch.randn(B, H, t, DH, requires_grad=True) for _ in range(3))
    gates = torch.rand(B, t, H, 3)
    base = _rss_mb()

    def forward() -> torch.Tensor:
        if kind == "dense":
            return F.scaled_dot_product_attention(q, k, v, is_causal=True)
        c = BENCH_CFG
        kc = compress_blocks(k, c.block, layer.block_pos_k, layer.compress_k)
        vc = compress_blocks(v, c.block, layer.block_pos_v, layer.compress_v)
        return nsa_efficient(q, k, v, kc, vc, gates, c.layout, c.chunk)

    with torch.no_grad():
        fwd = _time(forward, repeats)
    fwd_peak = _rss_mb() - base  # max RSS only grows: measured before any backward pass
    fwd_bwd = _time(lambda: forward().sum().backward(), repeats)
    return {
        "kind": kind,
        "T": t,
        "forward_s": fwd,
        "forward_backward_s": fwd_bwd,
        "forward_peak_mb": fwd_peak,
        "peak_mb": _rss_mb() - base,
        "malloc_env": {k: os.environ[k] for k in ALLOCATORS["retain"] if k in os.environ},
    }


def measure_step(t: int, repeats: int = 2 * BENCH_CFG.block) -> dict:
    """Per-event incremental step against a cache of t positions vs. a full forward of t + 1 positions.

    The step is timed as a run of `repeats` consecutive events (each appends one position to the
    cache, as serving does), mean per event: two whole blocks, so the once-a-block work
    (summarising the completed block, choosing the next block's selection) is included at its
    amortised share. The cache is filled by the same forward (from scratch, t positions)."""
    torch.manual_seed(0)
    layer = SparseAttention(H * DH, H, BENCH_CFG).eval()
    x = torch.randn(B, t + repeats + 1, H * DH)
    with torch.no_grad():
        step = _steps(layer, x, t, repeats)
        full = _time(lambda: layer(x[:, : t + 1], impl="efficient"), 3)
        dense_step = _steps(DenseCausalAttention(H * DH, H).eval(), x, t, repeats)
    return {"T": t, "step_s": step, "full_recompute_s": full, "speedup": full / step, "dense_step_s": dense_step}


def _steps(layer: torch.nn.Module, x: torch.Tensor, t: int, repeats: int) -> float:
    """Seconds per one-position `forward(x_t, cache)` after a cache of t positions, batch B."""
    c = BENCH_CFG
    cache = LayerCache.empty(B, H, t + repeats + 1, DH, c.block, c.num_selected, "float32", x.device)
    slots, ones = torch.arange(B), torch.ones(B, dtype=torch.long)

    def at(start: int, count: int) -> CachedCall:
        return CachedCall(cache, slots, torch.full((B,), start), ones * count)

    layer(x[:, :t], cache=at(0, t))
    layer(x[:, t : t + 1], cache=at(t, 1))  # warm-up; the timed run below rewrites position t
    t0 = time.perf_counter()
    for i in range(repeats):
        layer(x[:, t + i : t + i + 1], cache=at(t + i, 1))
    return (time.perf_counter() - t0) / repeats


def _child(kind: str, t: int, repeats: int, allocator: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ALLOCATORS["retain"]} | ALLOCATORS[allocator]
    out = subprocess.run(
        [sys.executable, "-m", "streamrec.bench.attention", "--child", kind, str(t), str(repeats)],
        capture_output=True,
        text=True,
        check=True,
        env=env,
    )
    return json.loads(out.stdout.strip().splitlines()[-1]) | {"allocator": allocator}


def measure_served_step(t: int, users: int, repeats: int = 20) -> dict:
    """The serving path's one-click step (models/live_encoder.py, as the worker runs it): one new
    click for each of `users` users whose cache holds t positions, sparse vs dense encoder of the
    MUFASA preset's shape (dim 64, 2 layers, 2 heads; block 16, 4 selected, window 32). Caches are
    filled with random state of the right shape: the step's cost does not depend on the values."""
    from streamrec.models.live_encoder import LiveEncoder, LiveEncoderConfig
    from streamrec.models.sequence_encoder import SequenceEncoder, SequenceEncoderConfig

    out: dict = {"T": t, "users": users}
    for kind in KINDS:
        torch.manual_seed(0)
        sparse = SparseAttentionConfig(block=16, num_selected=4, num_recent=1, window=32)
        cfg = SequenceEncoderConfig(dim=64, layers=2, heads=2, max_len=t + repeats + 1, attention=kind, sparse=sparse)
        live = LiveEncoder(SequenceEncoder(cfg).eval(), LiveEncoderConfig(slots=users))
        with torch.no_grad():
            for cache in live.caches:
                for part in (cache.k, cache.v, cache.kc, cache.vc):
                    part.normal_()
                cache.sel_idx.copy_(torch.randint(0, max(1, t // sparse.block), cache.sel_idx.shape))
                cache.sel_valid.fill_(True)
        slots = torch.arange(users)
        items = torch.randn(users, 64)
        live.length[slots] = t
        live.step(slots, items)  # warm-up
        live.length[slots] = t
        started = time.perf_counter()
        for _ in range(repeats):
            live.step(slots, items)  # each step appends one position: t, t+1, ... as a stream of clicks does
        per_batch = (time.perf_counter() - started) / repeats
        out[f"{kind}_batch_ms"] = per_batch * 1000
        out[f"{kind}_per_click_us"] = per_batch / users * 1e6
    out["sparse_over_dense"] = out["sparse_batch_ms"] / out["dense_batch_ms"]
    return out


def run_served_steps(lengths: list[int], users: int) -> list[dict]:
    rows = [measure_served_step(t, users) for t in lengths]
    print(f"\nserved one-click step, {users} users per batch, {torch.get_num_threads()} thread(s)")
    print(f"{'T':>6} {'sparse ms':>10} {'dense ms':>9} {'sparse/dense':>13} {'sparse us/click':>16}")
    for r in rows:
        print(
            f"{r['T']:>6} {r['sparse_batch_ms']:>10.2f} {r['dense_batch_ms']:>9.2f} {r['sparse_over_dense']:>13.2f}"
            f" {r['sparse_per_click_us']:>16.1f}"
        )
    return rows


def _print_table(rows: list[dict], lengths: list[int], allocator: str) -> None:
    print(f"\nallocator: {allocator}")
    print(
        f"{'T':>6} {'dense fwd':>10} {'sparse fwd':>11} {'x':>6} {'dense f+b':>10} {'sparse f+b':>11} {'x':>6}"
        f" {'fwd MB d/s':>11} {'f+b MB d/s':>11}"
    )
    for t in lengths:
        d, s = (next(r for r in rows if (r["T"], r["kind"], r["allocator"]) == (t, k, allocator)) for k in KINDS)
        print(
            f"{t:>6} {d['forward_s']:>10.4f} {s['forward_s']:>11.4f} {d['forward_s'] / s['forward_s']:>6.1f}"
            f" {d['forward_backward_s']:>10.4f} {s['forward_backward_s']:>11.4f}"
            f" {d['forward_backward_s'] / s['forward_backward_s']:>6.1f}"
            f" {d['forward_peak_mb']:>5.0f}/{s['forward_peak_mb']:<5.0f} {d['peak_mb']:>5.0f}/{s['peak_mb']:<5.0f}"
        )


def run(args: argparse.Namespace) -> int:
    served_lengths = [int(x) for x in args.served_lengths.split(",")]
    if args.served_only:
        served = run_served_steps(served_lengths, args.served_users)
        payload = {"served_step": served, "threads": torch.get_num_threads(), "machine": machine_load()}
        print(f"wrote {save_record(args.out, payload, 'attention')}")
        return 0
    lengths = [int(x) for x in args.lengths.split(",")]
    allocators = list(ALLOCATORS) if args.allocator == "both" else [args.allocator]
    rows = []
    for allocator in allocators:
        for t in lengths:
            for kind in KINDS:
                r = _child(kind, t, args.repeats, allocator)
                rows.append(r)
                print(
                    f"{allocator:<8} T={t:>6} {kind:<6} fwd {r['forward_s']:.4f}s"
                    f"  fwd+bwd {r['forward_backward_s']:.4f}s  peak fwd {r['forward_peak_mb']:.0f} MB,"
                    f" fwd+bwd {r['peak_mb']:.0f} MB",
                    flush=True,
                )
    steps = [measure_step(t) for t in lengths if t <= args.step_max]
    served = run_served_steps(served_lengths, args.served_users)
    for allocator in allocators:
        _print_table(rows, lengths, allocator)
    print(f"\n{'T':>6} {'step ms':>9} {'full ms':>9} {'x':>7} {'dense step ms':>14}")
    for s in steps:
        print(
            f"{s['T']:>6} {s['step_s'] * 1000:>9.2f} {s['full_recompute_s'] * 1000:>9.1f} {s['speedup']:>7.0f}"
            f" {s['dense_step_s'] * 1000:>14.2f}"
        )
    payload = {
        "batch": B,
        "heads": H,
        "head_dim": DH,
        "threads": torch.get_num_threads(),
        "repeats": args.repeats,
        "sparse_config": {k: getattr(BENCH_CFG, k) for k in ("block", "num_selected", "num_recent", "window")},
        "allocators": {a: ALLOCATORS[a] for a in allocators},
        "attention": rows,
        "incremental_step": steps,
        "served_step": served,
    }
    out = save_record(args.out, payload, "attention")
    _plot([r for r in rows if r["allocator"] == allocators[0]], out.with_suffix(".png"), allocators[0])
    print(f"wrote {out} and {out.with_suffix('.png')}")
    return 0


def _plot(rows: list[dict], path: Path, allocator: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    for kind, style in (("dense", "o-"), ("sparse", "s-")):
        rs = [r for r in rows if r["kind"] == kind]
        ts = [r["T"] for r in rs]
        axes[0].plot(ts, [r["forward_s"] for r in rs], style, label=kind)
        axes[1].plot(ts, [r["forward_backward_s"] for r in rs], style, label=kind)
        axes[2].plot(ts, [r["peak_mb"] for r in rs], style, label=f"{kind} fwd+bwd")
        axes[2].plot(ts, [r["forward_peak_mb"] for r in rs], style, alpha=0.5, label=f"{kind} fwd")
    for ax, title in zip(axes, ("forward (s)", "forward + backward (s)", "peak memory (MB)"), strict=True):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("sequence length T")
        ax.set_title(title)
        ax.legend()
    fig.suptitle(f"dense SDPA vs sparse attention, batch {B}, {H} heads, head dim {DH}, CPU, allocator {allocator}")
    fig.tight_layout()
    fig.savefig(path, dpi=90)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        print(json.dumps(measure_one(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))))
        return
    raise SystemExit("use `streamrec bench attention`")


if __name__ == "__main__":
    main()
