"""The cosign judge over a registry in memory: discovery (``.sig`` tag, bundle referrers,
another signature repository), bounded reads, and the reasons users read. Signature data
comes from the shared vectors (read in place) and from the simulated Sigstore instance."""

from __future__ import annotations

import asyncio
import json
import re
from datetime import UTC, datetime
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from proxy.errors import TrustSourceUnavailableError, UpstreamUnavailableError
from proxy.sources.base import RegistryReads
from proxy.sources.cosign import (
    CosignPolicy,
    CosignVerifier,
    KeyAuthority,
    KeylessAuthority,
    Match,
    parse_trusted_root,
)
from proxy.sources.cosign.judge import CosignJudge, CosignNotSignedError
from proxy.sources.cosign.keys import VerifyingKey, load_pem_key
from proxy.sources.cosign.rule import CosignRule
from proxy.sources.signed_digests import DigestSigned
from tests.simulators.sigstore_instance import (
    SigstoreInstance,
    blobs_of,
    in_toto_statement,
    key_bundle,
    sig_manifest,
)
from tests.unit.sources.cosign.fake_registry import FakeRegistry, sha256
from tests.unit.sources.cosign.vectors import (
    ABC_DIGEST,
    ALICE_DIGEST,
    CONNAISSEUR,
    COSIGN_DATA,
    KEYLESS_DIGEST,
    KEYLESS_REPO,
    PRODUCTION_ROOT,
    TESTIMAGE_REPO,
    image_blobs,
    needs_vectors,
)
from tests.unit.sources.cosign.vectors import sig_manifest as vector_sig_manifest

NOW = datetime(2026, 12, 1, tzinfo=UTC)
RULE = "docker.io/securesystemsengineering/**"
ATTESTATION_DIGEST = "sha256:732112270d7e59418a8c080b134b24cabd67d250d0d0147a97ed95ba5c280aa4"
ATTESTATION_TYPE = "https://cosign.sigstore.dev/attestation/v1"


def vkey(name: str) -> VerifyingKey:
    return load_pem_key((CONNAISSEUR / f"{name}.key").read_bytes())


def key_rule(*names: str, threshold: int = 1, **kw: Any) -> CosignRule:
    policy = CosignPolicy(
        tuple(KeyAuthority(vkey(n), name=n) for n in names),
        threshold=threshold,
        tlog=kw.pop("tlog", "optional"),
        remap=kw.pop("remap", ()),
        rule=RULE,
    )
    return CosignRule(policy, **kw)


def vector_registry(*digests: str, name: str = TESTIMAGE_REPO) -> FakeRegistry:
    reg = FakeRegistry(name=name)
    for digest in digests:
        reg.put_sig(digest, vector_sig_manifest(digest), image_blobs())
    return reg


def judge_of(root_path: Any = None, **kw: Any) -> CosignJudge:
    root = parse_trusted_root(root_path.read_bytes()) if root_path is not None else None
    return CosignJudge(CosignVerifier(root), source="cosign-test", **kw)


def run(
    judge: CosignJudge, reg: RegistryReads, digest: str, rule: CosignRule, repo: str
) -> DigestSigned:
    return asyncio.run(judge.judge(reg, repo, digest, rule, NOW))


def refused(
    judge: CosignJudge, reg: RegistryReads, digest: str, rule: CosignRule, repo: str
) -> CosignNotSignedError:
    with pytest.raises(CosignNotSignedError) as info:
        run(judge, reg, digest, rule, repo)
    return info.value


# --- the shared vectors (connaisseur: classic key-based and keyless) --------------------


