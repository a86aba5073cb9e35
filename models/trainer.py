"""Training with early stopping on validation NDCG@10, and full-ranking evaluation.

Every model (SASRec, MUFASA, CAMMSR and their ablations) is trained by this one loop on the same
leave-one-out split with the same objective. Evaluation ranks the target against every item of the
catalogue, reported twice: over all items, and with the user's history items excluded (the target
itself is never excluded). Model selection uses NDCG@10 with history excluded.
"""

from __future__ import annotations

import copy
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from streamrec.models.checkpoint import save_atomic
from streamrec.models.ranking_metrics import mask_history, metrics_from_ranks, target_rank
from streamrec.models.seqrec import SeqRec
from streamrec.models.sequence_data import Split, eval_batches, training_batches


@dataclass(frozen=True)
class TrainConfig:
    # A safety cap high enough never to decide a run (text-only SASRec on ml-100k at patience 30
    # was still rising at 200, docs/results.md "Patience 30"); validation patience stops runs.
    epochs: int = 1000
    batch_size: int = 256
    lr: float = 1e-3
    weight_decay: float = 0.0
    patience: int = 10  # evaluations without a better validation NDCG@10 before stopping
    seed: int = 0
    max_minutes: float = 28.0  # wall-clock budget; the best model so far is kept
    eval_batch: int = 512
    max_steps_per_epoch: int = 0  # 0 = all; tiny values for smoke tests
    # Hygiene (docs/models.md, "Training"): linear learning-rate warm-up over the first steps,
    # gradient-norm clipping (0 = off), and epochs before patience starts counting.
    warmup_steps: int = 0
    clip_norm: float = 0.0
    min_epochs: int = 0


def pick_device(choice: str = "auto") -> torch.device:
    """ "auto": CUDA when present, CPU otherwise (the same code runs on both); else the device named."""
    if choice == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(choice)


class _StepLine:
    """One in-place progress line on a terminal (steps and loss), redrawn at most once a second;
    silent when disabled or when stderr is not a terminal (logs and CI keep the epoch lines only)."""

    def __init__(self, epoch: int, total: int, enabled: bool) -> None:
        self.epoch, self.total, self.step = epoch, total, 0
        self.enabled = enabled and sys.stderr.isatty()
        self.drawn = 0.0

    def update(self, loss: float) -> None:
        self.step += 1
        if self.enabled and time.monotonic() - self.drawn >= 1.0:
            self.drawn = time.monotonic()
            print(
                f"\repoch {self.epoch}: {self.step}/{self.total} loss {loss:.3f}", end="", file=sys.stderr, flush=True
            )

    def close(self) -> None:
        if self.enabled and self.drawn:
            print("\r\033[K", end="", file=sys.stderr, flush=True)


@torch.no_grad()
def evaluate(
    model: SeqRec, pairs: list[tuple[list[int], int]], batch: int, device: torch.device, keep_ranks: bool = False
) -> dict[str, dict]:
    """Full-ranking metrics: {"all": {...}, "excl_history": {...}}; with `keep_ranks`, also
    "ranks": {"all": [...], "excl_history": [...]}, each user's target rank (from 1) in the order of
    `pairs`, so two models evaluated on one split can be compared user by user (bench/paired.py)."""
    model.eval()
    table = model.item_table()
    ranks_all, ranks_excl = [], []
    for seqs, lengths, targets, history in eval_batches(pairs, model.cfg.encoder.max_len, batch):
        seqs, lengths, targets, history = (x.to(device) for x in (seqs, lengths, targets, history))
        scores = model.recommend_scores(seqs, lengths, table)  # (B, N+1)
        ranks_all.append(target_rank(scores, targets))
        ranks_excl.append(target_rank(mask_history(scores, history, targets), targets))
    r_all, r_excl = torch.cat(ranks_all).cpu(), torch.cat(ranks_excl).cpu()
    out: dict[str, dict] = {"all": metrics_from_ranks(r_all), "excl_history": metrics_from_ranks(r_excl)}
    if keep_ranks:
        out["ranks"] = {"all": r_all.tolist(), "excl_history": r_excl.tolist()}
    return out


@dataclass
class TrainResult:
    best_epoch: int
    best_valid: dict
    test: dict
    epochs_run: int
    seconds: float
    history: list[dict] = field(default_factory=list)
    stopped_by: str = "epochs"  # "patience", "budget" (the wall clock) or "epochs" (all were run)
    # One entry per piece of a run continued from its saved state (one piece when never resumed):
    # its epochs, seconds and what `piece_info` said about it (command, commit, machine load).
    pieces: list[dict] = field(default_factory=list)


# The caps may grow when a run is continued; every other setting must be the saved run's.
_CAPS = ("epochs", "max_minutes")
_STATE_VERSION = 1


def load_train_state(path: Path) -> dict:
    state = torch.load(path, map_location="cpu", weights_only=False)
    assert state.get("version") == _STATE_VERSION, f"{path}: training state version {state.get('version')}"
    return state


def resume_conflicts(state: dict, cfg: TrainConfig, tag: dict) -> list[str]:
    """The settings (other than the caps) in which a saved training state differs from this run's."""
    now, then = asdict(cfg), state["train_config"]
    differ = [f"{k} {then.get(k)} -> {v}" for k, v in now.items() if k not in _CAPS and then.get(k) != v]
    return differ + [f"{k} differs" for k in sorted(set(tag) | set(state["tag"])) if tag.get(k) != state["tag"].get(k)]


