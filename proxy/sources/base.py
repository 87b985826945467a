"""The trust-source interface: "which digest is this tag signed at, and by whom?".

Every trust source (Notary v1 now; Notation and Cosign later) implements
:class:`TrustSource`. The enforcement layer builds its policy on four outcomes::

    resolve(gun, tag, rule) -> SignedTarget          the tag is signed: pull by this digest
                            raises NotSignedError    the tag is not signed under the rule
                                   └── NoTrustDataError   the repository has no trust data
                            raises TrustSourceUnavailableError  could not fetch, nothing
                                                     valid cached (the proxy answers 503)
                            raises TrustDataError    the trust data is bad (never trusted)

A :class:`SigningRule` is what a policy configures per repository: the root of trust and
which roles must sign. It carries no I/O and is hashable, so sources may key caches on it.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from typing import Protocol

from proxy.errors import NotSignedError, TrustDataError, TrustSourceUnavailableError
from proxy.trust import (
    PinnedRootCerts,
    PinnedRootKeys,
    RoleRequirement,
    RootCA,
    RootOfTrust,
    SignedTarget,
    TrustOnFirstUse,
)

__all__ = [
    "NoTrustDataError",
    "NotSignedError",
    "PinnedRootCerts",
    "PinnedRootKeys",
    "RoleRequirement",
    "RootCA",
    "RootOfTrust",
    "SignedTarget",
    "SigningRule",
    "TrustDataError",
    "TrustOnFirstUse",
    "TrustSource",
    "TrustSourceUnavailableError",
]


class NoTrustDataError(NotSignedError):
    """The trust server has no trust data for the repository at all (notary: 404).

    A distinct outcome, not an error page: the repository was never signed, or was deleted
    (``notary delete --remote``). The message is the one Docker users recognise.
    """

    def __init__(self, server: str, gun: str) -> None:
        self.server = server
        self.gun = gun
        super().__init__(f"{server} does not have trust data for {gun}")


@dataclass(frozen=True)
class SigningRule:
    """How a repository's signatures are judged.

    ``root_of_trust`` has no default on purpose: trust on first use must be chosen, not
    fallen into. ``required_roles`` None means Docker's rule (``targets/releases``, else
    ``targets``); otherwise every listed role must sign the tag at one digest with at
    least its ``min_signatures``. ``allow_expired_root_cert`` accepts a root whose leaf
    certificate expired (sources log it on every use).
    """

    root_of_trust: RootOfTrust
    required_roles: tuple[RoleRequirement, ...] | None = None
    allow_expired_root_cert: bool = False

    def __post_init__(self) -> None:
        if self.required_roles is not None and not self.required_roles:
            raise ValueError("required_roles must name at least one role (or be None)")

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


class TrustSource(Protocol):
    """A source of signatures for tags. Implementations are safe for concurrent use from
    one event loop; ``aclose`` releases connections."""

    @property
    def name(self) -> str: ...

    async def resolve(self, gun: str, tag: str, rule: SigningRule) -> SignedTarget:
        """The signed target of ``tag`` in ``gun`` under ``rule``.

        Raises:
            NotSignedError: not signed under the rule (``NoTrustDataError``: no trust data).
            TrustSourceUnavailableError: could not fetch and nothing valid is cached.
            TrustDataError: the trust data failed verification.
        """
        ...

    async def signed_tags(self, gun: str, rule: SigningRule) -> dict[str, SignedTarget]:
        """Every tag acceptable under ``rule``, by tag (for a filtered tag list).

        Raises: as :meth:`resolve`, except that an unsigned tag is simply absent.
        """
        ...

    async def aclose(self) -> None: ...