@needs_vectors
@pytest.mark.parametrize(
    ("digest", "names", "threshold", "accepted", "reason"),
    [
        (ALICE_DIGEST, ("alice",), 1, True, ""),
        (ALICE_DIGEST, ("bob",), 1, False,
         f"no cosign signature for {ALICE_DIGEST} by any authority of rule {RULE}"),
        (ALICE_DIGEST, ("alice", "bob"), 2, False,
         "signed by alice but the rule needs 2 authorities"),
        (ABC_DIGEST, ("alice", "bob", "charlie"), 3, True, ""),
        (ABC_DIGEST, ("alice", "bob", "charlie", "default"), 2, True, ""),
        (ABC_DIGEST, ("default",), 1, False, "no cosign signature for"),
    ],
)  # fmt: skip
def test_connaisseur_classic_signatures(
    digest: str, names: tuple[str, ...], threshold: int, accepted: bool, reason: str
) -> None:
    reg = vector_registry(ALICE_DIGEST, ABC_DIGEST)
    rule = key_rule(*names, threshold=threshold)
    judge = judge_of()
    if accepted:
        answer = run(judge, reg, digest, rule, TESTIMAGE_REPO)
        assert answer.digest == digest
        assert len(answer.signers) >= threshold
        assert all(s.startswith("key ") for s in answer.signers)
        assert answer.evidence["key_ids"] == [
            vkey(n).key_id for n in names if vkey(n).key_id in answer.evidence["key_ids"]
        ]
        assert answer.evidence["authorities"][:threshold] == list(names[:threshold])
        # Classic signatures satisfy the rule: no referrers read (three reads cold with HEAD).
        assert [r.split()[0] for r in reg.reads] == ["tag", "blob"]
    else:
        assert reason in str(refused(judge, reg, digest, rule, TESTIMAGE_REPO))


@needs_vectors
def test_connaisseur_keyless_signature_with_the_public_good_root() -> None:
    reg = FakeRegistry(name=KEYLESS_REPO)
    reg.put_sig(KEYLESS_DIGEST, vector_sig_manifest(KEYLESS_DIGEST), image_blobs())
    keyless = KeylessAuthority(
        subject=Match(regexp=re.compile("philipp")), issuer=Match(regexp=re.compile("github"))
    )
    rule = CosignRule(CosignPolicy((keyless,), tlog="required", rule="docker.io/phbelitz/**"))
    answer = run(judge_of(PRODUCTION_ROOT), reg, KEYLESS_DIGEST, rule, KEYLESS_REPO)
    assert answer.signers == (
        "identity philipp.belitz@securesystems.de (issuer https://github.com/login/oauth)",
    )
    assert answer.evidence["identities"] == [
        "philipp.belitz@securesystems.de (issuer https://github.com/login/oauth)"
    ]
    assert answer.evidence["key_ids"] == []
    assert len(answer.evidence["log_indexes"]) == 1

    bob = KeylessAuthority(subject=Match(exact="bob@example.com"), issuer=keyless.issuer)
    rule = CosignRule(CosignPolicy((bob,), rule="docker.io/phbelitz/**"))
    error = refused(judge_of(PRODUCTION_ROOT), reg, KEYLESS_DIGEST, rule, KEYLESS_REPO)
    assert "which is no authority of the rule" in str(error)


@needs_vectors
def test_signature_for_another_repository_needs_a_remap() -> None:
    other = "docker.io/securesystemsengineering/other"
    reg = vector_registry(ALICE_DIGEST, name=other)
    error = refused(judge_of(), reg, ALICE_DIGEST, key_rule("alice"), other)
    assert f"signature by key {vkey('alice').key_id[:12]}… is for {TESTIMAGE_REPO}" in str(error)
    remap = ((other, TESTIMAGE_REPO),)
    assert run(judge_of(), reg, ALICE_DIGEST, key_rule("alice", remap=remap), other)


@needs_vectors
def test_signature_copied_to_another_digest_is_refused() -> None:
    """The copy-paste attack: alice's .sig manifest put under another image's tag."""
    reg = FakeRegistry(name=TESTIMAGE_REPO)
    reg.put_sig(ABC_DIGEST, vector_sig_manifest(ALICE_DIGEST), image_blobs())
    error = refused(judge_of(), reg, ABC_DIGEST, key_rule("alice"), TESTIMAGE_REPO)
    assert str(error).startswith(f"no cosign signature for {ABC_DIGEST}")
    assert "layer 0:" in str(error)


@needs_vectors
def test_unsigned_image() -> None:
    reg = FakeRegistry(name=TESTIMAGE_REPO)
    error = refused(judge_of(), reg, ALICE_DIGEST, key_rule("alice"), TESTIMAGE_REPO)
    assert str(error) == f"no cosign signature for {ALICE_DIGEST} by any authority of rule {RULE}"
    assert error.reasons == (str(error),)
    # Both layouts were looked for.
    assert [r.split()[0] for r in reg.reads] == ["tag", "referrers"]


