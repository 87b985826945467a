"""proxy.http.streaming.UpstreamBodyResponse: the upstream response is closed on every path."""

from __future__ import annotations

import hashlib
import platform
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from typing import Any

import anyio
import httpx
import pytest

from proxy.http.allocator import tune_allocator
from proxy.http.streaming import UpstreamBodyResponse
from proxy.metrics import REGISTRY as METRICS

Message = dict[str, Any]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class RecordingStream(httpx.AsyncByteStream):
    """An upstream body: yields ``chunks``, then runs ``after`` (raise, or hang)."""

    def __init__(
        self, chunks: list[bytes], after: Callable[[], Awaitable[None]] | None = None
    ) -> None:
        self.chunks = chunks
        self.after = after
        self.yielded = 0
        self.closed = 0

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for chunk in self.chunks:
            self.yielded += 1
            yield chunk
        if self.after is not None:
            await self.after()

    async def aclose(self) -> None:
        self.closed += 1


async def hang() -> None:
    await anyio.sleep_forever()


async def read_error() -> None:
    raise httpx.ReadError("connection reset by registry")


class Client:
    """Fake ASGI receive/send: records messages; disconnects or fails on request."""

    def __init__(self, *, fail_on: int | None = None, disconnect_after: int | None = None):
        self.messages: list[Message] = []
        self.fail_on = fail_on  # raise OSError on the n-th send (0 = response start)
        self.disconnect_after = disconnect_after  # disconnect once n body messages are out
        self._disconnect = anyio.Event()
        self._requested = False

    async def receive(self) -> Message:
        if not self._requested:
            self._requested = True
            return {"type": "http.request", "body": b"", "more_body": False}
        await self._disconnect.wait()
        return {"type": "http.disconnect"}

    async def send(self, message: MutableMapping[str, Any]) -> None:
        if self.fail_on is not None and len(self.messages) == self.fail_on:
            raise OSError("client socket closed")
        self.messages.append(dict(message))
        bodies = [m for m in self.messages if m["type"] == "http.response.body"]
        if self.disconnect_after is not None and len(bodies) >= self.disconnect_after:
            self._disconnect.set()

    @property
    def body(self) -> bytes:
        return b"".join(m["body"] for m in self.messages if m["type"] == "http.response.body")

    @property
    def complete(self) -> bool:
        last = self.messages[-1] if self.messages else {}
        return last.get("type") == "http.response.body" and not last.get("more_body", False)


def make_response(stream: RecordingStream, *, send_body: bool = True) -> UpstreamBodyResponse:
    upstream = httpx.Response(200, stream=stream)
    return UpstreamBodyResponse(
        upstream,
        status_code=206,
        headers={"Content-Type": "application/octet-stream", "Content-Range": "bytes 0-2/10"},
        send_body=send_body,
    )


async def run(response: UpstreamBodyResponse, client: Client) -> dict[str, Any]:
    scope: dict[str, Any] = {"type": "http", "method": "GET", "path": "/v2/a/blobs/x"}
    with anyio.fail_after(5):
        await response(scope, client.receive, client.send)
    return scope


@pytest.mark.anyio
async def test_success_relays_exact_bytes_and_closes() -> None:
    stream = RecordingStream([b"ab", b"", b"c"])
    response = make_response(stream)
    client = Client()
    scope = await run(response, client)
    start = client.messages[0]
    assert start == {
        "type": "http.response.start",
        "status": 206,
        "headers": [(b"content-type", b"application/octet-stream"),
                    (b"content-range", b"bytes 0-2/10")],
    }  # fmt: skip
    assert client.body == b"abc"
    assert all(m["body"] for m in client.messages[1:-1])  # empty chunks are not sent
    assert client.complete
    assert stream.closed == 1
    assert response.upstream.is_closed
    assert "client_disconnected" not in scope.get("state", {})


@pytest.mark.anyio
async def test_head_sends_no_body_and_closes() -> None:
    stream = RecordingStream([b"never"])
    response = make_response(stream, send_body=False)
    client = Client()
    await run(response, client)
    assert [m["type"] for m in client.messages] == ["http.response.start", "http.response.body"]
    assert client.body == b""
    assert client.complete
    assert stream.yielded == 0
    assert stream.closed == 1


