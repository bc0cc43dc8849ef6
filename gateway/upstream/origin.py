"""One upstream's scheme, host and port, prepared once (the pool's key, the ``Host``
header, the TLS server name, the address of an IP literal)."""

from __future__ import annotations

import ipaddress
import socket
from typing import Any

from aiohttp.client_reqrep import ConnectionKey
from yarl import URL

__all__ = ["AddrInfo", "Origin"]

#: one address as ``getaddrinfo`` gives it
AddrInfo = tuple[int, int, int, str, tuple[Any, ...]]


class Origin:
    """Scheme, host and port of one upstream, prepared once: the pool's key, the ``Host``
    header, the TLS server name."""

    __slots__ = ("base", "host", "host_header", "key", "literal", "port", "tls")

    def __init__(self, base: str) -> None:
        url = URL(base)
        if url.scheme not in ("http", "https") or not url.raw_host:
            raise ValueError(f"not an http(s) origin: {base!r}")
        self.base = base.rstrip("/")
        self.tls = url.scheme == "https"
        self.host = url.raw_host
        self.port = url.port or (443 if self.tls else 80)
        host_header = url.host_port_subcomponent
        assert host_header is not None
        self.host_header = host_header
        self.key = ConnectionKey(self.host, self.port, self.tls, True, None, None, None)
        #: the address of an IP literal host (nothing to resolve)
        self.literal: list[AddrInfo] | None = None
        try:
            ip = ipaddress.ip_address(self.host)
        except ValueError:
            pass
        else:
            family = socket.AF_INET6 if ip.version == 6 else socket.AF_INET
            self.literal = [
                (family, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", (self.host, self.port))
            ]
