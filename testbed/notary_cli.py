"""A thin typed wrapper around the real ``notary`` CLI (Debian ``notary`` 0.7.0).

One :class:`NotaryCli` = one publisher = one trust directory holding that publisher's private
keys (root, targets, imported delegation keys). Two signers of one delegation role are two
instances with two trust directories, exactly like two people running ``docker trust``.

Quirks of the CLI this module absorbs (each one observed, not guessed):
- ``key rotate GUN root`` asks ``yes/no`` on stdin; without ``yes`` it prints
  "Aborting action." and still exits 0. We feed ``yes`` and check for the success line.
- passphrases come from NOTARY_{ROOT,TARGETS,SNAPSHOT,DELEGATION}_PASSPHRASE; stdin is closed
  otherwise, so a missing passphrase fails fast instead of hanging on a prompt.
- without ``-c`` the CLI reads ``~/.notary/config.json``; every instance writes and passes its
  own config so that nothing from the user's home leaks in.
- ``notary key import`` only takes unencrypted PKCS#8 PEM (what :func:`make_delegation_key`
  writes); it re-encrypts the key with the delegation passphrase.
- tables (``list``, ``key list``, ``delegation list``) have empty cells (a root key has no GUN)
  and continuation lines (one line per extra key ID), so they are parsed by header column
  offsets, never by splitting on whitespace.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import json
import os
import re
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from testbed.notary_server import find_binary
from testbed.tls import self_signed_certificate

DEFAULT_TIMEOUT = 60.0
_HEX64 = re.compile(r"^[0-9a-f]{64}$")


class NotaryCliError(RuntimeError):
    """A notary command failed; carries the command line, exit code and combined output."""

    def __init__(self, argv: Sequence[str], returncode: int, output: str, reason: str = "") -> None:
        self.argv = list(argv)
        self.returncode = returncode
        self.output = output
        what = reason or f"exit code {returncode}"
        super().__init__(f"notary command failed ({what}): {' '.join(argv)}\n{output.strip()}")


@dataclass(frozen=True)
class Passphrases:
    """Passphrases for the private keys of one trust directory (notary reads them from env)."""

    root: str = "testbed-root-passphrase"
    targets: str = "testbed-targets-passphrase"
    snapshot: str = "testbed-snapshot-passphrase"
    delegation: str = "testbed-delegation-passphrase"

    def env(self) -> dict[str, str]:
        return {
            "NOTARY_ROOT_PASSPHRASE": self.root,
            "NOTARY_TARGETS_PASSPHRASE": self.targets,
            "NOTARY_SNAPSHOT_PASSPHRASE": self.snapshot,
            "NOTARY_DELEGATION_PASSPHRASE": self.delegation,
        }


@dataclass(frozen=True)
class TargetInfo:
    """One row of ``notary list``: a tag, its sha256 (hex), length and the role that signs it."""

    name: str
    sha256: str
    length: int
    role: str


@dataclass(frozen=True)
class LookupResult:
    """``notary lookup`` output: the target the client resolves (no role is printed)."""

    name: str
    sha256: str
    length: int


@dataclass(frozen=True)
class KeyInfo:
    """One row of ``notary key list`` (``gun`` is empty for root and delegation keys).

    ``key_id`` is the canonical (bare public key) ID; ``location`` may be shortened with a
    leading ``...`` by the CLI."""

    role: str
    gun: str
    key_id: str
    location: str


@dataclass(frozen=True)
class DelegationInfo:
    """One role of ``notary delegation list``; ``paths`` uses ``""`` for "all paths".

    ``key_ids`` are canonical IDs (see :meth:`NotaryCli.delegation_add`)."""

    role: str
    paths: tuple[str, ...]
    key_ids: tuple[str, ...]
    threshold: int


@dataclass(frozen=True)
class DelegationKey:
    """A delegation key pair on disk: ``private_key`` (PKCS#8, for ``key import``),
    ``public_file`` (an X.509 cert or a bare PEM public key, for ``delegation add``), the
    key ID the public file has in ``targets.json`` (``key_id``: the certificate ID for a
    cert) and its canonical ID (the bare-key ID, which the CLI prints and signs with)."""

    name: str
    private_key: Path
    public_file: Path
    key_id: str
    canonical_key_id: str
    is_x509: bool


@dataclass
class NotaryCli:
    """The ``notary`` CLI bound to one trust directory and one server."""

    trust_dir: Path
    server_url: str
    ca_file: Path
    passphrases: Passphrases = field(default_factory=Passphrases)
    binary: str | None = None
    timeout: float = DEFAULT_TIMEOUT

    def __post_init__(self) -> None:
        if self.binary is None:
            self.binary = find_binary("notary")
        if self.binary is None:
            raise RuntimeError("the notary CLI is not on PATH")
        self.trust_dir.mkdir(parents=True, exist_ok=True)
        self._config = self.trust_dir / "testbed-config.json"
        self._config.write_text(
            json.dumps(
                {
                    "trust_dir": str(self.trust_dir),
                    "remote_server": {"url": self.server_url, "root_ca": str(self.ca_file)},
                },
                indent=2,
            )
        )

    # -- plumbing ---------------------------------------------------------------------------

    def argv(self, *args: str) -> list[str]:
        """The full command line for ``notary <args>`` with this instance's settings."""
        if self.binary is None:  # only before __post_init__ ran
            raise RuntimeError("the notary CLI is not on PATH")
        return [
            self.binary,
            "-c",
            str(self._config),
            "-d",
            str(self.trust_dir),
            "-s",
            self.server_url,
            "--tlscacert",
            str(self.ca_file),
            *args,
        ]

    def run(
        self, *args: str, stdin: str | None = None, env: Mapping[str, str] | None = None
    ) -> str:
        """Run ``notary <args>``; return stdout + stderr. Raises NotaryCliError on exit != 0."""
        argv = self.argv(*args)
        full_env = dict(os.environ)
        full_env.update(self.passphrases.env())
        if env:
            full_env.update(env)
        try:
            done = subprocess.run(
                argv,
                input=(stdin or "").encode(),  # always a pipe we close: no prompt can hang
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                env=full_env,
                timeout=self.timeout,
                check=False,
            )
        except subprocess.TimeoutExpired as e:
            out = (e.output or b"").decode(errors="replace")
            raise NotaryCliError(argv, -1, out, f"timed out after {self.timeout}s") from e
        output = done.stdout.decode(errors="replace")
        if done.returncode != 0:
            raise NotaryCliError(argv, done.returncode, output)
        return output

    def _run_expect(self, expected: str, *args: str, stdin: str | None = None) -> str:
        # For commands that can print an abort and still exit 0 (root rotation).
        output = self.run(*args, stdin=stdin)
        if expected not in output:
            raise NotaryCliError(self.argv(*args), 0, output, f"no {expected!r} in the output")
        return output

    # -- repository lifecycle -----------------------------------------------------------------

    def init(
        self,
        gun: str,
        *,
        server_managed_snapshot: bool = True,
        publish: bool = True,
        root_key: Path | None = None,
        root_cert: Path | None = None,
    ) -> None:
        """Create ``gun`` locally; like ``docker trust``: the server manages the snapshot key.

        ``docker trust`` initialises with the snapshot role server-managed; with the CLI that is
        ``notary init`` followed by ``notary key rotate GUN snapshot -r``, then a publish.
        """
        args = ["init", gun]
        if root_key is not None:
            args += ["--rootkey", str(root_key)]
        if root_cert is not None:
            args += ["--rootcert", str(root_cert)]
        self.run(*args)
        if server_managed_snapshot:
            self.key_rotate(gun, "snapshot", server_managed=True)
        if publish:
            self.publish(gun)

    def publish(self, gun: str) -> None:
        """Push staged changes (``notary publish``)."""
        self._run_expect("Successfully published", "publish", gun)

    def delete(self, gun: str, *, remote: bool = True) -> None:
        """``notary delete GUN [--remote]``: local trust data, and the server's with remote."""
        args = ["delete", gun]
        if remote:
            args.append("--remote")
        self._run_expect("Successfully deleted", *args)

    def witness(self, gun: str, role: str, *, publish: bool = True) -> None:
        """Mark ``role`` to be re-signed (bumps its version) at the next publish."""
        args = ["witness", gun, role]
        if publish:
            args.append("--publish")
        self.run(*args)

    # -- targets --------------------------------------------------------------------------------

    def addhash(
        self,
        gun: str,
        tag: str,
        sha256_hex: str,
        length: int,
        *,
        roles: Sequence[str] = (),
        custom: Path | None = None,
        publish: bool = False,
    ) -> None:
        """Stage ``tag`` → (sha256, length) in ``targets`` or the given delegation ``roles``.

        ``custom`` must hold canonical JSON (the CLI rejects anything else).
        """
        if not _HEX64.match(sha256_hex):
            raise ValueError(f"sha256 must be 64 lowercase hex characters, got {sha256_hex!r}")
        if length < 0:
            raise ValueError(f"length must be >= 0, got {length}")
        args = ["addhash", gun, tag, str(length), "--sha256", sha256_hex]
        for role in roles:
            args += ["--roles", role]
        if custom is not None:
            args += ["--custom", str(custom)]
        self.run(*args)
        if publish:
            self.publish(gun)

    def remove(
        self, gun: str, tag: str, *, roles: Sequence[str] = (), publish: bool = True
    ) -> None:
        """Stage removal of ``tag`` (from ``targets`` or ``roles``) and publish by default."""
        args = ["remove", gun, tag]
        for role in roles:
            args += ["--roles", role]
        self.run(*args)
        if publish:
            self.publish(gun)

    def list_targets(self, gun: str, *, roles: Sequence[str] = ()) -> list[TargetInfo]:
        """``notary list GUN``: what the notary client resolves for every tag."""
        args = ["list", gun]
        for role in roles:
            args += ["--roles", role]
        output = self.run(*args)
        if "No targets present" in output:
            return []
        rows = _parse_table(output, ["NAME", "DIGEST", "SIZE (BYTES)", "ROLE"])
        return [
            TargetInfo(name=r[0], sha256=r[1], length=int(r[2]), role=r[3])
            for r in rows
            if r[0]  # tag names are never empty
        ]

    def lookup(self, gun: str, tag: str) -> LookupResult | None:
        """``notary lookup GUN TAG``; None when the repository exists but the tag is not
        signed. Raises NotaryCliError when the server has no trust data for ``gun``."""
        try:
            output = self.run("lookup", gun, tag)
        except NotaryCliError as e:
            if "No valid trust data for" in e.output:
                return None
            raise
        for line in output.splitlines():
            parts = line.split()
            if len(parts) == 3 and parts[1].startswith("sha256:"):
                return LookupResult(name=parts[0], sha256=parts[1][7:], length=int(parts[2]))
        raise NotaryCliError(self.argv("lookup", gun, tag), 0, output, "unparseable lookup output")

    # -- keys and delegations ---------------------------------------------------------------

    def key_list(self) -> list[KeyInfo]:
        """``notary key list``: the private keys held in this trust directory."""
        output = self.run("key", "list")
        if "No signing keys found" in output:
            return []
        rows = _parse_table(output, ["ROLE", "GUN", "KEY ID", "LOCATION"])
        return [KeyInfo(role=r[0], gun=r[1], key_id=r[2], location=r[3]) for r in rows if r[2]]

    def root_key_ids(self) -> list[str]:
        """Canonical IDs of the root private keys in this trust directory (what
        ``docker trust inspect`` calls "Root Key"); after a rotation there are several."""
        return [k.key_id for k in self.key_list() if k.role == "root"]

    def key_import(self, key_file: Path, *, role: str, gun: str | None = None) -> None:
        """``notary key import``: an unencrypted PKCS#8 PEM private key for ``role``."""
        args = ["key", "import", str(key_file), "--role", role]
        if gun is not None:
            args += ["--gun", gun]
        self.run(*args)

    def key_rotate(self, gun: str, role: str, *, server_managed: bool = False) -> None:
        """Rotate ``role``'s key (published immediately by the CLI). Root rotation needs a
        ``yes`` on stdin: given here, and the success line is checked because the CLI exits
        0 when it aborts."""
        args = ["key", "rotate", gun, role]
        if server_managed:
            args.append("--server-managed")
        stdin = "yes\n" if role == "root" else None
        self._run_expect("Successfully rotated", *args, stdin=stdin)

    def delegation_add(
        self,
        gun: str,
        role: str,
        public_files: Sequence[Path],
        *,
        paths: Sequence[str] | None = None,
        publish: bool = True,
    ) -> list[str]:
        """Add keys (X.509 certs or bare PEM public keys) to ``role``; ``paths`` None means
        ``--all-paths``. Returns the key IDs the CLI prints, which are *canonical* IDs: for a
        certificate that is not the ID in targets.json nor the ``keyid`` of its signatures
        (both are the certificate ID)."""
        args = ["delegation", "add", gun, role, *map(str, public_files)]
        if paths is None:
            args.append("--all-paths")
        else:
            for p in paths:
                args += ["--paths", p]
        output = self.run(*args)
        found = re.search(r"with keys \[([0-9a-f ,]*)\]", output)
        key_ids = found.group(1).replace(",", " ").split() if found else []
        if publish:
            self.publish(gun)
        return key_ids

    def delegation_remove(
        self, gun: str, role: str, key_ids: Sequence[str] = (), *, publish: bool = True
    ) -> None:
        """Remove ``key_ids`` from ``role``, or the whole role when none are given."""
        self.run("delegation", "remove", gun, role, *key_ids, "--yes")
        if publish:
            self.publish(gun)

    def delegation_list(self, gun: str) -> list[DelegationInfo]:
        """``notary delegation list GUN`` (continuation lines carry further paths/key IDs)."""
        output = self.run("delegation", "list", gun)
        if "No delegations present" in output:
            return []
        rows = _parse_table(output, ["ROLE", "PATHS", "KEY IDS", "THRESHOLD"])
        result: list[DelegationInfo] = []
        for role, paths, key_id, threshold in rows:
            if role:
                result.append(
                    DelegationInfo(
                        role=role,
                        paths=_parse_paths(paths),
                        key_ids=(key_id,) if key_id else (),
                        threshold=int(threshold),
                    )
                )
            elif result:
                # Continuation line: one more path and/or one more key ID of the role above.
                last = result[-1]
                result[-1] = DelegationInfo(
                    role=last.role,
                    paths=(*last.paths, *_parse_paths(paths)),
                    key_ids=(*last.key_ids, key_id) if key_id else last.key_ids,
                    threshold=last.threshold,
                )
        return result

    def metadata_path(self, gun: str, role: str) -> Path:
        """The client's cached copy of ``role`` for ``gun`` (after a list/publish)."""
        return self.trust_dir / "tuf" / gun / "metadata" / f"{role}.json"


# -- key material -------------------------------------------------------------------------------


def tuf_key_id(keytype: str, public_b64: str) -> str:
    """Notary's key ID: sha256 of the canonical JSON of the public key with private null."""
    canonical = json.dumps(
        {"keytype": keytype, "keyval": {"private": None, "public": public_b64}},
        sort_keys=True,
        separators=(",", ":"),
    )
    return hashlib.sha256(canonical.encode()).hexdigest()


def canonical_key_id_of_cert(cert_pem: bytes) -> str:
    """The "canonical" ID of an ``ecdsa-x509`` key: the ID of its public key re-wrapped as a
    bare ``ecdsa`` key. Shared by every repository signed with the same private key."""
    cert = x509.load_pem_x509_certificate(cert_pem)
    spki = cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return tuf_key_id("ecdsa", base64.b64encode(spki).decode())


def make_delegation_key(directory: Path, name: str, *, x509_cert: bool = True) -> DelegationKey:
    """A P-256 delegation key, like ``docker trust key generate NAME``: ``<name>.key``
    (PKCS#8, unencrypted: what ``notary key import`` accepts) and either a self-signed
    certificate ``<name>.crt`` (CN = name) or a bare public key ``<name>.pub``."""
    directory.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    private_path = directory / f"{name}.key"
    private_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    private_path.chmod(0o600)
    if x509_cert:
        cert = self_signed_certificate(key, name, lifetime=datetime.timedelta(days=365))
        pem = cert.public_bytes(serialization.Encoding.PEM)
        public_path = directory / f"{name}.crt"
        public_path.write_bytes(pem)
        # Notary stores a certificate key as base64 of its PEM text (notes: keys table).
        key_id = tuf_key_id("ecdsa-x509", base64.b64encode(pem).decode())
        canonical = canonical_key_id_of_cert(pem)
    else:
        der = key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        public_path = directory / f"{name}.pub"
        public_path.write_bytes(
            key.public_key().public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        )
        key_id = canonical = tuf_key_id("ecdsa", base64.b64encode(der).decode())
    return DelegationKey(
        name=name,
        private_key=private_path,
        public_file=public_path,
        key_id=key_id,
        canonical_key_id=canonical,
        is_x509=x509_cert,
    )


# -- output parsing -----------------------------------------------------------------------------


def _parse_table(output: str, titles: Sequence[str]) -> list[tuple[str, ...]]:
    """Rows of a notary table, cut at the columns where the header titles start."""
    lines = output.splitlines()
    header = next(
        (
            n
            for n, line in enumerate(lines)
            if line.startswith(titles[0]) and all(t in line for t in titles)
        ),
        None,
    )
    if header is None:
        raise ValueError(f"no table with columns {list(titles)} in:\n{output}")
    starts = [lines[header].index(t) for t in titles]
    rows: list[tuple[str, ...]] = []
    for line in lines[header + 1 :]:
        if not line.strip() or set(line.strip()) <= {"-", " "}:
            continue
        cells = []
        for n, start in enumerate(starts):
            end = starts[n + 1] if n + 1 < len(starts) else None
            cells.append(line[start:end].strip())
        rows.append(tuple(cells))
    return rows


def _parse_paths(cell: str) -> tuple[str, ...]:
    # The CLI prints `"" <all paths>` for the empty prefix, otherwise comma-separated prefixes.
    if cell.startswith('""'):
        return ("",)
    return tuple(p.strip() for p in cell.split(",") if p.strip())
