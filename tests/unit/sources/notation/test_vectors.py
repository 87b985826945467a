"""Every Notation vector in ../shared/vectors/notation driven to its README outcome."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from proxy.errors import NotSignedError
from proxy.sources.notation.certs import subject_attributes
from proxy.sources.notation.envelope import (
    COSE_MEDIA_TYPE,
    JWS_MEDIA_TYPE,
    TargetArtifact,
    parse_envelope,
)
from proxy.sources.notation.errors import (
    EnvelopeError,
    NoApplicableTrustPolicyError,
    SignatureVerificationError,
    TrustPolicyError,
    TrustStoreError,
)
from proxy.sources.notation.revocation import CrlSet, RevocationStatus, check_chain, parse_crls
from proxy.sources.notation.timestamp import verify_timestamp
from proxy.sources.notation.trustpolicy import (
    Action,
    Check,
    StoreType,
    TrustPolicyStatement,
    parse_trust_policy,
)
from proxy.sources.notation.truststore import (
    TrustStore,
    load_trust_store_dir,
    parse_certificates,
    parse_store_files,
)
from proxy.sources.notation.verify import (
    SignatureVerdict,
    descriptor_of,
    verify_any,
    verify_signature,
)
from tests.unit.sources.notation.helpers import (
    CONN,
    E2E,
    GO,
    GO_TESTDATA,
    LOCALKEYS,
    MOCK,
    NOW,
    POLICIES,
    TIMESTAMP,
    TRUSTSTORE,
    needs_vectors,
    read_layout,
    store_of,
)

pytestmark = needs_vectors

E2E_STORE = store_of(ca__e2e=[LOCALKEYS / "e2e.crt"])
REPO = "localhost:5000/test-repo"

# --- trust policy documents -------------------------------------------------------------

VALID_POLICIES = [
    "any_registry_scope_trust_policy.json",
    "audit_trustpolicy.json",
    "generate_test_trustpolicy.json",
    "invalid_registry_scope_trustpolicy.json",  # valid document; the scope does not match
    "invalid_trust_store_trustpolicy.json",  # valid document; the store does not exist
    "invalid_trusted_identity_trustpolicy.json",  # valid document; identity does not match
    "multi_statements_with_wildcard_registry_scope_trustpolicy.json",
    "multiple_registry_scope_trustpolicy.json",
    "multiple_trust_store_trustpolicy.json",
    "multiple_trusted_identity_trustpolicy.json",
    "override_audit_trustpolicy.json",
    "override_permissive_trustpolicy.json",
    "override_strict_trustpolicy.json",
    "permissive_trustpolicy.json",
    "quickstart_trustpolicy.json",
    "registry_scope_trustpolicy.json",
    "skip_trustpolicy.json",
    "timestamp_after_cert_expiry_trustpolicy.json",
    "timestamp_trustpolicy.json",
    "trustpolicy.json",
    "valid_trusted_identity_trustpolicy.json",
]
# document → (path fragment, message fragment) of the refusal
INVALID_POLICIES = {
    "invalid_format_trustpolicy.json": ("trustpolicy.json", "malformed trust policy"),
    "empty_registry_scope_trustpolicy.json": (".registryScopes", "zero registry scopes"),
    "malformed_registry_scope_trustpolicy.json": (".registryScopes[0]", "is not valid"),
    "overlapped_registry_scope_trustpolicy.json": (".registryScopes[1]", "one registry scope"),
    "wildcard_plus_other_registry_scope_trustpolicy.json": (".registryScopes", "wildcard scope"),
    "multi_statements_with_multi_wildcard_registry_scope_trustpolicy.json": (
        "trustPolicies[1].registryScopes[0]",
        "one registry scope",
    ),
    "multi_statements_with_the_same_name_trustpolicy.json": ("trustPolicies[1].name", "same name"),
    "multi_statements_with_the_same_registry_scope_trustpolicy.json": (
        "trustPolicies[1].registryScopes[0]",
        "one registry scope",
    ),
    "unset_trust_store_trustpolicy.json": (".trustStores", "both must be specified"),
    "malformed_trust_store_trustpolicy.json": (".trustStores[0]", "unsupported trust store name"),
    "wildcard_trust_store_trustpolicy.json": (".trustStores[0]", "malformed trust store value"),
    "overlapped_trust_store_trustpolicy.json": (".trustStores[1]", "more than once"),
    "unset_trusted_identity_trustpolicy.json": (".trustedIdentities", "both must be specified"),
    "empty_trusted_identity_trustpolicy.json": (".trustedIdentities[0]", "empty trusted identity"),
    "malformed_trusted_identity_trustpolicy.json": (".trustedIdentities[0]", "separator"),
    "overlapped_trusted_identity_trustpolicy.json": (".trustedIdentities", "overlapping"),
    "wildcard_plus_other_trusted_identity_trustpolicy.json": (".trustedIdentities", "wildcard"),
    "missing_organization_trusted_identity_trustpolicy.json": (".trustedIdentities[0]", "'O'"),
    "missing_state_trusted_identity_trustpolicy.json": (".trustedIdentities[0]", "'ST'"),
    "missing_country_trusted_identity_trustpolicy.json": (".trustedIdentities[0]", "'C'"),
    "override_integrity_for_permissive_trustpolicy.json": (
        ".signatureVerification.override.integrity",
        "can not be overridden",
    ),
    # blob policies have no registryScopes: not an OCI document
    "blob_trust_policy.json": (".registryScopes", "zero registry scopes"),
}


def policy(name: str) -> bytes:
    return (POLICIES / name).read_bytes()


def test_every_policy_document_is_classified() -> None:
    on_disk = {p.name for p in POLICIES.glob("*.json")}
    assert on_disk == set(VALID_POLICIES) | set(INVALID_POLICIES)
    assert len(on_disk) == 43


@pytest.mark.parametrize("name", VALID_POLICIES)
def test_valid_policy_documents_parse(name: str) -> None:
    doc = parse_trust_policy(policy(name))
    assert doc.statements


@pytest.mark.parametrize(("name", "expected"), INVALID_POLICIES.items(), ids=list(INVALID_POLICIES))
def test_invalid_policy_documents_are_refused(name: str, expected: tuple[str, str]) -> None:
    where, message = expected
    with pytest.raises(TrustPolicyError) as info:
        parse_trust_policy(policy(name))
    assert where in info.value.path
    assert message in info.value.message


def statement(name: str, repository: str = REPO) -> TrustPolicyStatement:
    return parse_trust_policy(policy(name)).statement_for(repository)


def test_scope_selection() -> None:
    multi = parse_trust_policy(
        policy("multi_statements_with_wildcard_registry_scope_trustpolicy.json")
    )
    assert multi.statement_for("localhost:5000/test-repo9").name == "e2e"
    assert multi.statement_for(REPO).name == "e2e2"  # falls back to "*"
    scoped = parse_trust_policy(policy("registry_scope_trustpolicy.json"))
    assert scoped.statement_for(REPO).name == "e2e"
    with pytest.raises(NoApplicableTrustPolicyError):
        scoped.statement_for("localhost:5000/other")
    with pytest.raises(NoApplicableTrustPolicyError):
        parse_trust_policy(policy("invalid_registry_scope_trustpolicy.json")).statement_for(REPO)
    many = parse_trust_policy(policy("multiple_registry_scope_trustpolicy.json"))
    assert many.statement_for("localhost:5000/test-repo2").name == "e2e"


def test_levels_and_overrides() -> None:
    strict = statement("trustpolicy.json")
    assert all(strict.action(c) is Action.ENFORCE for c in Check)
    permissive = statement("permissive_trustpolicy.json")
    assert permissive.action(Check.AUTHENTICITY) is Action.ENFORCE
    assert permissive.action(Check.EXPIRY) is Action.LOG
    audit = statement("audit_trustpolicy.json")
    assert audit.action(Check.AUTHENTICITY) is Action.LOG
    assert audit.action(Check.INTEGRITY) is Action.ENFORCE
    over = statement("override_strict_trustpolicy.json")
    assert {c: over.action(c) for c in Check} == {
        Check.INTEGRITY: Action.ENFORCE,
        Check.AUTHENTICITY: Action.LOG,
        Check.AUTHENTIC_TIMESTAMP: Action.LOG,
        Check.EXPIRY: Action.LOG,
        Check.REVOCATION: Action.LOG,
    }
    assert statement("skip_trustpolicy.json").skips


# --- e2e OCI layouts ------------------------------------------------------------------


def run_layout(
    layout_name: str, policy_name: str, store: TrustStore = E2E_STORE, repository: str = REPO
) -> SignatureVerdict:
    layout = read_layout(layout_name)
    return verify_any(
        [(s.envelope, s.media_type) for s in layout.signatures],
        statement=statement(policy_name, repository),
        trust_store=store,
        served=descriptor_of(layout.subject, layout.subject_media_type),
        now=NOW,
    )


LEVELS = ["trustpolicy.json", "permissive_trustpolicy.json", "audit_trustpolicy.json"]


@pytest.mark.parametrize("level", LEVELS)
def test_valid_signature_passes_at_every_level(level: str) -> None:
    verdict = run_layout("e2e-valid-signature", level)
    assert verdict.signer_subject == "CN=e2e,O=Notary,L=Seattle,ST=WA,C=US"
    assert verdict.logged_failures == ()


@pytest.mark.parametrize(
    "name",
    [
        "any_registry_scope_trust_policy.json",
        "valid_trusted_identity_trustpolicy.json",
        "multiple_trusted_identity_trustpolicy.json",
        "registry_scope_trustpolicy.json",
        "override_strict_trustpolicy.json",
        "override_permissive_trustpolicy.json",
        "override_audit_trustpolicy.json",
    ],
)
def test_valid_signature_passes_under_valid_policies(name: str) -> None:
    run_layout("e2e-valid-signature", name)


def test_multiple_trust_stores() -> None:
    store = store_of(ca__e2e=[LOCALKEYS / "e2e.crt"], ca__e2e_new=[LOCALKEYS / "new_e2e.crt"])
    run_layout("e2e-valid-signature", "multiple_trust_store_trustpolicy.json", store)


def test_registry_scope_mismatch_has_no_policy() -> None:
    with pytest.raises(NoApplicableTrustPolicyError):
        run_layout(
            "e2e-valid-signature", "registry_scope_trustpolicy.json", repository="localhost:5000/x"
        )


def test_quickstart_policy_names_a_missing_store() -> None:
    with pytest.raises(SignatureVerificationError, match=r"authenticity.*does not exist"):
        run_layout("e2e-valid-signature", "quickstart_trustpolicy.json")


def test_invalid_trust_store_is_an_authenticity_failure() -> None:
    with pytest.raises(SignatureVerificationError) as info:
        run_layout("e2e-valid-signature", "invalid_trust_store_trustpolicy.json")
    assert info.value.check == "authenticity"
    assert "invalid_store" in str(info.value)


@pytest.mark.parametrize(
    ("level", "passes"), [(LEVELS[0], False), (LEVELS[1], False), (LEVELS[2], True)]
)
def test_wrong_trust_store_is_authenticity(level: str, passes: bool) -> None:
    store = store_of(ca__e2e=[LOCALKEYS / "new_e2e.crt"])
    if passes:
        verdict = run_layout("e2e-valid-signature", level, store)
        (logged,) = verdict.logged_failures
        assert logged.check is Check.AUTHENTICITY
        assert 'authenticity was set to "log"' in str(logged)
    else:
        with pytest.raises(
            SignatureVerificationError, match="does not contain any trusted certificate"
        ):
            run_layout("e2e-valid-signature", level, store)


def test_identity_mismatch() -> None:
    with pytest.raises(
        SignatureVerificationError, match=r"does not match the X\.509 trusted identities"
    ):
        run_layout("e2e-valid-signature", "invalid_trusted_identity_trustpolicy.json")


def test_multiple_signatures_one_trusted_is_enough() -> None:
    layout = read_layout("e2e-valid-multiple-signatures")
    assert len(layout.signatures) == 2
    # the fallback tag index is stale: it lists only one of the two signatures
    assert layout.tag_index is not None
    assert len(layout.tag_index["manifests"]) == 1  # type: ignore[arg-type]
    # untrusted signature first: the second one still passes
    ordered = sorted(
        layout.signatures, key=lambda s: not s.manifest_digest.startswith("sha256:c3eb")
    )
    verdict = verify_any(
        [(s.envelope, s.media_type) for s in ordered],
        statement=statement("trustpolicy.json"),
        trust_store=E2E_STORE,
        served=descriptor_of(layout.subject, layout.subject_media_type),
        now=NOW,
    )
    assert verdict.signer_subject.startswith("CN=e2e")


@pytest.mark.parametrize(
    ("policy_name", "passes"),
    [
        ("trustpolicy.json", False),
        ("permissive_trustpolicy.json", True),
        ("audit_trustpolicy.json", True),
        ("override_strict_trustpolicy.json", True),
        ("override_permissive_trustpolicy.json", False),
        ("override_audit_trustpolicy.json", False),
    ],
)
def test_expired_signature(policy_name: str, passes: bool) -> None:
    if passes:
        verdict = run_layout("e2e-expired-signature", policy_name)
        logged = {r.check for r in verdict.logged_failures}
        assert Check.EXPIRY in logged
    else:
        with pytest.raises(
            SignatureVerificationError, match=r"expiry validation failed.*has expired"
        ):
            run_layout("e2e-expired-signature", policy_name)


@pytest.mark.parametrize("level", LEVELS)
def test_invalid_signature_is_integrity_at_every_level(level: str) -> None:
    with pytest.raises(SignatureVerificationError) as info:
        run_layout("e2e-invalid-signature", level)
    assert info.value.check == "integrity"


def test_invalid_signature_passes_under_skip() -> None:
    verdict = run_layout("e2e-invalid-signature", "skip_trustpolicy.json")
    assert verdict.skipped


@pytest.mark.parametrize(
    ("level", "passes"), [(LEVELS[0], False), (LEVELS[1], True), (LEVELS[2], True)]
)
def test_expired_certificate(level: str, passes: bool) -> None:
    store = store_of(ca__e2e=[LOCALKEYS / "expired_e2e.crt"])
    if passes:
        verdict = run_layout("e2e-with-expired-cert", level, store)
        logged = {r.check for r in verdict.logged_failures}
        assert Check.AUTHENTIC_TIMESTAMP in logged
    else:
        with pytest.raises(
            SignatureVerificationError, match="authenticTimestamp validation failed"
        ):
            run_layout("e2e-with-expired-cert", level, store)


def test_unsigned_layout_has_no_signature() -> None:
    layout = read_layout("e2e")
    assert layout.signatures == ()
    with pytest.raises(NotSignedError, match="no signature is associated"):
        run_layout("e2e", "trustpolicy.json")


def test_timestamped_layout_cannot_anchor_offline() -> None:
    layout = read_layout("e2e-with-timestamped-signature")
    (sig,) = layout.signatures
    info = parse_envelope(sig.envelope, sig.media_type)
    assert info.target.digest == descriptor_of(layout.subject, layout.subject_media_type).digest
    assert info.timestamp_token is not None
    # the upstream tsa:e2e store (GlobalSign R6, DigiCert G4) does not hold Microsoft's root
    roots = [
        c
        for p in (E2E / "config" / "timestamp").glob("*.cer")
        for c in parse_certificates(p.read_bytes(), p.name)
    ]
    with pytest.raises(EnvelopeError, match="unknown authority"):
        verify_timestamp(info.timestamp_token, info.signature, roots)


def test_invalid_timestamp_token_fails_when_required() -> None:
    layout = read_layout("e2e-with-invalid-timestamped-signature")
    (sig,) = layout.signatures
    info = parse_envelope(sig.envelope, sig.media_type)
    leaf = info.chain[0]
    tsa_roots = [
        c
        for p in (E2E / "config" / "timestamp").glob("*.cer")
        for c in parse_certificates(p.read_bytes(), p.name)
    ]
    store = TrustStore.of(
        {
            next(iter(store_of(ca__e2e=[]).stores)): [leaf],
            next(iter(store_of(tsa__e2e=[]).stores)): tsa_roots,
        }
    )
    with pytest.raises(
        SignatureVerificationError, match="failed to parse timestamp countersignature"
    ):
        verify_signature(
            sig.envelope,
            sig.media_type,
            statement=statement("timestamp_trustpolicy.json"),
            trust_store=store,
            served=descriptor_of(layout.subject, layout.subject_media_type),
            now=NOW,
        )


def test_blob_signatures_parse_and_malformed_is_refused() -> None:
    sigs = E2E / "signatures"
    jws = parse_envelope((sigs / "blob.jws.sig").read_bytes(), JWS_MEDIA_TYPE)
    cose = parse_envelope((sigs / "blob.cose.sig").read_bytes(), COSE_MEDIA_TYPE)
    assert jws.target.media_type == cose.target.media_type == "application/octet-stream"
    with pytest.raises(EnvelopeError):
        parse_envelope((sigs / "malformed.jws.sig").read_bytes(), JWS_MEDIA_TYPE)


# --- notation-go mock envelopes -------------------------------------------------------

MOCK_TARGET = dataclasses.replace(
    descriptor_of(b"", "application/vnd.docker.distribution.manifest.v2+json"),
    digest="sha256:60043cf45eaebc4c0867fea485a039b598f52fd09fd5b07b0b2d2f88fad9d74e",
    size=528,
)
MOCK_REPO = "registry.acme-rockets.io/software/net-monitor"


def mock_policy(
    level: str = "strict",
    stores: str = "valid-trust-store",
    identity: str = "x509.subject:CN=Notation Test Root,O=Notary,L=Seattle,ST=WA,C=US",
) -> TrustPolicyStatement:
    doc = (
        '{"version":"1.0","trustPolicies":[{"name":"test-statement-name","registryScopes":'
        f'["{MOCK_REPO}"],"signatureVerification":{{"level":"{level}"}},'
        f'"trustStores":["ca:{stores}","signingAuthority:{stores}"],'
        f'"trustedIdentities":["{identity}"]}}]}}'
    )
    return parse_trust_policy(doc.encode()).statement_for(MOCK_REPO)


GO_STORE = load_trust_store_dir(TRUSTSTORE)


def run_mock(name: str, st: TrustPolicyStatement) -> SignatureVerdict:
    return verify_signature(
        (MOCK / name).read_bytes(),
        JWS_MEDIA_TYPE,
        statement=st,
        trust_store=GO_STORE,
        served=MOCK_TARGET,
        now=NOW,
    )


MOCK_LEVELS = ["strict", "permissive", "audit"]


@pytest.mark.parametrize("level", MOCK_LEVELS)
@pytest.mark.parametrize("prefix", ["ca", "sa"])
def test_mock_valid(prefix: str, level: str) -> None:
    verdict = run_mock(f"{prefix}_valid_sig_env.json", mock_policy(level))
    assert verdict.logged_failures == ()


@pytest.mark.parametrize("level", MOCK_LEVELS)
@pytest.mark.parametrize("prefix", ["ca", "sa"])
def test_mock_invalid_is_integrity(prefix: str, level: str) -> None:
    with pytest.raises(SignatureVerificationError) as info:
        run_mock(f"{prefix}_invalid_sig_env.json", mock_policy(level))
    assert info.value.check == "integrity"


@pytest.mark.parametrize("level", MOCK_LEVELS)
@pytest.mark.parametrize("prefix", ["ca", "sa"])
def test_mock_expired(prefix: str, level: str) -> None:
    if level == "strict":
        with pytest.raises(
            SignatureVerificationError, match="has expired on Fri, 29 Jul 2022 23:59:00"
        ):
            run_mock(f"{prefix}_expired_sig_env.json", mock_policy(level))
    else:
        verdict = run_mock(f"{prefix}_expired_sig_env.json", mock_policy(level))
        assert [r.check for r in verdict.logged_failures] == [Check.EXPIRY]


@pytest.mark.parametrize("level", MOCK_LEVELS)
def test_mock_untrusted_store(level: str) -> None:
    st = mock_policy(level, stores="valid-trust-store-2")
    if level == "audit":
        verdict = run_mock("ca_valid_sig_env.json", st)
        assert verdict.logged_failures[0].check is Check.AUTHENTICITY
    else:
        with pytest.raises(
            SignatureVerificationError, match="does not contain any trusted certificate"
        ):
            run_mock("ca_valid_sig_env.json", st)


@pytest.mark.parametrize("level", MOCK_LEVELS)
def test_mock_identity_mismatch(level: str) -> None:
    st = mock_policy(level, identity="x509.subject:CN=LOL,O=DummyOrg,L=Hyderabad,ST=TG,C=IN")
    if level == "audit":
        verdict = run_mock("ca_valid_sig_env.json", st)
        assert [r.check for r in verdict.logged_failures] == [Check.AUTHENTICITY]
    else:
        with pytest.raises(SignatureVerificationError, match="trusted identities"):
            run_mock("ca_valid_sig_env.json", st)


@pytest.mark.parametrize("identity", ["x509.subject", "x509.subject:"])
def test_mock_bad_identity_is_a_policy_error(identity: str) -> None:
    with pytest.raises(TrustPolicyError):
        mock_policy(identity=identity)


PLUGIN_ENVELOPES = sorted(p.name for p in MOCK.glob("*plugin*.json"))


@pytest.mark.parametrize("name", PLUGIN_ENVELOPES)
@pytest.mark.parametrize("level", MOCK_LEVELS)
def test_plugin_envelopes_are_refused(name: str, level: str) -> None:
    assert len(PLUGIN_ENVELOPES) == 10
    # integrity holds (the signature is genuine), then the plugin requirement refuses it
    parse_envelope((MOCK / name).read_bytes(), JWS_MEDIA_TYPE)
    with pytest.raises(SignatureVerificationError, match="requires verification plugin") as info:
        run_mock(name, mock_policy(level))
    assert info.value.check == "plugin"


def test_metadata_envelope() -> None:
    data = (MOCK / "sig_env_with_metadata.json").read_bytes()
    info = parse_envelope(data, JWS_MEDIA_TYPE)
    assert info.target.annotations == {
        "io.wabbit-networks.buildId": "123",
        "io.wabbit-networks.buildTime": "1672944615",
    }
    store = TrustStore.of({next(iter(store_of(ca__m=[]).stores)): [info.chain[0]]})
    st = parse_trust_policy(
        b'{"version":"1.0","trustPolicies":[{"name":"m","registryScopes":["*"],'
        b'"signatureVerification":{"level":"audit"},"trustStores":["ca:m"],"trustedIdentities":["*"]}]}'
    ).statement_for(REPO)
    served = dataclasses.replace(info.target, annotations={})
    verify_signature(
        data,
        JWS_MEDIA_TYPE,
        statement=st,
        trust_store=store,
        served=served,
        now=NOW,
        required_annotations={"io.wabbit-networks.buildId": "123"},
    )
    with pytest.raises(SignatureVerificationError, match="metadata"):
        verify_signature(
            data,
            JWS_MEDIA_TYPE,
            statement=st,
            trust_store=store,
            served=served,
            now=NOW,
            required_annotations={"io.wabbit-networks.buildId": "124"},
        )


# --- notation-go JWS/COSE pair and timestamps -------------------------------------------


def alpine_served() -> TargetArtifact:
    root = GO_TESTDATA / "oci-layout" / "blobs" / "sha256"
    manifest = (
        root / "19dbd2e48e921426ee8ace4dc892edfb2ecdc1d1a72d5416c83670c30acecef0"
    ).read_bytes()
    return descriptor_of(manifest, "application/vnd.oci.image.manifest.v1+json")


@pytest.mark.parametrize(
    ("name", "media_type"),
    [("jws_signature.sig", JWS_MEDIA_TYPE), ("cose_signature.sig", COSE_MEDIA_TYPE)],
)
def test_jws_and_cose_pair_verify_against_their_layout(name: str, media_type: str) -> None:
    data = (GO_TESTDATA / name).read_bytes()
    info = parse_envelope(data, media_type)
    store = TrustStore.of({next(iter(store_of(ca__alpine=[]).stores)): [info.chain[0]]})
    verify_signature(
        data,
        media_type,
        statement=dataclasses.replace(
            statement("trustpolicy.json"), trust_stores=tuple(store.stores)
        ),
        trust_store=store,
        served=alpine_served(),
        now=NOW,
    )


TS_POLICY = (
    '{{"version":"1.0","trustPolicies":[{{"name":"ts","registryScopes":["*"],'
    '"signatureVerification":{{"level":"strict","verifyTimestamp":"{vt}"}},'
    '"trustStores":["ca:valid-trust-store","tsa:{tsa}"],"trustedIdentities":["*"]}}]}}'
)


def ts_statement(
    vt: str = "always", tsa: str = "test-timestamp", with_tsa: bool = True
) -> TrustPolicyStatement:
    doc = TS_POLICY.format(vt=vt, tsa=tsa)
    if not with_tsa:
        doc = doc.replace(f',"tsa:{tsa}"', "")
    return parse_trust_policy(doc.encode()).statement_for(REPO)


def ts_run(name: str, st: TrustPolicyStatement, extra_ca: bool = False) -> SignatureVerdict:
    data = (TIMESTAMP / "sigEnv" / name).read_bytes()
    media_type = COSE_MEDIA_TYPE if data[:1] == b"\xd2" else JWS_MEDIA_TYPE
    info = parse_envelope(data, media_type)
    store = GO_STORE
    if extra_ca:  # the CN=testTSA signers are in no store upstream ships: trust the leaf
        ref = next(iter(store_of(ca__valid_trust_store=[]).stores))
        store = TrustStore.of({**GO_STORE.stores, ref: [*GO_STORE.stores[ref], info.chain[0]]})
    return verify_signature(
        data, media_type, statement=st, trust_store=store, served=info.target, now=NOW
    )


@pytest.mark.parametrize("name", ["jwsWithTimestamp.sig", "coseWithTimestamp.sig"])
@pytest.mark.parametrize("vt", ["always", "afterCertExpiry"])
def test_valid_timestamps(name: str, vt: str) -> None:
    verdict = ts_run(name, ts_statement(vt))
    if vt == "always":
        assert verdict.timestamp is not None
    else:  # the signing cert has not expired: the timestamp is not used
        assert verdict.timestamp is None


@pytest.mark.parametrize("name", ["jwsExpiredWithTimestamp.sig", "coseExpiredWithTimestamp.sig"])
@pytest.mark.parametrize("vt", ["always", "afterCertExpiry"])
def test_expired_cert_with_timestamp_passes(name: str, vt: str) -> None:
    verdict = ts_run(name, ts_statement(vt), extra_ca=True)
    assert verdict.timestamp is not None


@pytest.mark.parametrize("name", ["jwsExpiredWithTimestamp.sig", "coseExpiredWithTimestamp.sig"])
def test_expired_cert_without_tsa_store_fails(name: str) -> None:
    with pytest.raises(
        SignatureVerificationError, match="it was expired at Tue, 18 Jun 2024 07:30:31"
    ):
        ts_run(name, ts_statement(with_tsa=False), extra_ca=True)


def test_timestamp_against_wrong_tsa_root_fails() -> None:
    with pytest.raises(SignatureVerificationError, match="unknown authority"):
        ts_run("jwsWithTimestamp.sig", ts_statement(tsa="test-mismatch"))


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("timestampBeforeNotBefore.sig", "timestamp can be before certificate"),
        ("timestampAfterNotAfter.sig", "timestamp can be after certificate"),
    ],
)
def test_timestamp_outside_cert_validity_fails(name: str, message: str) -> None:
    with pytest.raises(SignatureVerificationError, match=message):
        ts_run(name, ts_statement(), extra_ca=True)


def test_no_timestamp_when_required() -> None:
    # CN=alpine is valid now; "always" with a tsa store still requires a countersignature
    with pytest.raises(SignatureVerificationError, match="no timestamp countersignature was found"):
        ts_run("withoutTimestamp.sig", ts_statement())
    ts_run("withoutTimestamp.sig", ts_statement("afterCertExpiry"))


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("TimeStampToken.p7s", "mismatched message"),
        ("TimeStampTokenWithInvalidTSTInfo.p7s", "failed to parse timestamp countersignature"),
        (
            "TimeStampTokenWithInvalideContentType.p7s",
            "unexpected content type: 1.2.840.113549.1.7.1",
        ),
        ("TimeStampTokenWithoutCertificate.p7s", "signing certificate not found"),
    ],
)
def test_countersignature_tokens(name: str, message: str) -> None:
    info = parse_envelope(
        (TIMESTAMP / "sigEnv" / "withoutTimestamp.sig").read_bytes(), JWS_MEDIA_TYPE
    )
    roots = GO_STORE.stores[next(iter(store_of(tsa__test_timestamp=[]).stores))]
    with pytest.raises(EnvelopeError, match=message):
        verify_timestamp(
            (TIMESTAMP / "countersignature" / name).read_bytes(), info.signature, roots
        )


# --- trust stores ---------------------------------------------------------------------


def test_go_trust_store_layout() -> None:
    good = {str(r) for r in GO_STORE.stores}
    bad = {str(r) for r in GO_STORE.broken}
    assert good == {
        "ca:valid-trust-store",
        "ca:valid-trust-store-2",
        "ca:valid-trust-store-self-signed",
        "signingAuthority:valid-trust-store",
        "signingAuthority:valid-trust-store-2",
        "tsa:test-timestamp",
        "tsa:test-mismatch",
    }
    assert bad == {
        "ca:trust-store-with-invalid-certs",
        "ca:trust-store-with-leaf-certs",
        "ca:trust-store-with-leaf-certs-in-single-file",
        "ca:valid-trust-store_SYMLINK",  # holds a text file, not certificates
        "tsa:test-nonCA",
        "tsa:test-nonSelfIssued",
    }
    assert (
        len(GO_STORE.stores[next(r for r in GO_STORE.stores if str(r) == "ca:valid-trust-store")])
        == 6
    )


def test_store_with_subdirectory_and_symlink_refused(tmp_path: Path) -> None:
    cert = (TRUSTSTORE / "x509" / "ca" / "valid-trust-store" / "NotationTestRoot.pem").read_bytes()
    sub = tmp_path / "x509" / "ca" / "with-dir"
    (sub / "nested").mkdir(parents=True)
    (sub / "root.pem").write_bytes(cert)
    link = tmp_path / "x509" / "ca" / "with-link"
    link.mkdir()
    (link / "root.pem").symlink_to(sub / "root.pem")
    (tmp_path / "x509" / "ca" / "linked-store").symlink_to(sub)
    empty = tmp_path / "x509" / "ca" / "empty"
    empty.mkdir()
    store = load_trust_store_dir(tmp_path)
    assert set(map(str, store.broken)) == {
        "ca:with-dir",
        "ca:with-link",
        "ca:linked-store",
        "ca:empty",
    }
    assert (
        "not a regular file" in store.broken[next(r for r in store.broken if r.name == "with-dir")]
    )


# --- connaisseur ----------------------------------------------------------------------


def test_connaisseur_docker_v2_signature() -> None:
    manifests = CONN / "manifests"
    signed = (manifests / "notation-sign.json").read_bytes()
    envelope = next((CONN / "blobs").iterdir()).read_bytes()
    (different_cert,) = parse_certificates((CONN.parents[1] / "ca.pem").read_bytes(), "ca.pem")
    info = parse_envelope(envelope, JWS_MEDIA_TYPE)
    served = descriptor_of(signed, "application/vnd.docker.distribution.manifest.v2+json")
    store = TrustStore.of({next(iter(store_of(ca__sse=[]).stores)): [info.chain[0]]})
    st = parse_trust_policy(
        b'{"version":"1.0","trustPolicies":[{"name":"c","registryScopes":["*"],'
        b'"signatureVerification":{"level":"strict"},"trustStores":["ca:sse"],'
        b'"trustedIdentities":["x509.subject: C=DE, ST=Berlin, O=SSE"]}]}'
    ).statement_for("docker.io/securesystemsengineering/testimage")
    verdict = verify_signature(
        envelope, JWS_MEDIA_TYPE, statement=st, trust_store=store, served=served, now=NOW
    )
    assert verdict.signer_subject.startswith("CN=securesystems.de")
    # the "different-cert" root of 07_selfsigned_cert.yaml: strict fails, audit passes
    other = TrustStore.of({next(iter(store_of(ca__sse=[]).stores)): [different_cert]})
    with pytest.raises(SignatureVerificationError, match="authenticity"):
        verify_signature(
            envelope, JWS_MEDIA_TYPE, statement=st, trust_store=other, served=served, now=NOW
        )
    audit = dataclasses.replace(st, enforcement={**st.enforcement, Check.AUTHENTICITY: Action.LOG})
    logged = verify_signature(
        envelope, JWS_MEDIA_TYPE, statement=audit, trust_store=other, served=served, now=NOW
    )
    assert [r.check for r in logged.logged_failures] == [Check.AUTHENTICITY]
    # the unsigned manifest is not what the signature covers
    unsigned = descriptor_of((manifests / "notation-unsign.json").read_bytes(), served.media_type)
    with pytest.raises(SignatureVerificationError, match="content descriptor mismatch"):
        verify_signature(
            envelope, JWS_MEDIA_TYPE, statement=st, trust_store=store, served=unsigned, now=NOW
        )


# --- revocation (operator CRLs) ---------------------------------------------------------


def test_crls() -> None:
    crl_dir = E2E / "config" / "crl"
    chain = parse_certificates((crl_dir / "certchain_with_crl.pem").read_bytes(), "chain")

    def crls(*names: str) -> CrlSet:
        return parse_crls({n: (crl_dir / n).read_bytes() for n in names})

    ok, _ = check_chain(chain, crls("leaf.crl", "intermediate.crl"), NOW)
    assert ok is RevocationStatus.OK
    revoked, why = check_chain(chain, crls("leaf_revoked.crl", "intermediate.crl"), NOW)
    assert revoked is RevocationStatus.REVOKED
    assert "revoked" in why
    revoked, _ = check_chain(chain, crls("leaf.crl", "intermediate_revoked.crl"), NOW)
    assert revoked is RevocationStatus.REVOKED
    unknown, why = check_chain(chain, crls("leaf_expired.crl", "intermediate.crl"), NOW)
    assert unknown is RevocationStatus.UNKNOWN
    missing, why = check_chain(chain, crls("intermediate.crl"), NOW)
    assert missing is RevocationStatus.UNKNOWN
    assert "no CRL was provided" in why


# --- remaining certificate vectors ------------------------------------------------------

TS_CONFIG = E2E / "config" / "timestamp"


@pytest.mark.parametrize(
    ("name", "valid"),
    [
        ("globalsignTSARoot.cer", True),
        ("DigiCertTSARootSHA384.cer", True),
        ("CertChain.pem", False),  # a chain, not a root
        ("intermediate.pem", False),  # not self-signed
        ("notSelfIssued.crt", False),
        ("invalid.crt", False),
        ("Empty.txt", False),
    ],
)
def test_tsa_store_candidates(name: str, valid: bool) -> None:
    files = {name: (TS_CONFIG / name).read_bytes()}
    if valid:
        assert len(parse_store_files(StoreType.TSA, "e2e", files)) == 1
    else:
        with pytest.raises(TrustStoreError):
            parse_store_files(StoreType.TSA, "e2e", files)


def test_subject_with_hex_marker_matches_no_identity() -> None:
    verifier = GO / "verifier" / "testdata" / "verifier"
    (bad,) = parse_certificates((verifier / "bad-cert.pem").read_bytes(), "bad-cert.pem")
    (good,) = parse_certificates((verifier / "signing-cert.pem").read_bytes(), "signing-cert.pem")
    assert subject_attributes(good)["CN"] == "SomeCN"
    with pytest.raises(ValueError, match="=#"):
        subject_attributes(bad)


def test_ocsp_only_chain_is_unknown_without_network() -> None:
    chain = parse_certificates(
        (E2E / "config" / "ocsp" / "certchain_with_ocsp.pem").read_bytes(), "chain"
    )
    status, why = check_chain(chain, CrlSet(), NOW)
    assert status is RevocationStatus.UNKNOWN
    assert "LeafCert" in why
    root = parse_certificates((E2E / "config" / "crl" / "root.crt").read_bytes(), "root")
    assert check_chain(root, CrlSet(), NOW)[0] is RevocationStatus.OK


def test_blob_trust_policy_is_not_an_oci_document() -> None:
    data = (E2E / "blob" / "trustpolicies" / "trustpolicy.blob.json").read_bytes()
    with pytest.raises(TrustPolicyError, match="registryScopes"):
        parse_trust_policy(data)


@pytest.mark.parametrize(
    "policy_name", ["timestamp_trustpolicy.json", "timestamp_after_cert_expiry_trustpolicy.json"]
)
def test_expired_cert_without_countersignature_under_timestamp_policies(policy_name: str) -> None:
    """Both policies name tsa:e2e; the cert has expired, so a countersignature is required
    (afterCertExpiry included) and this signature has none."""
    tsa_roots = [
        c for p in TS_CONFIG.glob("*.cer") for c in parse_certificates(p.read_bytes(), p.name)
    ]
    store = TrustStore.of(
        {
            **store_of(ca__e2e=[LOCALKEYS / "expired_e2e.crt"]).stores,
            next(iter(store_of(tsa__e2e=[]).stores)): tsa_roots,
        }
    )
    with pytest.raises(SignatureVerificationError, match="no timestamp countersignature"):
        run_layout("e2e-with-expired-cert", policy_name, store)
    # the valid signature under the same policies: "always" requires a countersignature,
    # afterCertExpiry does not while the certificate is valid
    store = TrustStore.of({**E2E_STORE.stores, next(iter(store_of(tsa__e2e=[]).stores)): tsa_roots})
    if policy_name == "timestamp_trustpolicy.json":
        with pytest.raises(SignatureVerificationError, match="no timestamp countersignature"):
            run_layout("e2e-valid-signature", policy_name, store)
    else:
        run_layout("e2e-valid-signature", policy_name, store)
