"""`streamrec bench newitems`: new items live, on a real broker with a worker and the online trainer.

The checkpoint comes from `streamrec bench coldstart --save`: trained with a share of the catalogue
held out (listed in its metadata) and carrying the new-item calibration fitted on validation. The
worker starts with every other item; the held-out items are published on the catalogue topic
during the replay, each `--lead` clicks before its first click, as a shop adds a product shortly
before anyone buys it. The last `--clicks` clicks of the dataset (by time) are replayed at
`--rate`; the online trainer fine-tunes every `--every` clicks and the worker swaps in what it
promotes. From the recommendations topic, reported:

  * the share of recommended slots holding a held-out (new) item, and the shares flagged `new`
    (calibrated) and `explore` (quota slot);
  * live hit rate: for each click by a user who had an earlier recommendation in the replay,
    whether the clicked item was in that previous top-K, separately for clicks on new and on warm
    items, and by the model version that made the previous list (how it changes as the trainer
    promotes versions).
"""

from __future__ import annotations

import argparse
import tempfile
import threading
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from streamrec.bench.machine import machine_load, save_record
from streamrec.bench.online import worker_and_trainer_settings
from streamrec.datasets import load_dataset
from streamrec.datasets.schema import Event, Item
from streamrec.errors import UserError
from streamrec.local.broker import LocalBroker, free_port
from streamrec.local.processes import start_trainer, start_worker
from streamrec.models.checkpoint import read_checkpoint
from streamrec.settings import Settings
from streamrec.state.model_store import ModelStore
from streamrec.stream.rec_consumer import RecommendationReader
from streamrec.stream.replay import Delivery, Paced, catalogue_record, click_record, make_producer
from streamrec.stream.schemas import RecommendationRecord, encode, now_ms
from streamrec.stream.topics import ensure_topics_for
from streamrec.training.online_trainer import import_checkpoint

DEAD_LETTERS = "streamrec_stream_dead_letters_total"


@dataclass(frozen=True)
class Step:
    """One thing to publish: a catalogue item or a click."""

    item: Item | None = None
    click: Event | None = None


def interleave(clicks: list[Event], new_items: dict[str, Item], lead: int) -> list[Step]:
    """The clicks in order, each new item placed `lead` clicks before its first click (new items
    never clicked in the window are published at the start)."""
    first: dict[str, int] = {}
    for n, e in enumerate(clicks):
        if e.item_id in new_items:
            first.setdefault(e.item_id, n)
    due: dict[int, list[str]] = defaultdict(list)
    for item, n in first.items():
        due[max(0, n - lead)].append(item)
    steps = [Step(item=new_items[i]) for i in new_items if i not in first]
    for n, e in enumerate(clicks):
        steps += [Step(item=new_items[i]) for i in due.get(n, [])]
        steps.append(Step(click=e))
    return steps


