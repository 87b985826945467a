"""Every cosign vector in ../shared/vectors/cosign driven to the outcome its README states."""

from __future__ import annotations

import base64
import hashlib
import json
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from proxy.errors import ConfigError
from proxy.sources.cosign import (
    BundleVerifier,
    CosignFormatError,
    CosignMismatchError,
    CosignPolicy,
    CosignSignatureError,
    KeyAuthority,
    KeylessAuthority,
    KeySigner,
    Match,
    evaluate,
    parse_rule_config,
    parse_sig_manifest,
    parse_trusted_root,
    verify_classic,
)
from proxy.sources.cosign.fulcio import load_pem_certs, verify_chain
from proxy.sources.cosign.keys import VerifyingKey, load_pem_key
from proxy.sources.cosign.rekor import verify_entry
from proxy.sources.cosign.trusted_root import TrustedRoot, public_good_trusted_root_bytes
from tests.simulators.sigstore_instance import SigstoreInstance, simple_signing_payload
from tests.simulators.sigstore_instance import sig_manifest as simulated_manifest
from tests.unit.sources.cosign.vectors import (
    ABC_DIGEST,
    ALICE_DIGEST,
    CONNAISSEUR,
    COSIGN_DATA,
    KEYLESS_DIGEST,
    KEYLESS_REPO,
    PRODUCTION_ROOT,
    SIGSTORE_ASSETS,
    STAGING_ROOT,
    TESTIMAGE,
    TESTIMAGE_REPO,
    image_blobs,
    needs_vectors,
    sig_manifest,
)

pytestmark = needs_vectors

NOW = datetime(2026, 12, 1, tzinfo=UTC)
ATTESTATION_DIGEST = "sha256:732112270d7e59418a8c080b134b24cabd67d250d0d0147a97ed95ba5c280aa4"
ATTESTATION_PREDICATE = frozenset({"https://cosign.sigstore.dev/attestation/v1"})


def key(name: str) -> VerifyingKey:
    return load_pem_key((CONNAISSEUR / f"{name}.key").read_bytes())


def key_policy(*names: str, threshold: int = 1, tlog: str = "optional") -> CosignPolicy:
    return CosignPolicy(
        tuple(KeyAuthority(key(n), name=n) for n in names),
        threshold=threshold,
        tlog=tlog,  # type: ignore[arg-type]
        rule="docker.io/securesystemsengineering/**",
    )


def production_root() -> TrustedRoot:
    return parse_trusted_root(PRODUCTION_ROOT.read_bytes())


def connaisseur_root() -> TrustedRoot:
    """A trusted root made of connaisseur's own public-good material (11_keyless.yaml):
    Rekor key, CT key and the Fulcio *root* only (the intermediate comes from the
    signature's chain annotation, as a path hint)."""
    host = yaml.safe_load((CONNAISSEUR / "11_keyless.yaml").read_text())["host"]

    def der_key(pem: str) -> bytes:
        return serialization.load_pem_public_key(pem.encode()).public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    def log(pem: str) -> dict[str, object]:
        der = der_key(pem)
        return {
            "baseUrl": "https://example",
            "hashAlgorithm": "SHA2_256",
            "publicKey": {"rawBytes": base64.b64encode(der).decode(),
                          "validFor": {"start": "2021-01-01T00:00:00Z"}},
            "logId": {"keyId": base64.b64encode(hashlib.sha256(der).digest()).decode()},
        }  # fmt: skip

    fulcio = x509.load_pem_x509_certificate(host["fulcioCert"].encode())
    root = {
        "mediaType": "application/vnd.dev.sigstore.trustedroot+json;version=0.1",
        "tlogs": [log(host["rekorPubkey"])],
        "ctlogs": [log(host["ctLogPubkey"])],
        "certificateAuthorities": [
            {
                "uri": "https://fulcio.sigstore.dev",
                "certChain": {"certificates": [{"rawBytes": base64.b64encode(
                    fulcio.public_bytes(serialization.Encoding.DER)).decode()}]},
                "validFor": {"start": "2021-01-01T00:00:00Z"},
            }
        ],
    }  # fmt: skip
    return parse_trusted_root(json.dumps(root).encode())


