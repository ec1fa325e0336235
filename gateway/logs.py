"""Logging: text or JSON lines, each record carrying the request id of the request it is
about. Prompts and images are never logged."""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
import logging.handlers
import os
import queue
import sys
import time
from collections.abc import Iterator, Mapping
from typing import TextIO

request_id: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")

TEXT = "%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s"
_STANDARD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime"}


class _RequestId(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = request_id.get()
        return True


class JsonLines(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        entry |= {k: v for k, v in vars(record).items() if k not in _STANDARD}
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


# syslog's severities (RFC 5424), by logging's level: journald reads a "<N>" at the start of
# a line on a unit's stderr as the line's PRIORITY (the unit's SyslogLevelPrefix=, on by
# default), so `journalctl -p warning` finds the warnings.
_SEVERITY = {logging.CRITICAL: 2, logging.ERROR: 3, logging.WARNING: 4, logging.INFO: 6}


def severity(levelno: int) -> int:
    return next((s for level, s in _SEVERITY.items() if levelno >= level), 7)


class _Prioritised(logging.Formatter):
    """Another formatter's lines, each prefixed with its syslog severity for journald: every
    line of a multi-line record (a traceback), which the journal stores one by one."""

    def __init__(self, inner: logging.Formatter) -> None:
        super().__init__()
        self._inner = inner

    def format(self, record: logging.LogRecord) -> str:
        prefix = f"<{severity(record.levelno)}>"
        return prefix + self._inner.format(record).replace("\n", "\n" + prefix)


def to_journal(stream: TextIO, env: Mapping[str, str] = os.environ) -> bool:
    """Whether `stream` is connected to the journal: systemd sets $JOURNAL_STREAM to the
    device and inode of the stream it connected (a redirected stderr is not it)."""
    device, _, inode = env.get("JOURNAL_STREAM", "").partition(":")
    try:
        st = os.fstat(stream.fileno())
    except (OSError, ValueError):
        return False
    return f"{st.st_dev}:{st.st_ino}" == f"{device}:{inode}"


def formatter(fmt: str, stream: TextIO) -> logging.Formatter:
    """The lines of `fmt` (text or json), with their priority when `stream` is the journal."""
    inner = JsonLines() if fmt == "json" else logging.Formatter(TEXT)
    return _Prioritised(inner) if to_journal(stream) else inner


class _Deferred(logging.handlers.QueueHandler):
    """Queues a record as it is: formatted and written by the listener's thread. (The stdlib
    QueueHandler formats in the caller, for another process; ours is a thread of this one.)
    The request id is read here, in the request's context."""

    def prepare(self, record: logging.LogRecord) -> logging.LogRecord:
        return record


@contextlib.contextmanager
def configured(fmt: str, level: str) -> Iterator[None]:
    """Logging as `fmt` (text or json) at `level`, for the block: records are formatted and
    written to stderr by a thread of their own, off the event loop, and every record queued
    is written before the block ends."""
    # No line we write says where a record was made, or in which thread or process: finding
    # out costs a fifth of a record, and the access log writes one per request (BENCHMARKS.md,
    # per-call costs).
    logging._srcfile = None
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False
    writer = logging.StreamHandler(sys.stderr)
    writer.setFormatter(formatter(fmt, sys.stderr))
    handler = _Deferred(queue.SimpleQueue())
    handler.addFilter(_RequestId())
    listener = logging.handlers.QueueListener(handler.queue, writer)
    _install(handler, level)
    listener.start()
    try:
        yield
    finally:
        listener.stop()  # writes what is queued, then joins the thread
        writer.addFilter(_RequestId())
        _install(writer, level)  # anything logged after: written in place


def _install(handler: logging.Handler, level: str) -> None:
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True
    logging.getLogger("uvicorn.access").disabled = True  # ours has the request id and backend
