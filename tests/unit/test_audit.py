"""proxy.audit: one JSON line per decision, to stdout or a file; never raises; counts."""

from __future__ import annotations

import io
import json
import logging
import threading
from pathlib import Path

import pytest

from proxy.audit import (
    AuditRecorder,
    FileSink,
    MultiRecorder,
    StreamSink,
    build_recorder,
    decision_json,
)
from proxy.decisions import Decision
from proxy.metrics import REGISTRY
from proxy.settings import AuditSettings

FULL = Decision(
    time="2024-05-01T12:00:00Z",
    kind="manifest",
    outcome="served_signed",
    repository="registry.example.com/team/app",
    reference="v1",
    reason="signed by targets/releases",
    rule="registry.example.com/team/*",
    mode="enforce",
    served_digest="sha256:" + "a" * 64,
    signers=("targets/releases",),
    evidence={
        "roles": ["targets/releases"],
        "key_ids": ["k1", "k2"],
        "metadata_versions": {"root": 1, "targets": 4, "snapshot": 9, "timestamp": 12},
    },
    client="10.0.0.7",
    user_agent="containerd/1.7",
    user="ci",
    method="GET",
)


def denied(n: int = 0) -> Decision:
    return Decision(
        time="2024-05-01T12:00:01Z",
        kind="manifest",
        outcome="denied",
        repository="registry.example.com/team/app",
        reference=f"t{n}",
        reason="not signed",
    )


def decisions_count(kind: str, outcome: str) -> float:
    value = REGISTRY.get_sample_value(
        "trustproxy_decisions_total", {"kind": kind, "outcome": outcome}
    )
    return value or 0.0


class BrokenSink:
    name = "broken"

    def write_line(self, line: str) -> None:
        raise OSError(28, "No space left on device")

    def reopen(self) -> None:
        raise OSError(2, "No such file or directory")

    def close(self) -> None:
        return None


class BlockedSink:
    """Holds the writer thread until released: the queue fills up behind it."""

    name = "blocked"

    def __init__(self) -> None:
        self.release = threading.Event()
        self.lines: list[str] = []

    def write_line(self, line: str) -> None:
        self.release.wait(10)
        self.lines.append(line)

    def reopen(self) -> None:
        return None

    def close(self) -> None:
        return None


def test_decision_json_has_every_field() -> None:
    record = json.loads(decision_json(FULL))
    assert record == {
        "time": "2024-05-01T12:00:00Z",
        "kind": "manifest",
        "outcome": "served_signed",
        "repository": "registry.example.com/team/app",
        "reference": "v1",
        "reason": "signed by targets/releases",
        "rule": "registry.example.com/team/*",
        "mode": "enforce",
        "served_digest": "sha256:" + "a" * 64,
        "signers": ["targets/releases"],
        "roles": ["targets/releases"],
        "key_ids": ["k1", "k2"],
        "metadata_versions": {"root": 1, "targets": 4, "snapshot": 9, "timestamp": 12},
        # cosign's evidence fields (every line has every registered type's, empty here)
        "identities": [],
        "log_indexes": [],
        # Notation's evidence fields, empty on lines another source answered
        "cert_fingerprints": [],
        "trust_policy": "",
        "client": "10.0.0.7",
        "user_agent": "containerd/1.7",
        "user": "ci",
        "method": "GET",
    }


def test_a_newline_in_a_client_field_cannot_split_the_line() -> None:
    evil = Decision(**{**FULL.__dict__, "user_agent": 'x\n{"outcome":"served_signed"}\r\n'})
    line = decision_json(evil)
    assert "\n" not in line
    assert "\r" not in line
    assert json.loads(line)["user_agent"] == 'x\n{"outcome":"served_signed"}\r\n'


def test_stream_sink_writes_whole_lines_and_counts() -> None:
    out = io.StringIO()
    recorder = AuditRecorder(StreamSink(out))
    before = decisions_count("manifest", "denied")

    def write(i: int) -> None:
        for _ in range(50):
            recorder.record(denied(i))

    writers = [threading.Thread(target=write, args=(i,)) for i in range(8)]
    for t in writers:
        t.start()
    for t in writers:
        t.join()
    recorder.close()
    lines = out.getvalue().splitlines()
    assert len(lines) == 400
    assert all(json.loads(line)["outcome"] == "denied" for line in lines)
    assert out.getvalue().endswith("\n")
    assert decisions_count("manifest", "denied") - before == 400


