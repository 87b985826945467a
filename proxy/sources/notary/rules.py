"""What a Notary v1 source applies to a repository: the :class:`SigningRule` a policy rule's
verification part becomes (:mod:`.policy`), and the refusals it explains in words Docker
users know (the gate shows ``str(error)`` to clients)."""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from datetime import timedelta

from proxy.errors import NotSignedError
from proxy.sources.notary.tuf import RoleRequirement, RootOfTrust

__all__ = [
    "NotSignedByError",
    "SignersDisagreeError",
    "SigningRule",
    "TooFewSignaturesError",
]


class NotSignedByError(NotSignedError):
    """No acceptable role signs the tag: "tag v1 is not signed by targets/releases or
    targets". ``roles`` are the roles that would have had to sign it."""

    def __init__(self, tag: str, roles: tuple[str, ...], note: str = "") -> None:
        self.tag = tag
        self.roles = roles
        text = f"tag {tag} is not signed by {' or '.join(roles)}"
        super().__init__(f"{text} ({note})" if note else text)


class TooFewSignaturesError(NotSignedError):
    """A required role signs the tag, with fewer valid signatures than its threshold."""

    def __init__(self, tag: str, role: str, valid: int, required: int) -> None:
        self.tag = tag
        self.role = role
        self.valid = valid
        self.required = required
        super().__init__(
            f"tag {tag} is signed by {role} with {valid} valid signature(s), {required} required"
        )


class SignersDisagreeError(NotSignedError):
    """Signers sign the tag at different digests; never resolved by picking one.
    ``claims`` are ``(role, digest)`` pairs in rule order."""

    def __init__(self, tag: str, claims: tuple[tuple[str, str], ...]) -> None:
        self.tag = tag
        self.claims = claims
        said = ", ".join(f"{role} signs {digest}" for role, digest in claims)
        super().__init__(f"signers disagree on tag {tag}: {said}")


@dataclass(frozen=True)
class SigningRule:
    """How a repository's signatures are judged.

    ``root_of_trust`` has no default on purpose: trust on first use must be chosen, not
    fallen into. ``required_roles`` None means Docker's rule (``targets/releases``, else
    ``targets``); otherwise every listed role must sign the tag at one digest with at
    least its ``min_signatures``. ``optional_roles`` need not sign, but a tag one of them
    signs at another digest (or length) than the answer is refused
    (``SignersDisagreeError``). ``allow_expired_root_cert`` accepts a root whose leaf
    certificate expired (sources log it on every use). ``expiry_grace``: when the trust
    server cannot be reached, cached verified data may be used up to this long past its
    expiry (zero: never past expiry); never when the server answers.
    """

    root_of_trust: RootOfTrust
    required_roles: tuple[RoleRequirement, ...] | None = None
    allow_expired_root_cert: bool = False
    optional_roles: tuple[str, ...] = ()
    expiry_grace: timedelta = timedelta(0)

    def __post_init__(self) -> None:
        if self.required_roles is not None and not self.required_roles:
            raise ValueError("required_roles must name at least one role (or be None)")
        if self.expiry_grace < timedelta(0):
            raise ValueError("expiry_grace must not be negative")
        required = {r.name for r in self.required_roles or ()}
        if required & set(self.optional_roles):
            raise ValueError("a role cannot be both required and optional")

    @property
    def docker(self) -> bool:
        """True for Docker's rule."""
        return self.required_roles is None

    @property
    def role_names(self) -> Collection[str]:
        """Roles the rule reads."""
        if self.required_roles is None:
            return ("targets/releases", "targets")
        return tuple(r.name for r in self.required_roles)