# --- connaisseur: classic key-based ----------------------------------------------------


@pytest.mark.parametrize(
    ("name", "verifies"),
    [("alice", True), ("bob", False), ("charlie", False), ("default", False)],
)
def test_alice_signature_verifies_with_alice_only(name: str, verifies: bool) -> None:
    manifest_digest = (
        "sha256:"
        + hashlib.sha256(
            (TESTIMAGE / "manifests" / "multi-cosigned-alice.json").read_bytes()
        ).hexdigest()
    )
    assert manifest_digest == ALICE_DIGEST
    result = verify_classic(
        sig_manifest(ALICE_DIGEST), image_blobs(), digest=ALICE_DIGEST,
        keys=[key(name)], root=None, now=NOW,
    )  # fmt: skip
    verdict = evaluate(
        key_policy(name), repository=TESTIMAGE_REPO, digest=ALICE_DIGEST,
        signatures=result.verified, rejected=result.rejected,
    )  # fmt: skip
    assert verdict.accepted is verifies
    if verifies:
        assert verdict.satisfied == ("alice",)
        assert result.verified[0].reference == TESTIMAGE_REPO
    else:
        assert not result.verified
        assert verdict.reasons[0] == (
            f"no cosign signature for {ALICE_DIGEST} by any authority"
            " of rule docker.io/securesystemsengineering/**"
        )
        assert "does not verify with any key" in verdict.reason


def test_three_signers_each_layer_with_exactly_its_key() -> None:
    blobs = image_blobs()
    for index, name in enumerate(("alice", "bob", "charlie")):
        result = verify_classic(
            sig_manifest(ABC_DIGEST), blobs, digest=ABC_DIGEST, keys=[key(name)],
            root=None, now=NOW,
        )  # fmt: skip
        assert [v.origin for v in result.verified] == [f"layer {index}"]
        assert len(result.rejected) == 2


@pytest.mark.parametrize(
    ("names", "threshold", "accepted", "headline"),
    [
        (("alice", "bob", "charlie"), 3, True, ""),
        (("alice", "bob", "charlie", "default"), 3, True, ""),
        (("alice", "default"), 2, False, "signed by alice but the rule needs 2 authorities"),
        (("bob", "default"), 1, True, ""),
        (("default",), 1, False, f"no cosign signature for {ABC_DIGEST} by any authority"),
    ],
    ids=["3-of-3", "3-of-4", "1-of-2-needs-2", "any-one", "none"],
)
def test_threshold_over_three_signers(
    names: tuple[str, ...], threshold: int, accepted: bool, headline: str
) -> None:
    policy = key_policy(*names, threshold=threshold)
    result = verify_classic(
        sig_manifest(ABC_DIGEST), image_blobs(), digest=ABC_DIGEST, keys=policy.keys,
        root=None, now=NOW,
    )  # fmt: skip
    verdict = evaluate(policy, repository=TESTIMAGE_REPO, digest=ABC_DIGEST,
                       signatures=result.verified, rejected=result.rejected)  # fmt: skip
    assert verdict.accepted is accepted
    if headline:
        assert verdict.reasons[0].startswith(headline)


def test_key_signature_without_log_entry_fails_tlog_required() -> None:
    policy = key_policy("alice", tlog="required")
    result = verify_classic(sig_manifest(ALICE_DIGEST), image_blobs(), digest=ALICE_DIGEST,
                            keys=policy.keys, root=None, now=NOW)  # fmt: skip
    verdict = evaluate(policy, repository=TESTIMAGE_REPO, digest=ALICE_DIGEST,
                       signatures=result.verified)  # fmt: skip
    assert not verdict.accepted
    assert "has no verified transparency-log entry" in verdict.reason


def test_signature_of_one_image_does_not_sign_another() -> None:
    # alice's .sig manifest presented for the three-signer image: copy-paste attack.
    result = verify_classic(sig_manifest(ALICE_DIGEST), image_blobs(), digest=ABC_DIGEST,
                            keys=[key("alice")], root=None, now=NOW)  # fmt: skip
    assert not result.verified
    assert result.rejected[0].reason == f"signature is for {ALICE_DIGEST}, not {ABC_DIGEST}"


