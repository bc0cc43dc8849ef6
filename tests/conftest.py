from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.fake_stripe import FakeStripe
from tests.helpers import LoopThread, Served, Stack, start_app


@pytest.fixture(scope="session")
def loop_thread() -> Iterator[LoopThread]:
    thread = LoopThread()
    yield thread
    thread.stop()


@pytest.fixture
def stack(loop_thread: LoopThread, tmp_path: Path) -> Iterator[Stack]:
    """Fake Stripe hosts (api, files, connect, meter_events); start the gateway yourself."""
    s = Stack(loop=loop_thread, tmp=tmp_path)
    s.start_upstreams()
    yield s
    s.close()


@pytest.fixture
def gateway(stack: Stack) -> Stack:
    """The gateway with default settings in front of the fake Stripe hosts."""
    stack.start_gateway()
    return stack


@pytest.fixture
def fake_api(loop_thread: LoopThread) -> Iterator[tuple[FakeStripe, Served]]:
    """One fake Stripe api host on a loopback port, for a gateway run as a subprocess."""
    fake = FakeStripe(name="api")
    served = loop_thread.run(start_app(fake.app()))
    yield fake, served
    loop_thread.run(served.runner.cleanup())


@dataclass
class RedisServer:
    """A real redis-server on a free loopback port, owned by one test."""

    url: str
    port: int
    process: subprocess.Popen[bytes]

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(5)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.fail("redis-server is not installed (scripts/test.sh installs Debian's package)")
    port = _free_port()
    process = subprocess.Popen(
        [
            binary,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(tmp_path),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    server = RedisServer(url=f"redis://127.0.0.1:{port}/0", port=port, process=process)
    deadline = time.monotonic() + 10
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5) as conn:
                conn.sendall(b"PING\r\n")
                if conn.recv(16).startswith(b"+PONG"):
                    break
        except OSError:
            pass
        if time.monotonic() > deadline or process.poll() is not None:
            server.kill()
            pytest.fail("redis-server did not start")
        time.sleep(0.05)
    yield server
    server.kill()
