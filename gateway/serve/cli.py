"""The ``stripe-gateway`` command: serve (one process, or ``--workers N``), check-config,
hash-key, new-key, sandbox, demo, and ``webhooks`` (:mod:`gateway.serve.webhooks_cli`).

Configuration problems end the process with exit code 2 and one line naming the key
path and the reason, never a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import re
import signal
import sys
from collections.abc import Callable, Coroutine, Sequence
from typing import TYPE_CHECKING, Any

from gateway import __version__
from gateway.config import GatewayConfig, load_config
from gateway.errors import ConfigError
from gateway.host import PluginFailure, PluginHost
from gateway.serve import webhooks_cli

if TYPE_CHECKING:
    from gateway.serve.demo import SandboxOptions
    from gateway.serve.workers import WorkerRole
    from gateway.tls import ReloadableTls

__all__ = ["main"]

EXIT_CONFIG = 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="stripe-gateway",
        description="One internal endpoint for the Stripe API.",
    )
    parser.add_argument("--version", action="version", version=f"stripe-gateway {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = sub.add_parser("serve", help="run the gateway")
    serve.add_argument("--config", "-c", required=True, metavar="FILE", help="TOML config file")
    serve.add_argument("--host", help="listen address (overrides [server] host)")
    serve.add_argument("--port", type=int, help="listen port (overrides [server] port)")
    serve.add_argument(
        "--workers",
        type=_positive_int,
        metavar="N",
        help="worker processes sharing the port (overrides [server] workers; default 1)",
    )
    serve.add_argument(
        "--allow-demo-keys",
        action="store_true",
        help="start even when a team accepts one of the publicly known demo keys "
        "(config.example.toml's): for trying the example, never in production",
    )

    check = sub.add_parser("check-config", help="validate a config file and exit")
    check.add_argument("file", metavar="FILE")

    sandbox = sub.add_parser("sandbox", help="run the built-in Stripe sandbox alone")
    _sandbox_flags(sandbox, port=12111)

    demo = sub.add_parser("demo", help="run the gateway in front of the built-in Stripe sandbox")
    demo.add_argument("--host", default="127.0.0.1", help="listen address (default 127.0.0.1)")
    demo.add_argument("--port", type=int, default=8080, help="gateway port (default 8080)")
    demo.add_argument(
        "--admin-port",
        type=int,
        default=None,
        help="admin listener port (default: the gateway port + 1; ephemeral if that is 0)",
    )
    demo.add_argument(
        "--receiver-port",
        type=int,
        default=None,
        help="the built-in demo's webhook receiver port (default: the gateway port + 2; "
        "ephemeral if that is 0)",
    )
    demo.add_argument(
        "--config",
        "-c",
        metavar="FILE",
        help="your own config in front of the sandbox: its teams, plugins and [admin] "
        "(demo keys allowed); the listen address and the upstreams are the demo's",
    )
    _sandbox_flags(demo, port=12111, prefix="sandbox-")

    reference = sub.add_parser(
        "config-reference",
        help="print the configuration reference generated from the settings models "
        "(docs/configuration.md, or config.example.toml with --format toml)",
    )
    reference.add_argument(
        "--format", choices=("markdown", "toml"), default="markdown", help="default: markdown"
    )

    sub.add_parser(
        "hash-key",
        help="print the SHA-256 digest of a key read from stdin (for teams[].key_sha256)",
    )
    new_key = sub.add_parser(
        "new-key",
        help="print a new random gateway key (shown once) and the key_sha256 line to paste",
    )
    new_key.add_argument(
        "--team", required=True, type=_team_name, metavar="NAME", help="the [[teams]] name"
    )
    webhooks_cli.add_parser(sub)
    return parser


def _rate(text: str) -> float:
    value = float(text)
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError("must be between 0 and 1")
    return value


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be >= 1")
    return value


def _team_name(text: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", text):
        raise argparse.ArgumentTypeError("letters, digits, `_`, `.`, `-`; up to 64")
    return text


def _non_negative(text: str) -> float:
    value = float(text)
    if value < 0:
        raise argparse.ArgumentTypeError("must be >= 0")
    return value


def _sandbox_flags(parser: argparse.ArgumentParser, *, port: int, prefix: str = "") -> None:
    if not prefix:
        parser.add_argument("--host", default="127.0.0.1", help="listen address")
    parser.add_argument(
        f"--{prefix}port",
        dest="sandbox_port",
        type=int,
        default=port,
        help=f"sandbox API port (default {port})",
    )
    parser.add_argument(
        "--control-port",
        type=int,
        default=None,
        help="fault control port (default: the sandbox API port + 1; ephemeral if that is 0)",
    )
    faults = parser.add_argument_group("faults (also changeable at run time: POST /faults)")
    faults.add_argument(
        "--latency-ms", type=_non_negative, default=0.0, help="added latency per request"
    )
    faults.add_argument(
        "--latency-max-ms",
        type=_non_negative,
        default=0.0,
        help="if set, latency is random in [latency-ms, latency-max-ms]",
    )
    faults.add_argument(
        "--error-rate",
        type=_rate,
        default=0.0,
        help="fraction answered 500 api_error (Stripe-Should-Retry: true)",
    )
    faults.add_argument(
        "--rate-limit-rate", type=_rate, default=0.0, help="fraction answered 429 rate_limit"
    )
    faults.add_argument(
        "--reset-rate",
        type=_rate,
        default=0.0,
        help="fraction whose connection is reset before answering",
    )
    faults.add_argument(
        "--truncate-rate", type=_rate, default=0.0, help="fraction whose body is cut short"
    )
    parser.add_argument(
        "--report-delay",
        type=_non_negative,
        default=2.0,
        help="seconds a report run stays pending (default 2)",
    )


def _sandbox_options(args: argparse.Namespace) -> SandboxOptions:
    from gateway.serve.demo import SandboxOptions
    from sandbox.core import SandboxSettings
    from sandbox.faults import Faults

    return SandboxOptions(
        host=args.host,
        port=args.sandbox_port,
        control_port=args.control_port,
        settings=SandboxSettings(report_delay=args.report_delay),
        faults=Faults(
            latency_ms=args.latency_ms,
            latency_max_ms=args.latency_max_ms,
            error_rate=args.error_rate,
            rate_limit_rate=args.rate_limit_rate,
            reset_rate=args.reset_rate,
            truncate_rate=args.truncate_rate,
        ),
    )


def _load(path: str) -> tuple[GatewayConfig, PluginHost]:
    config = load_config(path)
    return config, PluginHost(config)


def _hash_key() -> int:
    if sys.stdin.isatty():
        print("Type or paste the key, then press Enter:", file=sys.stderr)
    key = sys.stdin.readline().strip()
    if not key:
        print("stripe-gateway: no key on standard input", file=sys.stderr)
        return EXIT_CONFIG
    print(hashlib.sha256(key.encode()).hexdigest())
    return 0


def _new_key(team: str) -> int:
    from gateway.demokeys import digest, new_key

    key = new_key()
    print(key)
    print(f'key_sha256 = ["{digest(key)}"]')
    print(
        f"The first line is team {team!r}'s new key, shown only now: store it as a secret "
        "of the team's services (their Stripe API key). Paste the second line into the "
        f'[[teams]] table with name = "{team}" (or add the digest to its list, to keep the '
        "old key working while the services move).",
        file=sys.stderr,
    )
    return 0


def _demo_key_warning(config: GatewayConfig) -> str | None:
    from gateway.demokeys import refuse_demo_keys

    try:
        refuse_demo_keys(config)
    except ConfigError as exc:
        return f"stripe-gateway: warning: serve refuses this file: {exc}"
    return None


def _event_loop_factory(config: GatewayConfig) -> asyncio.AbstractEventLoop:
    if config.server.uvloop:
        try:
            import uvloop

            return uvloop.new_event_loop()
        except ImportError:
            pass
    return asyncio.new_event_loop()


def _serve(args: argparse.Namespace) -> int:
    from gateway.serve.workers import Supervisor, worker_role

    # A SIGHUP or SIGUSR1 that arrives before the socket is open is not lost (nor fatal):
    # it is remembered here and acted on once the gateway listens.
    early: list[int] = []
    for sig in (signal.SIGHUP, signal.SIGUSR1):
        signal.signal(sig, lambda signum, _frame: early.append(signum))
    env_overrides = {}
    if args.host:
        env_overrides["STRIPE_GATEWAY_HOST"] = args.host
    if args.port is not None:
        env_overrides["STRIPE_GATEWAY_PORT"] = str(args.port)

    from gateway.demokeys import ALLOW_ENV, refuse_demo_keys

    allow_demo_keys = args.allow_demo_keys or os.environ.get(ALLOW_ENV) == "1"

    def load() -> GatewayConfig:
        config = load_config(args.config, {**os.environ, **env_overrides})
        if not allow_demo_keys:  # at start and at every reload
            refuse_demo_keys(config)
        return config

    config = load()
    role = worker_role()
    workers = args.workers if args.workers is not None else config.server.workers
    if role is None and workers > 1:
        host = PluginHost(config)  # every plugin validates its settings before any worker
        supervisor = Supervisor(
            config_path=args.config,
            config=config,
            count=workers,
            load=load,
            log_processors=host.log_processors,
            environ={**os.environ, ALLOW_ENV: "1"} if allow_demo_keys else os.environ,
        )
        return supervisor.run()
    if role is not None and not role.tie_to_supervisor():
        return 1  # the supervisor is already gone
    return _serve_one(config, load, early, role)


def _tls(config: GatewayConfig) -> ReloadableTls | None:
    """The public listener's TLS, when ``[server]`` names a certificate and key."""
    from gateway.tls import ReloadableTls, TlsError

    server = config.server
    if server.tls_certificate is None or server.tls_key is None:
        return None
    try:
        return ReloadableTls(server.tls_certificate, server.tls_key)
    except TlsError as exc:  # changed since the config was validated
        key, _, reason = str(exc).partition(": ")
        raise ConfigError(f"server.{key}", reason) from None


