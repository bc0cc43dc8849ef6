"""Stripe's form encoding: ``a[b][c]=v``, ``expand[]=x``, ``items[0][price]=p``.

:func:`decode` turns a query string or an ``application/x-www-form-urlencoded`` body into
nested dicts and lists of strings, the way Stripe reads them.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import parse_qsl

__all__ = ["FormError", "decode"]

_PART = re.compile(r"\[([^\[\]]*)\]")


class FormError(ValueError):
    """A parameter name that cannot be decoded; ``param`` is the offending name."""

    def __init__(self, param: str, message: str) -> None:
        super().__init__(message)
        self.param = param


def _split(name: str) -> list[str]:
    base, bracket, rest = name.partition("[")
    if not bracket:
        return [name]
    rest = "[" + rest
    parts = _PART.findall(rest)
    if "".join(f"[{p}]" for p in parts) != rest or not base:
        raise FormError(name, f"Invalid parameter name: {name}")
    return [base, *parts]


def _listify(node: Any) -> Any:
    if isinstance(node, dict):
        converted = {k: _listify(v) for k, v in node.items()}
        if converted and all(isinstance(k, int) for k in converted):
            return [converted[k] for k in sorted(converted)]
        if any(isinstance(k, int) for k in converted):
            raise FormError("", "Cannot mix array indexes and names in one parameter")
        return converted
    return node


def decode(text: str | bytes) -> dict[str, Any]:
    """Decode a form body or query string into nested dicts and lists."""
    if isinstance(text, bytes):
        text = text.decode("utf-8", errors="strict")
    root: dict[Any, Any] = {}
    auto: dict[int, int] = {}  # id(container) -> next index for "[]"
    for name, value in parse_qsl(text, keep_blank_values=True):
        parts = _split(name)
        node: dict[Any, Any] = root
        for i, part in enumerate(parts):
            last = i == len(parts) - 1
            key: Any
            if part == "" and i > 0:
                key = auto.get(id(node), 0)
                auto[id(node)] = key + 1
            elif part.isdigit() and i > 0:
                key = int(part)
                auto[id(node)] = max(auto.get(id(node), 0), key + 1)
            else:
                key = part
            if last:
                node[key] = value
            else:
                child = node.get(key)
                if not isinstance(child, dict):
                    child = {}
                    node[key] = child
                node = child
    result = _listify(root)
    assert isinstance(result, dict)
    return result
