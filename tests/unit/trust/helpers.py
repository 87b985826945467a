"""Shared helpers for the trust core tests: vector locations, repos as fetch functions."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from proxy.sources.notary.tuf import TrustedSet, TrustOnFirstUse
from proxy.sources.notary.tuf.roots import RootOfTrust
from tests.simulators.notary_repo import (
    DEFAULT_NOW,
    NotaryRepository,
    SimKey,
    envelope,
    from_private,
    meta_for,
)

# <repo>/../shared/vectors (CI puts it beside the checkout)
VECTORS = Path(__file__).resolve().parents[3] / ".." / "shared" / "vectors"
COMPAT = VECTORS / "notary-compat" / "fixtures" / "compatibility"
CONNAISSEUR = VECTORS / "connaisseur-notaryv1" / "test" / "testdata" / "notaryv1"
CONN_DATA = CONNAISSEUR / "trust_data"
CONN_KEYS = CONN_DATA / "keys"

needs_vectors = pytest.mark.skipif(
    not VECTORS.is_dir(), reason=f"test vectors not found at {VECTORS} (../shared/vectors)"
)

#: compat vectors expire 2116; notary0.3's root cert expired 2026-07-25
COMPAT_TIME = datetime(2026, 1, 1, tzinfo=UTC)
#: "now-ish": connaisseur's 2019/2022 data is expired, its never-expire data is not
NOW_2026 = datetime(2026, 11, 22, tzinfo=UTC)
#: the simulator signs at DEFAULT_NOW; a day later everything is valid
SIM_TIME = DEFAULT_NOW + timedelta(days=1)

#: connaisseur's never-expire root certificate has CN=securesystems.de (not a repo name)
CONN_GUN = "securesystems.de"

Fetch = Callable[[str], bytes | None]


def dir_repo(metadata_dir: Path, *, recompact: bool = False) -> dict[str, bytes]:
    """Files of a metadata directory under notary-server names (role.json, role.<hex>.json).

    ``recompact``: connaisseur pretty-printed its files; Go's compact encoding (key order
    kept) restores the bytes the server sent, whose hashes the parent roles list.
    """
    files: dict[str, bytes] = {}
    for f in sorted(metadata_dir.rglob("*.json")):
        role = str(f.relative_to(metadata_dir))[: -len(".json")]
        raw = f.read_bytes()
        if recompact:
            with contextlib.suppress(ValueError):  # invalid.json stays as it is
                raw = json.dumps(json.loads(raw), separators=(",", ":")).encode()
        files[f"{role}.json"] = raw
        files[f"{role}.{hashlib.sha256(raw).hexdigest()}.json"] = raw
    return files


def compact(path: Path) -> bytes:
    return json.dumps(json.loads(path.read_bytes()), separators=(",", ":")).encode()


def make_set(
    root: bytes,
    gun: str,
    *,
    reference_time: datetime = SIM_TIME,
    root_of_trust: RootOfTrust | None = None,
    **kw: object,
) -> TrustedSet:
    return TrustedSet(
        root,
        gun=gun,
        root_of_trust=root_of_trust or TrustOnFirstUse(),
        reference_time=reference_time,
        **kw,  # type: ignore[arg-type]
    )


def sim_set(repo: NotaryRepository, **kw: object) -> TrustedSet:
    return make_set(repo.root_bytes(), repo.gun, **kw)  # type: ignore[arg-type]


def conn_key(name: str) -> SimKey:
    """A connaisseur private key (some are SEC1 PEM mislabelled "PRIVATE KEY")."""
    pem = (CONN_KEYS / f"{name}.key").read_bytes()
    if b"MHcCAQEE" in pem:  # SEC1 body under a PKCS#8 header
        pem = pem.replace(b"BEGIN PRIVATE KEY", b"BEGIN EC PRIVATE KEY").replace(
            b"END PRIVATE KEY", b"END EC PRIVATE KEY"
        )
    key = serialization.load_pem_private_key(pem, password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    return from_private(key)


class ConnaisseurRepo:
    """A connaisseur repo whose snapshot/timestamp are re-signed with connaisseur's keys
    after any role was replaced (their files were edited by hand, so hashes drift)."""

    def __init__(self, name: str) -> None:
        self.roles: dict[str, bytes] = {}
        base = CONN_DATA / name
        for f in sorted(base.rglob("*.json")):
            self.roles[str(f.relative_to(base))[: -len(".json")]] = compact(f)

    def replace(self, role: str, path_or_raw: Path | bytes) -> None:
        raw = path_or_raw if isinstance(path_or_raw, bytes) else compact(path_or_raw)
        self.roles[role] = raw

    def resign(self) -> None:
        snap = json.loads(self.roles["snapshot"])["signed"]
        for role in list(snap["meta"]):
            if role in self.roles:
                snap["meta"][role] = meta_for(self.roles[role])
        self.roles["snapshot"] = envelope(snap, [conn_key("snapshot")])
        ts = json.loads(self.roles["timestamp"])["signed"]
        ts["meta"]["snapshot"] = meta_for(self.roles["snapshot"])
        self.roles["timestamp"] = envelope(ts, [conn_key("timestamp")])

    def files(self) -> dict[str, bytes]:
        out: dict[str, bytes] = {}
        for role, raw in self.roles.items():
            out[f"{role}.json"] = raw
            out[f"{role}.{hashlib.sha256(raw).hexdigest()}.json"] = raw
        return out


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()
