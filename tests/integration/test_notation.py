"""Notation end to end: notation's own e2e OCI layouts (signed by notation, not by us) pushed
into the real docker-registry (2.8.2: no referrers API, so the ``sha256-<hex>`` tag index),
trustproxy judging them with a ``type: notation`` source that reads a trustpolicy.json and a
Notation trust store folder as they are, and real skopeo pulling through the proxy.

Beside them, images signed by the project's signer helper for what the layouts cannot show:
a tag moved to an unsigned image (``onUnsignedTag: deny`` and ``lastSigned``), tag lists
filtered to signed tags, and a rule's inline trust policy fields.
"""

from __future__ import annotations

import base64
import json
import shutil
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from testbed import images
from testbed.enforcement_bed import oci_error, skopeo_copy, skopeo_list_tags
from testbed.notation_bed import push_layout, push_signature
from testbed.notation_signer import Signer, make_cert, make_crl, signature_artifact
from testbed.processes import Server, free_port, start_server
from testbed.proxy_server import start_proxy, upstream_config
from tests.conftest import RegistryBed, requires

pytestmark = pytest.mark.integration

VECTORS = Path(__file__).resolve().parents[2] / ".." / "shared" / "vectors" / "notation"
E2E = VECTORS / "notation" / "test" / "e2e" / "testdata"
LAYOUTS = E2E / "registry" / "oci_layout"
CONFIG = E2E / "config"
HELPER_IDENTITY = "x509.subject: C=US, ST=WA, O=trustproxy-test"

#: repository (under <ns>/e2e/) -> the layout pushed there
PUSHED = {
    "valid": "e2e-valid-signature",
    "multiple": "e2e-valid-multiple-signatures",
    "expired": "e2e-expired-signature",
    "expired-permissive": "e2e-expired-signature",
    "invalid": "e2e-invalid-signature",
    "expired-cert": "e2e-with-expired-cert",
    "timestamped": "e2e-with-timestamped-signature",
    "timestamped-permissive": "e2e-with-timestamped-signature",
    "invalid-timestamp": "e2e-with-invalid-timestamped-signature",
    "unsigned": "e2e",
}


@dataclass
class World:
    registry: RegistryBed
    ns: str
    proxy: Server
    audit: Path
    subjects: dict[str, str] = field(default_factory=dict)  # repository -> v1 digest
    helper: dict[str, str] = field(default_factory=dict)  # name -> digest
    signer: Signer | None = None
    crl_dir: Path | None = None  # what the CRL server serves
    crl_url: str = ""
    crl_ca: tuple[Any, Any] | None = None  # (certificate, key) of the CA whose CRL it is

    @property
    def host(self) -> str:
        return str(self.proxy.extra["host"])

    def manifest(self, repo: str, ref: str) -> httpx.Response:
        return httpx.get(
            f"{self.proxy.extra['url']}/v2/{self.ns}/{repo}/manifests/{ref}",
            headers={"Accept": f"{images.OCI_MANIFEST}, {images.OCI_INDEX}"},
            timeout=30,
        )


def _envelope_leaf(layout: Path) -> x509.Certificate:
    """The signing certificate inside a layout's (JWS) signature envelope."""
    for path in (layout / "blobs" / "sha256").iterdir():
        try:
            doc = json.loads(path.read_bytes())
        except ValueError:
            continue
        if isinstance(doc, dict) and "x5c" in doc.get("header", {}):
            return x509.load_der_x509_certificate(base64.b64decode(doc["header"]["x5c"][0]))
    raise AssertionError(f"no JWS envelope in {layout}")


def _statement(name: str, scopes: list[str], level: str, stores: list[str], ids: list[str]) -> Any:
    return {
        "name": name,
        "registryScopes": scopes,
        "signatureVerification": {"level": level},
        "trustStores": stores,
        "trustedIdentities": ids,
    }


