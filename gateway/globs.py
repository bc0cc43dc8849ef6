"""``METHOD /path/glob`` rules, as used by team ``allow`` lists and per-route settings.

``*`` matches within one path segment, ``**`` matches any number of segments (including
none); every other character matches itself. A rule's method is an HTTP method or ``*``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["METHODS", "RouteRule", "compile_glob", "parse_rule"]

METHODS = frozenset({"GET", "POST", "DELETE", "PUT", "PATCH", "HEAD", "OPTIONS", "*"})


def compile_glob(glob: str) -> re.Pattern[str]:
    """Compile a path glob into an anchored regular expression."""
    if not glob.startswith("/"):
        raise ValueError(f"path glob {glob!r} must start with '/'")
    out = []
    i = 0
    while i < len(glob):
        if glob.startswith("/**", i) and (i + 3 == len(glob) or glob[i + 3] == "/"):
            out.append("(?:/.*)?")  # "/**" also matches the bare parent path
            i += 3
        elif glob.startswith("**", i):
            out.append(".*")
            i += 2
        elif glob[i] == "*":
            out.append("[^/]*")
            i += 1
        else:
            out.append(re.escape(glob[i]))
            i += 1
    return re.compile("^" + "".join(out) + "$")


@dataclass(frozen=True, slots=True)
class RouteRule:
    text: str
    method: str
    pattern: re.Pattern[str]

    def matches(self, method: str, path: str) -> bool:
        return (self.method == "*" or self.method == method) and bool(self.pattern.match(path))


def parse_rule(text: str) -> RouteRule:
    """Parse ``"GET /v1/sigma/**"``; raises ValueError with a reason when malformed."""
    parts = text.split()
    if len(parts) != 2:
        raise ValueError(f"rule {text!r} must be 'METHOD /path/glob', e.g. 'GET /v1/sigma/**'")
    method, glob = parts[0].upper(), parts[1]
    if method not in METHODS:
        raise ValueError(f"rule {text!r}: unknown method {parts[0]!r}")
    return RouteRule(text=text, method=method, pattern=compile_glob(glob))
