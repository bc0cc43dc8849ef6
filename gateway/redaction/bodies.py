"""Reading and writing the text formats the redaction engine looks into.

Form encoding (``application/x-www-form-urlencoded`` and query strings), multipart bodies,
and where a value written as ``name=value``, ``name: value``, ``"name": "value"`` or
``('name', 'value')`` ends in free text. Nothing here decides what is sensitive: see
:mod:`gateway.redaction.sensitive` and :mod:`gateway.redaction.redact`.
"""

from __future__ import annotations

import binascii
import re
from dataclasses import dataclass
from urllib.parse import quote_plus, unquote_plus

__all__ = [
    "ASSIGNMENT",
    "Multipart",
    "Part",
    "Unparsed",
    "decode_component",
    "encode_as_sent",
    "encode_component",
    "parse_multipart",
    "value_end",
]


class Unparsed(Exception):
    """A value that looked structured could not be parsed."""


# --------------------------------------------------------------------------- form encoding

_PERCENT = re.compile(r"%[0-9A-Fa-f]{2}")
_BAD_PERCENT = re.compile(r"%(?![0-9A-Fa-f]{2})")
#: what :func:`encode_component` writes as it is
_AS_IS = re.compile(r"[A-Za-z0-9 \[\]:._…*-]*")


def decode_component(raw: str) -> str | None:
    """A form key or value decoded (``+`` is a space; twice, for ``%255B``), or ``None`` if
    the bytes it encodes are not UTF-8."""
    if "%" not in raw:
        return raw.replace("+", " ") if "+" in raw else raw
    try:
        text = _unquote(raw)
        if "%" in text and _PERCENT.search(text):
            text = _unquote(text)
    except UnicodeDecodeError:
        return None
    return text


def _unquote(raw: str) -> str:
    """``unquote_plus`` with strict UTF-8, through the C quoted-printable decoder when the
    escapes are well formed (ten times faster)."""
    if raw.isascii() and not _BAD_PERCENT.search(raw):
        qp = raw.replace("=", "=3D").replace("+", " ").replace("%", "=")
        return binascii.a2b_qp(qp).decode("utf-8")
    return unquote_plus(raw, errors="strict")


def encode_component(text: str) -> str:
    """``text`` written back into a form; masks (``[redacted]``, ``…4242``) stay legible."""
    if _AS_IS.fullmatch(text):
        return text.replace(" ", "+")
    return quote_plus(text, safe="[]:/,@*").replace("%E2%80%A6", "…")


#: a run of escapes, a run of other characters, or a ``%`` that starts no escape
_RUNS = re.compile(r"(?P<escapes>(?:%[0-9A-Fa-f]{2})+)|[^%]+|%")
#: the masks the engine writes (:mod:`gateway.redaction.masks`); a key's or card's mask
#: is its ``…`` and what follows it (its prefix is text kept as sent)
_MASKS = re.compile(r"(\[redacted\]|\[hmac:[0-9a-f]{16}\]|\[unparsed \d+ bytes\]|…\w{0,4})")


#: the longest raw value :func:`encode_as_sent` writes back as sent (a query string fits)
AS_SENT_MAX = 8192


def encode_as_sent(raw: str, value: str, redacted: str) -> str:
    """``redacted`` written back into a form the way ``raw`` was sent: ``value`` is
    ``raw`` decoded (:func:`decode_component`), ``redacted`` is ``value`` with masks in
    it. The text around the masks keeps its escapes as sent, so it reads as an unmasked
    value does (``email:'[redacted]'`` for ``email:'jane@example.com'``, not
    ``email:%27[redacted]%27``); the masks are written by :func:`encode_component`.

    Decoded, what it gives is ``redacted`` again, as ``encode_component(redacted)``
    decoded is: only the escapes differ, never what is shown (each run of kept text is
    the part of ``raw`` that decodes to it; a mask never ends in ``%`` nor starts with a
    hex digit, so no escape forms across a boundary). :func:`encode_component` writes the
    whole of ``redacted`` when the runs between the masks are not found in ``value`` in
    order (the redaction rewrote more than masks: JSON written anew, a nested form), when
    ``raw`` was encoded twice (its kept runs would decode once to another text than the
    masks do), and when ``raw`` is longer than :data:`AS_SENT_MAX` (the position map costs
    a Python step per character: a hostile megabyte must not cost a second)."""
    parts = _MASKS.split(redacted)
    if len(parts) == 1 or len(raw) > AS_SENT_MAX:
        return encode_component(redacted)
    try:
        decoded, starts = _decoded_at(raw)
    except UnicodeDecodeError:
        return encode_component(redacted)
    if decoded != value:  # decoded twice (%2540), or not this raw's value
        return encode_component(redacted)
    out: list[str] = []
    done = 0  # how much of value is behind us
    last = len(parts) - 1
    for i, part in enumerate(parts):
        if i % 2:
            out.append(encode_component(part))
            continue
        if not part:
            continue
        if i == 0:
            at = 0 if value.startswith(part) else -1
        elif i == last:
            at = len(value) - len(part) if value.endswith(part) else -1
        else:
            at = value.find(part, done)
        if at < done:
            return encode_component(redacted)
        done = at + len(part)
        out.append(raw[starts[at] : starts[done]])
    return "".join(out)


