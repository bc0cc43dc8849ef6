"""The redaction engine: turns any log event into one with no secret or personal data in it.

:class:`Redactor` walks a value of any shape: mappings (header mappings included), lists,
lists of ``(name, value)`` pairs, strings, bytes, numbers and other objects (by their
``str``). A field whose name is sensitive in its context (:mod:`gateway.redaction.sensitive`) is
masked with everything below it. Strings are parsed when they look structured and
written back redacted (:mod:`gateway.redaction.bodies`): JSON objects and arrays, form bodies and
query strings (bracket paths, ``%5B...%5D`` keys), URLs with a query, multipart bodies
(files and file names are never shown). Other text is scanned for secret values, and for
``name=value``, ``name: value``, ``"name": "value"`` and ``('name', 'value')`` with a
sensitive name.

How values are masked is :mod:`gateway.redaction.masks`: ``sk_live_…1234``, ``…4242``,
``[redacted]`` or ``[hmac:<16 hex>]``; the same input always gives the same output.
Nothing is ever shown raw when it cannot be parsed or redaction fails: it becomes
``[unparsed N bytes]`` (fail closed). :class:`RedactingProcessor` is the structlog
processor; it never raises.
"""

from __future__ import annotations

import contextlib
import logging
import math
import re
from collections.abc import Callable, Iterable, Mapping
from datetime import date, datetime, time, timedelta
from typing import Any
from uuid import UUID

import orjson
import structlog
from structlog.typing import EventDict, WrappedLogger

from gateway.redaction.bodies import (
    ASSIGNMENT,
    Unparsed,
    decode_component,
    encode_as_sent,
    encode_component,
    parse_multipart,
    value_end,
)
from gateway.redaction.masks import MARKER, Masks, kept, unparsed
from gateway.redaction.params import MAX_DEPTH as FORM_MAX_DEPTH
from gateway.redaction.params import LoggedParams, NameConflict, nest_lists, put, split_name
from gateway.redaction.params import decode_component as form_component
from gateway.redaction.sensitive import (
    CATEGORIES,
    KEYS,
    FieldTable,
    may_hold_address,
    may_hold_card,
    normalize,
)

__all__ = ["MARKER", "RedactingProcessor", "Redactor", "unparsed"]

#: event keys ``structlog.stdlib.ProcessorFormatter`` adds and needs untouched (its
#: ``remove_processors_meta`` drops them before anything is rendered): a ``LogRecord`` under
#: one of these is passed through, anything else is redacted as usual
PASSTHROUGH = frozenset({"_record", "_from_structlog"})

_JSON_START = re.compile(r"\s*(?:\{\s*[\"}]|\[\s*[\[{\"\]])")
_TIMESTAMP = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d(?::\d\d(?:\.\d{1,9})?)?(?:Z|[+-]\d\d:?\d\d)?")
#: a form value that needs no decoding and holds no structure: scanned with the whole body
_PLAIN_VALUE = re.compile(r"[A-Za-z0-9._~*+/@!$()-]*")
#: ``filename="..."`` (or ``filename*=``) in a multipart part's head
_FILENAME = re.compile(r'(?P<param>\bfilename\*?=)(?P<name>"[^"\r\n]*"|[^;\r\n]*)', re.IGNORECASE)
#: first characters that may start JSON, a multipart body or text to take apart
#: (every character ``str.isspace`` takes for white space, as ``_text`` and ``_JSON_START``'s
#: ``\s`` do: all of them are below U+3001)
_STRUCTURED_START = frozenset("{[-") | frozenset(c for c in map(chr, range(0x3001)) if c.isspace())
_SHORT = 256
_STEP_CACHE_MAX = 4096
_SHAPES_MAX = 256
_BIG = 10**12  # numbers with at least 13 digits may be card numbers
_PLAIN = (type(None), bool, date, datetime, time, timedelta, UUID)