def live_figures(
    clicks: Sequence[Event], answers: dict[str, RecommendationRecord], new_items: set[str], segments: int = 5
) -> dict:
    """Hit rates against each user's previous list and the shares of new items in the lists.

    Versions serve successive stretches of the replay, and later stretches hold more new items
    competing for the same slots; so the hit rates are also given per stretch of the replay
    (`segments` equal parts by click order), which a run without promotions (`--every` above the
    replay's clicks) measures for the imported model alone."""
    slots = new_slots = flagged_new = flagged_explore = 0
    version_slots: dict[str, list[int]] = defaultdict(lambda: [0, 0])  # version -> [new slots, slots]
    for rec in answers.values():
        slots += len(rec.items)
        new_here = sum(i.item_id in new_items for i in rec.items)
        new_slots += new_here
        version_slots[rec.model_version][0] += new_here
        version_slots[rec.model_version][1] += len(rec.items)
        flagged_new += sum(i.new for i in rec.items)
        flagged_explore += sum(i.explore for i in rec.items)
    previous: dict[str, RecommendationRecord] = {}
    # (table, kind, version or stretch) -> [hits, clicks]
    hits: dict[tuple[str, str, str], list[int]] = defaultdict(lambda: [0, 0])
    for n, e in enumerate(clicks):
        prev = previous.get(e.user_id)
        if prev is not None:
            kind = "new" if e.item_id in new_items else "warm"
            stretch = f"stretch {n * segments // len(clicks) + 1} of {segments}"
            for table, key in (("version", "all"), ("version", prev.model_version), ("stretch", stretch)):
                hits[table, kind, key][0] += any(i.item_id == e.item_id for i in prev.items)
                hits[table, kind, key][1] += 1
        rec = answers.get(e.event_id)
        if rec is not None:
            previous[e.user_id] = rec
    tables: dict[str, dict[str, dict[str, dict]]] = {"version": defaultdict(dict), "stretch": defaultdict(dict)}
    for (table, kind, key), (h, n) in sorted(hits.items()):
        tables[table][key][kind] = {"clicks": n, "hits": h, "hit_rate": h / n if n else None}
    return {
        "recommended_slots": slots,
        "share_new_items": new_slots / slots if slots else 0.0,
        "share_flagged_new": flagged_new / slots if slots else 0.0,
        "share_flagged_explore": flagged_explore / slots if slots else 0.0,
        # How much room each version gives new items: with the hit rates, whether a promoted
        # version places them less often or less well.
        "share_new_items_by_version": {v: n / max(1, k) for v, (n, k) in sorted(version_slots.items())},
        "live_hit_rate": dict(tables["version"]),
        "live_hit_rate_by_stretch": dict(tables["stretch"]),
    }


def _publish(settings: Settings, steps: list[Step], rate: float) -> None:
    producer = make_producer(settings.kafka_bootstrap)
    clicks, items = Delivery(settings.topics.clicks), Delivery(settings.topics.catalogue)
    pacer = Paced(rate)
    try:
        for step in steps:
            if step.item is not None:
                items.send(producer, step.item.item_id.encode(), encode(catalogue_record(step.item, now_ms())))
            elif step.click is not None:
                pacer.wait()
                clicks.send(producer, step.click.user_id.encode(), encode(click_record(step.click, now_ms())))
        clicks.check(producer)
        items.check(producer)
    finally:
        producer.close()