def _notation_dir(folder: Path, scope: str, helper_root: x509.Certificate) -> Path:
    """Notation's own layout: trustpolicy.json and truststore/x509/{ca,tsa}/<name>/."""
    ca = folder / "truststore" / "x509" / "ca"
    for store, certs in {
        "e2e": [CONFIG / "localkeys" / "e2e.crt", CONFIG / "localkeys" / "expired_e2e.crt"],
    }.items():
        (ca / store).mkdir(parents=True)
        for cert in certs:
            shutil.copy(cert, ca / store / cert.name)
    (ca / "stamped").mkdir()
    for name in ("e2e-with-timestamped-signature", "e2e-with-invalid-timestamped-signature"):
        pem = _envelope_leaf(LAYOUTS / name).public_bytes(serialization.Encoding.PEM)
        (ca / "stamped" / f"{name}.pem").write_bytes(pem)
    (ca / "helper").mkdir()
    (ca / "helper" / "root.pem").write_bytes(helper_root.public_bytes(serialization.Encoding.PEM))
    tsa = folder / "truststore" / "x509" / "tsa" / "e2e"
    tsa.mkdir(parents=True)
    shutil.copy(CONFIG / "timestamp" / "globalsignTSARoot.cer", tsa / "globalsign.cer")
    stamped = ["ca:stamped", "tsa:e2e"]
    doc = {
        "version": "1.0",
        "trustPolicies": [
            _statement("e2e", ["*"], "strict", ["ca:e2e"], ["*"]),
            _statement("permissive", [f"{scope}/expired-permissive"], "permissive",
                       ["ca:e2e"], ["*"]),
            _statement("stamped", [f"{scope}/timestamped", f"{scope}/invalid-timestamp"],
                       "strict", stamped, ["*"]),
            _statement("stamped-permissive", [f"{scope}/timestamped-permissive"],
                       "permissive", stamped, ["*"]),
        ],
    }  # fmt: skip
    (folder / "trustpolicy.json").write_text(json.dumps(doc, indent=2), encoding="utf-8")
    return folder


