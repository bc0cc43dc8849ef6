"""How the redaction engine masks, and the value scan it runs over every string.

:class:`Masks` writes the masks: keys keep their prefix and last four (``sk_live_…1234``,
only when at least twelve characters follow the prefix), card numbers their last four
(``…4242``), anything else the marker ``[redacted]`` or, with a key,
``[hmac:<16 hex>]`` (HMAC-SHA256 of the value, truncated), so equal values can still be
correlated. :meth:`Masks.values` finds secret values in any text (see
:mod:`gateway.redaction.sensitive`) and masks them in place; e-mail addresses, with
personal data on, get the same marker as an ``email`` field's value (the keyed hash of
the address as written, ``%40`` read as ``@``), so an address in a path or a message can
still be matched with the same address in a field.
"""

from __future__ import annotations

import hmac
import re
from collections.abc import Iterable
from typing import Any
from urllib.parse import unquote

from gateway.redaction.sensitive import (
    AUTH,
    CLIENT_SECRET,
    DIGITS,
    KEY,
    KEYS,
    address_spans,
    card_digits,
    may_hold_card,
)

__all__ = ["MARKER", "Masks", "is_mask", "kept", "unparsed"]

MARKER = "[redacted]"
# what unparsed() writes for text: "[unparsed 12 bytes]" (nothing of the value in it; its
# "[unparsed TypeName]" is not kept: any word could pass for a type name)
_MASK = re.compile(r"\[redacted\]|\[hmac:[0-9a-f]{16}\]|\[unparsed \d+ bytes\]|…\d{0,4}")
#: what a card field may hold and keep: a card mask, the marker, a keyed hash that is not
#: 16 digits (that could be a card number written to look like one)
_CARD_MASK = re.compile(r"…\d{0,4}|\[redacted\]|\[hmac:(?![0-9]{16}\])[0-9a-f]{16}\]")
_NOT_DIGITS = re.compile(r"[^0-9]+")
_DIGIT_GROUPS = re.compile(r"[0-9]+")

#: whether a string is a mask the engine wrote (a sensitive field holding one keeps it)
is_mask = _MASK.fullmatch


def kept(text: str, category: str) -> bool:
    """Whether a ``category`` field holding ``text`` keeps it: a mask the engine writes for
    that category (so redacting twice changes nothing)."""
    if category == "card":
        return _CARD_MASK.fullmatch(text) is not None
    return _MASK.fullmatch(text) is not None


def unparsed(value: Any) -> str:
    """The placeholder for a value that is never shown: ``[unparsed N bytes]``."""
    if isinstance(value, str):
        return f"[unparsed {len(value.encode('utf-8', 'replace'))} bytes]"
    if isinstance(value, bytes | bytearray | memoryview):
        return f"[unparsed {len(value)} bytes]"
    return f"[unparsed {type(value).__name__}]"


def _key_mask(prefix: str, rest: str) -> str:
    return f"{prefix}…{rest[-4:] if len(rest) >= 12 else ''}"


class Masks:
    """The masks of one redactor: the marker or a keyed hash, and extra value patterns."""

    def __init__(
        self,
        *,
        hmac_key: bytes | None = None,
        patterns: Iterable[re.Pattern[str]] = (),
        emails: bool = True,
    ) -> None:
        self.hmac_key = hmac_key
        self.patterns = tuple(patterns)
        #: whether e-mail addresses in text are masked (the ``personal_data`` category)
        self.emails = emails

    def marker(self, text: str) -> str:
        """The mask of a value that shows nothing of itself."""
        if self.hmac_key is None:
            return MARKER
        digest = hmac.digest(self.hmac_key, text.encode("utf-8", "surrogatepass"), "sha256")
        return f"[hmac:{digest.hex()[:16]}]"

    def card(self, text: str) -> str:
        """A card number (12 to 19 digits) keeps its last four; anything else the marker."""
        digits = text if text.isdigit() else _NOT_DIGITS.sub("", text)
        if 12 <= len(digits) <= 19 and digits.isascii():
            return "…" + digits[-4:]
        return self.marker(text)

    def values(self, s: str) -> str:
        """``s`` with every secret value found in it masked. Cheap substring checks decide
        which patterns run: most strings in a log line hold none of them."""
        if " " in s or "\t" in s or "+" in s or "%20" in s:
            lower = s.lower()
            if "basic" in lower or "bearer" in lower:
                s = AUTH.sub(self._auth, s)  # first: a Bearer key keeps its prefix
        if "_" in s:
            if "_test_" in s or "_live_" in s or "whsec_" in s:
                s = KEYS.sub(self._key, s)
            if "_secret_" in s:
                s = CLIENT_SECRET.sub(self._client_secret, s)
        if len(s) >= 13 and may_hold_card(s):
            s = DIGITS.sub(self._digits, s)
        if self.emails and ("@" in s or "%40" in s):
            s = self.addresses(s)
        return self.configured(s)

    def addresses(self, s: str) -> str:
        """``s`` with every e-mail address in it masked (:func:`address_spans`); a keyed
        hash is of the address percent-decoded, so ``jane%2Bx%40example.com`` in a path hashes
        as ``jane+x@example.com`` in an ``email`` field does."""
        spans = address_spans(s)
        if not spans:
            return s
        pieces: list[str] = []
        done = 0
        for start, end in spans:
            address = s[start:end]
            if "%" in address:  # as written unescaped: the hash an ``email`` field gets
                address = unquote(address)
            pieces += (s[done:start], self.marker(address))
            done = end
        pieces.append(s[done:])
        return "".join(pieces)

    def configured(self, s: str) -> str:
        """``s`` with every match of the configured patterns masked."""
        for pattern in self.patterns:
            s = pattern.sub(self._match, s)
        return s

    def cards(self, s: str) -> str:
        """``s`` with card numbers masked (the value scan's last step, alone)."""
        return DIGITS.sub(self._digits, s) if may_hold_card(s) else s

    @staticmethod
    def _key(m: re.Match[str]) -> str:
        return _key_mask(m["prefix"], m["rest"])

    @staticmethod
    def _client_secret(m: re.Match[str]) -> str:
        return _key_mask("_secret_", m["rest"])

    def _auth(self, m: re.Match[str]) -> str:
        token = m["token"]
        key = KEY.fullmatch(token)
        masked = self.marker(token) if key is None else _key_mask(key[1], key[2])
        return f"{m['scheme']}{m['space']}{masked}"

    @staticmethod
    def _digits(m: re.Match[str]) -> str:
        """A run holding a card number: its last four when they end the run."""
        run = m[0]
        card = card_digits(run)
        if card is None:
            return run
        ends = card != "" and any(
            "".join(_DIGIT_GROUPS.findall(text)).endswith(card)
            for text in (run, run.replace("%20", " "))
        )
        return "…" + (card[-4:] if ends else "")

    def _match(self, m: re.Match[str]) -> str:
        return self.marker(m[0])
