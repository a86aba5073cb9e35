"""Shared fixtures: the data directory, and a real local Kafka-protocol broker on a free port."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from streamrec.local.broker import LocalBroker, free_port, free_ports
from streamrec.settings import Settings, TopicNames


@pytest.fixture(scope="session")
def data_dir() -> Path:
    settings = Settings.from_env()
    if not (settings.data_dir / "ml-100k").is_dir():
        pytest.skip(f"datasets not found under {settings.data_dir}: set STREAMREC_DATA_DIR to run this test")
    return settings.data_dir


@pytest.fixture(scope="session")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalBroker]:
    """One noida-db broker for the session; tests isolate themselves with topic prefixes."""
    b = LocalBroker(tmp_path_factory.mktemp("broker"), free_port()).start()
    yield b
    b.stop()


@pytest.fixture
def stream_settings(broker: LocalBroker, tmp_path: Path, data_dir: Path) -> Settings:
    """Settings for one test: its own topics, consumer group, state directory and metrics port."""
    tag = uuid.uuid4().hex[:8]
    metrics_port, dashboard_port = free_ports(2)
    return replace(
        Settings.from_env(),
        data_dir=data_dir,
        kafka_bootstrap=broker.bootstrap,
        state_dir=tmp_path / "state",
        topics=TopicNames(prefix=f"t{tag}-"),
        app_id=f"streamrec-test-{tag}",
        partitions=2,
        metrics_port=metrics_port,
        dashboard_port=dashboard_port,
    )
