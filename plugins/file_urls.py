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

Only JSON answers of ``routes`` (file, report run, scheduled query run and event routes) and
of requests that ask for ``expand`` are read whole, up to ``max_body_bytes``; their upstream
request asks for an uncompressed answer. ``expand`` counts when it is a real parameter name,
``expand`` or ``expand[…]`` once percent-decoded, in the query or, for a write, in a form
body of at most :data:`FORM_MAX_BYTES` (the plugin asks the core for a copy of such a body
as it goes upstream, ``ctx.request_capture_limit``, and looks at it in
``gateway_upstream_response``, when it has been sent whole; such writes ask for an
uncompressed answer, since the body is not read yet when the upstream headers are made).
File contents (``/v1/files/<id>/contents``) always stream, whatever the query. An answer is
parsed only when it mentions a files host; when a URL changes, only the bytes of that URL's
JSON string are replaced: every other byte of the answer (numbers as written, spacing, key
order, escapes) stays. The cache stores what the client got, so its hits carry rewritten
URLs too; a hit stored before ``public_base_url`` was set is rewritten as it is served.

Webhook events that the webhooks plugin delivers are not rewritten: they are re-signed byte
for byte. A team that follows a file URL from an event fetches the file through the gateway's
``/v1/files/<id>/contents`` (or retrieves the event or report run through the gateway).

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
from gateway.redaction.params import decode_component
from gateway.settings import RouteText, Settings

__all__ = [
    "FORM_MAX_BYTES",
    "STRIPE_FILES",
    "FileUrlsPlugin",
    "FileUrlsSettings",
    "asks_to_expand",
    "rewrite_file_urls",
]

#: Stripe's files host, whose URLs are always rewritten
STRIPE_FILES = "https://files.stripe.com"
#: the state key marking a request whose answer this plugin reads
_STATE = "file_urls"
_BASE = re.compile(r"^https?://[^/\s?#@]+(?:/[^\s?#]*)?$")
#: what follows the files host in a file-contents URL
_CONTENTS = re.compile(r"^/v1/files/[A-Za-z0-9_]+/contents(?:\?[^#\s]*)?$")
#: a request for file contents: always streamed, never read whole
_CONTENTS_PATH = re.compile(r"^/v1/files/[^/]*/contents(?:/|$)")
_FORM = "application/x-www-form-urlencoded"
#: the largest form body of a write looked into for ``expand``
FORM_MAX_BYTES = 256 * 1024
_READS = frozenset({"GET", "HEAD"})
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
    # file.created and reporting.report_run.* events carry file objects
    "GET /v1/events",
    "GET /v1/events/*",
    "GET /v2/core/events",
    "GET /v2/core/events/*",
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
        "runs, events); a request with an expand parameter (query, or a write's form body) "
        "always is, a file contents download never",
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

    def covers(self, method: str, path: str, query: str, form: bytes | None = None) -> bool:
        """Whether the answer to this request is read whole: a route of ``routes``, or a
        request with an ``expand`` parameter in its ``query`` or its ``form`` body; never
        a file contents download."""
        if _CONTENTS_PATH.match(path):
            return False
        return (
            asks_to_expand(query)
            or (form is not None and asks_to_expand(form.decode("latin-1")))
            or any(rule.matches(method, path) for rule in self._rules)
        )


def asks_to_expand(form: str) -> bool:
    """Whether a query string or form body has a parameter named ``expand`` or
    ``expand[…]`` (names percent-decoded, as Stripe reads them)."""
    if "expand" not in form and "%" not in form:
        return False
    for pair in form.split("&"):
        name = pair.partition("=")[0]
        if "%" in name or "+" in name:
            name = decode_component(name)
        if name == "expand" or name.startswith("expand["):
            return True
    return False


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


#: the tokens that give a JSON text its shape: a string (a key when a ``:`` follows) or a
#: bracket; numbers, literals, commas and spaces between them are skipped, never touched
_TOKENS = re.compile(rb'("[^"\\]*(?:\\.[^"\\]*)*")(\s*:)?|[{}\[\]]', re.DOTALL)
_URL = b"url"
_OBJECT = b"object"


def _key(token: bytes) -> bytes:
    """A key token's name (bytes; escapes decoded, as a parser reads them)."""
    if b"\\" not in token:
        return token[1:-1]
    return str(orjson.loads(token)).encode("utf-8", "surrogatepass")