def test_file_sink_appends_to_an_existing_file(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    path.write_text('{"earlier":"line"}\n')
    recorder = build_recorder(AuditSettings(sink="file", path=path), stdout=io.StringIO())
    recorder.record(denied(1))
    recorder.record(denied(2))
    recorder.close()
    lines = path.read_text().splitlines()
    assert lines[0] == '{"earlier":"line"}'
    assert [json.loads(x)["reference"] for x in lines[1:]] == ["t1", "t2"]


def test_reopen_after_logrotate_moved_the_file(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    recorder = AuditRecorder(FileSink(path))
    recorder.record(denied(1))
    # logrotate moves the file, then sends SIGHUP. Whenever the writer gets to it, t1 goes
    # to the open file (now audit.log.1); the reopen is queued after it, t2 after that.
    path.rename(tmp_path / "audit.log.1")
    recorder.reopen()
    recorder.record(denied(2))
    recorder.close()
    assert json.loads((tmp_path / "audit.log.1").read_text())["reference"] == "t1"
    assert json.loads(path.read_text())["reference"] == "t2"


def test_a_failing_sink_never_raises_and_logs(caplog: pytest.LogCaptureFixture) -> None:
    recorder = AuditRecorder(BrokenSink())
    before = decisions_count("manifest", "denied")
    with caplog.at_level(logging.ERROR, logger="trustproxy.audit"):
        recorder.record(denied())
        recorder.reopen()
        recorder.record(denied())
        recorder.close()
    assert recorder.dropped == 3
    assert "No space left on device" in caplog.text
    assert decisions_count("manifest", "denied") - before == 2  # counted all the same


def test_a_full_queue_drops_instead_of_blocking(caplog: pytest.LogCaptureFixture) -> None:
    sink = BlockedSink()
    recorder = AuditRecorder(sink, queue_size=2)
    with caplog.at_level(logging.ERROR, logger="trustproxy.audit"):
        for i in range(10):
            recorder.record(denied(i))  # returns at once even though the sink is stuck
    assert recorder.dropped >= 7
    assert "queue is full" in caplog.text
    sink.release.set()
    recorder.close()
    assert 1 <= len(sink.lines) <= 3


def test_off_counts_only() -> None:
    recorder = build_recorder(AuditSettings(sink="off"), stdout=io.StringIO())
    before = decisions_count("tags", "passed_through")
    recorder.record(Decision("t", "tags", "passed_through", "r/x", "latest", "no policy"))
    recorder.close()
    assert recorder.sink is None
    assert decisions_count("tags", "passed_through") - before == 1


def test_stdout_sink(capsys: pytest.CaptureFixture[str]) -> None:
    import sys

    recorder = build_recorder(AuditSettings(), stdout=sys.stdout)
    recorder.record(FULL)
    recorder.close()
    out = capsys.readouterr().out
    assert json.loads(out)["served_digest"] == FULL.served_digest


def test_record_after_close_is_ignored() -> None:
    out = io.StringIO()
    recorder = AuditRecorder(StreamSink(out))
    recorder.close()
    recorder.close()  # idempotent
    recorder.record(FULL)
    recorder.reopen()
    assert out.getvalue() == ""


def test_multi_recorder_tells_every_recorder_even_after_a_failure() -> None:
    seen: list[Decision] = []

    class Exploding:
        def record(self, decision: Decision) -> None:
            raise RuntimeError("bug")

    class Listing:
        def record(self, decision: Decision) -> None:
            seen.append(decision)

    MultiRecorder(Exploding(), Listing()).record(FULL)
    assert seen == [FULL]


def test_every_line_has_the_evidence_fields_of_every_source_type() -> None:
    """A refusal without a trust answer has the same keys as a served one (empty values):
    consumers of the audit log see one shape whatever source answered, or none."""
    bare = Decision(
        time="2024-05-01T12:00:00Z",
        kind="tags",
        outcome="unavailable",
        repository="r.test/app",
        reference="",
        reason="policy not loaded",
    )
    record = json.loads(decision_json(bare))
    assert set(record) == set(json.loads(decision_json(FULL)))
    assert (record["signers"], record["roles"], record["key_ids"]) == ([], [], [])
    assert record["metadata_versions"] == {}


def test_evidence_never_overwrites_a_field_of_the_record() -> None:
    forged = Decision(**{**FULL.__dict__, "evidence": {"outcome": "served_signed", "x": (1,)}})
    forged = Decision(**{**forged.__dict__, "outcome": "denied"})
    record = json.loads(decision_json(forged))
    assert record["outcome"] == "denied"
    assert record["x"] == [1]
