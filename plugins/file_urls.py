"""File URLs: make a ``file`` object's download ``url`` lead through the gateway.

Stripe writes ``https://files.stripe.com/v1/files/file_…/contents`` into every ``file``
object (a file retrieve, a report run's ``result``, a scheduled query run's ``file``, lists
of them). A service that follows it with its "Stripe key", a gateway key, would send that
key straight to Stripe and skip the gateway: no audit, no redaction, no rate limit. With
``public_base_url`` set (the address services reach the gateway at), the plugin rewrites
those URLs to ``<public_base_url>/v1/files/file_…/contents``, which the gateway routes to the
``files`` upstream with the team's key.

What is rewritten, and nothing else: the ``url`` string of an object whose ``object`` is
``"file"``, when it is a file-contents URL (``/v1/files/<id>/contents``, with any query) on
Stripe's files host (``https://files.stripe.com``) or the configured ``[upstream] files``.
A ``url`` in any other object (a ``file_link``'s public URL, which needs no key, a webhook
endpoint's), or on another host, stays as it is.

Only JSON answers of ``routes`` (and of requests with ``expand`` in their query) are read
whole, up to ``max_body_bytes``; their upstream request asks for an uncompressed answer.
Other answers, file contents among them, stream as before. An answer is parsed only when it
mentions a files host, and written again (same values, same order) only when a URL changed.
The cache stores what the client got, so its hits carry rewritten URLs too; a hit stored
before ``public_base_url`` was set is rewritten as it is served.

Settings (``[plugins.file_urls]``, all optional): :class:`FileUrlsSettings`, listed in
``docs/configuration.md``. The audit line gets ``file_urls_rewritten`` (a count) when a URL
was rewritten.
"""

from __future__ import annotations

import re
from typing import Any

import orjson
from multidict import CIMultiDict
from pydantic import Field, PrivateAttr, field_validator

from gateway.config import GatewayConfig
from gateway.context import RequestContext
from gateway.globs import RouteRule, parse_rule
from gateway.hookspecs import hookimpl
from gateway.settings import RouteText, Settings

__all__ = ["STRIPE_FILES", "FileUrlsPlugin", "FileUrlsSettings", "rewrite_file_urls"]

#: Stripe's files host, whose URLs are always rewritten
STRIPE_FILES = "https://files.stripe.com"
#: the state key marking a request whose answer this plugin reads
_STATE = "file_urls"
_BASE = re.compile(r"^https?://[^/\s?#@]+(?:/[^\s?#]*)?$")
#: what follows the files host in a file-contents URL
_CONTENTS = re.compile(r"^/v1/files/[A-Za-z0-9_]+/contents(?:\?[^#\s]*)?$")
#: file-bearing routes: answers that hold file objects
_ROUTES = [
    "* /v1/files",
    "GET /v1/files/*",
    "* /v1/file_links",
    "* /v1/file_links/*",
    "* /v1/reporting/report_runs",
    "GET /v1/reporting/report_runs/*",
    "GET /v1/sigma/scheduled_query_runs",
    "GET /v1/sigma/scheduled_query_runs/*",
]


class FileUrlsSettings(Settings):
    """Rewrites the url of file objects in JSON answers to the gateway's public address, so
    a download goes through the gateway (audit, redaction, rate limit) with the team's
    gateway key. Off until public_base_url is set."""

    public_base_url: str | None = Field(
        None,
        description="the address services reach the gateway at (scheme, host, port, and a "
        "path prefix if a proxy in front adds one); unset: file URLs are not rewritten",
        examples=["https://stripe-gateway.internal:8080"],
    )
    routes: list[RouteText] = Field(
        default_factory=lambda: list(_ROUTES),
        description='"METHOD /path/glob" rules whose JSON answers are read whole and '
        "rewritten (file retrieves and lists, file links, report runs, scheduled query "
        "runs); a request with expand in its query always is",
    )
    max_body_bytes: int = Field(
        4 * 1024 * 1024,
        gt=0,
        le=64 * 1024 * 1024,
        description="larger answers stream untouched (their file URLs are not rewritten)",
    )

    _rules: tuple[RouteRule, ...] = PrivateAttr(())

    @field_validator("public_base_url")
    @classmethod
    def _base(cls, value: str | None) -> str | None:
        if value is None:
            return None
        value = value.rstrip("/")
        if not _BASE.match(value):
            raise ValueError(
                "must be an http(s) URL with no user, query or fragment, like "
                "https://stripe-gateway.internal:8080"
            )
        return value

    def model_post_init(self, context: Any, /) -> None:
        self._rules = tuple(parse_rule(text) for text in self.routes)

    def covers(self, method: str, path: str, query: str) -> bool:
        return "expand" in query or any(rule.matches(method, path) for rule in self._rules)


