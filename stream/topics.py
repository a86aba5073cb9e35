"""Creates the topics with the partition counts and configs streamrec needs.

Neither Faust nor noida-db create input topics the way we want them (noida creates one partition
on first use), so every entry point calls `ensure_topics` before producing or consuming.
`recommendations` is compacted: keyed by user id, the broker keeps at least each user's latest
record, so "the current recommendations of every user" is one read of the topic, not a replay of
its history. A topic created before this setting existed gets it on the next `ensure_topics`.
`STREAMREC_RETENTION_MINUTES` bounds how long the broker keeps the high-volume topics.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.errors import KafkaError, TopicAlreadyExistsError, for_code

from streamrec.settings import Settings, TopicNames


def topic_partitions(topics: TopicNames, partitions: int) -> dict[str, int]:
    """Clicks and recommendations are partitioned by user; the catalogue has one partition so one
    consumer sees every item in order; dead letters and model announcements are low-volume."""
    return {
        topics.clicks: partitions,
        topics.recommendations: partitions,
        topics.catalogue: 1,
        topics.dead_letters: 1,
        topics.models: 1,
    }


def topic_configs(topics: TopicNames, retention_minutes: float = 0.0) -> dict[str, dict[str, str]]:
    """Topic configs; with `retention_minutes`, records older than that are deleted from clicks,
    recommendations (compacted and deleted: a user idle for longer loses the latest record) and
    dead letters, so a long-running broker stays bounded (noida-db holds every record in memory).
    The catalogue is never time-limited: a worker rebuilds its index by reading it from the start."""
    if not retention_minutes:
        return {topics.recommendations: {"cleanup.policy": "compact"}}
    ms = int(retention_minutes * 60_000)
    # Retention deletes whole segments, and a segment rolls only after segment.ms (7 days by
    # default): roll a quarter of the retention, so records live between 1 and 1.25 times it.
    kept = {"retention.ms": str(ms), "segment.ms": str(max(1, ms // 4))}
    return {
        topics.clicks: kept,
        topics.recommendations: {"cleanup.policy": "compact,delete", **kept},
        topics.dead_letters: kept,
    }


def _raise_for(code: int, what: str) -> None:
    """aiokafka's admin client returns the broker's error codes inside its responses."""
    if code:
        raise for_code(code)(what)


async def _configure(admin: AIOKafkaAdminClient, configs: dict[str, dict[str, str]]) -> None:
    """Set the configs of existing topics that lack them (an upgrade of an older deployment)."""
    responses = await admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, name) for name in configs])
    current: dict[str, dict[str, Any]] = {}
    for response in responses:
        for error_code, _message, _type, name, entries, *_ in response.resources:
            _raise_for(error_code, f"describe configs of {name}")
            current[name] = {entry[0]: entry[1] for entry in entries}
    stale = {
        name: wanted
        for name, wanted in configs.items()
        if any(current.get(name, {}).get(k) != v for k, v in wanted.items())
    }
    if stale:
        answers = await admin.alter_configs(
            [ConfigResource(ConfigResourceType.TOPIC, n, configs=c) for n, c in stale.items()]
        )
        for response in answers:
            for error_code, _message, _type, name, *_ in response.resources:
                _raise_for(error_code, f"alter configs of {name}")


async def _started_admin(bootstrap: str, deadline: float) -> AIOKafkaAdminClient:
    while True:
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, client_id="streamrec-admin")
        try:
            await admin.start()
            return admin
        except KafkaError:
            await admin.close()
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.2)


async def ensure_topics_async(
    bootstrap: str, topics: TopicNames, partitions: int, timeout_s: float = 30.0, retention_minutes: float = 0.0
) -> dict[str, int]:
    """`ensure_topics` on the caller's event loop."""
    wanted = topic_partitions(topics, partitions)
    admin = await _started_admin(bootstrap, time.monotonic() + timeout_s)
    try:
        existing = set(await admin.list_topics())
        configs = topic_configs(topics, retention_minutes)
        new = [
            NewTopic(name, n, 1, topic_configs=configs.get(name, {}))
            for name, n in wanted.items()
            if name not in existing
        ]
        if new:
            created = await admin.create_topics(new)
            for name, error_code, *_ in created.topic_errors:
                if error_code != TopicAlreadyExistsError.errno:  # another process created it meanwhile
                    _raise_for(error_code, f"create topic {name}")
        await _configure(admin, configs)
        described = await admin.describe_topics(list(wanted))
        counts = {d["topic"]: len(d["partitions"]) for d in described}
    except KafkaError as exc:
        raise RuntimeError(f"could not create topics on {bootstrap}: {exc}") from exc
    finally:
        await admin.close()
    return counts


def ensure_topics(
    bootstrap: str, topics: TopicNames, partitions: int, timeout_s: float = 30.0, retention_minutes: float = 0.0
) -> dict[str, int]:
    """Create missing topics; returns the partition count of each as the broker reports it. Runs
    its own event loop, so it is called from plain code or a thread (the worker ensures topics in
    a thread while its modules load), never from a running loop: that one awaits
    `ensure_topics_async`."""
    return asyncio.run(ensure_topics_async(bootstrap, topics, partitions, timeout_s, retention_minutes))


def ensure_topics_for(settings: Settings) -> dict[str, int]:
    """`ensure_topics` with the broker, names, partitions and retention the settings give."""
    return ensure_topics(
        settings.kafka_bootstrap, settings.topics, settings.partitions, retention_minutes=settings.retention_minutes
    )
