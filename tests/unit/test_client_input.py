"""proxy/http/client_input.py: which forwarded request headers may leave the proxy."""

from __future__ import annotations

import pytest

from proxy.errors import ClientRequestError
from proxy.http.client_input import check_forwarded_headers


@pytest.mark.parametrize(
    ("name", "value"),
    [(b"accept", b"application/vnd.oci.image.manifest.v1+json, */*; q=0.5"),
     (b"range", b"bytes=0-1023"), (b"if-none-match", b'"sha256:abc", W/"x"'),
     (b"authorization", b"Bearer eyJ0eXAi.eyJpc3Mi.sig"), (b"accept", b"a\tb"),
     (b"accept", b""), (b"user-agent", b"caf\xe9/1.0 \x01"), (b"x-other", b"\xff\x00")],
    ids=["accept", "range", "if-none-match", "bearer", "tab", "empty",
         "not-forwarded-user-agent", "not-forwarded-other"],
)  # fmt: skip
def test_accepted(name: bytes, value: bytes) -> None:
    check_forwarded_headers([(b"host", b"x"), (name, value)])


@pytest.mark.parametrize(
    ("name", "value"),
    [(b"accept", b"application/\xe9"), (b"range", b"bytes=\xff"), (b"if-range", b"\x80"),
     (b"if-modified-since", b"Sun, 06 Nov 1994 08:49:37 GMT\x00"),
     (b"authorization", b"Basic \xc3\xa9"), (b"accept", b"a\nb"), (b"accept", b"a\rb"),
     (b"accept", b"a\x7fb")],
    ids=["accept-latin1", "range-obs-text", "if-range", "if-modified-since-nul",
         "authorization-utf8", "lf", "cr", "del"],
)  # fmt: skip
def test_refused_naming_the_header(name: bytes, value: bytes) -> None:
    with pytest.raises(ClientRequestError) as info:
        check_forwarded_headers([(b"host", b"x"), (name, value)])
    assert name.decode() in str(info.value)
