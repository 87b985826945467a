"""trusted_root.json parsing and the policy's decisions, table-driven."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from proxy.sources.cosign import (
    CertSigner,
    CosignFormatError,
    CosignPolicy,
    KeyAuthority,
    KeylessAuthority,
    KeySigner,
    Match,
    VerifiedSignature,
    evaluate,
    parse_trusted_root,
)
from proxy.sources.cosign.fulcio import CertIdentity
from proxy.sources.cosign.keys import VerifyingKey
from proxy.sources.cosign.rekor import LogEntry
from tests.simulators.sigstore_instance import SigstoreInstance

GOOD = json.loads(SigstoreInstance().trusted_root())


def _root(**changes: Any) -> bytes:
    node = json.loads(json.dumps(GOOD))
    for path, value in changes.items():
        target = node
        *parents, last = path.split("__")
        for part in parents:
            target = target[int(part)] if part.isdigit() else target[part]
        if value is ...:
            del target[last]
        else:
            target[last] = value
    return json.dumps(node).encode()


BAD_ROOTS = [
    ("unknown-media-type", _root(mediaType="application/json"), "mediaType"),
    ("bad-key-bytes", _root(tlogs__0__publicKey__rawBytes="AAAA"), "tlogs[0].publicKey"),
    ("key-not-base64", _root(tlogs__0__publicKey__rawBytes="%%"), "rawBytes"),
    ("no-start", _root(tlogs__0__publicKey__validFor={}), "validFor"),
    ("naive-time", _root(ctlogs__0__publicKey__validFor={"start": "2021-01-01T00:00:00"}),
     "ctlogs[0].publicKey.validFor.start"),
    ("empty-chain", _root(certificateAuthorities__0__certChain={"certificates": []}),
     "certificateAuthorities[0]"),
    ("bad-cert", _root(certificateAuthorities__0__certChain={"certificates": [
        {"rawBytes": "AAAA"}]}), "certificateAuthorities[0].certChain.certificates[0]"),
    ("too-many-tlogs", _root(tlogs=[GOOD["tlogs"][0]] * 65), "tlogs"),
    ("duplicate-key", _root()[:-1] + b', "tlogs": []}', "trusted_root"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("data", "field"), [c[1:] for c in BAD_ROOTS], ids=[c[0] for c in BAD_ROOTS]
)
def test_bad_trusted_root(data: bytes, field: str) -> None:
    with pytest.raises(CosignFormatError) as info:
        parse_trusted_root(data)
    assert field in info.value.field


def test_windows() -> None:
    root = parse_trusted_root(
        _root(tlogs__0__publicKey__validFor={"start": "2024-01-01T00:00:00Z",
                                             "end": "2024-12-31T23:59:59.999Z"})
    )  # fmt: skip
    window = root.tlogs[0].valid
    assert window.contains(datetime(2024, 6, 1, tzinfo=UTC))
    assert not window.contains(datetime(2025, 1, 1, tzinfo=UTC))
    assert not window.contains(datetime(2023, 12, 31, tzinfo=UTC))


KEY_A = VerifyingKey(ec.generate_private_key(ec.SECP256R1()).public_key())
KEY_B = VerifyingKey(ec.generate_private_key(ec.SECP256R1()).public_key())
DIGEST = "sha256:" + "ab" * 32
REPO = "ghcr.io/myorg/app"
LOG = LogEntry("00" * 32, 7, datetime(2026, 1, 1, tzinfo=UTC))


def sig(signer: KeySigner | CertSigner, *, reference: str | None = REPO,
        logged: bool = True, digest: str = DIGEST) -> VerifiedSignature:  # fmt: skip
    return VerifiedSignature(digest, signer, reference, LOG if logged else None, "classic", "l")


def cert(san: str, issuer: str) -> CertSigner:
    return CertSigner(CertIdentity((san,), issuer))


GITHUB = "https://token.actions.githubusercontent.com"
WORKFLOW = "https://github.com/myorg/app/.github/workflows/release.yml@refs/heads/main"
A = KeyAuthority(KEY_A, name="a")
B = KeyAuthority(KEY_B)
CI = KeylessAuthority(Match(regexp=re.compile(r"^https://github\.com/myorg/")), Match(exact=GITHUB))

POLICY_CASES: list[tuple[str, CosignPolicy, list[VerifiedSignature], bool, str]] = [
    ("key", CosignPolicy((A,)), [sig(KeySigner(KEY_A.key_id))], True, ""),
    ("keyless-regexp", CosignPolicy((CI,)), [sig(cert(WORKFLOW, GITHUB))], True, ""),
    ("keyless-other-issuer", CosignPolicy((CI,)), [sig(cert(WORKFLOW, "https://evil"))], False,
     "which is no authority of the rule"),
    ("keyless-other-repo", CosignPolicy((CI,)),
     [sig(cert("https://github.com/evil/x/.github/workflows/a.yml@x", GITHUB))], False,
     "no cosign signature"),
    ("two-signatures-one-authority", CosignPolicy((A, B), threshold=2),
     [sig(KeySigner(KEY_A.key_id)), sig(KeySigner(KEY_A.key_id))], False,
     "signed by a but the rule needs 2 authorities"),
    ("two-authorities", CosignPolicy((A, B), threshold=2),
     [sig(KeySigner(KEY_A.key_id)), sig(KeySigner(KEY_B.key_id))], True, ""),
    ("unnamed-key-label", CosignPolicy((B, CI), threshold=2), [sig(KeySigner(KEY_B.key_id))],
     False, f"signed by key {KEY_B.key_id[:12]}… but the rule needs 2 authorities"),
    ("other-repository", CosignPolicy((A,)),
     [sig(KeySigner(KEY_A.key_id), reference="ghcr.io/other/repo")], False,
     "signature by key"),
    ("other-repository-words", CosignPolicy((A,)),
     [sig(KeySigner(KEY_A.key_id), reference="ghcr.io/other/repo")], False,
     "is for ghcr.io/other/repo"),
    ("remap", CosignPolicy((A,), remap=(("ghcr.io/myorg", "docker.io/myorg"),)),
     [sig(KeySigner(KEY_A.key_id), reference="docker.io/myorg/app")], True, ""),
    ("remap-other-name", CosignPolicy((A,), remap=(("ghcr.io/myorg", "docker.io/myorg"),)),
     [sig(KeySigner(KEY_A.key_id), reference="docker.io/myorg/debug-tools")], False,
     "is for docker.io/myorg/debug-tools"),
    ("remap-prefix-is-path-boundary",
     CosignPolicy((A,), remap=(("ghcr.io/my", "docker.io/my"),)),
     [sig(KeySigner(KEY_A.key_id), reference="docker.io/myorg/app")], False, "is for"),
    ("no-reference-in-format", CosignPolicy((A,)), [sig(KeySigner(KEY_A.key_id), reference=None)],
     True, ""),
    ("tlog-required", CosignPolicy((A,)), [sig(KeySigner(KEY_A.key_id), logged=False)], False,
     "no verified transparency-log entry"),
    ("tlog-optional", CosignPolicy((A,), tlog="optional"),
     [sig(KeySigner(KEY_A.key_id), logged=False)], True, ""),
    ("other-digest", CosignPolicy((A,)),
     [sig(KeySigner(KEY_A.key_id), digest="sha256:" + "0" * 64)], False, "is for sha256:0000"),
    ("nothing", CosignPolicy((A,), rule="ghcr.io/myorg/**"), [], False,
     f"no cosign signature for {DIGEST} by any authority of rule ghcr.io/myorg/**"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("policy", "signatures", "accepted", "reason"),
    [c[1:] for c in POLICY_CASES],
    ids=[c[0] for c in POLICY_CASES],
)
def test_policy(
    policy: CosignPolicy, signatures: list[VerifiedSignature], accepted: bool, reason: str
) -> None:
    verdict = evaluate(policy, repository=REPO, digest=DIGEST, signatures=signatures)
    assert verdict.accepted is accepted
    assert reason in verdict.reason
    if accepted:
        assert verdict.signatures
        assert verdict.reasons == ()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"authorities": ()}, "at least one authority"),
        ({"authorities": (A,), "threshold": 2}, "threshold"),
        ({"authorities": (A,), "tlog": "never"}, "tlog"),
    ],
    ids=["no-authority", "threshold", "tlog"],
)
def test_policy_refuses_caller_bugs(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        CosignPolicy(**kwargs)


def test_match_needs_exactly_one_form() -> None:
    with pytest.raises(ValueError, match="exactly one"):
        Match()
    with pytest.raises(ValueError, match="exactly one"):
        Match(exact="a", regexp=re.compile("a"))
    assert str(Match(regexp=re.compile("^a$"))) == "/^a$/"
