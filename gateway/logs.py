"""structlog pipelines owned by one app: the error log and JSON-line sinks.

Nothing here configures structlog globally; each app builds its own loggers so several
apps (and tests) can live in one process without stepping on each other.
"""

from __future__ import annotations

import sys
from typing import Any, BinaryIO

import orjson
import structlog
from structlog.typing import Processor

__all__ = ["json_line_logger", "make_error_logger"]


def _dumps(obj: Any, **_: Any) -> bytes:
    return orjson.dumps(obj, default=str)


def json_line_logger(
    stream: BinaryIO, extra_processors: list[Processor] | None = None
) -> structlog.typing.FilteringBoundLogger:
    """A logger writing one JSON object per line to a binary stream.

    The pipeline: ISO UTC timestamp → level → exception formatting → ``extra_processors``
    (redaction goes here, in front of the renderer) → orjson renderer.
    """
    processors: list[Processor] = [
        structlog.processors.TimeStamper(fmt="iso", utc=True, key="timestamp"),
        structlog.processors.add_log_level,
        structlog.processors.format_exc_info,
        *(extra_processors or []),
        structlog.processors.JSONRenderer(serializer=_dumps),
    ]
    return structlog.wrap_logger(  # type: ignore[no-any-return]
        structlog.BytesLogger(stream),
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(0),
        cache_logger_on_first_use=True,
    )


def make_error_logger(stream: BinaryIO | None = None) -> structlog.typing.FilteringBoundLogger:
    """The gateway's own log (start-up, plugin failures, upstream trouble) on stderr."""
    return json_line_logger(stream or sys.stderr.buffer).bind(logger="gateway")
