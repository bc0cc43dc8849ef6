"""How much of a request the upstream has taken: what the time limits on sending it
(:meth:`gateway.upstream.connection.Connection.drain`, the read timer) count as progress."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import struct
import termios

from aiohttp import SocketTimeoutError

__all__ = ["WriteTimeoutError", "unsent"]

#: the ioctl for the bytes a socket's kernel has not yet seen acknowledged (Linux)
_OUTQ = getattr(termios, "TIOCOUTQ", None)


def unsent(transport: asyncio.BaseTransport | None) -> int:
    """How many bytes of what was written on ``transport`` the peer has not taken yet: the
    transport's buffer plus, where the kernel tells (``SIOCOUTQ`` on Linux), the socket's
    send queue. Read a few times per timeout, never per write (an ioctl each)."""
    if not isinstance(transport, asyncio.WriteTransport):
        return 0
    size = transport.get_write_buffer_size()
    sock = transport.get_extra_info("socket")
    if _OUTQ is not None and sock is not None:
        with contextlib.suppress(OSError, ValueError):  # closed meanwhile: its buffer only
            size += struct.unpack("i", fcntl.ioctl(sock.fileno(), _OUTQ, b"\0\0\0\0"))[0]
    return size


class WriteTimeoutError(SocketTimeoutError):
    """The upstream took none of the request body for ``read_timeout`` seconds (a
    ``TimeoutError``, so the proxy answers it as the other upstream timeouts)."""
