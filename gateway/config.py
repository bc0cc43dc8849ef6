"""The configuration file: one TOML document, parsed and validated once at start-up.

Every problem is reported as a :class:`~gateway.errors.ConfigError` naming the key path
(``teams[1].upstream_key_env``) and the reason; the CLI turns it into exit code 2.
Secrets never live in the file: team keys are SHA-256 digests, upstream Stripe keys are
read from the environment variable or file that the config names.

Every model derives from :class:`gateway.settings.Settings` (strict, closed, frozen) and
problems are translated by :func:`gateway.settings.validate_settings`, the same translator the
plugin host uses for ``[plugins.<name>]`` tables: the core checks only that ``<name>`` is a
known plugin, and the host validates the table against the plugin's declared model.
"""

from __future__ import annotations

import contextlib
import os
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import (
    ConfigDict,
    Field,
    SecretStr,
    ValidationInfo,
    field_validator,
    model_validator,
)

from gateway.errors import ConfigError
from gateway.globs import parse_rule
from gateway.settings import Settings, validate_settings
from gateway.tls import server_context

__all__ = [
    "ENV_OVERRIDES",
    "AdminConfig",
    "GatewayConfig",
    "PluginsConfig",
    "ServerConfig",
    "TeamConfig",
    "UpstreamConfig",
    "load_config",
    "parse_config",
]

#: Environment variables that override a config value: variable -> (table, key).
ENV_OVERRIDES: dict[str, tuple[str, str]] = {
    "STRIPE_GATEWAY_HOST": ("server", "host"),
    "STRIPE_GATEWAY_PORT": ("server", "port"),
    "STRIPE_GATEWAY_ADMIN_HOST": ("admin", "host"),
    "STRIPE_GATEWAY_ADMIN_PORT": ("admin", "port"),
    "STRIPE_GATEWAY_API_UPSTREAM": ("upstream", "api"),
    "STRIPE_GATEWAY_FILES_UPSTREAM": ("upstream", "files"),
    "STRIPE_GATEWAY_CONNECT_UPSTREAM": ("upstream", "connect"),
    "STRIPE_GATEWAY_METER_EVENTS_UPSTREAM": ("upstream", "meter_events"),
}

_URL = re.compile(r"^https?://[^/\s?#]+$")
_DIGEST = re.compile(r"^[0-9a-f]{64}$")


