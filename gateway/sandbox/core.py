"""The sandbox's building blocks: errors, objects, per-account state, lists, endpoints.

Resource modules (``gateway.sandbox.resources.*``) declare endpoints with
:meth:`Registry.route`; a handler gets a :class:`Call` (the decoded parameters, the path
parameters and the caller's :class:`Account`) and returns a JSON-able dict, or raises
:class:`SandboxError`, which becomes an exactly Stripe-shaped error.
"""

from __future__ import annotations

import copy
import json
import random
import re
import string
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

from aiohttp import web

__all__ = [
    "Account",
    "Call",
    "Endpoint",
    "Registry",
    "SandboxError",
    "SandboxSettings",
    "expand_fields",
    "make_object",
    "new_id",
    "page",
]

_ALPHABET = string.ascii_letters + string.digits


@dataclass
class SandboxSettings:
    """How the sandbox behaves (not faults: see :mod:`gateway.sandbox.faults`)."""

    #: seconds a report run stays ``pending`` before it ``succeeded``
    report_delay: float = 2.0
    #: base URL written into file objects' ``url`` (where clients download contents)
    files_base: str = "https://files.stripe.com"
    #: rows in a generated CSV result (scheduled query runs, report runs)
    csv_rows: int = 1000
    #: size in bytes of "large" generated results (report run results)
    large_result_bytes: int = 5 * 1024 * 1024
    #: seed for ids and generated data (None: random)
    seed: int | None = None


class SandboxError(Exception):
    """A Stripe-shaped error answer: ``{"error": {type, code, message, param}}``."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        code: str | None = None,
        param: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.code = code
        self.param = param
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        error: dict[str, Any] = {"type": self.type, "message": self.message}
        if self.code is not None:
            error["code"] = self.code
            error["doc_url"] = f"https://stripe.com/docs/error-codes/{self.code.replace('_', '-')}"
        if self.param is not None:
            error["param"] = self.param
        return {"error": error}


def missing(resource: str, object_id: str) -> SandboxError:
    return SandboxError(
        404, f"No such {resource}: '{object_id}'", code="resource_missing", param="id"
    )


# --------------------------------------------------------------------------- objects

_TEMPLATES: dict[str, dict[str, Any]] = json.loads(
    resources.files("gateway.sandbox").joinpath("templates.json").read_text()
)


class Ids:
    def __init__(self, seed: int | None) -> None:
        self._random = random.Random(seed)

    def new(self, prefix: str, length: int = 24) -> str:
        return f"{prefix}_" + "".join(self._random.choices(_ALPHABET, k=length))

    def choice(self, seq: list[Any]) -> Any:
        return self._random.choice(seq)

    def randint(self, a: int, b: int) -> int:
        return self._random.randint(a, b)


def new_id(prefix: str) -> str:
    """A fresh Stripe-style id (not seeded; resource modules use ``Account.ids``)."""
    return f"{prefix}_" + "".join(random.choices(_ALPHABET, k=24))


def template(object_type: str) -> dict[str, Any]:
    """A deep copy of Stripe's published example object for ``object_type``."""
    return copy.deepcopy(_TEMPLATES[object_type])


def template_types() -> list[str]:
    return sorted(_TEMPLATES)


def make_object(object_type: str, object_id: str | None, **fields: Any) -> dict[str, Any]:
    """An object with exactly the template's top-level fields, overridden by ``fields``.

    ``id`` (when the type has one), ``created`` (when it has one) and ``livemode`` are set.
    """
    obj = template(object_type)
    if "id" in obj or object_id is not None:
        obj["id"] = object_id
    if "created" in obj:
        obj["created"] = int(time.time())
    if "livemode" in obj:
        obj["livemode"] = False
    for key, value in fields.items():
        obj[key] = value
    return obj


# --------------------------------------------------------------------------- state


