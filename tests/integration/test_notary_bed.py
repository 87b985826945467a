"""The Notary test bed produces what the real notary client and server say it produced.

Two independent witnesses per scenario: the notary CLI (a fresh trust directory that trusts
the server on first use) and the raw metadata fetched over HTTPS, walked from timestamp to
snapshot to targets/delegations by consistent (hash-named) copies.
"""

from __future__ import annotations

import base64
import hashlib
import json
import socket
import ssl
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography import x509

from testbed.notary_cli import NotaryCli, NotaryCliError, canonical_key_id_of_cert
from testbed.notary_server import NotaryBed, fetch_metadata, fetch_metadata_response
from testbed.tls import CA, client_ssl_context
from testbed.trust_scenarios import (
    DOCKER_ROLES,
    RELEASES,
    TARGETS,
    Repository,
    Scenario,
    payload,
    root_certificates,
    sha256_and_length,
)

pytestmark = pytest.mark.integration

LIVE = [
    "targets",
    "releases",
    "both-roles",
    "qa-only",
    "root-rotation",
    "targets-rotation",
    "revoked",
]


def _signed(raw: bytes) -> dict[str, Any]:
    body: dict[str, Any] = json.loads(raw)["signed"]
    return body


def _hex(b64: str) -> str:
    return base64.b64decode(b64).hex()


def _walk(bed: NotaryBed, gun: str) -> dict[str, dict[str, Any]]:
    """Follow timestamp → snapshot → every role by hash-named copies, checking hash and
    length at each step; returns role name → ``signed`` body."""
    timestamp = fetch_metadata(bed, gun, "timestamp")
    meta = _signed(timestamp)["meta"]["snapshot"]
    snapshot_hex = _hex(meta["hashes"]["sha256"])
    snapshot = fetch_metadata(bed, gun, f"snapshot.{snapshot_hex}")
    assert hashlib.sha256(snapshot).hexdigest() == snapshot_hex
    assert len(snapshot) == meta["length"]
    # The current snapshot.json is the same document as the consistent copy.
    assert fetch_metadata(bed, gun, "snapshot") == snapshot
    roles: dict[str, dict[str, Any]] = {"timestamp": _signed(timestamp)}
    roles["snapshot"] = _signed(snapshot)
    for role, entry in roles["snapshot"]["meta"].items():
        role_hex = _hex(entry["hashes"]["sha256"])
        raw = fetch_metadata(bed, gun, f"{role}.{role_hex}")
        assert hashlib.sha256(raw).hexdigest() == role_hex, role
        assert len(raw) == entry["length"], role
        roles[role] = _signed(raw)
    return roles


def _memory_handshake(
    server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext, hostname: str
) -> dict[str, Any] | None:
    """Run a TLS handshake between two contexts in memory; the server's view of the client
    certificate. Raises ssl.SSLError like a real connection would."""
    c_in, c_out, s_in, s_out = (ssl.MemoryBIO() for _ in range(4))
    client = client_ctx.wrap_bio(c_in, c_out, server_hostname=hostname)
    server = server_ctx.wrap_bio(s_in, s_out, server_side=True)
    pending = [client, server]
    for _ in range(20):
        for side in list(pending):
            try:
                side.do_handshake()
                pending.remove(side)
            except ssl.SSLWantReadError:
                pass
        s_in.write(c_out.read())
        c_in.write(s_out.read())
        if not pending:
            peer: dict[str, Any] | None = server.getpeercert() or None
            return peer
    raise AssertionError("handshake did not finish")


# -- tls ------------------------------------------------------------------------------------------