def run_live(settings: Settings, args: argparse.Namespace, checkpoint: Path, workdir: Path) -> dict:
    held = set(read_checkpoint(checkpoint).meta.get("held_out_items", []))
    if not held:
        raise UserError(
            f"{checkpoint} lists no held-out items", "make one with `streamrec bench coldstart --save PATH`"
        )
    ds = load_dataset(args.dataset, settings.data_dir)
    base = worker_and_trainer_settings(settings, workdir, "newitems-", args.every)
    settings = replace(
        base,
        explore_slots=args.explore_slots,
        new_item_fade=args.fade_by,
        new_item_impressions=args.impressions_per_click,
    )
    first = import_checkpoint(ModelStore(settings.model_store_dir), checkpoint)
    clicks = ds.events[-args.clicks :]
    new_items = {it.item_id: it for it in ds.items if it.item_id in held}
    warm = [it for it in ds.items if it.item_id not in held]
    steps = interleave(clicks, new_items, args.lead)
    ensure_topics_for(settings)
    worker = start_worker(settings, workdir / "worker.log")
    trainer = start_trainer(settings, workdir / "trainer.log", ("--backfill", "0"))
    answers: dict[str, RecommendationRecord] = {}
    try:
        producer = make_producer(settings.kafka_bootstrap)
        delivery = Delivery(settings.topics.catalogue)
        for it in warm:
            delivery.send(producer, it.item_id.encode(), encode(catalogue_record(it, now_ms())))
        delivery.check(producer)
        producer.close()
        worker.wait_until("streamrec_index_size_items", lambda v: v >= len(warm), timeout_s=300)
        reader = RecommendationReader(settings.kafka_bootstrap, settings.topics.recommendations)
        load_before = machine_load()
        started = time.monotonic()
        feeder = threading.Thread(target=_publish, args=(settings, steps, args.rate))
        feeder.start()
        deadline = time.monotonic() + len(clicks) / args.rate + args.timeout
        dead, checked = 0.0, time.monotonic()
        while len(answers) + dead < len(clicks) and time.monotonic() < deadline:
            for rec, _ in reader.poll(300):
                answers[rec.event_id] = rec
            if not feeder.is_alive() and time.monotonic() - checked > 5.0:
                # A click that became a dead letter gets no answer: do not wait for it.
                checked = time.monotonic()
                dead = sum(v for k, v in worker.metrics().items() if k.startswith(DEAD_LETTERS))
        feeder.join()
        seconds = time.monotonic() - started
        reader.close()
        wm = worker.metrics()
        tm = trainer.metrics()
    finally:
        trainer.stop()
        worker.stop()
    store = ModelStore(settings.model_store_dir)
    figures = live_figures(clicks, answers, set(new_items))
    return {
        "dataset": ds.name,
        "checkpoint": str(checkpoint),
        "first_version": first.version,
        "promoted": store.history(),
        "clicks": len(clicks),
        "answered": len(answers),
        "new_items_published": len(new_items),
        "clicks_on_new_items": sum(e.item_id in new_items for e in clicks),
        "rate": args.rate,
        "every": args.every,
        "lead": args.lead,
        "explore_slots": args.explore_slots,
        "fade_by": args.fade_by,
        "impressions_per_click": args.impressions_per_click,
        "seconds": round(seconds, 1),
        "dead_letters": {k: v for k, v in wm.items() if k.startswith(DEAD_LETTERS)},
        "trainer_gate": {k: v for k, v in tm.items() if k.startswith("streamrec_trainer_gate")},
        "model_swaps": wm.get("streamrec_model_swap_seconds_count", 0.0),
        "machine_load": {"before": load_before, "after": machine_load()},
        **figures,
    }


def run_new_items_bench(settings: Settings, args: argparse.Namespace) -> int:
    checkpoint = Path(args.checkpoint)
    with tempfile.TemporaryDirectory(prefix="streamrec-newitems-") as tmp:
        workdir = Path(tmp)
        broker = LocalBroker(workdir / "broker", free_port()).start()
        try:
            base = replace(settings, kafka_bootstrap=broker.bootstrap, features_dir=settings.feature_cache)
            out = run_live(base, args, checkpoint, workdir)
        finally:
            broker.stop()
    print(
        f"{out['answered']}/{out['clicks']} clicks answered; {len(out['live_hit_rate']) - 1} versions made lists; "
        f"new items in {out['share_new_items']:.1%} of slots (flagged new {out['share_flagged_new']:.1%}, "
        f"explore {out['share_flagged_explore']:.1%})"
    )
    print_hit_rates(out)
    path = args.out or f"bench/results/newitems-{out['dataset']}.json"
    print(f"wrote {save_record(path, out, 'newitems')}")
    return 0


def print_hit_rates(out: dict) -> None:
    """The hit-rate table of a record: by version (with its share of new slots), then by stretch."""
    print(f"{'version':<44}{'kind':<6}{'clicks':>8}{'hits':>7}{'hit rate':>10}{'new slots':>11}")
    shares = out["share_new_items_by_version"]
    rows = [(v, kinds, shares.get(v, out["share_new_items"])) for v, kinds in out["live_hit_rate"].items()]
    rows += [(stretch, kinds, None) for stretch, kinds in out["live_hit_rate_by_stretch"].items()]
    for label, kinds, share in rows:
        for kind, f in kinds.items():
            rate = f"{f['hit_rate']:.4f}" if f["hit_rate"] is not None else "-"
            slots = f"{share:.1%}" if share is not None else ""
            print(f"{label[-43:]:<44}{kind:<6}{f['clicks']:>8}{f['hits']:>7}{rate:>10}{slots:>11}")
