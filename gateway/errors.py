"""Errors the gateway produces itself, shaped like Stripe's so the SDKs raise the right class.

The exception tree, drawn once:

    GatewayError                 base of everything the gateway raises on purpose
    ├── ConfigError              bad configuration; stops start-up with exit code 2
    └── StripeErrorResponse      a request the gateway answers itself with a Stripe-shaped error

The SDKs pick the exception class from the status code (401 → AuthenticationError,
403 → PermissionError, 400/404 → InvalidRequestError, 429 → RateLimitError, others →
APIError) and read ``error.type``, ``error.code`` and ``error.message`` from the body.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Literal

import orjson
from aiohttp import web

__all__ = [
    "CLOSE",
    "ConfigError",
    "GatewayError",
    "StripeErrorResponse",
    "error_body",
    "error_response",
]

ErrorType = Literal["api_error", "invalid_request_error", "idempotency_error"]

#: the headers of an error after which the connection cannot be trusted (faulty framing)
CLOSE: Mapping[str, str] = MappingProxyType({"Connection": "close"})


class GatewayError(Exception):
    """Base class of the gateway's own exceptions."""


class ConfigError(GatewayError):
    """A configuration value is missing or invalid.

    ``path`` is the dotted key path (``teams[0].allow[1]``), ``reason`` says what is wrong.
    """

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"{path}: {reason}" if path else reason)
        self.path = path
        self.reason = reason


class StripeErrorResponse(GatewayError):
    """Raise from anywhere in the request path to answer with a Stripe-shaped error."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: ErrorType = "invalid_request_error",
        code: str | None = None,
        should_retry: bool | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.code = code
        self.should_retry = should_retry
        self.headers = headers or {}

    def to_response(self, request_id: str) -> web.Response:
        return error_response(
            self.status,
            self.message,
            request_id=request_id,
            type=self.type,
            code=self.code,
            should_retry=self.should_retry,
            headers=self.headers,
        )


def error_body(message: str, *, type: ErrorType, code: str | None) -> bytes:
    error: dict[str, str] = {"type": type, "message": message}
    if code is not None:
        error["code"] = code
    return orjson.dumps({"error": error})


def error_response(
    status: int,
    message: str,
    *,
    request_id: str,
    type: ErrorType = "invalid_request_error",
    code: str | None = None,
    should_retry: bool | None = None,
    headers: dict[str, str] | None = None,
) -> web.Response:
    """A complete Stripe-shaped error response carrying the gateway's request id.

    With ``Connection: close`` among ``headers`` the connection is closed once it is sent
    (aiohttp would otherwise keep a kept-alive one open whatever the header says).
    """
    response = web.Response(
        status=status,
        body=error_body(message, type=type, code=code),
        content_type="application/json",
        headers=headers,
    )
    if headers and headers.get("Connection", "").lower() == "close":
        response.force_close()
    response.headers["Request-Id"] = request_id
    if should_retry is not None:
        response.headers["Stripe-Should-Retry"] = "true" if should_retry else "false"
    return response
