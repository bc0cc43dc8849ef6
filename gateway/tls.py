"""TLS on the public listener, for deployments without a TLS-terminating sidecar.

``[server] tls_certificate`` (a PEM file: the certificate, then its intermediates) and
``tls_key`` (its unencrypted PEM private key) turn it on. :func:`server_context` loads
them, and says which file is wrong and why in the words of a config error; the config's
validation calls it, so ``check-config``, start-up and every reload catch a bad pair.

:class:`ReloadableTls` is the context the listening socket is given. It never changes;
for each new connection it hands the handshake the *current* certificate (through its
SNI callback, which OpenSSL calls for every ``ClientHello``, with a server name or
without). :meth:`ReloadableTls.reload` loads the files again into a new context and swaps
it in whole: new connections get the new certificate, open ones keep theirs, and a pair
that does not load changes nothing.
"""

from __future__ import annotations

import ssl
from pathlib import Path

__all__ = ["ReloadableTls", "TlsError", "server_context"]


class TlsError(ValueError):
    """A certificate or key that cannot be served; the message starts with the key
    (``tls_certificate: ...`` or ``tls_key: ...``) it is about."""


def _read(key: str, path: str) -> str:
    try:
        return Path(path).read_text(encoding="ascii", errors="replace")
    except OSError as exc:
        raise TlsError(f"{key}: cannot read {path}: {exc.strerror or exc}") from None


def server_context(certificate: str, key: str) -> ssl.SSLContext:
    """A server context serving ``certificate`` (PEM chain) with ``key`` (PEM private
    key): TLS 1.2 or later, HTTP/1.1. Raises :class:`TlsError` naming the file at fault;
    never shows the key's content."""
    cert_text = _read("tls_certificate", certificate)
    if "-----BEGIN CERTIFICATE-----" not in cert_text:
        raise TlsError(f"tls_certificate: {certificate} holds no PEM certificate")
    key_text = _read("tls_key", key)
    if "PRIVATE KEY-----" not in key_text:
        raise TlsError(f"tls_key: {key} holds no PEM private key")
    if "ENCRYPTED" in key_text:
        raise TlsError(
            f"tls_key: {key} is encrypted; give the key unencrypted and protect the file "
            "with its permissions"
        )
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_alpn_protocols(["http/1.1"])
    try:
        context.load_cert_chain(certificate, key)
    except ssl.SSLError as exc:
        reason = exc.reason or str(exc)
        if "KEY_VALUES_MISMATCH" in str(exc) or "key values mismatch" in str(exc):
            raise TlsError(
                f"tls_key: {key} is not the key of the certificate {certificate}"
            ) from None
        raise TlsError(
            f"tls_certificate: {certificate} cannot be served with the key {key} ({reason})"
        ) from None
    except OSError as exc:  # read between the checks above and now: gone or unreadable
        raise TlsError(f"tls_certificate: cannot load {certificate}: {exc}") from None
    return context


class ReloadableTls:
    """The listening socket's TLS context; its certificate is swapped by :meth:`reload`."""

    def __init__(self, certificate: str, key: str) -> None:
        self.certificate = certificate
        self.key = key
        self._current = server_context(certificate, key)
        #: what the listening socket is given (it serves ``_current`` on every handshake)
        self.context = server_context(certificate, key)
        self.context.sni_callback = self._pick

    def _pick(self, connection: ssl.SSLObject, _name: str | None, _ctx: ssl.SSLContext) -> None:
        connection.context = self._current

    def reload(self) -> None:
        """Load the files again and serve them to new connections; on :class:`TlsError`
        the running certificate stays."""
        self._current = server_context(self.certificate, self.key)