class ServerConfig(Settings):
    """The public listener. Every `[server]` key is read at start only: a reload (SIGHUP)
    keeps the running values, except that it reads the TLS certificate and key files
    again (same paths), for the connections that follow."""

    host: str = Field("127.0.0.1", min_length=1, description="address to listen on")
    port: int = Field(8080, ge=0, le=65535, description="port to listen on")
    drain_timeout: float = Field(
        30.0, gt=0, description="seconds in-flight requests get to finish after SIGTERM/SIGINT"
    )
    max_body_bytes: int = Field(
        32 * 1024 * 1024, gt=0, description="largest request body accepted (413 above it)"
    )
    body_timeout: float = Field(
        30.0,
        gt=0,
        description="longest wait, in seconds, for the next part of a request body (408 "
        "after it), like nginx's client_body_timeout: per read, not for the whole body",
    )
    body_total_timeout: float = Field(
        600.0,
        gt=0,
        description="longest time, in seconds, a whole request body may take to arrive "
        "(408 after it)",
    )
    send_timeout: float = Field(
        60.0,
        gt=0,
        description="longest wait, in seconds, for the client to take the next part of a "
        "response, like nginx's send_timeout: then its connection is closed and its upstream "
        "one freed",
    )
    buffer_body_bytes: int = Field(
        1024 * 1024,
        ge=0,
        description="request bodies with a Content-Length up to this many bytes are read "
        "whole before an upstream connection is taken (0: every body streams as it arrives)",
    )
    max_header_bytes: int = Field(
        8190,
        ge=1024,
        le=1024 * 1024,
        description="largest request line or single header accepted (a Stripe-shaped 431 above it)",
    )
    header_timeout: float = Field(
        20.0,
        gt=0,
        description="seconds a request line and headers may take, from the connection's "
        "opening (or the next request's first byte, on a kept-alive connection); then a 408 "
        "and a close",
    )
    keepalive_timeout: float = Field(
        75.0, gt=0, description="seconds a kept-alive connection may stay idle between requests"
    )
    max_connections: int = Field(
        10000,
        ge=0,
        description="open client connections per process (0 = unlimited); more are closed at once",
    )
    uvloop: bool = Field(True, description="use uvloop when it is installed")
    workers: int = Field(
        1,
        ge=1,
        le=256,
        description="worker processes sharing the listening port (1: the gateway is one process)",
    )
    tls_certificate: str | None = Field(
        None,
        description="PEM file of the certificate (then its intermediates) to serve HTTPS "
        "with, for deployments without a TLS-terminating proxy; re-read on SIGHUP",
        examples=["/etc/stripe-gateway/tls/fullchain.pem"],
    )
    tls_key: str | None = Field(
        None,
        description="PEM file of the certificate's private key (unencrypted: protect the file); "
        "re-read on SIGHUP",
        examples=["/etc/stripe-gateway/tls/privkey.pem"],
    )

    @model_validator(mode="after")
    def _tls(self) -> ServerConfig:
        if (self.tls_certificate is None) != (self.tls_key is None):
            missing = "tls_key" if self.tls_key is None else "tls_certificate"
            raise ValueError(f"{missing}: TLS needs both tls_certificate and tls_key")
        if self.tls_certificate is not None and self.tls_key is not None:
            server_context(self.tls_certificate, self.tls_key)  # TlsError names the file
        return self

    @property
    def tls(self) -> bool:
        """Whether the public listener speaks HTTPS."""
        return self.tls_certificate is not None


class AdminConfig(Settings):
    """The admin listener: Prometheus metrics, health and admin endpoints, on an address and
    port of their own (keep it off the public network). GET /healthz, /readyz and /metrics are
    open; /admin/* needs "Authorization: Bearer <admin token>"."""

    host: str = Field("127.0.0.1", min_length=1, description="address of the admin listener")
    port: int = Field(0, ge=0, le=65535, description="port of the admin listener (0: none)")
    token_sha256: str | None = Field(
        None,
        description="SHA-256 hex digest of the admin token (`stripe-gateway hash-key`); "
        "without it the /admin/* endpoints refuse every request",
        examples=["<64 lowercase hex characters>"],
    )

    @field_validator("token_sha256")
    @classmethod
    def _digest(cls, value: str | None) -> str | None:
        if value is not None and not _DIGEST.match(value):
            raise ValueError(
                "must be 64 lowercase hex characters (the output of `stripe-gateway "
                "hash-key`), not the token"
            )
        return value

    @property
    def enabled(self) -> bool:
        return self.port != 0


class UpstreamConfig(Settings):
    """Where each Stripe host is, and how long the gateway waits for Stripe."""

    api: str = Field("https://api.stripe.com", description="base URL of the API upstream")
    files: str = Field("https://files.stripe.com", description="base URL of file uploads")
    connect: str = Field("https://connect.stripe.com", description="base URL of Connect OAuth")
    meter_events: str = Field(
        "https://meter-events.stripe.com", description="base URL of v2 meter events"
    )
    connect_timeout: float = Field(10.0, gt=0, description="seconds to open a connection to Stripe")
    read_timeout: float = Field(
        80.0,
        gt=0,
        description="longest wait for any read from Stripe (headers or a body chunk), like "
        "the SDKs' 80 s, and for Stripe to take more of a streamed request body",
    )
    max_connections: int = Field(
        100, ge=0, description="pooled connections to all upstreams together (0 = unlimited)"
    )
    pool_timeout: float = Field(
        10.0,
        gt=0,
        description="longest wait, in seconds, for a free pooled connection (503 after it)",
    )

    @field_validator("api", "files", "connect", "meter_events")
    @classmethod
    def _url(cls, value: str) -> str:
        value = value.rstrip("/")
        if not _URL.match(value):
            raise ValueError("must be an http(s) URL with no path, like https://api.stripe.com")
        return value


