"""The publicly known keys are refused (gateway.demokeys), and new-key's keys are sound."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from gateway.config import load_config, parse_config
from gateway.demokeys import (
    DEMO_ADMIN_TOKEN,
    DEMO_KEYS,
    EXAMPLE_KEYS,
    digest,
    new_key,
    refuse_demo_keys,
)
from gateway.errors import ConfigError
from gateway.redaction.sensitive import KEYS
from tests.helpers import BILLING_KEY

EXAMPLE = Path(__file__).resolve().parents[2] / "config.example.toml"
PUBLIC = [key for _, key, _ in DEMO_KEYS] + list(EXAMPLE_KEYS.values())


def test_the_example_config_is_valid_but_refused_naming_the_team_and_the_fixes() -> None:
    config = load_config(EXAMPLE, environ={"STRIPE_SECRET_KEY": "sk_test_example000000001"})
    with pytest.raises(ConfigError) as info:
        refuse_demo_keys(config)
    assert info.value.path == "teams[0].key_sha256[0]"
    reason = info.value.reason
    assert "'billing'" in reason and "gw_demo_billing_key" in reason
    assert "stripe-gateway new-key --team billing" in reason and "--allow-demo-keys" in reason
    # the example's digests are those of the keys its comments name
    assert [t.key_sha256 for t in config.teams] == [
        [digest(EXAMPLE_KEYS[t.name])] for t in config.teams
    ]


@pytest.mark.parametrize("key", PUBLIC)
def test_every_public_key_is_refused_wherever_it_is_listed(key: str) -> None:
    config = parse_config(
        {
            "teams": [
                {"name": "ok", "key_sha256": [digest(BILLING_KEY)]},
                {"name": "late", "key_sha256": [digest(new_key()), digest(key)]},
            ]
        },
        environ={},
    )
    with pytest.raises(ConfigError) as info:
        refuse_demo_keys(config)
    assert info.value.path == "teams[1].key_sha256[1]"
    assert "'late'" in info.value.reason


def test_a_config_without_public_keys_passes() -> None:
    config = parse_config({"teams": [{"name": "t", "key_sha256": [digest(new_key())]}]}, environ={})
    refuse_demo_keys(config)


def test_new_keys_are_long_random_and_masked_by_the_redaction_patterns() -> None:
    keys = {new_key() for _ in range(100)}
    assert len(keys) == 100
    for key in keys:
        assert re.fullmatch(r"gw_live_[A-Za-z0-9]{40}", key)
        found = KEYS.search(f"a line with {key} in it")
        assert found and found.group(0) == key


def test_the_demos_admin_token_is_refused_too() -> None:
    config = parse_config(
        {"admin": {"port": 9090, "token_sha256": digest(DEMO_ADMIN_TOKEN)}}, environ={}
    )
    with pytest.raises(ConfigError) as info:
        refuse_demo_keys(config)
    assert info.value.path == "admin.token_sha256"
    assert "hash-key" in info.value.reason and "--allow-demo-keys" in info.value.reason
