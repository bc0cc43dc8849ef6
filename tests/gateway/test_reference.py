"""The generated configuration reference: the committed docs/configuration.md and
config.example.toml are exactly what ``stripe-gateway config-reference`` prints, and every
key of every model is in them."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from gateway import reference
from gateway.config import TeamConfig, parse_config

REPO = Path(__file__).resolve().parents[2]
REGENERATE = (
    "regenerate with `stripe-gateway config-reference > docs/configuration.md` and "
    "`stripe-gateway config-reference --format toml > config.example.toml`"
)


@pytest.mark.parametrize(
    ("path", "fmt"), [("docs/configuration.md", "markdown"), ("config.example.toml", "toml")]
)
def test_the_committed_file_is_what_the_command_prints(path: str, fmt: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "gateway", "config-reference", "--format", fmt],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=60,
        check=True,
    )
    assert result.stdout == (reference.markdown() if fmt == "markdown" else reference.toml())
    assert (REPO / path).read_text() == result.stdout, f"{path} is out of date: {REGENERATE}"


def test_every_key_of_every_model_is_documented() -> None:
    text = reference.markdown()
    for _, model in [*reference.sections(), ("teams", TeamConfig)]:
        for key, info in model.model_fields.items():
            if key == "upstream_key":
                continue
            assert f"| `{key}` |" in text, key
            assert info.description, f"{model.__name__}.{key} has no description"


def test_the_example_is_the_defaults_plus_two_teams() -> None:
    data = tomllib.loads(reference.toml())
    config = parse_config(data, environ={"STRIPE_SECRET_KEY": "sk_test_x"})
    assert [team.name for team in config.teams] == ["billing", "analytics"]
    defaults = parse_config({"teams": data["teams"]}, environ={"STRIPE_SECRET_KEY": "sk_test_x"})
    assert config.server == defaults.server and config.upstream == defaults.upstream
    assert config.admin == defaults.admin