@needs_vectors
def test_tlog_required_refuses_a_key_signature_without_log_entry() -> None:
    reg = vector_registry(ALICE_DIGEST)
    error = refused(judge_of(), reg, ALICE_DIGEST, key_rule("alice", tlog="required"),
                    TESTIMAGE_REPO)  # fmt: skip
    assert "has no verified transparency-log entry" in str(error)


# --- where signatures live --------------------------------------------------------------


@needs_vectors
def test_signature_repository_is_read_through_another_reader() -> None:
    sigs = vector_registry(ALICE_DIGEST, name="docker.io/securesystemsengineering/sigs")
    reg = FakeRegistry(name=TESTIMAGE_REPO, others={sigs.name: sigs})
    judge = judge_of(signature_repository=sigs.name)
    assert run(judge, reg, ALICE_DIGEST, key_rule("alice"), TESTIMAGE_REPO)
    assert reg.reads == []
    assert sigs.reads

    # The image's own repository is not where this source looks.
    own = vector_registry(ALICE_DIGEST)
    own.others[sigs.name] = FakeRegistry(name=sigs.name)
    refused(judge, own, ALICE_DIGEST, key_rule("alice"), TESTIMAGE_REPO)


@needs_vectors
def test_signature_repository_on_another_upstream_is_unavailable() -> None:
    judge = judge_of(signature_repository="ghcr.io/elsewhere/sigs")
    with pytest.raises(TrustSourceUnavailableError, match="not on the upstream"):
        run(judge, vector_registry(ALICE_DIGEST), ALICE_DIGEST, key_rule("alice"), TESTIMAGE_REPO)


@needs_vectors
def test_upstream_down_propagates_and_bad_reads_are_reasons() -> None:
    reg = vector_registry(ALICE_DIGEST)
    reg.down = True
    with pytest.raises(UpstreamUnavailableError):
        run(judge_of(), reg, ALICE_DIGEST, key_rule("alice"), TESTIMAGE_REPO)

    # A payload blob that is not its digest, or too large: one more reason, never an allow.
    for bad in (b"x" * 10, b"x" * 70_000):
        reg = vector_registry(ALICE_DIGEST)
        (payload,) = [d for d in reg.blobs if d in vector_sig_manifest(ALICE_DIGEST).decode()]
        reg.blobs[payload] = bad
        error = refused(judge_of(), reg, ALICE_DIGEST, key_rule("alice"), TESTIMAGE_REPO)
        assert "payload sha256:" in str(error) or "payload blob not available" in str(error)


# --- bundles (cosign 3) -----------------------------------------------------------------

IMAGE = b'{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json"}'


def test_key_bundle_found_among_referrers() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    reg = FakeRegistry(name="registry.test/org/app")
    digest = reg.put_image("v1", IMAGE)
    # A notation signature and a bundle for another image, listed beside it: skipped.
    reg.referrer_lists[digest] = [
        {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": sha256(b"n"),
         "size": 1, "artifactType": "application/vnd.cncf.notary.signature"},
    ]  # fmt: skip
    reg.attach_bundle(digest, key_bundle(None, key, in_toto_statement(digest)))
    rule = CosignRule(
        CosignPolicy((KeyAuthority(VerifyingKey(key.public_key()), name="release"),),
                     tlog="optional", rule="registry.test/org/**")
    )  # fmt: skip
    answer = run(judge_of(), reg, digest, rule, reg.name)
    assert answer.evidence["layouts"] == ["bundle"]
    assert answer.evidence["authorities"] == ["release"]
    assert not any(sha256(b"n") in r for r in reg.reads)

    # The same bundle attached to another image (its subject is the first image).
    other = reg.put_image("v2", IMAGE + b" ")
    reg.attach_bundle(other, key_bundle(None, key, in_toto_statement(digest)), subject=digest)
    error = refused(judge_of(), reg, other, rule, reg.name)
    assert f"referrer is for {digest}" in str(error)