def test_tls_server_and_client_certificates(tls_ca: CA, tmp_path: Path) -> None:
    server_pair = tls_ca.issue_server(tmp_path, "srv", ["127.0.0.1", "localhost"])
    client_pair = tls_ca.issue_client(tmp_path, "cli", "proxy-client")
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(tls_ca.cert))
    server_ctx.load_cert_chain(str(server_pair.cert), str(server_pair.key))
    server_ctx.verify_mode = ssl.CERT_REQUIRED

    for host in ("127.0.0.1", "localhost"):
        peer = _memory_handshake(server_ctx, tls_ca.client_context(client_pair), host)
        assert peer is not None
        assert dict(x[0] for x in peer["subject"])["commonName"] == "proxy-client"
    with pytest.raises(ssl.SSLCertVerificationError):
        _memory_handshake(server_ctx, tls_ca.client_context(client_pair), "example.org")
    with pytest.raises(ssl.SSLCertVerificationError):
        _memory_handshake(server_ctx, ssl.create_default_context(), "127.0.0.1")
    # No client certificate: the server side refuses (mutual TLS).
    with pytest.raises(ssl.SSLError, match="PEER_DID_NOT_RETURN_A_CERTIFICATE"):
        _memory_handshake(server_ctx, tls_ca.client_context(), "127.0.0.1")


def test_signer_requires_a_client_certificate(notary_bed: NotaryBed, tmp_path: Path) -> None:
    def first_bytes(context: ssl.SSLContext) -> bytes:
        context.set_alpn_protocols(["h2"])  # gRPC speaks HTTP/2
        with (
            socket.create_connection(("127.0.0.1", notary_bed.signer.port), timeout=5) as raw,
            context.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
        ):
            tls.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
            return tls.recv(64)

    with pytest.raises(ssl.SSLError):
        first_bytes(notary_bed.ssl_context())
    client = notary_bed.ca.issue_client(tmp_path, "any-client", "any-client")
    assert first_bytes(client_ssl_context(notary_bed.ca_file, client))  # a SETTINGS frame


# -- the bed itself ---------------------------------------------------------------------------


def test_health_over_tls_with_the_bed_ca(notary_bed: NotaryBed) -> None:
    with notary_bed.client() as http:
        assert http.get("/_notary_server/health").status_code == 200
    # The server certificate is from the throwaway CA: the system store must not accept it.
    with (
        httpx.Client(verify=ssl.create_default_context()) as http,
        pytest.raises(httpx.ConnectError),
    ):
        http.get(f"{notary_bed.url}/_notary_server/health")


def test_unknown_gun_is_404_metadata_not_found(notary_bed: NotaryBed) -> None:
    for name in ("root", "timestamp", "snapshot", "targets", "targets/releases"):
        response = fetch_metadata_response(notary_bed, "127.0.0.1:5000/no/such-repo", name)
        assert response.status_code == 404, name
        assert response.json()["errors"][0]["code"] == "METADATA_NOT_FOUND"
    with pytest.raises(httpx.HTTPStatusError):
        fetch_metadata(notary_bed, "127.0.0.1:5000/no/such-repo", "root")


def test_unknown_gun_notary_cli_error(notary_bed_reader: NotaryCli) -> None:
    with pytest.raises(NotaryCliError, match="does not have trust data for"):
        notary_bed_reader.list_targets("127.0.0.1:5000/no/such-repo")


# -- scenarios as the notary CLI sees them ---------------------------------------------------------


@pytest.mark.parametrize("name", LIVE)
def test_cli_lists_each_signed_entry_in_its_role(
    name: str, notary_bed_scenarios: dict[str, Scenario], notary_bed_reader: NotaryCli
) -> None:
    scenario = notary_bed_scenarios[name]
    for role in {t.role for t in scenario.signed}:
        # `notary list --roles R` walks R's subtree; rows labelled R are exactly R's targets.
        listed = {
            (t.name, t.sha256, t.length)
            for t in notary_bed_reader.list_targets(scenario.gun, roles=[role])
            if t.role == role
        }
        signed = {(t.tag, t.sha256, t.length) for t in scenario.signed if t.role == role}
        assert listed == signed, role


@pytest.mark.parametrize("name", LIVE)
def test_cli_with_docker_roles_resolves_like_docker(
    name: str, notary_bed_scenarios: dict[str, Scenario], notary_bed_reader: NotaryCli
) -> None:
    scenario = notary_bed_scenarios[name]
    # releases first, then targets: what `docker pull` asks the notary client for. Targets'
    # subtree also contains other delegations (targets/qa): Docker ignores those rows.
    listed = {
        t.name: (t.sha256, t.length, t.role)
        for t in notary_bed_reader.list_targets(scenario.gun, roles=list(DOCKER_ROLES))
        if t.role in DOCKER_ROLES
    }
    expected = {tag: (t.sha256, t.length, t.role) for tag, t in scenario.expected.items()}
    assert listed == expected
    for tag in scenario.unacceptable:
        assert tag not in listed


