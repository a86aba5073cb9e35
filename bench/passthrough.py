"""A bare Faust passthrough agent: consume, decode JSON, send one message per input.

The ceiling the worker is compared with in `streamrec bench pipeline`, run on the same broker in
the same benchmark. Run as `python -m streamrec.bench.passthrough IN_TOPIC OUT_TOPIC`, with the
broker in KAFKA_BOOTSTRAP; it uses the worker's Faust settings (linger, commit interval) and its
wait after empty fetches.
"""

from __future__ import annotations

import json
import sys

import faust
from faust.worker import Worker

from streamrec.settings import Settings
from streamrec.stream.app import faust_settings
from streamrec.stream.empty_fetch import wait_after_empty_fetches


def main(in_topic: str, out_topic: str, app_id: str) -> None:
    settings = Settings.from_env()
    wait_after_empty_fetches(settings.empty_fetch_wait_ms)  # as in the worker, so the two compare
    conf = faust_settings(settings)
    conf["consumer_group_instance_id"] = None
    app = faust.App(app_id, **conf)
    source = app.topic(in_topic, value_type=bytes, key_type=bytes)
    sink = app.topic(out_topic, value_type=bytes, key_type=bytes)

    @app.agent(source, name=f"{app_id}-passthrough")
    async def passthrough(stream: faust.StreamT) -> None:
        async for event in stream.events():
            record = json.loads(event.value)
            await sink.send(key=event.key, value=json.dumps(record).encode())

    Worker(app, loglevel="warning", quiet=True).execute_from_commandline()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3])
