"""``stripe-gateway sandbox`` and ``stripe-gateway demo``: run the sandbox, alone or behind
the gateway, until SIGINT/SIGTERM.

The demo shows every plugin: the gateway with sample rate limits, its admin listener
(metrics, ``/readyz``, the admin endpoints, with a demo token), the sandbox as Stripe, and
the way back in (:mod:`gateway.serve.demo_webhooks`): a webhook endpoint registered in the
sandbox posts its events to the gateway's ingress, and the ``webhooks`` plugin delivers them,
re-signed per team, to a receiver the demo serves, which verifies each with the stripe SDK
and says so; ``demo --config FILE`` puts one's own config (its teams, plugins and
``[admin]``) in front of the sandbox instead. Every port is bound before anything starts, so
a port in use stops the demo with the port, what it is for and the flag that changes it, and
nothing else said.
What the banner prints runs as printed: the curl line's URL is quoted, and the Python
snippet names this interpreter (the venv ``scripts/demo.sh`` made, with the stripe SDK).
"""

from __future__ import annotations

import asyncio
import errno
import importlib.util
import os
import shlex
import signal
import socket
import sys
import tempfile
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web

from gateway.app import create_app, log_started
from gateway.config import GatewayConfig, parse_config
from gateway.demokeys import DEMO_ADMIN_TOKEN, DEMO_KEYS, EXAMPLE_KEYS, digest
from gateway.errors import ConfigError
from gateway.keys import ADMIN_URLS
from gateway.serve.demo_webhooks import (
    INGRESS_PATH,
    SUBSCRIPTIONS,
    DemoWebhooks,
    receiver_app,
    register_ingress,
    team_secrets,
    webhooks_table,
)
from gateway.serve.server import GatewayRunner
from sandbox.app import Sandbox, create_sandbox_app
from sandbox.core import SandboxSettings
from sandbox.faults import Faults, control_app

__all__ = [
    "DEMO_KEYS",
    "DemoOptions",
    "PortInUse",
    "SandboxOptions",
    "run_demo",
    "run_sandbox",
]

DEMO_UPSTREAM_KEY = "sk_test_demo_sandbox_key"


#: the demo's sample rate limits (``[plugins.rate_limit]``): the readonly team runs out first
DEMO_RATE_LIMITS: dict[str, Any] = {
    "default": {"read": {"rate": 10, "burst": 20}, "write": {"rate": 5, "burst": 10}},
    "teams": {"readonly": {"read": {"rate": 1, "burst": 5}}},
}


@dataclass
class SandboxOptions:
    host: str = "127.0.0.1"
    port: int = 12111
    #: None: the API port + 1, or an ephemeral port when the API port is (0)
    control_port: int | None = None
    settings: SandboxSettings | None = None
    faults: Faults | None = None


@dataclass
class DemoOptions:
    host: str = "127.0.0.1"
    port: int = 8080
    sandbox: SandboxOptions | None = None
    #: None: the gateway port + 1, or an ephemeral port when the gateway port is (0)
    admin_port: int | None = None
    #: a config file of one's own, put in front of the sandbox (``demo --config``)
    config: str | None = None
    #: the built-in demo's webhook receiver; None: the gateway port + 2, or an ephemeral port
    #: when the gateway port is (0)
    receiver_port: int | None = None
    environ: dict[str, str] = field(default_factory=lambda: dict(os.environ))


class PortInUse(OSError):
    """A port the demo or the sandbox needs cannot be bound: which, what for, which flag."""

    def __str__(self) -> str:
        return str(self.args[0])


