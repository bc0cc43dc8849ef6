"""Declared settings: the base of every settings model, and one translator of validation
errors into the gateway's own words.

The core config (:mod:`gateway.config`) and every plugin's ``[plugins.<name>]`` table are
pydantic models derived from :class:`Settings`: strict (``port = "8080"`` is refused, not
converted; a whole number is still accepted where a number is), closed (a key the model does
not declare is an ``unknown key``), frozen, and finite (no ``nan``, no ``inf``).
:func:`validate_settings` validates a table against such a model and turns the first problem
into a :class:`~gateway.errors.ConfigError` naming its key path
(``plugins.cache.default_ttl: must be a number > 0, not a string``); an unknown key is
reported before any other problem, so ``nmae = ...`` is a misspelt key, not a missing name.

A validator that knows a more precise path puts it in front of its message
(``raise ValueError("redis_url_env: environment variable X is not set or empty")``), or,
for a list, ``"entry 3: ..."``; the translator moves it into the path.
"""

from __future__ import annotations

import os
import re
import types
from collections.abc import Mapping
from typing import Annotated, Any, Literal, TypeVar, Union, get_args, get_origin

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    ValidationInfo,
    model_validator,
)
from pydantic.fields import FieldInfo
from pydantic_core import ErrorDetails

from gateway.errors import ConfigError
from gateway.globs import parse_rule

__all__ = [
    "NoSettings",
    "RedisSettings",
    "RouteText",
    "Settings",
    "config_error",
    "describe_bounds",
    "redis_url",
    "validate_settings",
]

M = TypeVar("M", bound=BaseModel)

_ENTRY = re.compile(r"^entry (\d+): (.*)$", re.S)
_PREFIXED = re.compile(r"^([A-Za-z_][\w.\[\]-]*): (.*)$", re.S)
_TYPES = {
    "int": "a whole number",
    "float": "a number",
    "bool": "true or false",
    "string": "a string",
    "list": "a list",
    "dict": "a table",
    "model": "a table",
    "dataclass": "a table",
}


class Settings(BaseModel):
    """Base of every settings model: strict, closed, frozen and finite."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False)


class NoSettings(Settings):
    """The settings of a plugin that takes none: any key is an ``unknown key``."""


def _check_rule(text: str) -> str:
    parse_rule(text)  # raises ValueError with the reason
    return text


#: a ``"METHOD /path/glob"`` rule (``*`` is one path segment, ``**`` any number)
RouteText = Annotated[str, AfterValidator(_check_rule)]


class RedisSettings(Settings):
    """The keys of a plugin that keeps its state in memory or in Redis."""

    backend: Literal["memory", "redis"] = Field(
        "memory", description='"memory" (per process) or "redis" (shared by every instance)'
    )
    redis_url_env: str | None = Field(
        None,
        description="environment variable holding the Redis URL (redis backend); use it "
        "when the URL has a password",
        examples=["STRIPE_GATEWAY_REDIS_URL"],
    )
    redis_url: str | None = Field(
        None,
        description="the Redis URL itself, when it has no password (redis backend)",
        examples=["redis://127.0.0.1:6379/0"],
    )
    redis_timeout: float = Field(
        0.05, gt=0, description="seconds per Redis call before Redis counts as down"
    )
    redis_breaker: float = Field(
        2.0, gt=0, description="seconds to stop asking Redis after a failure"
    )
    key_prefix: str = Field("sgw", min_length=1, description="Redis key prefix")

    _url: str | None = PrivateAttr(None)

    @property
    def url(self) -> str | None:
        """The Redis URL of the ``redis`` backend, resolved at validation."""
        return self._url

    @model_validator(mode="after")
    def _resolve_url(self, info: ValidationInfo) -> RedisSettings:
        environ: Mapping[str, str] = (info.context or {}).get("environ", os.environ)
        if self.backend != "redis":
            if self.redis_url is not None or self.redis_url_env is not None:
                raise ValueError('backend: redis_url is set but backend is not "redis"')
            return self
        self._url = redis_url(self.redis_url_env, self.redis_url, environ)
        return self


def redis_url(url_env: str | None, url: str | None, environ: Mapping[str, str]) -> str:
    """The Redis URL of a ``redis`` backend, from the ``redis_url_env`` variable or the
    ``redis_url`` key (which may not hold a password); ValueError naming the key if none."""
    if url_env is not None:
        url = environ.get(url_env, "")
        if not url:
            raise ValueError(f"redis_url_env: environment variable {url_env} is not set or empty")
    elif url is not None:
        if "@" in url:
            raise ValueError("redis_url: has a password: put the URL in redis_url_env instead")
    else:
        raise ValueError('backend: the "redis" backend needs redis_url_env or redis_url')
    if not url.startswith(("redis://", "rediss://", "unix://")):
        raise ValueError("redis_url: must start with redis://, rediss:// or unix://")
    return url


# --------------------------------------------------------------------------- validating


def validate_settings(
    model: type[M],
    data: Any,
    *,
    prefix: str = "",
    context: Mapping[str, Any] | None = None,
) -> M:
    """``data`` validated into ``model``; a :class:`ConfigError` below ``prefix`` if not."""
    try:
        return model.model_validate(data, context=dict(context or {}))
    except ValidationError as exc:
        raise config_error(exc, model, prefix) from None


def config_error(exc: ValidationError, model: type[BaseModel], prefix: str = "") -> ConfigError:
    """The first problem of ``exc`` (an unknown key before any other), in the gateway's own
    words, at its key path below ``prefix``."""
    errors = exc.errors(include_url=False)
    first = next((e for e in errors if e["type"] == "extra_forbidden"), errors[0])
    path = _loc(tuple(first["loc"]))
    reason = _reason(first, _field(model, tuple(first["loc"])))
    if first["type"] in ("value_error", "assertion_error"):
        if (m := _ENTRY.match(reason)) is not None:  # a list validator names the entry
            path = f"{path}[{m[1]}]"
            reason = m[2]
        elif (m := _PREFIXED.match(reason)) is not None:  # a model validator names the key
            path = f"{path}.{m[1]}" if path else m[1]
            reason = m[2]
    if prefix:
        path = f"{prefix}.{path}" if path and not path.startswith("[") else f"{prefix}{path}"
    return ConfigError(path, reason)


def _loc(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else part
    return out


def _number(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def describe_bounds(info: FieldInfo | None, ctx: Mapping[str, Any] | None = None) -> str:
    """A field's numeric bounds in words: ``between 0 and 65535``, ``> 0``, ``""``."""
    ctx = ctx or {}
    found: dict[str, Any] = {}
    for item in info.metadata if info is not None else ():
        for name in ("ge", "gt", "le", "lt"):
            if getattr(item, name, None) is not None:
                found[name] = getattr(item, name)
    for name in ("ge", "gt", "le", "lt"):
        if name in ctx:
            found.setdefault(name, ctx[name])
    low = (
        f">= {_number(found['ge'])}"
        if "ge" in found
        else f"> {_number(found['gt'])}"
        if "gt" in found
        else ""
    )
    high = (
        f"<= {_number(found['le'])}"
        if "le" in found
        else f"< {_number(found['lt'])}"
        if "lt" in found
        else ""
    )
    if "ge" in found and "le" in found:
        return f"between {_number(found['ge'])} and {_number(found['le'])}"
    return " and ".join(part for part in (low, high) if part)


