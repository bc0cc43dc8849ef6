"""How much of a request the upstream has taken: what the time limits on sending it
(:meth:`gateway.upstream.connection.Connection.drain`, the read timer) count as progress."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import socket
import struct
import termios

from aiohttp import SocketTimeoutError

__all__ = ["WriteTimeoutError", "reset", "unsent"]

#: the ioctl for the bytes a socket's kernel has not yet seen acknowledged (Linux)
_OUTQ = getattr(termios, "TIOCOUTQ", None)
#: SO_LINGER on, for 0 s: close() then drops the send queue and resets the connection
_RESET = struct.pack("ii", 1, 0)


def unsent(transport: asyncio.BaseTransport | None) -> int:
    """How many bytes of what was written on ``transport`` the peer has not taken yet: the
    transport's buffer plus, where the kernel tells (``SIOCOUTQ`` on Linux), the socket's
    send queue; 0 once the transport's socket is closed (nothing more of it will be sent).
    Read a few times per timeout, never per write (an ioctl each).

    Duck-typed: uvloop's transports (the gateway's default loop) have
    ``get_write_buffer_size`` and a socket-like ``socket`` extra without subclassing
    ``asyncio.WriteTransport``; uvloop also goes on reporting its buffer after an abort,
    hence the look at the socket first."""
    buffered = getattr(transport, "get_write_buffer_size", None)
    if transport is None or buffered is None:
        return 0
    sock = transport.get_extra_info("socket")
    if sock is None:  # not a socket (or a transport that does not say): its buffer only
        return int(buffered())
    try:
        fd = sock.fileno()
    except (OSError, ValueError):
        fd = -1
    if fd < 0:
        return 0
    size = int(buffered())
    if _OUTQ is not None:
        with contextlib.suppress(OSError, ValueError):  # not a TCP socket: its buffer only
            size += struct.unpack("i", fcntl.ioctl(fd, _OUTQ, b"\0\0\0\0"))[0]
    return size


def reset(transport: asyncio.Transport) -> None:
    """Abort ``transport`` and reset its connection: ``abort()`` alone drops the
    transport's buffer but closes the socket as usual, and the kernel then keeps sending
    its send queue (to a peer that may never read it) for minutes, an orphaned socket."""
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError, ValueError):  # closed meanwhile: aborted anyway
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _RESET)
    transport.abort()


class WriteTimeoutError(SocketTimeoutError):
    """The upstream took none of the request body for ``read_timeout`` seconds (a
    ``TimeoutError``, so the proxy answers it as the other upstream timeouts)."""
