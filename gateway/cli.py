"""The ``stripe-gateway`` command: serve, check-config, hash-key.

Configuration problems end the process with exit code 2 and one line naming the key
path and the reason, never a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import sys
from collections.abc import Sequence

from gateway import __version__
from gateway.config import GatewayConfig, load_config
from gateway.errors import ConfigError
from gateway.host import PluginHost

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

    check = sub.add_parser("check-config", help="validate a config file and exit")
    check.add_argument("file", metavar="FILE")

    sub.add_parser(
        "hash-key",
        help="print the SHA-256 digest of a key read from stdin (for teams[].key_sha256)",
    )
    return parser


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


def _event_loop_factory(config: GatewayConfig) -> asyncio.AbstractEventLoop:
    if config.server.uvloop:
        try:
            import uvloop

            return uvloop.new_event_loop()
        except ImportError:
            pass
    return asyncio.new_event_loop()


def _serve(args: argparse.Namespace) -> int:
    from gateway.app import create_app
    from gateway.server import serve

    env_overrides = {}
    if args.host:
        env_overrides["STRIPE_GATEWAY_HOST"] = args.host
    if args.port is not None:
        env_overrides["STRIPE_GATEWAY_PORT"] = str(args.port)
    config = load_config(args.config, {**os.environ, **env_overrides})
    app = create_app(config)
    loop = _event_loop_factory(config)

    def listening(urls: list[str]) -> None:
        print(f"stripe-gateway {__version__} listening on {', '.join(urls)}", file=sys.stderr)

    try:
        loop.run_until_complete(
            serve(
                app,
                config.server.host,
                config.server.port,
                drain_timeout=config.server.drain_timeout,
                on_listening=listening,
            )
        )
    except OSError as exc:
        print(
            f"stripe-gateway: cannot listen on {config.server.host}:{config.server.port}: "
            f"{exc.strerror or exc}",
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
        if args.command == "check-config":
            config, host = _load(args.file)
            print(
                f"{args.file}: OK ({len(config.teams)} teams; plugins: "
                f"{', '.join(host.plugin_names())})"
            )
            return 0
        if args.command == "serve":
            return _serve(args)
    except ConfigError as exc:
        print(f"stripe-gateway: config error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    raise AssertionError(args.command)  # pragma: no cover


if __name__ == "__main__":
    sys.exit(main())
