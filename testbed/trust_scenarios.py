"""Trust data the trust-engine tests need, produced by the real notary CLI on a NotaryBed.

The basic operation is "sign (tag, sha256 hex, length) in GUN, role R"
(:meth:`Repository.sign`); the ``scenario_*`` functions combine it into the situations the
verifier must handle and return what was signed (:class:`Scenario`), including what Docker
would resolve each tag to, so tests compare against an independent expectation.

Every repository is owned by one publisher (root + targets keys in its own trust directory)
and initialised as ``docker trust`` does (server-managed snapshot). Delegation signers are
separate trust directories holding only their imported delegation key.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from testbed.notary_cli import (
    DelegationKey,
    NotaryCli,
    canonical_key_id_of_cert,
    make_delegation_key,
)
from testbed.notary_server import NotaryBed, fetch_metadata

DEFAULT_REGISTRY = "127.0.0.1:5000"
RELEASES = "targets/releases"
TARGETS = "targets"
# Docker: `docker pull` with content trust reads targets/releases, then targets; no other role.
DOCKER_ROLES: tuple[str, ...] = (RELEASES, TARGETS)


@dataclass(frozen=True)
class SignedTarget:
    """One target entry as published: ``tag`` → (sha256 hex, length) in ``role``."""

    tag: str
    sha256: str
    length: int
    role: str


@dataclass(frozen=True)
class KeyIds:
    """Key IDs as published in the repository's metadata (read back from the server)."""

    root: tuple[str, ...]  # IDs in root.json's root role (certificate IDs, ecdsa-x509)
    root_canonical: tuple[str, ...]  # the same keys as bare ecdsa IDs ("Root Key" in Docker)
    targets: tuple[str, ...]
    snapshot: tuple[str, ...]
    timestamp: tuple[str, ...]
    delegations: Mapping[str, tuple[str, ...]]  # role → key IDs, from targets.json
    root_version: int


@dataclass(frozen=True)
class Scenario:
    """What a scenario built. ``expected`` is Docker's answer per tag; ``unacceptable`` lists
    tags that appear somewhere in the data (or used to) but must not resolve."""

    name: str
    gun: str
    signed: tuple[SignedTarget, ...]
    expected: Mapping[str, SignedTarget]
    unacceptable: tuple[str, ...] = ()
    keys: KeyIds | None = None  # None once the repository is deleted
    previous_keys: KeyIds | None = None  # before a rotation
    delegation_keys: Mapping[str, DelegationKey] = field(default_factory=dict)


@dataclass
class Signer:
    """A delegation key holder with its own trust directory (another ``docker trust`` user)."""

    name: str
    role: str
    key: DelegationKey
    cli: NotaryCli


