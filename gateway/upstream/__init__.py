"""The upstream client: pooled HTTP/1.1 keep-alive connections to Stripe.

What the forwarding path needs of aiohttp's ``ClientSession``, at a fraction of its cost
(no ``ClientRequest``/``ClientResponse`` machinery, trace signals, per-request timers or
connector bookkeeping): one ``asyncio.Protocol`` per connection, the request written as one
buffer, the answer parsed by aiohttp's own (C) response parser into aiohttp's
``StreamReader``, so the bytes that reach the wire, the parse and the body's framing are
aiohttp's. Failures are raised as the aiohttp exceptions the session raised, so the proxy
reads them as before (:func:`gateway.proxy.failure_kind`).

A connection goes back to the pool only when its answer was read to the end, keep-alive
holds, nothing was received after the answer and the request was sent whole; anything
else closes it. Data arriving on an idle connection closes it too.

The modules, in the order a request meets them: ``client`` (the pool, addresses,
connecting, the tracers), ``request`` (the head and body as written), ``connection`` (the
protocol: the answer's parse, the read timer, pooling or closing), ``progress`` (how
much of a request the upstream took, for the time limits) and ``origin`` (an upstream's
scheme, host and port).
"""

from __future__ import annotations

from gateway.upstream.client import DNS_TTL as DNS_TTL
from gateway.upstream.client import HAPPY_EYEBALLS_DELAY as HAPPY_EYEBALLS_DELAY
from gateway.upstream.client import KEEPALIVE_TIMEOUT as KEEPALIVE_TIMEOUT
from gateway.upstream.client import AttemptTracer, UpstreamClient
from gateway.upstream.connection import UpstreamResponse
from gateway.upstream.origin import Origin
from gateway.upstream.progress import WriteTimeoutError

__all__ = ["AttemptTracer", "Origin", "UpstreamClient", "UpstreamResponse", "WriteTimeoutError"]
