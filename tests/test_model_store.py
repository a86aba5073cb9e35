"""The model store on a real filesystem: versions, promotion, rollback, and writers that die."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from streamrec.state.model_store import ModelStore, ModelStoreError


def writer(payload: bytes):  # noqa: ANN201 - a checkpoint writer
    def write(path: Path) -> None:
        path.write_bytes(payload)

    return write


def test_put_promote_and_rollback(tmp_path: Path) -> None:
    store = ModelStore(tmp_path)
    assert store.current() is None and store.versions() == []
    store.put("v1", writer(b"one"), {"parent": None})
    assert store.current() is None, "stored is not served"
    store.promote("v1")
    store.put("v2", writer(b"two"), {"parent": "v1"})
    store.promote("v2")
    current = store.current()
    assert current is not None and current.version == "v2" and current.path.read_bytes() == b"two"
    assert current.meta["parent"] == "v1"
    assert [v.version for v in store.versions()] == ["v1", "v2"]
    back = store.rollback()
    assert back.version == "v1" and store.current().version == "v1"
    assert store.history() == ["v1"]
    with pytest.raises(ModelStoreError):
        store.rollback()  # nothing before v1
    with pytest.raises(ModelStoreError):
        store.put("v1", writer(b"again"), {})  # versions are immutable
    with pytest.raises(ModelStoreError):
        store.promote("v9")  # only stored versions are served


def test_a_writer_that_fails_leaves_no_version_and_the_pointer_untouched(tmp_path: Path) -> None:
    store = ModelStore(tmp_path)
    store.put("v1", writer(b"one"), {})
    store.promote("v1")

    def dies(path: Path) -> None:
        path.write_bytes(b"half a checkpoint")
        raise RuntimeError("trainer crashed mid-write")

    with pytest.raises(RuntimeError):
        store.put("v2", dies, {})
    assert [v.version for v in store.versions()] == ["v1"]
    assert store.current().version == "v1"
    assert not list(tmp_path.glob(".tmp-*")), "the failed write cleaned up after itself"


def test_a_process_killed_mid_write_leaves_the_store_consistent(tmp_path: Path) -> None:
    store = ModelStore(tmp_path)
    store.put("v1", writer(b"one"), {})
    store.promote("v1")
    # A child process starts writing v2 and is killed (SIGKILL: no cleanup runs).
    code = (
        "import os, signal, sys; from pathlib import Path; from streamrec.state.model_store import ModelStore\n"
        "def w(p):\n"
        "    p.write_bytes(b'partial'); os.kill(os.getpid(), signal.SIGKILL)\n"
        f"ModelStore(Path({str(tmp_path)!r})).put('v2', w, {{}})\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], check=False)
    assert proc.returncode == -9
    assert list(tmp_path.glob(".tmp-v2-*")), "the killed writer left its temporary directory"
    assert [v.version for v in store.versions()] == ["v1"], "a half-written version is not a version"
    assert store.current().version == "v1"
    assert json.loads((tmp_path / "pointer.json").read_text())["current"] == "v1"
    assert store.clean() == 1 and not list(tmp_path.glob(".tmp-*"))
