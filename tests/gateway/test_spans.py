"""The core's instrumentation point: ``span`` blocks record into the task's tracer, and
nothing when the task has none."""

from __future__ import annotations

import asyncio

import pytest

from gateway.spans import TRACER, span
from tests.helpers import RecordingTracer


async def _traced(tracer: RecordingTracer, started: asyncio.Event, go: asyncio.Event) -> None:
    TRACER.set(tracer)  # in this task's context only
    with span("work") as traced:
        started.set()
        await go.wait()
        traced.set_attribute("outcome", "done")


async def test_a_span_block_records_in_its_own_tasks_tracer_only() -> None:
    tracer = RecordingTracer()
    started, go = asyncio.Event(), asyncio.Event()
    task = asyncio.create_task(_traced(tracer, started, go))
    await started.wait()
    with span("elsewhere") as other:  # this task has no tracer: a no-op span
        other.set_attribute("outcome", "ignored")
    assert TRACER.get() is None
    go.set()
    await task
    assert [(s.name, s.client, s.attributes, s.error, s.ended) for s in tracer.spans] == [
        ("work", False, {"outcome": "done"}, None, 1)
    ]


async def test_a_block_that_raises_ends_its_span_failed_with_the_type_only() -> None:
    tracer = RecordingTracer()
    token = TRACER.set(tracer)
    try:
        with pytest.raises(LookupError), span("work"):
            raise KeyError("cus_secret_id")
        with pytest.raises(asyncio.CancelledError), span("cancelled"):
            raise asyncio.CancelledError
    finally:
        TRACER.reset(token)
    assert [(s.name, s.error, s.ended) for s in tracer.spans] == [
        ("work", "KeyError", 1),
        ("cancelled", "CancelledError", 1),
    ]
