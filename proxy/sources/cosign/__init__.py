"""Cosign / Sigstore signatures: the pure verification core of the ``cosign`` trust source.

Bytes in, verified facts or an exception out; the clock is passed in; no I/O except the
config loader reading its files at startup. Not wired into settings, policy loading or
enforcement yet: the source class will fetch (:mod:`.referrers` parses what it fetches for
bundles) and hand everything to :class:`~.verify.CosignVerifier`, the one walk from
fetched bytes to a :class:`~.policy.Verdict`.

Where signatures live (the source's fetching, later)
    *Classic* (cosign ≤ 2): tag ``sha256-<hex>.sig`` in the image's repository (or the
    configured ``signatureRepository``, cosign's ``COSIGN_REPOSITORY``), one
    simple-signing layer per signature. *Bundle* (cosign 3 default): an OCI referrer of the
    image with ``artifactType`` ``application/vnd.dev.sigstore.bundle.v0.3+json`` (or the
    ``…bundle+json;version=0.3`` spelling), one layer holding the bundle; found through the
    referrers API or the ``sha256-<hex>`` tag-schema index, filtered by artifact type.

Verification steps
    1. **Bounds first** (:mod:`.classic`, :mod:`.bundle`): manifest, payload, bundle and
       annotation sizes, layer count, certificates per chain and chain depth, nesting depth
       of every JSON document; crossing one is a :class:`~.errors.CosignLimitError`.
    2. **Strict JSON** (:mod:`.strict_json`): duplicate keys are refused, since parsers
       disagree on which one wins and the signed digest must be read one way only.
    3. **Signature over the exact bytes**: the simple-signing blob as stored, or the DSSE
       PAE; never a re-encoding (cosign verifies the layer bytes as they are).
    4. **Signer** (:mod:`.keys`, :mod:`.fulcio`): a key of the rule (ECDSA P-256/384/521,
       RSA, ed25519; sha256 unless the authority says otherwise, as ``cosign verify``), or
       a Fulcio certificate chained to a CA of the trusted root *at the signing time*, with
       code-signing usage and a verified embedded SCT (cosign and sigstore-python require
       the SCT by default; ``insecureIgnoreSCT`` turns it off). The chain is built from the
       trusted root; certificates shipped with the signature are only path hints.
    5. **Transparency log** (:mod:`.rekor`): the SET verifies with the Rekor key of the
       trusted root named by ``logID``, within that key's window, and the entry's body
       records this payload hash, signature and key or certificate (CVE-2022-36056). A
       present but invalid entry rejects the signature, as in cosign. The signing time for
       a certificate is ``integratedTime``; with no verified entry it is ``now`` (the
       caller's clock), so an expired Fulcio certificate without a log entry fails.
       Bundles with certificates get all of this (plus inclusion proofs, checkpoints and
       RFC 3161 timestamps) from PyPI ``sigstore``; see :mod:`.bundle`.
    6. **Payload**: ``critical.type`` is exactly cosign's, the signed digest equals the
       digest being served (a signature copied from another image is refused); for bundles
       an in-toto subject's sha256 is that digest, and the predicate type is cosign's
       signature type (``https://sigstore.dev/cosign/sign/v1``) unless the caller asks for
       an attestation type.
    7. **Policy** (:mod:`.policy`): which verified signers count (keys, keyless identities
       exact or regexp), how many distinct authorities (``threshold``), whether a log entry
       is required (``tlog``, default required), and whether the signed reference names the
       served repository (or a ``remapIdentity`` prefix). The verdict carries the reasons.

Choices where the formats leave room
    - ``docker-reference`` is enforced (cosign does not; containers/image does): see
      :mod:`.policy`. Docker Hub spellings (``index.docker.io/x``) normalise to
      ``docker.io/library/x`` like every other name in the proxy.
    - Key-based signatures count without a log entry only under ``tlog: optional``;
      cosign ≥ 2 logs them by default, and peers verify the log by default.
    - Only the SET is checked for classic signatures: that is all cosign's ``bundle``
      annotation carries (no inclusion proof). Classic RFC 3161 timestamp annotations are
      not read yet (a keyless classic signature then needs its Rekor entry).
    - Key-based bundles (``publicKey`` verification material), which sigstore-python cannot
      load, are verified here, log entries included: SET and/or inclusion proof with a
      signed checkpoint (Rekor v1 and v2). An entry with only a proof carries no signed
      time; key-based signatures need none.
    - Non-canonical JSON is accepted where the format signs exact bytes (simple-signing
      payloads, DSSE payloads): canonicalising would verify bytes nobody signed. Only
      duplicate keys, NaN/Infinity and excessive nesting are refused. The one place that
      needs canonical JSON, the SET message, is built by us from parsed fields, as cosign.
    - Keyless identities: the subject matches any SAN of the certificate; regular
      expressions are searched, not anchored, as Go's ``regexp.MatchString`` in cosign and
      policy-controller (see :mod:`.policy`).
    - Certificate bundles need no clock: sigstore-python checks the chain at the verified
      times it establishes (log and TSA). The clock is used only for a classic keyless
      signature without a verified log entry.
    - A layer or bundle that fails does not spoil the others: several signers append
      layers to one ``.sig`` manifest, and the policy counts those that verified; the
      failures become the verdict's reasons.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from proxy.sources.cosign.bundle import (
        BUNDLE_MEDIA_TYPES,
        COSIGN_SIGN_PREDICATE,
        BundleVerifier,
        VerifiedBundle,
    )
    from proxy.sources.cosign.classic import (
        ClassicLimits,
        ClassicResult,
        normalise_reference,
        parse_sig_manifest,
        signature_tag,
        verify_classic,
    )
    from proxy.sources.cosign.config import (
        CosignSourceConfig,
        load_trusted_root,
        parse_rule_config,
        parse_source_config,
    )
    from proxy.sources.cosign.errors import (
        CosignFormatError,
        CosignLimitError,
        CosignMismatchError,
        CosignSignatureError,
    )
    from proxy.sources.cosign.facts import CertSigner, KeySigner, Rejected, VerifiedSignature
    from proxy.sources.cosign.policy import (
        CosignPolicy,
        KeyAuthority,
        KeylessAuthority,
        Match,
        Verdict,
        evaluate,
    )
    from proxy.sources.cosign.referrers import (
        BundleRef,
        bundle_layer,
        bundle_referrers,
        referrers_tag,
    )
    from proxy.sources.cosign.trusted_root import TrustedRoot, parse_trusted_root
    from proxy.sources.cosign.verify import CosignVerifier, FetchedSignatures

# Loaded on first use (PEP 562): importing one module of the package (the entry, the
# settings parser) must not load sigstore-python and its dependencies (~15 MiB per
# process) where no cosign source is configured.
_HOME: dict[str, str] = {
    "BUNDLE_MEDIA_TYPES": "proxy.sources.cosign.bundle",
    "BundleRef": "proxy.sources.cosign.referrers",
    "BundleVerifier": "proxy.sources.cosign.bundle",
    "COSIGN_SIGN_PREDICATE": "proxy.sources.cosign.bundle",
    "CertSigner": "proxy.sources.cosign.facts",
    "ClassicLimits": "proxy.sources.cosign.classic",
    "ClassicResult": "proxy.sources.cosign.classic",
    "CosignFormatError": "proxy.sources.cosign.errors",
    "CosignLimitError": "proxy.sources.cosign.errors",
    "CosignMismatchError": "proxy.sources.cosign.errors",
    "CosignPolicy": "proxy.sources.cosign.policy",
    "CosignSignatureError": "proxy.sources.cosign.errors",
    "CosignSourceConfig": "proxy.sources.cosign.config",
    "CosignVerifier": "proxy.sources.cosign.verify",
    "FetchedSignatures": "proxy.sources.cosign.verify",
    "KeyAuthority": "proxy.sources.cosign.policy",
    "KeySigner": "proxy.sources.cosign.facts",
    "KeylessAuthority": "proxy.sources.cosign.policy",
    "Match": "proxy.sources.cosign.policy",
    "Rejected": "proxy.sources.cosign.facts",
    "TrustedRoot": "proxy.sources.cosign.trusted_root",
    "Verdict": "proxy.sources.cosign.policy",
    "VerifiedBundle": "proxy.sources.cosign.bundle",
    "VerifiedSignature": "proxy.sources.cosign.facts",
    "bundle_layer": "proxy.sources.cosign.referrers",
    "bundle_referrers": "proxy.sources.cosign.referrers",
    "evaluate": "proxy.sources.cosign.policy",
    "load_trusted_root": "proxy.sources.cosign.config",
    "normalise_reference": "proxy.sources.cosign.classic",
    "parse_rule_config": "proxy.sources.cosign.config",
    "parse_sig_manifest": "proxy.sources.cosign.classic",
    "parse_source_config": "proxy.sources.cosign.config",
    "parse_trusted_root": "proxy.sources.cosign.trusted_root",
    "referrers_tag": "proxy.sources.cosign.referrers",
    "signature_tag": "proxy.sources.cosign.classic",
    "verify_classic": "proxy.sources.cosign.classic",
}

__all__ = [
    "BUNDLE_MEDIA_TYPES",
    "COSIGN_SIGN_PREDICATE",
    "BundleRef",
    "BundleVerifier",
    "CertSigner",
    "ClassicLimits",
    "ClassicResult",
    "CosignFormatError",
    "CosignLimitError",
    "CosignMismatchError",
    "CosignPolicy",
    "CosignSignatureError",
    "CosignSourceConfig",
    "CosignVerifier",
    "FetchedSignatures",
    "KeyAuthority",
    "KeySigner",
    "KeylessAuthority",
    "Match",
    "Rejected",
    "TrustedRoot",
    "Verdict",
    "VerifiedBundle",
    "VerifiedSignature",
    "bundle_layer",
    "bundle_referrers",
    "evaluate",
    "load_trusted_root",
    "normalise_reference",
    "parse_rule_config",
    "parse_sig_manifest",
    "parse_source_config",
    "parse_trusted_root",
    "referrers_tag",
    "signature_tag",
    "verify_classic",
]


def __getattr__(name: str) -> Any:
    home = _HOME.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(import_module(home), name)
    globals()[name] = value
    return value
