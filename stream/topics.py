"""Creates the topics with the partition counts streamrec needs.

Neither Faust nor noida-db create input topics the way we want them (noida creates one partition
on first use), so every entry point calls `ensure_topics` before producing or consuming.
"""

from __future__ import annotations

import time

from kafka import KafkaAdminClient
from kafka.admin import NewTopic
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
        new = [NewTopic(name, n, 1) for name, n in wanted.items() if name not in existing]
        if new:
            try:
                admin.create_topics(new)
            except TopicAlreadyExistsError:
                pass
        described = admin.describe_topics(list(wanted))
        counts = {d.get("name", d.get("topic")): len(d["partitions"]) for d in described}
    except KafkaError as exc:
        raise RuntimeError(f"could not create topics on {bootstrap}: {exc}") from exc
    finally:
        admin.close()
    return counts
