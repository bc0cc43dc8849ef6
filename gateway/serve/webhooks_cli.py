"""``stripe-gateway webhooks ...``: the ``webhooks`` plugin's admin endpoints from the
command line.

=======================================  ==============================================
``webhooks subscriptions``               ``GET /admin/webhooks/subscriptions``
``webhooks events``                      ``GET /admin/webhooks/events``
``webhooks deliveries``                  ``GET /admin/webhooks/deliveries``
``webhooks dead-letters``                ``GET /admin/webhooks/dead_letters``
``webhooks pause NAME`` / ``resume``     ``POST /admin/webhooks/subscriptions/NAME/pause``
``webhooks replay --subscription NAME``  ``POST /admin/webhooks/replay`` with ``event_id``,
``(--event ID | --since T --until T)``   or ``since`` and ``until`` (Unix seconds)
=======================================  ==============================================

The admin listener's address is read from the config file's ``[admin]`` table (``--config``,
the file ``serve`` runs with; ``STRIPE_GATEWAY_ADMIN_HOST``/``_PORT`` override it as they do
for ``serve``); only that table is read, so the command needs none of the teams' keys. The
file holds only the admin token's digest: the token itself comes from the environment
variable ``STRIPE_GATEWAY_ADMIN_TOKEN`` or from ``--token-file``, and is checked against the
digest before anything is sent. Answers print as a table, or as the server's JSON with
``--json``. Exit codes: 0 done; 1 the gateway could not be reached or refused the request
(its message is printed); 2 a config or usage problem (no admin listener configured, no
token, a token that does not match).
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import json
import os
import re
import sys
import tomllib
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from gateway.config import ENV_OVERRIDES, AdminConfig
from gateway.errors import ConfigError
from gateway.settings import validate_settings

__all__ = [
    "TOKEN_ENV",
    "AdminTarget",
    "CommandError",
    "add_parser",
    "admin_target",
    "parse_time",
    "replay_form",
    "run",
]

#: where the admin token is read from (the config file holds only its digest)
TOKEN_ENV = "STRIPE_GATEWAY_ADMIN_TOKEN"
EXIT_FAILED = 1
EXIT_USAGE = 2
_PREFIX = "/admin/webhooks"
_DELIVERY_STATUSES = ("pending", "delivered", "dead")
_UNPRINTABLE = re.compile(r"[\x00-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069]")
_SECONDS = re.compile(r"\d{1,12}(?:\.\d*)?")


class CommandError(Exception):
    """A problem the command reports in one line, with its exit code."""

    def __init__(self, message: str, code: int = EXIT_FAILED) -> None:
        super().__init__(message)
        self.code = code


# --------------------------------------------------------------------------- arguments


def parse_time(text: str) -> int:
    """Unix seconds from ``text``: Unix seconds themselves, or an ISO-8601 time
    (``2026-12-03T10:00:00Z``, ``2026-12-03T11:00+01:00``, ``2026-12-03``); a time without
    a zone is UTC. Raises ``ValueError`` otherwise."""
    text = text.strip()
    if _SECONDS.fullmatch(text):
        return int(float(text))
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(
            f"{text!r} is neither Unix seconds nor an ISO-8601 time (2026-12-03T10:00:00Z)"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return int(moment.timestamp())


def _time_arg(text: str) -> int:
    try:
        return parse_time(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _seconds_arg(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError("must be a number of seconds") from None
    if not 0 < value <= 3600:
        raise argparse.ArgumentTypeError("must be > 0 and <= 3600")
    return value


def _limit_arg(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 1000:
        raise argparse.ArgumentTypeError("must be a number from 1 to 1000")
    return int(text)


def add_parser(sub: Any) -> None:
    """Add ``webhooks`` and its actions to the ``stripe-gateway`` sub-parsers ``sub``."""

    def common(parser: argparse.ArgumentParser, *, suppress: bool) -> None:
        # given before or after the action: the action's copies only override when given
        default: Any = argparse.SUPPRESS if suppress else None
        parser.add_argument(
            "--config",
            "-c",
            metavar="FILE",
            default=default,
            help="the gateway's TOML config file (its [admin] table is read)",
        )
        parser.add_argument(
            "--token-file",
            metavar="FILE",
            default=default,
            help=f"file holding the admin token (default: the {TOKEN_ENV} environment variable)",
        )
        parser.add_argument(
            "--json",
            action="store_true",
            default=argparse.SUPPRESS if suppress else False,
            help="print the server's JSON answer as is",
        )
        parser.add_argument(
            "--timeout",
            type=_seconds_arg,
            metavar="SECONDS",
            default=argparse.SUPPRESS if suppress else 10.0,
            help="seconds to wait for the gateway (default 10)",
        )

    webhooks = sub.add_parser(
        "webhooks",
        help="list, pause, resume and replay webhook deliveries (the admin listener's "
        "/admin/webhooks endpoints)",
        description="Call the webhooks plugin's admin endpoints on the admin listener named "
        f"in the config file, with the admin token from {TOKEN_ENV} or --token-file.",
    )
    common(webhooks, suppress=False)
    actions = webhooks.add_subparsers(dest="action", required=True, metavar="ACTION")

    def action(name: str, help_: str) -> argparse.ArgumentParser:
        parser: argparse.ArgumentParser = actions.add_parser(name, help=help_)
        common(parser, suppress=True)
        return parser

    action("subscriptions", "the subscriptions: paused, circuit, failures, in flight")
    events = action("events", "the events received, newest first")
    events.add_argument("--limit", type=_limit_arg, help="at most this many (1-1000; 100)")
    for name, help_ in (
        ("deliveries", "deliveries, the most recently changed first"),
        ("dead-letters", "deliveries given up after their last attempt"),
    ):
        parser = action(name, help_)
        parser.add_argument("--subscription", metavar="NAME", help="only this subscription's")
        parser.add_argument("--event", metavar="ID", help="only this event's")
        if name == "deliveries":
            parser.add_argument("--status", choices=_DELIVERY_STATUSES, help="only these")
        parser.add_argument("--limit", type=_limit_arg, help="at most this many (1-1000; 100)")
    for name in ("pause", "resume"):
        parser = action(name, f"{name} a subscription's deliveries (kept across restarts)")
        parser.add_argument("name", metavar="NAME", help="the subscription")
    replay = action(
        "replay",
        "send an event (or every event received in a time range) to a subscription again",
    )
    replay.add_argument("--subscription", metavar="NAME", required=True)
    replay.add_argument("--event", metavar="ID", help="the event's id (evt_...)")
    replay.add_argument(
        "--since",
        type=_time_arg,
        metavar="TIME",
        help="start of the range: Unix seconds or ISO-8601 (2026-12-03T10:00:00Z)",
    )
    replay.add_argument("--until", type=_time_arg, metavar="TIME", help="end of the range")


def replay_form(
    subscription: str, event: str | None, since: int | None, until: int | None
) -> dict[str, str]:
    """The form ``POST /admin/webhooks/replay`` gets: ``event_id``, or ``since`` and
    ``until`` in Unix seconds; raises :class:`CommandError` (usage) for anything else."""
    if event is not None and (since is not None or until is not None):
        raise CommandError("give --event, or --since and --until, not both", EXIT_USAGE)
    if event is not None:
        return {"subscription": subscription, "event_id": event}
    if since is None or until is None:
        raise CommandError("give --event ID, or --since TIME and --until TIME", EXIT_USAGE)
    if since > until:
        raise CommandError(f"--since ({since}) is after --until ({until})", EXIT_USAGE)
    return {"subscription": subscription, "since": str(since), "until": str(until)}


# --------------------------------------------------------------------------- the admin listener


@dataclass(frozen=True)
class AdminTarget:
    """Where the admin listener is, and the token it takes."""

    url: str
    token: str = ""


def _read_admin_table(path: str, environ: Mapping[str, str]) -> AdminConfig:
    """The config file's ``[admin]`` table, with the environment's overrides, validated."""
    p = Path(path)
    try:
        data = tomllib.loads(p.read_bytes().decode("utf-8"))
    except OSError as exc:
        raise ConfigError(str(p), f"cannot read config file: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError(str(p), "config file is not UTF-8") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(str(p), f"invalid TOML: {exc}") from None
    table = data.get("admin", {})
    if not isinstance(table, dict):
        raise ConfigError("admin", "must be a table")
    table = dict(table)
    for var, (section, key) in ENV_OVERRIDES.items():
        if section == "admin" and var in environ:
            value: Any = environ[var]
            table[key] = int(value) if key == "port" and value.isdigit() else value
    return validate_settings(AdminConfig, table, prefix="admin")


def _connect_host(host: str) -> str:
    """The address to reach a listener bound to ``host`` at (a wildcard: loopback)."""
    if host in ("0.0.0.0", ""):
        return "127.0.0.1"
    if host == "::":
        return "[::1]"
    return f"[{host}]" if ":" in host else host


def admin_target(
    config_path: str, token_file: str | None, environ: Mapping[str, str]
) -> AdminTarget:
    """The admin listener named in ``config_path`` and the admin token, checked against the
    file's ``token_sha256``; :class:`CommandError` (usage) when either is missing."""
    admin = _read_admin_table(config_path, environ)
    if not admin.enabled:
        raise CommandError(
            f"the admin listener is not configured in {config_path}: set [admin] port "
            "(and token_sha256)",
            EXIT_USAGE,
        )
    url = f"http://{_connect_host(admin.host)}:{admin.port}"
    if admin.token_sha256 is None:
        raise CommandError(
            f"[admin] token_sha256 is not set in {config_path}: the admin endpoints refuse "
            "every request",
            EXIT_USAGE,
        )
    if token_file is not None:
        try:
            token = Path(token_file).read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8"
            raise CommandError(
                f"cannot read --token-file {token_file}: {reason}", EXIT_USAGE
            ) from None
        where = f"--token-file {token_file}"
    else:
        token = environ.get(TOKEN_ENV, "").strip()
        where = TOKEN_ENV
    if not token:
        raise CommandError(
            f"no admin token: set {TOKEN_ENV} or give --token-file (the config file holds "
            "only its digest)",
            EXIT_USAGE,
        )
    presented = hashlib.sha256(token.encode()).hexdigest()
    if not hmac.compare_digest(presented, admin.token_sha256):
        raise CommandError(
            f"the admin token from {where} does not match [admin] token_sha256 in {config_path}",
            EXIT_USAGE,
        )
    return AdminTarget(url, token)


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    """A 3xx is an answer, not a place to send the admin token."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


#: no proxies (``http_proxy`` in the environment would see the token) and no redirects
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}), _NoRedirects())


def call(
    target: AdminTarget,
    method: str,
    path: str,
    *,
    query: Mapping[str, str] | None = None,
    form: Mapping[str, str] | None = None,
    timeout: float = 10.0,
) -> Any:
    """``method path`` on the admin listener; the JSON answer of a 2xx, else
    :class:`CommandError` with the server's message (or why it could not be reached)."""
    url = target.url + path
    if query:
        url += "?" + urllib.parse.urlencode(query)
    body = urllib.parse.urlencode(form).encode() if form is not None else None
    request = urllib.request.Request(url, data=body, method=method)
    # never to a proxy from the environment, never along a redirect: the token is the admin's
    request.add_unredirected_header("Authorization", f"Bearer {target.token}")
    request.add_header("Accept", "application/json")
    if body is not None:
        request.add_header("Content-Type", "application/x-www-form-urlencoded")
    try:
        with _OPENER.open(request, timeout=timeout) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as exc:
        raise CommandError(_refusal(exc.code, exc.read())) from None
    except (urllib.error.URLError, OSError) as exc:
        reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
        text = getattr(reason, "strerror", None) or str(reason) or type(reason).__name__
        raise CommandError(
            f"cannot reach the gateway's admin listener at {target.url}: {text} (is the "
            "gateway running with this config?)"
        ) from None
    except ValueError:
        raise CommandError(f"the gateway at {target.url} answered something not JSON") from None