def _bind(host: str, port: int, what: str, fix: str) -> socket.socket:
    """A listening socket on ``host:port``, or :class:`PortInUse` saying what to change."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    if not 0 <= port <= 65535:  # e.g. a default of --port + 2 past the last port
        raise PortInUse(f"port {port} on {host} ({what}) is not a port (0-65535); {fix}")
    try:
        return socket.create_server((host, port), family=family, backlog=1024)
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            reason = "is already in use (is another demo running?)"
        else:
            reason = f"cannot be used: {exc.strerror or exc}"
        raise PortInUse(f"port {port} on {host} ({what}) {reason}; {fix}") from None


def _url(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


async def _serve_on(runner: web.BaseRunner, sock: socket.socket) -> None:
    await runner.setup()
    await web.SockSite(runner, sock).start()


async def _wait_for_signal() -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)


def _bind_sandbox(options: SandboxOptions, flag: str) -> tuple[socket.socket, socket.socket]:
    api = _bind(options.host, options.port, "the sandbox's API", f"choose another with {flag} PORT")
    control_port = options.control_port
    if control_port is None:
        control_port = options.port + 1 if options.port else 0
    try:
        control = _bind(
            options.host,
            control_port,
            "the sandbox's fault control",
            "choose another with --control-port PORT",
        )
    except BaseException:
        api.close()
        raise
    return api, control


async def _start_sandbox(
    options: SandboxOptions, sockets: tuple[socket.socket, socket.socket]
) -> tuple[list[web.BaseRunner], Sandbox, str, str]:
    api_sock, control_sock = sockets
    sandbox = Sandbox(
        settings=options.settings or SandboxSettings(), faults=options.faults or Faults()
    )
    url, control_url = _url(api_sock), _url(control_sock)
    if options.settings is None or options.settings.files_base == SandboxSettings.files_base:
        sandbox.settings.files_base = url
    api = web.AppRunner(create_sandbox_app(sandbox), access_log=None, shutdown_timeout=2)
    control = web.AppRunner(control_app(sandbox.faults, sandbox.reset), access_log=None)
    runners: list[web.BaseRunner] = []
    try:
        for runner, sock in ((api, api_sock), (control, control_sock)):
            await _serve_on(runner, sock)
            runners.append(runner)
    except BaseException:
        for started in reversed(runners):
            await started.cleanup()
        raise
    return runners, sandbox, url, control_url


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


async def _sandbox_main(options: SandboxOptions) -> None:
    sockets = _bind_sandbox(options, "--port")
    runners, _, url, control_url = await _start_sandbox(options, sockets)
    _say(f"stripe-gateway sandbox: API and files on {url}, fault control on {control_url}")
    _say("Any sk_test_/rk_test_ key works; each key has its own data. Ctrl-C stops.")
    try:
        await _wait_for_signal()
    finally:
        for runner in reversed(runners):
            await runner.cleanup()


# --------------------------------------------------------------------------- the demo's config


def _demo_document(options: DemoOptions) -> tuple[dict[str, Any], dict[str, str]]:
    """The built-in demo's config and environment: two teams, sample rate limits, the admin
    listener with the demo token."""
    teams = [
        {
            "name": "readonly",
            "key_sha256": [digest(DEMO_KEYS[0][1])],
            "upstream_key_env": "DEMO_UPSTREAM_KEY",
            "allow": ["GET /**"],
        },
        {
            "name": "full",
            "key_sha256": [digest(DEMO_KEYS[1][1])],
            "upstream_key_env": "DEMO_UPSTREAM_KEY",
        },
    ]
    document = {
        "admin": {"host": options.host, "token_sha256": digest(DEMO_ADMIN_TOKEN)},
        "plugins": {"rate_limit": DEMO_RATE_LIMITS},
        "teams": teams,
    }
    return document, {"DEMO_UPSTREAM_KEY": DEMO_UPSTREAM_KEY}


def _file_document(path: str, environ: dict[str, str]) -> tuple[dict[str, Any], dict[str, str]]:
    """``demo --config FILE``: the file as it is, except that a team's upstream key
    variable that is not set gets the sandbox's key (the upstream is the sandbox)."""
    try:
        document = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(path, f"cannot read config file: {exc.strerror}") from None
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(path, f"invalid TOML: {exc}") from None
    env = dict(environ)
    teams = document.get("teams")
    for team in teams if isinstance(teams, list) else ():
        name = team.get("upstream_key_env") if isinstance(team, dict) else None
        if isinstance(name, str) and not env.get(name):
            env[name] = DEMO_UPSTREAM_KEY
    return document, env