@needs_vectors
def test_attestation_requirement() -> None:
    """A rule requiring an attestation type: the signature alone is not enough; cosign's
    attestation vector (keyless, public-good) satisfies it."""
    key = ec.generate_private_key(ec.SECP256R1())
    # The vector's in-toto subject names this repository (checked like docker-reference).
    reg = FakeRegistry(name="127.0.0.1:60943/repo")
    reg.attach_bundle(
        ATTESTATION_DIGEST, key_bundle(None, key, in_toto_statement(ATTESTATION_DIGEST))
    )
    cody = KeylessAuthority(
        subject=Match(exact="cody@soyland.com"),
        issuer=Match(exact="https://github.com/login/oauth"),
    )
    policy = CosignPolicy(
        (KeyAuthority(VerifyingKey(key.public_key()), name="release"), cody), tlog="optional",
        rule="127.0.0.1:60943/**",
    )  # fmt: skip
    rule = CosignRule(policy, attestations=(ATTESTATION_TYPE,))
    judge = judge_of(PRODUCTION_ROOT)
    error = refused(judge, reg, ATTESTATION_DIGEST, rule, reg.name)
    assert str(error).startswith(f"no verified {ATTESTATION_TYPE} attestation")

    reg.attach_bundle(
        ATTESTATION_DIGEST,
        (COSIGN_DATA / "oci-attestation.sigstore.json").read_bytes(),
        predicate_type=ATTESTATION_TYPE,
    )
    answer = run(judge, reg, ATTESTATION_DIGEST, rule, reg.name)
    assert answer.evidence["attestations"] == [ATTESTATION_TYPE]
    assert answer.evidence["authorities"] == ["release"]
    # Without the requirement the attestation is not a signature.
    plain = CosignRule(CosignPolicy((cody,), tlog="optional", rule="127.0.0.1:60943/**"))
    assert "no cosign signature" in str(refused(judge, reg, ATTESTATION_DIGEST, plain, reg.name))


def test_simulated_keyless_classic_and_threshold_across_layouts() -> None:
    """A keyless classic signature (private Sigstore) and a key bundle count as two
    authorities together."""
    instance = SigstoreInstance()
    root = parse_trusted_root(instance.trusted_root())
    key = ec.generate_private_key(ec.SECP256R1())
    reg = FakeRegistry(name="registry.test/org/app")
    digest = reg.put_image("v1", IMAGE)
    layer = instance.keyless_layer(digest, reg.name)
    reg.put_sig(digest, sig_manifest([layer]), blobs_of([layer]))
    reg.attach_bundle(digest, key_bundle(None, key, in_toto_statement(digest)))
    ANY = Match(regexp=re.compile("."))
    policy = CosignPolicy(
        (
            KeylessAuthority(subject=ANY, issuer=ANY),
            KeyAuthority(VerifyingKey(key.public_key()), name="release"),
        ),
        threshold=2, tlog="optional", rule="registry.test/org/**",
    )  # fmt: skip
    judge = CosignJudge(CosignVerifier(root), source="t")
    answer = run(judge, reg, digest, CosignRule(policy), reg.name)
    assert answer.evidence["layouts"] == ["classic", "bundle"]
    assert len(answer.signers) == 2
    assert answer.evidence["identities"]
    assert answer.evidence["key_ids"]


@pytest.mark.parametrize(
    ("layers", "annotation", "reason"),
    [
        (1000, "x", "1000 signature layers, limit 64"),
        (5000, "x", ".sig manifest is 1115032 bytes, limit 1048576"),
        (1, "x" * 100_000, "annotation 'dev.cosignproject.cosign/signature' is 100000 bytes"),
    ],
)
def test_hostile_signature_manifest_is_refused_without_reading_its_blobs(
    layers: int, annotation: str, reason: str
) -> None:
    reg = FakeRegistry(name="registry.test/org/app")
    digest = reg.put_image("v1", IMAGE)
    layer = {"mediaType": "application/vnd.dev.cosign.simplesigning.v1+json",
             "digest": sha256(b"p"), "size": 1,
             "annotations": {"dev.cosignproject.cosign/signature": annotation}}  # fmt: skip
    manifest = json.dumps({"schemaVersion": 2, "layers": [layer] * layers}).encode()
    reg.put_sig(digest, manifest, {sha256(b"p"): b"p"})
    key = ec.generate_private_key(ec.SECP256R1())
    rule = CosignRule(CosignPolicy((KeyAuthority(VerifyingKey(key.public_key())),),
                                   tlog="optional", rule="registry.test/org/**"))  # fmt: skip
    error = refused(judge_of(), reg, digest, rule, reg.name)
    assert f"signature manifest: {reason}" in str(error)
    assert not [r for r in reg.reads if r.startswith("blob")]
