"""The console's sign-in cookie: proof that a browser held the admin token a while ago.

The console page (``GET /`` on the admin listener, and its script and stylesheet) is served
only with this cookie; the cookie opens nothing else: every ``/admin/...`` path still needs
``Authorization: Bearer <admin token>``. A browser gets it from ``POST
/admin/console/session``, which needs that header (a plain HTML form from another site
cannot send it, so it cannot sign a browser in: no login CSRF).

The value is ``<expires>.<nonce>.<mac>``: the expiry (epoch seconds), 16 random characters,
and the HMAC-SHA256, under a random :func:`shared_key`, of the admin token's SHA-256 (the
configured ``[admin] token_sha256``), the expiry and the nonce. It holds nothing of the
token, and nobody without the key can make one. Checking it needs no server-side state, so
it works on every worker of ``serve --workers N`` (they share the key), and a cookie made
for one token stops working as soon as a reload changes ``token_sha256``: its MAC no longer
matches. The MAC is compared with :func:`hmac.compare_digest`.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

__all__ = ["COOKIE", "KEY_BYTES", "Sessions", "shared_key"]

#: the cookie's name
COOKIE = "stripe_gateway_console"
#: length of the MAC key
KEY_BYTES = 32
#: the key's file in ``serve --workers N``'s private run directory
_KEY_FILE = "console-session.key"
#: what the MAC covers first: a session of this cookie, not some other use of the key
_PURPOSE = b"stripe-gateway console session\x00"


def shared_key(run_dir: str | None) -> bytes:
    """A random MAC key: one per process, or with ``serve --workers N`` one for every
    worker, kept in ``run_dir``, the supervisor's private run directory (mode 0700, removed
    at exit; ``STRIPE_GATEWAY_RUN_DIR``), in a file only this user can read. Whichever
    worker asks first makes it: written whole to a file of its own, then linked into place,
    which fails if another worker was first (the loser reads the winner's)."""
    if not run_dir:
        return secrets.token_bytes(KEY_BYTES)
    path = Path(run_dir) / _KEY_FILE
    if not path.exists():
        mine = Path(run_dir) / f"{_KEY_FILE}.{os.getpid()}.{secrets.token_hex(4)}"
        fd = os.open(mine, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as out:
            out.write(secrets.token_bytes(KEY_BYTES))
        try:
            with contextlib.suppress(FileExistsError):
                os.link(mine, path)
        finally:
            mine.unlink()
    key = path.read_bytes()
    if len(key) != KEY_BYTES:
        raise ValueError(f"{path}: not a console session key ({len(key)} bytes)")
    return key


@dataclass(frozen=True, slots=True)
class Sessions:
    """Makes and checks the cookie's value under ``key``; a session lasts ``lifetime``
    seconds."""

    key: bytes
    lifetime: float

    def issue(self, token_sha256: str, now: float) -> tuple[str, int]:
        """A new cookie value for a browser that showed the token whose digest is
        ``token_sha256``, and when it expires (epoch seconds)."""
        expires = int(now + self.lifetime)
        body = f"{expires}.{secrets.token_urlsafe(12)}"
        return f"{body}.{self._mac(token_sha256, body)}", expires

    def valid(self, value: str | None, token_sha256: str | None, now: float) -> bool:
        """Whether ``value`` is a cookie :meth:`issue` made for ``token_sha256`` that has
        not expired (nor lasts longer than ``lifetime`` from ``now``: a lifetime shortened
        by a reload applies to cookies already out). Without a configured token, none is."""
        if not value or not token_sha256:
            return False
        body, _, mac = value.rpartition(".")
        expected = self._mac(token_sha256, body).encode()
        if not hmac.compare_digest(mac.encode("utf-8", "surrogateescape"), expected):
            return False
        expires, _, _ = body.partition(".")
        return expires.isascii() and expires.isdigit() and now < int(expires) <= now + self.lifetime

    def _mac(self, token_sha256: str, body: str) -> str:
        message = b"%s%s\x00%s" % (
            _PURPOSE,
            token_sha256.encode(),
            body.encode("utf-8", "surrogateescape"),
        )
        mac = hmac.new(self.key, message, hashlib.sha256).digest()
        return base64.urlsafe_b64encode(mac).rstrip(b"=").decode()