class Redactor:
    """Redacts values of any shape; see the module docstring. Thread-safe, built once.

    :param categories: enabled field categories (``credentials`` and ``card`` always are).
    :param fields: extra field names (``name`` or ``context[name]``).
    :param headers: extra header names.
    :param patterns: extra value patterns; every match becomes the marker.
    :param hmac_key: hash masked values with this key instead of writing the marker.
    :param max_chars: longer strings (and bytes) are not parsed: they become placeholders.
    :param max_depth: deeper nesting (structures and encodings within) becomes placeholders.
    """

    def __init__(
        self,
        *,
        categories: Iterable[str] = CATEGORIES,
        fields: Iterable[str] = (),
        headers: Iterable[str] = (),
        patterns: Iterable[re.Pattern[str]] = (),
        hmac_key: bytes | None = None,
        max_chars: int = 1 << 20,
        max_depth: int = 32,
    ) -> None:
        categories = tuple(categories)
        self.table = FieldTable(categories, fields=fields, headers=headers)
        # addresses in any text are personal data, as the value of an ``email`` field is
        self.masks = Masks(
            hmac_key=hmac_key, patterns=patterns, emails="personal_data" in categories
        )
        self.patterns = self.masks.patterns
        self.hmac_key = hmac_key
        self.max_chars = max_chars
        self.max_depth = max_depth
        #: parent -> raw key -> (category, parent below it, the key itself redacted)
        self._steps: dict[str | None, dict[str, tuple[str | None, str | None, str]]] = {}
        #: parent -> raw form key -> (category, parent below it, the key as written out)
        self._form_keys: dict[str | None, dict[str, tuple[str | None, str | None, str]]] = {}
        #: parent -> raw form name -> what the one-pass form redaction needs (_form_field)
        self._form_fields: dict[str | None, dict[str, _FormField]] = {}
        self._step_count = 0
        #: the events' key tuples seen, and whether :meth:`_short_fields` takes them
        self._shapes: dict[tuple[Any, ...], bool] = {}

    # ----------------------------------------------------------------- the event

    def event(self, event_dict: EventDict) -> EventDict:
        """A redacted copy of a structlog event dict; ``exc_info`` becomes ``exception``."""
        if "exc_info" in event_dict:
            formatted = structlog.processors.format_exc_info(None, "", dict(event_dict))
            text = formatted.get("exception")
            event_dict = {k: v for k, v in event_dict.items() if k != "exc_info"}
            if text is not None:
                old = event_dict.get("exception")
                event_dict["exception"] = text if old is None else f"{old}\n{text}"
        if not self.patterns:
            out = self._short_fields(event_dict)
            if out is None:
                out = self._fields(event_dict, [])
            if out is not None:
                return out
        return self._fields(event_dict, None)  # type: ignore[return-value]

    def _short_fields(self, event_dict: EventDict) -> EventDict | None:
        """:meth:`_fields` with a list ``plain``, and fewer checks a field, for an event whose
        keys (in this order: a *shape*) were seen before and are all written as they are,
        none of a category (the audit line's). ``None``, safe values written as they are,
        an empty dict, and short strings (at most ``_SHORT`` characters, not empty, no
        structured start) are kept; :func:`_plain`'s substring checks (``=``, ``:``,
        ``,``) run once over all the strings joined with NULs (none of the three spans a
        NUL), with :func:`_nothing_to_find`. ``None`` when a check finds something, or on
        anything this does not take at once (a new shape, another value): the caller runs
        :meth:`_fields` then, which looks at each field alone. Most audit lines pass."""
        shape = tuple(event_dict)
        known = self._shapes.get(shape)
        if not known:
            if known is None:
                self._learn_shape(shape)
            return None
        plain: list[str] = []
        for value in event_dict.values():
            if value is None:
                continue
            t = type(value)
            if t is str:
                if not value or len(value) > _SHORT or value[0] in _STRUCTURED_START:
                    return None
                plain.append(value)
            elif t is dict:
                if value:  # an empty one (a request without parameters) is written as {}
                    return None
            elif not (t is bool or (t in (int, float) and -_BIG < value < _BIG)):
                return None
        if plain:
            joined = "\x00".join(plain)
            if "=" in joined or ":" in joined or "," in joined or not _nothing_to_find(joined):
                return None
        return dict(event_dict)

    def _learn_shape(self, shape: tuple[Any, ...]) -> None:
        """Whether every key of ``shape`` is of no category and written as it is (then
        :meth:`_short_fields` takes events of this shape), remembered."""
        if len(self._shapes) >= _SHAPES_MAX:  # bounded: the error log's keys vary
            self._shapes.clear()
        plain = True
        for key in shape:
            if type(key) is not str or key in PASSTHROUGH:
                plain = False
                break
            category, _, safe_key = self._step(None, key)
            if category is not None or safe_key != key:
                plain = False
                break
        self._shapes[shape] = plain

    def _fields(self, event_dict: EventDict, plain: list[str] | None) -> EventDict | None:
        """:meth:`event` after ``exc_info``. With a list ``plain``, short strings that
        :func:`_plain` would pass for its first checks are kept as they are and put in
        it, and :func:`_nothing_to_find` checks them all at once, joined with NULs;
        ``None`` when it finds something (the caller then runs this again without the
        list, every string through :meth:`_text`)."""
        out: EventDict = {}
        failed = False
        top = self._steps.get(None) or {}
        for key, value in event_dict.items():
            try:
                step = top.get(key)
                if step is None:
                    step = self._step(None, key)
                    top = self._steps.get(None) or {}  # made, or cleared by the bound
                if value is None:  # most fields of a line: masked or not, None stays None
                    out[step[2]] = None
                    continue
                category, parent, safe_key = step
                t = type(value)
                if category is not None:
                    out[safe_key] = self._masked(value, category, 0)
                elif t is str:
                    if plain is None:
                        out[safe_key] = self._text(value, parent, 0)
                    elif value.isalpha():
                        out[safe_key] = value
                    elif (
                        len(value) <= _SHORT
                        and "=" not in value
                        and ":" not in value
                        and "," not in value
                        and value
                        and value[0] not in _STRUCTURED_START
                    ):
                        out[safe_key] = value
                        plain.append(value)
                    else:
                        out[safe_key] = self._text(value, parent, 0)
                elif value is None or t is bool or (t in (int, float) and -_BIG < value < _BIG):
                    out[safe_key] = value
                elif key in PASSTHROUGH and isinstance(value, logging.LogRecord):
                    out[key] = value
                else:
                    out[safe_key] = self._value(value, parent, 0)
            except Exception:
                out[_safe_key(key)] = unparsed(value)
                failed = True
        if plain and not _nothing_to_find("\x00".join(plain)):
            return None
        if failed:
            out["redaction_error"] = True
        return out

    # ----------------------------------------------------------------- any value

    def value(self, value: Any, parent: str | None = None) -> Any:
        """``value`` redacted, as if it sat in a field named ``parent``."""
        return self._value(value, None if parent is None else normalize(parent), 0)

    def _value(self, v: Any, parent: str | None, depth: int) -> Any:
        t = type(v)
        if t is str:
            return self._text(v, parent, depth)
        if t is int or t is float:
            return v if -_BIG < v < _BIG else self._number(v)
        if depth >= self.max_depth:
            return unparsed(v)
        if t is dict:
            return self._mapping(v, parent, depth + 1)
        if t is LoggedParams:
            return self._params(v, parent, depth)
        if t is list or t is tuple:
            return self._sequence(v, parent, depth + 1)
        if isinstance(v, _PLAIN):
            return v
        if isinstance(v, bytes | bytearray | memoryview):
            return self._bytes(bytes(v), parent, depth)
        if isinstance(v, str):
            return self._text(str.__str__(v), parent, depth)
        if isinstance(v, int | float):
            return self._value(int(v) if isinstance(v, int) else float(v), parent, depth)
        if isinstance(v, Mapping):
            return self._mapping(v, parent, depth + 1)
        if isinstance(v, list | tuple | set | frozenset):
            return self._sequence(v, parent, depth + 1)
        try:
            text = str(v)
        except Exception:
            return unparsed(v)
        return self._text(text, parent, depth)

    def _number(self, v: int | float) -> Any:
        """A number long enough to be a card number, masked when one is in it."""
        if isinstance(v, float) and not math.isfinite(v):
            return v
        text = str(v) if isinstance(v, int) else repr(v)
        masked = self.masks.cards(text)
        if masked != text:
            return masked
        if isinstance(v, int) and not -(2**63) <= v < 2**64:
            return text  # JSON renderers refuse integers wider than 64 bits
        return v

    def _mapping(self, m: Mapping[Any, Any], parent: str | None, depth: int) -> dict[str, Any]:
        out: dict[str, Any] = {}
        named = "value" in m and "name" in m and isinstance(m["name"], str)
        hidden = named and self._path(None, m["name"])[0] is not None
        steps = self._steps.get(parent)
        for key, value in m.items():
            if type(key) is not str:
                key = self._text(str(key), None, depth)
            step = steps.get(key) if steps is not None else None
            category, below, safe_key = step or self._step(parent, key)
            if category is None and hidden and key == "value":
                category = "credentials"
            if safe_key in out:  # a multidict's repeated header
                safe_key = f"{safe_key}#{len(out)}"
            t = type(value)
            if category is not None:
                out[safe_key] = self._masked(value, category, depth)
            elif t is str:
                out[safe_key] = self._text(value, below, depth)
            elif value is None or t is bool or (t in (int, float) and -_BIG < value < _BIG):
                out[safe_key] = value
            else:
                out[safe_key] = self._value(value, below, depth)
        return out

    def _sequence(self, seq: Iterable[Any], parent: str | None, depth: int) -> list[Any]:
        out: list[Any] = []
        for item in seq:
            if type(item) in (tuple, list) and len(item) == 2:
                name = item[0]
                if isinstance(name, bytes):
                    name = name.decode("latin-1")
                if isinstance(name, str):  # a (name, value) pair: a header, a form field
                    category, below, safe_name = self._path(parent, name)
                    if category is not None:
                        out.append([safe_name, self._masked(item[1], category, depth)])
                    else:
                        out.append([safe_name, self._value(item[1], below, depth)])
                    continue
            out.append(self._value(item, parent, depth))
        return out

    def _bytes(self, data: bytes, parent: str | None, depth: int) -> str:
        if len(data) > self.max_chars:
            return unparsed(data)
        if data.startswith(b"--") and b"content-disposition" in data[:4096].lower():
            try:
                return self._multipart(data, parent, depth)
            except (Unparsed, UnicodeError):
                return unparsed(data)
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            return unparsed(data)
        return self._text(text, parent, depth)

    # ----------------------------------------------------------------- request params

    def _params(self, params: LoggedParams, parent: str | None, depth: int) -> Any:
        """A request's parameters: its forms decoded and redacted in one pass, field by
        field (a field's name decides its value's fate, remembered per name); the same
        result as decoding them and walking the result, which is what happens when the
        one pass cannot decide alone (a JSON body, ``name``/``value`` pairs, a name given
        twice, lists of lists, a field name that is itself redacted)."""
        if params.extra is None:
            out: dict[str, Any] = {}
            if all(self._form_into(text, out, parent) for text in params.forms):
                return out
        return self._value(params.decode(), parent, depth)

    def _form_into(self, text: str, out: dict[str, Any], parent: str | None) -> bool:
        """Decode the form ``text`` into ``out`` as :func:`gateway.redaction.params.decode_form`
        does, each value redacted on the way; False when the walk must decide instead.

        A value with a category is masked as :meth:`_masked` masks a string. The others
        are scanned as :meth:`_text` scans them: those that might need more than the
        value scan (``=``, ``:``, ``,``, a structured start, long) one by one; the rest
        together, joined with NULs, with one check for a key, a client secret, a card
        number or a credential anywhere, and one by one only when it finds one."""
        table = self._form_fields.get(parent)
        if table is None:
            table = self._form_fields[parent] = {}
        masks = self.masks
        hmac_key = self.hmac_key
        patterns = self.patterns
        later: list[tuple[Any, Any, str, str | None, int]] = []
        scan = not patterns  # with patterns, every value goes through _text
        structured = _STRUCTURED_START
        for piece in text.split("&"):
            if not piece:
                continue
            raw_name, _, raw_value = piece.partition("=")
            field = table.get(raw_name)
            if field is None:
                field = table[raw_name] = self._form_field(parent, raw_name)
                self._count_step()
            segments, category, below, depth, walk, path = field
            if walk:  # see _form_field
                return False
            if category is not None and category != "card" and hmac_key is None:
                value = MARKER  # what the value was does not matter
            elif "%" in raw_value or "+" in raw_value:
                value = form_component(raw_value)
            else:
                value = raw_value
            if category is not None:
                if category == "card":
                    value = value if kept(value, "card") else masks.card(value)
                elif hmac_key is not None:
                    value = value if kept(value, category) else masks.marker(value)
                pending = False
            elif (
                scan
                and len(value) <= _SHORT
                and "=" not in value
                and ":" not in value
                and "," not in value
                and not (value and value[0] in structured)
            ):
                pending = True
            else:
                value = self._text(value, below, depth)
                pending = False
            # put(out, segments, value, strict=True), inline for names without "[]"
            if path is not None:
                node = out
                for key in path:
                    old = node.get(key)
                    if type(old) is dict:
                        node = old
                    elif old is None:
                        node[key] = node = {}
                    else:
                        return False  # conflicting names: the walk shows what was given
                at = segments[-1]
                if at in node:
                    return False
                node[at] = value
                container: Any = node
            else:
                try:
                    container, at = put(out, segments, value, strict=True)
                except NameConflict:  # conflicting names: the walk shows what was given
                    return False
            if pending:
                later.append((container, at, value, below, depth))
        if later and not _nothing_to_find("\x00".join([item[2] for item in later])):
            for container, at, value, below, depth in later:
                container[at] = self._text(value, below, depth)
        nest_lists(out)
        return True

    def _form_field(self, parent: str | None, raw_name: str) -> _FormField:
        """(segments, category, parent of the value, depth, walk, path) of a form field; walk:
        the walk must decide the whole form, for a name nested too deep, maybe a (name,
        value) pair (the walk hides a value by its sibling name), lists of lists (a list
        of two is such a pair), or a name that is itself redacted (names that collide
        once redacted)."""
        segments = split_name(form_component(raw_name))
        walk = len(segments) > FORM_MAX_DEPTH
        category: str | None = None
        previous_list = False
        for i, segment in enumerate(segments):
            in_list = i > 0 and (segment == "" or segment.isdigit())
            if segment == "value" or (in_list and previous_list):
                walk = True
            previous_list = in_list
            if segment == "" and i > 0:
                continue
            if category is None:
                category, parent, safe = self._step(parent, segment)
            else:
                safe = self._text(segment, None, i + 1)
            if safe != segment:
                walk = True
        path = None if "" in segments[1:] else tuple(segments[:-1])  # "": a list
        return segments, category, parent, len(segments), walk, path

    # ----------------------------------------------------------------- masking
    # ----------------------------------------------------------------- masking

    def _masked(self, v: Any, category: str, depth: int) -> Any:
        """Everything in ``v`` hidden; a mapping keeps its keys, a list its length."""
        if type(v) is str:
            text = v
        elif v is None:
            return None
        elif depth >= self.max_depth:
            return unparsed(v)
        elif isinstance(v, Mapping):
            return {
                self._text(str(k), None, depth): self._masked(x, category, depth + 1)
                for k, x in v.items()
            }
        elif isinstance(v, list | tuple | set | frozenset):
            return [self._masked(x, category, depth + 1) for x in v]
        elif isinstance(v, bytes | bytearray | memoryview):
            try:
                text = bytes(v).decode("utf-8")
            except UnicodeDecodeError:
                return unparsed(v)
        else:
            text = str(v)
        if category == "card":
            return text if kept(text, "card") else self.masks.card(text)
        if self.hmac_key is None:
            return MARKER
        return text if kept(text, category) else self.masks.marker(text)

    # ----------------------------------------------------------------- field names

    def _step(self, parent: str | None, key: str) -> tuple[str | None, str | None, str]:
        """(category, the parent of what is below, the key redacted) for one field name."""
        below = self._steps.get(parent)
        if below is None:
            below = self._steps[parent] = {}
        step = below.get(key)
        if step is None:
            name = normalize(key)
            category = self.table.classify(parent, name)
            if category is None and "[" in key:
                # brackets, well-formed or not ("a[b", "a[b]]"): the names inside count
                category = self._path(parent, key)[0]
            safe_key = self.masks.values(key) if len(key) > 3 or self.patterns else key
            child = parent if not name or name.isdigit() else name
            step = (category, child, safe_key)
            self._count_step()
            self._steps.setdefault(parent, {})[key] = step
        return step

    def _count_step(self) -> None:
        """Bound the caches: field names come from traffic."""
        self._step_count += 1
        if self._step_count > _STEP_CACHE_MAX:
            self._steps.clear()
            self._form_keys.clear()
            self._form_fields.clear()
            self._step_count = 0

    def _path(self, parent: str | None, key: str) -> tuple[str | None, str | None, str]:
        """:meth:`_step` for a bracket path (``payment_method_data[card][number]``)."""
        if "[" not in key:
            return self._step(parent, key)
        for segment in key.replace("]", "").split("["):
            category, parent, _ = self._step(parent, segment)
            if category is not None:
                return category, parent, self.masks.values(key)
        return None, parent, self.masks.values(key)

    # ----------------------------------------------------------------- strings

    def text(self, s: str, parent: str | None = None) -> str:
        """``s`` redacted, as if it sat in a field named ``parent``."""
        return self._text(s, None if parent is None else normalize(parent), 0)

    def _text(self, s: str, parent: str | None, depth: int) -> str:
        if not self.patterns and (s.isalpha() or (len(s) <= _SHORT and _plain(s))):
            return s  # nothing any step could find
        if len(s) > self.max_chars or depth >= self.max_depth:
            return unparsed(s)
        if s[10:11] == "T" and s[4:5] == "-" and _TIMESTAMP.fullmatch(s):
            return s
        first = s[:1]
        if (first == "{" or first == "[" or first.isspace()) and _JSON_START.match(s):
            try:
                obj = orjson.loads(s)
                redacted = self._value(obj, parent, depth + 1)
                # written anew even when nothing changed: a key given twice is parsed
                # once, and its other values must not pass through as written
                return orjson.dumps(redacted).decode()
            except (ValueError, TypeError):  # not JSON after all, or not writable as JSON
                return unparsed(s)
        if first == "-" and s.startswith("--") and "content-disposition" in s[:4096].lower():
            try:
                return self._multipart(s.encode("utf-8", "surrogatepass"), parent, depth)
            except (Unparsed, UnicodeError):
                return unparsed(s)
        if "=" in s and len(s.split(None, 1)) == 1:  # no white space: a form, a query
            return self._form(s, parent, depth)
        return self._free_text(s, depth)

    def _free_text(self, s: str, depth: int) -> str:
        out = self.masks.values(s)
        if "=" in out or ":" in out or "," in out:
            out = self._assignments(out, depth)
            out = self.masks.configured(out)  # again, over what the names uncovered
        return out

    def _assignments(self, s: str, depth: int) -> str:
        """Hide the values of sensitive names written as ``name=value`` and the like."""
        pieces: list[str] = []
        done = 0
        for m in ASSIGNMENT.finditer(s):
            if m.start() < done:
                continue
            key = m["qkey"] or m["key"]
            if "%" in key:
                key = decode_component(key) or key
            category, _, _ = self._path(None, key.replace(".", "["))
            if category is None:
                continue
            start = m.end()
            end = value_end(s, start, normalize(key) in self.table.headers)
            if end == start:
                continue
            value = s[start:end]
            quote = value[0] if value[0] in "\"'" and len(value) > 1 else ""
            inner = value[1:-1] if quote else value
            masked = inner if kept(inner, category) else self._masked(inner, category, depth)
            pieces += (s[done:start], quote, masked, quote)
            done = end
        if not pieces:
            return s
        pieces.append(s[done:])
        return "".join(pieces)

    def _form(self, s: str, parent: str | None, depth: int) -> str:
        """A form body or query string (``?`` and what precedes it are kept as text).

        Values of sensitive fields are masked; values with escapes or punctuation are
        decoded and redacted as text; plain values (letters, digits, ``_.~*+/@!$()-``) are
        left to the value patterns, which run once over the whole body written back (``+``
        and ``%20`` are spaces to them), each when a cheap check says it may match."""
        head = ""
        question = s.find("?", 0, s.find("="))
        if question >= 0:
            head, s = self._free_text(s[: question + 1], depth), s[question + 1 :]
        keys = self._form_keys.get(parent)
        if keys is None:
            keys = self._form_keys[parent] = {}
        lower = s.lower()
        scan_all = bool(self.patterns) or any(
            marker in lower
            for marker in ("_test_", "_live_", "whsec_", "_secret_", "basic", "bearer", "@")
        )
        quick_mask = self.hmac_key is None
        plain = _PLAIN_VALUE.fullmatch
        cached = keys.get
        pieces = s.split("&")
        for i, piece in enumerate(pieces):
            raw_key, equals, raw_value = piece.partition("=")
            step = cached(raw_key) or self._form_key(keys, parent, raw_key)
            category, below, out_key = step
            if category is not None:
                if not raw_value:
                    if out_key is not raw_key:
                        pieces[i] = out_key + equals
                elif quick_mask and category != "card":
                    pieces[i] = f"{out_key}={MARKER}"
                else:
                    value = decode_component(raw_value)
                    masked = (
                        unparsed(raw_value)
                        if value is None
                        else self._masked(value, category, depth)
                    )
                    pieces[i] = f"{out_key}={encode_component(masked)}"
            elif not raw_value or raw_value.isalnum():
                if out_key is not raw_key:
                    pieces[i] = out_key + equals + raw_value
            elif not plain(raw_value):
                value = decode_component(raw_value)
                if value is None:
                    pieces[i] = f"{out_key}={unparsed(raw_value)}"
                    continue
                redacted = self._text(value, below, depth + 1)
                if redacted != value:  # written as sent but for the masks
                    pieces[i] = f"{out_key}={encode_as_sent(raw_value, value, redacted)}"
                elif out_key is not raw_key:
                    pieces[i] = f"{out_key}={raw_value}"
            elif out_key is not raw_key:
                pieces[i] = out_key + equals + raw_value
        out = "&".join(pieces)
        # the value scan covers plain values; card numbers may also be written across escapes
        return head + (self.masks.values(out) if scan_all else self.masks.cards(out))

    def _form_key(
        self, keys: dict[str, tuple[str | None, str | None, str]], parent: str | None, raw: str
    ) -> tuple[str | None, str | None, str]:
        """(category, parent below, the key as written out) of a raw form key, cached."""
        key = decode_component(raw)
        if key is None:  # not UTF-8: hide the key and its value
            step: tuple[str | None, str | None, str] = ("credentials", parent, unparsed(raw))
        else:
            category, below, safe_key = self._path(parent, key)
            step = (category, below, raw if safe_key == key else encode_as_sent(raw, key, safe_key))
        self._count_step()
        keys[raw] = step
        return step

    def _multipart(self, data: bytes, parent: str | None, depth: int) -> str:
        """A multipart body: field values redacted by name, files never shown."""
        body = parse_multipart(data)
        contents = []
        for part in body.parts:
            category, below, _ = self._path(parent, part.name)
            if category is not None:
                contents.append(self._masked(part.content, category, depth))
            elif part.is_file:
                contents.append(unparsed(part.content))
            else:
                contents.append(self._bytes(part.content, below, depth + 1))
        heads = [_FILENAME.sub(self._filename, self.masks.values(p.head)) for p in body.parts]
        return body.write(contents, heads, self._bytes(body.epilogue, None, depth + 1))

    def _filename(self, m: re.Match[str]) -> str:
        """A file's name may name a person (``jenny-rosen-passport.png``): hidden too."""
        return f'{m["param"]}"{self.masks.marker(m["name"].strip(chr(34)))}"'