def test_docker_reference_must_name_the_served_repository() -> None:
    policy = key_policy("alice", tlog="optional")
    result = verify_classic(sig_manifest(ALICE_DIGEST), image_blobs(), digest=ALICE_DIGEST,
                            keys=policy.keys, root=None, now=NOW)  # fmt: skip
    other = evaluate(policy, repository="docker.io/securesystemsengineering/other",
                     digest=ALICE_DIGEST, signatures=result.verified)  # fmt: skip
    assert not other.accepted
    assert f"is for {TESTIMAGE_REPO}" in other.reason
    mirror = ("registry.local/mirror", "docker.io/securesystemsengineering")
    remapped = CosignPolicy(policy.authorities, tlog="optional", remap=(mirror,))
    assert evaluate(remapped, repository="registry.local/mirror/testimage", digest=ALICE_DIGEST,
                    signatures=result.verified).accepted  # fmt: skip


def test_unsigned_image_has_no_signature() -> None:
    # co-unsigned.json stands for an image without a .sig tag: nothing to verify.
    digest = (
        "sha256:"
        + hashlib.sha256((TESTIMAGE / "manifests" / "co-unsigned.json").read_bytes()).hexdigest()
    )
    verdict = evaluate(key_policy("alice"), repository=TESTIMAGE_REPO, digest=digest,
                       signatures=())  # fmt: skip
    assert not verdict.accepted
    assert verdict.reasons == (
        f"no cosign signature for {digest} by any authority"
        " of rule docker.io/securesystemsengineering/**",
    )
    with pytest.raises(CosignFormatError, match="schemaVersion"):
        parse_sig_manifest((TESTIMAGE / "manifests" / "co-unsigned.json").read_bytes())


# --- connaisseur: classic keyless ------------------------------------------------------

PHILIPP = KeylessAuthority(Match(regexp=re.compile("philipp")), Match(regexp=re.compile("github")),
                           name="philipp-keyless")  # fmt: skip
BOB = KeylessAuthority(Match(exact="bob@gmail.com"), Match(regexp=re.compile("google")),
                       name="bob-keyless")  # fmt: skip
PHILIPP_EXACT = KeylessAuthority(
    Match(exact="philipp.belitz@securesystems.de"), Match(exact="https://github.com/login/oauth")
)


@pytest.mark.parametrize(
    "root_of",
    [production_root, connaisseur_root,
     lambda: parse_trusted_root(public_good_trusted_root_bytes())],
    ids=["sigstore-python-production", "connaisseur-11_keyless", "sigstore-wheel"],
)  # fmt: skip
@pytest.mark.parametrize(
    ("authority", "accepted"),
    [(PHILIPP, True), (PHILIPP_EXACT, True), (BOB, False)],
    ids=["philipp-regex", "philipp-exact", "bob"],
)
def test_keyless_vector(root_of: object, authority: KeylessAuthority, accepted: bool) -> None:
    assert callable(root_of)
    root = root_of()
    digest = (
        "sha256:"
        + hashlib.sha256((TESTIMAGE / "manifests" / "keyless.json").read_bytes()).hexdigest()
    )
    assert digest == KEYLESS_DIGEST
    result = verify_classic(sig_manifest(KEYLESS_DIGEST), image_blobs(),
                            digest=KEYLESS_DIGEST, keys=(), root=root, now=NOW)  # fmt: skip
    assert result.rejected == ()
    (sig,) = result.verified
    assert sig.log_entry is not None
    assert sig.log_entry.integrated_time == datetime.fromtimestamp(1717082297, UTC)
    assert sig.log_entry.log_id.startswith("c0d23d6a")
    assert sig.reference == KEYLESS_REPO
    policy = CosignPolicy((authority,), rule="docker.io/phbelitz/*")
    verdict = evaluate(policy, repository=KEYLESS_REPO, digest=KEYLESS_DIGEST,
                       signatures=result.verified)  # fmt: skip
    assert verdict.accepted is accepted
    if not accepted:
        assert "philipp.belitz@securesystems.de" in verdict.reason
        assert "which is no authority of the rule" in verdict.reason