def _demo_config(
    options: DemoOptions,
    document: dict[str, Any],
    environ: dict[str, str],
    *,
    port: int,
    sandbox_url: str,
    admin_port: int | None,
) -> GatewayConfig:
    """The config the demo runs: ``document`` listening on the demo's address, in front of
    the sandbox, with the demo's admin listener on ``admin_port`` unless it has its own."""
    document = dict(document)
    document["server"] = {**document.get("server", {}), "host": options.host, "port": port}
    document["upstream"] = {
        **document.get("upstream", {}),
        **{name: sandbox_url for name in ("api", "files", "connect", "meter_events")},
    }
    if admin_port is not None:
        document["admin"] = {"host": options.host, **document.get("admin", {}), "port": admin_port}
    # the environment may not move the demo's listeners or upstreams
    environ = {k: v for k, v in environ.items() if not k.startswith("STRIPE_GATEWAY_")}
    return parse_config(document, source=options.config or "<demo>", environ=environ)


def _own_admin_port(document: dict[str, Any]) -> int:
    admin = document.get("admin")
    port = admin.get("port", 0) if isinstance(admin, dict) else 0
    return port if isinstance(port, int) else 0


# --------------------------------------------------------------------------- running it


async def _demo_main(options: DemoOptions) -> None:
    sandbox_options = options.sandbox or SandboxOptions()
    if options.config is None:
        document, environ = _demo_document(options)
    else:
        document, environ = _file_document(options.config, options.environ)
    own_admin = _own_admin_port(document)
    # the built-in demo's webhooks: its receiver verifies with the stripe SDK (the demo extra)
    webhooks = options.config is None and importlib.util.find_spec("stripe") is not None
    # every port first, so that one in use stops the demo before anything starts
    held: list[socket.socket] = []
    try:
        gateway_sock = _bind(
            options.host, options.port, "the gateway", "choose another with --port PORT"
        )
        held.append(gateway_sock)
        if own_admin:
            admin_sock = _bind(
                options.host,
                own_admin,
                "the admin listener",
                f"change [admin] port in {options.config}",
            )
        else:
            admin_port = options.admin_port
            if admin_port is None:
                admin_port = options.port + 1 if options.port else 0
            admin_sock = _bind(
                options.host,
                admin_port,
                "the admin listener",
                "choose another with --admin-port PORT",
            )
        held.append(admin_sock)
        sandbox_socks = _bind_sandbox(sandbox_options, "--sandbox-port")
        held.extend(sandbox_socks)
        receiver_sock: socket.socket | None = None
        if webhooks:
            receiver_port = options.receiver_port
            if receiver_port is None:
                receiver_port = options.port + 2 if options.port else 0
            receiver_sock = _bind(
                options.host,
                receiver_port,
                "the demo's webhook receiver",
                "choose another with --receiver-port PORT",
            )
            held.append(receiver_sock)

        def configure(document: dict[str, Any], environ: dict[str, str]) -> GatewayConfig:
            return _demo_config(
                options,
                document,
                environ,
                port=gateway_sock.getsockname()[1],
                sandbox_url=_url(sandbox_socks[0]),
                admin_port=None if own_admin else admin_sock.getsockname()[1],
            )

        # checked here, before anything starts; the built-in demo's config with webhooks is
        # made once the sandbox runs: it needs the endpoint's secret, which the sandbox makes
        config = None if webhooks else configure(document, environ)
        app = None if config is None else create_app(config)  # the plugins' settings
    except BaseException:
        for sock in held:
            sock.close()
        raise
    runners: list[web.BaseRunner] = []
    hooks: DemoWebhooks | None = None
    #: the webhooks plugin's store and secret files, for this run only (mode 0700)
    folder: tempfile.TemporaryDirectory[str] | None = None
    try:
        sandbox_runners, sandbox, sandbox_url, control_url = await _start_sandbox(
            sandbox_options, sandbox_socks
        )
        runners.extend(sandbox_runners)
        url = _url(gateway_sock)
        if receiver_sock is not None:
            folder = tempfile.TemporaryDirectory(prefix="stripe-gateway-demo-")
            hooks, document, secrets_ = await _demo_webhooks(
                document, url, sandbox_url, _url(receiver_sock), folder.name
            )
            config = configure(document, environ)
            app = create_app(config)
            # a client holding a request open must not hold up Ctrl-C
            receiver = web.AppRunner(
                receiver_app(secrets_, _say), access_log=None, shutdown_timeout=2
            )
            await _serve_on(receiver, receiver_sock)
            runners.append(receiver)
        assert config is not None and app is not None
        gateway = GatewayRunner(app, access_log=None, shutdown_timeout=5)
        admin_sock.close()  # the admin listener binds the port itself, as it starts
        await _serve_on(gateway, gateway_sock)
        runners.append(gateway)
        log_started(app)
        sandbox.settings.files_base = url  # file URLs lead through the gateway
        admin_urls = app[ADMIN_URLS]
        admin_url = admin_urls[0] if admin_urls else None
        _say(_banner(config, url, sandbox_url, control_url, admin_url, hooks))
        await _wait_for_signal()
    finally:
        for runner in reversed(runners):
            await runner.cleanup()
        for sock in held:  # the ones no listener took over (closing twice is harmless)
            sock.close()
        if folder is not None:  # after the gateway, which closed its store
            folder.cleanup()
        _say("stripe-gateway demo: stopped.")


