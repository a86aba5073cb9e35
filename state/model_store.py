"""The model store: versioned model directories and a pointer to the version being served.

Layout under `root`:
    <version>/model.pt      a checkpoint (weights only, config and metadata inside)
    <version>/meta.json     what made it: parent version, gate figures, time, items grown
    pointer.json            {"current": version, "history": [older, ..., current]}

Every write is atomic: a version is assembled in a hidden temporary directory and renamed into
place, and the pointer is written to a temporary file and renamed over the old one. A writer that
dies half-way leaves at most a `.tmp-*` directory that readers ignore (and `clean()` removes);
the version being served never changes until the pointer is replaced. Promotion appends to the
history; rollback returns to the entry before the current one, the same way.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

CHECKPOINT = "model.pt"
META = "meta.json"
POINTER = "pointer.json"


# Version names: one rule on every read and write (no path separators, no dot files), so a name
# that arrives from outside (an announcement on the models topic) can never reach a path outside
# the store.
VERSION_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


class ModelStoreError(RuntimeError):
    pass


def valid_version_name(version: object) -> bool:
    return isinstance(version, str) and VERSION_NAME.fullmatch(version) is not None


def _checked(version: object) -> str:
    if not valid_version_name(version):
        raise ModelStoreError(f"{version!r} is not a version name (letters, digits, '.', '_', '-'; no leading dot)")
    return str(version)


@dataclass(frozen=True)
class StoredVersion:
    version: str
    path: Path  # the checkpoint file
    meta: dict[str, Any]


def _write_json_atomic(path: Path, obj: object) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".json")
    with os.fdopen(fd, "w") as fh:
        json.dump(obj, fh, indent=2)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


class ModelStore:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    # --- versions ------------------------------------------------------------------------------

    def put(self, version: str, write_checkpoint: Callable[[Path], None], meta: dict[str, Any]) -> StoredVersion:
        """Store a new version: `write_checkpoint(path)` writes the checkpoint file. Not served
        until `promote`."""
        final = self.root / _checked(version)
        if final.exists():
            raise ModelStoreError(f"version {version} already exists in {self.root}")
        tmp = Path(tempfile.mkdtemp(dir=self.root, prefix=f".tmp-{version}-"))
        try:
            write_checkpoint(tmp / CHECKPOINT)
            assert (tmp / CHECKPOINT).is_file(), "write_checkpoint wrote no file"
            full_meta = {"version": version, "stored_at": time.time(), **meta}
            _write_json_atomic(tmp / META, full_meta)
            os.rename(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return StoredVersion(version, final / CHECKPOINT, full_meta)

    def get(self, version: str) -> StoredVersion:
        d = self.root / _checked(version)
        if not (d / META).is_file() or not (d / CHECKPOINT).is_file():
            raise ModelStoreError(f"no version {version} in {self.root}")
        return StoredVersion(version, d / CHECKPOINT, json.loads((d / META).read_text()))

    def has(self, version: str) -> bool:
        """Whether `version` is a valid name of a complete version in the store."""
        d = self.root / version
        return valid_version_name(version) and (d / META).is_file() and (d / CHECKPOINT).is_file()

    def versions(self) -> list[StoredVersion]:
        """Complete versions, oldest first; half-written ones (`.tmp-*`) are not versions."""
        found = [
            self.get(d.name)
            for d in self.root.iterdir()
            if d.is_dir() and valid_version_name(d.name) and (d / META).is_file() and (d / CHECKPOINT).is_file()
        ]
        return sorted(found, key=lambda v: (v.meta.get("stored_at", 0.0), v.version))

    def clean(self) -> int:
        """Remove leftovers of interrupted writes; returns how many."""
        leftovers = [p for p in self.root.iterdir() if p.name.startswith(".tmp-")]
        for p in leftovers:
            if p.is_dir():
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink(missing_ok=True)
        return len(leftovers)

    # --- the pointer ---------------------------------------------------------------------------

    def _pointer(self) -> dict[str, Any]:
        path = self.root / POINTER
        if not path.is_file():
            return {"current": None, "history": []}
        return json.loads(path.read_text())

    def current(self) -> StoredVersion | None:
        version = self._pointer()["current"]
        return self.get(version) if version else None

    def history(self) -> list[str]:
        return list(self._pointer()["history"])

    def promote(self, version: str) -> StoredVersion:
        """Serve `version` from now on (it must be stored)."""
        stored = self.get(version)
        pointer = self._pointer()
        history = [*pointer["history"], version]
        _write_json_atomic(self.root / POINTER, {"current": version, "history": history, "at": time.time()})
        return stored

    def rollback(self) -> StoredVersion:
        """Return to the version served before the current one."""
        pointer = self._pointer()
        history = list(pointer["history"])
        if len(history) < 2:
            raise ModelStoreError("nothing to roll back to: fewer than two versions were ever served")
        history.pop()
        previous = history[-1]
        stored = self.get(previous)
        _write_json_atomic(self.root / POINTER, {"current": previous, "history": history, "at": time.time()})
        return stored