def test_keyless_vector_without_trusted_root_is_refused() -> None:
    result = verify_classic(sig_manifest(KEYLESS_DIGEST), image_blobs(),
                            digest=KEYLESS_DIGEST, keys=(), root=None, now=NOW)  # fmt: skip
    assert not result.verified
    assert "no trusted root" in result.rejected[0].reason


def test_keyless_vector_without_its_log_entry_is_an_expired_certificate() -> None:
    node = json.loads(sig_manifest(KEYLESS_DIGEST))
    del node["layers"][0]["annotations"]["dev.sigstore.cosign/bundle"]
    result = verify_classic(json.dumps(node).encode(), image_blobs(), digest=KEYLESS_DIGEST,
                            keys=(), root=production_root(), now=NOW)  # fmt: skip
    assert not result.verified
    assert "does not chain to a trusted Fulcio CA" in result.rejected[0].reason


def test_keyless_vector_against_a_root_without_its_ct_log_fails_the_sct() -> None:
    staging = parse_trusted_root(STAGING_ROOT.read_bytes())
    production = production_root()
    mixed = TrustedRoot(production.raw, production.tlogs, staging.ctlogs, production.fulcio, ())
    result = verify_classic(sig_manifest(KEYLESS_DIGEST), image_blobs(),
                            digest=KEYLESS_DIGEST, keys=(), root=mixed, now=NOW)  # fmt: skip
    assert "SCT" in result.rejected[0].reason


# --- cosign: the attestation bundle ----------------------------------------------------


@pytest.mark.parametrize(
    "root_file",
    [COSIGN_DATA / "trusted_root_pgi.json", PRODUCTION_ROOT],
    ids=["trusted_root_pgi", "sigstore-python-production"],
)
def test_cosign_attestation_bundle_verifies(root_file: Path) -> None:
    verifier = BundleVerifier(parse_trusted_root(root_file.read_bytes()))
    data = (COSIGN_DATA / "oci-attestation.sigstore.json").read_bytes()
    sig = verifier.verify_image(data, digest=ATTESTATION_DIGEST,
                                predicate_types=ATTESTATION_PREDICATE)  # fmt: skip
    assert sig.log_entry is not None
    assert sig.log_entry.log_index == 175508996
    right = KeylessAuthority(Match(exact="cody@soyland.com"),
                             Match(exact="https://github.com/login/oauth"))  # fmt: skip
    wrong_san = KeylessAuthority(Match(exact="mallory@example.com"),
                                 Match(exact="https://github.com/login/oauth"))  # fmt: skip
    wrong_issuer = KeylessAuthority(Match(exact="cody@soyland.com"),
                                    Match(exact="https://accounts.google.com"))  # fmt: skip
    repo = "127.0.0.1:60943/repo"
    assert evaluate(CosignPolicy((right,)), repository=repo, digest=ATTESTATION_DIGEST,
                    signatures=[sig]).accepted  # fmt: skip
    for authority in (wrong_san, wrong_issuer):
        assert not evaluate(CosignPolicy((authority,)), repository=repo,
                            digest=ATTESTATION_DIGEST, signatures=[sig]).accepted  # fmt: skip


def test_cosign_attestation_bundle_is_not_an_image_signature() -> None:
    verifier = BundleVerifier(production_root())
    data = (COSIGN_DATA / "oci-attestation.sigstore.json").read_bytes()
    with pytest.raises(CosignMismatchError, match="predicate type"):
        verifier.verify_image(data, digest=ATTESTATION_DIGEST)
    with pytest.raises(CosignMismatchError, match="does not sign"):
        verifier.verify_image(data, digest="sha256:" + "0" * 64,
                              predicate_types=ATTESTATION_PREDICATE)  # fmt: skip


