"""The example plugin of docs/writing-plugins.md, taken from that page as it stands,
written into a temporary directory and loaded with ``[plugins] load``: tested with
:mod:`gateway.testing`, then in a real gateway (its answer, header, metric, audit field and
admin route)."""

from __future__ import annotations

import importlib
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from gateway.testing import PluginTest
from tests.helpers import BILLING_KEY, Stack, digest, free_port

PAGE = Path(__file__).resolve().parents[1] / "docs" / "writing-plugins.md"
ADMIN_TOKEN = "adm_test_token_00000000000000001"


def _example() -> str:
    section = PAGE.read_text().split("## A complete example", 1)[1].split("\n## ", 1)[0]
    (code,) = re.findall(r"```python\n(# whoami_plugin\.py\n.*?)```", section, re.S)
    return code


@pytest.fixture
def plugin_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    (tmp_path / "whoami_plugin.py").write_text(_example())
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop("whoami_plugin", None)
    yield importlib.import_module("whoami_plugin")
    sys.modules.pop("whoami_plugin", None)


async def test_the_example_plugin_with_gateway_testing(plugin_module: Any) -> None:
    plugin = plugin_module.WhoAmIPlugin()
    async with PluginTest(plugin, settings={"whoami": {"header": "X-Team"}}) as t:
        ctx = t.context("GET", "/v1/gateway/whoami", team="billing")
        answer = await t.request(ctx)
        assert answer is not None and answer.status == 200
        headers = await t.finish(ctx)
        assert headers["X-Team"] == "billing"
        assert t.audit_fields(ctx) == {"whoami": "billing"}
        assert t.metric("stripe_gateway_whoami_answers_total", {"team": "billing"}) == 1.0
        other = t.context("GET", "/v1/customers", team="billing")
        assert await t.request(other) is None  # not the plugin's: it goes upstream
        assert t.audit_fields(other) == {}
        state = await t.admin("GET", "/admin/whoami")
        assert state.status == 200
        assert state.text == '{"path": "/v1/gateway/whoami", "answered": 1}'


def test_the_example_plugin_in_a_real_gateway(stack: Stack, plugin_module: Any) -> None:
    stack.start_gateway(
        admin={"port": free_port(), "token_sha256": digest(ADMIN_TOKEN)},
        plugins={"load": ["whoami_plugin:WhoAmIPlugin"], "whoami": {"header": "X-Team"}},
    )
    auth = {"Authorization": f"Bearer {BILLING_KEY}"}
    response = requests.get(stack.gateway_url + "/v1/gateway/whoami", headers=auth, timeout=10)
    assert response.status_code == 200
    assert response.json() == {"object": "gateway.whoami", "team": "billing"}
    assert response.headers["X-Team"] == "billing"
    (line,) = stack.audit_lines(1)
    assert line["whoami"] == "billing" and line["team"] == "billing" and line["status"] == 200
    admin = stack.admin_url
    metrics = requests.get(admin + "/metrics", timeout=10).text
    assert 'stripe_gateway_whoami_answers_total{team="billing"} 1.0' in metrics
    token = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    state = requests.get(admin + "/admin/whoami", headers=token, timeout=10)
    assert state.status_code == 200 and state.json()["answered"] == 1
    refused = requests.get(admin + "/admin/whoami", timeout=10)  # no token
    assert refused.status_code == 401
    assert refused.json()["error"]["code"] == "admin_unauthorized"


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ({"path": "/whoami"}, "plugins.whoami.path: must start with /v1/ or /v2/"),
        ({"header": ""}, "plugins.whoami.header:"),
        ({"nmae": "x"}, "plugins.whoami.nmae: unknown key"),
    ],
)
def test_the_example_plugin_declares_its_settings(
    plugin_module: Any, stack: Stack, table: dict[str, Any], message: str
) -> None:
    from gateway.errors import ConfigError

    with pytest.raises(ConfigError) as info:
        stack.start_gateway(plugins={"load": ["whoami_plugin:WhoAmIPlugin"], "whoami": table})
    assert message in str(info.value)
