"""The redaction plugin: its settings, its hook, and its processor in a log pipeline."""

from __future__ import annotations

import hmac
import inspect
import io
import json
import re
from typing import Any

import orjson
import pluggy
import pytest
import structlog
from structlog.typing import EventDict, Processor, WrappedLogger

from gateway import hookspecs
from gateway.config import GatewayConfig, parse_config
from gateway.errors import ConfigError
from gateway.hookspecs import hookimpl
from gateway.host import PluginHost
from gateway.redaction.redact import MARKER, RedactingProcessor
from gateway.redaction.sensitive import CATEGORIES
from gateway.settings import validate_settings
from plugins.redaction import RedactionPlugin, RedactionSettings
from tests.helpers import ENVIRON

KEY_ENV = {"LOG_HMAC_KEY": "0123456789abcdef0123456789abcdef"}
CARD = "4242424242424242"


def config(**plugins: Any) -> GatewayConfig:
    return parse_config({"plugins": plugins}, environ=ENVIRON)


def configured(table: dict[str, Any], environ: dict[str, str] | None = None) -> RedactionPlugin:
    plugin = RedactionPlugin()
    plugin.settings = validate_settings(
        RedactionSettings, table, context={"environ": environ or {}}
    )
    plugin.processor = RedactingProcessor(plugin.settings.redactor())
    return plugin


def log_lines(
    processors: list[Processor], *calls: tuple[str, dict[str, Any]]
) -> list[dict[str, Any]]:
    """What a JSON-line logger with ``processors`` in front of its renderer writes."""
    stream = io.BytesIO()
    log = structlog.wrap_logger(
        structlog.BytesLogger(stream),
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.format_exc_info,
            *processors,
            structlog.processors.JSONRenderer(serializer=orjson.dumps),
        ],
    )
    for event, fields in calls:
        log.info(event, **fields)
    return [json.loads(line) for line in stream.getvalue().splitlines()]


# --------------------------------------------------------------------------- settings


def test_defaults() -> None:
    settings = validate_settings(RedactionSettings, {}, context={"environ": {}})
    assert settings == RedactionSettings()
    assert settings.enabled_categories == frozenset(CATEGORIES)
    assert settings.hmac_key is None and settings.max_bytes == 1 << 20
    # a plugin works before it is configured, with the defaults
    out = RedactionPlugin().processor(None, "info", {"email": "e@x", "cvc": "1"})
    assert out == {"email": MARKER, "cvc": MARKER}


def test_every_setting() -> None:
    settings = validate_settings(
        RedactionSettings,
        {
            "fields": ["nickname", "metadata[tax_number]"],
            "headers": ["X-Api-Key"],
            "patterns": [r"acme_[0-9a-f]{8}"],
            "categories": {"personal_data": False, "crypto": True},
            "mask": "hmac",
            "hmac_key_env": "LOG_HMAC_KEY",
            "max_bytes": 4096,
        },
        context={"environ": KEY_ENV},
    )
    assert settings.fields == ["nickname", "metadata[tax_number]"]
    assert settings.headers == ["X-Api-Key"]
    assert [p.pattern for p in settings.compiled_patterns] == [r"acme_[0-9a-f]{8}"]
    assert settings.enabled_categories == frozenset(CATEGORIES) - {"personal_data"}
    assert settings.hmac_key == KEY_ENV["LOG_HMAC_KEY"].encode()
    assert settings.max_bytes == 4096
    assert "0123456789abcdef" not in repr(settings)


