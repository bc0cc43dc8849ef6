"""The sandbox's building blocks: errors, objects, per-account state, lists, endpoints.

Resource modules (``sandbox.resources.*``) declare endpoints with
:meth:`Registry.route`; a handler gets a :class:`Call` (the decoded parameters, the path
parameters and the caller's :class:`Account`) and returns a JSON-able dict, or raises
:class:`SandboxError`, which becomes an exactly Stripe-shaped error.
"""

from __future__ import annotations

import copy
import json
import operator
import random
import re
import string
import time
from collections.abc import Awaitable, Callable, Collection, Iterable, Sequence
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from importlib import resources
from typing import Any, Protocol, TypedDict, TypeVar

from aiohttp import web

from sandbox.api_versions import API_VERSIONS

__all__ = [
    "DEFAULT_API_VERSION",
    "FOREIGN_PREFIXES",
    "Account",
    "Call",
    "Endpoint",
    "ExpandRule",
    "Hooks",
    "Registry",
    "SandboxError",
    "SandboxSettings",
    "api_version_error",
    "array_value",
    "bad_request",
    "boolean_value",
    "checked_expansions",
    "choice_list",
    "choice_value",
    "expand_fields",
    "integer_value",
    "known_api_version",
    "make_object",
    "mapping_value",
    "missing",
    "missing_param",
    "new_id",
    "one_of",
    "page",
    "positive_decimal",
    "request_log_url",
    "required",
    "string_value",
    "unknown_param",
    "wrong_type",
]

_ALPHABET = string.ascii_letters + string.digits
_T = TypeVar("_T")


@dataclass
class SandboxSettings:
    """How the sandbox behaves (not faults: see :mod:`sandbox.faults`)."""

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
    # events and webhook delivery (see sandbox.events and sandbox.delivery)
    #: ``api_version`` written on events
    api_version: str = "2026-10-28.endive"
    #: events kept per account; the oldest are forgotten first
    max_events: int = 10_000
    #: delivery attempts per event and endpoint, the first included
    webhook_attempts: int = 4
    #: seconds before the first retry; each later retry waits twice as long as the one before
    webhook_backoff: float = 60.0
    #: the longest wait between two attempts, in seconds
    webhook_backoff_max: float = 3600.0
    #: seconds one delivery attempt may take (connect, send, answer)
    webhook_timeout: float = 20.0
    #: deliveries pending at once, retries included; an event beyond it is not delivered
    webhook_max_pending: int = 10_000


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

    def body(self, request_id: str | None = None) -> dict[str, Any]:
        """The JSON answer; with ``request_id``, ``request_log_url`` leads to its log line."""
        error: dict[str, Any] = {"type": self.type, "message": self.message}
        if self.code is not None:
            error["code"] = self.code
            error["doc_url"] = f"https://stripe.com/docs/error-codes/{self.code.replace('_', '-')}"
        if self.param is not None:
            error["param"] = self.param
        if request_id:
            error["request_log_url"] = request_log_url(request_id)
        return {"error": error}


def request_log_url(request_id: str) -> str:
    """Where Stripe's Dashboard shows a test-mode request's log (as in Stripe's error bodies)."""
    return f"https://dashboard.stripe.com/test/logs/{request_id}?t={int(time.time())}"


def missing(
    resource: str, object_id: str, param: str = "id", *, status: int | None = None
) -> SandboxError:
    """``No such <resource>: '<id>'``, code ``resource_missing``: 404 for the path's id
    (``param`` ``id``), 400 for an id any other parameter names, as on Stripe."""
    if status is None:
        status = 404 if param == "id" else 400
    return SandboxError(
        status, f"No such {resource}: '{object_id}'", code="resource_missing", param=param
    )


#: the id prefix of each object type that parameters name but the sandbox does not serve (it
#: has no API to create them); see :meth:`Account.foreign`
FOREIGN_PREFIXES: dict[str, str] = {
    "customer": "cus_",
    "account": "acct_",
    "person": "person_",
    "payout": "po_",
    "verification flow": "vf_",
}


