"""CRLs fetched from distribution points: only allowed hosts, cached, bounded, and what
cannot be had is "unknown", which the trust policy's level decides about."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from proxy.errors import ConfigError, NotSignedError
from proxy.settings import parse_settings
from proxy.sources.notation.crl_fetch import (
    MAX_URLS,
    CrlFetcher,
    distribution_points,
    http_get,
)
from proxy.sources.notation.entry import NotationSettings
from proxy.sources.notation.judge import NotationJudge, served_media_type
from proxy.sources.notation.rule import NotationRule
from proxy.sources.notation.trustpolicy import StoreRef, StoreType, parse_trust_policy
from proxy.sources.notation.truststore import TrustStore
from testbed.notation_signer import Signer, make_cert, make_crl, signature_artifact
from tests.unit.sources.notation.fake_registry import FakeRegistry

pytestmark = pytest.mark.anyio

NOW = datetime(2026, 6, 1, tzinfo=UTC)
URL = "http://crl.test:8080/ca.crl"
IMAGE = b'{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","n":1}'


class Pki:
    def __init__(self, url: str = URL) -> None:
        self.root_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.root = make_cert("root", self.root_key, ca=True)
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.leaf = make_cert("leaf", key, issuer=(self.root, self.root_key), crl_url=url)
        self.signer = Signer(key, [self.leaf, self.root])

    def crl(self, *, revoked: bool = False, expired: bool = False) -> bytes:
        nxt = NOW - timedelta(days=1) if expired else NOW + timedelta(days=7)
        last = NOW - timedelta(days=10)
        serials = [self.leaf.serial_number] if revoked else []
        return make_crl(self.root, self.root_key, serials, last_update=last, next_update=nxt)


class Server:
    """``get`` answering from a dict; counts requests; ``down`` raises."""

    def __init__(self, answers: dict[str, bytes | None]) -> None:
        self.answers = answers
        self.asked: list[str] = []
        self.down = False

    async def get(self, url: str, max_bytes: int) -> bytes | None:
        self.asked.append(url)
        if self.down:
            raise httpx.ConnectError("connection refused")
        return self.answers.get(url)


def world(
    pki: Pki,
    server: Server,
    *,
    level: str = "strict",
    override: Any = None,
    hosts: tuple[str, ...] = ("crl.test:8080",),
) -> tuple[NotationJudge, FakeRegistry, str]:
    verification: dict[str, Any] = {"level": level}
    if override:
        verification["override"] = override
    doc = {
        "version": "1.0",
        "trustPolicies": [
            {
                "name": "crl",
                "registryScopes": ["*"],
                "signatureVerification": verification,
                "trustStores": ["ca:pki"],
                "trustedIdentities": ["*"],
            }
        ],
    }
    store = TrustStore.of({StoreRef(StoreType.CA, "pki"): [pki.root]})
    judge = NotationJudge(
        source="n",
        document=parse_trust_policy(json.dumps(doc).encode()),
        trust_store=store,
        crl_fetcher=CrlFetcher(frozenset(hosts), server.get),
    )
    registry = FakeRegistry()
    digest = registry.put_manifest(IMAGE, "v1")
    media = served_media_type(IMAGE)
    envelope = pki.signer.jws(Signer.payload(media, digest, len(IMAGE)))
    subject = {"mediaType": media, "digest": digest, "size": len(IMAGE)}
    registry.put_signature(signature_artifact(subject, envelope))
    return judge, registry, digest


async def test_a_fetched_crl_that_does_not_list_the_leaf() -> None:
    pki = Pki()
    server = Server({URL: pki.crl()})
    judge, registry, digest = world(pki, server)
    answer = await judge.judge(registry, "r/a", digest, NotationRule(), NOW)
    assert answer.evidence["logged_failures"] == []
    await judge.judge(registry, "r/a", digest, NotationRule(), NOW + timedelta(minutes=5))
    assert server.asked == [URL]  # cached


async def test_a_fetched_crl_that_revokes_the_leaf() -> None:
    pki = Pki()
    judge, registry, digest = world(pki, Server({URL: pki.crl(revoked=True)}))
    with pytest.raises(NotSignedError, match=r"revocation validation failed: .* is revoked"):
        await judge.judge(registry, "r/a", digest, NotationRule(), NOW)


@pytest.mark.parametrize("case", ["down", "404", "not a CRL", "expired", "host not allowed",
                                  "forged"])  # fmt: skip
async def test_no_usable_crl_is_unknown_and_the_level_decides(case: str) -> None:
    pki = Pki()
    other = Pki()  # a CRL signed by another CA's key (same names): never used
    by_case: dict[str, dict[str, bytes | None]] = {
        "404": {},
        "not a CRL": {URL: b"hello"},
        "expired": {URL: pki.crl(expired=True)},
        "forged": {URL: other.crl()},
    }
    answers = by_case.get(case, {URL: pki.crl(revoked=True)})
    server = Server(answers)
    server.down = case == "down"
    hosts = ("crl.example",) if case == "host not allowed" else ("crl.test:8080",)
    judge, registry, digest = world(pki, server, hosts=hosts)
    with pytest.raises(NotSignedError, match="revocation status is unknown"):
        await judge.judge(registry, "r/a", digest, NotationRule(), NOW)
    if case == "host not allowed":
        assert server.asked == []
    relaxed, registry, digest = world(pki, server, override={"revocation": "log"}, hosts=hosts)
    answer = await relaxed.judge(registry, "r/a", digest, NotationRule(), NOW)
    assert any("revocation" in f for f in answer.evidence["logged_failures"])
    skipped, registry, digest = world(pki, server, override={"revocation": "skip"}, hosts=hosts)
    asked = len(server.asked)
    await skipped.judge(registry, "r/a", digest, NotationRule(), NOW)
    assert len(server.asked) == asked  # skipped: nothing fetched


async def test_a_failed_fetch_is_retried_later_not_on_every_request() -> None:
    pki = Pki()
    server = Server({URL: pki.crl()})
    server.down = True
    fetcher = CrlFetcher(frozenset({"crl.test:8080"}), server.get)
    assert await fetcher.crls_for([pki.leaf, pki.root], NOW) == ()
    assert await fetcher.crls_for([pki.leaf, pki.root], NOW + timedelta(seconds=5)) == ()
    assert len(server.asked) == 1
    server.down = False
    (crl,) = await fetcher.crls_for([pki.leaf, pki.root], NOW + timedelta(minutes=1))
    assert crl.issuer == pki.root.subject


def test_distribution_points_only_from_allowed_hosts() -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    cases = {
        "http://crl.test:8080/a.crl": ("crl.test:8080",),
        "https://CRL.test/a.crl": ("crl.test",),
        "ftp://crl.test/a.crl": (),
        "http://user@crl.test/a.crl": (),
        "http://169.254.169.254/latest": (),
        "file:///etc/passwd": (),
    }
    for url, expected in cases.items():
        cert = make_cert("x", key, crl_url=url)
        allowed = frozenset({"crl.test:8080", "crl.test"})
        assert distribution_points([cert], allowed) == ((url,) if expected else ()), url
    many = [make_cert("x", key, crl_url=f"http://crl.test/{i}.crl") for i in range(20)]
    assert len(distribution_points(many, frozenset({"crl.test"}))) == MAX_URLS


async def test_http_get_is_bounded_and_follows_no_redirect() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        path = request.url.path
        if path == "/ok.crl":
            return httpx.Response(200, content=b"x" * 10)
        if path == "/big.crl":
            return httpx.Response(200, content=b"x" * 100)
        if path == "/moved.crl":
            return httpx.Response(302, headers={"location": "http://169.254.169.254/"})
        return httpx.Response(404)

    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
        get = http_get(client)
        assert await get("http://crl.test/ok.crl", 50) == b"x" * 10
        assert await get("http://crl.test/moved.crl", 50) is None
        assert await get("http://crl.test/none.crl", 50) is None
        with pytest.raises(ValueError, match="larger than 50"):
            await get("http://crl.test/big.crl", 50)


def test_settings(tmp_path: Path) -> None:
    def raw(extra: dict[str, Any]) -> dict[str, Any]:
        source = {"type": "notation", "trust_policy": "p.json", "trust_store": "s", **extra}
        return {
            "upstreams": [{"name": "r", "url": "http://127.0.0.1:5000"}],
            "trust": {"sources": {"n": source}},
        }

    settings = parse_settings(
        raw({"crl_fetch_hosts": ["CRL.example.com", "crl.test:8080"], "crl_max_age": "10m"}),
        base_dir=tmp_path,
        check_files=False,
    )
    (src,) = settings.trust.sources
    assert isinstance(src, NotationSettings)
    assert src.notation.crl_fetch_hosts == ("crl.example.com", "crl.test:8080")
    assert src.notation.crl_max_age == 600
    for bad, where in (("*.example.com", "[0]"), (["x/y"], "[0]"), ("crl.test", "")):
        value = [bad] if isinstance(bad, str) and bad != "crl.test" else bad
        with pytest.raises(ConfigError) as err:
            parse_settings(raw({"crl_fetch_hosts": value}), base_dir=tmp_path, check_files=False)
        assert err.value.path == "trust.sources.n.crl_fetch_hosts" + where
