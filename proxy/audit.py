"""The audit sink: one JSON line per enforcement decision, to stdout or an append-only file.

``AuditRecorder`` implements ``proxy.decisions.DecisionRecorder``. ``record()`` runs on the
event loop inside a request, so it only counts the decision and queues the line; one writer
thread does the I/O. That keeps a slow sink (a stdout pipe nobody drains, a full disk) from
stalling requests, and with a single writer, lines never interleave: each one goes out as
one ``write`` followed by a flush. When the queue is full, or the sink fails, the record is
dropped and an error logged: an audit outage must not become a pull outage (the decision
counters in ``/metrics`` still count every decision).

The file sink is opened with ``O_APPEND`` (several processes may share one file, each line
is one ``write(2)``) and reopened on SIGHUP, so logrotate can move it away and signal.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import queue
import threading
from collections.abc import Mapping
from dataclasses import fields
from pathlib import Path
from typing import Any, Protocol, TextIO

from proxy.decisions import Decision, DecisionRecorder
from proxy.errors import ConfigError
from proxy.metrics import DECISIONS
from proxy.settings import AuditSettings
from proxy.sources.registry import audit_evidence_fields

log = logging.getLogger("trustproxy.audit")

DEFAULT_QUEUE_SIZE = 10_000
# One line per drop would flood the log exactly when the sink is already in trouble.
_DROP_LOG_EVERY = 1000


class AuditSink(Protocol):
    def write_line(self, line: str) -> None:
        """Write one complete line (without its newline) and flush. May raise OSError."""
        ...

    def reopen(self) -> None:
        """Start over on the configured target (after logrotate moved the file)."""
        ...

    def close(self) -> None: ...


class StreamSink:
    """A text stream, normally ``sys.stdout`` (the proxy's logs go to stderr)."""

    def __init__(self, stream: TextIO, name: str = "stdout") -> None:
        self.stream = stream
        self.name = name

    def write_line(self, line: str) -> None:
        self.stream.write(line + "\n")
        self.stream.flush()

    def reopen(self) -> None:
        return None

    def close(self) -> None:
        # Not ours to close (stdout): flush only.
        with contextlib.suppress(OSError, ValueError):
            self.stream.flush()


class FileSink:
    """An append-only file; created (mode 0640) when missing."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.name = str(path)
        self._fd: int | None = None
        self._open()

    def _open(self) -> None:
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)

    def write_line(self, line: str) -> None:
        if self._fd is None:
            self._open()  # a reopen failed earlier: try again rather than stay silent
        assert self._fd is not None  # for mypy; _open sets it or raises
        data = (line + "\n").encode("utf-8")
        # One write(2) per line: O_APPEND makes it land whole at the end. A short write
        # (disk full mid-line) is finished rather than left as a partial line.
        written = os.write(self._fd, data)
        while written < len(data):
            written += os.write(self._fd, data[written:])

    def reopen(self) -> None:
        self.close()
        self._open()

    def close(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)


_RECORD_FIELDS = tuple(f.name for f in fields(Decision) if f.name != "evidence")
_RECORD_FIELD_SET = frozenset(_RECORD_FIELDS)


def decision_json(decision: Decision) -> str:
    """The audit line for ``decision``: every field of the record, one JSON object."""
    # The record's own fields are strings, None and tuples (JSON lists): no deep copy.
    record: dict[str, Any] = {name: getattr(decision, name) for name in _RECORD_FIELDS}
    # The source's evidence as top-level fields (never over a field of the record), and
    # every registered type's fields on every line, empty when this decision has none: the
    # lines keep one shape whatever source answered.
    for key, value in decision.evidence.items():
        if key not in _RECORD_FIELD_SET:
            record[key] = _plain(value)
    for key, empty in audit_evidence_fields():
        if key not in record:
            record[key] = _plain(empty)
    # JSON escapes control characters: a newline in a User-Agent cannot split the line.
    return json.dumps(record, separators=(",", ":"), default=str)


def _plain(value: Any) -> Any:
    """Evidence as JSON types (sources hand out read-only mappings and tuples)."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


_REOPEN = object()
_STOP = object()


class AuditRecorder:
    """Counts every decision (``trustproxy_decisions_total``) and writes its audit line.

    ``sink`` None: count only (``audit.sink: off``).
    """

    def __init__(self, sink: AuditSink | None, *, queue_size: int = DEFAULT_QUEUE_SIZE) -> None:
        self.sink = sink
        self.dropped = 0
        self._queue: queue.Queue[object] = queue.Queue(maxsize=queue_size)
        self._thread: threading.Thread | None = None
        self._closed = False
        if sink is not None:
            self._thread = threading.Thread(target=self._run, name="trustproxy-audit", daemon=True)
            self._thread.start()

    def record(self, decision: Decision) -> None:
        try:
            DECISIONS.labels(decision.kind, decision.outcome).inc()
            if self.sink is None or self._closed:
                return
            line = decision_json(decision)
            self._queue.put_nowait(line)
        except queue.Full:
            self._dropped("the audit queue is full (the sink is not keeping up)")
        except Exception:  # the contract: never raise into the request
            log.exception("audit: cannot record a decision")

    def reopen(self) -> None:
        """Reopen the sink (SIGHUP), in order with the lines queued before."""
        if self.sink is not None and not self._closed:
            try:
                self._queue.put_nowait(_REOPEN)
            except queue.Full:
                log.error("audit: the queue is full, the sink was not reopened")

    def close(self, timeout: float = 10.0) -> None:
        """Write what is queued, then close the sink. Idempotent."""
        if self._closed:
            return
        self._closed = True
        if self._thread is None:
            return
        # put() may block while the writer drains a full queue; it is bounded by timeout.
        try:
            self._queue.put(_STOP, timeout=timeout)
        except queue.Full:
            log.error("audit: could not flush the queue within %.0fs", timeout)
        self._thread.join(timeout)

    def _dropped(self, why: str) -> None:
        self.dropped += 1
        if self.dropped % _DROP_LOG_EVERY == 1:
            log.error("audit: record dropped: %s (%d dropped so far)", why, self.dropped)

    def _run(self) -> None:
        sink = self.sink
        assert sink is not None  # the thread only runs with a sink
        try:
            while True:
                item = self._queue.get()
                if item is _STOP:
                    return
                try:
                    if item is _REOPEN:
                        sink.reopen()
                    else:
                        assert isinstance(item, str)
                        sink.write_line(item)
                except Exception as e:
                    what = "reopen" if item is _REOPEN else "write to"
                    self._dropped(f"cannot {what} {getattr(sink, 'name', 'the sink')}: {e}")
        finally:
            try:
                sink.close()
            except OSError as e:
                log.error("audit: closing the sink failed: %s", e)


class MultiRecorder:
    """Tell several recorders (e.g. the audit sink and a test's list)."""

    def __init__(self, *recorders: DecisionRecorder) -> None:
        self.recorders = recorders

    def record(self, decision: Decision) -> None:
        for recorder in self.recorders:
            try:
                recorder.record(decision)
            except Exception:  # one broken recorder must not starve the others
                log.exception("audit: a recorder failed")


def build_recorder(settings: AuditSettings, *, stdout: TextIO) -> AuditRecorder:
    """The recorder ``settings`` describe. Raises OSError when the file cannot be opened."""
    if settings.sink == "off":
        return AuditRecorder(None)
    if settings.sink == "file":
        if settings.path is None:
            raise RuntimeError("audit.sink file without a path: settings should refuse it")
        return AuditRecorder(FileSink(settings.path))
    return AuditRecorder(StreamSink(stdout))


def open_recorder(settings: AuditSettings, *, stdout: TextIO) -> AuditRecorder:
    """:func:`build_recorder`, with a file that cannot be opened as a ConfigError naming
    the key (what ``serve`` prints before it exits)."""
    try:
        return build_recorder(settings, stdout=stdout)
    except OSError as e:
        raise ConfigError("audit.path", f"cannot open {settings.path}: {e}") from e