@pytest.mark.anyio
@pytest.mark.parametrize("fail_on", [0, 1, 2], ids=["start", "first-chunk", "second-chunk"])
async def test_send_failure_closes_upstream(fail_on: int) -> None:
    stream = RecordingStream([b"a", b"b", b"c"])
    client = Client(fail_on=fail_on)
    with pytest.raises((OSError, ExceptionGroup)) as info:
        await run(make_response(stream), client)
    if isinstance(info.value, ExceptionGroup):
        assert info.value.subgroup(OSError) is not None
    assert stream.closed == 1
    assert not client.complete


@pytest.mark.anyio
async def test_client_disconnect_mid_stream_stops_reading_and_closes() -> None:
    stream = RecordingStream([b"first"], after=hang)  # the upstream would send forever
    client = Client(disconnect_after=1)
    scope = await run(make_response(stream), client)
    assert client.body == b"first"
    assert not client.complete
    assert scope["state"]["client_disconnected"] is True
    assert stream.closed == 1


@pytest.mark.anyio
async def test_upstream_break_cuts_the_response_and_closes() -> None:
    stream = RecordingStream([b"part"], after=read_error)
    client = Client()
    scope = await run(make_response(stream), client)
    assert client.body == b"part"
    assert not client.complete  # the client sees a short body, never a "complete" one
    assert scope["state"]["upstream_broke"] is True
    assert stream.closed == 1


@pytest.mark.anyio
async def test_outer_cancellation_still_closes() -> None:
    stream = RecordingStream([b"x"], after=hang)
    client = Client()
    with anyio.move_on_after(0.05):
        await make_response(stream)({"type": "http", "state": {}}, client.receive, client.send)
    assert client.body == b"x"
    assert stream.closed == 1


def test_tune_allocator_is_idempotent_and_applies_on_glibc() -> None:
    first = tune_allocator()
    assert tune_allocator() is first
    if sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc":
        assert first is True


# --------------------------------------------------------------------------- bad bodies

BLOB_CHUNKS = [b"first chunk ", b"second chunk ", b"last chunk"]
BLOB_DIGEST = "sha256:" + hashlib.sha256(b"".join(BLOB_CHUNKS)).hexdigest()


def blob_response(
    stream: httpx.AsyncByteStream, *, digest: str | None = BLOB_DIGEST, **kw: Any
) -> UpstreamBodyResponse:
    return UpstreamBodyResponse(
        httpx.Response(200, stream=stream),
        status_code=200,
        headers={"Content-Length": str(sum(map(len, BLOB_CHUNKS)))},
        expected_digest=digest,
        upstream_name="internal",
        **kw,
    )


def mismatches() -> float:
    value = METRICS.get_sample_value(
        "trustproxy_upstream_errors_total", {"upstream": "internal", "kind": "mismatch"}
    )
    return value or 0.0


@pytest.mark.anyio
async def test_a_blob_that_hashes_to_its_digest_is_relayed_whole() -> None:
    stream = RecordingStream(list(BLOB_CHUNKS))
    client = Client()
    scope = await run(blob_response(stream), client)
    assert client.body == b"".join(BLOB_CHUNKS)
    assert client.complete
    assert "upstream_broke" not in scope.get("state", {})
    assert stream.closed == 1


@pytest.mark.anyio
@pytest.mark.parametrize("algorithm", ["sha256", "sha512"])
async def test_a_blob_that_does_not_hash_to_its_digest_loses_its_last_chunk(
    algorithm: str,
) -> None:
    chunks = [*BLOB_CHUNKS[:-1], b"last chunX"]  # one byte off, same length
    digest = f"{algorithm}:" + hashlib.new(algorithm, b"".join(BLOB_CHUNKS)).hexdigest()
    before = mismatches()
    stream = RecordingStream(chunks)
    client = Client()
    scope = await run(blob_response(stream, digest=digest), client)
    assert client.body == b"".join(chunks[:-1])  # the true prefix, never the whole bad blob
    assert not client.complete  # the connection is cut: the client sees a short body
    assert scope["state"]["upstream_broke"] is True
    assert scope["state"]["error"].startswith("upstream_digest_mismatch: ")
    assert stream.closed == 1
    assert mismatches() == before + 1


@pytest.mark.anyio
async def test_a_one_chunk_bad_blob_sends_nothing() -> None:
    stream = RecordingStream([b"not the blob"])
    client = Client()
    await run(blob_response(stream), client)
    assert client.body == b""
    assert not client.complete


