"""A raw aiokafka consume-produce loop: the ceiling of the broker and the client library alone.

Beside the bare Faust passthrough (bench/passthrough.py) in `streamrec bench pipeline`: the same
work per message (decode JSON, encode it, send one message per input), in batches from `getmany`,
each batch's sends awaited together and its offsets committed once, with the worker's wait after
empty fetches. The gap between this loop and
the Faust passthrough is Faust's own per-event cost. Run as
`python -m streamrec.bench.raw_loop IN_TOPIC OUT_TOPIC GROUP`, with the broker in KAFKA_BOOTSTRAP.
"""

from __future__ import annotations

import asyncio
import json
import signal
import sys

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from streamrec.settings import Settings
from streamrec.stream.empty_fetch import wait_after_empty_fetches


async def run(in_topic: str, out_topic: str, group: str) -> None:
    settings = Settings.from_env()
    wait_after_empty_fetches(settings.empty_fetch_wait_ms)  # as in the worker, so the two compare
    consumer = AIOKafkaConsumer(
        in_topic,
        bootstrap_servers=settings.kafka_bootstrap,
        group_id=group,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
    )
    producer = AIOKafkaProducer(
        bootstrap_servers=settings.kafka_bootstrap, linger_ms=settings.producer_linger_ms, acks=1
    )
    await consumer.start()
    await producer.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        while not stop.is_set():
            batches = await consumer.getmany(timeout_ms=100, max_records=settings.batch_size)
            sent = []
            for messages in batches.values():
                for m in messages:
                    record = json.loads(m.value)
                    sent.append(await producer.send(out_topic, json.dumps(record).encode(), key=m.key))
            if sent:
                await asyncio.gather(*sent)
                await consumer.commit()
    finally:
        await producer.stop()
        await consumer.stop()


if __name__ == "__main__":
    asyncio.run(run(sys.argv[1], sys.argv[2], sys.argv[3]))
