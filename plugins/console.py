"""The console: a small web page for operators on the admin listener, and the JSON it reads.

The page (``GET /`` on the admin listener) shows, over the last minutes, each team's
request rate, error rate and latency (p50/p99) as charts; the cache's hit ratio and the
bytes it served; each team's rate-limit headroom (read, write, the account budget) and
recent refusals; upstream errors by kind; the most recent audit lines, filterable by team,
status and object id, with a button that purges an object from the cache; and, when the
``webhooks`` plugin is on, its queue, oldest pending delivery and dead letters with a replay
button. Settings (``[plugins.console]``, all optional): :class:`ConsoleSettings`.

**Where the numbers come from.** Only from the audit line, as the audit plugin wrote it
(``gateway_audit_line``): after every log processor ran, the ``redaction`` plugin's among
them, so the console never holds anything unredacted. Each line is counted into a ring of
time buckets (``bucket_seconds`` each, ``window_minutes`` long) per team: requests, errors
(a 5xx, or a request that did not end ``ok``), rate-limit refusals, a latency histogram
(fixed, geometric bounds, so quantiles are the upper bound of the bucket they fall in,
within 20 %), cache statuses and the bytes served from cache (``HIT`` and ``STALE``), and
upstream errors by kind (the gateway's ``error``: ``upstream_timeout``, ...; a 5xx Stripe
itself sent counts as ``stripe_5xx``). The last ``audit_lines`` lines are kept as they were
written, less their bulky fields (``params``, ``request_body``, ``response_body``). Memory is
bounded: the teams are the configured ones (plus ``-`` for requests refused before
authentication), the ring and the lines have fixed lengths. With the ``audit`` plugin
disabled the console has nothing to show. A config reload keeps both when the bucket and
window did not change. With ``serve --workers N`` each admin request reaches one worker,
which asks the others for their raw state over their private sockets
(:func:`gateway.serve.admin.fan_out`) and answers with everything added up (the summary
says how many ``workers`` it covers and which were ``workers_unreached``).

**Charts are SVG drawn on the server** (:mod:`gateway.console.charts`), not by a JavaScript
library: the admin network may be offline, so nothing may come from a CDN; no third-party
script is copied into the repository or installed as a dependency (a chart library's
assets would have to be served from its installed package path, a large optional extra
for three line charts); and the page stays within a strict Content-Security-Policy (the
SVG uses presentation attributes, no inline style or script). The page's own small script
(``gateway/console/static/console.js``, package data) fetches the JSON and the SVG and
puts every value into the page as text (``textContent``), never as markup.

**Authentication.** The page (``GET /``, ``/console/console.js``, ``/console/console.css``:
static package data, no figures in it) is served only to a browser that showed the admin
token: with a valid session cookie (:mod:`gateway.console.session`). Without one, ``GET /``
answers a sign-in page (``login.html``, its ``/console/login.js`` and ``/console/login.css``,
open) and the script and stylesheet answer 401. The sign-in page sends the token to ``POST
/admin/console/session`` as ``Authorization: Bearer`` (checked by the admin listener like
every ``/admin/`` path), which sets the cookie: ``HttpOnly; SameSite=Strict; Path=/``,
``Secure`` on HTTPS, for ``session_hours``; ``POST /console/logout`` clears it. The cookie
opens the page and nothing else: everything the page shows or does goes to paths under
``/admin/``, which take only the token. The page keeps the token in ``sessionStorage``
(gone with the tab) and sends it as ``Authorization: Bearer``, never the cookie
(``credentials: "omit"``), so another site cannot make the browser purge or replay (CSRF);
the purge and replay buttons call the existing ``POST`` endpoints, never a ``GET`` with side
effects. Every console response carries ``Content-Security-Policy: default-src 'self'``
(no inline script, no framing), ``X-Content-Type-Options: nosniff``, ``Referrer-Policy:
no-referrer`` and ``Cache-Control: no-store``.

**JSON endpoints** (admin token; documented in docs/operations.md, "Console"):
``GET /admin/console/summary``, ``GET /admin/console/audit`` (``team``, ``status``: ``429``
or ``4xx``, ``object``: an object id, ``limit``), ``GET /admin/console/charts/<name>.svg``
(``requests``, ``errors``, ``latency``), ``POST /admin/console/session`` (the cookie).
"""