async def _demo_webhooks(
    document: dict[str, Any], url: str, sandbox_url: str, receiver_url: str, folder: str
) -> tuple[DemoWebhooks, dict[str, Any], dict[str, str]]:
    """Register the gateway's ingress as a webhook endpoint in the sandbox (in the account of
    the demo's upstream key, where the teams' calls land); what was registered, the built-in
    config with the ``webhooks`` plugin receiving from it and delivering to the receiver
    (its secrets in files in ``folder``), and each team's secret, for the receiver."""
    ingress_url = url + INGRESS_PATH
    endpoint_id, ingress_secret = await register_ingress(
        sandbox_url, DEMO_UPSTREAM_KEY, ingress_url
    )
    secrets_ = team_secrets()
    table = webhooks_table(Path(folder), receiver_url, ingress_secret, secrets_)
    document = {**document, "plugins": {**document["plugins"], "webhooks": table}}
    return DemoWebhooks(endpoint_id, ingress_url, receiver_url), document, secrets_


# --------------------------------------------------------------------------- the banner


def _known_keys(config: GatewayConfig) -> list[tuple[str, str | None]]:
    """Each team and its key when it is a publicly known one (else ``None``)."""
    public = {digest(key): key for key in (*(k for _, k, _ in DEMO_KEYS), *EXAMPLE_KEYS.values())}
    out = []
    for team in config.teams:
        keys = [public[d] for d in team.key_sha256 if d in public]
        out.append((team.name, keys[0] if keys else None))
    return out


def _python() -> str:
    """This interpreter, as a shell word: the one that has the stripe SDK (the venv)."""
    return shlex.quote(sys.executable)


def _snippets(url: str, curl_key: str, python_key: str, builtin: bool) -> str:
    base = f'base_addresses={{"api": "{url}", "files": "{url}"}}'
    if builtin:
        curl_url = f"{url}/v1/sigma/scheduled_query_runs?limit=2"
        # an object whose event comes back through the gateway's webhook ingress
        call = 'print(client.v1.identity.verification_sessions.create({"type": "document"}))'
    else:
        # a route every team of config.example.toml may call
        curl_url = f"{url}/v1/sigma/scheduled_query_runs?limit=2"
        call = 'print(client.v1.sigma.scheduled_query_runs.list({"limit": 2}))'
    install = ""
    if importlib.util.find_spec("stripe") is None:
        install = f"  {_python()} -m pip install stripe    # the snippet needs the stripe SDK\n"
    return f"""  curl -s {shlex.quote(curl_url)} -u {shlex.quote(curl_key + ":")}

{install}  {_python()} - <<'PY'
import stripe
client = stripe.StripeClient(
    "{python_key}", {base}
)
{call}
PY"""