class TeamConfig(Settings):
    """Teams: who may call the gateway. Repeat `[[teams]]` for each team: its gateway keys,
    its upstream Stripe key, and what it may call. Without an upstream key, the key a
    service presents must itself be a Stripe key registered by digest, and is forwarded
    unchanged."""

    name: str = Field(
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$",
        description="the team's name (letters, digits, `_`, `.`, `-`; up to 64)",
    )
    key_sha256: list[str] = Field(
        min_length=1,
        description="SHA-256 hex digests of the gateway keys this team presents "
        "(`stripe-gateway hash-key`)",
    )
    upstream_key_env: str | None = Field(
        None,
        description="environment variable holding the Stripe key sent upstream",
        examples=["STRIPE_SECRET_KEY"],
    )
    upstream_key_file: Path | None = Field(
        None,
        strict=False,
        description="file holding the Stripe key sent upstream",
        examples=["/run/secrets/stripe_key"],
    )
    allow: list[str] = Field(
        default_factory=lambda: ["* /**"],
        description='"METHOD /path/glob" rules; `*` is one path segment, `**` any number',
    )
    stripe_accounts: list[str] | None = Field(
        None,
        description="if set, the only Stripe-Account values this team may send",
        examples=[["acct_1234567890"]],
    )
    max_in_flight: int | None = Field(
        None,
        ge=1,
        description="if set, most requests of this team upstream at once, per process "
        "(429 over it)",
        examples=[20],
    )
    #: the upstream key, resolved from upstream_key_env / upstream_key_file at load time
    upstream_key: SecretStr | None = None

    @field_validator("key_sha256")
    @classmethod
    def _digests(cls, value: list[str]) -> list[str]:
        for i, digest in enumerate(value):
            if not _DIGEST.match(digest):
                raise ValueError(
                    f"entry {i}: must be 64 lowercase hex characters "
                    "(the output of `stripe-gateway hash-key`), not a key"
                )
        return value

    @field_validator("allow")
    @classmethod
    def _rules(cls, value: list[str]) -> list[str]:
        for i, rule in enumerate(value):
            try:
                parse_rule(rule)
            except ValueError as exc:
                raise ValueError(f"entry {i}: {exc}") from None
        return value

    @model_validator(mode="after")
    def _resolve_upstream_key(self, info: ValidationInfo) -> TeamConfig:
        if self.upstream_key is not None:
            raise ValueError("upstream_key must not be set in the file; use upstream_key_env")
        if self.upstream_key_env and self.upstream_key_file:
            raise ValueError("set upstream_key_env or upstream_key_file, not both")
        environ: Mapping[str, str] = (info.context or {}).get("environ", os.environ)
        key: str | None = None
        if self.upstream_key_env:
            key = environ.get(self.upstream_key_env)
            if not key:
                raise ValueError(
                    f"upstream_key_env: environment variable {self.upstream_key_env} "
                    "is not set or empty"
                )
        elif self.upstream_key_file:
            try:
                key = self.upstream_key_file.read_text().strip()
            except OSError as exc:
                raise ValueError(
                    f"upstream_key_file: cannot read {self.upstream_key_file}: {exc.strerror}"
                ) from None
            if not key:
                raise ValueError(f"upstream_key_file: {self.upstream_key_file} is empty")
        if key is not None:
            if any(c.isspace() for c in key):
                raise ValueError("the upstream key contains white space")
            object.__setattr__(self, "upstream_key", SecretStr(key))
        return self