def _refusal(status: int, body: bytes) -> str:
    try:
        error = json.loads(body).get("error", {})
        message, code = str(error.get("message", "")), error.get("code")
    except (ValueError, AttributeError):
        message, code = "", None
    message = _clean(message) or f"HTTP {status}"
    return f"the gateway answered {status}: {message}" + (f" ({_clean(code)})" if code else "")


# --------------------------------------------------------------------------- output


def _clean(value: Any) -> str:
    """A cell: no control characters (nothing a hostile event type could do to a terminal)."""
    text = "" if value is None else str(value)
    return _UNPRINTABLE.sub("?", text)


def _when(value: Any) -> str:
    if not isinstance(value, int | float) or isinstance(value, bool):
        return _clean(value)
    return datetime.fromtimestamp(value, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _yes(value: Any) -> str:
    return "yes" if value is True else "no" if value is False else _clean(value)


Column = tuple[str, str, Callable[[Any], str]]

_SUBSCRIPTIONS: list[Column] = [
    ("NAME", "name", _clean),
    ("TEAM", "team", _clean),
    ("PAUSED", "paused", _yes),
    ("CIRCUIT", "circuit_open", lambda v: "open" if v else "closed"),
    ("FAILURES", "failures_in_a_row", _clean),
    ("IN FLIGHT", "in_flight", _clean),
    ("EVENTS", "events", lambda v: ",".join(map(_clean, v)) if isinstance(v, list) else _clean(v)),
    ("URL", "url", _clean),
]
_EVENTS: list[Column] = [
    ("ID", "id", _clean),
    ("TYPE", "type", _clean),
    ("SOURCE", "source", _clean),
    ("ACCOUNT", "account", _clean),
    ("LIVEMODE", "livemode", _yes),
    ("OBJECT", "object_id", _clean),
    ("RECEIVED", "received", _when),
]
_DELIVERIES: list[Column] = [
    ("EVENT", "event_id", _clean),
    ("SUBSCRIPTION", "subscription", _clean),
    ("STATUS", "status", _clean),
    ("ATTEMPTS", "attempts", _clean),
    ("LAST STATUS", "last_status", _clean),
    ("LAST ERROR", "last_error", _clean),
    ("NEXT", "next_at", _when),
    ("UPDATED", "updated", _when),
]


def table(rows: Sequence[Mapping[str, Any]], columns: Sequence[Column]) -> str:
    """``rows`` as aligned text columns under a header line."""
    cells = [[fmt(row.get(key)) for _, key, fmt in columns] for row in rows]
    headers = [header for header, _, _ in columns]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip()]
    for row in cells:
        lines.append("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
    return "\n".join(lines)


def _summary(answer: Any) -> str:
    if not isinstance(answer, dict):
        return _clean(answer)
    return "\n".join(f"{_clean(k)}: {_clean(v)}" for k, v in answer.items() if k != "object")


# --------------------------------------------------------------------------- running


def _request(args: argparse.Namespace) -> tuple[str, str, dict[str, str], dict[str, str] | None]:
    """(method, path, query, form) for the action in ``args``."""
    action = args.action
    if action == "subscriptions":
        return "GET", f"{_PREFIX}/subscriptions", {}, None
    if action in ("pause", "resume"):
        name = urllib.parse.quote(args.name, safe="")
        return "POST", f"{_PREFIX}/subscriptions/{name}/{action}", {}, {}
    if action == "replay":
        form = replay_form(args.subscription, args.event, args.since, args.until)
        return "POST", f"{_PREFIX}/replay", {}, form
    query: dict[str, str] = {}
    if getattr(args, "limit", None) is not None:
        query["limit"] = str(args.limit)
    if action == "events":
        return "GET", f"{_PREFIX}/events", query, None
    for name, value in (
        ("subscription", args.subscription),
        ("event_id", args.event),
        ("status", getattr(args, "status", None)),
    ):
        if value is not None:
            query[name] = value
    path = "deliveries" if action == "deliveries" else "dead_letters"
    return "GET", f"{_PREFIX}/{path}", query, None


def _render(action: str, answer: Any) -> str:
    rows = answer.get("data") if isinstance(answer, dict) else None
    if isinstance(rows, list):
        columns = {
            "subscriptions": _SUBSCRIPTIONS,
            "events": _EVENTS,
        }.get(action, _DELIVERIES)
        if not rows:
            return f"no {action.replace('-', ' ')}"
        return table([r for r in rows if isinstance(r, dict)], columns)
    return _summary(answer)


def run(args: argparse.Namespace, environ: Mapping[str, str] | None = None) -> int:
    """Run ``stripe-gateway webhooks ACTION``; errors are one line on stderr."""
    env = os.environ if environ is None else environ
    try:
        if not args.config:
            raise CommandError("give the gateway's config file: --config FILE", EXIT_USAGE)
        method, path, query, form = _request(args)
        target = admin_target(args.config, args.token_file, env)
        answer = call(target, method, path, query=query, form=form, timeout=args.timeout)
    except CommandError as exc:
        print(f"stripe-gateway: {exc}", file=sys.stderr)
        return exc.code
    if args.json:
        print(json.dumps(answer, indent=2))  # ASCII: no control or bidi character raw
    else:
        print(_render(args.action, answer))
    return 0
