"""stripe-gateway: one internal endpoint for the Stripe API.

What a plugin author imports, from ``gateway`` itself (each is loaded on first use, so
importing ``gateway`` stays cheap):

* ``hookimpl``: the marker of hook implementations (the specs: :mod:`gateway.hookspecs`)
* ``RequestContext``: what a request hook gets as ``ctx`` (:mod:`gateway.context`)
* ``StripeErrorResponse``: raise it to answer a request with a Stripe-shaped error
* ``error_response``: build such an answer (an admin route's, say)
* ``Settings``: the base of a plugin's ``settings_model`` (strict, closed, frozen), which
  the host validates ``[plugins.<name>]`` against (:mod:`gateway.settings`)
* ``ConfigError``: raise it from ``gateway_configure`` for a bad setting, with its key path
* ``GatewayConfig``: the validated config (``gateway_configure`` gets it)
* ``TeamConfig``: one team's config (``ctx.team``)
* ``PluginHost``: the plugin host ``gateway_startup`` gets (``host.log``, ``host.config``)
* ``PluginFailure``: what a fail-closed hook's failure becomes
* ``GatewayMetrics``: the app's metrics ``gateway_startup`` gets (``metrics.counter(...)``)
* ``keys``: the typed app keys (:mod:`gateway.keys`)
* ``__version__``: this version

Testing a plugin: :mod:`gateway.testing`.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from gateway import keys
    from gateway.config import GatewayConfig, TeamConfig
    from gateway.context import RequestContext
    from gateway.errors import ConfigError, StripeErrorResponse, error_response
    from gateway.hookspecs import hookimpl
    from gateway.host import PluginFailure, PluginHost
    from gateway.metrics import GatewayMetrics
    from gateway.settings import Settings

__all__ = [
    "ConfigError",
    "GatewayConfig",
    "GatewayMetrics",
    "PluginFailure",
    "PluginHost",
    "RequestContext",
    "Settings",
    "StripeErrorResponse",
    "TeamConfig",
    "__version__",
    "error_response",
    "hookimpl",
    "keys",
]

#: where each public name lives (imported when first asked for)
_LAZY = {
    "ConfigError": "gateway.errors",
    "GatewayConfig": "gateway.config",
    "GatewayMetrics": "gateway.metrics",
    "PluginFailure": "gateway.host",
    "PluginHost": "gateway.host",
    "RequestContext": "gateway.context",
    "Settings": "gateway.settings",
    "StripeErrorResponse": "gateway.errors",
    "TeamConfig": "gateway.config",
    "error_response": "gateway.errors",
    "hookimpl": "gateway.hookspecs",
    "keys": "gateway.keys",
}


def __getattr__(name: str) -> Any:
    where = _LAZY.get(name)
    if where is None:
        raise AttributeError(f"module 'gateway' has no attribute {name!r}")
    module = importlib.import_module(where)
    value = module if where == f"gateway.{name}" else getattr(module, name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})