def bad_request(message: str, param: str | None = None, code: str | None = None) -> SandboxError:
    """A 400 ``invalid_request_error``."""
    return SandboxError(400, message, code=code, param=param)


def unknown_param(param: str) -> SandboxError:
    return bad_request(f"Received unknown parameter: {param}", param, "parameter_unknown")


def missing_param(param: str) -> SandboxError:
    return bad_request(f"Missing required param: {param}.", param, "parameter_missing")


_KINDS = {"string": "a string", "integer": "an integer", "object": "a hash", "array": "an array"}


def wrong_type(kind: str, param: str) -> SandboxError:
    """``Invalid <kind>: <param> must be a <kind>.``, code ``parameter_invalid_<kind>``."""
    return bad_request(
        f"Invalid {kind}: {param} must be {_KINDS[kind]}.", param, f"parameter_invalid_{kind}"
    )


# --------------------------------------------------------------------------- API versions

#: the version an answer follows when the request names none (the newest published one)
DEFAULT_API_VERSION = max(API_VERSIONS)


def known_api_version(version: str) -> bool:
    """``version`` is one Stripe has published (a ``; name_beta=v1`` suffix is allowed)."""
    return version.partition(";")[0].strip() in API_VERSIONS


def api_version_error(version: str, param: str | None = None) -> SandboxError:
    """Stripe's 400 for a version it never published (a header, or ``param``)."""
    return bad_request(f"Invalid Stripe API version: {version}", param)


# --------------------------------------------------------------------------- objects