@dataclass
class Account:
    """Everything one API key's account has created in the sandbox."""

    key: str
    ids: Ids
    settings: SandboxSettings
    #: object type -> id -> object, in creation order
    objects: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)
    #: private per-object data that is not part of the API object (e.g. file bytes)
    private: dict[str, Any] = field(default_factory=dict)
    seeded: bool = False

    def table(self, object_type: str) -> dict[str, dict[str, Any]]:
        return self.objects.setdefault(object_type, {})

    def add(self, obj: dict[str, Any], object_type: str | None = None) -> dict[str, Any]:
        self.table(object_type or obj["object"])[obj["id"]] = obj
        return obj

    def get(self, object_type: str, object_id: str, resource: str | None = None) -> dict[str, Any]:
        obj = self.table(object_type).get(object_id)
        if obj is None:
            raise missing(resource or object_type.rsplit(".", 1)[-1].replace("_", " "), object_id)
        return obj


# --------------------------------------------------------------------------- parameters


@dataclass
class Call:
    """One API call as a handler sees it."""

    request: web.Request
    account: Account
    params: dict[str, Any]
    path: dict[str, str]
    #: the absolute base URL of this sandbox, e.g. http://127.0.0.1:12111
    base_url: str
    #: this answer's ``Request-Id`` (streaming handlers set it on their own response)
    request_id: str = ""

    def id(self, name: str = "id") -> str:
        return self.path[name]

    def text(self, name: str, *, required: bool = False, default: str | None = None) -> str | None:
        value = self.params.get(name)
        if value is None:
            if required:
                raise SandboxError(
                    400, f"Missing required param: {name}.", code="parameter_missing", param=name
                )
            return default
        if not isinstance(value, str):
            raise SandboxError(
                400,
                f"Invalid string: {name} must be a string.",
                code="parameter_invalid_string",
                param=name,
            )
        return value

    def integer(
        self,
        name: str,
        *,
        required: bool = False,
        default: int | None = None,
        low: int | None = None,
        high: int | None = None,
    ) -> int | None:
        raw = self.text(name, required=required)
        if raw is None:
            return default
        try:
            value = int(raw)
        except ValueError:
            raise SandboxError(
                400, f"Invalid integer: {raw}", code="parameter_invalid_integer", param=name
            ) from None
        if (low is not None and value < low) or (high is not None and value > high):
            raise SandboxError(
                400,
                f"Invalid integer: {name} must be between {low} and {high}.",
                code="parameter_invalid_integer",
                param=name,
            )
        return value

    def boolean(self, name: str, *, default: bool | None = None) -> bool | None:
        raw = self.text(name)
        if raw is None:
            return default
        if raw not in ("true", "false"):
            raise SandboxError(
                400, f"Invalid boolean: {raw}", code="parameter_invalid_boolean", param=name
            )
        return raw == "true"

    def mapping(self, name: str, *, required: bool = False) -> dict[str, Any] | None:
        value = self.params.get(name)
        if value is None:
            if required:
                raise SandboxError(
                    400, f"Missing required param: {name}.", code="parameter_missing", param=name
                )
            return None
        if not isinstance(value, dict):
            raise SandboxError(
                400,
                f"Invalid object: {name} must be a hash.",
                param=name,
                code="parameter_invalid_object",
            )
        return value

    def array(self, name: str, *, required: bool = False) -> list[Any] | None:
        value = self.params.get(name)
        if value is None:
            if required:
                raise SandboxError(
                    400, f"Missing required param: {name}.", code="parameter_missing", param=name
                )
            return None
        if isinstance(value, dict) and not value:
            return []
        if not isinstance(value, list):
            raise SandboxError(
                400,
                f"Invalid array: {name} must be an array.",
                param=name,
                code="parameter_invalid_array",
            )
        return value

    def metadata(self, current: dict[str, str] | None = None) -> dict[str, str]:
        """``metadata`` merged Stripe's way: an empty value removes a key."""
        out = dict(current or {})
        given = self.params.get("metadata")
        if given is None:
            return out
        if given == "":
            return {}
        if not isinstance(given, dict):
            raise SandboxError(
                400,
                "Invalid object: metadata must be a hash.",
                param="metadata",
                code="parameter_invalid_object",
            )
        for key, value in given.items():
            if value == "":
                out.pop(key, None)
            else:
                out[key] = value
        return out