def test_plain_notary_lookup_prefers_targets_unlike_docker(
    notary_bed_scenarios: dict[str, Scenario], notary_bed_reader: NotaryCli
) -> None:
    # Recorded because it is easy to get wrong: the notary client's default walk is pre-order
    # from `targets`, so `notary lookup` answers targets' digest where Docker takes releases'.
    scenario = notary_bed_scenarios["both-roles"]
    in_targets = next(t for t in scenario.signed if t.tag == "v1" and t.role == TARGETS)
    assert scenario.expected["v1"].role == RELEASES
    found = notary_bed_reader.lookup(scenario.gun, "v1")
    assert found is not None
    assert (found.sha256, found.length) == (in_targets.sha256, in_targets.length)


def test_revoked_tag_is_gone(
    notary_bed_scenarios: dict[str, Scenario], notary_bed_reader: NotaryCli
) -> None:
    scenario = notary_bed_scenarios["revoked"]
    assert notary_bed_reader.lookup(scenario.gun, "v1") is None
    assert notary_bed_reader.lookup(scenario.gun, "v2") is not None


def test_deleted_repository_has_no_trust_data(
    notary_bed: NotaryBed, notary_bed_scenarios: dict[str, Scenario], notary_bed_reader: NotaryCli
) -> None:
    scenario = notary_bed_scenarios["deleted"]
    for name in ("root", "1.root", "timestamp", "snapshot", "targets"):
        assert fetch_metadata_response(notary_bed, scenario.gun, name).status_code == 404, name
    with pytest.raises(NotaryCliError, match="does not have trust data for"):
        notary_bed_reader.list_targets(scenario.gun)


# -- scenarios as raw metadata ---------------------------------------------------------------------


@pytest.mark.parametrize("name", LIVE)
def test_raw_metadata_chain_matches_what_was_signed(
    name: str, notary_bed: NotaryBed, notary_bed_scenarios: dict[str, Scenario]
) -> None:
    scenario = notary_bed_scenarios[name]
    roles = _walk(notary_bed, scenario.gun)
    for target in scenario.signed:
        entry = roles[target.role]["targets"][target.tag]
        assert _hex(entry["hashes"]["sha256"]) == target.sha256
        assert entry["length"] == target.length
    # The current copy of every role is fetchable by name too (e.g. targets/releases.json).
    for role in roles["snapshot"]["meta"]:
        assert _signed(fetch_metadata(notary_bed, scenario.gun, role))["_type"]


@pytest.mark.parametrize("name", LIVE)
def test_snapshot_and_timestamp_are_server_managed(
    name: str, notary_bed: NotaryBed, notary_bed_scenarios: dict[str, Scenario]
) -> None:
    scenario = notary_bed_scenarios[name]
    assert scenario.keys is not None
    for role, key_ids in (
        ("snapshot", scenario.keys.snapshot),
        ("timestamp", scenario.keys.timestamp),
    ):
        envelope = json.loads(fetch_metadata(notary_bed, scenario.gun, role))
        assert {s["keyid"] for s in envelope["signatures"]} == set(key_ids), role


def test_releases_has_two_keys_held_by_two_signers(
    notary_bed: NotaryBed, notary_bed_scenarios: dict[str, Scenario], notary_bed_reader: NotaryCli
) -> None:
    scenario = notary_bed_scenarios["releases"]
    assert scenario.keys is not None
    alice, bob = scenario.delegation_keys["alice"], scenario.delegation_keys["bob"]
    assert alice.is_x509
    assert not bob.is_x509
    # targets.json names the x509 key by its certificate ID, the bare key by its SPKI ID.
    assert set(scenario.keys.delegations[RELEASES]) == {alice.key_id, bob.key_id}
    assert alice.key_id != alice.canonical_key_id
    [listed] = notary_bed_reader.delegation_list(scenario.gun)
    assert listed.role == RELEASES
    assert listed.paths == ("",)
    # ...but the CLI prints canonical IDs everywhere (delegation add/list, key list).
    assert set(listed.key_ids) == {alice.canonical_key_id, bob.canonical_key_id}
    # bob published last: he re-signed the whole role, alice's tag included.
    envelope = json.loads(fetch_metadata(notary_bed, scenario.gun, RELEASES))
    assert [s["keyid"] for s in envelope["signatures"]] == [bob.key_id]
    assert set(envelope["signed"]["targets"]) == {"v1", "v2"}


