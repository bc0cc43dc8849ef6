"""The metric names a PromQL expression reads, found without a PromQL parser.

A name is an identifier that is not a function call (followed by ``(``), not a keyword or
aggregation operator, not a label name (inside ``{...}``, ``by (...)``, ``on (...)``...)
and not part of a string, a duration, a number or a Grafana ``$variable``. Grafana's
``label_values(metric, label)`` (a dashboard variable's query, not PromQL) names its
metric first.
"""

from __future__ import annotations

import re

__all__ = ["metric_names", "template_metric_names"]

_STRINGS = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_MATCHERS = re.compile(r"\{[^{}]*\}")
_RANGES = re.compile(r"\[[^\[\]]*\]")
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)")
_OFFSET = re.compile(r"\boffset\s+-?[\w$]+|@\s*[\w.()]+")
_IDENT = re.compile(r"(?<![\w.:$])([A-Za-z_:][A-Za-z0-9_:]*)(?![\w:])(\s*\()?")
_KEYWORDS = frozenset(
    {
        "and",
        "or",
        "unless",
        "bool",
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
        "offset",
        "inf",
        "nan",
        "atan2",
    }
)
_LABEL_VALUES = re.compile(r"^\s*label_values\(\s*(.+?)\s*,\s*\w+\s*\)\s*$", re.S)


def metric_names(expr: str) -> set[str]:
    """The metric names ``expr`` selects: ``rate(a_total{x="y"}[5m]) / b`` -> {a_total, b}."""
    text = _STRINGS.sub(" ", expr)
    text = _MATCHERS.sub(" ", text)
    text = _RANGES.sub(" ", text)
    text = _GROUPING.sub(" ", text)
    text = _OFFSET.sub(" ", text)
    return {
        name for name, call in _IDENT.findall(text) if not call and name.lower() not in _KEYWORDS
    }


def template_metric_names(query: str) -> set[str]:
    """The metric names of a Grafana variable's query: ``label_values(metric, label)``
    names ``metric``; ``label_values(label)`` none; anything else is PromQL."""
    if (m := _LABEL_VALUES.match(query)) is not None:
        return metric_names(m[1])
    if re.match(r"^\s*label_values\(\s*\w+\s*\)\s*$", query):
        return set()
    return metric_names(query)