@dataclass
class Repository:
    """One GUN on a NotaryBed with its owner and delegation signers."""

    bed: NotaryBed
    gun: str
    workdir: Path
    owner: NotaryCli
    signers: dict[str, Signer] = field(default_factory=dict)
    signed: list[SignedTarget] = field(default_factory=list)

    @classmethod
    def create(cls, bed: NotaryBed, workdir: Path, gun: str) -> Repository:
        """Initialise and publish ``gun`` like ``docker trust`` (snapshot key on the server)."""
        repo_dir = workdir / _slug(gun)
        owner = cli_for(bed, repo_dir / "owner")
        owner.init(gun, server_managed_snapshot=True, publish=True)
        return cls(bed=bed, gun=gun, workdir=repo_dir, owner=owner)

    def add_signer(
        self,
        name: str,
        role: str = RELEASES,
        *,
        x509_cert: bool = True,
        paths: Sequence[str] | None = None,
    ) -> Signer:
        """A new signer for ``role``: generate a key, owner adds its public part to ``role``
        (creating the role if needed, ``--all-paths`` unless ``paths``) and publishes, the
        signer imports the private key into a trust directory of its own."""
        key = make_delegation_key(self.workdir / "keys", name, x509_cert=x509_cert)
        reported = self.owner.delegation_add(
            self.gun, role, [key.public_file], paths=paths, publish=True
        )
        # Cross-check our key-ID arithmetic against notary's (the CLI prints canonical IDs).
        if reported != [key.canonical_key_id]:
            raise RuntimeError(
                f"notary reports key IDs {reported} for {key.public_file}, "
                f"we computed {key.canonical_key_id}"
            )
        cli = cli_for(self.bed, self.workdir / f"signer-{name}")
        cli.key_import(key.private_key, role=role)
        signer = Signer(name=name, role=role, key=key, cli=cli)
        self.signers[name] = signer
        return signer

    def sign(
        self,
        tag: str,
        sha256_hex: str,
        length: int,
        *,
        role: str = TARGETS,
        signer: Signer | str | None = None,
        publish: bool = True,
    ) -> SignedTarget:
        """Sign ``tag`` → (sha256, length) in ``role``: by the owner for ``targets``, by
        ``signer`` (or the first signer of ``role``) for a delegation."""
        cli = self._cli_for(role, signer)
        roles = () if role == TARGETS else (role,)
        cli.addhash(self.gun, tag, sha256_hex, length, roles=roles, publish=publish)
        target = SignedTarget(tag=tag, sha256=sha256_hex, length=length, role=role)
        self.signed = [t for t in self.signed if (t.tag, t.role) != (tag, role)] + [target]
        return target

    def sign_bytes(
        self,
        tag: str,
        data: bytes,
        *,
        role: str = TARGETS,
        signer: Signer | str | None = None,
        publish: bool = True,
    ) -> SignedTarget:
        """:meth:`sign` with the sha256 and length of ``data`` (e.g. manifest bytes)."""
        return self.sign(
            tag,
            hashlib.sha256(data).hexdigest(),
            len(data),
            role=role,
            signer=signer,
            publish=publish,
        )

    def remove(self, tag: str, *, role: str = TARGETS, signer: Signer | str | None = None) -> None:
        """``notary remove`` + publish: revoke ``tag`` in ``role``."""
        cli = self._cli_for(role, signer)
        cli.remove(self.gun, tag, roles=() if role == TARGETS else (role,), publish=True)
        self.signed = [t for t in self.signed if (t.tag, t.role) != (tag, role)]

    def rotate_root(self) -> None:
        """New root key; root.json version N+1 is signed by the old and the new root key."""
        self.owner.key_rotate(self.gun, "root")

    def rotate_targets(self) -> None:
        """New targets key; the CLI re-signs targets.json with it and publishes."""
        self.owner.key_rotate(self.gun, TARGETS)

    def delete_remote(self) -> None:
        """``notary delete --remote``: the server forgets the GUN (every GET becomes 404)."""
        self.owner.delete(self.gun, remote=True)
        self.signed = []

    def key_ids(self) -> KeyIds:
        """Key IDs read back from the server's current root.json and targets.json."""
        root = _signed(fetch_metadata(self.bed, self.gun, "root"))
        targets = _signed(fetch_metadata(self.bed, self.gun, "targets"))
        roles: Mapping[str, Any] = root["roles"]
        root_ids = tuple(roles["root"]["keyids"])
        canonical = tuple(
            canonical_key_id_of_cert(base64.b64decode(root["keys"][k]["keyval"]["public"]))
            for k in root_ids
        )
        delegations = {
            d["name"]: tuple(d["keyids"]) for d in targets.get("delegations", {}).get("roles", [])
        }
        return KeyIds(
            root=root_ids,
            root_canonical=canonical,
            targets=tuple(roles["targets"]["keyids"]),
            snapshot=tuple(roles["snapshot"]["keyids"]),
            timestamp=tuple(roles["timestamp"]["keyids"]),
            delegations=delegations,
            root_version=int(root["version"]),
        )

    def scenario(
        self,
        name: str,
        *,
        unacceptable: Iterable[str] = (),
        previous_keys: KeyIds | None = None,
        deleted: bool = False,
    ) -> Scenario:
        """Snapshot of what this repository holds now, as a :class:`Scenario`."""
        return Scenario(
            name=name,
            gun=self.gun,
            signed=tuple(self.signed),
            expected=docker_resolve(self.signed),
            unacceptable=tuple(unacceptable),
            keys=None if deleted else self.key_ids(),
            previous_keys=previous_keys,
            delegation_keys={s.name: s.key for s in self.signers.values()},
        )

    def _cli_for(self, role: str, signer: Signer | str | None) -> NotaryCli:
        if role == TARGETS and signer is None:
            return self.owner
        if isinstance(signer, str):
            return self.signers[signer].cli
        if signer is not None:
            return signer.cli
        for candidate in self.signers.values():
            if candidate.role == role:
                return candidate.cli
        raise ValueError(f"no signer holds a key for {role} in {self.gun}")


