"""proxy/sources/static/snapshot.py and snapshot_keys.py: the signed trust snapshot core
(bytes in, a verified snapshot or SnapshotError out, clock passed in), and the static
source serving one."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.errors import ConfigError, NotSignedError
from proxy.settings import parse_settings
from proxy.sources.base import NoTrustDataError
from proxy.sources.static.entry import StaticSettings, build
from proxy.sources.static.snapshot import (
    MAX_SNAPSHOT_BYTES,
    PAYLOAD_TYPE,
    SnapshotError,
    SnapshotRegistryError,
    SnapshotRepository,
    SnapshotTag,
    pae,
    parse_snapshot,
    sign_snapshot,
    statement_bytes,
    verify_snapshot,
)
from proxy.sources.static.snapshot_keys import (
    SigningKey,
    SnapshotKeyError,
    VerifyingKey,
    load_private_key,
    load_public_key,
)
from proxy.sources.static.source import PINNED

pytestmark = pytest.mark.anyio

NOW = datetime(2026, 12, 1, 10, 0, tzinfo=UTC)
REG = "registry.example.com:5000"
REPO = f"{REG}/team/app"
D1 = "sha256:" + "1" * 64
D2 = "sha256:" + "2" * 64


def ecdsa_key() -> SigningKey:
    pem = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return load_private_key(pem)


def ed_key() -> SigningKey:
    pem = ed25519.Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return load_private_key(pem)


KEY = ecdsa_key()
OTHER = ecdsa_key()


def repo(name: str = REPO, **tags: str) -> SnapshotRepository:
    tags = tags or {"v1": D1}
    made = {
        t: SnapshotTag(
            t,
            d,
            1234,
            ("targets/releases",),
            "2026-12-01T09:00:00Z",
            {"roles": ["targets/releases"]},
        )
        for t, d in tags.items()
    }
    return SnapshotRepository(
        name,
        "notary",
        "notary",
        "2026-12-01T09:00:00Z",
        {"metadata_versions": {"targets": 3}},
        made,
        frozenset({D2}),
    )


def envelope(key: SigningKey = KEY, *repos: SnapshotRepository, created: datetime = NOW) -> bytes:
    return sign_snapshot(statement_bytes(list(repos) or [repo()], created), key)


def verify(data: bytes, *keys: VerifyingKey, registries: tuple[str, ...] | None = (REG,)) -> Any:
    return verify_snapshot(data, list(keys) or [KEY.public], now=NOW, registries=registries)


def test_round_trip_ecdsa_and_ed25519() -> None:
    for key in (KEY, ed_key()):
        snap = verify(envelope(key), key.public)
        assert snap.signed_by == (key.public.key_id,)
        r = snap.repositories[REPO]
        assert (r.tags["v1"].digest, r.tags["v1"].length) == (D1, 1234)
        assert r.tags["v1"].signers == ("targets/releases",)
        assert r.digests == frozenset({D2})
        assert r.tags["v1"].evidence["snapshot"]["evidence"] == {
            "metadata_versions": {"targets": 3},
            "roles": ["targets/releases"],
        }
        assert snap.registries == (REG,)


def test_any_pinned_key_suffices_and_keyid_is_the_spki_sha256() -> None:
    snap = verify(envelope(), OTHER.public, KEY.public)
    assert snap.signed_by == (KEY.public.key_id,)
    doc = json.loads(envelope())
    assert doc["signatures"][0]["keyid"] == KEY.public.key_id
    assert doc["payloadType"] == PAYLOAD_TYPE


def test_signature_is_over_the_dsse_pae() -> None:
    doc = json.loads(envelope())
    payload = base64.b64decode(doc["payload"])
    KEY.public.verify(base64.b64decode(doc["signatures"][0]["sig"]), pae(PAYLOAD_TYPE, payload))
    assert pae("t", b"ab") == b"DSSEv1 1 t 2 ab"


def _edit_envelope(change: Callable[[dict[str, Any]], None]) -> bytes:
    doc = json.loads(envelope())
    change(doc)
    return json.dumps(doc).encode()


def _edit_statement(change: Callable[[dict[str, Any]], None], *, resign: bool) -> bytes:
    doc = json.loads(envelope())
    statement = json.loads(base64.b64decode(doc["payload"]))
    change(statement)
    raw = json.dumps(statement).encode()
    if resign:
        return sign_snapshot(raw, KEY)
    doc["payload"] = base64.b64encode(raw).decode()
    return json.dumps(doc).encode()


def _set_digest(s: dict[str, Any]) -> None:
    s["predicate"]["repositories"][REPO]["tags"]["v1"]["digest"] = D2


def _add_tag(s: dict[str, Any]) -> None:
    s["predicate"]["repositories"][REPO]["tags"]["v2"] = dict(
        s["predicate"]["repositories"][REPO]["tags"]["v1"]
    )


REFUSED: list[tuple[str, Callable[[], bytes], str]] = [
    ("not-json", lambda: b"{not json", "not JSON"),
    ("not-an-envelope", lambda: b"[]", "not a DSSE envelope"),
    ("unsigned", lambda: _edit_envelope(lambda d: d.pop("signatures")), "unsigned"),
    ("empty-signatures", lambda: _edit_envelope(lambda d: d.update(signatures=[])), "unsigned"),
    (
        "tampered-digest",
        lambda: _edit_statement(_set_digest, resign=False),
        "tampered",
    ),
    ("other-key", lambda: envelope(OTHER), "not signed by a pinned key"),
    (
        "bad-sig-base64",
        lambda: _edit_envelope(lambda d: d["signatures"][0].update(sig="@@")),
        "not base64",
    ),
    (
        "wrong-keyid-shape",
        lambda: _edit_envelope(lambda d: d["signatures"][0].update(keyid="x")),
        "not a key ID",
    ),
    (
        "payload-type",
        lambda: _edit_envelope(lambda d: d.update(payloadType="text/plain")),
        "payloadType",
    ),
    (
        "unknown-envelope-key",
        lambda: _edit_envelope(lambda d: d.update(extra=1)),
        "unknown envelope keys",
    ),
    (
        "duplicate-key",
        lambda: b'{"payloadType": "a", "payloadType": "b", "payload": ""}',
        "duplicate key",
    ),
    ("nan", lambda: b'{"payloadType": NaN, "payload": ""}', "NaN is not JSON"),
    (
        "subject-missing-tag",
        lambda: _edit_statement(_add_tag, resign=True),
        "subject does not list",
    ),
    (
        "predicate-type",
        lambda: _edit_statement(lambda s: s.update(predicateType="x"), resign=True),
        "predicateType",
    ),
    ("bad-digest", lambda: _edit_statement(_set_bad_digest, resign=True), "not a digest"),
    ("negative-length", lambda: _edit_statement(_set_length, resign=True), "not a length"),
    ("bad-tag", lambda: envelope(KEY, repo(**{"-bad": D1})), "not a tag"),
    ("bad-repository", lambda: envelope(KEY, repo("NoRegistry")), "not a repository name"),
    (
        "unknown-predicate-key",
        lambda: _edit_statement(lambda s: s["predicate"].update(x=1), resign=True),
        "unknown keys",
    ),
    ("future", lambda: envelope(created=NOW + timedelta(hours=1)), "in the future"),
    ("oversize", lambda: b" " * (MAX_SNAPSHOT_BYTES + 1), "larger than"),
]


def _set_bad_digest(s: dict[str, Any]) -> None:
    s["predicate"]["repositories"][REPO]["tags"]["v1"]["digest"] = "md5:abc"


def _set_length(s: dict[str, Any]) -> None:
    s["predicate"]["repositories"][REPO]["tags"]["v1"]["length"] = -1


@pytest.mark.parametrize(
    ("make", "message"), [(m, msg) for _, m, msg in REFUSED], ids=[i for i, _, _ in REFUSED]
)
def test_refused(make: Callable[[], bytes], message: str) -> None:
    with pytest.raises(SnapshotError, match=message):
        verify(make())


def test_snapshot_of_another_registry_is_refused() -> None:
    data = envelope(KEY, repo("other.example.com/team/app"))
    with pytest.raises(SnapshotRegistryError, match=r"a snapshot of other\.example\.com"):
        verify(data)
    assert verify(data, registries=None).registries == ("other.example.com",)


def test_no_keys_is_refused() -> None:
    with pytest.raises(SnapshotError, match="no keys"):
        verify_snapshot(envelope(), [], now=NOW, registries=None)


def test_parse_without_keys_reads_but_does_not_vouch() -> None:
    snap = parse_snapshot(envelope(OTHER))
    assert snap.signed_by == ()
    assert REPO in snap.repositories


def _pem_public(key: object) -> bytes:
    return key.public_bytes(  # type: ignore[attr-defined, no-any-return]
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _pem_private(key: SigningKey) -> bytes:
    return key.key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


KEY_REFUSALS = [
    (
        "rsa",
        lambda: _pem_public(rsa.generate_private_key(65537, 2048).public_key()),
        "not supported",
    ),
    ("p384", lambda: _pem_public(ec.generate_private_key(ec.SECP384R1()).public_key()), "P-256"),
    ("private", lambda: _pem_private(ecdsa_key()), "a private key"),
    (
        "garbage",
        lambda: b"-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n",
        "not a PEM public key",
    ),
    ("huge", lambda: b"x" * 20000, "larger than"),
]


@pytest.mark.parametrize(
    ("make", "message"),
    [(m, msg) for _, m, msg in KEY_REFUSALS],
    ids=[i for i, _, _ in KEY_REFUSALS],
)
def test_public_key_refusals(make: Callable[[], bytes], message: str) -> None:
    with pytest.raises(SnapshotKeyError, match=message):
        load_public_key(make())


def test_encrypted_private_key_needs_its_password() -> None:
    pem = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"pw"),
    )
    with pytest.raises(SnapshotKeyError):
        load_private_key(pem)
    with pytest.raises(SnapshotKeyError):
        load_private_key(pem, password=b"wrong")
    assert load_private_key(pem, password=b"pw").kind == "ecdsa-p256"


# --------------------------------------------------------------------------- the static source


def _files(tmp_path: Path, data: bytes, key: SigningKey = KEY) -> tuple[Path, Path]:
    snap = tmp_path / "snap.json"
    snap.write_bytes(data)
    pub = tmp_path / "signer.pub"
    pub.write_bytes(key.public.pem)
    return snap, pub


def _config(snap: Path, pub: Path, registries: list[str] | None = None) -> dict[str, Any]:
    return {
        "upstreams": [{"name": "u", "url": f"http://{REG}", "registry": REG}],
        "trust": {
            "sources": {
                "archive": {
                    "type": "static",
                    "snapshot": str(snap),
                    "keys": [str(pub)],
                    "registries": registries or [REG],
                }
            }
        },
    }


@pytest.mark.parametrize(
    ("data", "registries", "message"),
    [
        (lambda: envelope(OTHER), None, "refused: snap.json: not signed by a pinned key"),
        (lambda: _edit_statement(_set_digest, resign=False), None, "tampered"),
        (lambda: _edit_envelope(lambda d: d.pop("signatures")), None, "unsigned"),
        (lambda: envelope(), ["other.example.com"], f"a snapshot of {REG}"),
    ],
    ids=["other-key", "tampered", "unsigned", "other-registry"],
)
def test_settings_refuse_a_bad_snapshot_at_load(
    tmp_path: Path, data: Callable[[], bytes], registries: list[str] | None, message: str
) -> None:
    snap, pub = _files(tmp_path, data())
    with pytest.raises(ConfigError, match=message) as e:
        parse_settings(_config(snap, pub, registries), base_dir=tmp_path)
    assert e.value.path == "trust.sources.archive.snapshot"


async def test_static_source_answers_from_a_verified_snapshot(tmp_path: Path) -> None:
    snap, pub = _files(tmp_path, envelope())
    settings = parse_settings(_config(snap, pub), base_dir=tmp_path)
    (src_settings,) = settings.trust.sources
    assert isinstance(src_settings, StaticSettings)
    assert src_settings.loaded is not None
    snap.write_bytes(b"replaced after load: never read while serving")
    source = build(src_settings, settings.limits, None, clock=lambda: NOW, cache=settings.cache)  # type: ignore[arg-type]
    answer = await source.resolve(REPO, "v1", PINNED)
    assert answer.digest == D1
    assert answer.evidence["snapshot"]["digest"] == src_settings.snapshot_digest
    assert answer.evidence["snapshot"]["signed_by"] == [KEY.public.key_id]
    state = await source.signed_state(REPO, PINNED)
    assert set(state.tags) == {"v1"}
    assert state.digests == frozenset({D2})
    with pytest.raises(NotSignedError, match="not in the trust snapshot"):
        await source.resolve(REPO, "v2", PINNED)
    with pytest.raises(NoTrustDataError):
        await source.resolve(f"{REG}/team/other", "v1", PINNED)


async def test_without_file_checks_the_snapshot_is_verified_at_build(tmp_path: Path) -> None:
    snap, pub = _files(tmp_path, envelope(OTHER))
    settings = parse_settings(_config(snap, pub), base_dir=tmp_path, check_files=False)
    (src_settings,) = settings.trust.sources
    with pytest.raises(ValueError, match="not signed by a pinned key"):
        build(src_settings, settings.limits, None, clock=lambda: NOW, cache=settings.cache)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("section", "key", "message"),
    [
        ({"type": "static"}, "file", "give one of file"),
        ({"type": "static", "file": "a", "snapshot": "b"}, "file", "give one of file"),
        ({"type": "static", "snapshot": "s.json", "registries": ["r"]}, "keys", "is required"),
        ({"type": "static", "snapshot": "s.json", "keys": ["k"]}, "registries", "is required"),
        (
            {"type": "static", "snapshot": "s.json", "keys": ["k"], "registries": ["a/b"]},
            "registries[0]",
            "not a registry name",
        ),
        (
            {"type": "static", "snapshot": "s.json", "keys": ["k"], "registries": "r", "x": 1},
            "x",
            "unknown key",
        ),
    ],
    ids=["neither", "both", "no-keys", "no-registries", "registry-with-path", "unknown-key"],
)
def test_snapshot_settings_errors(section: dict[str, Any], key: str, message: str) -> None:
    raw = {
        "upstreams": [{"name": "u", "url": "http://r", "registry": "r"}],
        "trust": {"sources": {"archive": section}},
    }
    with pytest.raises(ConfigError, match=message) as e:
        parse_settings(raw, base_dir=Path.cwd(), check_files=False)
    assert e.value.path == f"trust.sources.archive.{key}"


def test_a_signature_without_keyid_is_tried_with_every_pinned_key() -> None:
    for key, ok in ((KEY, True), (OTHER, False)):
        doc = json.loads(envelope(key))
        doc["signatures"][0].pop("keyid")
        data = json.dumps(doc).encode()
        if ok:
            assert verify(data, OTHER.public, KEY.public).signed_by == (KEY.public.key_id,)
        else:
            with pytest.raises(SnapshotError, match=r"not signed by a pinned key \(signed by \(no"):
                verify(data)


GOOD = envelope()
GOOD_STATEMENT = json.loads(base64.b64decode(json.loads(GOOD)["payload"]))


@settings(max_examples=300, derandomize=True, database=None, deadline=None)
@given(st.data())
def test_any_change_to_a_snapshot_is_refused_or_means_the_same(data: st.DataObject) -> None:
    """Flip, drop or insert bytes anywhere in the envelope or in the signed statement: the
    result is a SnapshotError, or (a change JSON does not see, like whitespace in the
    envelope) exactly the original facts. Never another exception, never other facts."""
    where = data.draw(st.sampled_from(["envelope", "statement"]))
    original = GOOD if where == "envelope" else base64.b64decode(json.loads(GOOD)["payload"])
    raw = bytearray(original)
    for _ in range(data.draw(st.integers(1, 3))):
        i = data.draw(st.integers(0, len(raw) - 1))
        kind = data.draw(st.sampled_from(["flip", "drop", "insert"]))
        if kind == "flip":
            raw[i] ^= data.draw(st.integers(1, 255))
        elif kind == "drop":
            del raw[i]
        else:
            raw.insert(i, data.draw(st.integers(0, 255)))
    if bytes(raw) == original:
        return  # the changes cancelled out
    if where == "statement":
        doc = json.loads(GOOD)
        doc["payload"] = base64.b64encode(bytes(raw)).decode()
        candidate = json.dumps(doc).encode()
    else:
        candidate = bytes(raw)
    try:
        snap = verify(candidate)
    except SnapshotError:
        return
    assert where == "envelope"
    assert snap.repositories == verify(GOOD).repositories
