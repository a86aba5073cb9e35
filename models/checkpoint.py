"""Checkpoints that load safely: weights only (`torch.load(weights_only=True)`), with the model's
config and a version string stored beside them as plain data, and optionally the item catalogue
the model was trained on (`catalogue`: plain tensors and strings), so serving never re-reads the
training files. A file that is not such a checkpoint raises `CheckpointError` naming the file."""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
import warnings
from pathlib import Path
from typing import Any

import torch

from streamrec.models.cammsr_moe import MoEConfig
from streamrec.models.cold_start import ColdStartConfig
from streamrec.models.modality_swap import SwapConfig
from streamrec.models.mufasa_fusion import FusionConfig
from streamrec.models.seqrec import SeqRecConfig
from streamrec.models.sequence_encoder import SequenceEncoderConfig
from streamrec.models.sparse_attention import SparseAttentionConfig

FORMAT = 1


class CheckpointError(ValueError):
    """A file that is not a readable streamrec checkpoint."""


def config_to_dict(cfg: SeqRecConfig) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def config_from_dict(d: dict[str, Any]) -> SeqRecConfig:
    enc = dict(d["encoder"])
    sp = dict(enc.pop("sparse"))
    sp["branches"] = tuple(sp["branches"])
    return SeqRecConfig(
        n_items=d["n_items"],
        item_encoder=d["item_encoder"],
        encoder=SequenceEncoderConfig(**enc, sparse=SparseAttentionConfig(**sp)),
        fusion=FusionConfig(**d["fusion"]),
        moe=MoEConfig(**d["moe"]),
        swap=SwapConfig(**d["swap"]),
        id_dropout=d["id_dropout"],
        id_evidence=d.get("id_evidence", 0.0),  # absent from checkpoints written before it existed
        # Checkpoints written before the new-item calibration existed score new items uncalibrated.
        cold=ColdStartConfig(**d.get("cold", {})),
    )


def save_checkpoint(
    path: Path,
    model: torch.nn.Module,
    cfg: SeqRecConfig,
    version: str,
    meta: dict,
    catalogue: dict[str, Any] | None = None,
) -> None:
    """Written to a temporary file and renamed, so a reader never sees half a checkpoint."""
    payload = {
        "format": FORMAT,
        "version": version,
        "config": json.dumps(config_to_dict(cfg)),
        "meta": json.dumps(meta),
        "state_dict": model.state_dict(),
    }
    if catalogue is not None:
        payload["catalogue"] = catalogue
    save_atomic(path, payload)


def save_atomic(path: Path, payload: Any) -> None:
    """torch.save to a temporary file beside `path`, then renamed: a reader, or a run killed
    mid-write, never leaves half a file at `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    os.close(fd)
    torch.save(payload, tmp)
    os.replace(tmp, path)


def _read(path: Path, map_location: str) -> dict[str, Any]:
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}")
    try:
        # torch warns about odd pickle headers before failing on them; the one-line error below
        # says what matters (not a checkpoint), so its warnings would only add noise.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable file is reported as one thing: not a checkpoint
        raise CheckpointError(f"{path} is not a streamrec checkpoint ({type(exc).__name__})") from exc
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        found = payload.get("format") if isinstance(payload, dict) else type(payload).__name__
        raise CheckpointError(f"{path} is not a streamrec checkpoint of format {FORMAT} (found {found!r})")
    return payload


@dataclasses.dataclass(frozen=True)
class Checkpoint:
    config: SeqRecConfig
    state_dict: dict[str, torch.Tensor]
    version: str
    meta: dict[str, Any]
    catalogue: dict[str, Any] | None  # None for checkpoints written before catalogues travelled


def read_checkpoint(path: Path, map_location: str = "cpu") -> Checkpoint:
    payload = _read(path, map_location)
    try:
        return Checkpoint(
            config_from_dict(json.loads(payload["config"])),
            payload["state_dict"],
            payload["version"],
            json.loads(payload["meta"]),
            payload.get("catalogue"),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{path} is a damaged streamrec checkpoint ({type(exc).__name__}: {exc})") from exc


def load_checkpoint(path: Path, map_location: str = "cpu") -> tuple[SeqRecConfig, dict[str, torch.Tensor], str, dict]:
    ck = read_checkpoint(path, map_location)
    return ck.config, ck.state_dict, ck.version, ck.meta
