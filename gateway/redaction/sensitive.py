"""What the redaction engine treats as sensitive: field names, headers and value patterns.

Field names are compared in a normal form (lower case, ``_`` and ``-`` removed), so
``exp_month``, ``expMonth`` and ``exp-month`` are one name, as are ``Set-Cookie`` and
``set_cookie``. A name is sensitive either anywhere (``cvc``) or only directly below one of
a few fields (``number`` below ``card``, not an invoice ``number``); numeric list indexes
(``request[headers][0][value]``) do not count as fields. A sensitive field hides
everything below it.

Values are found in any text whatever the field: Stripe secret, restricted and ephemeral
keys, webhook secrets, gateway keys, client secrets, Basic and Bearer credentials, card
numbers (13 to 19 digits, spaces, dashes or ``+`` between them, Luhn-valid, also inside
longer digit runs), and e-mail addresses (:func:`address_spans`, personal data).
"""

from __future__ import annotations

import re
from collections.abc import Iterable

__all__ = [
    "ALWAYS_ON",
    "AUTH",
    "CATEGORIES",
    "CLIENT_SECRET",
    "DIGITS",
    "HEADERS",
    "KEY",
    "KEYS",
    "FieldTable",
    "address_spans",
    "card_digits",
    "may_hold_address",
    "may_hold_card",
    "normalize",
]

#: every category of field names; the value patterns are always on
CATEGORIES = ("credentials", "card", "bank", "identity", "forwarding", "crypto", "personal_data")
#: categories that configuration cannot turn off
ALWAYS_ON = frozenset({"credentials", "card"})

#: headers whose values are always hidden (configuration adds more)
HEADERS = ("Authorization", "Proxy-Authorization", "Cookie", "Set-Cookie", "Stripe-Signature")

#: category -> names sensitive wherever they appear (as Stripe spells them)
_ANYWHERE: dict[str, tuple[str, ...]] = {
    "credentials": (
        *HEADERS,
        "client_secret",
        "secret",
        "signing_secret",
        "authentication_token",
        "access_token",
        "refresh_token",
        "password",
        "api_key",
        "secret_key",
        "private_key",
    ),
    "card": (
        "card_number",
        "pan",
        "primary_account_number",
        "cvc",
        "cvv",
        "cvc2",
        "cvv2",
        "card_cvc",
        "security_code",
        "card_security_code",
        "exp_month",
        "exp_year",
        "expiry_month",
        "expiry_year",
        "expiration_month",
        "expiration_year",
        "cardholder_name",
    ),
    "bank": (
        "account_number",
        "account_numbers",
        "bank_account_number",
        "routing_number",
        "iban",
        "bsb_number",
        "sort_code",
        "transit_number",
        "institution_number",
    ),
    "identity": (
        "id_number",
        "id_number_secondary",
        "personal_id_number",
        "ssn",
        "ssn_last_4",
        "dob",
        "document_number",
        "passport_number",
        "license_number",
        "tax_id",
        "vat_id",
    ),
    "crypto": ("wallet_address", "wallet_addresses", "customer_ip_address"),
    "personal_data": (
        "email",
        "receipt_email",
        "phone",
        "phone_number",
        "name",
        "first_name",
        "last_name",
        "maiden_name",
        "full_name",
        "full_name_aliases",
        "address",
        "address_line1",
        "address_line2",
        "address_city",
        "address_state",
        "address_zip",
        "address_country",
        "line1",
        "line2",
        "postal_code",
        "billing_details",
        "billing_address",
        "shipping",
        "shipping_details",
        "shipping_address",
        "tax_ids",
        "ip_address",
    ),
}

_CARDS = ("card", "cards", "card_details", "source", "external_account", "credit_card")
_DOCUMENTS = ("document", "documents", "id_document", "passport", "driving_license", "id_card")

#: (category, names, the fields they must sit directly below)
_IN_CONTEXT: tuple[tuple[str, tuple[str, ...], tuple[str, ...]], ...] = (
    ("card", ("number",), _CARDS),
    ("identity", ("number", "expiration_date", "issued_date"), _DOCUMENTS),
    # Forwarding: the body and header values sent on to the destination
    ("forwarding", ("body",), ("request", "request_details", "response_details")),
    ("forwarding", ("value",), ("headers",)),
)

#: name -> fields below which it is not personal data (a product's name, a header's name)
_NOT_HERE: dict[str, tuple[str, ...]] = {
    "name": (
        "product",
        "product_data",
        "products",
        "price",
        "price_data",
        "plan",
        "coupon",
        "promotion_code",
        "feature",
        "features",
        "shipping_rate",
        "shipping_rate_data",
        "tax_rate",
        "meter",
        "headers",
    ),
}


def normalize(name: str) -> str:
    """The form names are compared in: ``Exp-Month`` -> ``expmonth``."""
    return name.lower().replace("_", "").replace("-", "")


