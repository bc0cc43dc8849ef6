"""The ``webhooks`` plugin's settings: sources, subscriptions, and their secrets (read from
environment variables or files at validation, never written in the config)."""

from __future__ import annotations

import fnmatch
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Literal

from pydantic import Field, PrivateAttr, ValidationInfo, model_validator

from gateway.public import is_reserved
from gateway.settings import Settings, redis_url
from gateway.webhooks.store import EventRecord

__all__ = ["DEFAULT_RETRY_DELAYS", "SourceSettings", "SubscriptionSettings", "WebhooksSettings"]

#: Stripe's own retry span, about three days: 1 min, 5 min, 15 min, 1 h, 3 h, 6 h, 12 h, 1 d, 1 d
DEFAULT_RETRY_DELAYS = (60.0, 300.0, 900.0, 3600.0, 10800.0, 21600.0, 43200.0, 86400.0, 86400.0)
_NAME = r"^[A-Za-z0-9_.-]{1,64}$"


def _secret(kind: str, where: str, environ: Mapping[str, str]) -> str:
    if kind == "env":
        value = environ.get(where, "").strip()
        if not value:
            raise ValueError(f"environment variable {where} is not set or empty")
        return value
    try:
        value = Path(where).read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise ValueError(f"cannot read secret file {where}: {exc.strerror}") from None
    if not value:
        raise ValueError(f"secret file {where} is empty")
    return value


def _environ(info: ValidationInfo) -> Mapping[str, str]:
    environ: Mapping[str, str] = (info.context or {}).get("environ", os.environ)
    return environ


class SourceSettings(Settings):
    """One Stripe webhook endpoint the gateway is reached at."""

    name: str = Field(pattern=_NAME, description="the source's name (metrics, logs, filters)")
    path: str = Field(
        pattern=r"^/[A-Za-z0-9/_.-]*$",
        description="the path on the main listener Stripe posts to (not under /v1/ or /v2/)",
        examples=["/webhooks/stripe"],
    )
    secret_env: list[str] = Field(
        default_factory=list,
        description="environment variables holding the endpoint's signing secrets (whsec_...); "
        "several while Stripe rolls the secret",
        examples=[["STRIPE_WEBHOOK_SECRET"]],
    )
    secret_file: list[str] = Field(
        default_factory=list, description="files holding signing secrets, one per file"
    )
    tolerance: float = Field(
        300.0, gt=0, description="seconds a signature's timestamp may be old (Stripe's default)"
    )
    max_body_bytes: int = Field(
        1024 * 1024, gt=0, description="larger event bodies are refused with 400"
    )

    _secrets: tuple[str, ...] = PrivateAttr(())

    @property
    def secrets(self) -> tuple[str, ...]:
        """The signing secrets, read at validation."""
        return self._secrets

    @model_validator(mode="after")
    def _read_secrets(self, info: ValidationInfo) -> SourceSettings:
        if is_reserved(self.path):
            raise ValueError("path: is Stripe's API or the gateway's own")
        environ = _environ(info)
        found = [_secret("env", name, environ) for name in self.secret_env]
        found += [_secret("file", name, environ) for name in self.secret_file]
        if not found:
            raise ValueError("secret_env: a source needs at least one signing secret")
        self._secrets = tuple(found)
        return self


class SubscriptionSettings(Settings):
    """One team's endpoint and the events it gets."""

    name: str = Field(pattern=_NAME, description="the subscription's name (admin, metrics)")
    team: str = Field(description="the team it belongs to (a [[teams]] name)")
    url: str = Field(
        pattern=r"^https?://[^\s]+$",
        description="where events are POSTed",
        examples=["https://billing.internal/stripe/events"],
    )
    events: list[str] = Field(
        default_factory=lambda: ["*"],
        min_length=1,
        description='event-type globs: "invoice.*", "reporting.report_run.*", "*"',
    )
    sources: list[str] = Field(
        default_factory=list, description="only events from these sources (empty: every source)"
    )
    livemode: bool | None = Field(
        None, description="only live (true) or only test (false) events (unset: both)"
    )
    accounts: list[str] | None = Field(
        None,
        description="only events of these connected accounts (the event's account; unset: any, "
        "including the platform's own)",
    )
    secret_env: str | None = Field(
        None, description="environment variable holding the subscription's signing secret"
    )
    secret_file: str | None = Field(None, description="file holding its signing secret")
    max_concurrency: int = Field(4, ge=1, le=1000, description="attempts in flight at once")
    timeout: float = Field(30.0, gt=0, description="seconds one attempt may take")
    retry_delays: list[float] = Field(
        default_factory=lambda: list(DEFAULT_RETRY_DELAYS),
        description="seconds before each retry; after the last, the delivery is "
        "dead-lettered (default: about three days, as Stripe)",
    )
    jitter: float = Field(
        0.2, ge=0, le=1, description="each delay is scaled by a random factor in 1 ± jitter"
    )

    _secret: str = PrivateAttr("")

    @property
    def secret(self) -> str:
        """The signing secret, read at validation."""
        return self._secret

    @model_validator(mode="after")
    def _read_secret(self, info: ValidationInfo) -> SubscriptionSettings:
        if (self.secret_env is None) == (self.secret_file is None):
            raise ValueError("secret_env: set exactly one of secret_env and secret_file")
        if any(delay <= 0 for delay in self.retry_delays):
            raise ValueError("retry_delays: every delay must be > 0")
        if self.secret_env is not None:
            self._secret = _secret("env", self.secret_env, _environ(info))
        else:
            assert self.secret_file is not None
            self._secret = _secret("file", self.secret_file, _environ(info))
        return self

    def wants(self, event: EventRecord) -> bool:
        """Whether this subscription gets ``event``."""
        if self.sources and event.source not in self.sources:
            return False
        if self.livemode is not None and event.livemode is not self.livemode:
            return False
        if self.accounts is not None and event.account not in self.accounts:
            return False
        return any(fnmatch.fnmatchcase(event.type, glob) for glob in self.events)