def root_certificates(bed: NotaryBed, gun: str, *, version: int | None = None) -> dict[str, bytes]:
    """PEM certificates of the root role's keys in the server's root.json (or ``N.root.json``),
    by key ID (the certificate ID). Their CN is the GUN."""
    name = "root" if version is None else f"{version}.root"
    root = _signed(fetch_metadata(bed, gun, name))
    return {
        key_id: base64.b64decode(root["keys"][key_id]["keyval"]["public"])
        for key_id in root["roles"]["root"]["keyids"]
    }


def cli_for(bed: NotaryBed, trust_dir: Path) -> NotaryCli:
    """A NotaryCli with its own trust directory, talking to ``bed``."""
    return NotaryCli(trust_dir=trust_dir, server_url=bed.url, ca_file=bed.ca_file)


def docker_resolve(signed: Iterable[SignedTarget]) -> dict[str, SignedTarget]:
    """Docker's rule: per tag, ``targets/releases`` wins over ``targets``; other delegations
    (``targets/qa``) are ignored. Independent of notary's own ``list`` ordering."""
    by_role: dict[str, dict[str, SignedTarget]] = {}
    for t in signed:
        by_role.setdefault(t.role, {})[t.tag] = t
    result: dict[str, SignedTarget] = {}
    for role in reversed(DOCKER_ROLES):  # later roles overwrite: releases last
        result.update(by_role.get(role, {}))
    return result


def payload(label: str) -> bytes:
    """Deterministic manifest-like bytes for ``label`` (stand-ins for real manifests)."""
    return json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "annotations": {"org.trustproxy.testbed": label},
        },
        indent=3,
    ).encode()


def sha256_and_length(data: bytes) -> tuple[str, int]:
    """The (sha256 hex, length) pair notary signs for ``data``."""
    return hashlib.sha256(data).hexdigest(), len(data)


def gun_for(repository: str, registry: str = DEFAULT_REGISTRY) -> str:
    """GUN of a repository on a non-Docker-Hub registry: ``host:port/name``."""
    return f"{registry}/{repository}"


# -- scenarios ----------------------------------------------------------------------------------


def scenario_targets(bed: NotaryBed, workdir: Path, gun: str | None = None) -> Scenario:
    """Two tags signed by the owner directly in ``targets`` (no delegation)."""
    repo = Repository.create(bed, workdir, gun or gun_for("team/targets-only"))
    repo.sign_bytes("v1", payload("targets-only v1"))
    repo.sign_bytes("latest", payload("targets-only latest"))
    return repo.scenario("targets")


def scenario_releases(bed: NotaryBed, workdir: Path, gun: str | None = None) -> Scenario:
    """``targets/releases`` with two keys held by two separate signers: alice (X.509
    certificate key) and bob (bare public key). Each signs its own tag; bob's publish
    re-signs the whole role, so both tags end up under bob's signature only."""
    repo = Repository.create(bed, workdir, gun or gun_for("team/releases"))
    alice = repo.add_signer("alice", RELEASES, x509_cert=True)
    bob = repo.add_signer("bob", RELEASES, x509_cert=False)
    repo.sign_bytes("v1", payload("releases v1 by alice"), role=RELEASES, signer=alice)
    repo.sign_bytes("v2", payload("releases v2 by bob"), role=RELEASES, signer=bob)
    return repo.scenario("releases")


