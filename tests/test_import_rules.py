"""Imports go one way: `models/` is pure torch (and the standard library); `state/` and `ops/` are
adapters that import neither Faust nor the stream wiring nor the models. Checked on the source, so
a lazy import inside a function counts too."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from streamrec.settings import PROJECT_ROOT


def imported_modules(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
    return names


def files(folder: str) -> list[Path]:
    found = sorted((PROJECT_ROOT / folder).glob("*.py"))
    assert found, f"no Python files in {folder}/"
    return found


@pytest.mark.parametrize("path", files("models"), ids=lambda p: p.name)
def test_models_import_only_torch_and_the_standard_library(path: Path) -> None:
    for name in imported_modules(path):
        top = name.split(".")[0]
        allowed = top in sys.stdlib_module_names or top == "torch" or name.startswith("streamrec.models")
        assert allowed, f"models/{path.name} imports {name}"


@pytest.mark.parametrize("path", files("state") + files("ops"), ids=lambda p: f"{p.parent.name}/{p.name}")
def test_adapters_import_no_faust_no_stream_wiring_no_models(path: Path) -> None:
    for name in imported_modules(path):
        assert name.split(".")[0] not in ("faust", "mode", "torch"), f"{path} imports {name}"
        assert not name.startswith(("streamrec.stream", "streamrec.models")), f"{path} imports {name}"


KAFKA = ("faust", "mode", "aiokafka", "kafka")


@pytest.mark.parametrize("path", files("serving"), ids=lambda p: p.name)
def test_the_serving_core_has_no_kafka(path: Path) -> None:
    for name in imported_modules(path):
        assert name.split(".")[0] not in KAFKA, f"serving/{path.name} imports {name}"


@pytest.mark.parametrize("path", files("training"), ids=lambda p: p.name)
def test_training_never_imports_serving(path: Path) -> None:
    for name in imported_modules(path):
        assert not name.startswith("streamrec.serving"), f"training/{path.name} imports {name}"
    if path.name == "online_trainer.py":
        assert not {n.split(".")[0] for n in imported_modules(path)} & set(KAFKA), "fine-tuning is plain code"


def test_the_worker_speaks_one_kafka_client_family() -> None:
    """Faust, its consumer and producer, the whole-topic readers, the range reader and the topic
    admin are all aiokafka: a worker process never loads kafka-python (checked at run time, so an
    import through any module the worker loads counts)."""
    code = (
        "import sys\n"
        "import streamrec.stream.worker, streamrec.stream.app, streamrec.stream.prefork, streamrec.cli\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'kafka'))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert done.stdout.strip() == "[]", f"the worker loads kafka-python: {done.stdout.strip()}"