def test_cosign_attestation_bundle_with_a_flipped_signature_byte() -> None:
    node = json.loads((COSIGN_DATA / "oci-attestation.sigstore.json").read_bytes())
    sig = bytearray(base64.b64decode(node["dsseEnvelope"]["signatures"][0]["sig"]))
    sig[-1] ^= 1
    node["dsseEnvelope"]["signatures"][0]["sig"] = base64.b64encode(bytes(sig)).decode()
    with pytest.raises(CosignSignatureError):
        BundleVerifier(production_root()).verify_image(
            json.dumps(node).encode(), digest=ATTESTATION_DIGEST,
            predicate_types=ATTESTATION_PREDICATE,
        )  # fmt: skip


# --- sigstore-python: blob bundles against the staging root ---------------------------

SIGSTORE_CASES = [
    ("bundle.txt", "bundle.txt.sigstore", None, "a@tny.town"),
    ("bundle_v3.txt", "bundle_v3.txt.sigstore", None, "william@yossarian.net"),
    ("bundle_v3_alt.txt", "bundle_v3_alt.txt.sigstore", None, "william@yossarian.net"),
    ("a.dsse.staging-rekor-v2.txt", "a.dsse.staging-rekor-v2.txt.sigstore.json", None,
     "https://github.com/sigstore-conformance/extremely-dangerous-public-oidc-beacon/"
     ".github/workflows/extremely-dangerous-oidc-beacon.yml@refs/heads/main"),
    ("bundle_cve_2022_36056.txt", "bundle_cve_2022_36056.txt.sigstore",
     "transparency log entry is inconsistent with other materials", None),
    ("bundle_invalid_version.txt", "bundle_invalid_version.txt.sigstore",
     "unknown bundle media type", None),
    ("bundle_no_cert_v1.txt", "bundle_no_cert_v1.txt.sigstore",
     "expected non-empty certificate chain in bundle", None),
    ("bundle_no_log_entry.txt", "bundle_no_log_entry.txt.sigstore",
     "expected exactly one log entry in bundle", None),
    ("bundle_no_checkpoint.txt", "bundle_no_checkpoint.txt.sigstore",
     "entry must contain inclusion proof, with checkpoint", None),
    ("bundle_v3_no_signed_time.txt", "bundle_v3_no_signed_time.txt.sigstore.json",
     "bundle must contain an inclusion promise or signed timestamp(s)", None),
]  # fmt: skip


@pytest.mark.parametrize(
    ("artifact", "bundle", "error", "san"), SIGSTORE_CASES, ids=[c[0] for c in SIGSTORE_CASES]
)
def test_sigstore_python_bundles(
    artifact: str, bundle: str, error: str | None, san: str | None
) -> None:
    verifier = BundleVerifier(parse_trusted_root(STAGING_ROOT.read_bytes()))
    data = (SIGSTORE_ASSETS / bundle).read_bytes()
    # DSSE bundles sign their own payload; message-signature bundles sign the artifact.
    signed = None if ".dsse." in artifact else (SIGSTORE_ASSETS / artifact).read_bytes()
    if error is not None:
        with pytest.raises(
            (CosignFormatError, CosignSignatureError, CosignMismatchError), match=re.escape(error)
        ):
            verifier.verify(data, artifact=signed)
        return
    result = verifier.verify(data, artifact=signed)
    assert san is not None
    assert san in result.signer.identity.sans  # type: ignore[union-attr]


def _root_with_tsa(tsa: Path) -> TrustedRoot:
    node = json.loads(STAGING_ROOT.read_bytes())
    node["timestampAuthorities"] = [json.loads(tsa.read_bytes())]
    return parse_trusted_root(json.dumps(node).encode())


@pytest.mark.parametrize(
    ("bundle", "ok"),
    [("bundle.txt.sigstore", True), ("bundle.txt.late_timestamp.sigstore", False)],
    ids=["in-window", "late-timestamp"],
)
def test_sigstore_python_tsa_bundles(bundle: str, ok: bool) -> None:
    tsa = SIGSTORE_ASSETS / "tsa"
    verifier = BundleVerifier(_root_with_tsa(tsa / "ca.json"))
    data = (tsa / bundle).read_bytes()
    artifact = (tsa / "bundle.txt").read_bytes()
    if ok:
        verifier.verify(data, artifact=artifact)
    else:
        with pytest.raises(CosignSignatureError):
            verifier.verify(data, artifact=artifact)