def scenario_both_roles(bed: NotaryBed, workdir: Path, gun: str | None = None) -> Scenario:
    """Tag ``v1`` in ``targets`` and in ``targets/releases`` at different digests (Docker:
    releases wins); ``owner-only`` only in ``targets``."""
    repo = Repository.create(bed, workdir, gun or gun_for("team/both-roles"))
    repo.add_signer("releaser", RELEASES)
    repo.sign_bytes("v1", payload("both-roles v1 in targets"))
    repo.sign_bytes("owner-only", payload("both-roles owner-only"))
    repo.sign_bytes("v1", payload("both-roles v1 in releases"), role=RELEASES)
    return repo.scenario("both-roles")


def scenario_qa_only(bed: NotaryBed, workdir: Path, gun: str | None = None) -> Scenario:
    """``qa-build`` signed only in ``targets/qa`` (not acceptable by Docker's rule), and
    ``v1`` in ``targets`` plus a different digest for ``v1`` in ``targets/qa`` (ignored)."""
    repo = Repository.create(bed, workdir, gun or gun_for("team/qa-only"))
    repo.add_signer("qa-bot", "targets/qa")
    repo.sign_bytes("v1", payload("qa v1 in targets"))
    repo.sign_bytes("qa-build", payload("qa build"), role="targets/qa")
    repo.sign_bytes("v1", payload("qa v1 in targets/qa"), role="targets/qa")
    return repo.scenario("qa-only", unacceptable=("qa-build",))


def scenario_root_rotation(bed: NotaryBed, workdir: Path, gun: str | None = None) -> Scenario:
    """``v1`` signed, root key rotated (root.json v(N+1) signed by old + new root keys),
    ``v2`` signed after the rotation."""
    repo = Repository.create(bed, workdir, gun or gun_for("team/root-rotation"))
    repo.sign_bytes("v1", payload("root-rotation v1"))
    before = repo.key_ids()
    repo.rotate_root()
    repo.sign_bytes("v2", payload("root-rotation v2"))
    return repo.scenario("root-rotation", previous_keys=before)


def scenario_targets_rotation(bed: NotaryBed, workdir: Path, gun: str | None = None) -> Scenario:
    """``v1`` signed, targets key rotated (targets.json re-signed by the new key only),
    ``v2`` signed after the rotation."""
    repo = Repository.create(bed, workdir, gun or gun_for("team/targets-rotation"))
    repo.sign_bytes("v1", payload("targets-rotation v1"))
    before = repo.key_ids()
    repo.rotate_targets()
    repo.sign_bytes("v2", payload("targets-rotation v2"))
    return repo.scenario("targets-rotation", previous_keys=before)


def scenario_revoked(bed: NotaryBed, workdir: Path, gun: str | None = None) -> Scenario:
    """``v1`` and ``v2`` signed, then ``notary remove v1`` + publish: v1 is revoked."""
    repo = Repository.create(bed, workdir, gun or gun_for("team/revoked"))
    repo.sign_bytes("v1", payload("revoked v1"))
    repo.sign_bytes("v2", payload("revoked v2"))
    repo.remove("v1")
    return repo.scenario("revoked", unacceptable=("v1",))


def scenario_deleted(bed: NotaryBed, workdir: Path, gun: str | None = None) -> Scenario:
    """``v1`` signed, then ``notary delete --remote``: the server has no trust data at all."""
    repo = Repository.create(bed, workdir, gun or gun_for("team/deleted"))
    repo.sign_bytes("v1", payload("deleted v1"))
    repo.delete_remote()
    return repo.scenario("deleted", unacceptable=("v1",), deleted=True)


ALL_SCENARIOS: dict[str, Callable[[NotaryBed, Path, str | None], Scenario]] = {
    "targets": scenario_targets,
    "releases": scenario_releases,
    "both-roles": scenario_both_roles,
    "qa-only": scenario_qa_only,
    "root-rotation": scenario_root_rotation,
    "targets-rotation": scenario_targets_rotation,
    "revoked": scenario_revoked,
    "deleted": scenario_deleted,
}


def _signed(raw: bytes) -> dict[str, Any]:
    envelope = json.loads(raw)
    if not isinstance(envelope, dict) or not isinstance(envelope.get("signed"), dict):
        raise ValueError("not a notary metadata envelope")
    signed: dict[str, Any] = envelope["signed"]
    return signed


def _slug(value: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in value).strip("-")