@pytest.mark.parametrize(
    ("table", "path", "reason"),
    [
        ({"colour": "red"}, "colour", "unknown key"),
        ({"hmac_key": "s3cret"}, "hmac_key", "never go in the config file"),
        ({"fields": "email"}, "fields", "must be a list"),
        ({"fields": ["ok", "bad name"]}, "fields[1]", 'a field name or "context[name]"'),
        ({"fields": ["a[b"]}, "fields[0]", "field name"),
        ({"headers": ["X-Ok", "Bad:Header"]}, "headers[1]", "a header name"),
        ({"patterns": "acme_.*"}, "patterns", "must be a list"),
        ({"patterns": ["ok", "acme_(["]}, "patterns[1]", "not a valid regular expression"),
        ({"patterns": ["x*"]}, "patterns[0]", "matches the empty string"),
        ({"patterns": [""]}, "patterns[0]", "non-empty string"),
        ({"categories": ["personal_data"]}, "categories", "must be a table"),
        ({"categories": {"pii": False}}, "categories.pii", "unknown category"),
        ({"categories": {"bank": "no"}}, "categories.bank", "true or false"),
        ({"categories": {"credentials": False}}, "categories.credentials", "cannot be turned off"),
        ({"categories": {"card": False}}, "categories.card", "cannot be turned off"),
        ({"mask": "stars"}, "mask", '"marker" or "hmac"'),
        ({"mask": "hmac"}, "hmac_key_env", "needs the name of an environment variable"),
        ({"mask": "hmac", "hmac_key_env": "UNSET"}, "hmac_key_env", "UNSET is not set"),
        ({"mask": "hmac", "hmac_key_env": "SHORT"}, "hmac_key_env", "shorter than 16 bytes"),
        ({"hmac_key_env": "LOG_HMAC_KEY"}, "hmac_key_env", 'mask is not "hmac"'),
        ({"max_bytes": 10}, "max_bytes", ">= 1024"),
        ({"max_bytes": True}, "max_bytes", "whole number"),
    ],
)
def test_bad_settings_stop_start_up_with_the_key_path(
    table: dict[str, Any], path: str, reason: str
) -> None:
    with pytest.raises(ConfigError) as info:
        validate_settings(
            RedactionSettings, table, context={"environ": {**KEY_ENV, "SHORT": "abc"}}
        )
    assert info.value.path == path
    assert reason in info.value.reason


def test_the_host_prefixes_the_table_path() -> None:
    data = {"redaction": {"patterns": ["(("]}}  # a built-in plugin
    with pytest.raises(ConfigError) as info:
        PluginHost(config(**data), entry_points_enabled=False)
    assert info.value.path == "plugins.redaction.patterns[0]"


def test_the_key_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LOG_HMAC_KEY", KEY_ENV["LOG_HMAC_KEY"])
    host = PluginHost(
        config(redaction={"mask": "hmac", "hmac_key_env": "LOG_HMAC_KEY"}),
        entry_points_enabled=False,
    )
    plugin = host.pm.get_plugin("redaction")
    assert isinstance(plugin, RedactionPlugin)
    out = plugin.processor(None, "info", {"email": "jenny@example.com"})
    digest = hmac.new(KEY_ENV["LOG_HMAC_KEY"].encode(), b"jenny@example.com", "sha256")
    assert out == {"email": f"[hmac:{digest.hexdigest()[:16]}]"}


# --------------------------------------------------------------------------- the hook


def test_the_hook_spec_is_documented_in_lifecycle_order() -> None:
    spec = hookspecs.gateway_log_processors
    doc = inspect.getdoc(spec) or ""
    for words in ("Fires once", "gateway_configure", "Return value", "Failure", "synchronous"):
        assert words in doc
    source = inspect.getsource(hookspecs)
    assert (
        source.index("def gateway_configure(")
        < source.index("def gateway_log_processors(")
        < source.index("def gateway_startup(")
    )


class OtherPlugin:
    """A plugin adding its own processor, registered after the redaction plugin."""

    @staticmethod
    def add_team(logger: WrappedLogger, method_name: str, event_dict: EventDict) -> EventDict:
        event_dict["note"] = "key sk_live_51HqLyjWDarjtT1zdp7dcXYZ1234"
        return event_dict

    @hookimpl
    def gateway_log_processors(self, config: GatewayConfig) -> list[Processor]:
        return [self.add_team]