class RedactingProcessor:
    """The structlog processor: ``(logger, method_name, event_dict) -> event_dict``.

    Put it after exception formatting (``format_exc_info``) and before the renderer; an
    ``exc_info`` still present is formatted here. It never raises: a value it cannot
    redact becomes a placeholder and the event gets ``redaction_error: true``; should the
    engine itself fail, every value becomes a placeholder.
    """

    def __init__(self, redactor: Redactor) -> None:
        self.redactor = redactor
        #: called once for each line that failed closed (``redaction_error``), for metrics
        self.on_failure: Callable[[], object] | None = None

    def __call__(self, logger: WrappedLogger, method_name: str, event_dict: EventDict) -> EventDict:
        try:
            out = self.redactor.event(event_dict)
        except Exception:
            out = _all_placeholders(event_dict)
        if "redaction_error" in out and self.on_failure is not None:
            with contextlib.suppress(Exception):  # counting must never cost a log line
                self.on_failure()
        return out

    def __repr__(self) -> str:
        return "RedactingProcessor()"


def _harmless(value: Any) -> bool:
    """``None``, a bool, or a number too short to be a card number."""
    if value is None or type(value) is bool:
        return True
    return type(value) in (int, float) and -_BIG < value < _BIG


def _safe_key(key: Any) -> str:
    """An event key that can be written when its value could not be redacted."""
    plain = type(key) is str and len(key) <= 64 and key.isidentifier()
    return key if plain and not KEYS.search(key) and not may_hold_card(key) else "key"