class FieldTable:
    """The sensitive field names of the enabled categories, ready for :meth:`classify`.

    ``fields`` are extra names (category ``"configured"``): ``name`` anywhere, or
    ``context[name]`` for ``name`` directly below ``context`` (only the last two segments of
    a longer path count). ``headers`` are extra header names, sensitive anywhere.
    """

    def __init__(
        self,
        categories: Iterable[str] = CATEGORIES,
        *,
        fields: Iterable[str] = (),
        headers: Iterable[str] = (),
    ) -> None:
        enabled = set(categories) | ALWAYS_ON
        self.anywhere: dict[str, str] = {}
        self.in_context: dict[str, dict[str, str]] = {}
        for category, names in _ANYWHERE.items():
            if category in enabled:
                self.anywhere.update((normalize(n), category) for n in names)
        for category, names, contexts in _IN_CONTEXT:
            if category in enabled:
                for n in names:
                    below = self.in_context.setdefault(normalize(n), {})
                    below.update((normalize(c), category) for c in contexts)
        for header in headers:
            self.anywhere[normalize(header)] = "configured"
        for spec in fields:
            segments = [s for s in spec.replace("]", "").split("[") if s]
            if len(segments) == 1:
                self.anywhere[normalize(segments[0])] = "configured"
            elif segments:
                below = self.in_context.setdefault(normalize(segments[-1]), {})
                below[normalize(segments[-2])] = "configured"
        self.not_here = {
            normalize(n): frozenset(normalize(c) for c in contexts)
            for n, contexts in _NOT_HERE.items()
        }
        #: normalised names whose values run to the end of a line in free text
        self.headers = frozenset(normalize(h) for h in (*HEADERS, *headers))

    def classify(self, parent: str | None, name: str) -> str | None:
        """The category of field ``name`` (normalised) directly below ``parent`` (normalised,
        ``None`` at the top), or ``None`` when it is not sensitive there."""
        if parent is not None:
            below = self.in_context.get(name)
            if below is not None:
                category = below.get(parent)
                if category is not None:
                    return category
        category = self.anywhere.get(name)
        if category is not None and parent is not None:
            exempt = self.not_here.get(name)
            if exempt is not None and parent in exempt:
                return None
        return category


# Values found in any text. Each pattern starts with a character class, so the regex engine
# skips quickly to candidate positions; the engine also checks cheap substrings first.

#: Stripe secret, restricted and ephemeral keys, gateway keys, webhook secrets
KEYS = re.compile(
    r"(?P<prefix>[srewg](?:(?<=[sre])k_(?:test|live)_|(?<=g)w_(?:test|live)_|(?<=w)hsec_))"
    r"(?P<rest>[A-Za-z0-9_]+)"
)
#: the secret half of a client secret (``pi_123_secret_abc``)
CLIENT_SECRET = re.compile(r"_secret_(?P<rest>[A-Za-z0-9_]+)")
#: Basic and Bearer credentials, in any case (``+`` and ``%20`` are spaces in a form body)
AUTH = re.compile(
    r"(?P<scheme>[Bb](?:[Aa][Ss][Ii][Cc]|[Ee][Aa][Rr][Ee][Rr]))(?P<space>(?:[ \t+]|%20)+)"
    r"(?P<token>[A-Za-z0-9/=._~-][A-Za-z0-9+/=._~-]*)"
)
#: a run of digits, spaces, dashes, ``+`` and ``%`` (``%20``) long enough to hold a card
#: number; :func:`card_digits` decides whether it does
DIGITS = re.compile(r"[0-9][0-9 +%-]{11,}[0-9]")
#: byte -> "1" for digits and separators, "0" for anything else
_TABLE = bytes(0x31 if b in b"0123456789 +%-" else 0x30 for b in range(256))


def may_hold_card(s: str) -> bool:
    """Whether ``s`` has 13 digits and separators in a row: a fast check (one C pass)
    before :data:`DIGITS`, which is slower. (``bytes.find``, not ``in``: ``in`` on bytes
    first tries its operand as an integer, and that failed try formats an exception.)"""
    return s.encode("utf-8", "surrogatepass").translate(_TABLE).find(b"1111111111111") >= 0


#: a whole key, for a Bearer token
KEY = re.compile(r"((?:sk|rk|ek|gw|pk)_(?:test|live)_|whsec_)([A-Za-z0-9_]+)")

_DOUBLED = (0, 2, 4, 6, 8, 1, 3, 5, 7, 9)
_GROUP = re.compile(r"[0-9]+")
_TRIM = 3  # digits next to a card number that do not hide it
_MAX_GROUPS = 256


