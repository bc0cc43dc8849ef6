"""Log pipelines owned by one app: the error log and JSON-line sinks.

Nothing here configures structlog globally; each app builds its own loggers so several
apps (and tests) can live in one process without stepping on each other.

Two kinds of sink:

* :func:`json_line_logger`, a structlog logger that writes each line as it is logged (the
  gateway's error log: rare lines that must not wait);
* :class:`JsonLineSink`, the same processor chain and the same lines without structlog's
  logger machinery, buffered and written once per event-loop iteration (the audit log: one
  line per request, so its cost counts).
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any, BinaryIO

import orjson
import structlog
from structlog.typing import EventDict, Processor

__all__ = [
    "WORKER_ENV",
    "JsonLineSink",
    "json_line_logger",
    "make_error_logger",
    "process_fields",
    "utc_timestamp",
]

#: set by the supervisor (``serve --workers N``) in each worker's environment: its index
WORKER_ENV = "STRIPE_GATEWAY_WORKER"

#: what a sink calls after each write: the records written, and the error if it failed
OnWritten = Callable[[Sequence[dict[str, Any]], BaseException | None], None]


def json_default(obj: Any) -> Any:
    """What the renderers write for a value JSON has no type for: a value that knows its
    log form (:class:`gateway.redaction.params.LoggedParams`, when no redaction ran before), else
    its ``str``."""
    to_log = getattr(obj, "to_log", None)
    if to_log is not None and callable(to_log):
        return to_log()
    return str(obj)


def _dumps(obj: Any, **_: Any) -> bytes:
    return orjson.dumps(obj, default=json_default)


class _UtcTimestamp:
    """``timestamp``: ISO 8601 UTC with microseconds and ``Z`` (structlog's
    ``TimeStamper(fmt="iso", utc=True)`` writes the same text), formatting the date and
    time only once a second. It is the line's first key: an event that already has a
    ``timestamp`` key (a placeholder) keeps its place, any other gets it in front."""

    __slots__ = ("_prefix", "_second")

    def __init__(self) -> None:
        self._second = -1
        self._prefix = ""

    def __call__(self, logger: Any, method_name: str, event_dict: EventDict) -> EventDict:
        micros = time.time_ns() // 1000
        second = micros // 1_000_000
        if second != self._second:
            self._prefix = time.strftime("%Y-%m-%dT%H:%M:%S.", time.gmtime(second))
            self._second = second
        # str(1_000_000 + n)[1:] is n zero-padded to 6 digits, cheaper than a format spec
        stamp = self._prefix + str(1_000_000 + micros % 1_000_000)[1:] + "Z"
        if "timestamp" in event_dict:  # a place kept for it (the audit line's first key)
            event_dict["timestamp"] = stamp
            return event_dict
        return {"timestamp": stamp, **event_dict}  # the first key of every line


def utc_timestamp() -> Processor:
    """A processor adding ``timestamp`` (ISO 8601, UTC, ``Z``), cheaper than structlog's."""
    return _UtcTimestamp()


def _format_exc_info(logger: Any, method_name: str, event_dict: EventDict) -> EventDict:
    """structlog's ``format_exc_info``, skipped (cheaply) when there is no ``exc_info``."""
    if "exc_info" not in event_dict:
        return event_dict
    return structlog.processors.format_exc_info(logger, method_name, event_dict)


def _pipeline(extra_processors: Sequence[Processor] | None) -> list[Processor]:
    """ISO UTC timestamp → level → exception formatting → ``extra_processors``."""
    return [
        utc_timestamp(),
        structlog.processors.add_log_level,
        _format_exc_info,
        *(extra_processors or ()),
    ]


