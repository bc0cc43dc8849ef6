from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import LoopThread, Stack


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