_TEMPLATES: dict[str, dict[str, Any]] = json.loads(
    resources.files("sandbox").joinpath("templates.json").read_text()
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


class Hooks(Protocol):
    """What the sandbox app does with an account's state changes (events, timers)."""

    def emit(
        self,
        account: Account,
        event_type: str,
        obj: dict[str, Any],
        previous: dict[str, Any] | None,
    ) -> None:
        """Record an Event of ``event_type`` for ``obj`` (as the API shows it) and deliver it."""

    def at(self, account: Account, when: float, fn: Callable[[], object]) -> None:
        """Call ``fn()`` in the background once ``time.time()`` reaches ``when``."""


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
    #: set by the sandbox app once the account is seeded (seeding emits no events)
    hooks: Hooks | None = None

    def emit(
        self, event_type: str, obj: dict[str, Any], previous: dict[str, Any] | None = None
    ) -> None:
        """A state change: an Event of ``event_type`` with ``obj`` as ``data.object``.

        ``previous`` holds the changed fields' former values (``data.previous_attributes``).
        """
        if self.hooks is not None:
            self.hooks.emit(self, event_type, obj, previous)

    def at(self, when: float, fn: Callable[[], object]) -> None:
        """Run ``fn()`` (a timed transition, e.g. a report run finishing) at ``when``.

        Without an app (no hooks), transitions still happen lazily when the object is read.
        """
        if self.hooks is not None:
            self.hooks.at(self, when, fn)

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

    def find(
        self, object_type: str, value: Any, param: str, resource: str | None = None
    ) -> dict[str, Any]:
        """The object a parameter names (``value``, checked to be a string): Stripe's 400
        ``resource_missing`` naming ``param`` if this account has none."""
        object_id = string_value(value, param)
        obj = self.table(object_type).get(object_id)
        if obj is None:
            name = resource or object_type.rsplit(".", 1)[-1].replace("_", " ")
            raise missing(name, object_id, param)
        return obj

    def foreign(self, resource: str, value: Any, param: str) -> str:
        """The id of a ``resource`` of a type the sandbox does not serve (a key of
        :data:`FOREIGN_PREFIXES`, e.g. ``customer``) that a parameter names.

        The sandbox cannot create such objects, so it cannot know them all: one this account
        has (a test may add it with :meth:`add`, under ``resource`` with ``_`` for spaces)
        exists, and so does any id with the type's prefix and something after it. Any other
        value is Stripe's 400 ``resource_missing``. A handler that needs the object's data
        (a customer's address, a payment method's card) uses :meth:`find` instead.
        """
        object_id = string_value(value, param)
        if object_id in self.table(resource.replace(" ", "_")):
            return object_id
        prefix = FOREIGN_PREFIXES[resource]
        if object_id.startswith(prefix) and len(object_id) > len(prefix):
            return object_id
        raise missing(resource, object_id, param)

    def state(self, key: str, kind: type[_T]) -> _T:
        """The object of type ``kind`` a module keeps in ``private[key]`` (made on first use)."""
        value = self.private.get(key)
        if not isinstance(value, kind):
            value = kind()
            self.private[key] = value
        return value


# --------------------------------------------------------------------------- parameters
#
# Checks of one decoded value (``param`` is how an error names it, e.g. ``a[b][0]``): the
# building blocks of :class:`Call`'s readers, and for values nested in hashes and arrays.


def required(value: Any, param: str) -> Any:
    if value is None:
        raise missing_param(param)
    return value


def string_value(value: Any, param: str) -> str:
    if not isinstance(value, str):
        raise wrong_type("string", param)
    return value


def integer_value(
    value: Any, param: str, *, low: int | None = None, high: int | None = None
) -> int:
    if not isinstance(value, str):
        raise wrong_type("integer", param)
    try:
        number = int(value)
    except ValueError:
        raise bad_request(f"Invalid integer: {value}", param, "parameter_invalid_integer") from None
    if low is not None and high is not None:
        if not low <= number <= high:
            raise bad_request(
                f"Invalid integer: {param} must be between {low} and {high}.",
                param,
                "parameter_invalid_integer",
            )
    elif low is not None and number < low:
        raise bad_request(
            f"Invalid integer: {param} must be greater than or equal to {low}.",
            param,
            "parameter_invalid_integer",
        )
    elif high is not None and number > high:
        raise bad_request(
            f"Invalid integer: {param} must be less than or equal to {high}.",
            param,
            "parameter_invalid_integer",
        )
    return number


def boolean_value(value: Any, param: str) -> bool:
    if value not in ("true", "false"):
        raise bad_request(f"Invalid boolean: {value}", param, "parameter_invalid_boolean")
    return bool(value == "true")


def positive_decimal(value: Any, param: str) -> Decimal:
    text = string_value(value, param)
    try:
        number = Decimal(text)
    except InvalidOperation:
        raise bad_request(f"Invalid decimal: {text}", param, "parameter_invalid_decimal") from None
    if not number.is_finite() or number <= 0:
        raise bad_request(
            f"Invalid {param}: must be a positive number.", param, "parameter_invalid_decimal"
        )
    return number


def mapping_value(value: Any, param: str, keys: Collection[str] | None = None) -> dict[str, Any]:
    """A hash (``""`` is an empty one); with ``keys``, any other key is an unknown parameter."""
    if value == "":
        return {}
    if not isinstance(value, dict):
        raise wrong_type("object", param)
    if keys is not None:
        for key in value:
            if key not in keys:
                raise unknown_param(f"{param}[{key}]")
    return value


def array_value(value: Any, param: str) -> list[Any]:
    """An array (an empty hash is an empty array: a form cannot tell them apart)."""
    if isinstance(value, dict) and not value:
        return []
    if not isinstance(value, list):
        raise wrong_type("array", param)
    return value


def one_of(allowed: Sequence[str]) -> str:
    """Choices the way Stripe lists them: ``a``, ``a or b``, ``a, b, or c``."""
    if len(allowed) > 2:
        return ", ".join(allowed[:-1]) + f", or {allowed[-1]}"
    return " or ".join(allowed)


def choice_value(
    value: Any,
    param: str,
    allowed: Sequence[str],
    *,
    code: str | None = None,
    fold_case: bool = False,
) -> str:
    """One of ``allowed`` (compared in lower case with ``fold_case``)."""
    text = string_value(value, param)
    if fold_case:
        text = text.lower()
    if text not in allowed:
        raise bad_request(f"Invalid {param}: must be one of {one_of(allowed)}", param, code)
    return text


def choice_list(
    value: Any,
    param: str,
    allowed: Sequence[str],
    *,
    code: str | None = None,
    fold_case: bool = False,
    indexed: bool = True,
) -> list[str]:
    """An array of choices, without repeats; a bad one is ``param[i]`` (``param`` if not
    ``indexed``)."""
    out: list[str] = []
    for i, item in enumerate(array_value(value, param)):
        name = f"{param}[{i}]" if indexed else param
        text = choice_value(item, name, allowed, code=code, fold_case=fold_case)
        if text not in out:
            out.append(text)
    return out


_BOUNDS: dict[str, Callable[[int, int], bool]] = {
    "gt": operator.gt,
    "gte": operator.ge,
    "lt": operator.lt,
    "lte": operator.le,
}


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
    #: the ``expand[]`` fields asked for, already checked against the route's (see
    #: :meth:`Registry.route`): handlers test membership (``"data.file" in call.expand``)
    expand: frozenset[str] = frozenset()

    def id(self, name: str = "id") -> str:
        return self.path[name]

    def _given(self, name: str, required: bool) -> Any:
        value = self.params.get(name)
        if value is None and required:
            raise missing_param(name)
        return value

    def text(self, name: str, *, required: bool = False, default: str | None = None) -> str | None:
        value = self._given(name, required)
        return default if value is None else string_value(value, name)

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
        return default if raw is None else integer_value(raw, name, low=low, high=high)

    def boolean(self, name: str, *, default: bool | None = None) -> bool | None:
        raw = self.text(name)
        return default if raw is None else boolean_value(raw, name)

    def mapping(
        self, name: str, *, required: bool = False, keys: Collection[str] | None = None
    ) -> dict[str, Any] | None:
        """A hash parameter; with ``keys``, any other key in it is an unknown parameter."""
        value = self._given(name, required)
        if value is None:
            return None
        if not isinstance(value, dict):
            raise wrong_type("object", name)
        return mapping_value(value, name, keys)

    def array(self, name: str, *, required: bool = False) -> list[Any] | None:
        value = self._given(name, required)
        return None if value is None else array_value(value, name)

    def choice(
        self,
        name: str,
        allowed: Sequence[str],
        *,
        required: bool = False,
        default: str | None = None,
    ) -> str | None:
        """A parameter that must be one of ``allowed``."""
        value = self.text(name, required=required, default=default)
        return None if value is None else choice_value(value, name, allowed)

    def choices(self, name: str, allowed: Sequence[str], *, required: bool = False) -> list[str]:
        """An array parameter of ``allowed`` values, without repeats (``[]`` when not given).

        A required one must not be empty.
        """
        values = self.array(name, required=required)
        if values is None:
            return []
        if required and not values:
            raise missing_param(name)
        return choice_list(values, name, allowed)

    def metadata(self, current: dict[str, str] | None = None) -> dict[str, str]:
        """``metadata`` merged Stripe's way: an empty value removes a key."""
        out = dict(current or {})
        given = self.params.get("metadata")
        if given is None:
            return out
        if given == "":
            return {}
        if not isinstance(given, dict):
            raise wrong_type("object", "metadata")
        for key, value in given.items():
            if value == "":
                out.pop(key, None)
            else:
                out[key] = value
        return out

    def range_filter(self, name: str = "created") -> Callable[[int], bool]:
        """The list filter ``name``: a timestamp, or a hash of ``gt``, ``gte``, ``lt``, ``lte``."""
        raw = self.params.get(name)
        if raw is None:
            return lambda value: True
        if isinstance(raw, str):
            exact = integer_value(raw, name)
            return lambda value: value == exact
        if not isinstance(raw, dict):
            raise bad_request(
                f"Invalid {name}: must be an integer or a hash of gt, gte, lt, lte.",
                name,
                "parameter_invalid_integer",
            )
        bounds: list[tuple[Callable[[int, int], bool], int]] = []
        for op, bound in raw.items():
            test = _BOUNDS.get(op)
            if test is None:
                raise unknown_param(f"{name}[{op}]")
            bounds.append((test, integer_value(bound, f"{name}[{op}]")))
        return lambda value: all(test(value, bound) for test, bound in bounds)


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
        raise bad_request(
            "You may only specify one of these parameters: ending_before, starting_after.",
            "starting_after",
            "parameter_invalid",
        )
    if after is not None:
        if after not in ids:
            raise missing("object", after, "starting_after", status=400)
        start = ids.index(after) + 1
        data = ordered[start : start + limit]
        has_more = start + limit < len(ordered)
    elif before is not None:
        if before not in ids:
            raise missing("object", before, "ending_before", status=400)
        end = ids.index(before)
        data = ordered[max(0, end - limit) : end]
        has_more = end - limit > 0
    else:
        data = ordered[:limit]
        has_more = len(ordered) > limit
    return {"object": "list", "url": url, "has_more": has_more, "data": data}


def expand_fields(value: Any) -> list[str]:
    """The ``expand`` parameter's value as a list of field names (Stripe's 400 if it is not)."""
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


def checked_expansions(
    value: Any, allowed: Collection[str], ignored: tuple[str, ...] = ()
) -> frozenset[str]:
    """The fields ``expand`` (a decoded parameter) names, every one of them expandable.

    A field in ``allowed`` is kept; one that starts with one of ``ignored`` (an expansion
    Stripe documents that the sandbox accepts without doing it) is left out; any other is
    Stripe's 400 ``This property cannot be expanded (<field>).``
    """
    wanted: set[str] = set()
    for name in expand_fields(value):
        if name in allowed:
            wanted.add(name)
        elif not (ignored and name.startswith(ignored)):
            raise bad_request(f"This property cannot be expanded ({name}).", "expand")
    return frozenset(wanted)


# --------------------------------------------------------------------------- routing

Handler = Callable[[Call], Awaitable[dict[str, Any] | web.StreamResponse]]


class ExpandRule(TypedDict, total=False):
    """A route's ``expand`` and ``expand_ignored`` (:meth:`Registry.route`), for routes that
    share them: ``@api.route(..., **RULE)``."""

    expand: tuple[str, ...]
    expand_ignored: tuple[str, ...]


@dataclass(frozen=True)
class Endpoint:
    method: str
    template: str
    pattern: re.Pattern[str]
    handler: Handler
    #: top-level parameter names accepted (``expand`` always is); None accepts any
    params: frozenset[str] | None
    #: the fields ``expand[]`` may name (``data.<field>`` on a list); any other is a 400
    expandable: frozenset[str] = frozenset()
    #: prefixes of expansions Stripe documents that the sandbox accepts but does not do
    expand_ignored: tuple[str, ...] = ()

    def expansions(self, params: dict[str, Any]) -> frozenset[str]:
        """The request's ``expand[]`` fields, checked against this route's."""
        return checked_expansions(params.get("expand"), self.expandable, self.expand_ignored)


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
        self,
        method: str,
        template: str,
        params: Iterable[str] | None = (),
        *,
        expand: Iterable[str] = (),
        expand_ignored: Iterable[str] = (),
        lists: bool | None = None,
    ) -> Callable[[Handler], Handler]:
        """Register a handler for ``METHOD /v1/path/{id}``; ``params`` lists accepted names.

        A ``GET`` of a collection also accepts the list parameters; a retrieve (a path that
        ends with an id) does not, as on Stripe. ``lists=False`` marks a ``GET`` that is
        neither (a singleton, a download, a computed answer), which refuses them too.

        ``expand`` names the fields ``expand[]`` may ask for (``data.<field>`` on a list),
        ``expand_ignored`` prefixes of those Stripe documents but the sandbox does not do; the
        app refuses any other field before the handler runs, and gives the handler the
        accepted ones as :attr:`Call.expand`.
        """
        regex = re.sub(r"\{(\w+)\}", r"(?P<\1>[^/]+)", template)
        pattern = re.compile(f"^{regex}$")
        if lists is None:
            lists = method == "GET" and not template.endswith("}")
        accepted = (
            None
            if params is None
            else frozenset(
                [*params, "expand"]
                + (["limit", "starting_after", "ending_before"] if lists else [])
            )
        )

        def decorate(handler: Handler) -> Handler:
            self.endpoints.append(
                Endpoint(
                    method,
                    template,
                    pattern,
                    handler,
                    accepted,
                    frozenset(expand),
                    tuple(expand_ignored),
                )
            )
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
