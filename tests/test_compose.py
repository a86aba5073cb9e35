"""The Docker path's files are consistent with the local path (they cannot be run here)."""

from __future__ import annotations

from pathlib import Path

import yaml

from streamrec.settings import PROJECT_ROOT


def load(path: str) -> dict:
    return yaml.safe_load((PROJECT_ROOT / path).read_text())


def test_compose_runs_apache_kafka_and_binds_loopback_only() -> None:
    compose = load("docker-compose.yml")
    services = compose["services"]
    assert {"kafka", "worker-1", "worker-2", "prometheus", "grafana"} <= set(services)
    image = services["kafka"]["image"]
    assert image.startswith("apache/kafka:3."), image
    assert "broker,controller" in services["kafka"]["environment"]["KAFKA_PROCESS_ROLES"], "KRaft mode"
    for name, svc in services.items():
        for port in svc.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), f"{name} publishes {port} beyond loopback"


def test_compose_uses_the_same_setting_names_as_the_local_path() -> None:
    services = load("docker-compose.yml")["services"]
    source = (PROJECT_ROOT / "streamrec" / "settings.py").read_text()
    ids = set()
    for name in ("worker-1", "worker-2"):
        env = services[name]["environment"]
        assert env["KAFKA_BOOTSTRAP"] == "kafka:9092"
        ids.add(env["STREAMREC_WORKER_ID"])
        for key in env:
            assert key in source, f"{key} is not a setting read by streamrec/settings.py"
    assert len(ids) == 2, "each worker needs its own static group member id"


def test_prometheus_scrapes_the_worker_port() -> None:
    prom = load("ops/prometheus/prometheus.yml")
    targets = [t for job in prom["scrape_configs"] for sc in job["static_configs"] for t in sc["targets"]]
    port = load("docker-compose.yml")["services"]["worker-1"]["environment"]["STREAMREC_METRICS_PORT"]
    assert {f"worker-1:{port}", f"worker-2:{port}"} <= set(targets)
    assert Path(PROJECT_ROOT / "Dockerfile").read_text().count("torch==2.13.0") == 1


def test_compose_runs_the_trainer_beside_the_workers_on_one_model_store() -> None:
    compose = load("docker-compose.yml")["services"]
    trainer = compose["trainer"]
    assert trainer["command"] == ["trainer"]
    port = trainer["environment"]["STREAMREC_TRAINER_METRICS_PORT"]
    prom = load("ops/prometheus/prometheus.yml")
    targets = [t for job in prom["scrape_configs"] for sc in job["static_configs"] for t in sc["targets"]]
    assert f"trainer:{port}" in targets
    for name in ("worker-1", "worker-2", "trainer"):
        assert "model-store:/models" in compose[name]["volumes"], f"{name} does not share the model store"


STREAMREC_SERVICES = ("worker-1", "worker-2", "trainer", "model", "replay")


def test_one_image_built_once_with_cpu_torch_and_a_small_context() -> None:
    services = load("docker-compose.yml")["services"]
    images = {services[name]["image"] for name in STREAMREC_SERVICES}
    assert images == {"streamrec:local"}, "every streamrec service runs the one image"
    assert [name for name, svc in services.items() if "build" in svc] == ["worker-1"], "built once"
    dockerfile = (PROJECT_ROOT / "Dockerfile").read_text()
    torch_line = next(line for line in dockerfile.splitlines() if "torch==" in line)
    assert "--index-url https://download.pytorch.org/whl/cpu" in torch_line, "the CPU build, not CUDA"
    assert dockerfile.index("torch==") < dockerfile.index("pip install '."), "torch before the project"
    ignored = (PROJECT_ROOT / ".dockerignore").read_text().split()
    assert {".venv/", ".state/", ".git/"} <= set(ignored)


def test_kafka_keeps_its_data_on_the_volume() -> None:
    kafka = load("docker-compose.yml")["services"]["kafka"]
    log_dirs = kafka["environment"]["KAFKA_LOG_DIRS"]
    mounts = {v.split(":")[1] for v in kafka["volumes"]}
    assert log_dirs in mounts, f"KAFKA_LOG_DIRS={log_dirs} is not on a mounted volume {mounts}"


def test_workers_and_trainer_are_health_checked_and_restarted() -> None:
    services = load("docker-compose.yml")["services"]
    for name in ("worker-1", "worker-2", "trainer"):
        svc = services[name]
        assert svc["restart"] == "unless-stopped", f"{name}: an agent's death (exit 70) must restart it"
        test = svc["healthcheck"]["test"]
        assert test[:3] == ["CMD", "streamrec", "health"], test
        port = svc["environment"].get("STREAMREC_METRICS_PORT") or svc["environment"]["STREAMREC_TRAINER_METRICS_PORT"]
        assert test[-1] == f"http://127.0.0.1:{port}/metrics"


def test_alerts_reach_alertmanager_whose_config_is_valid() -> None:
    import shutil
    import subprocess

    services = load("docker-compose.yml")["services"]
    assert "alertmanager" in services
    prom = load("ops/prometheus/prometheus.yml")
    targets = [t for am in prom["alerting"]["alertmanagers"] for sc in am["static_configs"] for t in sc["targets"]]
    assert targets == ["alertmanager:9093"]
    mount = services["alertmanager"]["volumes"][0].split(":")[0]
    amtool = shutil.which("amtool")
    assert amtool, "amtool is missing: `make setup` installs prometheus-alertmanager (ops/install_system_deps.sh)"
    proc = subprocess.run([amtool, "check-config", str(PROJECT_ROOT / mount)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