@pytest.mark.anyio
@pytest.mark.parametrize("declared", [True, False])
async def test_with_a_declared_length_only_the_final_chunk_waits(declared: bool) -> None:
    whole = b"".join(BLOB_CHUNKS)
    headers = {"content-length": str(len(whole))} if declared else {}
    stream = RecordingStream(BLOB_CHUNKS[:1], after=hang)  # the rest never comes
    client = Client(disconnect_after=1)
    upstream = httpx.Response(200, headers=headers, stream=stream)
    response = UpstreamBodyResponse(
        upstream, status_code=200, headers=headers, expected_digest=BLOB_DIGEST,
        upstream_name="internal",
    )  # fmt: skip
    with anyio.fail_after(5):
        if declared:
            await run(response, client)  # the first chunk went out at once
            assert client.body == BLOB_CHUNKS[0]
        else:
            with anyio.move_on_after(0.3):  # it waits for the next chunk, which never comes
                await run(response, client)
            assert client.body == b""


@pytest.mark.anyio
async def test_a_good_blob_in_one_byte_chunks_is_relayed_whole() -> None:
    whole = b"".join(BLOB_CHUNKS)
    stream = RecordingStream([whole[i : i + 1] for i in range(len(whole))])
    client = Client()
    await run(blob_response(stream), client)
    assert client.body == whole
    assert client.complete


@pytest.mark.anyio
async def test_without_a_digest_bytes_are_not_held_back() -> None:
    # Range answers and referrers: nothing to hash against; chunks go out as they come.
    stream = RecordingStream([b"part"], after=hang)
    client = Client(disconnect_after=1)
    await run(blob_response(stream, digest=None), client)
    assert client.body == b"part"
    # An algorithm we cannot compute is no check at all (the caller validated the digest).
    assert blob_response(RecordingStream([]), digest="md5:abc").expected_digest is None


class SlowStream(httpx.AsyncByteStream):
    """One byte every ``interval`` seconds, ``count`` times (a slowloris body)."""

    def __init__(self, count: int, interval: float) -> None:
        self.count = count
        self.interval = interval
        self.closed = 0

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for _ in range(self.count):
            await anyio.sleep(self.interval)
            yield b"x"

    async def aclose(self) -> None:
        self.closed += 1


@pytest.mark.anyio
async def test_a_body_below_the_minimum_rate_is_cut_after_the_grace() -> None:
    stream = SlowStream(count=1000, interval=0.02)  # 50 B/s
    client = Client()
    started = anyio.current_time()
    scope = await run(blob_response(stream, digest=None, min_rate=1000, grace=0.2), client)
    assert anyio.current_time() - started < 1.0  # not 1000 x 20 ms
    assert 0 < len(client.body) < 50
    assert not client.complete
    assert scope["state"]["error"].startswith("upstream_too_slow: ")
    assert stream.closed == 1


@pytest.mark.anyio
async def test_time_spent_sending_to_a_slow_client_is_not_the_upstreams() -> None:
    class SlowClient(Client):
        async def send(self, message: MutableMapping[str, Any]) -> None:
            if message["type"] == "http.response.body" and message.get("body"):
                await anyio.sleep(0.05)  # the client, not the upstream, is slow
            await super().send(message)

    chunks = [b"y" * 100 for _ in range(10)]
    stream = RecordingStream(chunks)
    client = SlowClient()
    await run(blob_response(stream, digest=None, min_rate=1_000_000, grace=0.1), client)
    assert client.body == b"".join(chunks)
    assert client.complete


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("upstream_headers", "relayed"),
    [({"content-length": "3"}, b"3"), ({"content-length": "3, 3"}, b"3"),
     ({"transfer-encoding": "chunked"}, None),
     ({"transfer-encoding": "chunked", "content-length": "1"}, None)],
    ids=["declared", "duplicate", "chunked", "chunked-and-declared"],
)  # fmt: skip
async def test_content_length_is_the_framings(
    upstream_headers: dict[str, str], relayed: bytes | None
) -> None:
    # The header the client gets describes the body it gets: the upstream's framing, not a
    # Content-Length the handler copied beside chunked framing (issue 17, finding 5a).
    stream = RecordingStream([b"abc"])
    upstream = httpx.Response(200, headers=upstream_headers, stream=stream)
    response = UpstreamBodyResponse(
        upstream, status_code=200, headers={"Content-Length": "1", "Content-Type": "x/y"}
    )
    client = Client()
    await run(response, client)
    headers = dict(client.messages[0]["headers"])
    assert headers.get(b"content-length") == relayed
    assert headers[b"content-type"] == b"x/y"
    assert client.body == b"abc"
    assert client.complete
