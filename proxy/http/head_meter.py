"""Where request heads start and end in a connection's bytes, and how long each is (pure).

uvicorn's parsers buffer a request head until it is complete, whatever the connection is
doing: with httptools a pipelined head is read and buffered while the previous request is
still being answered (issue 17: a 150 MiB header sent behind an unread 64 MiB blob grew the
process by 270 MiB and cost 26 CPU-seconds). A guard that only counts bytes while the
connection is idle, or only per read, misses that head, and a head that arrives whole in one
read. So the meter follows the byte stream itself, in every state, and says exactly where
a head goes past the limit: the caller hands the parser only the bytes before that head.

It knows as much of HTTP/1.1 request framing (RFC 9112) as it takes to skip bodies:

* a head is every byte from the first of the request line to the end of the empty line
  that ends the header section (``CRLF CRLF``); at most ``limit`` bytes;
* a body follows by ``Content-Length``, or by ``Transfer-Encoding: chunked``, whose
  chunk-size lines and trailer section are held to the same limit (the parser buffers
  those too), and chunk data is skipped;
* framing that uvicorn's parsers refuse (Content-Length with Transfer-Encoding, a transfer
  coding other than chunked last, differing Content-Lengths, a chunk size that is no hex)
  puts the meter in a state where every further byte counts against the limit: the parser
  answers 400 and closes first, and should it not, the bytes are still bounded.

Bytes are only counted and scanned, never kept beyond the current head or line.
"""

from __future__ import annotations

import re

__all__ = ["HeadMeter"]

_CRLF = b"\r\n"
_HEX = re.compile(rb"[0-9A-Fa-f]{1,16}")
_END = b"\r\n\r\n"

# States of the byte stream.
_HEAD = "head"  # in a request head (or before one)
_BODY = "body"  # in a Content-Length body: _left bytes to go
_CHUNK_SIZE = "chunk-size"  # in a chunk-size line
_CHUNK_DATA = "chunk-data"  # in chunk data plus its CRLF: _left bytes to go
_TRAILERS = "trailers"  # after the last chunk: the trailer section and its empty line
_OPAQUE = "opaque"  # framing the meter does not follow: everything counts


class HeadMeter:
    """Feed it every byte a connection receives, in order (see :meth:`feed`)."""

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError("limit must be positive")
        self.limit = limit
        self._state = _HEAD
        self._buf = bytearray()  # the current head, chunk-size line or trailer section
        self._left = 0
        self._opaque = 0  # bytes since the framing stopped being followed
        self._over = False

    @property
    def head_bytes(self) -> int:
        """Bytes of a request head started and not complete (0 between requests)."""
        return len(self._buf) if self._state == _HEAD else 0

    @property
    def between_requests(self) -> bool:
        """Nothing of a request is pending: no partial head, no body to come."""
        return self._state == _HEAD and not self._buf

    def feed(self, data: bytes) -> int | None:
        """Account for ``data``. None when every head (and chunk-size line, trailer section)
        in it stays within the limit; otherwise the offset in ``data`` where the first one
        that does not begins (0 when it began in an earlier read). Once over, the meter
        stays over: every later call answers 0."""
        if self._over:
            return 0
        i, n = 0, len(data)
        while i < n:
            if self._state == _BODY or self._state == _CHUNK_DATA:
                step = min(self._left, n - i)
                self._left -= step
                i += step
                if self._left == 0:
                    self._state = _HEAD if self._state == _BODY else _CHUNK_SIZE
                continue
            if self._state == _OPAQUE:
                began = i - self._opaque  # negative: in an earlier read
                self._opaque += n - i
                if self._opaque > self.limit:
                    self._over = True
                    return max(began, 0)
                return None
            began = i - len(self._buf)
            taken = self._take_line(data, i)
            if taken is None:
                self._over = True
                return max(began, 0)
            i = taken
        return None

    # --- one head, chunk-size line or trailer section ---------------------------------

    def _take_line(self, data: bytes, i: int) -> int | None:
        """Add ``data[i:]`` to the current head/line up to its end; where the rest of
        ``data`` starts (len(data) when the end is still to come), None when it is past the
        limit."""
        start = len(self._buf)
        if not start and self._state == _HEAD:  # the common case: a whole head in one read
            end = data.find(_END, i, i + self.limit)
            if end >= 0:
                self._after(data[i : end + 4])
                return end + 4
        self._buf += data[i : i + self.limit - start + 1]  # one byte past the limit at most
        if self._state == _CHUNK_SIZE:
            end = self._buf.find(_CRLF, max(0, start - 1))
            size = end + 2 if end >= 0 else -1
        elif self._state == _TRAILERS and self._buf.startswith(_CRLF):
            size = 2  # no trailers: the empty line alone
        else:
            end = self._buf.find(_END, max(0, start - 3))
            size = end + 4 if end >= 0 else -1
        if size < 0:
            if len(self._buf) > self.limit:
                return None
            return len(data)
        if size > self.limit:
            return None
        line = bytes(self._buf[:size])
        self._buf.clear()
        self._after(line)
        return i + size - start

    def _after(self, line: bytes) -> None:
        """The state that follows a complete head, chunk-size line or trailer section."""
        if self._state == _HEAD:
            self._state, self._left = _body_framing(line)
        elif self._state == _CHUNK_SIZE:
            digits = line[:-2].split(b";", 1)[0].strip(b" \t")
            size = int(digits, 16) if _HEX.fullmatch(digits) else -1
            if size < 0:
                self._state = _OPAQUE
            elif size == 0:
                self._state = _TRAILERS
            else:
                self._state, self._left = _CHUNK_DATA, size + 2  # the data, then CRLF
        else:  # the trailer section: the request is over
            self._state = _HEAD
        if self._state == _OPAQUE:
            self._opaque = 0


_FRAMING = re.compile(rb"\r\n(content-length|transfer-encoding)[ \t]*:([^\r\n]*)", re.I)


def _body_framing(head: bytes) -> tuple[str, int]:
    """(state, bytes) after a complete request head: what its framing headers announce."""
    lengths: set[bytes] = set()
    codings: list[bytes] = []
    for m in _FRAMING.finditer(head):
        values = [v.strip(b" \t") for v in m[2].split(b",")]
        if m[1].lower() == b"content-length":
            lengths.update(values)
        else:
            codings.extend(v.lower() for v in values if v)
    if codings:
        # Chunked must come last (RFC 9112 6.3); with a Content-Length beside it, or any
        # other coding, uvicorn's parsers refuse the request.
        if codings[-1] == b"chunked" and not lengths:
            return _CHUNK_SIZE, 0
        return _OPAQUE, 0
    if not lengths:
        return _HEAD, 0
    if len(lengths) != 1:
        return _OPAQUE, 0
    (length,) = lengths
    if not length.isdigit():
        return _OPAQUE, 0
    size = int(length)
    return (_BODY, size) if size else (_HEAD, 0)