def test_sigstore_python_trusted_root_v1_parses() -> None:
    root = parse_trusted_root(
        (SIGSTORE_ASSETS / "trusted_root" / "trustedroot.v1.json").read_bytes()
    )
    assert root.fulcio
    assert root.tlogs


# --- our Merkle and checkpoint code on real Rekor entries (v1 and v2) ------------------


def _entry(path: Path) -> dict[str, Any]:
    entry: dict[str, Any] = json.loads(path.read_bytes())["verificationMaterial"]["tlogEntries"][0]
    return entry


@pytest.mark.parametrize(
    ("bundle", "root_file", "drop_promise"),
    [
        (COSIGN_DATA / "oci-attestation.sigstore.json", PRODUCTION_ROOT, False),
        (COSIGN_DATA / "oci-attestation.sigstore.json", PRODUCTION_ROOT, True),
        (SIGSTORE_ASSETS / "a.dsse.staging-rekor-v2.txt.sigstore.json", STAGING_ROOT, False),
        (SIGSTORE_ASSETS / "bundle_v3.txt.sigstore", STAGING_ROOT, True),
    ],
    ids=["rekor-v1-set-and-proof", "rekor-v1-proof-only", "rekor-v2-ed25519-note",
         "staging-v1-proof-only"],
)  # fmt: skip
def test_real_log_entries_verify(bundle: Path, root_file: Path, drop_promise: bool) -> None:
    entry = _entry(bundle)
    if drop_promise:
        entry.pop("inclusionPromise", None)
    root = parse_trusted_root(root_file.read_bytes())
    fact = verify_entry(entry, root, "tlogEntries[0]")
    assert fact.log_index == int(entry["logIndex"])
    # Tampering with any proof hash breaks it.
    entry["inclusionProof"]["hashes"][0] = base64.b64encode(b"\0" * 32).decode()
    entry.pop("inclusionPromise", None)
    with pytest.raises(CosignSignatureError, match="root hash"):
        verify_entry(entry, root, "tlogEntries[0]")


def test_real_log_entry_against_the_other_instance_is_refused() -> None:
    entry = _entry(COSIGN_DATA / "oci-attestation.sigstore.json")
    with pytest.raises(CosignSignatureError, match="unknown Rekor log"):
        verify_entry(entry, parse_trusted_root(STAGING_ROOT.read_bytes()), "tlogEntries[0]")


# --- sigstore-python's bogus certificates are never signing certificates ---------------


@pytest.mark.parametrize(
    "name", sorted(p.name for p in (SIGSTORE_ASSETS / "x509").glob("*.pem"))
    if (SIGSTORE_ASSETS / "x509").is_dir() else [],
)  # fmt: skip
def test_bogus_certificates_are_refused_even_when_pinned(name: str) -> None:
    cert = x509.load_pem_x509_certificate((SIGSTORE_ASSETS / "x509" / name).read_bytes())
    der = base64.b64encode(cert.public_bytes(serialization.Encoding.DER)).decode()
    root = parse_trusted_root(json.dumps({
        "mediaType": "application/vnd.dev.sigstore.trustedroot+json;version=0.1",
        "certificateAuthorities": [{"certChain": {"certificates": [{"rawBytes": der}]},
                                    "validFor": {"start": "2022-01-01T00:00:00Z"}}],
    }).encode())  # fmt: skip
    with pytest.raises(CosignSignatureError, match="does not chain to a trusted Fulcio CA"):
        verify_chain(cert, [], root, datetime(2024, 1, 1, tzinfo=UTC))


# --- the simulator writes what cosign writes (tests/simulators/sigstore_instance.py) ---