def _decoded_at(text: str) -> tuple[str, list[int]]:
    """``text`` decoded once as :func:`_unquote` does, and where in ``text`` each decoded
    character starts (and its end, last). Raises ``UnicodeDecodeError`` as it does."""
    decoded: list[str] = []
    starts: list[int] = []
    for run in _RUNS.finditer(text):
        at = run.start()
        if run["escapes"] is None:
            decoded.append(run[0].replace("+", " "))
            starts.extend(range(at, run.end()))
            continue
        chars = bytes.fromhex(run[0].replace("%", "")).decode("utf-8")
        decoded.append(chars)
        for c in chars:
            starts.append(at)
            at += 3 * len(c.encode("utf-8"))
    starts.append(len(text))
    return "".join(decoded), starts


# --------------------------------------------------------------------------- multipart

_PART_NAME = re.compile(rb'\bname="([^"]*)"', re.IGNORECASE)
_PART_FILE = re.compile(rb"\bfilename\*?=", re.IGNORECASE)


@dataclass(frozen=True, slots=True)
class Part:
    head: str  #: the part's header lines, with the line break before them
    name: str  #: the form field name (``""`` when there is none)
    is_file: bool
    content: bytes


@dataclass(frozen=True, slots=True)
class Multipart:
    boundary: str
    parts: list[Part]
    epilogue: bytes  #: after the closing ``--boundary--``, with its line break

    def write(self, contents: list[str], head: list[str], epilogue: str) -> str:
        """The body with each part's head and content replaced by the given text."""
        out = [f"--{self.boundary}"]
        for part_head, content in zip(head, contents, strict=True):
            out.append(f"{part_head}\r\n\r\n{content}\r\n--{self.boundary}")
        return "".join(out) + "--" + epilogue


def parse_multipart(data: bytes) -> Multipart:
    """Split a ``multipart/form-data`` body; raises :class:`Unparsed` (or ``UnicodeError``)
    when it is not one: no boundary line, a preamble, a part without a blank line, a
    missing closing boundary."""
    eol = data.find(b"\n")
    if eol < 0:
        raise Unparsed
    delimiter = data[:eol].rstrip(b"\r")
    boundary = delimiter[2:].decode("ascii")
    if not delimiter.startswith(b"--") or not boundary or len(boundary) > 200:
        raise Unparsed
    chunks = data.split(delimiter)
    if chunks[0] != b"" or not chunks[-1].startswith(b"--"):
        raise Unparsed
    parts = []
    for chunk in chunks[1:-1]:
        head, blank, body = chunk.partition(b"\r\n\r\n")
        if not blank or not body.endswith(b"\r\n"):
            raise Unparsed
        name = _PART_NAME.search(head)
        parts.append(
            Part(
                head=head.decode("utf-8"),
                name=name[1].decode("utf-8") if name else "",
                is_file=_PART_FILE.search(head) is not None,
                content=body[:-2],
            )
        )
    return Multipart(boundary=boundary, parts=parts, epilogue=chunks[-1][2:])


# --------------------------------------------------------------------------- free text

_KEYCHARS = r"[A-Za-z_][A-Za-z0-9_.\-\[\]%]*+"
#: ``name=``, ``name:``, ``"name":``, ``'name',`` in free text: ``key`` or ``qkey`` (quoted)
ASSIGNMENT = re.compile(
    rf"(?<![A-Za-z0-9_.\-\[\]%])"
    rf"(?:(?P<q>[\"'])(?P<qkey>{_KEYCHARS})(?P=q)\s*[=:,]|(?P<key>{_KEYCHARS})\s*[=:])[ \t]*"
)
_UNQUOTED_END = re.compile(r"[\s&,;)}\]>]")
_CLOSING = {"{": "}", "[": "]"}


def value_end(s: str, start: int, to_end_of_line: bool) -> int:
    """Where the value starting at ``start`` ends: a quoted string, a bracketed structure,
    the rest of the line (header values) or a bare token."""
    if start >= len(s):
        return start
    c = s[start]
    if c in "\"'":
        i = start + 1
        while i < len(s):
            if s[i] == "\\":
                i += 2
                continue
            if s[i] == c:
                return i + 1
            i += 1
        return len(s)
    if c in _CLOSING:
        return _bracket_end(s, start)
    if to_end_of_line:
        end = s.find("\n", start)
        return len(s) if end < 0 else end
    m = _UNQUOTED_END.search(s, start)
    return len(s) if m is None else m.start()


def _bracket_end(s: str, start: int) -> int:
    stack: list[str] = []
    quote = ""
    i = start
    while i < len(s):
        c = s[i]
        if quote:
            if c == "\\":
                i += 1
            elif c == quote:
                quote = ""
        elif c in "\"'":
            quote = c
        elif c in _CLOSING:
            stack.append(_CLOSING[c])
        elif stack and c == stack[-1]:
            stack.pop()
            if not stack:
                return i + 1
        i += 1
    return len(s)