def test_its_processor_comes_last_in_front_of_the_renderer() -> None:
    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    redaction = RedactionPlugin()
    pm.register(redaction, name="redaction")
    pm.register(OtherPlugin(), name="other")
    pm.check_pending()
    redaction.gateway_configure(config(), RedactionSettings())
    results = pm.hook.gateway_log_processors(config=config())
    processors = [p for result in results if result for p in result]
    assert processors == [OtherPlugin.add_team, redaction.processor]
    (line,) = log_lines(processors, ("request", {"email": "e@x"}))
    assert line == {
        "event": "request",
        "email": MARKER,
        "note": "key sk_live_…1234",
        "level": "info",
    }


def test_the_host_registers_it_as_an_ordinary_plugin() -> None:
    host = PluginHost(config(redaction={"headers": ["X-Api-Key"]}), entry_points_enabled=False)
    assert "redaction" in host.plugin_names()  # built in, on by default
    processors = list(host.log_processors)
    (line,) = log_lines(processors, ("request", {"headers": {"X-Api-Key": "k", "X": "y"}}))
    assert line["headers"] == {"X-Api-Key": MARKER, "X": "y"}


# --------------------------------------------------------------------------- in a pipeline


def test_settings_shape_what_is_hidden() -> None:
    plugin = configured(
        {
            "fields": ["nickname", "metadata[tax_number]"],
            "headers": ["X-Api-Key"],
            "patterns": [r"acme_[0-9a-f]{8}"],
            "categories": {"personal_data": False},
        }
    )
    (line,) = log_lines(
        [plugin.processor],
        (
            "request",
            {
                "params": "nickname=Jen&metadata[tax_number]=DE1&metadata[x]=acme_0123abcd"
                "&email=jenny%40example.com&card[cvc]=123",
                "headers": {"X-Api-Key": "abc", "Authorization": "Bearer x"},
            },
        ),
    )
    assert line["params"] == (
        "nickname=[redacted]&metadata[tax_number]=[redacted]&metadata[x]=[redacted]"
        "&email=jenny%40example.com&card[cvc]=[redacted]"
    )
    assert line["headers"] == {"X-Api-Key": MARKER, "Authorization": MARKER}


def test_hmac_mode_correlates_without_showing() -> None:
    plugin = configured({"mask": "hmac", "hmac_key_env": "LOG_HMAC_KEY"}, KEY_ENV)
    lines = log_lines(
        [plugin.processor],
        ("a", {"params": "email=jenny%40example.com&card[number]=" + CARD}),
        ("b", {"email": "jenny@example.com"}),
        ("c", {"email": "someone@example.com"}),
    )
    masked = re.search(r"email=(\[hmac:[0-9a-f]{16}\])", lines[0]["params"])
    assert masked is not None and masked[1] == lines[1]["email"] != lines[2]["email"]
    assert "card[number]=…4242" in lines[0]["params"]
    assert "jenny" not in json.dumps(lines)


def test_large_values_are_counted_not_parsed() -> None:
    plugin = configured({"max_bytes": 1024})
    body = "description=" + "x" * 2000
    (line,) = log_lines([plugin.processor], ("request", {"params": body}))
    assert line["params"] == f"[unparsed {len(body)} bytes]"


def test_a_broken_processor_never_breaks_the_log_line() -> None:
    plugin = configured({})

    def boom(event_dict: Any) -> Any:
        raise RuntimeError("bug")

    plugin.processor.redactor.event = boom  # type: ignore[method-assign]
    (line,) = log_lines([plugin.processor], ("request", {"status": 200, "key": CARD}))
    assert line == {
        "event": "[unparsed 7 bytes]",
        "status": 200,
        "key": "[unparsed 16 bytes]",
        "level": "[unparsed 4 bytes]",
        "redaction_error": True,
    }