class PluginsConfig(Settings):
    """What to load and disable; each `[plugins.<name>]` table holds one plugin's settings.
    Plugins installed with an entry point in the group "stripe_gateway" are loaded without
    being listed. Turning "redaction" off puts secrets in the logs."""

    model_config = ConfigDict(extra="allow")

    load: list[str] = Field(
        default_factory=list,
        description='extra plugin modules to load, "package.module" or "package.module:attribute"',
    )
    disable: list[str] = Field(
        default_factory=list, description="plugin names to turn off (built-in or third-party)"
    )

    def tables(self) -> dict[str, dict[str, Any]]:
        """The ``[plugins.<name>]`` tables, by plugin name."""
        return dict(self.model_extra or {})

    @model_validator(mode="after")
    def _tables_are_tables(self) -> PluginsConfig:
        for name, value in (self.model_extra or {}).items():
            if not isinstance(value, dict):
                raise ValueError(
                    f"{name}: unknown key (plugin settings go in a [plugins.{name}] table)"
                )
        return self


class GatewayConfig(Settings):
    server: ServerConfig = Field(default_factory=ServerConfig)
    upstream: UpstreamConfig = Field(default_factory=UpstreamConfig)
    plugins: PluginsConfig = Field(default_factory=PluginsConfig)
    admin: AdminConfig = Field(default_factory=AdminConfig)
    teams: list[TeamConfig] = Field(default_factory=list)
    #: where the file came from (for messages); not a config key
    source: str = Field("<defaults>", exclude=True)

    @model_validator(mode="after")
    def _unique(self) -> GatewayConfig:
        names: set[str] = set()
        digests: dict[str, str] = {}
        for i, team in enumerate(self.teams):
            if team.name in names:
                raise ValueError(f"teams[{i}].name: duplicate team name {team.name!r}")
            names.add(team.name)
            for j, digest in enumerate(team.key_sha256):
                if digest in digests:
                    raise ValueError(
                        f"teams[{i}].key_sha256[{j}]: the same key digest is already "
                        f"registered to team {digests[digest]!r}"
                    )
                digests[digest] = team.name
        return self


def _apply_env_overrides(data: dict[str, Any], environ: Mapping[str, str]) -> None:
    tables: dict[str, type[Settings]] = {
        "server": ServerConfig,
        "admin": AdminConfig,
        "upstream": UpstreamConfig,
    }
    for var, (table, key) in ENV_OVERRIDES.items():
        if var in environ:
            section = data.setdefault(table, {})
            if not isinstance(section, dict):
                raise ConfigError(table, "must be a table")
            value: Any = environ[var]
            if tables[table].model_fields[key].annotation is int:
                # the environment holds only strings; a port is read as the number it spells
                with contextlib.suppress(ValueError):
                    value = int(value)
            section[key] = value


def parse_config(
    data: Mapping[str, Any],
    *,
    source: str = "<config>",
    environ: Mapping[str, str] | None = None,
) -> GatewayConfig:
    """Validate an already-parsed TOML document (env overrides applied) into a config."""
    env = os.environ if environ is None else environ
    raw = {k: (dict(v) if isinstance(v, dict) else v) for k, v in data.items()}
    _apply_env_overrides(raw, env)
    if "source" in raw:
        raise ConfigError("source", "unknown key")
    return validate_settings(GatewayConfig, {**raw, "source": source}, context={"environ": env})


def load_config(path: str | Path, environ: Mapping[str, str] | None = None) -> GatewayConfig:
    """Read and validate a TOML config file."""
    p = Path(path)
    try:
        text = p.read_bytes().decode("utf-8")
    except OSError as exc:
        raise ConfigError(str(p), f"cannot read config file: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError(str(p), "config file is not UTF-8") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(str(p), f"invalid TOML: {exc}") from None
    return parse_config(data, source=str(p), environ=environ)
