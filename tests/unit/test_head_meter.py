"""proxy.http.head_meter: exact request-head sizes across reads, bodies skipped."""

from __future__ import annotations

import pytest

from proxy.http.head_meter import HeadMeter

LIMIT = 200


def head(size: int, *, extra: bytes = b"") -> bytes:
    """A request head of exactly ``size`` bytes (CRLF CRLF included)."""
    base = b"GET /v2/ HTTP/1.1\r\nHost: x\r\n" + extra + b"X-Pad: \r\n\r\n"
    pad = size - len(base)
    assert pad >= 0
    return base.replace(b"X-Pad: ", b"X-Pad: " + b"a" * pad)


def feed_all(meter: HeadMeter, pieces: list[bytes], start: int | None) -> None:
    """Feed ``pieces``; the first head over the limit begins at absolute offset ``start``
    (None: none is). It must be seen in the read that brings its byte ``limit + 1``, no
    sooner, and the bytes handed on (all before that read, and that read's up to the
    offset returned) must stop at the head's first byte or at that read's."""
    seen = 0
    for piece in pieces:
        over = meter.feed(piece)
        if over is not None:
            assert start is not None, f"over at {seen + over}"
            assert seen <= start + meter.limit < seen + len(piece), (seen, len(piece))
            assert seen + over == max(start, seen)
            return
        seen += len(piece)
    assert start is None, "never over"


def splits(stream: bytes) -> list[list[bytes]]:
    """The stream in one read, a byte at a time, and cut in two at every position."""
    out = [[stream], [stream[i : i + 1] for i in range(len(stream))]]
    out.extend([stream[:i], stream[i:]] for i in range(1, len(stream)))
    return out


def chunked(*chunks: bytes, trailers: bytes = b"") -> bytes:
    body = b"".join(f"{len(c):x}\r\n".encode() + c + b"\r\n" for c in chunks)
    return body + b"0\r\n" + trailers + b"\r\n"


CL_BODY = b"\r\n\r\n" + b"b" * (3 * LIMIT)  # longer than the limit, and head-like bytes
CASES = [
    # (id, stream, absolute offset of the first head over the limit, or None)
    ("at-the-limit", head(LIMIT), None),
    ("one-byte-over", head(LIMIT + 1), 0),
    ("partial-at-the-limit", head(LIMIT + 1)[:LIMIT], None),
    ("partial-one-over", head(LIMIT + 5)[: LIMIT + 1], 0),
    ("pipelined-then-over", head(100) + head(LIMIT) + head(LIMIT + 1), 100 + LIMIT),
    ("content-length-body-skipped",
     head(LIMIT, extra=f"Content-Length: {len(CL_BODY)}\r\n".encode()) + CL_BODY + head(LIMIT),
     None),
    ("content-length-body-then-over",
     head(100, extra=f"Content-Length: {len(CL_BODY)}\r\n".encode()) + CL_BODY
     + head(LIMIT + 1), 100 + len(CL_BODY)),
    ("chunked-body-skipped",
     head(120, extra=b"Transfer-Encoding: chunked\r\n") + chunked(b"c" * 500, b"\r\n\r\n")
     + head(LIMIT), None),
    ("chunked-trailers-then-over",
     head(120, extra=b"Transfer-Encoding: chunked\r\n") + chunked(b"c" * 9, trailers=b"T: 1\r\n")
     + head(LIMIT + 1), 120 + len(chunked(b"c" * 9, trailers=b"T: 1\r\n"))),
    ("chunked-trailers-over",
     head(120, extra=b"Transfer-Encoding: chunked\r\n") + b"0\r\nT: " + b"t" * LIMIT + b"\r\n\r\n",
     120 + 3),
    ("chunk-size-line-over",
     head(120, extra=b"Transfer-Encoding: chunked\r\n") + b"5;" + b"e" * LIMIT + b"\r\n", 120),
    ("two-framings-counted",
     head(150, extra=b"Content-Length: 3\r\nTransfer-Encoding: chunked\r\n") + b"x" * LIMIT
     + b"y", 150),
    ("unknown-coding-counted",
     head(150, extra=b"Transfer-Encoding: gzip\r\n") + b"x" * (LIMIT + 1), 150),
    ("bad-chunk-size-counted",
     head(150, extra=b"Transfer-Encoding: chunked\r\n") + b"0x5\r\n" + b"x" * (LIMIT + 1), 150 + 5),
    ("conflicting-lengths-counted",
     head(150, extra=b"Content-Length: 1, 2\r\n") + b"x" * (LIMIT + 1), 150),
    ("same-length-twice", head(150, extra=b"Content-Length: 3, 3\r\n") + b"xyz" + head(LIMIT),
     None),
]  # fmt: skip


@pytest.mark.parametrize(("stream", "over"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_over_the_limit_at_the_same_byte_however_the_reads_fall(
    stream: bytes, over: int | None
) -> None:
    for pieces in splits(stream):
        feed_all(HeadMeter(LIMIT), pieces, over)


def test_once_over_every_read_is_refused() -> None:
    meter = HeadMeter(LIMIT)
    assert meter.feed(head(LIMIT + 1)) == 0
    assert meter.feed(head(40)) == 0


def test_head_bytes_and_between_requests() -> None:
    meter = HeadMeter(LIMIT)
    assert (meter.head_bytes, meter.between_requests) == (0, True)
    full = head(150, extra=b"Content-Length: 4\r\n")
    assert meter.feed(full[:50]) is None
    assert (meter.head_bytes, meter.between_requests) == (50, False)
    assert meter.feed(full[50:] + b"ab") is None
    assert (meter.head_bytes, meter.between_requests) == (0, False)  # in the body
    assert meter.feed(b"cd") is None
    assert (meter.head_bytes, meter.between_requests) == (0, True)


def test_limit_must_be_positive() -> None:
    with pytest.raises(ValueError, match="positive"):
        HeadMeter(0)
