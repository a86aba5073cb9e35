"""Creates the topics with the partition counts and configs streamrec needs.

Neither Faust nor noida-db create input topics the way we want them (noida creates one partition
on first use), so every entry point calls `ensure_topics` before producing or consuming.
`recommendations` is compacted: keyed by user id, the broker keeps at least each user's latest
record, so "the current recommendations of every user" is one read of the topic, not a replay of
its history. A topic created before this setting existed gets it on the next `ensure_topics`.
"""

from __future__ import annotations

import time

from kafka import KafkaAdminClient
from kafka.admin import ConfigResource, ConfigResourceType, NewTopic
from kafka.errors import KafkaConnectionError, KafkaError, TopicAlreadyExistsError

from streamrec.settings import TopicNames


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


def topic_configs(topics: TopicNames) -> dict[str, dict[str, str]]:
    return {topics.recommendations: {"cleanup.policy": "compact"}}


def _configure(admin: KafkaAdminClient, configs: dict[str, dict[str, str]]) -> None:
    """Set the configs of existing topics that lack them (an upgrade of an older deployment)."""
    resources = [ConfigResource(ConfigResourceType.TOPIC, name) for name in configs]
    described = admin.describe_configs(resources)
    current = described.get("topic", {}) if isinstance(described, dict) else {}
    stale = {
        name: wanted
        for name, wanted in configs.items()
        if any(current.get(name, {}).get(k, {}).get("value") != v for k, v in wanted.items())
    }
    if stale:
        admin.alter_configs([ConfigResource(ConfigResourceType.TOPIC, n, configs=c) for n, c in stale.items()])


def ensure_topics(bootstrap: str, topics: TopicNames, partitions: int, timeout_s: float = 30.0) -> dict[str, int]:
    """Create missing topics; returns the partition count of each as the broker reports it."""
    wanted = topic_partitions(topics, partitions)
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            admin = KafkaAdminClient(bootstrap_servers=bootstrap, client_id="streamrec-admin")
            break
        except (KafkaConnectionError, KafkaError):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)
    try:
        existing = set(admin.list_topics())
        configs = topic_configs(topics)
        new = [
            NewTopic(name, n, 1, topic_configs=configs.get(name, {}))
            for name, n in wanted.items()
            if name not in existing
        ]
        if new:
            try:
                admin.create_topics(new)
            except TopicAlreadyExistsError:
                pass
        _configure(admin, configs)
        described = admin.describe_topics(list(wanted))
        counts = {d.get("name", d.get("topic")): len(d["partitions"]) for d in described}
    except KafkaError as exc:
        raise RuntimeError(f"could not create topics on {bootstrap}: {exc}") from exc
    finally:
        admin.close()
    return counts