def _origins(config: GatewayConfig) -> tuple[str, ...]:
    """Lower-cased ``scheme://host[:port]`` of every files host whose URLs are rewritten."""
    found = [STRIPE_FILES, config.upstream.files.lower()]
    return tuple(dict.fromkeys(found))


def _marker(origin: str) -> bytes:
    """What an answer holding a URL of ``origin`` must contain (the host, which has no
    ``/``, so JSON's optional ``\\/`` escape does not hide it)."""
    return origin.partition("://")[2].encode()


def _new_url(url: str, origins: tuple[str, ...], base: str) -> str | None:
    for origin in origins:
        size = len(origin)
        if (url.startswith(origin) or url[:size].lower() == origin) and url[size : size + 1] == "/":
            rest = url[size:]
            if _CONTENTS.match(rest):
                return base + rest
    return None


def rewrite_file_urls(body: bytes, origins: tuple[str, ...], base: str) -> tuple[bytes | None, int]:
    """``body`` (JSON) with the file-contents ``url`` of every ``file`` object on one of
    ``origins`` moved to ``base``, and how many were; ``(None, 0)`` when nothing changed or
    the body is not JSON this can parse. Every other value, and the order of keys, stays."""
    if not any(_marker(origin) in body for origin in origins):
        return None, 0
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None, 0
    count = 0
    stack: list[Any] = [doc]
    push = stack.append
    while stack:  # no recursion: a crafted body may nest a thousand levels
        node = stack.pop()
        # (orjson makes plain dicts and lists: exact type checks are the fast ones)
        if type(node) is dict:
            if node.get("object") == "file":
                url = node.get("url")
                if type(url) is str:
                    new = _new_url(url, origins, base)
                    if new is not None:
                        node["url"] = new
                        count += 1
            values: Any = node.values()
        elif type(node) is list:
            values = node
        else:
            continue
        for value in values:
            kind = type(value)
            if kind is dict or kind is list:
                push(value)
    if count == 0:
        return None, 0
    # Stripe indents its answers by two spaces: keep the look
    option = orjson.OPT_INDENT_2 if body[:2] == b"{\n" else 0
    try:
        return orjson.dumps(doc, option=option), count
    except TypeError:  # nested deeper than orjson writes (no answer of Stripe's is)
        return None, 0


class FileUrlsPlugin:
    """Built-in plugin ``file_urls``."""

    name = "file_urls"
    settings_model = FileUrlsSettings

    def __init__(self) -> None:
        self.settings = FileUrlsSettings()
        self._origins: tuple[str, ...] = (STRIPE_FILES,)
        self._base: str | None = None

    @hookimpl
    def gateway_configure(self, config: GatewayConfig, settings: FileUrlsSettings) -> None:
        self.settings = settings
        self._base = settings.public_base_url
        self._origins = _origins(config)

    @hookimpl
    def gateway_request(self, ctx: RequestContext) -> None:
        if self._base is None:
            return
        request = ctx.request
        if self.settings.covers(request.method, request.path, request.rel_url.raw_query_string):
            ctx.state[_STATE] = True
            ctx.response_body_limit = max(ctx.response_body_limit, self.settings.max_body_bytes)

    @hookimpl
    def gateway_upstream_headers(self, ctx: RequestContext, headers: CIMultiDict[str]) -> None:
        if _STATE in ctx.state:
            headers["Accept-Encoding"] = "identity"  # a compressed answer cannot be rewritten

    @hookimpl
    def gateway_response_body(
        self, ctx: RequestContext, headers: CIMultiDict[str], body: bytes
    ) -> bytes | None:
        if self._base is None or _STATE not in ctx.state:
            return None
        new, count = rewrite_file_urls(body, self._origins, self._base)
        if count:
            ctx.audit["file_urls_rewritten"] = count
        return new