def train(
    model: SeqRec,
    split: Split,
    cfg: TrainConfig,
    device: torch.device,
    progress: bool = True,
    on_best: Callable[[SeqRec, int, dict], None] | None = None,
    state_file: Path | None = None,
    resume_from: dict | None = None,
    tag: dict | None = None,
    piece_info: Callable[[], dict] | None = None,
) -> TrainResult:
    """Train with validation early stopping; keep and evaluate the best epoch's weights.

    With `state_file`, everything the loop needs to go on (weights, optimizer, warm-up step, both
    random streams, best epoch, patience, history, minutes spent) is saved there after every
    epoch; `resume_from` (that state, loaded) continues the run where it stopped, so a run cut by
    its caps or killed goes on exactly as if it had not been stopped (tests/test_models.py).
    `tag` names what else the state must match (dataset, model settings); `piece_info` describes
    the running piece for the record.
    """
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    model.to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    warmup = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / cfg.warmup_steps) if cfg.warmup_steps else 1.0
    )
    started = time.monotonic()
    best_score, best_epoch, best_state, best_valid = -1.0, 0, None, {}
    history: list[dict] = []
    pieces: list[dict] = []
    waited = 0
    epoch = 0
    stopped_by = "epochs"
    if resume_from is not None:
        saved = resume_from
        model.load_state_dict(saved["model"])
        opt.load_state_dict(saved["optimizer"])
        warmup.load_state_dict(saved["scheduler"])
        torch.set_rng_state(saved["torch_rng"])
        gen.set_state(saved["batch_rng"])
        if device.type == "cuda" and saved["cuda_rng"] is not None:
            torch.cuda.set_rng_state_all(saved["cuda_rng"])
        started -= saved["seconds"]  # the caps and the history's minutes count the whole run
        best_score, best_epoch = saved["best_score"], saved["best_epoch"]
        best_valid, best_state = saved["best_valid"], saved["best_state"]
        history, pieces, waited, epoch = saved["history"], saved["pieces"], saved["waited"], saved["epoch"]
        # A run that patience ended stays ended; one cut by a cap goes on under the caps given now.
        stopped_by = saved["stopped_by"]
    first = epoch + 1
    last = epoch if stopped_by == "patience" else cfg.epochs
    piece_started = time.monotonic()
    steps_per_epoch = (len(split.train) + cfg.batch_size - 1) // cfg.batch_size
    if cfg.max_steps_per_epoch:
        steps_per_epoch = min(steps_per_epoch, cfg.max_steps_per_epoch)
    if first <= last:
        pieces.append({"first_epoch": first})
    for epoch in range(first, last + 1):
        model.train()
        totals: dict[str, float] = {}
        bar = _StepLine(epoch, steps_per_epoch, progress)
        for step, (seqs, targets) in enumerate(
            training_batches(split.train, model.cfg.encoder.max_len, cfg.batch_size, gen)
        ):
            if cfg.max_steps_per_epoch and step >= cfg.max_steps_per_epoch:
                break
            losses = model.training_losses(seqs.to(device), targets.to(device))
            loss = sum(losses.values())
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.clip_norm > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.clip_norm)
            opt.step()
            warmup.step()
            for k, v in losses.items():
                totals[k] = totals.get(k, 0.0) + float(v.detach())
            bar.update(float(loss.detach()))
        bar.close()
        valid = evaluate(model, split.valid, cfg.eval_batch, device)
        score = valid["excl_history"]["NDCG@10"]
        history.append(
            {
                "epoch": epoch,
                "minutes": round((time.monotonic() - started) / 60, 2),
                "losses": {k: v / max(1, steps_per_epoch) for k, v in totals.items()},
                "valid": valid,
            }
        )
        if progress:
            print(f"epoch {epoch}: valid NDCG@10 {score:.4f} (all items {valid['all']['NDCG@10']:.4f})", flush=True)
        if score > best_score:
            best_score, best_epoch, best_valid, waited = score, epoch, valid, 0
            best_state = copy.deepcopy(model.state_dict())
            if on_best is not None:
                on_best(model, epoch, valid)
        elif epoch > cfg.min_epochs:
            waited += 1  # a dip before min_epochs (SASRec's early one) does not count
        stopped_by = "epochs"
        if waited >= cfg.patience:
            stopped_by = "patience"
        elif (time.monotonic() - started) / 60 > cfg.max_minutes:
            stopped_by = "budget"
        pieces[-1].update(
            last_epoch=epoch, seconds=round(time.monotonic() - piece_started, 1), **(piece_info() if piece_info else {})
        )
        if state_file is not None:
            save_atomic(
                state_file,
                {
                    "version": _STATE_VERSION,
                    "tag": tag or {},
                    "train_config": asdict(cfg),
                    "epoch": epoch,
                    "seconds": time.monotonic() - started,
                    "model": model.state_dict(),
                    "optimizer": opt.state_dict(),
                    "scheduler": warmup.state_dict(),
                    "torch_rng": torch.get_rng_state(),
                    "batch_rng": gen.get_state(),
                    "cuda_rng": torch.cuda.get_rng_state_all() if device.type == "cuda" else None,
                    "best_score": best_score,
                    "best_epoch": best_epoch,
                    "best_valid": best_valid,
                    "best_state": best_state,
                    "waited": waited,
                    "history": history,
                    "pieces": pieces,
                    "stopped_by": stopped_by,
                },
            )
        if stopped_by != "epochs":
            break
    assert best_state is not None, "no epoch was run"
    model.load_state_dict(best_state)
    test = evaluate(model, split.test, cfg.eval_batch, device, keep_ranks=True)
    return TrainResult(best_epoch, best_valid, test, epoch, time.monotonic() - started, history, stopped_by, pieces)
