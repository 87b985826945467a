"""The one walk (fetched bytes -> verdict) and the referrer parsing the shell will use."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from proxy.sources.cosign import (
    CosignFormatError,
    CosignLimitError,
    CosignMismatchError,
    CosignPolicy,
    CosignVerifier,
    FetchedSignatures,
    KeyAuthority,
    KeylessAuthority,
    Match,
    bundle_layer,
    bundle_referrers,
    parse_trusted_root,
    referrers_tag,
    signature_tag,
)
from proxy.sources.cosign.keys import VerifyingKey
from tests.simulators.sigstore_instance import (
    T0,
    SigstoreInstance,
    blobs_of,
    in_toto_statement,
    key_bundle,
    sig_manifest,
)

DIGEST = "sha256:" + "ab" * 32
OTHER = "sha256:" + "cd" * 32
REPO = "ghcr.io/myorg/app"
BUNDLE_TYPE = "application/vnd.dev.sigstore.bundle.v0.3+json"
EMPTY_JSON = "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a"


def test_tags() -> None:
    assert signature_tag(DIGEST) == "sha256-" + "ab" * 32 + ".sig"
    assert referrers_tag(DIGEST) == "sha256-" + "ab" * 32


def test_classic_and_bundle_signatures_count_together() -> None:
    sigstore = SigstoreInstance()
    key = ec.generate_private_key(ec.SECP256R1())
    layers = [sigstore.keyless_layer(DIGEST, REPO), sigstore.keyless_layer(OTHER, REPO)]
    fetched = FetchedSignatures(
        sig_manifest=sig_manifest(layers),
        blobs=blobs_of(layers),
        bundles=[("sha256:" + "11" * 32, key_bundle(sigstore, key, in_toto_statement(DIGEST),
                                                    rekor_v2=True)),
                 ("sha256:" + "22" * 32, b"{not json")],
    )  # fmt: skip
    policy = CosignPolicy(
        (KeylessAuthority(Match(exact="dev@example.com"), Match(exact="https://issuer.example")),
         KeyAuthority(VerifyingKey(key.public_key()), name="release key")),
        threshold=2, rule="ghcr.io/myorg/**",
    )  # fmt: skip
    verifier = CosignVerifier(parse_trusted_root(sigstore.trusted_root()))
    verdict = verifier.judge(policy, repository=REPO, digest=DIGEST, fetched=fetched,
                             now=T0)  # fmt: skip
    assert verdict.accepted
    assert verdict.satisfied[1] == "release key"
    assert [s.layout for s in verdict.signatures] == ["classic", "bundle"]
    verified, rejected = verifier.signatures(policy, digest=DIGEST, fetched=fetched, now=T0)
    assert [s.origin for s in verified] == ["layer 0", "bundle sha256:" + "11" * 32]
    assert [r.origin for r in rejected] == ["layer 1", "bundle sha256:" + "22" * 32]


def test_bad_sig_manifest_does_not_hide_a_bundle_and_never_counts() -> None:
    sigstore = SigstoreInstance()
    key = ec.generate_private_key(ec.SECP256R1())
    fetched = FetchedSignatures(
        sig_manifest=b'{"schemaVersion":2,"layers":[],"layers":[]}',
        bundles=[("r", key_bundle(sigstore, key, in_toto_statement(DIGEST)))],
    )
    policy = CosignPolicy((KeyAuthority(VerifyingKey(key.public_key()), name="k"),),
                          tlog="optional")  # fmt: skip
    verdict = CosignVerifier(None).judge(policy, repository=REPO, digest=DIGEST,
                                         fetched=fetched, now=T0)  # fmt: skip
    assert verdict.accepted
    two = CosignPolicy(
        (*policy.authorities, KeyAuthority(VerifyingKey(ec.generate_private_key(
            ec.SECP256R1()).public_key()), name="k2")), threshold=2, tlog="optional")  # fmt: skip
    refused = CosignVerifier(None).judge(two, repository=REPO, digest=DIGEST, fetched=fetched,
                                         now=T0)  # fmt: skip
    assert not refused.accepted
    assert refused.reasons[0] == "signed by k but the rule needs 2 authorities"
    assert "signature manifest: .sig manifest: duplicate key 'layers'" in refused.reason


def test_nothing_fetched() -> None:
    policy = CosignPolicy((KeyAuthority(VerifyingKey(ec.generate_private_key(
        ec.SECP256R1()).public_key())),), rule="r")  # fmt: skip
    verdict = CosignVerifier(None).judge(policy, repository=REPO, digest=DIGEST,
                                         fetched=FetchedSignatures(), now=T0)  # fmt: skip
    assert verdict.reasons == (f"no cosign signature for {DIGEST} by any authority of rule r",)


def _descriptor(digest: str, artifact_type: str | None, size: int = 500) -> dict[str, Any]:
    node: dict[str, Any] = {"mediaType": "application/vnd.oci.image.manifest.v1+json",
                            "digest": digest, "size": size}  # fmt: skip
    if artifact_type is not None:
        node["artifactType"] = artifact_type
    return node


def _index(*descriptors: dict[str, Any]) -> bytes:
    return json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
                       "manifests": list(descriptors)}).encode()  # fmt: skip


def test_bundle_referrers_filter_by_artifact_type() -> None:
    # The shared tag-schema index also lists Notation signatures and SBOMs.
    index = _index(
        _descriptor("sha256:" + "01" * 32, "application/vnd.cncf.notary.signature"),
        _descriptor("sha256:" + "02" * 32, BUNDLE_TYPE),
        _descriptor("sha256:" + "03" * 32, "application/vnd.dev.sigstore.bundle+json;version=0.3"),
        _descriptor("sha256:" + "04" * 32, "application/spdx+json"),
        _descriptor("sha256:" + "05" * 32, None),
    )
    assert [r.digest[7:9] for r in bundle_referrers(index)] == ["02", "03"]


@pytest.mark.parametrize(
    ("data", "error", "message"),
    [
        (b"[]", CosignFormatError, "not an image index"),
        (json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json"}
                    ).encode(), CosignFormatError, "not an OCI image index"),
        (_index(*[_descriptor("sha256:" + "02" * 32, BUNDLE_TYPE)] * 40), CosignLimitError,
         "more than 32 bundle referrers"),
        (_index(_descriptor("sha1:x", BUNDLE_TYPE)), CosignFormatError, "digest"),
    ],
    ids=["not-index", "manifest", "too-many", "bad-digest"],
)  # fmt: skip
def test_bad_referrers_index(data: bytes, error: type[Exception], message: str) -> None:
    with pytest.raises(error, match=re.escape(message)):
        bundle_referrers(data)


def _referrer(**changes: Any) -> bytes:
    node: dict[str, Any] = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "artifactType": BUNDLE_TYPE,
        "config": {"mediaType": "application/vnd.oci.empty.v1+json", "size": 2,
                   "digest": EMPTY_JSON},
        "layers": [{"mediaType": BUNDLE_TYPE, "size": 9000, "digest": "sha256:" + "0b" * 32}],
        "subject": {"mediaType": "application/vnd.oci.image.manifest.v1+json", "size": 1234,
                    "digest": DIGEST},
        "annotations": {"dev.sigstore.bundle.content": "dsse-envelope"},
    }  # fmt: skip
    node.update(changes)
    return json.dumps(node).encode()


def test_bundle_layer() -> None:
    layer = bundle_layer(_referrer(), digest=DIGEST)
    assert (layer.digest, layer.size) == ("sha256:" + "0b" * 32, 9000)


@pytest.mark.parametrize(
    ("data", "error", "message"),
    [
        (_referrer(subject={"digest": OTHER, "size": 1}), CosignMismatchError,
         f"referrer is for {OTHER}"),
        (_referrer(artifactType="application/vnd.cncf.notary.signature"), CosignFormatError,
         "not a Sigstore bundle referrer"),
        (_referrer(layers=[]), CosignFormatError, "exactly one layer"),
        (_referrer(layers=[{"mediaType": "text/plain", "size": 1,
                            "digest": "sha256:" + "0b" * 32}]), CosignFormatError,
         "not a Sigstore bundle"),
        (_referrer(layers=[{"mediaType": BUNDLE_TYPE, "size": 10**9,
                            "digest": "sha256:" + "0b" * 32}]), CosignLimitError, "limit"),
        (_referrer(subject=None), CosignFormatError, "descriptor must be an object"),
        (_referrer(mediaType="application/vnd.docker.distribution.manifest.v2+json"),
         CosignFormatError, "not an OCI image manifest"),
    ],
    ids=["other-subject", "other-type", "no-layer", "layer-type", "huge-layer", "no-subject",
         "docker-manifest"],
)  # fmt: skip
def test_bad_bundle_referrer(data: bytes, error: type[Exception], message: str) -> None:
    with pytest.raises(error, match=re.escape(message)):
        bundle_layer(data, digest=DIGEST)
