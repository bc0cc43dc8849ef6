"""The sandbox app: an in-memory, Stripe-compatible upstream for the gateway's core resources.

One :class:`Sandbox` serves the api and files hosts' paths on one port. Every request goes
through the same steps: faults, authentication (any ``sk_test_``/``rk_test_`` key; state is
kept per key and ``Stripe-Account``), routing, parameter decoding and checking (names, and
``expand[]`` against the route's expandable fields), idempotency (POST with
``Idempotency-Key``), then the resource handler. Every response carries a
``Request-Id`` and the ``Stripe-Version`` it was answered with (the request's, checked against
the versions Stripe has published, or the newest one); an idempotent request's response echoes
its ``Idempotency-Key`` and names the ``Original-Request``.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import random
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web

from sandbox.core import (
    DEFAULT_API_VERSION,
    Account,
    Call,
    Ids,
    Registry,
    SandboxError,
    SandboxSettings,
    api_version_error,
    known_api_version,
)
from sandbox.events import EventHub, requested
from sandbox.faults import Faults
from sandbox.forms import FormError, decode
from sandbox.resources import REGISTRY

__all__ = ["Sandbox", "create_sandbox_app"]

_NO_KEY = (
    "You did not provide an API key. You need to provide your API key in the Authorization "
    "header, using Bearer auth (e.g. 'Authorization: Bearer YOUR_SECRET_KEY'). See "
    "https://stripe.com/docs/api#authentication for details, or we can help at "
    "https://support.stripe.com/."
)


REQUEST_ID = web.RequestKey("request_id", str)
#: the Stripe-Version a response echoes
STRIPE_VERSION = web.RequestKey("stripe_version", str)
#: the Idempotency-Key a response echoes, and the id of the request that first used it
IDEMPOTENCY = web.RequestKey("idempotency", tuple[str, str])


@dataclass
class _Stored:
    fingerprint: str
    done: asyncio.Future[tuple[int, bytes, dict[str, str]]]
    #: the Request-Id of the request that first used the key (replays name it)
    request_id: str


@dataclass
class Sandbox:
    settings: SandboxSettings = field(default_factory=SandboxSettings)
    faults: Faults = field(default_factory=Faults)
    registry: Registry = field(default_factory=lambda: REGISTRY)
    accounts: dict[str, Account] = field(default_factory=dict)
    idempotency: dict[tuple[str, str], _Stored] = field(default_factory=dict)
    #: events and their delivery, timed transitions (see sandbox.events)
    events: EventHub = field(init=False)

    def __post_init__(self) -> None:
        self._rng = random.Random(self.settings.seed)
        self._ids = Ids(self.settings.seed)
        self.events = EventHub(self.settings)

    def reset(self) -> None:
        self.events.cancel()
        self.accounts.clear()
        self.idempotency.clear()

    # ----------------------------------------------------------------- steps

    def _request_id(self) -> str:
        return self._ids.new("req", 14)

    def _key(self, request: web.Request) -> str:
        header = request.headers.get("Authorization", "")
        scheme, _, value = header.strip().partition(" ")
        if not header:
            raise SandboxError(401, _NO_KEY)
        if scheme.lower() == "bearer":
            key = value.strip()
        elif scheme.lower() == "basic":
            try:
                key = base64.b64decode(value.strip(), validate=True).decode().partition(":")[0]
            except (binascii.Error, UnicodeDecodeError, ValueError):
                raise SandboxError(
                    401, "Invalid API Key provided: malformed Basic header"
                ) from None
        else:
            raise SandboxError(401, _NO_KEY)
        if not key.startswith(("sk_test_", "rk_test_")) or len(key) < 12:
            shown = key[:8] + "*" * max(0, len(key) - 12) + key[-4:] if len(key) > 12 else "****"
            raise SandboxError(
                401,
                f"Invalid API Key provided: {shown}. The sandbox accepts test mode keys "
                "(sk_test_... or rk_test_...).",
            )
        return key

    def _account(self, key: str, request: web.Request) -> Account:
        connected = request.headers.get("Stripe-Account", "")
        name = f"{key}|{connected}"
        account = self.accounts.get(name)
        if account is None:
            account = Account(key=name, ids=self._ids, settings=self.settings)
            self.accounts[name] = account
            for seeder in self.registry.seeders:
                seeder(account)
            account.hooks = self.events
        return account

    async def _params(self, request: web.Request) -> dict[str, Any]:
        try:
            params = decode(request.query_string)
            if request.method == "POST" and request.body_exists:
                ctype = request.content_type
                if ctype == "multipart/form-data":
                    return {"__multipart__": request}
                body = await request.read()
                params.update(decode(body))
        except FormError as exc:
            raise SandboxError(400, str(exc), code="parameter_invalid", param=exc.param) from None
        except UnicodeDecodeError:
            raise SandboxError(400, "Request body is not valid UTF-8.") from None
        return params

    # ----------------------------------------------------------------- entry

    def _version(self, request: web.Request) -> str:
        """The request's ``Stripe-Version`` (beta suffixes kept), or the newest version."""
        given = request.headers.get("Stripe-Version")
        if given is None:
            return DEFAULT_API_VERSION
        if not known_api_version(given):
            raise api_version_error(given)
        return given.strip()

    async def handle(self, request: web.Request) -> web.StreamResponse:
        request_id = self._request_id()
        request[REQUEST_ID] = request_id
        request[STRIPE_VERSION] = DEFAULT_API_VERSION
        idem = request.headers.get("Idempotency-Key") if request.method == "POST" else None
        if idem is not None:
            request[IDEMPOTENCY] = (idem, request_id)
        faults = self.faults
        delay = faults.latency(self._rng)
        if delay:
            await asyncio.sleep(delay)
        fault = faults.draw(self._rng)
        if fault == "reset":
            if request.transport is not None:
                request.transport.abort()
            return web.Response(status=500)  # never reaches the client
        try:
            if fault == "error":
                raise SandboxError(
                    500,
                    "An unknown error occurred (sandbox fault injection).",
                    type="api_error",
                    headers={"Stripe-Should-Retry": "true"},
                )
            if fault == "rate_limit":
                raise SandboxError(
                    429,
                    "Request rate limit exceeded (sandbox fault injection).",
                    code="rate_limit",
                )
            idem = request.headers.get("Idempotency-Key") if request.method == "POST" else None
            with requested(request_id, idem):
                response = await self._dispatch(request)
        except SandboxError as exc:
            response = web.Response(
                status=exc.status,
                body=orjson.dumps(exc.body(request_id)),
                content_type="application/json",
                headers=exc.headers,
            )
        if response.prepared:
            return response
        response.headers["Request-Id"] = request_id
        if fault == "truncate" and isinstance(response, web.Response) and response.body:
            return await _truncated(request, response)
        return response

    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        key = self._key(request)
        request[STRIPE_VERSION] = self._version(request)
        matched = self.registry.match(request.method, request.path)
        if matched is None:
            raise SandboxError(
                404,
                f"Unrecognized request URL ({request.method}: {request.path}). Please see "
                "https://stripe.com/docs or we can help at https://support.stripe.com/.",
            )
        endpoint, path_params = matched
        params = await self._params(request)
        if endpoint.params is not None and "__multipart__" not in params:
            for name in params:
                if name not in endpoint.params:
                    raise SandboxError(
                        400,
                        f"Received unknown parameter: {name}",
                        code="parameter_unknown",
                        param=name,
                    )
        expand = endpoint.expansions(params)
        account = self._account(key, request)
        base_url = f"{request.scheme}://{request.host}"
        call = Call(request, account, params, path_params, base_url, request[REQUEST_ID], expand)
        idem = request.headers.get("Idempotency-Key") if request.method == "POST" else None
        if idem is None:
            return await self._run(endpoint.handler, call)
        return await self._idempotent(f"{account.key}", idem, request, call, endpoint.handler)

    async def _run(self, handler: Any, call: Call) -> web.StreamResponse:
        result = await handler(call)
        if isinstance(result, web.StreamResponse):
            return result
        return web.Response(body=orjson.dumps(result), content_type="application/json")

    async def _idempotent(
        self, account: str, idem: str, request: web.Request, call: Call, handler: Any
    ) -> web.StreamResponse:
        body = await request.read() if request.body_exists else b""
        fingerprint = hashlib.sha256(
            request.method.encode() + b" " + request.raw_path.encode() + b"\n" + body
        ).hexdigest()
        slot = (account, idem)
        stored = self.idempotency.get(slot)
        if stored is not None:
            if stored.fingerprint != fingerprint:
                raise SandboxError(
                    400,
                    "Keys for idempotent requests can only be used with the same parameters "
                    "they were first used with. Try using a key other than "
                    f"'{idem}' if you meant to execute a different request.",
                    type="idempotency_error",
                )
            if not stored.done.done():
                raise SandboxError(
                    409,
                    "There is currently another in-progress request using this Idempotent "
                    "Key (that probably means you submitted twice, and the other request is "
                    "still going through): " + idem + ". Please try again later.",
                    type="idempotency_error",
                    code="idempotency_key_in_use",
                )
            status, payload, headers = stored.done.result()
            replay = web.Response(status=status, body=payload, headers=headers)
            replay.headers["Idempotent-Replayed"] = "true"
            request[IDEMPOTENCY] = (idem, stored.request_id)
            return replay
        done: asyncio.Future[tuple[int, bytes, dict[str, str]]] = (
            asyncio.get_running_loop().create_future()
        )
        self.idempotency[slot] = _Stored(fingerprint, done, call.request_id)
        try:
            response = await self._run(handler, call)
        except BaseException:
            # Stripe saves a result only once an endpoint has started executing; a sandbox
            # handler raises only before it changes anything (parameter and state checks), so
            # an error is not saved and a corrected retry with the same key runs
            del self.idempotency[slot]
            raise
        if isinstance(response, web.Response) and response.body is not None:
            assert isinstance(response.body, bytes)
            headers = {"Content-Type": response.headers.get("Content-Type", "application/json")}
            done.set_result((response.status, response.body, headers))
        else:
            del self.idempotency[slot]
        response.headers["Idempotent-Replayed"] = "false"
        return response