# --------------------------------------------------------------------------- lists


def page(call: Call, objects: Iterable[dict[str, Any]], url: str) -> dict[str, Any]:
    """A Stripe list object, newest first.

    Reads ``limit`` (1-100, default 10), ``starting_after`` and ``ending_before``.
    """
    limit = call.integer("limit", default=10, low=1, high=100)
    assert limit is not None
    after = call.text("starting_after")
    before = call.text("ending_before")
    ordered = list(objects)
    ordered.reverse()  # creation order -> newest first
    ordered.sort(key=lambda o: -int(o.get("created") or 0))
    ids = [o.get("id") for o in ordered]
    if after is not None and before is not None:
        raise SandboxError(
            400,
            "You may only specify one of these parameters: ending_before, starting_after.",
            code="parameter_invalid",
            param="starting_after",
        )
    if after is not None:
        if after not in ids:
            raise SandboxError(
                400, f"No such object: '{after}'", code="resource_missing", param="starting_after"
            )
        start = ids.index(after) + 1
        data = ordered[start : start + limit]
        has_more = start + limit < len(ordered)
    elif before is not None:
        if before not in ids:
            raise SandboxError(
                400, f"No such object: '{before}'", code="resource_missing", param="ending_before"
            )
        end = ids.index(before)
        data = ordered[max(0, end - limit) : end]
        has_more = end - limit > 0
    else:
        data = ordered[:limit]
        has_more = len(ordered) > limit
    return {"object": "list", "url": url, "has_more": has_more, "data": data}


def expand_fields(call: Call) -> list[str]:
    value = call.params.get("expand")
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return value
    raise SandboxError(
        400,
        "Invalid array: expand must be an array of strings.",
        param="expand",
        code="parameter_invalid_array",
    )


# --------------------------------------------------------------------------- routing

Handler = Callable[[Call], Awaitable[dict[str, Any] | web.StreamResponse]]


@dataclass(frozen=True)
class Endpoint:
    method: str
    template: str
    pattern: re.Pattern[str]
    handler: Handler
    #: top-level parameter names accepted (``expand`` always is); None accepts any
    params: frozenset[str] | None


class Registry:
    """The sandbox's endpoint table."""

    def __init__(self) -> None:
        self.endpoints: list[Endpoint] = []
        #: called once for each new account, to create its read-only objects
        self.seeders: list[Callable[[Account], None]] = []

    def seeder(self, fn: Callable[[Account], None]) -> Callable[[Account], None]:
        """Register a function that fills a new account with fixed objects."""
        self.seeders.append(fn)
        return fn

    def route(
        self, method: str, template: str, params: Iterable[str] | None = ()
    ) -> Callable[[Handler], Handler]:
        """Register a handler for ``METHOD /v1/path/{id}``; ``params`` lists accepted names."""
        regex = re.sub(r"\{(\w+)\}", r"(?P<\1>[^/]+)", template)
        pattern = re.compile(f"^{regex}$")
        accepted = (
            None
            if params is None
            else frozenset(
                [*params, "expand"]
                + (["limit", "starting_after", "ending_before"] if method == "GET" else [])
            )
        )

        def decorate(handler: Handler) -> Handler:
            self.endpoints.append(Endpoint(method, template, pattern, handler, accepted))
            return handler

        return decorate

    def match(self, method: str, path: str) -> tuple[Endpoint, dict[str, str]] | None:
        for endpoint in self.endpoints:
            if endpoint.method != method:
                continue
            m = endpoint.pattern.match(path)
            if m:
                return endpoint, m.groupdict()
        return None

    def knows_path(self, path: str) -> bool:
        return any(e.pattern.match(path) for e in self.endpoints)