class WebhooksSettings(Settings):
    """Webhook ingress: verify Stripe's events, store them durably, deliver them re-signed
    to the teams' subscriptions, and purge the cache of the objects they name."""

    backend: Literal["sqlite", "redis"] = Field(
        "sqlite",
        description='"sqlite" (a file, WAL: the processes of one host) or "redis" (one queue '
        "shared by every gateway instance; an acknowledged event is as durable as that Redis: "
        "run it with appendonly yes and appendfsync always)",
    )
    sqlite_path: str = Field(
        "stripe-gateway-webhooks.sqlite3",
        min_length=1,
        description="the SQLite file of received events and pending deliveries",
    )
    redis_url_env: str | None = Field(
        None,
        description="environment variable holding the Redis URL (redis backend); use it "
        "when the URL has a password",
        examples=["STRIPE_GATEWAY_REDIS_URL"],
    )
    redis_url: str | None = Field(
        None,
        description="the Redis URL itself, when it has no password (redis backend)",
        examples=["redis://127.0.0.1:6379/0"],
    )
    redis_timeout: float = Field(
        2.0,
        gt=0,
        description="seconds per Redis call; an event that cannot be stored in time is "
        "answered 503 (Stripe sends it again)",
    )
    key_prefix: str = Field("sgw:webhooks", min_length=1, description="Redis key prefix")
    require_durable_redis: bool = Field(
        False,
        description="refuse to start unless the Redis runs with appendonly yes and "
        "maxmemory-policy noeviction (else that is logged as an error at start-up)",
    )
    lease_seconds: float = Field(
        10.0,
        gt=0,
        description="seconds past a subscription's timeout that a claimed delivery stays "
        "leased to its process: one cut off by a crash is sent again after this",
    )
    sources: list[SourceSettings] = Field(
        default_factory=list,
        description="Stripe webhook endpoints the gateway receives at",
        examples=[[{"name": "main", "path": "/webhooks/stripe", "secret_env": ["WHSEC"]}]],
    )
    subscriptions: list[SubscriptionSettings] = Field(
        default_factory=list,
        description="the teams' endpoints",
        examples=[
            [
                {
                    "name": "billing",
                    "team": "billing",
                    "url": "https://billing.internal/hooks",
                    "events": ["invoice.*"],
                    "secret_env": "BILLING_WHSEC",
                }
            ]
        ],
    )
    breaker_failures: int = Field(
        5, ge=1, description="failed attempts in a row that open a subscription's circuit"
    )
    breaker_seconds: float = Field(
        30.0, gt=0, description="seconds a subscription's open circuit stops attempts"
    )
    retention_days: float = Field(
        30.0,
        gt=0,
        description="days a received event is kept once every delivery of it is over (for "
        "duplicates, listing and replay); checked hourly",
    )
    poll_seconds: float = Field(
        1.0,
        gt=0,
        description="seconds between looks at the store for deliveries due (retries, and "
        "events another process received)",
    )

    _url: str | None = PrivateAttr(None)

    @property
    def url(self) -> str | None:
        """The Redis URL of the ``redis`` backend, resolved at validation."""
        return self._url

    @model_validator(mode="after")
    def _resolve_url(self, info: ValidationInfo) -> WebhooksSettings:
        if self.backend != "redis":
            if self.redis_url is not None or self.redis_url_env is not None:
                raise ValueError('backend: redis_url is set but backend is not "redis"')
            if self.require_durable_redis:
                raise ValueError('require_durable_redis: is set but backend is not "redis"')
            return self
        self._url = redis_url(self.redis_url_env, self.redis_url, _environ(info))
        return self

    @model_validator(mode="after")
    def _unique(self) -> WebhooksSettings:
        for what, names in (
            ("sources", [s.name for s in self.sources]),
            ("sources", [s.path for s in self.sources]),
            ("subscriptions", [s.name for s in self.subscriptions]),
        ):
            seen = {n for n in names if names.count(n) > 1}
            if seen:
                raise ValueError(f"{what}: {sorted(seen)[0]!r} is given twice")
        known = {s.name for s in self.sources}
        for i, sub in enumerate(self.subscriptions):
            for name in sub.sources:
                if name not in known:
                    raise ValueError(f"subscriptions.{i}.sources: no source named {name!r}")
        return self