def _all_placeholders(event_dict: EventDict) -> EventDict:
    out: EventDict = {}
    try:
        for key, value in event_dict.items():
            if key in PASSTHROUGH or _harmless(value):
                out[key] = value
            else:
                out[_safe_key(key)] = unparsed(value)
    except Exception:
        out = {"event": "[unparsed event]"}
    out["redaction_error"] = True
    return out


def _plain(s: str) -> bool:
    """Whether no step of :meth:`Redactor._text` could act on ``s``: no form or assignment
    (``=``, ``:``, ``,``), no key or client secret, no run of digits long enough for a card
    number, no e-mail address, no Basic or Bearer credential, no JSON or multipart start.
    A few substring checks (C loops), cheaper than the steps' own; most values in a log
    line pass."""
    if "=" in s or ":" in s or "," in s or not s or s[0] in _STRUCTURED_START:
        return not s
    return _nothing_to_find(s)


def _nothing_to_find(s: str) -> bool:
    """:func:`_plain`'s checks that hold for strings joined with NULs as for each of them
    (no key, client secret, card number, e-mail address or credential spans a NUL). The
    address check runs only on text with ``@`` or ``%40`` in it, and is linear."""
    if "_" in s and ("_test_" in s or "_live_" in s or "whsec_" in s or "_secret_" in s):
        return False
    if len(s) >= 13 and may_hold_card(s):
        return False
    if ("@" in s or "%40" in s) and may_hold_address(s):
        return False
    lower = s.lower()
    return "basic" not in lower and "bearer" not in lower


#: a form field's segments, category, parent of its value, depth, whether the walk must
#: decide the form (:meth:`Redactor._form_field`), and the path to the object its value
#: goes in (the segments but the last; ``None`` for a list, ``name[]``, which
#: :func:`gateway.redaction.params.put` writes)
_FormField = tuple[list[str], str | None, str | None, int, bool, tuple[str, ...] | None]
