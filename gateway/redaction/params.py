"""Request parameters and bodies decoded for the audit line (never for the traffic).

Stripe reads form parameters with bracket nesting: ``card[number]=…`` is
``{"card": {"number": …}}``, ``expand[0]=a`` and ``expand[]=a`` are lists, and
``request[headers][][name]=…&request[headers][][value]=…`` is a list of objects (a new
object starts when the last one already has the key, as Rack does). :func:`decode_form`
builds that shape, so the redaction engine sees every value below the field names that
give it its meaning (a ``number`` below ``card``), and an operator reads
``params.card.exp_month`` rather than a query string.

Input that Stripe would refuse is still decoded, never dropped: a name given twice, or
both as a value and as an object (``a=1&a[b]=2``), becomes a list of what was given.
Names nested more than :data:`MAX_DEPTH` deep keep only a placeholder for their value.
"""

from __future__ import annotations

import binascii
import re
from typing import Any
from urllib.parse import unquote_plus

from gateway.redaction.masks import unparsed

__all__ = [
    "MAX_DEPTH",
    "LoggedParams",
    "NameConflict",
    "decode_component",
    "decode_form",
    "nest_lists",
    "put",
    "split_name",
]

#: deeper bracket nesting than this is not decoded: the value becomes a placeholder
MAX_DEPTH = 16
_BAD_PERCENT = re.compile(r"%(?![0-9A-Fa-f]{2})")
#: raw form name -> its decoded segments (names repeat from request to request); a memo of
#: a pure function, bounded, so sharing it between apps changes nothing they see
_NAMES: dict[str, list[str]] = {}
_NAMES_MAX = 4096


def decode_component(raw: str) -> str:
    """A form name or value decoded once (``+`` is a space); bytes that are not UTF-8
    become U+FFFD. What ``unquote_plus(raw, errors="replace")`` gives, several times
    faster on the usual input (through the C quoted-printable decoder)."""
    if "%" not in raw:
        return raw.replace("+", " ") if "+" in raw else raw
    if raw.isascii() and not _BAD_PERCENT.search(raw):
        qp = raw.replace("=", "=3D").replace("+", " ").replace("%", "=")
        return binascii.a2b_qp(qp).decode("utf-8", "replace")
    return unquote_plus(raw, errors="replace")


def split_name(name: str) -> list[str]:
    """``"a[b][]"`` -> ``["a", "b", ""]``; a name that is not well-formed bracket notation
    (``"a[b"``, ``"[a]"``, ``"a]b["``) is one segment, as written."""
    open_at = name.find("[")
    if open_at <= 0 or name[-1] != "]":
        return [name]
    inner = name[open_at + 1 : -1].split("][")
    if any("[" in s or "]" in s for s in inner):
        return [name]
    return [name[:open_at], *inner]


def decode_form(text: str, into: dict[str, Any] | None = None) -> dict[str, Any]:
    """The parameters of a query string or form body, nested the way Stripe reads them.

    Keys and values are percent-decoded (``+`` is a space; bytes that are not UTF-8
    become U+FFFD). Objects whose keys are exactly ``"0"`` … ``"n-1"`` become lists.
    ``into`` adds the parameters to an existing result (a query string, then a body).
    """
    out: dict[str, Any] = {} if into is None else into
    names = _NAMES
    for piece in text.split("&"):
        if not piece:
            continue
        raw_name, _, raw_value = piece.partition("=")
        known = names.get(raw_name)
        if known is None:
            known = split_name(decode_component(raw_name))
            if len(names) >= _NAMES_MAX:
                names.clear()
            names[raw_name] = known
        segments = known
        value = decode_component(raw_value)
        if len(segments) > MAX_DEPTH:
            _add(out, _joined(segments), unparsed(value))
        else:
            put(out, segments, value)
    nest_lists(out)
    return out


def _joined(segments: list[str]) -> str:
    return segments[0] + "".join(f"[{segment}]" for segment in segments[1:])


