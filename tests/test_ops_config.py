"""What can be validated of the Docker path without Docker: compose schema, Prometheus, Grafana.

- docker-compose.yml against the Compose specification (the `compose-spec` validator), after the
  variable interpolation and YAML merge keys Compose itself applies;
- Prometheus configuration and rules with `promtool check config`, and the alert rules' behaviour
  with `promtool test rules` (Debian's prometheus package, installed by `make setup`);
- the Grafana dashboard: valid JSON, provisioned where compose mounts it, and every metric any
  query names exists in the exporter or is a recording rule.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess

import pytest
import yaml
from compose_spec import PyCompose
from prometheus_client import CollectorRegistry

from streamrec.ops.metrics import create_metrics
from streamrec.settings import PROJECT_ROOT

OPS = PROJECT_ROOT / "ops"
# Names a query may use beyond ours: Prometheus' own series and functions are not metric names.
BUILTIN_SERIES = {"up"}
METRIC_NAME = re.compile(r"\b(streamrec[_:][a-zA-Z0-9_:]+|up)\b")


def compose_document(text: str) -> str:
    """Compose's `${VAR:-default}` interpolation with defaults, then YAML (which resolves `<<`)."""
    text = re.sub(r"\$\{(\w+):-([^}]*)\}", lambda m: m.group(2), text)
    return json.dumps(yaml.safe_load(text))


def test_compose_file_follows_the_compose_specification() -> None:
    compose = PyCompose.from_json(compose_document((PROJECT_ROOT / "docker-compose.yml").read_text()))
    assert {"kafka", "worker-1", "worker-2", "prometheus", "grafana"} <= set(compose.service_names())


def test_the_compose_validator_rejects_a_broken_file() -> None:
    broken = (PROJECT_ROOT / "docker-compose.yml").read_text().replace("condition: service_healthy", "condition: ok")
    with pytest.raises(ValueError, match="service_healthy"):
        PyCompose.from_json(compose_document(broken))


def promtool() -> str:
    path = shutil.which("promtool")
    assert path, "promtool is missing: `make setup` installs Debian's prometheus package (ops/install_system_deps.sh)"
    return path


@pytest.mark.parametrize("config", ["prometheus.yml", "prometheus-local.yml"])
def test_promtool_accepts_the_prometheus_config_and_its_rules(config: str) -> None:
    done = subprocess.run(
        [promtool(), "check", "config", str(OPS / "prometheus" / config)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "rules found" in done.stdout, "the config must load the rule file"


def test_alert_rules_fire_and_stay_quiet_as_their_unit_tests_expect() -> None:
    done = subprocess.run(
        [promtool(), "test", "rules", str(OPS / "prometheus" / "rules_test.yml")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def exported_names() -> set[str]:
    registry = CollectorRegistry()
    create_metrics(registry, "all")
    names = set()
    for family in registry.collect():
        for suffix in ("", "_total", "_bucket", "_sum", "_count", "_created"):
            names.add(family.name + suffix)
    return names


def recording_rules() -> dict[str, str]:
    rules = yaml.safe_load((OPS / "prometheus" / "rules.yml").read_text())
    return {r["record"]: r["expr"] for g in rules["groups"] for r in g["rules"] if "record" in r}


def alert_rules() -> dict[str, str]:
    rules = yaml.safe_load((OPS / "prometheus" / "rules.yml").read_text())
    return {r["alert"]: r["expr"] for g in rules["groups"] for r in g["rules"] if "alert" in r}


def test_rules_use_only_exported_metrics_and_alert_on_freshness_lag_and_dead_letters() -> None:
    known = exported_names() | BUILTIN_SERIES
    records = recording_rules()
    for name, expr in records.items():
        for used in METRIC_NAME.findall(expr):
            assert used in known, f"recording rule {name} uses unknown metric {used}"
    alerts = alert_rules()
    for name, expr in alerts.items():
        for used in METRIC_NAME.findall(expr):
            assert used in known or used in records, f"alert {name} uses unknown series {used}"
    used_by_alerts = " ".join(alerts.values())
    for topic in ("freshness", "consumer_lag", "dead_letter"):
        assert topic in used_by_alerts, f"no alert on {topic}"


def test_grafana_dashboard_queries_only_existing_metrics() -> None:
    dashboard = json.loads((OPS / "grafana" / "dashboards" / "streamrec.json").read_text())
    known = exported_names() | set(recording_rules()) | BUILTIN_SERIES
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    assert len(exprs) >= 15
    used = {name for e in exprs for name in METRIC_NAME.findall(e)}
    missing = used - known
    assert not missing, f"dashboard queries unknown metrics: {sorted(missing)}"
    # Every stage, lag, dead letters, index, model age and gate are on the dashboard.
    text = " ".join(exprs)
    for needed in (
        "streamrec:stage_latency_seconds:p99_1m",
        "streamrec_stream_consumer_lag_messages",
        "streamrec:dead_letters:rate5m",
        "streamrec_index_last_update_timestamp_seconds",
        "streamrec_model_loaded_timestamp_seconds",
        "streamrec_trainer_gate_decisions_total",
        "streamrec_stream_batch_size_events_bucket",
    ):
        assert needed in text, f"dashboard lacks {needed}"


def test_grafana_provisioning_points_at_the_mounted_dashboard() -> None:
    provider = yaml.safe_load((OPS / "grafana" / "provisioning" / "dashboards" / "streamrec.yml").read_text())
    path = provider["providers"][0]["options"]["path"]
    grafana = yaml.safe_load((PROJECT_ROOT / "docker-compose.yml").read_text())["services"]["grafana"]
    mounts = {v.split(":")[1]: v.split(":")[0] for v in grafana["volumes"]}
    assert path in mounts, f"compose does not mount anything at {path}"
    assert (PROJECT_ROOT / mounts[path] / "streamrec.json").is_file()
    datasource = yaml.safe_load((OPS / "grafana" / "provisioning" / "datasources" / "prometheus.yml").read_text())
    uid = datasource["datasources"][0]["uid"]
    dashboard = json.loads((PROJECT_ROOT / mounts[path] / "streamrec.json").read_text())
    assert all(p["datasource"]["uid"] == uid for p in dashboard["panels"])


def test_every_prometheus_target_is_a_compose_service() -> None:
    prom = yaml.safe_load((OPS / "prometheus" / "prometheus.yml").read_text())
    services = set(yaml.safe_load((PROJECT_ROOT / "docker-compose.yml").read_text())["services"])
    for job in prom["scrape_configs"]:
        for sc in job["static_configs"]:
            for target in sc["targets"]:
                host = target.split(":")[0]
                assert host in services, f"{target} is not a service"


def test_docs_describe_every_metric() -> None:
    doc = (PROJECT_ROOT / "docs" / "metrics.md").read_text()
    registry = CollectorRegistry()
    create_metrics(registry, "all")
    for family in registry.collect():
        name = family.name + ("_total" if family.type == "counter" else "")
        assert name in doc, f"docs/metrics.md does not describe {name}"