#: what separates an address's local part from its domain: ``@``, or ``%40`` (URL-encoded)
_AT = re.compile(r"@|%40")
#: an address's local part, read backwards from its ``@``: word characters (any script),
#: ``.``, ``+`` (plus-addressing), ``-``, ``'``, ``%`` (URL escapes) and the rest of RFC
#: 5322's atext that is no separator in paths and queries (``! # $ * ^ { | } ~``); ``/``,
#: ``:``, ``=``, ``&``, ``?``, double quotes and white space end it, so a path,
#: ``email:'...'`` or a query's ``name=`` before it stays as written (and a local part
#: holding one of those is masked from it on: ``first/[redacted]``)
_LOCAL_BACKWARDS = re.compile(r"[\w.+%'!#$*^{|}~-]*")
#: an address's domain: dot-separated labels of word characters (any script) and ``-``, at
#: least two, the last (the top-level domain) starting with a letter, so ``1.2.3`` is not
#: one; ``a@b.com.`` leaves the last dot out, ``a@b.com1`` takes the ``1`` in
_DOMAIN = re.compile(r"(?:[\w-]+\.)+[^\W\d_][\w-]*")


def address_spans(s: str) -> list[tuple[int, int]]:
    """Where e-mail addresses are in ``s``: ``(start, end)`` of each ``local@domain``, in
    order, not overlapping.

    An address is a local part (see ``_LOCAL_BACKWARDS``; its leading ``'`` are not part
    of it) right before an ``@`` or ``%40``, and a domain with a dot whose last label
    starts with a letter (``_DOMAIN``) right after it. Not addresses: ``user@`` or
    ``user@localhost`` (no dot), ``@example.com`` (no local part), ``pkg@1.2.3`` (a
    version, not a domain), anything without ``@`` or ``%40`` (Stripe ids, URLs without
    user info). Upper case, plus-addressing, percent-escapes in the local part and
    non-ASCII letters (IDN) are addresses; so is ``pass@host.example`` in a URL's user
    info. Not looked for: an ``@`` escaped any other way (``%2540``, ``&#64;``, ``(at)``),
    or a domain's dots escaped (``%2E``).

    Linear in ``len(s)`` by construction, whatever the input: each ``@`` is found once;
    the local part is read backwards from it, only as far as the previous ``@`` (or the
    end of the previous address), and the domain forwards, stopping at the next ``@`` or
    ``%`` (not label characters), so no character is read by more than one local part or
    domain; the domain's pattern backtracks at most over its own labels.
    """
    spans: list[tuple[int, int]] = []
    floor = 0  # where the previous separator, or address, ended
    for at in _AT.finditer(s):
        sep, after = at.span()
        if sep < floor:  # "%40" inside an address already found
            continue
        domain = _DOMAIN.match(s, after)
        if domain is not None:
            run = _LOCAL_BACKWARDS.match(s[floor:sep][::-1])
            local = run[0].rstrip("'") if run is not None else ""  # (reversed: leading ')
            if local:
                spans.append((sep - len(local), domain.end()))
                floor = domain.end()
                continue
        floor = after
    return spans


def may_hold_address(s: str) -> bool:
    """Whether ``s`` holds an e-mail address (:func:`address_spans`); two substring checks
    (C loops) first, so text without ``@`` or ``%40`` costs next to nothing."""
    return ("@" in s or "%40" in s) and bool(address_spans(s))


def card_digits(run: str) -> str | None:
    """The card number (13-19 digits, Luhn-valid) in a run of digits and separators, or
    ``None``. Tried first: spans of whole digit groups, the longest first (so ``qty 2 card
    4242 4242 4242 4242`` is found); then the same spans without up to three digits at
    either end (what an escape such as ``%21`` or ``\u00e9`` leaves next to a number).
    ``%20`` counts as a separator, and also as the digits 2 and 0 (a ``%`` may just
    precede a number). Fail closed: some other 13-25 digit numbers are taken for card
    numbers too, and a run of more than 256 groups is taken for one (``""``)."""
    found = None
    if "%20" in run:
        found = _card_in(_GROUP.findall(run.replace("%20", " ")))
    return _card_in(_GROUP.findall(run)) if found is None else found


def _card_in(groups: list[str]) -> str | None:
    if len(groups) > _MAX_GROUPS:
        return ""
    spans = []  # (first group, last group, digits) of 13 to 25 digits
    for i in range(len(groups)):
        digits = ""
        for j in range(i, len(groups)):
            digits += groups[j]
            if len(digits) > 19 + 2 * _TRIM:
                break
            if len(digits) >= 13:
                spans.append((i, j, digits))
    whole = [d for _, _, d in spans if len(d) <= 19 and _luhn(d)]
    if whole:
        return max(whole, key=len)
    for i, j, digits in spans:
        n = len(digits)
        for start in range(min(_TRIM, len(groups[i]) - 1) + 1):
            for cut in range(min(_TRIM, len(groups[j]) - 1) + 1):
                if (
                    (start or cut)
                    and 13 <= n - start - cut <= 19
                    and _luhn(digits[start : n - cut])
                ):
                    return digits[start : n - cut]
    return None


def _luhn(digits: str) -> bool:
    total = 0
    for i, c in enumerate(reversed(digits)):
        d = ord(c) - 48
        total += _DOUBLED[d] if i % 2 else d
    return total % 10 == 0
