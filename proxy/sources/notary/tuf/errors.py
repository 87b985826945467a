"""Errors of the Notary v1 verification core.

Every leaf subclasses :class:`proxy.errors.TrustDataError` (``role``, ``field``), so a caller
can catch "the trust data is bad" in one place and still tell the cases apart::

    TrustDataError (proxy.errors)
    ├── MetadataFormatError          bytes are not well-formed metadata of the expected role
    │   └── OversizeMetadataError    more bytes than the configured limit for the role
    ├── UnsupportedKeyError          key type unknown or key unusable (curve, size)
    ├── SignatureError               one signature does not verify (method, bytes, key)
    │   └── ThresholdError           a role is not signed by enough distinct keys of its own
    ├── KeyIdMismatchError           a key listed under an ID that is not the key's ID
    ├── ExpiredError                 ``expires`` is before the reference time (freeze attack)
    ├── RollbackError                version lower than the last trusted one
    ├── HashMismatchError            bytes differ from the length/hashes that announced them
    ├── RootOfTrustError             root not anchored: pins, CA, CN != GUN, expired cert
    └── RootRotationError            new root not signed by the previous root's keys

Resolution failures ("the tag is not signed") are :class:`proxy.errors.NotSignedError`.
"""

from __future__ import annotations

from proxy.errors import TrustDataError

__all__ = [
    "ExpiredError",
    "HashMismatchError",
    "KeyIdMismatchError",
    "MetadataFormatError",
    "OversizeMetadataError",
    "RollbackError",
    "RootOfTrustError",
    "RootRotationError",
    "SignatureError",
    "ThresholdError",
    "TrustDataError",
    "UnsupportedKeyError",
]


class MetadataFormatError(TrustDataError):
    """The bytes are not well-formed metadata for the expected role."""


class OversizeMetadataError(MetadataFormatError):
    """The metadata is larger than the limit configured for its role."""


class UnsupportedKeyError(TrustDataError):
    """A key has an unknown type, or a curve/size this verifier does not accept."""


class SignatureError(TrustDataError):
    """A signature does not verify with the key it names."""


class ThresholdError(SignatureError):
    """A role is not signed by its threshold of distinct keys that belong to it."""


class KeyIdMismatchError(TrustDataError):
    """A signature names a key whose content does not hash to that key ID."""


class ExpiredError(TrustDataError):
    """Metadata expired before the reference time (freeze protection)."""


class RollbackError(TrustDataError):
    """Metadata version is lower than the last trusted version of that role."""


class HashMismatchError(TrustDataError):
    """Metadata bytes do not match the length or hashes announced by the parent role."""


class RootOfTrustError(TrustDataError):
    """The root is not anchored by the chosen root of trust (pins, CA, CN, cert validity)."""


class RootRotationError(TrustDataError):
    """A new root version is not a valid successor of the trusted one."""