from __future__ import annotations

import bisect
import math
import os
import time
from collections import Counter, deque
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

import orjson
from aiohttp import web
from pydantic import Field

from gateway.config import GatewayConfig
from gateway.console.charts import line_chart
from gateway.console.session import COOKIE, Sessions, shared_key
from gateway.hookspecs import hookimpl
from gateway.host import PluginHost
from gateway.logs import json_default
from gateway.serve.admin import FANOUT_HEADER, admin_error, fan_out
from gateway.serve.workers import RUN_DIR_ENV
from gateway.settings import Settings

__all__ = ["LATENCY_BOUNDS_MS", "ConsolePlugin", "ConsoleSettings", "Window"]

#: upper bounds (ms) of the latency histogram's buckets: 0.25 ms to 2 minutes, each 1.2x
#: the last (quantiles are read as the upper bound of their bucket: within 20 %)
LATENCY_BOUNDS_MS: tuple[float, ...] = tuple(
    round(0.25 * 1.2**i, 3) for i in range(math.ceil(math.log(480_000, 1.2)) + 1)
)
#: fields of an audit line the console does not keep (large, and not shown)
_BULK = frozenset({"params", "request_body", "response_body"})
#: rate-limit decisions that refused the request
_REFUSED = frozenset({"deny", "fallback_deny", "unavailable_deny"})
_FROM_CACHE = frozenset({"HIT", "STALE"})
_LOOKUPS = frozenset({"HIT", "STALE", "MISS", "COALESCED"})
_NO_TEAM = "-"
#: the most audit lines kept (and asked for at once)
_MAX_LINES = 10_000
_CHARTS = ("requests", "errors", "latency")
_JSON = "application/json"
#: the console: served only with a valid session cookie
_PAGE = {
    "/": ("index.html", "text/html"),
    "/console/console.js": ("console.js", "text/javascript"),
    "/console/console.css": ("console.css", "text/css"),
}
#: the webhooks plugin's endpoint the page reads first
_WEBHOOK_SUBSCRIPTIONS = "/admin/webhooks/subscriptions"
#: the sign-in page (``GET /`` without the cookie) and what it loads: open
_LOGIN = ("login.html", "text/html")
_OPEN = {
    "/console/login.js": ("login.js", "text/javascript"),
    "/console/login.css": ("login.css", "text/css"),
}
#: seconds the ``gateway_admin_team`` fields are reused (they are levels that move: not
#: per generation), so that any number of open pages costs one call per team per second
_ADMIN_FIELDS_TTL = 1.0
#: on every console response: nothing from elsewhere, no inline script or style, no frames
SECURITY_HEADERS: Mapping[str, str] = {
    "Content-Security-Policy": (
        "default-src 'self'; object-src 'none'; base-uri 'none'; form-action 'none'; "
        "frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


class ConsoleSettings(Settings):
    """The operators' console on the admin listener (GET / there): charts of the last
    minutes per team, cache and rate-limit state, recent audit lines. On whenever the
    admin listener is; its figures come from the audit lines, already redacted."""

    enabled: bool = Field(True, description="serve the console on the admin listener")
    bucket_seconds: int = Field(5, ge=1, le=300, description="seconds per point of the charts")
    window_minutes: int = Field(15, ge=1, le=240, description="how far back the charts go")
    audit_lines: int = Field(
        500, ge=1, le=_MAX_LINES, description="recent audit lines kept (redacted) for the page"
    )
    refresh_seconds: float = Field(
        2.0, ge=0.5, le=300, description="how often the page fetches the figures again"
    )
    session_hours: float = Field(
        12.0,
        gt=0,
        le=168,
        description="how long a browser that signed in with the admin token gets the page "
        "(its session cookie's lifetime; the admin endpoints always need the token itself)",
    )


def _quantile(histogram: list[int], q: float) -> float | None:
    """The upper bound (ms) of the bucket where the ``q`` quantile falls; None if empty."""
    total = sum(histogram)
    if not total:
        return None
    rank = q * total
    seen = 0
    for i, count in enumerate(histogram):
        seen += count
        if seen >= rank and count:
            return LATENCY_BOUNDS_MS[min(i, len(LATENCY_BOUNDS_MS) - 1)]
    return LATENCY_BOUNDS_MS[-1]


@dataclass(slots=True)
class _Counts:
    """One team's requests in one time bucket (or summed over several)."""

    requests: int = 0
    errors: int = 0
    refusals: int = 0
    latency: list[int] = field(default_factory=lambda: [0] * (len(LATENCY_BOUNDS_MS) + 1))
    cache: Counter[str] = field(default_factory=Counter)
    bytes_from_cache: int = 0
    upstream_errors: Counter[str] = field(default_factory=Counter)

    def export(self) -> dict[str, Any]:
        """JSON-able, the histogram sparse (for another worker to add up)."""
        return {
            "requests": self.requests,
            "errors": self.errors,
            "refusals": self.refusals,
            "latency": {str(i): n for i, n in enumerate(self.latency) if n},
            "cache": dict(self.cache),
            "bytes_from_cache": self.bytes_from_cache,
            "upstream_errors": dict(self.upstream_errors),
        }

    @classmethod
    def load(cls, data: Mapping[str, Any]) -> _Counts:
        """What :meth:`export` gave (raises ``KeyError``, ``ValueError``, ``TypeError``,
        ``IndexError`` on anything else)."""
        counts = cls(
            requests=int(data["requests"]),
            errors=int(data["errors"]),
            refusals=int(data["refusals"]),
            cache=Counter({str(k): int(v) for k, v in data["cache"].items()}),
            bytes_from_cache=int(data["bytes_from_cache"]),
            upstream_errors=Counter({str(k): int(v) for k, v in data["upstream_errors"].items()}),
        )
        for i, n in data["latency"].items():
            counts.latency[int(i)] += int(n)
        return counts

    def add(self, other: _Counts) -> None:
        self.requests += other.requests
        self.errors += other.errors
        self.refusals += other.refusals
        for i, count in enumerate(other.latency):
            if count:
                self.latency[i] += count
        self.cache.update(other.cache)
        self.bytes_from_cache += other.bytes_from_cache
        self.upstream_errors.update(other.upstream_errors)


class Window:
    """Per-team counts in a ring of ``slots`` time buckets of ``seconds`` each, and the most
    recent refusals and account-budget readings."""

    def __init__(self, seconds: int, slots: int) -> None:
        self.seconds = seconds
        self.slots = slots
        #: (bucket index = epoch seconds // seconds, counts by team), oldest first
        self.ring: deque[tuple[int, dict[str, _Counts]]] = deque(maxlen=slots)
        #: the last refusals: (epoch seconds, team, limit name, request id)
        self.refusals: deque[tuple[float, str, str | None, str | None]] = deque(maxlen=50)
        #: per team: (requests left in the account budget, epoch seconds) when it last decided
        self.account: dict[str, tuple[int, float]] = {}

    def counts(self, team: str, now: float) -> _Counts:
        index = int(now // self.seconds)
        if not self.ring or self.ring[-1][0] < index:
            self.ring.append((index, {}))
        teams = self.ring[-1][1]
        counts = teams.get(team)
        if counts is None:
            counts = teams[team] = _Counts()
        return counts

    def record(self, line: Mapping[str, Any], now: float) -> None:
        """Count one audit line."""
        team = str(line.get("team") or _NO_TEAM)
        counts = self.counts(team, now)
        counts.requests += 1
        status = line.get("status")
        status = status if isinstance(status, int) else 0
        outcome = line.get("outcome")
        if status >= 500 or outcome not in (None, "ok"):
            counts.errors += 1
        duration = line.get("duration_ms")
        if isinstance(duration, int | float):
            counts.latency[bisect.bisect_left(LATENCY_BOUNDS_MS, duration)] += 1
        cache = line.get("cache")
        if isinstance(cache, str):
            counts.cache[cache] += 1
            bytes_out = line.get("bytes_out")
            if cache in _FROM_CACHE and isinstance(bytes_out, int):
                counts.bytes_from_cache += bytes_out
        error = line.get("error")
        if isinstance(error, str) and error.startswith("upstream"):
            counts.upstream_errors[error] += 1
        elif status >= 500 and error is None and line.get("upstream_request_id"):
            counts.upstream_errors["stripe_5xx"] += 1
        decision = line.get("rate_limit")
        name = line.get("rate_limit_name")
        if decision in _REFUSED and status == 429:
            counts.refusals += 1
            request_id = line.get("request_id")
            self.refusals.append(
                (
                    now,
                    team,
                    name if isinstance(name, str) else None,
                    request_id if isinstance(request_id, str) else None,
                )
            )
        remaining = line.get("rate_limit_remaining")
        if name == "account" and isinstance(remaining, int):
            self.account[team] = (remaining, now)

    def buckets(self, now: float) -> Iterator[tuple[int, dict[str, _Counts]]]:
        """``(position, counts by team)`` of the buckets within the window, position 0
        being the oldest of ``slots`` points ending now."""
        first = int(now // self.seconds) - self.slots + 1
        for index, teams in self.ring:
            if index >= first:
                yield index - first, teams

    def export(self) -> dict[str, Any]:
        """The window as JSON, for the worker that answers an admin request
        (:meth:`combined`)."""
        return {
            "seconds": self.seconds,
            "slots": self.slots,
            "ring": [
                [index, {team: c.export() for team, c in teams.items()}]
                for index, teams in self.ring
            ],
            "refusals": [list(r) for r in self.refusals],
            "account": {team: list(v) for team, v in self.account.items()},
        }

    @classmethod
    def combined(cls, seconds: int, slots: int, exports: Iterable[Mapping[str, Any]]) -> Window:
        """One window adding up the :meth:`export` of several (one per worker process);
        an export of another bucket size or length (a worker mid-reload) is left out."""
        window = cls(seconds, slots)
        buckets: dict[int, dict[str, _Counts]] = {}
        refusals: list[tuple[float, str, str | None, str | None]] = []
        for data in exports:
            if (data["seconds"], data["slots"]) != (seconds, slots):
                continue
            for index, teams in data["ring"]:
                into = buckets.setdefault(int(index), {})
                for team, counts in teams.items():
                    into.setdefault(str(team), _Counts()).add(_Counts.load(counts))
            refusals.extend((float(r[0]), str(r[1]), r[2], r[3]) for r in data["refusals"])
            for team, (remaining, at) in data["account"].items():
                known = window.account.get(team)
                if known is None or known[1] < at:
                    window.account[str(team)] = (int(remaining), float(at))
        window.ring.extend(sorted(buckets.items())[-slots:])
        window.refusals.extend(sorted(refusals, key=lambda r: r[0]))
        return window

    def adopt(self, other: Window) -> None:
        """Take over ``other``'s counts (a reload with the same bucket and window)."""
        self.ring = other.ring
        self.refusals = other.refusals
        self.account = other.account


@dataclass(frozen=True, slots=True)
class _Gathered:
    """What an admin request reads: one process's state, or every worker's added up."""

    window: Window
    #: oldest first
    lines: list[dict[str, Any]]
    #: worker processes whose state is in it
    workers: int
    #: the other workers' socket names that did not answer
    unreached: list[str]


class ConsolePlugin:
    """Built-in plugin ``console``."""

    name = "console"
    settings_model = ConsoleSettings

    def __init__(self) -> None:
        self.settings = ConsoleSettings()
        self.window = Window(self.settings.bucket_seconds, 1)
        self.lines: deque[dict[str, Any]] = deque(maxlen=self.settings.audit_lines)
        self._on = False
        self._host: PluginHost | None = None
        self._config: GatewayConfig | None = None
        self._static: dict[str, tuple[bytes, str]] = {}
        self._login: tuple[bytes, str] = (b"", "text/html")
        self._sessions: Sessions | None = None
        #: (monotonic time, fields by team) of the last ``gateway_admin_team`` round
        self._admin_fields_at: tuple[float, dict[str, dict[str, Any]]] | None = None

    @hookimpl
    def gateway_configure(self, config: GatewayConfig, settings: ConsoleSettings) -> None:
        self.settings = settings
        self._config = config
        slots = max(1, settings.window_minutes * 60 // settings.bucket_seconds)
        self.window = Window(settings.bucket_seconds, slots)
        self.lines = deque(maxlen=settings.audit_lines)

    @hookimpl
    def gateway_startup(self, host: PluginHost) -> None:
        self._host = host
        self._on = host.config.admin.enabled and self.settings.enabled
        if not self._on:
            return
        if "audit" not in host.plugin_names():
            host.log.warning(
                "console_without_audit",
                reason="the audit plugin is disabled: the console's figures come from the "
                "audit lines, so it will show none",
            )
        files = resources.files("gateway.console") / "static"
        self._static = {
            path: ((files / name).read_bytes(), content_type)
            for path, (name, content_type) in {**_PAGE, **_OPEN}.items()
        }
        self._login = ((files / _LOGIN[0]).read_bytes(), _LOGIN[1])
        self._sessions = Sessions(
            shared_key(os.environ.get(RUN_DIR_ENV)), self.settings.session_hours * 3600
        )

    @hookimpl
    def gateway_carry_over(self, previous: object) -> None:
        if not isinstance(previous, ConsolePlugin):
            return
        if self._sessions is not None and previous._sessions is not None:
            # the same key: a reload that keeps the token keeps the browsers signed in
            self._sessions = Sessions(previous._sessions.key, self._sessions.lifetime)
        old, new = previous.window, self.window
        if (old.seconds, old.slots) == (new.seconds, new.slots):
            new.adopt(old)
        self.lines.extend(previous.lines)

    @hookimpl
    def gateway_audit_line(self, line: dict[str, Any]) -> None:
        if not self._on:
            return
        self.window.record(line, time.time())
        kept = dict(line)  # a C copy, then drop the few bulky keys: cheaper than filtering
        for key in _BULK:
            kept.pop(key, None)
        self.lines.append(kept)

    # ------------------------------------------------------------------ routes

    @hookimpl
    def gateway_admin_routes(self) -> list[web.RouteDef]:
        if not self._on:
            return []
        routes = [web.get(path, self._static_route) for path in {**_PAGE, **_OPEN}]
        return [
            *routes,
            web.post("/admin/console/session", self._session_route),
            web.post("/console/logout", self._logout_route),
            web.get("/admin/console/summary", self._summary_route),
            web.get("/admin/console/audit", self._audit_route),
            web.get("/admin/console/charts/{name}.svg", self._chart_route),
        ]

    def signed_in(self, request: web.Request) -> bool:
        """Whether ``request`` carries a valid session cookie for the current admin token."""
        if self._sessions is None or self._host is None:
            return False
        return self._sessions.valid(
            request.cookies.get(COOKIE), self._host.config.admin.token_sha256, time.time()
        )

    async def _static_route(self, request: web.Request) -> web.Response:
        path = request.path
        if path in _PAGE and not self.signed_in(request):
            if path != "/":
                return _refused("This file of the console needs a signed-in browser: open /.")
            body, content_type = self._login
        else:
            body, content_type = self._static[path]
        return web.Response(
            body=body, content_type=content_type, charset="utf-8", headers=SECURITY_HEADERS
        )

    async def _session_route(self, request: web.Request) -> web.Response:
        """``POST /admin/console/session``: the admin listener checked the token (every
        ``/admin/`` path needs it); answer with a session cookie for the page."""
        assert self._sessions is not None and self._host is not None  # routes come after
        digest = self._host.config.admin.token_sha256
        if digest is None:  # unreachable: without a digest every token is refused
            return _refused("No admin token is configured.")
        value, expires = self._sessions.issue(digest, time.time())
        response = _json({"object": "console_session", "expires_at": _iso(expires)})
        response.set_cookie(
            COOKIE,
            value,
            max_age=max(1, int(self._sessions.lifetime)),
            path="/",
            secure=request.secure or None,
            httponly=True,
            samesite="Strict",
        )
        self._host.log.info("console_signed_in", remote=request.remote, expires_at=_iso(expires))
        return response

    async def _logout_route(self, request: web.Request) -> web.Response:
        """``POST /console/logout``: clear the cookie of a signed-in browser (another site's
        form sends no cookie: ``SameSite=Strict``)."""
        if not self.signed_in(request):
            return _refused("Not signed in.")
        response = _json({"object": "console_session", "signed_out": True})
        response.del_cookie(
            COOKIE, path="/", secure=request.secure or None, httponly=True, samesite="Strict"
        )
        return response

    async def _gathered(self, request: web.Request) -> _Gathered | web.Response:
        """This process's window and lines; with ``serve --workers N``, every worker's,
        added up (each request reaches one worker: :func:`fan_out` asks the others, which
        answer with their raw state, never passing the request on)."""
        want_lines = request.path == "/admin/console/audit"
        if request.headers.get(FANOUT_HEADER) is not None:  # another worker asks
            state: dict[str, Any] = {"object": "console_state"}
            if want_lines:
                state["lines"] = list(self.lines)
            else:
                state["window"] = self.window.export()
            return _json(state)
        peers = await fan_out(request, {})
        if not peers:
            return _Gathered(self.window, list(self.lines), 1, [])
        windows = [self.window.export()]
        lines = list(self.lines)
        unreached = []
        for name, peer in sorted(peers.items()):
            body = peer.body
            if peer.error is not None or not isinstance(body, dict):
                unreached.append(name)
            elif want_lines and isinstance(body.get("lines"), list):
                lines.extend(line for line in body["lines"] if isinstance(line, dict))
            elif not want_lines and isinstance(body.get("window"), dict):
                windows.append(body["window"])
            else:
                unreached.append(name)
        own = self.window
        try:
            window = Window.combined(own.seconds, own.slots, windows)
        except (KeyError, ValueError, TypeError, IndexError, AttributeError):
            window, unreached = own, sorted(peers)
        lines.sort(key=lambda line: str(line.get("timestamp", "")))
        del lines[: -self.settings.audit_lines]
        return _Gathered(window, lines, 1 + len(peers) - len(unreached), unreached)

    async def _summary_route(self, request: web.Request) -> web.Response:
        gathered = await self._gathered(request)
        if isinstance(gathered, web.Response):
            return gathered
        answer = self.summary(time.time(), gathered.window)
        answer["workers"] = gathered.workers
        answer["workers_unreached"] = gathered.unreached
        return _json(answer)

    async def _audit_route(self, request: web.Request) -> web.Response:
        # first: another worker asking for this one's lines sends no query
        gathered = await self._gathered(request)
        if isinstance(gathered, web.Response):
            return gathered
        query = request.query
        text = query.get("limit", "100")
        if not text.isdigit() or not 1 <= int(text) <= _MAX_LINES:
            return admin_error(
                400, f"limit must be a number from 1 to {_MAX_LINES}.", code="parameter_invalid"
            )
        status = query.get("status", "").strip().lower()
        if status and not (
            (len(status) == 3 and status.isdigit())
            or (len(status) == 3 and status[0] in "12345" and status[1:] == "xx")
        ):
            return admin_error(
                400,
                "status must be a status such as 429, or a class such as 4xx.",
                code="parameter_invalid",
            )
        lines = self.audit(
            team=query.get("team") or None,
            status=status or None,
            object_id=query.get("object") or None,
            limit=int(text),
            lines=gathered.lines,
        )
        return _json({"object": "list", "data": lines})

    async def _chart_route(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        if name not in _CHARTS:
            return admin_error(
                404,
                f"No chart named {name!r}; there are {', '.join(_CHARTS)}.",
                code="resource_missing",
            )
        gathered = await self._gathered(request)
        if isinstance(gathered, web.Response):
            return gathered
        return web.Response(
            text=self.chart(name, time.time(), gathered.window),
            content_type="image/svg+xml",
            headers=SECURITY_HEADERS,
        )

    # ------------------------------------------------------------------ answers

    def _teams(self, window: Window) -> list[str]:
        """The configured teams, then any other team that has counts (``-``)."""
        config = self._host.config if self._host is not None else self._config
        names = [team.name for team in config.teams] if config is not None else []
        seen = {team for _, teams in window.ring for team in teams}
        return [*names, *sorted(seen - set(names))]

    def audit(
        self,
        *,
        team: str | None = None,
        status: str | None = None,
        object_id: str | None = None,
        limit: int = 100,
        lines: Iterable[dict[str, Any]] | None = None,
    ) -> list[dict[str, Any]]:
        """The most recent audit lines kept (or of ``lines``, oldest first), newest first,
        that match every filter given."""
        out: list[dict[str, Any]] = []
        for line in reversed(list(self.lines if lines is None else lines)):
            if team is not None and (line.get("team") or _NO_TEAM) != team:
                continue
            if status is not None and not _status_matches(line.get("status"), status):
                continue
            if object_id is not None and line.get("object_id") != object_id:
                continue
            out.append(line)
            if len(out) >= limit:
                break
        return out

    def summary(self, now: float, window: Window | None = None) -> dict[str, Any]:
        """What ``GET /admin/console/summary`` answers (docs/plugins/console.md), from
        ``window`` (this process's by default)."""
        window = window or self.window
        totals = {name: _Counts() for name in self._teams(window)}
        last_minute: Counter[str] = Counter()
        minute_from = window.slots - max(1, 60 // window.seconds)
        for position, teams in window.buckets(now):
            for name, counts in teams.items():
                totals.setdefault(name, _Counts()).add(counts)
                if position >= minute_from:
                    last_minute[name] += counts.requests
        everything = _Counts()
        for counts in totals.values():
            everything.add(counts)
        lookups = sum(everything.cache[s] for s in _LOOKUPS)
        from_cache = sum(everything.cache[s] for s in _FROM_CACHE)
        minute_seconds = min(60, window.slots * window.seconds)
        entries = []
        admin_fields = self._admin_fields()
        for name, counts in totals.items():
            account = window.account.get(name)
            refusals = [r for r in window.refusals if r[1] == name]
            entries.append(
                {
                    "name": name,
                    "requests": counts.requests,
                    "errors": counts.errors,
                    "error_ratio": _ratio(counts.errors, counts.requests),
                    "requests_per_second": round(last_minute[name] / minute_seconds, 3),
                    "p50_ms": _quantile(counts.latency, 0.50),
                    "p99_ms": _quantile(counts.latency, 0.99),
                    "refusals": counts.refusals,
                    "last_refusals": [
                        {"at": _iso(at), "limit": limit, "request_id": request_id}
                        for at, _, limit, request_id in refusals[-5:][::-1]
                    ],
                    "account_remaining": (
                        {"remaining": account[0], "at": _iso(account[1])} if account else None
                    ),
                    "rate_limit": admin_fields.get(name, {}).get("rate_limit"),
                    "cache": dict(counts.cache),
                }
            )
        return {
            "object": "console_summary",
            "now": _iso(now),
            "bucket_seconds": window.seconds,
            "window_seconds": window.seconds * window.slots,
            "refresh_seconds": self.settings.refresh_seconds,
            "requests": everything.requests,
            "errors": everything.errors,
            "teams": entries,
            "cache": {
                "lookups": lookups,
                "from_cache": from_cache,
                "hit_ratio": _ratio(from_cache, lookups),
                "bytes_from_cache": everything.bytes_from_cache,
                "by_status": dict(everything.cache),
            },
            "upstream_errors": dict(everything.upstream_errors.most_common()),
            "plugins": self._host.plugin_names() if self._host is not None else [],
            "webhooks": self._webhooks_on(),
        }

    def _webhooks_on(self) -> bool:
        """Whether the admin listener serves the webhooks endpoints (the plugin is loaded by
        default but on only when configured): the page asks for them only then."""
        router = self._host.admin_router if self._host is not None else None
        if router is None:
            return False
        return any(resource.canonical == _WEBHOOK_SUBSCRIPTIONS for resource in router.resources())

    def _admin_fields(self) -> dict[str, dict[str, Any]]:
        """What plugins add to each team in ``GET /admin/teams`` (``rate_limit``)."""
        host = self._host
        if host is None or "gateway_admin_team" not in host.implemented:
            return {}
        now = time.monotonic()
        cached = self._admin_fields_at
        if cached is not None and now - cached[0] < _ADMIN_FIELDS_TTL:
            return cached[1]
        fields = {
            team.name: host.fields("gateway_admin_team", team=team) for team in host.config.teams
        }
        self._admin_fields_at = (now, fields)
        return fields

    def series(
        self, now: float, window: Window | None = None
    ) -> dict[str, dict[str, list[float | None]]]:
        """Per team: requests and errors per second, p50 and p99 (ms), one point a bucket."""
        window = window or self.window
        slots = window.slots
        out: dict[str, dict[str, list[float | None]]] = {}
        for name in self._teams(window):
            out[name] = {
                "requests": [0.0] * slots,
                "errors": [0.0] * slots,
                "p50_ms": [None] * slots,
                "p99_ms": [None] * slots,
            }
        for position, teams in window.buckets(now):
            for name, counts in teams.items():
                team = out.setdefault(
                    name,
                    {
                        "requests": [0.0] * slots,
                        "errors": [0.0] * slots,
                        "p50_ms": [None] * slots,
                        "p99_ms": [None] * slots,
                    },
                )
                team["requests"][position] = round(counts.requests / window.seconds, 3)
                team["errors"][position] = round(counts.errors / window.seconds, 3)
                team["p50_ms"][position] = _quantile(counts.latency, 0.5)
                team["p99_ms"][position] = _quantile(counts.latency, 0.99)
        return out

    def chart(self, name: str, now: float, window: Window | None = None) -> str:
        """The SVG of chart ``name`` (``requests``, ``errors`` or ``latency``)."""
        window = window or self.window
        series = self.series(now, window)
        totals = {team: _Counts() for team in series}
        for _, teams in window.buckets(now):
            for team, counts in teams.items():
                totals[team].add(counts)
        seconds = window.seconds
        if name == "requests":
            return line_chart(
                "Requests",
                "per second",
                {team: s["requests"] for team, s in series.items()},
                seconds_per_point=seconds,
                totals={team: f"{c.requests} requests" for team, c in totals.items()},
            )
        if name == "errors":
            return line_chart(
                "Errors (5xx, broken off)",
                "per second",
                {team: s["errors"] for team, s in series.items()},
                seconds_per_point=seconds,
                totals={team: f"{c.errors} errors" for team, c in totals.items()},
            )
        lines: dict[str, list[float | None]] = {}
        shown: dict[str, str] = {}
        for team, s in series.items():
            lines[f"{team} p50"] = s["p50_ms"]
            lines[f"{team} p99"] = s["p99_ms"]
            p50 = _quantile(totals[team].latency, 0.5)
            p99 = _quantile(totals[team].latency, 0.99)
            shown[f"{team} p50"] = f"{p50} ms" if p50 is not None else "-"
            shown[f"{team} p99"] = f"{p99} ms" if p99 is not None else "-"
        return line_chart("Latency", "ms", lines, seconds_per_point=seconds, totals=shown)


def _status_matches(value: Any, wanted: str) -> bool:
    if not isinstance(value, int):
        return False
    if wanted.endswith("xx"):
        return str(value)[:1] == wanted[0]
    return str(value) == wanted


def _ratio(part: int, whole: int) -> float | None:
    return round(part / whole, 4) if whole else None


def _iso(epoch: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))


def _refused(message: str) -> web.Response:
    """401, Stripe-shaped, with the console's headers."""
    response = admin_error(401, message, code="console_signed_out")
    response.headers.update(SECURITY_HEADERS)
    return response


def _json(obj: Any) -> web.Response:
    return web.Response(
        body=orjson.dumps(obj, default=json_default),
        content_type=_JSON,
        headers=SECURITY_HEADERS,
    )