def _kind(info: FieldInfo | None, error_type: str) -> str:
    head = error_type.split("_")[0]
    if head in ("int", "float", "bool", "string", "list", "dict", "model", "dataclass"):
        return _TYPES[head]
    annotation = _plain(info.annotation) if info is not None else None
    if annotation is int:
        return "a whole number"
    if annotation is float:
        return "a number"
    return "a value"


def _not(value: Any) -> str:
    if isinstance(value, bool):
        return f", not {str(value).lower()}"
    for kind, words in ((str, "a string"), (dict, "a table"), (list, "a list")):
        if isinstance(value, kind):
            return f", not {words}"
    if isinstance(value, float) and value != value:
        return ", not nan"
    return ""


def _reason(error: ErrorDetails, info: FieldInfo | None) -> str:
    kind = error["type"]
    ctx: Mapping[str, Any] = error.get("ctx", {})
    value = error.get("input")
    if kind == "extra_forbidden":
        return "unknown key"
    if kind == "missing":
        return "is required"
    if kind in ("value_error", "assertion_error"):
        return str(error["msg"]).removeprefix("Value error, ").removeprefix("Assertion failed, ")
    if kind == "literal_error":
        return "must be " + str(ctx.get("expected", "")).replace("'", '"')
    if kind == "string_pattern_mismatch":
        return f"must match the pattern {ctx.get('pattern')}"
    if kind in ("too_short", "string_too_short"):
        least = ctx.get("min_length", 1)
        if kind == "string_too_short":
            return "must not be empty" if least == 1 else f"must be at least {least} characters"
        return f"must have at least {least} {'entry' if least == 1 else 'entries'}"
    if kind in ("too_long", "string_too_long"):
        return f"must have at most {ctx.get('max_length')} entries"
    what = _kind(info, kind)
    bounds = describe_bounds(info, ctx) if what in ("a whole number", "a number") else ""
    if kind == "finite_number":
        return f"must be a finite number {bounds}".rstrip()
    range_error = kind in ("greater_than", "greater_than_equal", "less_than", "less_than_equal")
    text = f"must be {what}" + (f" {bounds}" if bounds else "")
    return text if range_error else text + _not(value)


def _plain(annotation: Any) -> Any:
    """``X`` out of ``X | None`` and ``Annotated[X, ...]``."""
    while True:
        origin = get_origin(annotation)
        if origin is Annotated:
            annotation = get_args(annotation)[0]
        elif origin in (Union, types.UnionType):
            args = [a for a in get_args(annotation) if a is not type(None)]
            if len(args) != 1:
                return annotation
            annotation = args[0]
        else:
            return annotation


def _field(model: type[BaseModel], loc: tuple[int | str, ...]) -> FieldInfo | None:
    """The field a validation error's location points at (``None`` for a list entry or
    a table value)."""
    current: Any = model
    info: FieldInfo | None = None
    for part in loc:
        current = _plain(current)
        origin = get_origin(current)
        if isinstance(part, str) and isinstance(current, type) and issubclass(current, BaseModel):
            info = current.model_fields.get(part)
            if info is None:
                return None
            current = info.annotation
        elif isinstance(part, str) and origin in (dict, Mapping):
            info, current = None, get_args(current)[1]
        elif isinstance(part, int) and origin in (list, tuple):
            info, current = None, get_args(current)[0]
        else:
            return None
    return info
