"""Runtime settings of streamrec, read from the environment in this one place.

Every process (worker, replay, demo, benchmarks, trainer) builds one `Settings` with
`Settings.from_env()` and passes it down whole. Each setting is declared once, as a field with its
environment variable, default and meaning; from that one declaration come the parsing, the checks,
the environment of child processes (`to_env`) and the README's table (`python -m
streamrec.settings` prints it; a test checks the README holds it). Model hyper-parameters are not here: they live in
each model component's own dataclass config and travel inside checkpoints.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import MISSING, Field, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from streamrec.errors import UserError, parse_bootstrap

PROJECT_ROOT = Path(__file__).resolve().parent.parent


def _default_data_dir() -> Path:
    """`../shared/data` beside the project when present, else a per-user cache directory."""
    shared = PROJECT_ROOT.parent / "shared" / "data"
    if shared.is_dir():
        return shared
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return cache / "streamrec" / "data"


def _parse(f: Field[Any], raw: str) -> Any:
    env, kind = f.metadata["env"], f.type
    if kind == "TopicNames":
        return TopicNames(raw)
    if kind in ("Path", "Path | None"):
        return Path(raw)
    if kind == "str":
        choices = f.metadata.get("choices")
        if choices and raw not in choices:
            raise UserError(f"setting {env}={raw!r} is not one of {', '.join(choices)}", f"e.g. {env}={choices[0]}")
        return raw
    example = f"e.g. {env}={_render(f.default)}" if f.default is not MISSING else ""
    if kind == "bool":
        value = raw.strip().lower()
        if value in ("1", "true", "yes", "on"):
            return True
        if value in ("0", "false", "no", "off"):
            return False
        raise UserError(f"setting {env}={raw!r} is not 1 or 0", example)
    try:
        return int(raw) if kind == "int" else float(raw)
    except ValueError:
        what = "an integer" if kind == "int" else "a number"
        raise UserError(f"setting {env}={raw!r} is not {what}", example) from None


def _render(value: Any) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, TopicNames):
        return value.prefix
    return "" if value is None else str(value)


@dataclass(frozen=True)
class TopicNames:
    """Names of the Kafka topics; one prefix lets tests and benchmarks run side by side."""

    prefix: str = ""

    @property
    def clicks(self) -> str:
        return f"{self.prefix}clicks"

    @property
    def catalogue(self) -> str:
        return f"{self.prefix}catalogue"

    @property
    def recommendations(self) -> str:
        return f"{self.prefix}recommendations"

    @property
    def dead_letters(self) -> str:
        return f"{self.prefix}dead-letters"

    @property
    def models(self) -> str:
        return f"{self.prefix}models"


def _setting(
    env: str,
    default: Any = MISSING,
    meaning: str = "",
    *,
    factory: Callable[[], Any] | None = None,
    shown: str | None = None,
    low: float | None = None,
    port: bool = False,
    choices: tuple[str, ...] = (),
) -> Any:
    """One runtime setting: its environment variable, default, meaning (the README's table is made
    from these: `python -m streamrec.settings`), and the bounds `from_env` checks."""
    meta = {"env": env, "meaning": meaning, "shown": shown, "low": 0 if port else low, "port": port, "choices": choices}
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class Settings:
    """Runtime settings, each declared once here with its environment variable and meaning."""

    data_dir: Path = _setting(
        "STREAMREC_DATA_DIR",
        meaning="datasets (read in place, never copied)",
        factory=_default_data_dir,
        shown="`../shared/data` if present, else `~/.cache/streamrec/data`",
    )
    kafka_bootstrap: str = _setting(
        "KAFKA_BOOTSTRAP", "127.0.0.1:19092", "the broker (`host:port[,host:port]`): local noida-db or Kafka alike"
    )
    state_dir: Path = _setting(
        "STREAMREC_STATE_DIR",
        PROJECT_ROOT / ".state",
        "RocksDB state, local broker data, checkpoints",
        shown="`.state/`",
    )
    topics: TopicNames = _setting(
        "STREAMREC_TOPIC_PREFIX", meaning="prefix of every topic name", factory=TopicNames, shown="empty"
    )
    app_id: str = _setting("STREAMREC_APP_ID", "streamrec-worker", "Kafka consumer group of the workers")
    worker_id: str = _setting("STREAMREC_WORKER_ID", "worker-1", "this worker's static consumer-group member id")
    leave_group_on_stop: bool = _setting(
        "STREAMREC_LEAVE_GROUP_ON_STOP",
        True,
        "a cleanly stopped worker hands its partitions over at once (0: keep the static membership, "
        "e.g. for rolling restarts on Apache Kafka)",
    )
    worker_prefork: bool = _setting(
        "STREAMREC_WORKER_PREFORK",
        False,
        "`streamrec worker` imports once and serves from a forked child, replaced at once when it dies: "
        "restarts skip the ~2 s of imports",
    )
    partitions: int = _setting(
        "STREAMREC_PARTITIONS", 4, "partitions of `clicks` and `recommendations` when created", low=1
    )
    retention_minutes: float = _setting(
        "STREAMREC_RETENTION_MINUTES",
        0.0,
        "how long the broker keeps clicks, recommendations and dead letters (0: the broker's own policy); "
        "keep it above the trainer's and a restarted worker's lag; the catalogue is always kept",
        low=0,
    )
    metrics_host: str = _setting(
        "STREAMREC_METRICS_HOST", "127.0.0.1", "address of the exporters and the page (containers set 0.0.0.0)"
    )
    metrics_port: int = _setting(
        "STREAMREC_METRICS_PORT", 9464, "a worker's Prometheus exporter (0 = any free port)", port=True
    )
    dashboard_port: int = _setting(
        "STREAMREC_DASHBOARD_PORT", 9465, "the worker's live page and user lookups (0 = off)", port=True
    )
    top_k: int = _setting("STREAMREC_TOP_K", 10, "recommendations per click", low=1)
    lookup_users: int = _setting(
        "STREAMREC_LOOKUP_USERS",
        20_000,
        "users whose latest recommendations a worker keeps for `GET /users/{id}/recommendations` (~1.5 KB each)",
        low=1,
    )
    max_seq_len: int = _setting("STREAMREC_MAX_SEQ_LEN", 2048, "per-user sequence cap", low=1)
    sequence_cache_users: int = _setting(
        "STREAMREC_SEQUENCE_CACHE_USERS",
        4096,
        "users whose sequences a worker also keeps in memory (LRU; 8 bytes per click, 16 KB at the cap)",
        low=0,
    )
    batch_size: int = _setting(
        "STREAMREC_BATCH_SIZE", 512, "largest click micro-batch (batches adapt to the load below it)", low=1
    )
    batch_wait_ms: float = _setting(
        "STREAMREC_BATCH_WAIT_MS",
        0.0,
        "extra wait for a click micro-batch to fill once its first click arrived (0: take what has arrived)",
        low=0,
    )
    producer_linger_ms: float = _setting(
        "STREAMREC_PRODUCER_LINGER_MS", 5.0, "Faust producer linger (measured to raise throughput)", low=0
    )
    commit_interval_s: float = _setting("STREAMREC_COMMIT_INTERVAL_S", 1.0, "offset commit interval", low=0)
    features_dir: Path | None = _setting(
        "STREAMREC_FEATURES_DIR", None, "cache of encoded item titles (MiniLM vectors)", shown="`.state/features`"
    )
    model_path: str = _setting(
        "STREAMREC_MODEL",
        "",
        "checkpoint to serve when the model store has no current version (empty: the content baseline)",
        shown="empty",
    )
    ann_threshold: int = _setting(
        "STREAMREC_ANN_THRESHOLD", 100_000, "exact FAISS search below this many items, IVF above", low=1
    )
    ann_nprobe: int = _setting(
        "STREAMREC_ANN_NPROBE", 64, "IVF lists searched (recall: `streamrec bench index`)", low=1
    )
    explain: bool = _setting("STREAMREC_EXPLAIN", True, "attach explanations (history items, modality weights)")
    explore_slots: int = _setting(
        "STREAMREC_EXPLORE_SLOTS",
        0,
        "exploration quota: up to this many of the K slots go to young items, best by content, flagged `explore`",
        low=0,
    )
    explore_max_age_s: float = _setting(
        "STREAMREC_EXPLORE_MAX_AGE_S", 86400.0, "items younger than this (seconds in the catalogue) may explore", low=1
    )
    new_item_fade: str = _setting(
        "STREAMREC_NEW_ITEM_FADE",
        "clicks",
        "what fades a new item's calibration: clicks seen, or clicks its ID row was trained on (trained)",
        choices=("clicks", "trained"),
    )
    new_item_impressions: int = _setting(
        "STREAMREC_NEW_ITEM_IMPRESSIONS",
        0,
        "a new item's calibration fades out over this many impressions per click it has, plus one (0 = by clicks only)",
        low=0,
    )
    state_memory_mb: int = _setting(
        "STREAMREC_STATE_MEMORY_MB", 256, "bound on a worker's cached incremental user state (LRU)", low=1
    )
    state_dtype: str = _setting(
        "STREAMREC_STATE_DTYPE",
        "auto",
        "storage type of cached encoder state: auto (float32 if a user's whole window fits "
        "STREAMREC_STATE_BUDGET_KB, else int8), float16, float32, bfloat16 or int8 (`streamrec bench precision`)",
        choices=("auto", "float16", "float32", "bfloat16", "int8"),
    )
    state_budget_kb: int = _setting(
        "STREAMREC_STATE_BUDGET_KB", 64, "encoder state per user that `auto` keeps float32 within", low=1
    )
    one_call_padding: int = _setting(
        "STREAMREC_ONE_CALL_PADDING",
        256,
        "a micro-batch mixing users with one new click and users with several is encoded in one call when "
        "that pads at most this many positions, else in two (0 = always two)",
        low=0,
    )
    empty_fetch_wait_ms: float = _setting(
        "STREAMREC_EMPTY_FETCH_WAIT_MS",
        5.0,
        "a consumer's wait after a fetch that brought nothing (noida-db answers one at once; Kafka waits itself)",
        low=0,
    )
    catalogue_idle_ms: float = _setting(
        "STREAMREC_CATALOGUE_IDLE_MS", 100.0, "pause of the catalogue reader after an empty poll", low=0
    )
    model_store: Path | None = _setting(
        "STREAMREC_MODEL_STORE",
        None,
        "versioned model store shared by the trainer and the workers; a worker serves its current version "
        "when it has one, else STREAMREC_MODEL",
        shown="`.state/model-store`",
    )
    trainer_every_events: int = _setting(
        "STREAMREC_TRAINER_EVERY_EVENTS", 5000, "online fine-tuning period, clicks", low=1
    )
    trainer_every_minutes: float = _setting(
        "STREAMREC_TRAINER_EVERY_MINUTES", 10.0, "online fine-tuning period, minutes", low=0
    )
    trainer_epochs: int = _setting("STREAMREC_TRAINER_EPOCHS", 2, "epochs of each fine-tuning round", low=1)
    trainer_tolerance: float = _setting(
        "STREAMREC_TRAINER_TOLERANCE", 0.02, "relative NDCG@10 loss the promotion gate accepts", low=0
    )
    trainer_metrics_port: int = _setting(
        "STREAMREC_TRAINER_METRICS_PORT", 9466, "the trainer's Prometheus exporter", port=True
    )
    model_process: bool = _setting(
        "STREAMREC_MODEL_PROCESS",
        True,
        "serve a trained checkpoint from a process of its own (its own GIL; 0 = in the worker's process)",
    )
    index_threads: int = _setting(
        "STREAMREC_INDEX_THREADS",
        1,
        "FAISS threads in a worker (one search at a time; the model and the Kafka consumer need the other cores; "
        "0 = FAISS's default)",
        low=0,
    )
    torch_threads: int = _setting(
        "STREAMREC_TORCH_THREADS",
        1,
        "model threads in a worker (the Kafka consumer thread needs the other core; 0 = torch's default)",
        low=0,
    )

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Settings from `env` (default: os.environ); unset or empty variables keep their defaults.
        A value that does not parse or is out of bounds is a UserError naming the variable."""
        env = os.environ if env is None else env
        values = {}
        for f in fields(cls):
            raw = env.get(f.metadata["env"])
            if raw is not None and (raw != "" or f.type == "TopicNames"):
                values[f.name] = _parse(f, raw)
        return replace(cls(), **values)._checked()

    def to_env(self) -> dict[str, str]:
        """The environment that makes `Settings.from_env()` return these settings in a child process."""
        return {f.metadata["env"]: _render(getattr(self, f.name)) for f in fields(self)}

    def _checked(self) -> Settings:
        """Values that parse but cannot work fail here, in one line naming the variable."""
        parse_bootstrap(self.kafka_bootstrap)
        for f in fields(self):
            value, low = getattr(self, f.name), f.metadata["low"]
            if low is not None and value < low:
                raise UserError(f"setting {f.metadata['env']}={value} must be at least {low}")
            if f.metadata["port"] and value > 65535:
                raise UserError(f"setting {f.metadata['env']}={value} is not a port (0-65535)")
        return self

    def checkpoint_path(self, dataset: str, preset: str, seed: int = 0) -> Path:
        """Where `streamrec train` writes (and benchmarks look for) a checkpoint."""
        return self.state_dir / "models" / dataset / f"{preset}-s{seed}.pt"

    def checkpoint_or_default(self, given: str, dataset: str) -> Path:
        """`given` when set, else the MUFASA checkpoint of seed 0 for `dataset`."""
        return Path(given) if given else self.checkpoint_path(dataset, "mufasa")

    @property
    def feature_cache(self) -> Path:
        return self.features_dir if self.features_dir is not None else self.state_dir / "features"

    @property
    def model_store_dir(self) -> Path:
        return self.model_store if self.model_store is not None else self.state_dir / "model-store"

    @property
    def broker_dir(self) -> Path:
        return self.state_dir / "broker"

    @property
    def worker_dir(self) -> Path:
        return self.state_dir / "worker"


def markdown_table() -> str:
    """The README's table of settings, one row per variable."""
    rows = ["| variable | default | meaning |", "|---|---|---|"]
    for f in fields(Settings):
        meta = f.metadata
        shown = meta["shown"] or (f"`{_render(f.default)}`" if f.default not in ("", None) else "empty")
        rows.append(f"| `{meta['env']}` | {shown} | {meta['meaning']} |")
    return "\n".join(rows) + "\n"


if __name__ == "__main__":
    print(markdown_table(), end="")
