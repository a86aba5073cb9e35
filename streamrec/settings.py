"""Runtime settings of streamrec, read from the environment in this one place.

Every process (worker, replay, demo, benchmarks, trainer) builds one `Settings` with
`Settings.from_env()` and passes it down whole. Model hyper-parameters are not here: they live in
each model component's own dataclass config and travel inside checkpoints.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path

from streamrec.errors import UserError, parse_bootstrap

PROJECT_ROOT = Path(__file__).resolve().parent.parent


def _default_data_dir() -> Path:
    """`../shared/data` beside the project when present, else a per-user cache directory."""
    shared = PROJECT_ROOT.parent / "shared" / "data"
    if shared.is_dir():
        return shared
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return cache / "streamrec" / "data"


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError as exc:
        raise UserError(f"setting {name}={raw!r} is not an integer", f"e.g. {name}={default}") from exc


def _env_float(name: str, default: float) -> float:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return float(raw)
    except ValueError as exc:
        raise UserError(f"setting {name}={raw!r} is not a number", f"e.g. {name}={default}") from exc


def _env_bool(name: str, default: bool) -> bool:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    value = raw.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise UserError(f"setting {name}={raw!r} is not 1 or 0", f"e.g. {name}={int(default)}")


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


@dataclass(frozen=True)
class Settings:
    """Runtime settings. Environment variable names are given beside each field."""

    # STREAMREC_DATA_DIR: where the datasets are read from (never copied into the repo).
    data_dir: Path = field(default_factory=_default_data_dir)
    # KAFKA_BOOTSTRAP: the broker, local noida-db or Apache Kafka alike ("host:port[,host:port]").
    kafka_bootstrap: str = "127.0.0.1:19092"
    # STREAMREC_STATE_DIR: RocksDB state, broker data of the local path, model store.
    state_dir: Path = PROJECT_ROOT / ".state"
    # STREAMREC_TOPIC_PREFIX
    topics: TopicNames = field(default_factory=TopicNames)
    # STREAMREC_APP_ID: Kafka consumer group of the worker.
    app_id: str = "streamrec-worker"
    # STREAMREC_WORKER_ID: stable identity of one worker (its static consumer-group member id).
    worker_id: str = "worker-1"
    # STREAMREC_LEAVE_GROUP_ON_STOP: a cleanly stopped worker hands its partitions over at once (1/0).
    leave_group_on_stop: bool = True
    # STREAMREC_WORKER_PREFORK: `streamrec worker` imports once and runs the worker in a forked
    # child, replaced at once when it dies: a restart skips the ~2 s of imports (1/0).
    worker_prefork: bool = False
    # STREAMREC_PARTITIONS: partitions of clicks/recommendations when the topics are created.
    partitions: int = 4
    # STREAMREC_METRICS_HOST: exporter address; 127.0.0.1 locally (containers set their own).
    metrics_host: str = "127.0.0.1"
    # STREAMREC_METRICS_PORT: Prometheus exporter on 127.0.0.1 (0 = pick a free port).
    metrics_port: int = 9464
    # STREAMREC_DASHBOARD_PORT: the worker's live page on 127.0.0.1 (0 = no page).
    dashboard_port: int = 9465
    # STREAMREC_TOP_K
    top_k: int = 10
    # STREAMREC_LOOKUP_USERS: users whose latest recommendations a worker keeps for
    # GET /users/{id}/recommendations on its page port (about 1.5 KB each).
    lookup_users: int = 20_000
    # STREAMREC_MAX_SEQ_LEN: per-user sequence cap.
    max_seq_len: int = 2048
    # STREAMREC_BATCH_SIZE / STREAMREC_BATCH_WAIT_MS: micro-batch bounds of the click agent.
    batch_size: int = 256
    batch_wait_ms: float = 20.0
    # STREAMREC_PRODUCER_LINGER_MS: measured to raise Faust throughput (see README).
    producer_linger_ms: float = 5.0
    # STREAMREC_COMMIT_INTERVAL_S
    commit_interval_s: float = 1.0
    # STREAMREC_FEATURES_DIR: cache of encoded item titles (default <state_dir>/features).
    features_dir: Path | None = None
    # STREAMREC_MODEL: checkpoint path of the serving model; empty = the content baseline.
    model_path: str = ""
    # STREAMREC_ANN_THRESHOLD / STREAMREC_ANN_NPROBE: exact search below this many items, an IVF
    # index above it (recall measured by `streamrec bench index`).
    ann_threshold: int = 100_000
    ann_nprobe: int = 64
    # STREAMREC_EXPLAIN: attach "why" (history items, modality weights) to recommendations (1/0).
    explain: bool = True
    # STREAMREC_STATE_MEMORY_MB: bound on the research model's cached user state per worker.
    state_memory_mb: int = 256
    # STREAMREC_CATALOGUE_IDLE_MS: pause of the catalogue reader after an empty poll.
    catalogue_idle_ms: float = 100.0
    # STREAMREC_MODEL_STORE: versioned model directory shared by the trainer and the workers
    # (default <state_dir>/model-store). A worker serves its current version when it has one,
    # else STREAMREC_MODEL.
    model_store: Path | None = None
    # Online trainer (`streamrec trainer`): STREAMREC_TRAINER_EVERY_EVENTS, _EVERY_MINUTES,
    # _EPOCHS, _TOLERANCE (relative NDCG@10 loss the gate accepts), _METRICS_PORT.
    trainer_every_events: int = 5000
    trainer_every_minutes: float = 10.0
    trainer_epochs: int = 2
    trainer_tolerance: float = 0.02
    trainer_metrics_port: int = 9466
    # STREAMREC_TORCH_THREADS: intra-op threads for the model in a worker; the Kafka consumer
    # thread needs the other core of a 2-core machine (0 = torch's default).
    torch_threads: int = 1

    @classmethod
    def from_env(cls) -> Settings:
        env = os.environ
        base = cls()
        return replace(
            base,
            data_dir=Path(env["STREAMREC_DATA_DIR"]) if env.get("STREAMREC_DATA_DIR") else base.data_dir,
            kafka_bootstrap=env.get("KAFKA_BOOTSTRAP", base.kafka_bootstrap),
            state_dir=Path(env["STREAMREC_STATE_DIR"]) if env.get("STREAMREC_STATE_DIR") else base.state_dir,
            topics=TopicNames(env.get("STREAMREC_TOPIC_PREFIX", "")),
            app_id=env.get("STREAMREC_APP_ID", base.app_id),
            worker_id=env.get("STREAMREC_WORKER_ID", base.worker_id),
            partitions=_env_int("STREAMREC_PARTITIONS", base.partitions),
            worker_prefork=_env_bool("STREAMREC_WORKER_PREFORK", base.worker_prefork),
            leave_group_on_stop=_env_bool("STREAMREC_LEAVE_GROUP_ON_STOP", base.leave_group_on_stop),
            metrics_host=env.get("STREAMREC_METRICS_HOST", base.metrics_host),
            metrics_port=_env_int("STREAMREC_METRICS_PORT", base.metrics_port),
            dashboard_port=_env_int("STREAMREC_DASHBOARD_PORT", base.dashboard_port),
            top_k=_env_int("STREAMREC_TOP_K", base.top_k),
            lookup_users=_env_int("STREAMREC_LOOKUP_USERS", base.lookup_users),
            max_seq_len=_env_int("STREAMREC_MAX_SEQ_LEN", base.max_seq_len),
            batch_size=_env_int("STREAMREC_BATCH_SIZE", base.batch_size),
            batch_wait_ms=_env_float("STREAMREC_BATCH_WAIT_MS", base.batch_wait_ms),
            producer_linger_ms=_env_float("STREAMREC_PRODUCER_LINGER_MS", base.producer_linger_ms),
            commit_interval_s=_env_float("STREAMREC_COMMIT_INTERVAL_S", base.commit_interval_s),
            model_path=env.get("STREAMREC_MODEL", base.model_path),
            features_dir=Path(env["STREAMREC_FEATURES_DIR"]) if env.get("STREAMREC_FEATURES_DIR") else None,
            ann_threshold=_env_int("STREAMREC_ANN_THRESHOLD", base.ann_threshold),
            ann_nprobe=_env_int("STREAMREC_ANN_NPROBE", base.ann_nprobe),
            explain=_env_bool("STREAMREC_EXPLAIN", base.explain),
            state_memory_mb=_env_int("STREAMREC_STATE_MEMORY_MB", base.state_memory_mb),
            catalogue_idle_ms=_env_float("STREAMREC_CATALOGUE_IDLE_MS", base.catalogue_idle_ms),
            model_store=Path(env["STREAMREC_MODEL_STORE"]) if env.get("STREAMREC_MODEL_STORE") else None,
            trainer_every_events=_env_int("STREAMREC_TRAINER_EVERY_EVENTS", base.trainer_every_events),
            trainer_every_minutes=_env_float("STREAMREC_TRAINER_EVERY_MINUTES", base.trainer_every_minutes),
            trainer_epochs=_env_int("STREAMREC_TRAINER_EPOCHS", base.trainer_epochs),
            trainer_tolerance=_env_float("STREAMREC_TRAINER_TOLERANCE", base.trainer_tolerance),
            trainer_metrics_port=_env_int("STREAMREC_TRAINER_METRICS_PORT", base.trainer_metrics_port),
            torch_threads=_env_int("STREAMREC_TORCH_THREADS", base.torch_threads),
        )._checked()

    def _checked(self) -> Settings:
        """Values that parse but cannot work fail here, in one line naming the variable."""
        parse_bootstrap(self.kafka_bootstrap)
        at_least = {
            "STREAMREC_TOP_K": (self.top_k, 1),
            "STREAMREC_LOOKUP_USERS": (self.lookup_users, 1),
            "STREAMREC_PARTITIONS": (self.partitions, 1),
            "STREAMREC_BATCH_SIZE": (self.batch_size, 1),
            "STREAMREC_MAX_SEQ_LEN": (self.max_seq_len, 1),
            "STREAMREC_METRICS_PORT": (self.metrics_port, 0),
            "STREAMREC_DASHBOARD_PORT": (self.dashboard_port, 0),
            "STREAMREC_TRAINER_METRICS_PORT": (self.trainer_metrics_port, 0),
            "STREAMREC_BATCH_WAIT_MS": (self.batch_wait_ms, 0),
            "STREAMREC_TORCH_THREADS": (self.torch_threads, 0),
        }
        for name, (value, low) in at_least.items():
            if value < low:
                raise UserError(f"setting {name}={value} must be at least {low}")
        for name in ("STREAMREC_METRICS_PORT", "STREAMREC_DASHBOARD_PORT", "STREAMREC_TRAINER_METRICS_PORT"):
            if at_least[name][0] > 65535:
                raise UserError(f"setting {name}={at_least[name][0]} is not a port (0-65535)")
        return self

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
