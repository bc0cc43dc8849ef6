"""A small Stripe stand-in for the tests: records what it received, answers like Stripe.

It is a real aiohttp server on a real socket. Every request is recorded (method, path,
raw query, headers, body bytes) so tests can assert what the gateway forwarded. Special
paths under ``/v1/test_faults/`` misbehave on purpose (reset, stall, truncate).
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from multidict import CIMultiDictProxy

_OBJECT_ID = re.compile(r"^[a-z]+_[A-Za-z0-9]{8,}$")
#: the signing secret every webhook endpoint create answers with (a fake one)
WEBHOOK_SECRET = "whsec_fakeSigningSecret0000000000000001"


@dataclass
class Received:
    upstream: str
    method: str
    path: str
    raw_path: str
    query_string: str
    headers: CIMultiDictProxy[str]
    body: bytes
    #: the body of the answer, as sent (None for streamed answers and faults)
    answer: bytes | None = None


@dataclass
class FakeStripe:
    """One fake Stripe host (``api``, ``files``, ...)."""

    name: str = "api"
    received: list[Received] = field(default_factory=list)
    #: for the streaming download: set by the test to let the upstream finish its body
    release_download: asyncio.Event | None = None
    #: how many chunks the streaming download had sent when it was released
    download_progress: list[int] = field(default_factory=list)
    #: for ``/v1/test_faults/hold``: the answer waits until the test sets it
    hold: asyncio.Event | None = None
    #: when set, every request is answered with this status and a Stripe api_error
    fail_with: int | None = None
    #: outcomes for the next requests, one popped per request: "retry500" (500 with
    #: Stripe-Should-Retry: true), "noretry500" (Stripe-Should-Retry: false), "reset"
    #: (connection reset before answering), "409" (idempotency_key_in_use), "lock"
    #: (429 lock_timeout), "429" (429 rate_limit), "ok"
    plan: list[str] = field(default_factory=list)

    def count(self, method: str, path: str) -> int:
        return sum(1 for r in self.received if r.method == method and r.path == path)

    def app(self) -> web.Application:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self.handle)
        return app

    def last(self) -> Received:
        return self.received[-1]

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        record = Received(
            upstream=self.name,
            method=request.method,
            path=request.path,
            raw_path=request.raw_path,
            query_string=request.query_string,
            headers=request.headers,
            body=body,
        )
        self.received.append(record)
        response = await self._answer(request, body)
        if isinstance(response, web.Response) and isinstance(response.body, bytes):
            record.answer = response.body
        return response

    async def _answer(self, request: web.Request, body: bytes) -> web.StreamResponse:
        path = request.path
        if "delay" in request.query:  # hold the answer, so concurrent requests overlap
            await asyncio.sleep(float(request.query["delay"]))
        if self.plan:
            planned = await self._planned(request, self.plan.pop(0))
            if planned is not None:
                return planned
        if self.fail_with is not None:
            return self._json(
                {"error": {"type": "api_error", "message": "The fake upstream is failing."}},
                status=self.fail_with,
            )
        if "secret" in request.query:
            return self._json(
                {
                    "id": path.rsplit("/", 1)[-1],
                    "object": "thing",
                    "client_secret": "cs_test_secret_value",
                }
            )
        if path.startswith("/v1/test_faults/"):
            return await self._fault(request, path.rsplit("/", 1)[-1])
        if path.startswith("/v1/files/") and path.endswith("/contents"):
            return await self._download(request)
        auth = request.headers.get("Authorization", "")
        if not auth.startswith("Bearer sk_"):
            return self._json(
                {"error": {"type": "invalid_request_error", "message": "Invalid API Key provided"}},
                status=401,
            )
        return self._json(self._object_for(request, body))

    # ------------------------------------------------------------------ answers

    def _json(self, obj: Any, status: int = 200) -> web.Response:
        response = web.json_response(obj, status=status)
        response.headers["Request-Id"] = f"req_fake{len(self.received):06d}"
        response.headers["Stripe-Version"] = "2024-06-20"
        response.headers["Idempotent-Replayed"] = "false"
        return response

    def _object_for(self, request: web.Request, body: bytes) -> dict[str, Any]:
        parts = [p for p in request.path.split("/") if p]
        echo = {
            "method": request.method,
            "upstream": self.name,
            "query": request.query_string,
            "body": body.decode("latin-1"),
        }
        if request.method == "GET" and _OBJECT_ID.match(parts[-1]):
            return {
                "id": parts[-1],
                "object": parts[-2].rstrip("s"),
                "livemode": False,
                "echo": echo,
            }
        if request.method == "GET":
            return {
                "object": "list",
                "url": request.path,
                "has_more": False,
                "data": [{"id": "obj_list0000001", "object": "thing"}],
                "echo": echo,
            }
        if request.method == "DELETE":
            return {"id": parts[-1], "object": parts[-2].rstrip("s"), "deleted": True, "echo": echo}
        if request.path == "/v1/webhook_endpoints" and request.method == "POST":
            # Stripe shows an endpoint's signing secret once, in the create answer
            return {
                "id": "we_fake0000000001",
                "object": "webhook_endpoint",
                "secret": WEBHOOK_SECRET,
                "echo": echo,
            }
        if request.path == "/v1/files":
            return {"id": "file_fake0000001", "object": "file", "size": len(body), "echo": echo}
        return {"id": "obj_created00001", "object": parts[-1].rstrip("s"), "echo": echo}

    async def _download(self, request: web.Request) -> web.StreamResponse:
        size = int(request.query.get("size", str(5 * 1024 * 1024)))
        chunk = int(request.query.get("chunk", str(64 * 1024)))
        response = web.StreamResponse(status=200)
        response.content_type = "text/csv"
        response.content_length = size
        response.headers["Request-Id"] = "req_fakedownload"
        await response.prepare(request)
        sent = 0
        line = b"id,amount,currency\n"
        pattern = (line * (chunk // len(line) + 1))[:chunk]
        n = 0
        while sent < size:
            part = pattern[: min(chunk, size - sent)]
            try:
                await response.write(part)
            except ConnectionError:  # the gateway hung up (its client went away): normal
                return response
            sent += len(part)
            n += 1
            if (
                self.release_download is not None
                and sent >= size // 2
                and not self.release_download.is_set()
            ):
                self.download_progress.append(n)
                await self.release_download.wait()
        await response.write_eof()
        return response

    async def _planned(self, request: web.Request, outcome: str) -> web.StreamResponse | None:
        def error(status: int, type_: str, code: str | None, retry: str | None) -> web.Response:
            body: dict[str, Any] = {"type": type_, "message": f"planned {outcome}"}
            if code:
                body["code"] = code
            response = self._json({"error": body}, status=status)
            if retry is not None:
                response.headers["Stripe-Should-Retry"] = retry
            return response

        if outcome == "reset":
            assert request.transport is not None
            request.transport.abort()
            return web.Response(status=500)  # never reaches the wire
        answers = {
            "retry500": lambda: error(500, "api_error", None, "true"),
            "noretry500": lambda: error(500, "api_error", None, "false"),
            "409": lambda: error(409, "idempotency_error", "idempotency_key_in_use", None),
            "lock": lambda: error(429, "invalid_request_error", "lock_timeout", None),
            "429": lambda: error(429, "invalid_request_error", "rate_limit", None),
        }
        return answers[outcome]() if outcome in answers else None

    async def _fault(self, request: web.Request, kind: str) -> web.StreamResponse:
        transport = request.transport
        if kind == "reset_before":
            assert transport is not None
            transport.abort()
            raise web.HTTPInternalServerError()  # never reaches the wire
        if kind == "hold":
            assert self.hold is not None, "set FakeStripe.hold first"
            await self.hold.wait()
            return self._json({"id": "held", "object": "thing"})
        if kind == "stall":
            await asyncio.sleep(float(request.query.get("seconds", "30")))
            return self._json({"id": "late", "object": "thing"})
        if kind in ("reset_mid_body", "stall_mid_body", "truncated"):
            response = web.StreamResponse(status=200)
            response.content_type = "application/json"
            if kind != "reset_mid_body" or request.query.get("length") == "1":
                response.content_length = 100_000
            await response.prepare(request)
            await response.write(b'{"id": "partial", "data": "' + b"x" * 1000)
            if kind == "stall_mid_body":
                await asyncio.sleep(float(request.query.get("seconds", "30")))
            assert transport is not None
            if kind == "truncated":
                transport.close()
            else:
                transport.abort()
            return response
        if kind == "slow":
            await asyncio.sleep(float(request.query.get("seconds", "1")))
            return self._json({"id": "slow", "object": "thing", "t": time.time()})
        return self._json(
            {"error": {"type": "invalid_request_error", "message": json.dumps(kind)}}, 404
        )