async def _truncated(request: web.Request, response: web.Response) -> web.StreamResponse:
    body = response.body
    assert isinstance(body, bytes)
    stream = web.StreamResponse(status=response.status, headers=response.headers)
    stream.content_length = len(body)
    await stream.prepare(request)
    await stream.write(body[: len(body) // 2])
    if request.transport is not None:
        request.transport.close()
    return stream


SANDBOX = web.AppKey("sandbox", Sandbox)


def create_sandbox_app(sandbox: Sandbox | None = None) -> web.Application:
    """The sandbox as an aiohttp app (api and files paths on one port)."""
    sandbox = sandbox or Sandbox()
    app = web.Application(client_max_size=64 * 1024 * 1024)
    app[SANDBOX] = sandbox

    async def events(app: web.Application) -> AsyncIterator[None]:
        sandbox.events.deliverer.loop = asyncio.get_running_loop()
        yield
        await sandbox.events.close()

    app.cleanup_ctx.append(events)
    app.router.add_route("*", "/{tail:.*}", sandbox.handle)
    app.on_response_prepare.append(_echo_headers)
    return app


async def _echo_headers(request: web.Request, response: web.StreamResponse) -> None:
    """Every answer names its ``Stripe-Version``; an idempotent one echoes its key too."""
    response.headers.setdefault("Stripe-Version", request.get(STRIPE_VERSION, DEFAULT_API_VERSION))
    idempotency = request.get(IDEMPOTENCY)
    if idempotency is not None:
        response.headers["Idempotency-Key"] = idempotency[0]
        response.headers["Original-Request"] = idempotency[1]
