"""``Expect: 100-continue``: the interim answer that invites a request's body.

aiohttp's own expect handler sends ``100 Continue`` as soon as the headers are parsed,
before any handler has looked at them. On the proxy's route the gateway invites the body
only once the client's key is accepted: :func:`continue_later` (the route's expect
handler) notes the expectation, and :meth:`gateway.proxy.Proxy.handle` calls
:func:`send_continue` after ``gateway_authenticate``. A request refused before that (no
key or a bad one, a path the gateway does not forward, a ``Content-Length`` over the
limit) gets its final answer without the body ever being asked for, and the connection
closes after it (:func:`close_if_uninvited`): the client may or may not send the body
anyway, so the connection cannot carry another request (RFC 9110 §10.1.1).

Any other expectation goes through to the proxy, which answers it with a Stripe-shaped 417
and an audit line (aiohttp's own 417 is plain text).
"""

from __future__ import annotations

import aiohttp
from aiohttp import web

__all__ = ["close_if_uninvited", "continue_at_once", "continue_later", "send_continue"]

_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
#: on a request whose ``100 Continue`` is still to be sent
_WAITING: web.RequestKey[bool] = web.RequestKey("expect_continue_waiting")


def _expects_continue(request: web.Request) -> bool:
    return request.version == aiohttp.HttpVersion11 and all(
        value.strip().lower() == "100-continue" for value in request.headers.getall("Expect")
    )


async def _write_continue(request: web.Request) -> None:
    await request.writer.write(_CONTINUE)
    request.writer.output_size = 0  # the response itself has not started


async def continue_at_once(request: web.Request) -> None:
    """An expect handler that answers ``100-continue`` at once, as aiohttp does (for a
    route that checks nothing before reading the body)."""
    if _expects_continue(request):
        await _write_continue(request)


async def continue_later(request: web.Request) -> None:
    """An expect handler that only notes ``100-continue``: :func:`send_continue` answers
    it when the handler is ready for the body."""
    if _expects_continue(request):
        request[_WAITING] = True


async def send_continue(request: web.Request) -> None:
    """Send the ``100 Continue`` :func:`continue_later` noted, if it is not sent yet."""
    if request.get(_WAITING):
        request[_WAITING] = False
        await _write_continue(request)


def close_if_uninvited(request: web.Request, response: web.StreamResponse) -> None:
    """Close the connection after ``response`` when the request's body was announced
    (``100-continue``) but never invited: whether it follows is the client's guess."""
    if request.get(_WAITING) and request.body_exists:
        response.force_close()
