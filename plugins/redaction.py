"""Redaction: no secret or personal data in any log line, ever.

The plugin contributes one structlog processor (:func:`gateway_log_processors`) that the
gateway puts in front of the renderer of every log pipeline: audit line, error log,
stdlib and aiohttp logs. It redacts the whole event dict, tracebacks included; what it
finds and how it masks is described in :mod:`gateway.redaction.redact` and
:mod:`gateway.redaction.sensitive`.
Only log output is redacted: the bytes relayed to Stripe and to the client never are.
A value that cannot be parsed is logged as ``[unparsed N bytes]``; one whose redaction
fails too, and its line gets ``redaction_error: true`` (fail closed).

Settings (``[plugins.redaction]``, all optional): :class:`RedactionSettings`, listed in
``docs/configuration.md``. Always hidden, whatever the settings: the headers
``Authorization``, ``Proxy-Authorization``, ``Cookie``, ``Set-Cookie`` and
``Stripe-Signature``, and the ``credentials`` and ``card`` categories. With
``mask = "hmac"`` keys still show their prefix and last four, card numbers their last four.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Any, Literal

from pydantic import Field, PrivateAttr, ValidationInfo, field_validator, model_validator
from structlog.typing import Processor

from gateway.config import GatewayConfig
from gateway.hookspecs import hookimpl
from gateway.metrics import GatewayMetrics
from gateway.redaction.redact import RedactingProcessor, Redactor
from gateway.redaction.sensitive import ALWAYS_ON, CATEGORIES
from gateway.settings import Settings

__all__ = ["RedactionPlugin", "RedactionSettings"]

_FIELD = re.compile(r"[A-Za-z0-9_-]+(?:\[[A-Za-z0-9_-]+\])*")
_HEADER = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_MIN_KEY_BYTES = 16


def _names(value: list[str], shape: re.Pattern[str], what: str) -> list[str]:
    for i, name in enumerate(value):
        if not shape.fullmatch(name):
            raise ValueError(f"entry {i}: must be {what}, not {name!r}")
    return value


class RedactionSettings(Settings):
    """Every log line (audit, errors, aiohttp/stdlib logs) passes through redaction in front
    of the renderer. Built in: the Authorization, Proxy-Authorization, Cookie, Set-Cookie and
    Stripe-Signature headers; card data, bank and identity numbers, secrets and tokens,
    Forwarding request bodies and header values, wallet addresses, personal data; Stripe
    keys, webhook secrets, client secrets, Basic credentials and Luhn-valid card numbers
    anywhere in any text, and e-mail addresses too while personal_data is on."""

    fields: list[str] = Field(
        default_factory=list,
        description='extra field names to hide: "nickname" anywhere, "metadata[tax_number]" '
        "only directly below metadata",
    )
    headers: list[str] = Field(
        default_factory=list, description='extra header names to hide, e.g. ["X-Api-Key"]'
    )
    patterns: list[str] = Field(
        default_factory=list,
        description="extra regular expressions; every match in any value becomes the "
        "marker; must not match the empty string",
    )
    categories: dict[str, bool] = Field(
        default_factory=dict,
        description="field categories to turn off: {personal_data = false}; bank, "
        "identity, forwarding, crypto and personal_data can be turned off, credentials and "
        "card cannot (all on by default)",
    )
    mask: Literal["marker", "hmac"] = Field(
        "marker",
        description='"marker" ([redacted]) or "hmac": an HMAC-SHA256 of the value, '
        "[hmac:<16 hex>], so equal values can be correlated",
    )
    hmac_key_env: str | None = Field(
        None,
        description='with mask = "hmac": the environment variable holding the key (at least '
        "16 bytes); the key itself never goes in the config file",
        examples=["STRIPE_GATEWAY_LOG_HMAC_KEY"],
    )
    max_bytes: int = Field(
        1 << 20,
        ge=1024,
        description="longer strings and bodies are not parsed, only counted: [unparsed N bytes]",
    )

    _patterns: tuple[re.Pattern[str], ...] = PrivateAttr(())
    _hmac_key: bytes | None = PrivateAttr(None)

    @model_validator(mode="before")
    @classmethod
    def _no_keys(cls, data: Any) -> Any:
        for key in ("hmac_key", "key", "secret"):
            if isinstance(data, dict) and key in data:
                raise ValueError(
                    f"{key}: keys never go in the config file: put it in an environment "
                    "variable and name that variable in hmac_key_env"
                )
        return data

    @field_validator("fields")
    @classmethod
    def _fields(cls, value: list[str]) -> list[str]:
        return _names(value, _FIELD, 'a field name or "context[name]"')

    @field_validator("headers")
    @classmethod
    def _headers(cls, value: list[str]) -> list[str]:
        return _names(value, _HEADER, "a header name")

    @field_validator("patterns")
    @classmethod
    def _patterns_compile(cls, value: list[str]) -> list[str]:
        for i, source in enumerate(value):
            if not source:
                raise ValueError(f"entry {i}: must be a non-empty string")
            try:
                pattern = re.compile(source)
            except re.error as exc:
                raise ValueError(f"entry {i}: is not a valid regular expression: {exc}") from None
            if pattern.fullmatch(""):
                raise ValueError(f"entry {i}: matches the empty string")
        return value

    @field_validator("categories")
    @classmethod
    def _categories(cls, value: dict[str, bool]) -> dict[str, bool]:
        for name, on in value.items():
            if name not in CATEGORIES:
                raise ValueError(f"{name}: unknown category; known: {', '.join(CATEGORIES)}")
            if not on and name in ALWAYS_ON:
                raise ValueError(f"{name}: cannot be turned off")
        return value

    @model_validator(mode="after")
    def _key(self, info: ValidationInfo) -> RedactionSettings:
        environ: Mapping[str, str] = (info.context or {}).get("environ", os.environ)
        if self.mask != "hmac":
            if self.hmac_key_env is not None:
                raise ValueError('hmac_key_env: is set but mask is not "hmac"')
            return self
        name = self.hmac_key_env
        if not name:
            raise ValueError(
                'hmac_key_env: mask = "hmac" needs the name of an environment variable'
            )
        key = environ.get(name, "").encode()
        if not key:
            raise ValueError(f"hmac_key_env: environment variable {name} is not set or empty")
        if len(key) < _MIN_KEY_BYTES:
            raise ValueError(
                f"hmac_key_env: the key in {name} is shorter than {_MIN_KEY_BYTES} bytes"
            )
        self._hmac_key = key
        return self

    def model_post_init(self, context: Any, /) -> None:
        self._patterns = tuple(re.compile(p) for p in self.patterns)

    @property
    def enabled_categories(self) -> frozenset[str]:
        return frozenset(name for name in CATEGORIES if self.categories.get(name, True))

    @property
    def compiled_patterns(self) -> tuple[re.Pattern[str], ...]:
        return self._patterns

    @property
    def hmac_key(self) -> bytes | None:
        return self._hmac_key

    def redactor(self) -> Redactor:
        return Redactor(
            categories=self.enabled_categories,
            fields=tuple(self.fields),
            headers=tuple(self.headers),
            patterns=self._patterns,
            hmac_key=self._hmac_key,
            max_chars=self.max_bytes,
        )


class RedactionPlugin:
    """Built-in plugin ``redaction``."""

    name = "redaction"
    settings_model = RedactionSettings

    def __init__(self) -> None:
        self.settings = RedactionSettings()
        self.processor = RedactingProcessor(self.settings.redactor())

    @hookimpl
    def gateway_configure(self, config: GatewayConfig, settings: RedactionSettings) -> None:
        self.settings = settings
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