def _file_url_spans(body: bytes) -> list[tuple[int, int, str]]:
    """Where, in ``body`` (JSON a parser accepted), the ``url`` string of each object with
    ``"object": "file"`` is: ``(start, end, value)`` of the string token, quotes included.
    A duplicate key counts as a parser reads it: the last one."""
    spans: list[tuple[int, int, str]] = []
    # one frame per open object: [key, object value, url value, url start, url end];
    # None for an open array
    stack: list[list[Any] | None] = []
    for match in _TOKENS.finditer(body):
        string = match.group(1)
        if string is None:
            bracket = body[match.start()]
            if bracket == 0x7B:  # {
                stack.append([None, None, None, 0, 0])
            elif bracket == 0x5B:  # [
                stack.append(None)
            else:
                frame = stack.pop()
                if frame is not None and frame[1] == "file" and frame[2] is not None:
                    spans.append((frame[3], frame[4], frame[2]))
            continue
        frame = stack[-1] if stack else None
        if frame is None:
            continue  # a string in an array, or the whole document
        if match.group(2) is not None:  # a key: a value follows
            key = frame[0] = _key(string)
            if key == _URL:
                frame[2] = None
            elif key == _OBJECT:
                frame[1] = None
            continue
        key = frame[0]
        if key == _URL:
            frame[2] = orjson.loads(string)
            frame[3], frame[4] = match.start(1), match.end(1)
        elif key == _OBJECT:
            frame[1] = orjson.loads(string)
    return spans


def _rewrites(doc: Any, origins: tuple[str, ...], base: str) -> int:
    """How many file-contents URLs of ``file`` objects ``doc`` (parsed) holds."""
    count = 0
    stack: list[Any] = [doc]
    push = stack.append
    while stack:  # no recursion: a crafted body may nest a thousand levels
        node = stack.pop()
        # (orjson makes plain dicts and lists: exact type checks are the fast ones)
        if type(node) is dict:
            if node.get("object") == "file":
                url = node.get("url")
                if type(url) is str and _new_url(url, origins, base) is not None:
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
    return count


def rewrite_file_urls(body: bytes, origins: tuple[str, ...], base: str) -> tuple[bytes | None, int]:
    """``body`` (JSON) with the file-contents ``url`` of every ``file`` object on one of
    ``origins`` moved to ``base``, and how many were; ``(None, 0)`` when nothing changed or
    the body is not JSON this can parse. Only the bytes of those URL strings change: every
    other byte (numbers as written, spacing, key order, escapes) stays as it was."""
    if not any(_marker(origin) in body for origin in origins):
        return None, 0
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None, 0
    expected = _rewrites(doc, origins, base)
    if expected == 0:
        return None, 0
    del doc
    parts: list[bytes] = []
    done = 0
    for start, end, url in sorted(_file_url_spans(body)):
        new = _new_url(url, origins, base) if type(url) is str else None
        if new is not None:
            parts += (body[done:start], orjson.dumps(new))
            done = end
    count = len(parts) // 2
    if count != expected:  # the scan and the parser disagree: leave the answer as it is
        return None, 0
    parts.append(body[done:])
    return b"".join(parts), count


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
        method, path = request.method, request.path
        if self.settings.covers(method, path, request.rel_url.raw_query_string):
            ctx.state[_STATE] = True
            ctx.response_body_limit = max(ctx.response_body_limit, self.settings.max_body_bytes)
        elif (
            method not in _READS
            and request.body_exists
            and request.content_type == _FORM
            and (request.content_length or 0) <= FORM_MAX_BYTES
            and not _CONTENTS_PATH.match(path)
        ):
            # a write whose form body may ask for expand: decided once the body went
            # upstream (gateway_upstream_response), from the copy the core keeps of it
            ctx.state[_STATE] = False
            ctx.request_capture_limit = max(ctx.request_capture_limit, FORM_MAX_BYTES)

    @hookimpl
    def gateway_upstream_headers(self, ctx: RequestContext, headers: CIMultiDict[str]) -> None:
        if _STATE in ctx.state:
            headers["Accept-Encoding"] = "identity"  # a compressed answer cannot be rewritten

    @hookimpl
    def gateway_upstream_response(self, ctx: RequestContext, headers: CIMultiDict[str]) -> None:
        if ctx.state.get(_STATE) is False:
            request = ctx.request
            form = ctx.request_body  # None: the body was larger than asked for, or cut
            if form is not None and self.settings.covers(request.method, request.path, "", form):
                ctx.state[_STATE] = True
                ctx.response_body_limit = max(ctx.response_body_limit, self.settings.max_body_bytes)

    @hookimpl
    def gateway_response_body(
        self, ctx: RequestContext, headers: CIMultiDict[str], body: bytes
    ) -> bytes | None:
        if self._base is None or not ctx.state.get(_STATE):
            return None
        new, count = rewrite_file_urls(body, self._origins, self._base)
        if count:
            ctx.audit["file_urls_rewritten"] = count
        return new