def test_simulated_classic_layout_matches_the_connaisseur_vectors() -> None:
    # The payload bytes are exactly cosign's, for the same digest and reference.
    blob = image_blobs()["sha256:897d9e862b4599b723442f36ed7b4cfd1628bb7656643c56855988cac161d065"]
    assert simple_signing_payload(KEYLESS_DIGEST, "index.docker.io/phbelitz/rekor-test") == blob
    vector = json.loads(sig_manifest(KEYLESS_DIGEST))
    layer = SigstoreInstance().keyless_layer(KEYLESS_DIGEST, "index.docker.io/phbelitz/rekor-test")
    made = json.loads(simulated_manifest([layer]))
    assert made["mediaType"] == vector["mediaType"]
    assert made["layers"][0]["mediaType"] == vector["layers"][0]["mediaType"]
    assert set(made["layers"][0]["annotations"]) == set(vector["layers"][0]["annotations"])
    ours = json.loads(made["layers"][0]["annotations"]["dev.sigstore.cosign/bundle"])
    theirs = json.loads(vector["layers"][0]["annotations"]["dev.sigstore.cosign/bundle"])
    assert set(ours) == set(theirs)
    assert set(ours["Payload"]) == set(theirs["Payload"])
    our_body = json.loads(base64.b64decode(ours["Payload"]["body"]))
    their_body = json.loads(base64.b64decode(theirs["Payload"]["body"]))
    assert (our_body["kind"], our_body["apiVersion"]) == (their_body["kind"], "0.0.1")
    assert set(our_body["spec"]) == set(their_body["spec"])


# --- connaisseur's validator configs, read into ours where they have a counterpart ------


def _connaisseur_config(name: str) -> Any:
    return yaml.safe_load((CONNAISSEUR / name).read_text())


def _as_rule(config: Any) -> Any:
    if not isinstance(config, dict):
        return config  # 03: not a mapping at all
    roots = config.get("trustRoots")
    if roots is None:
        return {}
    return {"authorities": [{"keyData": r["key"], "name": r["name"]} for r in roots if "key" in r]}


@pytest.mark.parametrize("name", ["01_cosign.yaml", "09_full_config.yaml"])
def test_connaisseur_key_configs_parse_and_alice_verifies(name: str, tmp_path: Path) -> None:
    policy = parse_rule_config(_as_rule(_connaisseur_config(name)), "rule", tmp_path)
    alice = next(a for a in policy.authorities if a.label == "alice")
    assert isinstance(alice, KeyAuthority)
    assert alice.key.key_id == key("alice").key_id
    result = verify_classic(sig_manifest(ALICE_DIGEST), image_blobs(), digest=ALICE_DIGEST,
                            keys=policy.keys, root=None, now=NOW)  # fmt: skip
    assert [s.signer for s in result.verified] == [KeySigner(alice.key.key_id)]


@pytest.mark.parametrize(
    ("name", "path", "message"),
    [
        ("03_unmarshal_err.yaml", "rule", "must be a mapping"),
        ("05_no_trust_roots.yaml", "rule.authorities", "must be a non-empty list"),
    ],
)
def test_connaisseur_bad_configs(name: str, path: str, message: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        parse_rule_config(_as_rule(_connaisseur_config(name)), "rule", tmp_path)
    assert (info.value.path, message in info.value.message) == (path, True)


@pytest.mark.parametrize(
    ("name", "field"),
    [("12_invalid_rekor_pub_key.yaml", "rekorPubkey"),
     ("14_invalid_ct_log_pub_key.yaml", "ctLogPubkey")],
)  # fmt: skip
def test_connaisseur_faulty_log_keys_are_refused(name: str, field: str, tmp_path: Path) -> None:
    pem = _connaisseur_config(name)["host"][field]
    with pytest.raises(ConfigError, match="not a PEM public key"):
        parse_rule_config({"authorities": [{"keyData": pem}]}, "rule", tmp_path)


@pytest.mark.parametrize(
    ("name", "where"),
    [("13_invalid_fulcio_cert.yaml", ("host", "fulcioCert")), ("10_invalid_cert.yaml", ("cert",))],
)
def test_connaisseur_faulty_certificates_are_refused(name: str, where: tuple[str, ...]) -> None:
    node = _connaisseur_config(name)
    for part in where:
        node = node[part]
    with pytest.raises(CosignFormatError, match="not PEM certificates"):
        load_pem_certs(node.encode(), field="cert")
