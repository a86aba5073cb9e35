"""Settings are declared once (streamrec/settings.py): parsing, bounds, the child-process
environment and the README's table all come from the one declaration."""

from __future__ import annotations

from dataclasses import fields, replace
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streamrec.errors import UserError
from streamrec.settings import PROJECT_ROOT, Settings, TopicNames, markdown_table


def test_readme_holds_the_current_table() -> None:
    readme = (PROJECT_ROOT / "README.md").read_text()
    assert markdown_table() in readme, "README's settings table is stale: paste `python -m streamrec.settings`"


def test_every_setting_has_a_variable_and_a_meaning_and_variables_are_unique() -> None:
    names = [f.metadata["env"] for f in fields(Settings)]
    assert len(names) == len(set(names))
    assert all(n == "KAFKA_BOOTSTRAP" or n.startswith("STREAMREC_") for n in names)
    assert all(f.metadata["meaning"] for f in fields(Settings))


def test_defaults_come_back_from_an_empty_environment() -> None:
    assert Settings.from_env({}) == Settings()


@settings(max_examples=60, deadline=None)
@given(
    top_k=st.integers(1, 500),
    wait=st.floats(0, 1000, allow_nan=False),
    explain=st.booleans(),
    prefix=st.text(alphabet="abc-", max_size=5),
    model=st.text(alphabet="abc/._", max_size=8),
    port=st.integers(0, 65535),
    features=st.none() | st.just(Path("/tmp/features")),
)
def test_to_env_round_trips(
    top_k: int, wait: float, explain: bool, prefix: str, model: str, port: int, features: Path | None
) -> None:
    s = replace(
        Settings(),
        top_k=top_k,
        batch_wait_ms=wait,
        explain=explain,
        topics=TopicNames(prefix),
        model_path=model,
        metrics_port=port,
        features_dir=features,
    )
    assert Settings.from_env(s.to_env()) == s


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("STREAMREC_TOP_K", "ten"),
        ("STREAMREC_TOP_K", "0"),
        ("STREAMREC_BATCH_WAIT_MS", "-1"),
        ("STREAMREC_EXPLAIN", "maybe"),
        ("STREAMREC_DASHBOARD_PORT", "65536"),
        ("KAFKA_BOOTSTRAP", "localhost"),
    ],
)
def test_bad_values_name_their_variable(variable: str, value: str) -> None:
    with pytest.raises(UserError, match=variable):
        Settings.from_env({variable: value})


def test_trainer_settings_default_to_the_trainer_config() -> None:
    """The online trainer's config has its own defaults (for code that builds one directly); the
    settings that override them must agree with them."""
    from streamrec.training.online_trainer import OnlineTrainerConfig

    cfg, s = OnlineTrainerConfig(), Settings()
    assert (s.trainer_every_events, s.trainer_every_minutes, s.trainer_epochs, s.trainer_tolerance) == (
        cfg.every_events,
        cfg.every_minutes,
        cfg.epochs,
        cfg.tolerance,
    )
