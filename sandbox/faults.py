"""Faults on demand: latency, 500s, 429s, connection resets and truncated bodies.

Set at start-up by ``stripe-gateway sandbox`` flags and changed at run time through the
control app (its own port, never forwarded by the gateway): ``GET /faults`` shows the
current settings, ``POST /faults`` with a JSON object changes some of them,
``DELETE /faults`` turns every fault off, ``POST /reset`` forgets all sandbox state.
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass, fields
from typing import Any

from aiohttp import web

__all__ = ["Faults", "control_app"]


@dataclass
class Faults:
    #: fixed latency added to every API answer, in milliseconds
    latency_ms: float = 0.0
    #: if above latency_ms: latency is drawn uniformly from [latency_ms, latency_max_ms]
    latency_max_ms: float = 0.0
    #: fraction of requests answered 500 api_error with Stripe-Should-Retry: true
    error_rate: float = 0.0
    #: fraction answered 429 rate_limit
    rate_limit_rate: float = 0.0
    #: fraction whose connection is reset before any response
    reset_rate: float = 0.0
    #: fraction whose body is cut short (Content-Length promises more, then close)
    truncate_rate: float = 0.0

    def validate(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if not isinstance(value, int | float) or value < 0:
                raise ValueError(f"{f.name} must be a number >= 0")
            if f.name.endswith("_rate") and value > 1:
                raise ValueError(f"{f.name} must be between 0 and 1")

    def update(self, changes: dict[str, Any]) -> None:
        known = {f.name for f in fields(self)}
        unknown = set(changes) - known
        if unknown:
            raise ValueError(f"unknown fault setting(s): {', '.join(sorted(unknown))}")
        trial = Faults(**{**asdict(self), **changes})
        trial.validate()
        for key, value in changes.items():
            setattr(self, key, float(value))

    def latency(self, rng: random.Random) -> float:
        """Seconds to wait before answering."""
        low = self.latency_ms
        high = max(self.latency_max_ms, low)
        ms = rng.uniform(low, high) if high > low else low
        return ms / 1000.0

    def draw(self, rng: random.Random) -> str | None:
        """Which fault, if any, hits this request: reset, error, rate_limit or truncate."""
        if not (self.reset_rate or self.error_rate or self.rate_limit_rate or self.truncate_rate):
            return None
        x = rng.random()
        for name, rate in (
            ("reset", self.reset_rate),
            ("error", self.error_rate),
            ("rate_limit", self.rate_limit_rate),
            ("truncate", self.truncate_rate),
        ):
            if x < rate:
                return name
            x -= rate
        return None


def control_app(faults: Faults, reset_state: Any) -> web.Application:
    """The control endpoint: change faults and reset state at run time."""

    async def show(request: web.Request) -> web.Response:
        return web.json_response(asdict(faults))

    async def change(request: web.Request) -> web.Response:
        try:
            changes = await request.json()
            if not isinstance(changes, dict):
                raise ValueError("body must be a JSON object")
            faults.update(changes)
        except ValueError as exc:
            return web.json_response({"error": str(exc)}, status=400)
        return web.json_response(asdict(faults))

    async def clear(request: web.Request) -> web.Response:
        faults.update({f.name: 0.0 for f in fields(faults)})
        return web.json_response(asdict(faults))

    async def reset(request: web.Request) -> web.Response:
        reset_state()
        return web.json_response({"reset": True})

    app = web.Application()
    app.router.add_get("/faults", show)
    app.router.add_post("/faults", change)
    app.router.add_delete("/faults", clear)
    app.router.add_post("/reset", reset)
    return app
