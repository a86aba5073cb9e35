"""Checkpoints that load safely: weights only (`torch.load(weights_only=True)`), with the model's
config and a version string stored beside them as plain data."""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from streamrec.models.cammsr_moe import MoEConfig
from streamrec.models.modality_swap import SwapConfig
from streamrec.models.mufasa_fusion import FusionConfig
from streamrec.models.seqrec import SeqRecConfig
from streamrec.models.sequence_encoder import SequenceEncoderConfig
from streamrec.models.sparse_attention import SparseAttentionConfig

FORMAT = 1


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
    )


def save_checkpoint(path: Path, model: torch.nn.Module, cfg: SeqRecConfig, version: str, meta: dict) -> None:
    """Written to a temporary file and renamed, so a reader never sees half a checkpoint."""
    payload = {
        "format": FORMAT,
        "version": version,
        "config": json.dumps(config_to_dict(cfg)),
        "meta": json.dumps(meta),
        "state_dict": model.state_dict(),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    os.close(fd)
    torch.save(payload, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: Path, map_location: str = "cpu") -> tuple[SeqRecConfig, dict[str, torch.Tensor], str, dict]:
    payload = torch.load(path, map_location=map_location, weights_only=True)
    assert payload.get("format") == FORMAT, f"{path}: unknown checkpoint format {payload.get('format')}"
    return (
        config_from_dict(json.loads(payload["config"])),
        payload["state_dict"],
        payload["version"],
        json.loads(payload["meta"]),
    )