class LoggedParams:
    """A request's parameters for a log line: its query string and form body, decoded
    only when the line is written, and a JSON body's object (``extra``), merged in.

    The redaction processor decodes and redacts the forms in one pass
    (:meth:`gateway.redaction.redact.Redactor.value`); without it, the renderer writes
    :meth:`to_log` (decoded as sent).
    """

    __slots__ = ("extra", "forms")

    def __init__(self, forms: list[str], extra: dict[str, Any] | None = None) -> None:
        self.forms = forms
        self.extra = extra

    def decode(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for text in self.forms:
            decode_form(text, out)
        if self.extra:
            out.update(self.extra)
        return out

    def to_log(self) -> Any:
        """The parameters decoded, for a renderer (never raises)."""
        try:
            return self.decode()
        except Exception:
            return "[unparsed]"

    def __repr__(self) -> str:  # never the values: a repr can reach a log line
        size = sum(len(text) for text in self.forms)
        return f"LoggedParams({size} characters of forms, json={self.extra is not None})"


def _add(node: dict[str, Any], key: str, value: Any) -> tuple[Any, Any]:
    """Set ``node[key]``; a second value makes a list of both. Returns where the value
    went: ``(container, key or index)``."""
    old = node.get(key)
    if old is None:
        node[key] = value
        return node, key
    if type(old) is list:
        old.append(value)
        return old, len(old) - 1
    both = node[key] = [old, value]
    return both, 1


def _child(node: dict[str, Any], key: str) -> dict[str, Any]:
    """The object at ``node[key]``, made when missing; a value already there is kept in
    a list with the new object."""
    old = node.get(key)
    if type(old) is dict:
        return old
    new: dict[str, Any] = {}
    _add(node, key, new)
    return new


class NameConflict(ValueError):
    """Two fields of one form claim the same place (a name given twice, or both as a
    value and as an object): raised by :func:`put` with ``strict=True``."""


def put(
    node: dict[str, Any], segments: list[str], value: Any, *, strict: bool = False
) -> tuple[Any, Any]:
    """Write ``value`` under its name's ``segments`` (:func:`split_name`) into ``node``, as
    :func:`decode_form` does; returns where it went, ``(container, key or index)``, until
    :func:`nest_lists` turns numbered objects into lists. ``strict``: raise
    :class:`NameConflict` where a conflict would make a list of what was given."""
    while True:
        key = segments[0]
        rest = segments[1:]
        if not rest:
            if strict and key in node:
                raise NameConflict(key)
            return _add(node, key, value)
        if rest[0] != "":
            old = node.get(key)
            if type(old) is dict:
                node = old
            else:
                if strict and old is not None:
                    raise NameConflict(key)
                node = _child(node, key)
            segments = rest
            continue
        # key[] or key[][sub]...: a list
        items = node.get(key)
        if type(items) is not list:
            if strict and items is not None:
                raise NameConflict(key)
            items = node[key] = [] if items is None else [items]
        sub = rest[1:]
        if not sub:
            items.append(value)
            return items, len(items) - 1
        last = items[-1] if items else None
        if type(last) is not dict or _has(last, sub):
            if strict and last is not None and type(last) is not dict:
                raise NameConflict(key)
            last = {}
            items.append(last)
        node = last
        segments = sub


def _has(node: dict[str, Any], segments: list[str]) -> bool:
    for key in segments:
        if type(node) is not dict or key not in node:
            return False
        node = node[key]
    return True


def nest_lists(value: Any) -> Any:
    """``value`` with every object keyed ``"0"`` … ``"n-1"`` turned into a list."""
    if type(value) is dict:
        for key, item in value.items():
            if type(item) is dict or type(item) is list:
                value[key] = nest_lists(item)
        n = len(value)
        if n and all(k.isdigit() for k in value) and value.keys() == {str(i) for i in range(n)}:
            return [value[str(i)] for i in range(n)]
        return value
    if type(value) is list:
        return [nest_lists(item) for item in value]
    return value