def test_x509_delegation_signature_names_the_certificate_id(
    notary_bed: NotaryBed, notary_bed_scenarios: dict[str, Scenario]
) -> None:
    scenario = notary_bed_scenarios["both-roles"]
    releaser = scenario.delegation_keys["releaser"]
    assert releaser.is_x509
    envelope = json.loads(fetch_metadata(notary_bed, scenario.gun, RELEASES))
    # Signatures carry the ID listed in the parent's delegation (the certificate ID), not the
    # canonical ID the CLI prints.
    assert [s["keyid"] for s in envelope["signatures"]] == [releaser.key_id]


def test_root_rotation(notary_bed: NotaryBed, notary_bed_scenarios: dict[str, Scenario]) -> None:
    scenario = notary_bed_scenarios["root-rotation"]
    new, old = scenario.keys, scenario.previous_keys
    assert new is not None
    assert old is not None
    assert new.root_version == old.root_version + 1
    assert set(new.root).isdisjoint(old.root)
    assert set(new.root_canonical).isdisjoint(old.root_canonical)
    # Version N is signed by version N-1's root key and by its own (cross-signing).
    envelope = json.loads(fetch_metadata(notary_bed, scenario.gun, f"{new.root_version}.root"))
    assert set(old.root) | set(new.root) <= {s["keyid"] for s in envelope["signatures"]}
    previous = _signed(fetch_metadata(notary_bed, scenario.gun, f"{old.root_version}.root"))
    assert tuple(previous["roles"]["root"]["keyids"]) == old.root
    # Root certificates: self-signed, CN = GUN; the canonical ID is that of the bare key.
    certs = root_certificates(notary_bed, scenario.gun)
    assert tuple(certs) == new.root
    for pem in certs.values():
        cert = x509.load_pem_x509_certificate(pem)
        assert cert.subject.rfc4514_string() == f"CN={scenario.gun}"
        assert canonical_key_id_of_cert(pem) in new.root_canonical
    # `root.2.json` is not a name the server knows (versioned copies are `2.root.json`).
    assert fetch_metadata_response(notary_bed, scenario.gun, "root.2").status_code == 404


def test_targets_rotation(notary_bed: NotaryBed, notary_bed_scenarios: dict[str, Scenario]) -> None:
    scenario = notary_bed_scenarios["targets-rotation"]
    new, old = scenario.keys, scenario.previous_keys
    assert new is not None
    assert old is not None
    assert set(new.targets).isdisjoint(old.targets)
    assert new.root_version == old.root_version + 1
    envelope = json.loads(fetch_metadata(notary_bed, scenario.gun, "targets"))
    assert [s["keyid"] for s in envelope["signatures"]] == list(new.targets)
    assert set(envelope["signed"]["targets"]) == {"v1", "v2"}


def test_sign_real_bytes_in_a_new_repository(
    notary_bed: NotaryBed, tmp_path_factory: pytest.TempPathFactory, notary_bed_reader: NotaryCli
) -> None:
    # The basic operation other tests build on: sign (tag, sha256, length) in GUN, role R.
    repo = Repository.create(
        notary_bed, tmp_path_factory.mktemp("sign-bytes"), "127.0.0.1:5000/team/basic"
    )
    data = payload("basic")
    sha, length = sha256_and_length(data)
    signed = repo.sign_bytes("v1", data)
    assert (signed.sha256, signed.length, signed.role) == (sha, length, TARGETS)
    found = notary_bed_reader.lookup(repo.gun, "v1")
    assert found is not None
    assert (found.sha256, found.length) == (sha, length)
    owner_roles = {k.role for k in repo.owner.key_list()}
    assert owner_roles == {"root", "targets"}  # snapshot key lives on the server
    assert repo.owner.root_key_ids() == list(repo.key_ids().root_canonical)