def _webhooks_lines(hooks: DemoWebhooks) -> list[str]:
    subscriptions = "; ".join(f"{team}: {', '.join(events)}" for team, events in SUBSCRIPTIONS)
    return [
        f"  webhooks: the sandbox's webhook endpoint {hooks.endpoint_id} posts every event to",
        f"    the gateway's ingress {hooks.ingress_url}, which checks Stripe's signature,",
        "    stores the event and delivers it re-signed with each team's own secret",
        f"    ({subscriptions}) to the demo's receiver on {hooks.receiver_url},",
        "    which verifies it with stripe.Webhook.construct_event and prints a line",
    ]


def _banner(
    config: GatewayConfig,
    url: str,
    sandbox_url: str,
    control_url: str,
    admin_url: str | None,
    hooks: DemoWebhooks | None = None,
) -> str:
    builtin = config.source == "<demo>"
    lines = [
        "",
        f"stripe-gateway demo: the gateway on {url}, in front of the built-in Stripe "
        f"sandbox on {sandbox_url}",
    ]
    if builtin:
        lines.append("  gateway keys (use one as your Stripe API key):")
        lines += [f"    {team:<9} {key:<24} ({what})" for team, key, what in DEMO_KEYS]
        curl_key, python_key = DEMO_KEYS[0][1], DEMO_KEYS[1][1]
    else:
        lines.append(f"  config: {config.source} (its teams, plugins and [admin])")
        known = _known_keys(config)
        lines += [f"    {team:<16} {key or '(your key)'}" for team, key in known]
        found = [key for _, key in known if key is not None]
        curl_key = python_key = found[0] if found else "YOUR_TEAM_KEY"
    lines.append(f"  fault control (latency, 500s, 429s, resets): {control_url}/faults")
    if admin_url is not None:
        lines.append(f"  admin listener (metrics, /readyz, admin endpoints): {admin_url}")
        if builtin:
            lines.append(f"    admin token: {DEMO_ADMIN_TOKEN}")
    if builtin:
        lines.append(
            "  rate limits: readonly 1 read/s (burst 5); full 10 reads/s (burst 20), "
            "5 writes/s (burst 10)"
        )
        if hooks is not None:
            lines += _webhooks_lines(hooks)
        else:
            lines.append(
                "  webhooks: not shown: the demo's receiver needs the stripe SDK "
                f"({_python()} -m pip install stripe)"
            )
    lines += ["", "Try it:", _snippets(url, curl_key, python_key, builtin)]
    if hooks is not None:
        lines += [
            "",
            "  The snippet creates an identity verification session: its event",
            "  (identity.verification_session.created) comes back in through the gateway's",
            '  ingress, and the receiver prints "webhook receiver: <team> <type> <event id>',
            '  (signature verified)" for each team subscribed to it (here both).',
        ]
    if admin_url is not None:
        lines += ["", f"  curl -s {admin_url}/readyz"]
        lines.append(f"  curl -s {admin_url}/metrics | grep stripe_gateway_requests_total")
        if builtin:
            bearer = shlex.quote("Authorization: Bearer " + DEMO_ADMIN_TOKEN)
            lines.append(f"  curl -s -H {bearer} {admin_url}/admin/teams")
            if hooks is not None:
                lines.append(f"  curl -s -H {bearer} {admin_url}/admin/webhooks/deliveries")
    lines += ["", "Audit lines follow on standard output. Ctrl-C stops both.", ""]
    return "\n".join(lines)


def run_sandbox(options: SandboxOptions) -> None:
    asyncio.run(_sandbox_main(options))


def run_demo(options: DemoOptions) -> None:
    asyncio.run(_demo_main(options))