@pytest.fixture(scope="module")
def world(registry: RegistryBed, tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    requires("skopeo")
    if not LAYOUTS.is_dir():
        pytest.skip(f"Notation vectors not found at {VECTORS} (../shared/vectors)")
    workdir = tmp_path_factory.mktemp("notation")
    ns = "n" + uuid.uuid4().hex[:10]
    # A CRL distribution point: a plain HTTP server on loopback serving crl_dir.
    crl_dir = workdir / "crl-server"
    crl_dir.mkdir()
    crl_port = free_port()
    crl_server = start_server(
        "crl-server",
        [sys.executable, "-m", "http.server", "--bind", "127.0.0.1", "--directory",
         str(crl_dir), str(crl_port)],
        log_dir=workdir, port=crl_port,
    )  # fmt: skip
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    root = make_cert("helper", key)
    notation = _notation_dir(workdir / "notation", f"{registry.host}/{ns}/e2e", root)
    inline = {
        "level": "strict",
        "trustStores": ["ca:helper"],
        "trustedIdentities": [HELPER_IDENTITY],
    }
    policy = {
        "version": "2.0",
        "trust": {
            "repositories": {
                f"{registry.host}/{ns}/e2e/**": {"source": "notation"},
                f"{registry.host}/{ns}/helper/deny": {"source": "notation", **inline},
                f"{registry.host}/{ns}/helper/last": {
                    "source": "notation", "onUnsignedTag": "lastSigned", **inline,
                },
                f"{registry.host}/{ns}/helper/digests": {
                    "source": "notation", "digests": "signed", **inline,
                },
                f"{registry.host}/{ns}/helper/crl": {"source": "notation", **inline},
            }
        },
    }  # fmt: skip
    (workdir / "policy.yaml").write_text(yaml.safe_dump(policy), encoding="utf-8")
    audit = workdir / "audit.jsonl"
    config = {
        "upstreams": [upstream_config("internal", registry.url)],
        "trust": {
            "sources": {
                "notation": {
                    "type": "notation",
                    "trust_policy": str(notation / "trustpolicy.json"),
                    "trust_store": str(notation / "truststore"),
                    "refresh_interval": "1s",
                    "crl_fetch_hosts": [f"127.0.0.1:{crl_port}"],
                    "crl_max_age": "1s",
                }
            }
        },
        "policy_file": str(workdir / "policy.yaml"),
        "audit": {"sink": "file", "path": str(audit)},
        "logging": {"format": "json"},
    }
    subjects = {
        repo: push_layout(registry.url, registry.host, LAYOUTS / layout, f"{ns}/e2e/{repo}")
        for repo, layout in PUSHED.items()
    }
    # The helper store's CA also issues a leaf that names the CRL server as its distribution
    # point (the root itself is a self-signed leaf for the other helper signatures).
    ca_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ca = make_cert("helper-ca", ca_key, ca=True)
    (notation / "truststore" / "x509" / "ca" / "helper" / "ca.pem").write_bytes(
        ca.public_bytes(serialization.Encoding.PEM)
    )
    try:
        proxy = start_proxy(workdir / "proxy", config)
    except BaseException:
        crl_server.stop()
        raise
    try:
        yield World(
            registry, ns, proxy, audit, subjects, signer=Signer(key, [root]), crl_dir=crl_dir,
            crl_url=f"http://127.0.0.1:{crl_port}/ca.crl", crl_ca=(ca, ca_key),
        )  # fmt: skip
    finally:
        proxy.stop()
        crl_server.stop()


def _sign(
    world: World, repo: str, tag: str, label: str, *, signed: bool = True, index: bool = False
) -> str:
    """Push a fresh image (``index``: a multi-arch index) under ``tag`` and, when ``signed``,
    a helper signature of it."""
    make = images.multi_arch_image if index else images.single_image
    image = make(f"{world.ns} {repo} {label}")
    with httpx.Client(base_url=world.registry.url, timeout=30) as client:
        digest = images.push_image(client, f"{world.ns}/{repo}", image, tag)
    if signed:
        assert world.signer is not None
        payload = Signer.payload(image.media_type, digest, len(image.manifest))
        subject = {"mediaType": image.media_type, "digest": digest, "size": len(image.manifest)}
        artifact = signature_artifact(subject, world.signer.jws(payload))
        push_signature(world.registry.url, f"{world.ns}/{repo}", artifact)
    return digest


def _pulled(world: World, ref: str, dest: Path) -> str:
    got = skopeo_copy(world.host, f"{world.ns}/{ref}", dest)
    assert got.ok, got.stderr
    return images.sha256((dest / "manifest.json").read_bytes())


# --- notation's e2e layouts ----------------------------------------------------------------

SERVED = ["valid", "multiple", "expired-permissive", "timestamped-permissive"]
REFUSED = {
    "expired": "expiry validation failed",
    "invalid": "integrity validation failed",
    "expired-cert": "authenticTimestamp validation failed",
    "timestamped": "expiry validation failed",
    "invalid-timestamp": "failed to parse timestamp countersignature",
    "unsigned": "no Notation signature",
}


@pytest.mark.parametrize("repo", SERVED)
def test_skopeo_pulls_what_notation_signed(world: World, repo: str, tmp_path: Path) -> None:
    assert _pulled(world, f"e2e/{repo}:v1", tmp_path / "out") == world.subjects[repo]


@pytest.mark.parametrize(("repo", "reason"), REFUSED.items())
def test_refused_with_notation_reason(world: World, repo: str, reason: str, tmp_path: Path) -> None:
    got = skopeo_copy(world.host, f"{world.ns}/e2e/{repo}:v1", tmp_path / "out")
    assert not got.ok
    assert "manifest unknown" in got.error.lower(), got.stderr
    assert reason in got.stderr, got.stderr
    r = world.manifest(f"e2e/{repo}", "v1")
    assert r.status_code == 404, r.text
    assert reason in str(oci_error(r)), r.text


def test_audit_records_the_signer_certificate_and_policy(world: World) -> None:
    assert world.manifest("e2e/valid", "v1").status_code == 200
    time.sleep(0.2)
    lines = [json.loads(line) for line in world.audit.read_text().splitlines() if line]
    line = next(
        x for x in reversed(lines)
        if x.get("repository", "").endswith("/e2e/valid") and x.get("kind") == "manifest"
    )  # fmt: skip
    assert line["signers"] == ["CN=e2e,O=Notary,L=Seattle,ST=WA,C=US"]
    assert line["trust_policy"] == "e2e"
    assert line["trust_store"] == "ca:e2e"
    assert len(line["cert_fingerprints"][0]) == 64
    permissive = next(
        x for x in reversed(lines) if x.get("repository", "").endswith("/expired-permissive")
    )
    assert any("expiry" in f for f in permissive["logged_failures"])


def test_tag_index_and_signature_manifests_do_not_leak_as_tags(world: World) -> None:
    listed = skopeo_list_tags(world.host, f"{world.ns}/e2e/valid")
    assert listed.ok, listed.stderr
    assert json.loads(listed.stdout)["Tags"] == ["v1"]


# --- helper-made signatures: moved tags, tag lists, inline rule fields ----------------------


def test_a_moved_tag_deny_and_last_signed(world: World, tmp_path: Path) -> None:
    for repo in ("helper/deny", "helper/last"):
        world.helper[repo] = _sign(world, repo, "v1", "first")
        assert _pulled(world, f"{repo}:v1", tmp_path / repo.replace("/", "-")) == world.helper[repo]
        _sign(world, repo, "v1", "moved, unsigned", signed=False)
    time.sleep(1.5)  # refresh_interval: 1s
    got = skopeo_copy(world.host, f"{world.ns}/helper/deny:v1", tmp_path / "deny")
    assert not got.ok
    assert "no Notation signature" in got.stderr, got.stderr
    last = _pulled(world, "helper/last:v1", tmp_path / "last")
    assert last == world.helper["helper/last"]


def test_tag_lists_show_signed_tags_only(world: World) -> None:
    _sign(world, "helper/deny", "signed-a", "a")
    _sign(world, "helper/deny", "unsigned-b", "b", signed=False)
    _sign(world, "helper/deny", "signed-c", "c")
    listed = skopeo_list_tags(world.host, f"{world.ns}/helper/deny")
    assert listed.ok, listed.stderr
    tags = json.loads(listed.stdout)["Tags"]
    assert "signed-a" in tags
    assert "signed-c" in tags
    assert "unsigned-b" not in tags
    assert not any(t.startswith("sha256-") for t in tags)  # tag indexes are not signed


def test_digest_pulls_under_digests_signed(world: World, tmp_path: Path) -> None:
    """A signed index pulled with all its platforms (the children by digest: served as
    listed by a signed index); an unsigned manifest by digest: refused."""
    index = _sign(world, "helper/digests", "v1", "index", index=True)
    got = skopeo_copy(world.host, f"{world.ns}/helper/digests:v1", tmp_path / "all",
                      all_images=True)  # fmt: skip
    assert got.ok, got.stderr
    assert images.sha256((tmp_path / "all" / "manifest.json").read_bytes()) == index
    unsigned = _sign(world, "helper/digests", "other", "unsigned", signed=False)
    r = world.manifest("helper/digests", unsigned)
    assert r.status_code == 404, r.text
    assert "not signed" in r.text or "no Notation signature" in r.text, r.text
    assert world.manifest("helper/digests", index).status_code == 200


def test_revocation_from_a_fetched_crl(world: World, tmp_path: Path) -> None:
    """The signing certificate names a CRL distribution point on an allowed host: not
    revoked, served; revoked there, refused; the CRL gone, "unknown", refused at strict."""
    assert world.crl_ca is not None
    assert world.crl_dir is not None
    ca, ca_key = world.crl_ca
    leaf_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    leaf = make_cert("crl-leaf", leaf_key, issuer=(ca, ca_key), crl_url=world.crl_url)
    now = datetime.now(UTC)
    last, nxt = now - timedelta(hours=1), now + timedelta(days=1)
    (world.crl_dir / "ca.crl").write_bytes(make_crl(ca, ca_key, last_update=last, next_update=nxt))
    world.signer = Signer(leaf_key, [leaf, ca])
    digest = _sign(world, "helper/crl", "v1", "crl")
    assert _pulled(world, "helper/crl:v1", tmp_path / "ok") == digest
    revoked = make_crl(ca, ca_key, [leaf.serial_number], last_update=last, next_update=nxt)
    (world.crl_dir / "ca.crl").write_bytes(revoked)
    time.sleep(1.5)  # refresh_interval and crl_max_age: 1s
    r = world.manifest("helper/crl", "v1")
    assert r.status_code == 404, r.text
    assert "is revoked" in r.text, r.text
    (world.crl_dir / "ca.crl").unlink()
    time.sleep(1.5)
    r = world.manifest("helper/crl", "v1")
    assert r.status_code == 404, r.text
    assert "revocation status is unknown" in r.text, r.text


# --- trustproxy trust inspect ----------------------------------------------------------------


def _inspect(
    world: World, capsys: pytest.CaptureFixture[str], ref: str, *extra: str
) -> tuple[int, str, str]:
    """``trustproxy trust inspect`` in this process (its code is measured)."""
    from proxy.cli import main

    code = main(["trust", "inspect", "--config", str(world.proxy.extra["config"]), *extra,
                 f"{world.registry.host}/{world.ns}/{ref}"])  # fmt: skip
    out, err = capsys.readouterr()
    return code, out, err


def test_trust_inspect_shows_signatures_signers_and_checks(
    world: World, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = _inspect(world, capsys, "e2e/multiple:v1")
    assert code == 0, err
    assert world.subjects["multiple"] in out
    assert "signer: CN=e2e,O=Notary,L=Seattle,ST=WA,C=US" in out
    assert "trust store: ca:e2e" in out
    assert "integrity: passed" in out
    code, out, _ = _inspect(world, capsys, "e2e/expired:v1", "--json")
    report = json.loads(out)
    assert (code, report["acceptable"]) == (1, False)
    (signature,) = report["signatures"]
    assert "expiry" in signature["reason"]
    code, out, _ = _inspect(world, capsys, "e2e/unsigned:v1")
    assert code == 1
    assert "no Notation signature" in out
    code, out, err = _inspect(world, capsys, "e2e/valid:nope", "--json")
    assert code == 1
    assert "does not exist" in err
    assert json.loads(out)["error"]
