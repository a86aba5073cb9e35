"""The same pipeline check against real Apache Kafka (KRaft) in Docker, via testcontainers.

Runs where a Docker engine answers; elsewhere it is skipped with the engine's own error as reason.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from streamrec.local.broker import free_port, port_open
from streamrec.settings import Settings

from .test_pipeline_integration import check_replay_pipeline

KAFKA_IMAGE = "apache/kafka:3.9.1"


def docker_unavailable() -> str | None:
    try:
        import docker

        docker.from_env().ping()
    except Exception as exc:  # noqa: BLE001 - any failure means "no engine here"; its text is the reason
        return f"no Docker engine answers ({type(exc).__name__}: {str(exc)[:120]})"
    return None


REASON = docker_unavailable()
pytestmark = [pytest.mark.docker, pytest.mark.skipif(REASON is not None, reason=REASON or "")]


@pytest.fixture(scope="module")
def apache_kafka() -> Iterator[str]:
    from testcontainers.core.container import DockerContainer

    port = free_port()
    container = (
        DockerContainer(KAFKA_IMAGE)
        .with_bind_ports(9092, ("127.0.0.1", port))
        .with_env("KAFKA_NODE_ID", "1")
        .with_env("KAFKA_PROCESS_ROLES", "broker,controller")
        .with_env("KAFKA_LISTENERS", "PLAINTEXT://:9092,CONTROLLER://:9093")
        .with_env("KAFKA_ADVERTISED_LISTENERS", f"PLAINTEXT://127.0.0.1:{port}")
        .with_env("KAFKA_CONTROLLER_LISTENER_NAMES", "CONTROLLER")
        .with_env("KAFKA_CONTROLLER_QUORUM_VOTERS", "1@localhost:9093")
        .with_env("KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR", "1")
        .with_env("KAFKA_GROUP_INITIAL_REBALANCE_DELAY_MS", "0")
    )
    with container:
        deadline = time.monotonic() + 120
        while not port_open(port):
            assert time.monotonic() < deadline, "Apache Kafka did not open its port"
            time.sleep(0.5)
        yield f"127.0.0.1:{port}"


def test_pipeline_on_apache_kafka(apache_kafka: str, stream_settings: Settings, tmp_path: Path) -> None:
    check_replay_pipeline(replace(stream_settings, kafka_bootstrap=apache_kafka), tmp_path, n_clicks=1000)
