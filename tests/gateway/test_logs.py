"""JSON-line sinks: the audit log's buffered sink, line for line what the structlog logger
writes, one ``write`` per event-loop iteration, failures handed back with their records."""

from __future__ import annotations

import asyncio
import io
from collections.abc import Sequence
from typing import Any

import orjson
import structlog

from gateway.logs import JsonLineSink, json_line_logger


class CountingStream(io.BytesIO):
    def __init__(self) -> None:
        super().__init__()
        self.writes = 0

    def write(self, data: Any) -> int:
        self.writes += 1
        return super().write(data)


class FullStream(io.BytesIO):
    def write(self, data: Any) -> int:
        raise OSError(28, "No space left on device")


def test_sink_lines_have_the_structlog_loggers_fields_and_order() -> None:
    stream = io.BytesIO()
    JsonLineSink(stream).emit("request", {"status": 200, "team": None})
    logged = io.BytesIO()
    json_line_logger(logged).info("request", status=200, team=None)
    sink_line, log_line = orjson.loads(stream.getvalue()), orjson.loads(logged.getvalue())
    assert list(sink_line) == list(log_line) == ["timestamp", "status", "team", "event", "level"]
    assert sink_line["timestamp"].endswith("Z") and len(sink_line["timestamp"]) == 27
    assert {k: v for k, v in sink_line.items() if k != "timestamp"} == {
        k: v for k, v in log_line.items() if k != "timestamp"
    }


def test_a_timestamp_placeholder_keeps_its_place_first() -> None:
    stream = io.BytesIO()
    JsonLineSink(stream).emit("request", {"timestamp": None, "status": 200})
    line = orjson.loads(stream.getvalue())
    assert list(line) == ["timestamp", "status", "event", "level"]
    assert line["timestamp"].endswith("Z")


def test_a_head_skips_the_processors_opens_the_line_and_keeps_its_values() -> None:
    seen: list[dict[str, Any]] = []

    def redact(logger: Any, method_name: str, event_dict: dict[str, Any]) -> dict[str, Any]:
        seen.append(dict(event_dict))
        return {k: "[redacted]" if k == "status" else v for k, v in event_dict.items()}

    stream = io.BytesIO()
    sink = JsonLineSink(stream, [redact])
    head = {"timestamp": None, "team": "billing", "method": "GET"}
    sink.emit("request", {"path": "/v1/x"}, dict(head))
    # a field named like a head key: the head's value, in the head's place
    sink.emit("request", {"path": "/v1/y", "team": "sk_live_x", "status": 1}, dict(head))
    first, second = (orjson.loads(line) for line in stream.getvalue().splitlines())
    assert list(first) == ["timestamp", "team", "method", "event", "level", "path"]
    assert first["team"] == "billing" and first["event"] == "request"
    assert list(second) == [*first, "status"] and second["team"] == "billing"
    assert second["status"] == "[redacted]" and second["path"] == "/v1/y"
    assert seen == [{"path": "/v1/x"}, {"path": "/v1/y", "team": "sk_live_x", "status": 1}]


async def test_lines_of_one_loop_iteration_go_out_in_one_write() -> None:
    stream = CountingStream()
    written: list[BaseException | None] = []
    sink = JsonLineSink(stream, on_written=lambda records, error: written.append(error))
    for status in (200, 201, 404):
        sink.emit("request", {"status": status})
    assert stream.writes == 0  # nothing written before the loop turns
    await asyncio.sleep(0)
    assert stream.writes == 1 and written == [None]
    assert [orjson.loads(line)["status"] for line in stream.getvalue().splitlines()] == [
        200,
        201,
        404,
    ]
    sink.emit("request", {"status": 500})
    sink.close()  # flushes what is queued
    assert stream.writes == 2 and written == [None, None]


async def test_a_failed_write_hands_back_every_record_with_the_error() -> None:
    calls: list[tuple[Sequence[dict[str, Any]], BaseException | None]] = []
    sink = JsonLineSink(
        FullStream(), on_written=lambda records, error: calls.append((records, error))
    )
    sink.emit("request", {"status": 200})
    sink.emit("request", {"status": 503})
    await asyncio.sleep(0)
    [(records, error)] = calls
    assert isinstance(error, OSError)
    assert [r["status"] for r in records] == [200, 503]


def test_extra_processors_run_before_the_renderer_and_may_drop_an_event() -> None:
    def redact(logger: Any, method_name: str, event_dict: dict[str, Any]) -> dict[str, Any]:
        if event_dict.get("drop"):
            raise structlog.DropEvent
        event_dict["secret"] = "[redacted]"
        return event_dict

    stream = io.BytesIO()
    sink = JsonLineSink(stream, [redact])
    sink.emit("request", {"secret": "sk_live_123"})
    sink.emit("request", {"drop": True})
    [line] = stream.getvalue().splitlines()
    assert orjson.loads(line)["secret"] == "[redacted]"


class _ShortWrites(io.RawIOBase):
    """A raw stream that takes at most ``step`` bytes a write, as a pipe or socket may."""

    def __init__(self, step: int) -> None:
        self.step = step
        self.data = bytearray()
        self.calls = 0

    def writable(self) -> bool:
        return True

    def write(self, b: Any) -> int:
        self.calls += 1
        taken = bytes(b[: self.step])
        self.data += taken
        return len(taken)


def test_a_short_write_is_followed_by_the_rest_in_order() -> None:
    stream = _ShortWrites(step=7)
    sink = JsonLineSink(stream)  # type: ignore[arg-type]
    for n in range(3):  # outside a loop: each line written at once
        sink.emit("request", {"n": n, "path": "/v1/customers/cus_1Nabcdefghij"})
    lines = [orjson.loads(line) for line in bytes(stream.data).splitlines()]
    assert [line["n"] for line in lines] == [0, 1, 2]
    assert stream.calls > 3  # every line took several writes


def test_a_sink_line_formats_its_exception_as_the_structlog_logger_does() -> None:
    try:
        raise ValueError("boom")
    except ValueError as exc:
        error = exc
    stream = io.BytesIO()
    JsonLineSink(stream).emit("failed", {"exc_info": error})
    logged = io.BytesIO()
    json_line_logger(logged).info("failed", exc_info=error)
    sink_line, log_line = orjson.loads(stream.getvalue()), orjson.loads(logged.getvalue())
    assert "exc_info" not in sink_line and "ValueError: boom" in sink_line["exception"]
    assert sink_line["exception"] == log_line["exception"]
    assert sink_line["level"] == log_line["level"] == "info"