def _reload_tls(tls: ReloadableTls, log: Any) -> None:
    """After a config reload: serve the certificate files as they are now; if they do not
    load, keep the running certificate and log why."""
    from gateway.tls import TlsError

    try:
        tls.reload()
    except TlsError as exc:
        key, _, reason = str(exc).partition(": ")
        log.error("tls_reload_failed", path=f"server.{key}", reason=reason)
    else:
        log.info("tls_reloaded", certificate=tls.certificate)


def _serve_one(
    config: GatewayConfig,
    load: Callable[[], GatewayConfig],
    early: list[int],
    role: WorkerRole | None,
) -> int:
    """The gateway in this process (``--workers 1``, or one worker of a supervisor).

    SIGHUP reloads the config; SIGUSR1 has the plugins reopen their log files (the audit
    file, after logrotate renamed it), as nginx does."""
    from gateway.app import create_app, log_started
    from gateway.keys import GENERATIONS, RELOAD, REOPEN_LOGS
    from gateway.logs import route_stdlib_logging
    from gateway.serve.server import serve

    tls = _tls(config)
    app = create_app(config, reload_from=load, reuse_port=role is not None and role.reuse_port)
    route_stdlib_logging(app[GENERATIONS].current.host.log_processors)
    app[GENERATIONS].on_swap.append(lambda g: route_stdlib_logging(g.host.log_processors))
    if tls is not None:  # a reload reads the certificate files again (validated by then)
        app[GENERATIONS].on_swap.append(lambda g: _reload_tls(tls, g.host.log))
    loop = _event_loop_factory(config)
    tasks: set[asyncio.Task[object]] = set()

    def run(coro: Coroutine[Any, Any, object]) -> None:
        task: asyncio.Task[object] = loop.create_task(coro)
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    def hangup() -> None:
        run(app[RELOAD]())

    def reopen() -> None:
        run(app[REOPEN_LOGS]())

    def listening(urls: list[str]) -> None:
        if role is not None:
            role.report_ready()  # the supervisor prints the one "listening on" line
        else:
            print(f"stripe-gateway {__version__} listening on {', '.join(urls)}", file=sys.stderr)
        log_started(app)  # not before: a port in use stops it first
        pending = set(early)
        early.clear()
        if signal.SIGUSR1 in pending:
            reopen()
        if signal.SIGHUP in pending:
            hangup()

    try:
        loop.run_until_complete(
            serve(
                app,
                config.server.host,
                config.server.port,
                drain_timeout=config.server.drain_timeout,
                on_listening=listening,
                reuse_port=role is not None and role.reuse_port,
                on_hangup=hangup,
                on_reopen=reopen,
                ssl_context=tls.context if tls is not None else None,
            )
        )
    except OSError as exc:
        print(
            f"stripe-gateway: cannot listen on {config.server.host}:{config.server.port}: "
            f"{exc.strerror or exc}",
            file=sys.stderr,
        )
        return 1
    except PluginFailure as exc:
        cause = exc.__cause__
        print(
            f"stripe-gateway: plugin {exc.plugin!r} failed at start-up: "
            f"{type(cause).__name__}: {cause}"
            if cause
            else f"stripe-gateway: {exc}",
            file=sys.stderr,
        )
        return 1
    finally:
        loop.close()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "hash-key":
            return _hash_key()
        if args.command == "new-key":
            return _new_key(args.team)
        if args.command == "check-config":
            config, host = _load(args.file)
            print(
                f"{args.file}: OK ({len(config.teams)} teams; plugins: "
                f"{', '.join(host.plugin_names())})"
            )
            warning = _demo_key_warning(config)
            if warning:
                print(warning, file=sys.stderr)
            return 0
        if args.command == "serve":
            return _serve(args)
        if args.command == "webhooks":
            return webhooks_cli.run(args)
        if args.command == "config-reference":
            from gateway import reference

            sys.stdout.write(reference.toml() if args.format == "toml" else reference.markdown())
            return 0
        if args.command in ("sandbox", "demo"):
            from gateway.serve.demo import DemoOptions, run_demo, run_sandbox

            options = _sandbox_options(args)
            try:
                if args.command == "sandbox":
                    run_sandbox(options)
                else:
                    run_demo(
                        DemoOptions(
                            host=args.host,
                            port=args.port,
                            sandbox=options,
                            admin_port=args.admin_port,
                            config=args.config,
                            receiver_port=args.receiver_port,
                        )
                    )
            except OSError as exc:
                print(f"stripe-gateway: cannot listen: {exc.strerror or exc}", file=sys.stderr)
                return 1
            return 0
    except ConfigError as exc:
        print(f"stripe-gateway: config error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    raise AssertionError(args.command)  # pragma: no cover


if __name__ == "__main__":
    sys.exit(main())
