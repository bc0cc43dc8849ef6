"""The configuration file: one TOML document, parsed and validated once at start-up.

Every problem is reported as a :class:`~gateway.errors.ConfigError` naming the key path
(``teams[1].upstream_key_env``) and the reason; the CLI turns it into exit code 2.
Secrets never live in the file: team keys are SHA-256 digests, upstream Stripe keys are
read from the environment variable or file that the config names.

Plugin settings live in ``[plugins.<name>]`` tables; the core checks only that ``<name>``
is a known plugin, and each plugin validates its own table in ``gateway_configure``.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from gateway.errors import ConfigError
from gateway.globs import parse_rule

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
_ENTRY = re.compile(r"^entry (\d+): (.*)$", re.S)
_PREFIXED = re.compile(r"^([A-Za-z_][\w.\[\]]*): (.*)$", re.S)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=False)

    @model_validator(mode="before")
    @classmethod
    def _no_booleans_as_numbers(cls, data: Any) -> Any:
        # pydantic's lax mode reads `port = true` as 1; a config file means no such thing
        if isinstance(data, dict):
            for name, info in cls.model_fields.items():
                if isinstance(data.get(name), bool) and info.annotation in (int, float):
                    raise ValueError(f"{name}: must be a number, not {str(data[name]).lower()}")
        return data


class ServerConfig(_Strict):
    host: str = Field("127.0.0.1", min_length=1)
    port: int = Field(8080, ge=0, le=65535)
    #: seconds in-flight requests get to finish after SIGTERM/SIGINT
    drain_timeout: float = Field(30.0, gt=0)
    #: largest request body accepted (413 above it)
    max_body_bytes: int = Field(32 * 1024 * 1024, gt=0)
    #: longest wait, in seconds, for the next part of a request body (408 after it), like
    #: nginx's client_body_timeout: per read, not for the whole body
    body_timeout: float = Field(30.0, gt=0)
    #: longest time, in seconds, a whole request body may take to arrive (408 after it)
    body_total_timeout: float = Field(600.0, gt=0)
    #: request bodies with a Content-Length up to this many bytes are read whole before an
    #: upstream connection is taken (0: every body streams as it arrives)
    buffer_body_bytes: int = Field(1024 * 1024, ge=0)
    #: largest request line or single header accepted (a Stripe-shaped 400 above it)
    max_header_bytes: int = Field(8190, ge=1024, le=1024 * 1024)
    #: seconds a request line and headers may take, from the connection's opening (or the
    #: next request's first byte, on a kept-alive connection); then a 408 and a close
    header_timeout: float = Field(20.0, gt=0)
    #: seconds a kept-alive connection may stay idle between requests
    keepalive_timeout: float = Field(75.0, gt=0)
    #: open client connections per process (0 = unlimited); more are closed at once
    max_connections: int = Field(10000, ge=0)
    #: use uvloop when it is installed
    uvloop: bool = True
    #: worker processes sharing the listening port (1: the gateway is one process)
    workers: int = Field(1, ge=1, le=256)


class AdminConfig(_Strict):
    """``[admin]``: the admin listener (metrics, health, admin endpoints), off the public one."""

    host: str = Field("127.0.0.1", min_length=1)
    #: 0 (the default): no admin listener
    port: int = Field(0, ge=0, le=65535)
    #: SHA-256 hex digest of the admin token (`stripe-gateway hash-key`); without it the
    #: /admin/* endpoints refuse every request
    token_sha256: str | None = None

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


class UpstreamConfig(_Strict):
    api: str = "https://api.stripe.com"
    files: str = "https://files.stripe.com"
    connect: str = "https://connect.stripe.com"
    meter_events: str = "https://meter-events.stripe.com"
    connect_timeout: float = Field(10.0, gt=0)
    #: longest wait for any read from Stripe (headers or a body chunk), like the SDKs' 80 s
    read_timeout: float = Field(80.0, gt=0)
    #: pooled connections to all upstreams together (0 = unlimited)
    max_connections: int = Field(100, ge=0)
    #: longest wait, in seconds, for a free pooled connection (503 after it)
    pool_timeout: float = Field(10.0, gt=0)

    @field_validator("api", "files", "connect", "meter_events")
    @classmethod
    def _url(cls, value: str) -> str:
        value = value.rstrip("/")
        if not _URL.match(value):
            raise ValueError("must be an http(s) URL with no path, like https://api.stripe.com")
        return value


class TeamConfig(_Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
    #: SHA-256 hex digests of the gateway keys this team presents (`stripe-gateway hash-key`)
    key_sha256: list[str] = Field(min_length=1)
    #: environment variable holding the Stripe key sent upstream for this team
    upstream_key_env: str | None = None
    #: file holding the Stripe key sent upstream for this team
    upstream_key_file: Path | None = None
    #: "METHOD /path/glob" rules; `*` is one path segment, `**` any number
    allow: list[str] = Field(default_factory=lambda: ["* /**"])
    #: if set, the only Stripe-Account values this team may send
    stripe_accounts: list[str] | None = None
    #: if set, most requests of this team upstream at once, per process (429 over it)
    max_in_flight: int | None = Field(None, ge=1)
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


class PluginsConfig(BaseModel):
    """``[plugins]``: what to load and disable; ``[plugins.<name>]`` tables are plugin settings."""

    model_config = ConfigDict(extra="allow", frozen=True)

    #: extra plugin modules to load, "package.module" or "package.module:attribute"
    load: list[str] = Field(default_factory=list)
    #: plugin names to turn off (built-in or third-party)
    disable: list[str] = Field(default_factory=list)

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


class GatewayConfig(_Strict):
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


def _loc(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else part
    return out


def _apply_env_overrides(data: dict[str, Any], environ: Mapping[str, str]) -> None:
    for var, (table, key) in ENV_OVERRIDES.items():
        if var in environ:
            section = data.setdefault(table, {})
            if not isinstance(section, dict):
                raise ConfigError(table, "must be a table")
            section[key] = environ[var]


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
    try:
        return GatewayConfig.model_validate({**raw, "source": source}, context={"environ": env})
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        path = _loc(tuple(first["loc"]))
        msg = str(first["msg"]).removeprefix("Value error, ")
        if first["type"] == "extra_forbidden":
            msg = "unknown key"
        elif (m := _ENTRY.match(msg)) is not None:
            # a list validator names the bad entry's index
            path = f"{path}[{m[1]}]"
            msg = m[2]
        elif (m := _PREFIXED.match(msg)) is not None:
            # a model validator names the key below its own location
            path = f"{path}.{m[1]}" if path else m[1]
            msg = m[2]
        raise ConfigError(path, msg) from None


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
