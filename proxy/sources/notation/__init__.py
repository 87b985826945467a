"""Notation (Notary Project v2) trust source: the pure verification core, and its wiring.

The source (``type: notation``) is :mod:`.entry` (settings, policy rule keys of
:mod:`.rule`, builder), :mod:`.judge` (the registry reads below, for
:class:`~proxy.sources.signed_digests.SignedDigestSource`) and :mod:`.inspect_cli`. In the
core, every function takes bytes (or parsed, validated objects) and the time ``now``, and
returns verified facts or raises; nothing reads files except the two thin loaders named
below, and nothing touches the network (the judge and :mod:`.crl_fetch` do the I/O).

Modules
-------
- :mod:`.trustpolicy`: ``trustpolicy.json`` (OCI trust policy) → validated statements,
  path-qualified :class:`~.errors.TrustPolicyError`; statement selection for a repository.
- :mod:`.truststore`: Notation's ``x509/{ca,signingAuthority,tsa}/<name>/`` layout
  (:func:`~.truststore.load_trust_store_dir` is the thin file-reading shell).
- :mod:`.envelope`: JWS and COSE envelopes → :class:`~.envelope.SignerInfo`, after the
  signature verified with the envelope's own leaf key (*integrity*).
- :mod:`.certs`: chain shape, key/alg table, subject DN as notation-go sees it.
- :mod:`.timestamp`: RFC 3161 countersignatures against ``tsa`` stores.
- :mod:`.revocation`: operator-provided CRLs.
- :mod:`.verify`: the walk (:func:`~.verify.verify_signature`, :func:`~.verify.verify_any`).
- :mod:`.config`: typed source settings and inline rule fields, not registered anywhere.

Verification of one artifact, in order
--------------------------------------
1. The caller picks the statement: :meth:`TrustPolicyDocument.statement_for`
   (``registry[:port]/repository``; exact scope before ``*``; none → refused). Under
   ``skip`` nothing is fetched or checked.
2. The caller fetches signature manifests (artifact type
   ``application/vnd.cncf.notary.signature``, from the top-level ``artifactType`` or
   ``config.mediaType``), at most ``max_signatures``, and each one's single envelope layer
   (media type ``application/jose+json`` or ``application/cose``), size-bounded.
3. :func:`verify_any` tries them in order; the first that passes wins (notation-go stops at
   the first success). For each: integrity → plugin refusal → authenticity → expiry →
   authenticTimestamp → revocation, each failure enforced or logged per the statement's
   level and overrides (notation-go ``trustpolicy.LevelStrict`` … ``LevelSkip``); then
   the payload's ``targetArtifact`` must equal the served manifest's descriptor (digest
   and size computed from the served bytes, media type as served) at every level.
4. The verdict carries each check's result (what was logged), the signer's subject and
   certificate fingerprint, the timestamp when one was used: what audit records and
   ``trust inspect`` need.

Where the format leaves room, and what this core chose
------------------------------------------------------
- Strictness beyond notation-go, each refusing what Go would accept: duplicate JSON keys
  (Go keeps the last), unknown trust-policy keys (Go ignores them: a typo must not turn a
  rule off), a trust store listed twice in one statement, trusted identities other than
  ``x509.subject`` (Go hands them to plugins; none run here), unknown critical headers
  without a plugin, non-minimal CBOR (two encodings of one signature), and base64 with
  trailing bits set (two spellings of one signature).
- Plugins: a signature naming ``io.cncf.notary.verificationPlugin`` is refused after
  integrity, with the plugin's name, at every level (notation-go refuses the same way when
  the plugin is not installed).
- Time: ``signingTime`` is the signer's claim and is never used as trusted time; a
  certificate chain is checked at ``now`` unless an RFC 3161 timestamp from a ``tsa`` store
  is used (then over the whole ``genTime ± accuracy`` interval), or the scheme is
  ``signingAuthority`` (then at ``authenticSigningTime``).
- Revocation: only CRLs the operator provides. A certificate that points at a CRL or OCSP
  responder without such a CRL is "unknown", which fails the *revocation* check as in
  notation-go (enforced at strict; ``override: {revocation: log|skip}`` relaxes it). For
  the TSA chain only "revoked" fails (see :mod:`.verify`). Left: OCSP, fetching CRLs
  through the upstream client with a host allow-list, caching.
- Bounds: envelope 512 KiB, payload 64 KiB, 10 certificates of 64 KiB each, timestamp
  token 64 KiB, policy document 1 MiB, 100 signatures per artifact (notation-go's
  ``MaxSignatureAttempts``); chains longer than 10 or with a repeated certificate refused.
"""

from __future__ import annotations

from proxy.sources.notation.config import (
    NotationRuleFields,
    NotationSourceConfig,
    parse_rule_fields,
)
from proxy.sources.notation.envelope import (
    COSE_MEDIA_TYPE,
    JWS_MEDIA_TYPE,
    SignerInfo,
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
from proxy.sources.notation.revocation import CrlSet, parse_crls
from proxy.sources.notation.trustpolicy import (
    TrustPolicyDocument,
    TrustPolicyStatement,
    parse_trust_policy,
)
from proxy.sources.notation.truststore import TrustStore, load_trust_store_dir
from proxy.sources.notation.verify import (
    CheckResult,
    SignatureVerdict,
    descriptor_of,
    verify_any,
    verify_signature,
)

#: The artifact type of Notation signature manifests (referrers filter).
SIGNATURE_ARTIFACT_TYPE = "application/vnd.cncf.notary.signature"

__all__ = [
    "COSE_MEDIA_TYPE",
    "JWS_MEDIA_TYPE",
    "SIGNATURE_ARTIFACT_TYPE",
    "CheckResult",
    "CrlSet",
    "EnvelopeError",
    "NoApplicableTrustPolicyError",
    "NotationRuleFields",
    "NotationSourceConfig",
    "SignatureVerdict",
    "SignatureVerificationError",
    "SignerInfo",
    "TargetArtifact",
    "TrustPolicyDocument",
    "TrustPolicyError",
    "TrustPolicyStatement",
    "TrustStore",
    "TrustStoreError",
    "descriptor_of",
    "load_trust_store_dir",
    "parse_crls",
    "parse_envelope",
    "parse_rule_fields",
    "parse_trust_policy",
    "verify_any",
    "verify_signature",
]
