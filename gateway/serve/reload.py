"""Config reload under traffic: generations of (config, plugin host, proxy), swapped whole.

An app serves with one :class:`Generation` at a time. Every request looks up the current
generation once, when it arrives, and finishes on it, whatever happens meanwhile.
:meth:`Generations.reload` re-reads the config and builds the next generation beside the
running one (validation, plugin configure and start-up), then swaps it in with a single
assignment: requests that arrive after the swap use the new teams, keys, limits and plugin
settings; requests in flight finish on the old ones. The old generation's plugins are shut
down (``gateway_shutdown``) only after its last request has finished. Nothing is refused
or dropped meanwhile, and a config that does not validate changes nothing.

What a running process cannot change (the listening socket, the HTTP parser's limits, the
event loop, the worker count, the upstream connection pool) is kept from the running
config: :func:`fixed_changes` names such keys, and the reload logs them in a warning.
The upstream client (:class:`~gateway.upstream.UpstreamClient`) is shared by every generation.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, BinaryIO

from aiohttp import web

from gateway.config import GatewayConfig, ServerConfig
from gateway.errors import ConfigError
from gateway.host import PluginFailure, PluginHost
from gateway.keys import METRICS
from gateway.logs import make_error_logger
from gateway.proxy import Proxy

__all__ = ["Generation", "Generations", "ReloadResult", "fixed_changes", "keep_fixed"]

#: what a reload answers: {"reloaded": bool, "error": str | None, ...}; JSON-able
ReloadResult = dict[str, Any]


def fixed_changes(running: GatewayConfig, new: GatewayConfig) -> list[str]:
    """The keys ``new`` changes that a running process cannot: every ``[server]`` key (the
    socket, the parser's limits, the drain timeout, the loop, the workers),
    ``upstream.max_connections`` (the shared connection pool) and the admin listener's
    ``host`` and ``port`` (its token does change)."""
    changed = [
        f"server.{name}"
        for name in ServerConfig.model_fields
        if getattr(running.server, name) != getattr(new.server, name)
    ]
    if running.upstream.max_connections != new.upstream.max_connections:
        changed.append("upstream.max_connections")
    for name in ("host", "port"):  # the admin listener's socket (its token does change)
        if getattr(running.admin, name) != getattr(new.admin, name):
            changed.append(f"admin.{name}")
    return changed


def keep_fixed(running: GatewayConfig, new: GatewayConfig) -> GatewayConfig:
    """``new`` with the keys of :func:`fixed_changes` set back to the running values."""
    upstream = new.upstream.model_copy(update={"max_connections": running.upstream.max_connections})
    admin = new.admin.model_copy(update={"host": running.admin.host, "port": running.admin.port})
    return new.model_copy(update={"server": running.server, "upstream": upstream, "admin": admin})


class Generation:
    """One config and what was built from it: its plugin host and its proxy."""

    __slots__ = ("_closed", "config", "host", "idle", "in_flight", "number", "proxy")

    def __init__(self, config: GatewayConfig, host: PluginHost, proxy: Proxy, number: int) -> None:
        self.config = config
        self.host = host
        self.proxy = proxy
        #: 1 for the config the process started with, then one more per reload
        self.number = number
        #: requests that started on this generation and have not finished
        self.in_flight = 0
        #: set once retired (swapped out) and no request is in flight
        self.idle: asyncio.Event | None = None
        self._closed = False

    def finished(self) -> None:
        """One request that started on this generation (``in_flight += 1``) is over."""
        self.in_flight -= 1
        if self.in_flight == 0 and self.idle is not None:
            self.idle.set()

    async def shutdown(self, app: web.Application) -> None:
        """Run the plugins' ``gateway_shutdown`` (once)."""
        if self._closed:
            return
        self._closed = True
        await self.host.each("gateway_shutdown", app=app)


class Generations:
    """The app's current generation, the route handler that serves with it, and reload.

    ``load`` reads and validates the config anew (the CLI re-reads its file); without it
    :meth:`reload` answers an error. It is the app's one mutable holder of what it serves
    with (``app[gateway.keys.GENERATIONS].current``). ``on_swap`` callbacks run after each
    swap (the CLI re-routes stdlib logging through the new redaction processors).
    """

    def __init__(
        self,
        app: web.Application,
        first: Generation,
        *,
        load: Callable[[], GatewayConfig] | None = None,
        error_stream: BinaryIO | None = None,
    ) -> None:
        self.app = app
        #: the generation new requests start on (one attribute read per request)
        self.current = first
        self.on_swap: list[Callable[[Generation], None]] = []
        self._load = load
        self._error_stream = error_stream
        self._lock = asyncio.Lock()
        self._retiring: dict[Generation, asyncio.Task[None]] = {}
        self._closing = False

    # ----------------------------------------------------------------- requests

    @property
    def in_flight(self) -> int:
        """Requests being served now, on every generation still open."""
        return self.current.in_flight + sum(g.in_flight for g in self._retiring)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        """The route handler: serve ``request`` with the generation current on arrival."""
        generation = self.current
        generation.in_flight += 1
        try:
            return await generation.proxy.handle(request)
        finally:
            generation.finished()

    # ----------------------------------------------------------------- lifecycle

    async def start(self) -> None:
        """Start the first generation's plugins (``gateway_startup``, fails closed)."""
        await self._start(self.current.host)

    async def _start(self, host: PluginHost) -> None:
        """``gateway_startup`` on ``host``'s plugins, then their admin and public routes."""
        await host.each("gateway_startup", app=self.app, host=host, metrics=self.app[METRICS])
        host.build_admin_router()
        host.build_public_router()

    async def close(self) -> None:
        """At stop, after the drain: shut down every generation still open, the retired
        ones first (their requests had the drain to finish too)."""
        self._closing = True
        async with self._lock:  # a reload under way completes first
            for generation, task in list(self._retiring.items()):
                if generation.idle is not None:
                    generation.idle.set()  # stop waiting for its requests: the drain is over
                await asyncio.gather(task, return_exceptions=True)
                await generation.shutdown(self.app)
            self._retiring.clear()
            await self.current.shutdown(self.app)

    async def reopen_logs(self) -> None:
        """Have the current generation's plugins reopen their log files
        (``gateway_reopen_logs``, logged and skipped on failure); the CLI calls it on
        SIGUSR1. Retired generations still draining keep writing where they were."""
        await self.current.host.each("gateway_reopen_logs", app=self.app)

    def _retire(self, generation: Generation) -> None:
        """Shut ``generation`` down once its last request has finished."""
        generation.idle = asyncio.Event()
        if generation.in_flight == 0:
            generation.idle.set()
        task = asyncio.get_running_loop().create_task(self._shut_down_when_idle(generation))
        self._retiring[generation] = task

    async def _shut_down_when_idle(self, generation: Generation) -> None:
        assert generation.idle is not None
        await generation.idle.wait()
        await generation.shutdown(self.app)
        self._retiring.pop(generation, None)
        self.current.host.log.info("generation_retired", generation=generation.number)

    # ----------------------------------------------------------------- reload

    async def reload(self) -> ReloadResult:
        """Re-read the config and swap in a new generation built from it.

        Returns ``{"reloaded": True, "error": None, "generation": n, "not_reloaded": [...]}``
        or ``{"reloaded": False, "error": "key.path: reason", ...}`` (the running config
        stays). Logs ``config_reloaded`` or ``config_reload_failed``. Reloads run one at
        a time; never raises.
        """
        async with self._lock:
            running = self.current
            log = running.host.log
            if self._closing:
                return {"reloaded": False, "error": "the gateway is stopping"}
            if self._load is None:
                reason = "this gateway was not started from a config file"
                log.error("config_reload_failed", path="", reason=reason)
                return {"reloaded": False, "error": reason}
            try:
                config = self._load()
                ignored = fixed_changes(running.config, config)
                if ignored:
                    config = keep_fixed(running.config, config)
                host = PluginHost(config)
            except ConfigError as exc:
                log.error("config_reload_failed", path=exc.path, reason=exc.reason)
                return {"reloaded": False, "error": str(exc)}
            except Exception as exc:  # a plugin's import or constructor, say
                reason = f"{type(exc).__name__}: {exc}"
                log.error("config_reload_failed", path="", reason=reason)
                return {"reloaded": False, "error": reason}
            return await self._swap(running, config, host, ignored)

    async def _swap(
        self, running: Generation, config: GatewayConfig, host: PluginHost, ignored: list[str]
    ) -> ReloadResult:
        host.log = make_error_logger(self._error_stream, extra_processors=host.log_processors)
        proxy = Proxy(config=config, host=host)
        proxy.session = running.proxy.session
        proxy.slots = running.proxy.slots  # the pool it guards is shared too
        new = Generation(config, host, proxy, running.number + 1)
        if ignored:
            host.log.warning(
                "config_keys_not_reloaded",
                keys=ignored,
                reason="they cannot change while the gateway runs; restart to apply them",
            )
        try:
            await self._start(host)
        except PluginFailure as exc:
            await new.shutdown(self.app)  # what the plugins that did start opened
            cause = exc.__cause__
            reason = (
                f"gateway_startup failed: {type(cause).__name__}: {cause}" if cause else str(exc)
            )
            running.host.log.error(
                "config_reload_failed", path=f"plugins.{exc.plugin}", reason=reason
            )
            return {"reloaded": False, "error": f"plugins.{exc.plugin}: {reason}"}
        await host.carry_over(running.host)
        self.current = new  # the swap: requests arriving from now on use `new`
        for callback in self.on_swap:
            callback(new)
        host.log.info(
            "config_reloaded",
            generation=new.number,
            source=config.source,
            plugins=host.plugin_names(),
            teams=[t.name for t in config.teams],
            in_flight_on_previous=running.in_flight,
        )
        self._retire(running)
        return {"reloaded": True, "error": None, "generation": new.number, "not_reloaded": ignored}
