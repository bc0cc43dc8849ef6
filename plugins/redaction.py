"""Redaction: no secret or personal data in any log line, ever.

The plugin contributes one structlog processor (:func:`gateway_log_processors`) that the
gateway puts in front of the renderer of every log pipeline: audit line, error log,
stdlib and aiohttp logs. It redacts the whole event dict, tracebacks included; what it
finds and how it masks is described in :mod:`gateway.redact` and :mod:`gateway.sensitive`.
Only log output is redacted: the bytes relayed to Stripe and to the client never are.
A value that cannot be parsed is logged as ``[unparsed N bytes]``; one whose redaction
fails too, and its line gets ``redaction_error: true`` (fail closed).

Settings (``[plugins.redaction]``, all optional):

``fields``        extra field names to hide: ``"nickname"`` anywhere,
                  ``"metadata[tax_number]"`` only directly below ``metadata`` (``[]``)
``headers``       extra header names to hide, e.g. ``["X-Api-Key"]`` (``[]``); always hidden:
                  ``Authorization``, ``Proxy-Authorization``, ``Cookie``, ``Set-Cookie``,
                  ``Stripe-Signature``
``patterns``      extra regular expressions; every match in any value becomes the marker
                  (``[]``); must not match the empty string
``categories``    field categories to turn off: ``{personal_data = false}``; ``bank``,
                  ``identity``, ``forwarding``, ``crypto`` and ``personal_data`` can be turned
                  off, ``credentials`` and ``card`` cannot (all on by default)
``mask``          ``"marker"`` (``[redacted]``, the default) or ``"hmac"``: an HMAC-SHA256 of
                  the value, ``[hmac:<16 hex>]``, so equal values can be correlated (keys
                  still show their prefix and last four, card numbers their last four)
``hmac_key_env``  with ``mask = "hmac"``: the environment variable holding the key (at least
                  16 bytes); the key itself never goes in the config file
``max_bytes``     longer strings and bodies are not parsed, only counted:
                  ``[unparsed N bytes]`` (1048576)
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from structlog.typing import Processor

from gateway.config import GatewayConfig
from gateway.errors import ConfigError
from gateway.hookspecs import hookimpl
from gateway.metrics import GatewayMetrics
from gateway.redact import RedactingProcessor, Redactor
from gateway.sensitive import ALWAYS_ON, CATEGORIES

__all__ = ["RedactionPlugin", "RedactionSettings"]

_KEYS = ("fields", "headers", "patterns", "categories", "mask", "hmac_key_env", "max_bytes")
_FIELD = re.compile(r"[A-Za-z0-9_-]+(?:\[[A-Za-z0-9_-]+\])*")
_HEADER = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_MIN_KEY_BYTES = 16


@dataclass(frozen=True)
class RedactionSettings:
    """``[plugins.redaction]``, validated."""

    fields: tuple[str, ...] = ()
    headers: tuple[str, ...] = ()
    patterns: tuple[re.Pattern[str], ...] = ()
    categories: frozenset[str] = frozenset(CATEGORIES)
    hmac_key: bytes | None = field(default=None, repr=False)
    max_bytes: int = 1 << 20

    @classmethod
    def parse(
        cls, table: Mapping[str, Any], environ: Mapping[str, str] | None = None
    ) -> RedactionSettings:
        environ = os.environ if environ is None else environ
        for key in table:
            if key in ("hmac_key", "key", "secret"):
                raise ConfigError(
                    key,
                    "keys never go in the config file: put it in an environment variable and "
                    "name that variable in hmac_key_env",
                )
            if key not in _KEYS:
                raise ConfigError(key, "unknown key")
        values: dict[str, Any] = {
            "fields": _names(table, "fields", _FIELD, 'a field name or "context[name]"'),
            "headers": _names(table, "headers", _HEADER, "a header name"),
            "patterns": _patterns(table.get("patterns", [])),
            "categories": _categories(table.get("categories", {})),
        }
        mask = table.get("mask", "marker")
        if mask not in ("marker", "hmac"):
            raise ConfigError("mask", 'must be "marker" or "hmac"')
        if mask == "hmac":
            values["hmac_key"] = _hmac_key(table, environ)
        elif "hmac_key_env" in table:
            raise ConfigError("hmac_key_env", 'is set but mask is not "hmac"')
        if "max_bytes" in table:
            value = table["max_bytes"]
            if isinstance(value, bool) or not isinstance(value, int) or value < 1024:
                raise ConfigError("max_bytes", "must be a whole number >= 1024")
            values["max_bytes"] = value
        return cls(**values)

    def redactor(self) -> Redactor:
        return Redactor(
            categories=self.categories,
            fields=self.fields,
            headers=self.headers,
            patterns=self.patterns,
            hmac_key=self.hmac_key,
            max_chars=self.max_bytes,
        )


def _names(
    table: Mapping[str, Any], key: str, shape: re.Pattern[str], what: str
) -> tuple[str, ...]:
    value = table.get(key, [])
    if not isinstance(value, list):
        raise ConfigError(key, "must be a list of strings")
    for i, name in enumerate(value):
        if not isinstance(name, str) or not shape.fullmatch(name):
            raise ConfigError(f"{key}[{i}]", f"must be {what}, not {name!r}")
    return tuple(value)


def _patterns(value: Any) -> tuple[re.Pattern[str], ...]:
    if not isinstance(value, list):
        raise ConfigError("patterns", "must be a list of regular expressions")
    out = []
    for i, source in enumerate(value):
        if not isinstance(source, str) or not source:
            raise ConfigError(f"patterns[{i}]", "must be a non-empty string")
        try:
            pattern = re.compile(source)
        except re.error as exc:
            raise ConfigError(
                f"patterns[{i}]", f"is not a valid regular expression: {exc}"
            ) from None
        if pattern.fullmatch(""):
            raise ConfigError(f"patterns[{i}]", "matches the empty string")
        out.append(pattern)
    return tuple(out)


def _categories(value: Any) -> frozenset[str]:
    if not isinstance(value, dict):
        raise ConfigError("categories", "must be a table like {personal_data = false}")
    enabled = set(CATEGORIES)
    for name, on in value.items():
        if name not in CATEGORIES:
            raise ConfigError(
                f"categories.{name}", f"unknown category; known: {', '.join(CATEGORIES)}"
            )
        if not isinstance(on, bool):
            raise ConfigError(f"categories.{name}", "must be true or false")
        if not on and name in ALWAYS_ON:
            raise ConfigError(f"categories.{name}", "cannot be turned off")
        if not on:
            enabled.discard(name)
    return frozenset(enabled)


def _hmac_key(table: Mapping[str, Any], environ: Mapping[str, str]) -> bytes:
    name = table.get("hmac_key_env")
    if not isinstance(name, str) or not name:
        raise ConfigError("hmac_key_env", 'mask = "hmac" needs the name of an environment variable')
    key = environ.get(name, "").encode()
    if not key:
        raise ConfigError("hmac_key_env", f"environment variable {name} is not set or empty")
    if len(key) < _MIN_KEY_BYTES:
        raise ConfigError(
            "hmac_key_env", f"the key in {name} is shorter than {_MIN_KEY_BYTES} bytes"
        )
    return key


class RedactionPlugin:
    """Built-in plugin ``redaction``."""

    name = "redaction"

    def __init__(self) -> None:
        self.settings = RedactionSettings()
        self.processor = RedactingProcessor(self.settings.redactor())

    @hookimpl
    def gateway_configure(self, config: GatewayConfig, settings: dict[str, Any]) -> None:
        self.settings = RedactionSettings.parse(settings)
        self.processor = RedactingProcessor(self.settings.redactor())

    @hookimpl
    def gateway_startup(self, metrics: GatewayMetrics) -> None:
        self.processor.on_failure = metrics.counter(
            "redaction_fail_closed",
            "Log lines in which a value could not be redacted and was replaced whole.",
        ).inc

    @hookimpl(trylast=True)
    def gateway_log_processors(self, config: GatewayConfig) -> list[Processor]:
        return [self.processor]
