"""The plugin host: builds an app's plugin manager and calls request hooks the async way.

pluggy calls implementations synchronously and would take an un-awaited coroutine as an
answer, so request hooks never go through ``pm.hook.<name>(...)``. Instead
:meth:`PluginHost.first` and :meth:`PluginHost.each` walk the implementations in pluggy's
own call order, await what needs awaiting, and apply each hook's failure policy, which
its spec declares (``@fails_closed`` in :mod:`gateway.hookspecs`; callers never choose).

They run on every request, so they are built to cost little: the implementations of each
hook are snapshotted once (:meth:`PluginHost.freeze`), and callers skip a hook nobody
implements (``hook in host.implemented``) without calling into the host at all. Plain
functions are called directly; only what an implementation returns as an awaitable (an
``async def`` one's coroutine) is awaited.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from functools import partial
from importlib.metadata import entry_points
from typing import Any

import pluggy
import structlog
from aiohttp import web
from pydantic import BaseModel

from gateway import hookspecs
from gateway.config import GatewayConfig
from gateway.errors import ConfigError, StripeErrorResponse
from gateway.public import build_public_router
from gateway.settings import validate_settings

__all__ = ["DEFAULT_PLUGINS", "ENTRY_POINT_GROUP", "PluginFailure", "PluginHost", "load_object"]

#: Built-in plugins, in registration order: name -> "module:attribute".
DEFAULT_PLUGINS: tuple[tuple[str, str], ...] = (
    ("redaction", "plugins.redaction:RedactionPlugin"),
    ("idempotency", "plugins.idempotency:IdempotencyPlugin"),
    ("rate_limit", "plugins.rate_limit:RateLimitPlugin"),
    ("cache", "plugins.cache:CachePlugin"),
    # after the cache, so its gateway_request runs first, also on the cache's hits
    ("file_urls", "plugins.file_urls:FileUrlsPlugin"),
    ("audit", "plugins.audit:AuditPlugin"),
    ("auth", "plugins.auth:AuthPlugin"),
    ("metrics", "plugins.metrics:MetricsPlugin"),
    ("webhooks", "plugins.webhooks:WebhooksPlugin"),
    ("console", "plugins.console:ConsolePlugin"),
)

ENTRY_POINT_GROUP = "stripe_gateway"

REQUEST_HOOKS = (
    "gateway_authenticate",
    "gateway_request",
    "gateway_upstream_headers",
    "gateway_upstream_response",
    "gateway_response_body",
    "gateway_response_headers",
    "gateway_request_finished",
    "gateway_audit_fields",
)


class PluginFailure(Exception):
    """A plugin raised in a hook that fails closed."""

    def __init__(self, plugin: str, hook: str) -> None:
        super().__init__(f"plugin {plugin!r} failed in {hook}")
        self.plugin = plugin
        self.hook = hook


@dataclass(frozen=True, slots=True)
class _Impl:
    plugin: str
    function: Callable[..., Any]
    argnames: tuple[str, ...]
    #: the function takes every argument of the spec, so it can be called with all of them
    takes_all: bool
    #: the positions, in the spec's argument order, of the arguments the function takes
    picks: tuple[int, ...] = ()
    #: it takes exactly the spec's arguments in the spec's order: ``function(*args)``
    in_order: bool = False

    def call(self, kwargs: dict[str, Any]) -> Any:
        if self.takes_all:
            return self.function(**kwargs)
        return self.function(**{name: kwargs[name] for name in self.argnames})

    def call_args(self, args: tuple[Any, ...]) -> Any:
        """Call with the spec's arguments given by position (in the spec's order)."""
        if self.in_order:
            return self.function(*args)
        return self.function(*[args[i] for i in self.picks])


def load_object(spec: str) -> object:
    """Import ``"package.module"`` or ``"package.module:attribute"``."""
    module_name, _, attr = spec.partition(":")
    module = importlib.import_module(module_name)
    obj: object = module
    for part in attr.split(".") if attr else ():
        obj = getattr(obj, part)
    return obj


def _position(impls: tuple[_Impl, ...], impl: _Impl, start: int) -> int:
    """Where ``impl`` (the very object) is in ``impls``, from ``start`` on."""
    return next(i for i in range(start, len(impls)) if impls[i] is impl)


def _identity(obj: object) -> object:
    return obj


def _instantiate(obj: object) -> object:
    """Classes are instantiated with no arguments; modules and instances are used as is."""
    return obj() if inspect.isclass(obj) else obj


class PluginHost:
    """One app's plugin manager and the helpers that call its request hooks."""

    def __init__(
        self,
        config: GatewayConfig,
        *,
        entry_points_enabled: bool = True,
        plugins: Sequence[tuple[str, object]] = (),
    ) -> None:
        """Register the built-in plugins, the entry points' and ``[plugins] load``'s, then
        ``plugins`` (name, plugin object or class; one named like a built-in replaces it:
        for tests, see :mod:`gateway.testing`); check the hook names, configure every
        plugin and snapshot the hooks."""
        self.config = config
        self.log = structlog.get_logger("gateway")  # replaced by the app's logger
        self.pm = pluggy.PluginManager(hookspecs.PROJECT)
        self.pm.add_hookspecs(hookspecs)
        self._impls: dict[str, tuple[_Impl, ...]] = {}
        #: each snapshotted hook's argument names, in its spec's order
        self._spec_args: dict[str, tuple[str, ...]] = {}
        #: the failure policy of each snapshotted hook, from its spec
        self._fails_closed: dict[str, bool] = {}
        #: the plugins' admin routes (built by :meth:`build_admin_router`, after start-up)
        self.admin_router: web.UrlDispatcher | None = None
        #: the plugins' public routes (:meth:`build_public_router`); ``None`` when none
        self.public_router: web.UrlDispatcher | None = None
        #: the paths :attr:`public_router` serves (a request on any other skips it)
        self.public_paths: frozenset[str] = frozenset()
        #: the hooks that have at least one implementation (set by :meth:`freeze`)
        self.implemented: frozenset[str] = frozenset()
        self._configured_names: set[str] = set()
        self._register_all(entry_points_enabled, plugins)
        self._configure()
        #: processors every log pipeline runs in front of its renderer (redaction)
        self.log_processors: tuple[Any, ...] = self._collect_log_processors()
        self.freeze()

    # ----------------------------------------------------------------- building

    def _register(self, name: str, loader: Callable[[], object], where: str) -> None:
        if name in self.config.plugins.disable:
            return
        if self.pm.has_plugin(name):
            raise ConfigError(where, f"a plugin named {name!r} is already registered")
        try:
            plugin = _instantiate(loader())
        except ConfigError:
            raise
        except Exception as exc:
            raise ConfigError(where, f"cannot load plugin {name!r}: {exc!r}") from None
        try:
            self.pm.register(plugin, name=name)
        except pluggy.PluginValidationError as exc:
            raise ConfigError(where, f"plugin {name!r}: {exc}") from None
        except ValueError as exc:  # the same object under a second name
            raise ConfigError(where, f"plugin {name!r}: {exc}") from None
        for hook in REQUEST_HOOKS:
            for impl in getattr(self.pm.hook, hook).get_hookimpls():
                if impl.plugin_name == name and (impl.wrapper or impl.hookwrapper):
                    raise ConfigError(
                        where,
                        f"plugin {name!r}: {hook} is a hook wrapper; request hooks do not "
                        "support wrappers (see gateway/hookspecs.py)",
                    )

    def _register_all(
        self, entry_points_enabled: bool, plugins: Sequence[tuple[str, object]]
    ) -> None:
        given = {name for name, _ in plugins}
        for name, spec in DEFAULT_PLUGINS:
            if name not in given:  # a plugin given by name replaces the built-in
                self._register(name, partial(load_object, spec), "plugins")
        if entry_points_enabled:
            for ep in entry_points(group=ENTRY_POINT_GROUP):
                self._register(ep.name, ep.load, f"entry point {ep.value}")
        for i, spec in enumerate(self.config.plugins.load):
            where = f"plugins.load[{i}]"
            try:
                obj = load_object(spec)
            except (ImportError, AttributeError) as exc:
                raise ConfigError(where, f"cannot import {spec!r}: {exc}") from None
            name = str(getattr(obj, "name", None) or spec.partition(":")[0])
            self._configured_names.add(name)
            self._register(name, partial(_identity, obj), where)
        for name, obj in plugins:
            self._configured_names.add(name)
            self._register(name, partial(_identity, obj), "plugins")
        try:
            self.pm.check_pending()
        except pluggy.PluginValidationError as exc:
            name = self.pm.get_name(exc.plugin) or repr(exc.plugin)
            raise ConfigError("plugins", f"plugin {name!r}: {exc}") from None
        known = {name for name, _ in self.pm.list_name_plugin()}
        for i, name in enumerate(self.config.plugins.disable):
            if name not in known and not self._is_loadable_name(name):
                raise ConfigError(f"plugins.disable[{i}]", f"no plugin named {name!r}")
        for name in self.config.plugins.tables():
            if name not in known:
                state = "is disabled" if name in self.config.plugins.disable else "is not loaded"
                raise ConfigError(f"plugins.{name}", f"plugin {name!r} {state}")

    def _is_loadable_name(self, name: str) -> bool:
        builtin = {n for n, _ in DEFAULT_PLUGINS}
        eps = {ep.name for ep in entry_points(group=ENTRY_POINT_GROUP)}
        return name in builtin or name in eps or name in self._configured_names

    def _collect_log_processors(self) -> tuple[Any, ...]:
        out: list[Any] = []
        for impl in reversed(self.pm.hook.gateway_log_processors.get_hookimpls()):
            kwargs = {"config": self.config}
            try:
                got: Any = impl.function(*(kwargs[a] for a in impl.argnames))
            except ConfigError as exc:
                raise ConfigError(f"plugins.{impl.plugin_name}", exc.reason) from None
            except Exception as exc:
                raise ConfigError(
                    f"plugins.{impl.plugin_name}",
                    f"plugin failed to give its log processors: {type(exc).__name__}: {exc}",
                ) from None
            if got:
                out.extend(list(got))
        return tuple(out)

    def _settings(self) -> dict[str, object]:
        """Each plugin's ``[plugins.<name>]`` table, validated against the plugin's declared
        ``settings_model`` (a pydantic model class), or the raw table when it declares none."""
        tables = self.config.plugins.tables()
        out: dict[str, object] = {}
        for name, plugin in self.pm.list_name_plugin():
            table = tables.get(name, {})
            model = getattr(plugin, "settings_model", None)
            if model is None:
                out[name] = table
            elif inspect.isclass(model) and issubclass(model, BaseModel):
                out[name] = validate_settings(
                    model, table, prefix=f"plugins.{name}", context={"config": self.config}
                )
            else:
                raise ConfigError(
                    f"plugins.{name}", "plugin's settings_model is not a pydantic model class"
                )
        return out

    def _configure(self) -> None:
        settings_by_plugin = self._settings()
        for impl in reversed(self.pm.hook.gateway_configure.get_hookimpls()):
            settings = settings_by_plugin.get(impl.plugin_name, {})
            kwargs = {"config": self.config, "settings": settings}
            prefix = f"plugins.{impl.plugin_name}"
            try:
                impl.function(*(kwargs[a] for a in impl.argnames))
            except ConfigError as exc:
                raise ConfigError(
                    f"{prefix}.{exc.path}" if exc.path else prefix, exc.reason
                ) from None
            except Exception as exc:
                raise ConfigError(
                    prefix, f"plugin failed to configure: {type(exc).__name__}: {exc}"
                ) from None

    def freeze(self) -> None:
        """Snapshot every request hook's implementations in call order, and its policy."""
        for hook in (
            *REQUEST_HOOKS,
            "gateway_audit_line",
            "gateway_startup",
            "gateway_carry_over",
            "gateway_admin_routes",
            "gateway_admin_team",
            "gateway_public_routes",
            "gateway_objects_changed",
            "gateway_audit_event",
            "gateway_reopen_logs",
            "gateway_shutdown",
        ):
            caller: pluggy.HookCaller = getattr(self.pm.hook, hook)
            assert caller.spec is not None, f"{hook} has a spec in gateway.hookspecs"
            spec_order = tuple(caller.spec.argnames)
            self._spec_args[hook] = spec_order
            self._fails_closed[hook] = hookspecs.fails_closed_hook(hook)
            self._impls[hook] = tuple(
                _Impl(
                    i.plugin_name,
                    i.function,
                    tuple(i.argnames),
                    set(i.argnames) == set(spec_order),
                    picks=tuple(spec_order.index(a) for a in i.argnames),
                    in_order=tuple(i.argnames) == spec_order,
                )
                for i in reversed(caller.get_hookimpls())
            )
        self.implemented = frozenset(hook for hook, impls in self._impls.items() if impls)

    def plugin_names(self) -> list[str]:
        return [name for name, _ in self.pm.list_name_plugin()]

    # ----------------------------------------------------------------- calling

    def _args(self, hook: str, kwargs: dict[str, Any]) -> tuple[Any, ...]:
        return tuple(kwargs[name] for name in self._spec_args[hook])

    async def first(self, hook: str, **kwargs: Any) -> web.StreamResponse | None:
        """Call ``hook`` in order until an implementation answers (non-``None``).

        ``kwargs`` are all the spec's arguments. (The request path calls
        :meth:`first_now`, which awaits only what needs awaiting.)
        """
        answer = self._first_from(hook, 0, self._args(hook, kwargs))
        if answer is None or isinstance(answer, web.StreamResponse):
            return answer
        return await answer

    def first_now(
        self, hook: str, *args: Any
    ) -> web.StreamResponse | Awaitable[web.StreamResponse | None] | None:
        """:meth:`first` without a coroutine of its own: the spec's arguments by position,
        in its order. Calls the implementations in order while they answer at once, and
        returns the answer (a response, or ``None`` when none answered); at the first
        that returns an awaitable, returns an awaitable of the rest of the walk instead
        (the caller awaits it)."""
        return self._first_from(hook, 0, args)

    def _first_from(
        self, hook: str, start: int, args: tuple[Any, ...]
    ) -> web.StreamResponse | Awaitable[web.StreamResponse | None] | None:
        impls = self._impls[hook]
        # (a plain loop over the tuple: no range object on every request; the position
        # is only needed when an implementation awaits)
        for impl in impls[start:] if start else impls:
            try:
                result = impl.function(*args) if impl.in_order else impl.call_args(args)
            except StripeErrorResponse:
                raise
            except Exception as exc:
                self._failed(impl, hook, self._fails_closed[hook], exc)
                continue
            if result is None:
                continue
            if isinstance(result, web.StreamResponse):
                return result
            if inspect.isawaitable(result):
                return self._first_rest(hook, _position(impls, impl, start), result, args)
            self._bad_answer(impl, hook, result)
        return None

    async def _first_rest(
        self, hook: str, index: int, pending: Awaitable[Any], args: tuple[Any, ...]
    ) -> web.StreamResponse | None:
        """Await implementation ``index``'s answer, then walk on from the next one."""
        impl = self._impls[hook][index]
        try:
            result = await pending
        except StripeErrorResponse:
            raise
        except Exception as exc:
            self._failed(impl, hook, self._fails_closed[hook], exc)
            result = None
        if result is not None:
            if isinstance(result, web.StreamResponse):
                return result
            self._bad_answer(impl, hook, result)
        answer = self._first_from(hook, index + 1, args)
        if answer is None or isinstance(answer, web.StreamResponse):
            return answer
        return await answer

    def _bad_answer(self, impl: _Impl, hook: str, result: object) -> None:
        self.log.error(
            "plugin_bad_answer", plugin=impl.plugin, hook=hook, answer=type(result).__name__
        )
        if self._fails_closed[hook]:
            raise PluginFailure(impl.plugin, hook)

    async def each(self, hook: str, **kwargs: Any) -> None:
        """Call every implementation of ``hook`` in order, awaiting each.

        ``kwargs`` are all the spec's arguments. (The request path calls
        :meth:`each_now`, which awaits only what needs awaiting.)
        """
        rest = self._each_from(hook, 0, self._args(hook, kwargs))
        if rest is not None:
            await rest

    def each_now(self, hook: str, *args: Any) -> Awaitable[None] | None:
        """:meth:`each` without a coroutine of its own: the spec's arguments by position,
        in its order. ``None`` when every implementation ran at once; otherwise an
        awaitable of the rest of the walk, from the first that returned an awaitable
        (the caller awaits it)."""
        return self._each_from(hook, 0, args)

    def _each_from(self, hook: str, start: int, args: tuple[Any, ...]) -> Awaitable[None] | None:
        impls = self._impls[hook]
        for impl in impls[start:] if start else impls:
            try:
                result = impl.function(*args) if impl.in_order else impl.call_args(args)
            except StripeErrorResponse as exc:
                self._error_answer(impl, hook, exc)
                continue
            except Exception as exc:
                self._failed(impl, hook, self._fails_closed[hook], exc)
                continue
            if result is not None and inspect.isawaitable(result):
                return self._each_rest(hook, _position(impls, impl, start), result, args)
        return None

    async def _each_rest(
        self, hook: str, index: int, pending: Awaitable[Any], args: tuple[Any, ...]
    ) -> None:
        impl = self._impls[hook][index]
        try:
            await pending
        except StripeErrorResponse as exc:
            self._error_answer(impl, hook, exc)
        except Exception as exc:
            self._failed(impl, hook, self._fails_closed[hook], exc)
        rest = self._each_from(hook, index + 1, args)
        if rest is not None:
            await rest

    def _error_answer(self, impl: _Impl, hook: str, exc: StripeErrorResponse) -> None:
        """A plugin raised StripeErrorResponse in a hook that calls every implementation:
        raised on where the hook fails closed, else logged and ignored."""
        if self._fails_closed[hook]:
            raise exc
        self.log.error("plugin_error_answer_ignored", plugin=impl.plugin, hook=hook)

    async def rewrite(self, hook: str, body: bytes, **kwargs: Any) -> bytes:
        """Pass ``body`` through every implementation of ``hook`` in order, each getting
        the body the one before returned (``None``: unchanged); the last body.

        ``kwargs`` are the spec's other arguments.
        """
        fail_closed = self._fails_closed[hook]
        for impl in self._impls[hook]:
            try:
                result = impl.call({**kwargs, "body": body})
                if result is not None and inspect.isawaitable(result):
                    result = await result
            except Exception as exc:
                self._failed(impl, hook, fail_closed, exc)
                continue
            if result is None:
                continue
            if isinstance(result, bytes | bytearray | memoryview):
                body = bytes(result)
            else:
                self.log.error(
                    "plugin_bad_answer", plugin=impl.plugin, hook=hook, answer=type(result).__name__
                )
        return body

    async def carry_over(self, previous: PluginHost) -> None:
        """Call ``gateway_carry_over`` on each plugin that has a namesake in ``previous``
        (the host this one replaces on a reload), passing it that namesake."""
        for impl in self._impls["gateway_carry_over"]:
            prior = previous.pm.get_plugin(impl.plugin)
            if prior is None:
                continue
            try:
                result = impl.call({"previous": prior})
                if result is not None and inspect.isawaitable(result):
                    await result
            except Exception as exc:
                self._failed(
                    impl, "gateway_carry_over", self._fails_closed["gateway_carry_over"], exc
                )

    def fields(self, hook: str, **kwargs: Any) -> dict[str, Any]:
        """The dicts the (synchronous) implementations of ``hook`` return, merged in hook
        order (an earlier plugin's field wins); for ``gateway_audit_fields`` and
        ``gateway_admin_team``. A failure is logged and skipped."""
        return self.fields_now(hook, *self._args(hook, kwargs))

    def fields_now(self, hook: str, *args: Any) -> dict[str, Any]:
        """:meth:`fields` with the spec's arguments by position, in its order (the audit
        line's call, once per request: no keyword dict to unpack)."""
        out: dict[str, Any] = {}
        for impl in self._impls[hook]:
            try:
                got = impl.function(*args) if impl.in_order else impl.call_args(args)
                if got:
                    if not out:  # the first contribution: taken as is (a copy)
                        out = dict(got)
                        continue
                    for name, value in got.items():
                        out.setdefault(name, value)
            except Exception as exc:
                self._failed(impl, hook, self._fails_closed[hook], exc)
        return out

    def notify(self, hook: str, **kwargs: Any) -> None:
        """Call every (synchronous) implementation of ``hook`` in order, for hooks whose
        answers are ignored (``gateway_audit_line``). A failure is logged and skipped."""
        for impl in self._impls[hook]:
            try:
                impl.function(**kwargs) if impl.takes_all else impl.call(kwargs)
            except Exception as exc:
                self._failed(impl, hook, self._fails_closed[hook], exc)

    def build_admin_router(self) -> web.UrlDispatcher:
        """Collect the plugins' admin routes (``gateway_admin_routes``) into a router of
        their own, kept as :attr:`admin_router`; a plugin that fails or gives something
        that is not a route raises :class:`PluginFailure` (fails closed)."""
        router = web.UrlDispatcher()
        for impl in self._impls["gateway_admin_routes"]:
            try:
                got = impl.call({})
                router.add_routes(list(got or ()))
            except Exception as exc:
                self._failed(
                    impl, "gateway_admin_routes", self._fails_closed["gateway_admin_routes"], exc
                )
        router.freeze()
        self.admin_router = router
        return router

    def build_public_router(self) -> web.UrlDispatcher | None:
        """Collect the plugins' public routes (``gateway_public_routes``) into
        :attr:`public_router` (``None`` when no plugin has one); a plugin that fails or
        gives a reserved path raises :class:`PluginFailure` (fails closed)."""
        defs: list[web.AbstractRouteDef] = []
        for impl in self._impls["gateway_public_routes"]:
            try:
                got = list(impl.call({}) or ())
                # checks this plugin's routes, and that they take no other plugin's
                build_public_router([*defs, *got], self.log)
            except Exception as exc:
                self._failed(
                    impl, "gateway_public_routes", self._fails_closed["gateway_public_routes"], exc
                )
                continue
            defs.extend(got)
        self.public_router = build_public_router(defs, self.log) if defs else None
        self.public_paths = frozenset(d.path for d in defs if isinstance(d, web.RouteDef))
        return self.public_router

    def _failed(self, impl: _Impl, hook: str, fail_closed: bool, exc: Exception) -> None:
        """Apply the failure policy to ``exc`` (call it from the ``except`` block)."""
        if fail_closed:
            raise PluginFailure(impl.plugin, hook) from exc
        self.log.exception("plugin_failed", plugin=impl.plugin, hook=hook)

    def has(self, hook: str) -> bool:
        return bool(self._impls[hook])

    def impls(self, hook: str) -> Iterable[_Impl]:
        return self._impls[hook]
