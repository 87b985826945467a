"""proxy.http.errors: every exception class → status and OCI code, in one table."""

from __future__ import annotations

import json
import logging
from typing import Any

import pytest
from starlette.responses import Response

from proxy import errors as e
from proxy.http.errors import ERROR_TABLE, oci_error_body, response_for_exception
from proxy.sources.notary.tuf import errors as trust_errors
from proxy.upstream.auth import UpstreamUnauthorizedError


def body(response: Response) -> dict[str, Any]:
    parsed = json.loads(bytes(response.body))
    assert isinstance(parsed, dict)
    return parsed


def only_error(response: Response) -> dict[str, Any]:
    errors = body(response)["errors"]
    assert isinstance(errors, list)
    assert len(errors) == 1
    entry = errors[0]
    assert set(entry) == {"code", "message", "detail"}
    return dict(entry)


CASES: list[tuple[str, BaseException, int, str, dict[str, str]]] = [
    ("not-signed", e.NotSignedError("tag v1 is not signed"), 404, "MANIFEST_UNKNOWN",
     {"reason": "tag v1 is not signed"}),
    ("unknown-repo", e.UnknownRepositoryError("no upstream"), 404, "NAME_UNKNOWN", {}),
    ("invalid-name", e.InvalidNameError("bad name"), 400, "NAME_INVALID", {}),
    ("invalid-digest", e.InvalidDigestError("bad digest"), 400, "DIGEST_INVALID", {}),
    ("invalid-reference", e.InvalidReferenceError("bad tag"), 404, "MANIFEST_UNKNOWN", {}),
    ("unsupported", e.UnsupportedError("read-only"), 405, "UNSUPPORTED", {}),
    ("client-request", e.ClientRequestError("n must be"), 400, "UNSUPPORTED", {}),
    ("unauthorized", e.UnauthorizedError("who are you"), 401, "UNAUTHORIZED", {}),
    ("upstream-unauthorized", UpstreamUnauthorizedError("hub", "refused"), 403, "DENIED", {}),
    ("trust-data", e.TrustDataError("bad sig", role="targets", field="signed"), 503,
     "UNAVAILABLE", {"role": "targets", "field": "signed"}),
    ("trust-data-bare", e.TrustDataError("bad"), 503, "UNAVAILABLE", {}),
    ("trust-leaf", trust_errors.ExpiredError("expired", role="timestamp"), 503, "UNAVAILABLE",
     {"role": "timestamp"}),
    ("trust-source", e.TrustSourceUnavailableError("notary", "down"), 503, "UNAVAILABLE",
     {"trust_source": "notary"}),
    ("upstream-content", e.UpstreamContentError("digest mismatch"), 502, "UNAVAILABLE", {}),
    ("oversize", e.OversizeError("manifest", 10), 502, "UNAVAILABLE", {}),
    ("bad-data", e.BadDataError("garbage"), 502, "UNAVAILABLE", {}),
    ("upstream-unavailable", e.UpstreamUnavailableError("internal", "refused"), 502,
     "UNAVAILABLE", {"upstream": "internal"}),
    ("upstream-timeout", e.UpstreamUnavailableError("internal", "timed out", timeout=True), 504,
     "UNAVAILABLE", {"upstream": "internal"}),
    ("fetch", e.FetchError("could not"), 502, "UNAVAILABLE", {}),
    ("config", e.ConfigError("policy", "broken"), 500, "UNKNOWN", {}),
]  # fmt: skip


@pytest.mark.parametrize(
    ("exc", "status", "code", "detail"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_exception_maps_to_status_and_code(
    exc: BaseException, status: int, code: str, detail: dict[str, str]
) -> None:
    response = response_for_exception(exc)
    assert response.status_code == status
    assert response.media_type == "application/json"
    assert only_error(response) == {"code": code, "message": str(exc), "detail": detail}
    assert "www-authenticate" not in response.headers


def test_every_error_class_is_covered() -> None:
    tested = {type(c[1]) for c in CASES}
    assert {cls for cls, _, _ in ERROR_TABLE} <= tested | {e.ClientRequestError}

    # Every concrete class in the tree maps to something other than the 500 fallback.
    def subclasses(cls: type[BaseException]) -> set[type[BaseException]]:
        out = {cls}
        for sub in cls.__subclasses__():
            out |= subclasses(sub)
        return out

    for cls in subclasses(e.TrustproxyError) - {e.TrustproxyError}:
        assert any(issubclass(cls, mapped) for mapped, _, _ in ERROR_TABLE), cls


def test_subclasses_come_before_their_bases() -> None:
    for i, (cls, _, _) in enumerate(ERROR_TABLE):
        for later, _, _ in ERROR_TABLE[i + 1 :]:
            assert not issubclass(later, cls) or later is cls, (later, cls)


def test_unauthorized_carries_basic_challenge_when_client_auth_is_on() -> None:
    response = response_for_exception(e.UnauthorizedError("no"), basic_realm="trustproxy")
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == 'Basic realm="trustproxy"'


def test_upstream_refusal_never_asks_the_client_for_credentials() -> None:
    response = response_for_exception(UpstreamUnauthorizedError("hub", "no"), basic_realm="tp")
    assert response.status_code == 403
    assert "www-authenticate" not in response.headers


@pytest.mark.parametrize(
    "exc",
    [RuntimeError("secret-token-abc"), KeyError("secret-token-abc"),
     ValueError("secret-token-abc"), e.TrustproxyError("secret-token-abc")],
    ids=["runtime", "key", "value", "bare-base"],
)  # fmt: skip
def test_unknown_exception_is_500_without_detail(
    exc: BaseException, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.ERROR, logger="trustproxy.errors"):
        response = response_for_exception(exc)
    assert response.status_code == 500
    entry = only_error(response)
    assert entry["code"] == "UNKNOWN"
    assert entry["detail"] == {}
    assert b"secret-token-abc" not in bytes(response.body)
    # The operator still gets it, in the log.
    assert any(r.exc_info and r.exc_info[1] is exc for r in caplog.records)


@pytest.mark.parametrize(
    ("detail", "expected"), [(None, {}), ({"a": "b"}, {"a": "b"}), ([1], [1])], ids=str
)
def test_oci_error_body_format(detail: Any, expected: Any) -> None:
    assert json.loads(oci_error_body("CODE", "msg", detail)) == {
        "errors": [{"code": "CODE", "message": "msg", "detail": expected}]
    }
