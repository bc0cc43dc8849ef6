from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from aiohttp import web
from hypothesis import HealthCheck, settings

from tests.fake_stripe import FakeStripe
from tests.helpers import LoopThread, Served, Stack, WebhookReceiver, start_app

# No per-example deadline and no "too slow" health check, loaded or not: on a busy 2-core
# machine one example may stall for a second, and Hypothesis would call the test's timings
# unreliable (Flaky) though nothing in it is wrong. Tests bound their own waits.
settings.register_profile(
    "suite", deadline=None, suppress_health_check=[HealthCheck.too_slow], print_blob=True
)
settings.load_profile("suite")


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


def _start_redis(binary: str, tmp_path: Path, extra: tuple[str, ...] = ()) -> RedisServer | None:
    """One redis-server on a free loopback port, answering PING; None when it exited
    (the port was taken between choosing it and binding it: another process's).
    ``extra``: more arguments, after (so overriding) the defaults."""
    port = _free_port()
    log = tmp_path / f"redis-{port}.log"
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
            "--logfile",
            str(log),
            *extra,
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    server = RedisServer(url=f"redis://127.0.0.1:{port}/0", port=port, process=process)
    deadline = time.monotonic() + 30  # a loaded machine starts processes slowly
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as conn:
                conn.sendall(b"PING\r\n")
                if conn.recv(16).startswith(b"+PONG"):
                    return server
        except OSError:
            pass
        if process.poll() is not None:
            return None
        if time.monotonic() > deadline:
            server.kill()
            text = log.read_text() if log.exists() else ""
            pytest.fail(f"redis-server did not answer within 30 s: {text[-500:]}")
        time.sleep(0.05)


@pytest.fixture
def redis_server(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server for this test: no persistence; more arguments for it with
    ``@pytest.mark.parametrize("redis_server", [["--appendonly", "yes"]], indirect=True)``."""
    extra = tuple(getattr(request, "param", ()))
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.fail("redis-server is not installed (scripts/test.sh installs Debian's package)")
    for _ in range(5):  # a port taken by another process makes redis exit: take another
        server = _start_redis(binary, tmp_path, extra)
        if server is not None:
            break
    else:
        logs = "; ".join(p.read_text()[-300:] for p in tmp_path.glob("redis-*.log"))
        pytest.fail(f"redis-server exited 5 times on start: {logs}")
    yield server
    server.kill()


@pytest.fixture
def webhook_receivers(loop_thread: LoopThread) -> Iterator[Callable[..., WebhookReceiver]]:
    """``make(status=200, plan=None)``: a new :class:`WebhookReceiver` serving ``/hook``."""
    served: list[Served] = []

    def make(status: int = 200, plan: list[int] | None = None) -> WebhookReceiver:
        receiver = WebhookReceiver(status=status, plan=list(plan or []))
        app = web.Application()
        app.router.add_post("/hook", receiver.handle)
        running = loop_thread.run(start_app(app))
        served.append(running)
        receiver.url = running.url + "/hook"
        return receiver

    yield make
    for running in served:
        loop_thread.run(running.runner.cleanup())