def json_line_logger(
    stream: BinaryIO, extra_processors: list[Processor] | None = None
) -> structlog.typing.FilteringBoundLogger:
    """A logger writing one JSON object per line to a binary stream, line by line.

    The pipeline: ISO UTC timestamp → level → exception formatting → ``extra_processors``
    (redaction goes here, in front of the renderer) → orjson renderer.
    """
    return structlog.wrap_logger(  # type: ignore[no-any-return]
        structlog.BytesLogger(stream),
        processors=[
            *_pipeline(extra_processors),
            structlog.processors.JSONRenderer(serializer=_dumps),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(0),
        cache_logger_on_first_use=True,
    )


class JsonLineSink:
    """One JSON object per line on a binary stream, written once per event-loop iteration.

    :meth:`emit` runs the event through the same processor chain as
    :func:`json_line_logger` at once, but with the timestamp last (level → exception
    formatting → ``extra_processors`` → ISO UTC timestamp → orjson: the gateway's own clock
    reading needs no redaction; it is still the line's first key), so a processor's or the
    renderer's error is raised to the caller; the rendered line is kept and every line of
    one loop iteration goes to the stream in one ``write`` (then ``flush``), scheduled
    with ``loop.call_soon``. Outside a running loop a line is written at once.

    After each write ``on_written(records, error)`` is called: ``((), None)`` when it
    succeeded; when it failed, the processed event dicts that write carried (read back from
    their lines) and the ``OSError``/``ValueError`` (the lines are then dropped: the
    callback decides where the records go). Only the rendered lines are kept until the
    write, not the event dicts.

    ``max_write`` (bytes, 0 = no limit) splits a batch into ``write`` calls of whole lines
    no larger than that (a longer line goes alone): set it to ``select.PIPE_BUF`` when
    several processes share one pipe, so their lines never interleave.
    """

    def __init__(
        self,
        stream: BinaryIO,
        extra_processors: Sequence[Processor] | None = None,
        *,
        on_written: OnWritten | None = None,
        max_write: int = 0,
    ) -> None:
        self._stream: BinaryIO | None = stream
        self._unwritable = "the sink is closed"
        # the timestamp is stamped after the processors: it is the gateway's own clock
        # reading, so no processor (redaction) needs to look at it
        # level -> exception formatting -> extra_processors; the first two are done inline
        # (every line is an info line; most have no exc_info): a call each saved a line
        self._extra = tuple(extra_processors or ())
        self._stamp = _UtcTimestamp()
        self._on_written = on_written
        self._lines: list[bytes] = []
        self._max_write = max_write

    def emit(
        self, event: str, fields: dict[str, Any], head: dict[str, Any] | None = None
    ) -> dict[str, Any] | None:
        """Queue ``fields`` (taken over, not copied) as one ``info`` line named ``event``;
        returns the processed fields the line was rendered from (``None`` when dropped).

        ``head``: fields that skip the processors (taken over too), first in the line
        (``timestamp`` first of all) and never replaced by a key of ``fields``. Only for
        values the caller knows the processors would leave as they are (the audit plugin's
        gateway-owned fields of a fixed shape, checked against the processors at start-up);
        ``event`` and ``level`` then go in the head as well.

        A processor may drop the event by raising ``structlog.DropEvent``, as in structlog.
        """
        if head is None:
            fields["event"] = event
            fields["level"] = "info"  # structlog's add_log_level
        else:  # the event's name and level are the caller's constants: in the head too
            head["event"] = event
            head["level"] = "info"
        try:
            if "exc_info" in fields:
                fields = _format_exc_info(None, "info", fields)  # type: ignore[assignment]
            for processor in self._extra:
                fields = processor(None, "info", fields)  # type: ignore[assignment]
        except structlog.DropEvent:
            return None
        if head is not None:  # head's keys first and with head's values
            if head.keys().isdisjoint(fields):  # as a rule: the head is taken over
                head.update(fields)
                fields = head
            else:  # a field named like a head key keeps the head's value
                merged = {**head, **fields}
                merged.update(head)
                fields = merged
        fields = self._stamp(None, "info", fields)  # type: ignore[assignment]
        line = orjson.dumps(fields, default=json_default, option=orjson.OPT_APPEND_NEWLINE)
        if not self._lines:
            try:
                asyncio.get_running_loop().call_soon(self.flush)
            except RuntimeError:  # no running loop: nothing would flush it later
                self._lines.append(line)
                self.flush()
                return fields
        self._lines.append(line)
        return fields

    def flush(self) -> None:
        """Write the queued lines now (a no-op when there are none)."""
        if not self._lines:
            return
        lines, self._lines = self._lines, []
        try:
            if self._stream is None:
                raise ValueError(self._unwritable)
            data = b"".join(lines)
            if 0 < self._max_write < len(data):
                for part in _whole_lines(lines, self._max_write):
                    _write_all(self._stream, part)
            else:
                _write_all(self._stream, data)
        except (OSError, ValueError) as exc:
            if self._on_written is not None:
                self._on_written([orjson.loads(line) for line in lines], exc)
            return
        if self._on_written is not None:
            self._on_written((), None)

    def set_stream(self, stream: BinaryIO | None, reason: str = "the sink is closed") -> None:
        """Write to ``stream`` from now on, the lines still queued included (the old stream
        is not closed). ``None``: every write fails, with ``reason``, until a stream is set;
        the failed lines go to ``on_written`` as usual."""
        self._stream = stream
        self._unwritable = reason

    def close(self) -> None:
        """Flush what is queued and stop writing (the stream itself is not closed)."""
        self.flush()
        self.set_stream(None)


def _whole_lines(lines: Sequence[bytes], limit: int) -> Iterator[bytes]:
    """``lines`` joined into parts of at most ``limit`` bytes (a longer line alone)."""
    part: list[bytes] = []
    size = 0
    for line in lines:
        if part and size + len(line) > limit:
            yield b"".join(part)
            part, size = [], 0
        part.append(line)
        size += len(line)
    if part:
        yield b"".join(part)


def _write_all(stream: BinaryIO, data: bytes) -> None:
    written = stream.write(data)
    if written == len(data):  # as a rule: all of it at once
        stream.flush()
        return
    if written is None:  # a non-blocking stream that would block
        raise OSError("the stream would block")
    view = memoryview(data)[written:]
    while view:
        written = stream.write(view)
        if written is None:  # a non-blocking stream that would block
            raise OSError("the stream would block")
        view = view[written:]
    stream.flush()


def process_fields() -> dict[str, Any]:
    """``{"worker": index, "pid": pid}`` in a worker of ``serve --workers N`` (read from
    :data:`WORKER_ENV`), ``{}`` in a single-process gateway: added to its log lines."""
    index = os.environ.get(WORKER_ENV)
    if index is None or not index.isdigit():
        return {}
    return {"worker": int(index), "pid": os.getpid()}


def make_error_logger(
    stream: BinaryIO | None = None, extra_processors: Sequence[Processor] = ()
) -> structlog.typing.FilteringBoundLogger:
    """The gateway's own log (start-up, plugin failures, upstream trouble) on stderr,
    through the plugins' log processors (redaction) like every other sink. In a worker
    process each line also names the worker (:func:`process_fields`)."""
    return json_line_logger(stream or sys.stderr.buffer, list(extra_processors)).bind(
        logger="gateway", **process_fields()
    )


def route_stdlib_logging(extra_processors: Sequence[Processor], level: int = 20) -> None:
    """Send the standard library's log records (aiohttp's, asyncio's, libraries') through
    the same processors and JSON renderer, on stderr, so no sink bypasses redaction.

    Process-wide (the root logger), so it is done by the CLI, not by ``create_app``.
    """
    import logging

    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[
            utc_timestamp(),
            structlog.stdlib.add_log_level,
            structlog.stdlib.add_logger_name,
        ],
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info,
            *extra_processors,
            structlog.processors.JSONRenderer(
                serializer=lambda obj, **_: orjson.dumps(obj, default=json_default).decode()
            ),
        ],
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    logging.captureWarnings(True)
