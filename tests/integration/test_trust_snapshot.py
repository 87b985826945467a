"""Life after the trust server: a signed trust snapshot as a policy rule's fallback.

Real notary-server + notary-signer, the real notary CLI signing, the real docker-registry,
skopeo pulling through trustproxy (``serve``'s app under uvicorn, in process, so the test
can move its clock)::

    sign with notary -> trust snapshot export (CLI) -> verify (CLI)
    -> trustproxy with fallback: served from notary, then notary stops for good
    -> still served from notary's verified cache (unexpired: no fallback)
    -> clock +15 days, past the timestamp's expiry (14 days) and the rule's grace
    -> skopeo pulls: served from the snapshot, audited as fallback, counted, in /readyz
    -> a tampered snapshot, one signed by another key, one of another registry:
       refused at load (config check, serve) with clear errors; on reload the old one kept
"""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import uuid
from collections.abc import Iterator, Mapping
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from proxy.sources.static.snapshot import sign_snapshot
from proxy.sources.static.snapshot_keys import load_private_key
from testbed import images
from testbed.clocked_proxy import ClockedProxy
from testbed.enforcement_bed import (
    SOURCE,
    EnforcementBed,
    SkopeoResult,
    rule,
    skopeo_copy,
    skopeo_inspect_raw,
    upstream,
    write_policy,
)
from testbed.notary_server import NotaryBed
from testbed.processes import free_port
from testbed.proxy_server import REPO_ROOT
from tests.conftest import RegistryBed, requires

pytestmark = pytest.mark.integration

ARCHIVE = "dct-archive"  # the snapshot source's name in the config


def trustproxy(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "proxy", *args],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def write_key(folder: Path, name: str, *, ed: bool = False) -> tuple[Path, Path]:
    private = (
        ed25519.Ed25519PrivateKey.generate() if ed else ec.generate_private_key(ec.SECP256R1())
    )
    key, pub = folder / f"{name}.key", folder / f"{name}.pub"
    key.write_bytes(
        private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    pub.write_bytes(
        private.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return key, pub


def write_config(path: Path, data: Mapping[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(dict(data), sort_keys=False))
    return path


def statement_of(snapshot: Path) -> dict[str, Any]:
    doc = json.loads(snapshot.read_text())
    statement: dict[str, Any] = json.loads(base64.b64decode(doc["payload"]))
    return statement


@pytest.fixture
def own_notary(tmp_path: Path) -> Iterator[NotaryBed]:
    requires("skopeo", "notary", "notary-server", "notary-signer")
    bed = NotaryBed.start(tmp_path / "notary")  # this test stops it for good
    try:
        yield bed
    finally:
        bed.stop()


def test_snapshot_serves_after_the_trust_server_is_gone(
    registry: RegistryBed, own_notary: NotaryBed, tmp_path: Path
) -> None:
    ns = f"snap{uuid.uuid4().hex[:8]}"
    bed = EnforcementBed.create(tmp_path / "bed", registry.url, own_notary, namespace=ns)
    proxy: ClockedProxy | None = None
    try:
        # -- sign with the real notary CLI; one tag pushed but never signed
        v1 = bed.push_and_sign("legacy/app", "v1", images.single_image(f"{ns} v1"))
        v2 = bed.push_and_sign("legacy/app", "v2", images.single_image(f"{ns} v2"))
        unsigned = images.single_image(f"{ns} unsigned")
        unsigned_digest = bed.push("legacy/app", unsigned, "v3")
        bed.push_and_sign("other/app", "v1", images.single_image(f"{ns} other"))
        repo = bed.repo("legacy/app")
        gun = bed.gun("legacy/app")
        pattern = bed.pattern("**")

        # -- the team's config before the move: notary only
        work = tmp_path / "ops"
        work.mkdir()
        policy_before = write_policy(
            work / "policy.yaml", {pattern: rule(root_keys=[bed.root_key_id])}
        )
        notary_source = {
            "type": "notary",
            "url": own_notary.url,
            "ca_file": str(own_notary.ca_file),
        }
        base = {
            "server": {"listen": f"127.0.0.1:{free_port()}", "workers": 1},
            "upstreams": [upstream("internal", registry.url)],
            "trust": {"sources": {SOURCE: notary_source}},
            "policy_file": str(policy_before),
            "cache": {"state_dir": "memory"},
        }
        config_before = write_config(work / "before.yaml", base)

        # -- export and sign a snapshot (globs go through the registry's catalog)
        key, pub = write_key(work, "snapshot")
        snapshot = work / "dct-snapshot.json"
        out = trustproxy(
            "trust",
            "snapshot",
            "export",
            "--config",
            str(config_before),
            "--repos",
            f"{bed.registry_host}/{ns}/legacy/*",
            "--key",
            str(key),
            "-o",
            str(snapshot),
        )
        assert out.returncode == 0, out.stderr
        assert "1 repository, 2 tags" in out.stdout
        statement = statement_of(snapshot)
        exported = statement["predicate"]["repositories"][gun]
        assert exported["tags"]["v1"]["digest"] == f"sha256:{v1.sha256}"
        assert exported["tags"]["v2"]["length"] == v2.length
        assert exported["tags"]["v1"]["signers"] == ["targets"]
        assert exported["source"] == SOURCE
        assert "v3" not in exported["tags"]  # never signed: not in the snapshot
        assert statement["predicate"]["registries"] == [bed.registry_host]
        out = trustproxy("trust", "snapshot", "verify", str(snapshot), "--key", str(pub))
        assert out.returncode == 0, out.stderr
        assert "OK: signed by" in out.stdout
        out = trustproxy("trust", "snapshot", "inspect", str(snapshot), "--key", str(pub))
        assert out.returncode == 0, out.stderr
        assert f"sha256:{v1.sha256}" in out.stdout

        # -- switch the rule to fall back on the snapshot
        policy_after = write_policy(
            work / "policy-after.yaml",
            {pattern: {**rule(root_keys=[bed.root_key_id]), "fallback": ARCHIVE}},
        )
        archive = {
            "type": "static",
            "snapshot": str(snapshot),
            "keys": [str(pub)],
            "registries": [bed.registry_host],
        }
        after = {
            **base,
            "policy_file": str(policy_after),
            "audit": {"sink": "file", "path": str(work / "audit.jsonl")},
            "trust": {"sources": {SOURCE: notary_source, ARCHIVE: archive}},
        }
        config_after = write_config(work / "after.yaml", after)
        out = trustproxy("config", "check", str(config_after))
        assert out.returncode == 0, out.stderr
        proxy = ClockedProxy(config_after).start()

        def pull(tag: str) -> SkopeoResult:
            return skopeo_inspect_raw(proxy.host, f"{repo}:{tag}")

        def audit(tag: str) -> dict[str, Any]:
            lines = (work / "audit.jsonl").read_text().splitlines()
            records: list[dict[str, Any]] = [json.loads(x) for x in lines if x.startswith("{")]
            found = [r for r in records if r.get("reference") == tag and r["repository"] == gun]
            return found[-1]

        got = pull("v1")  # notary is up: its answer, no fallback
        assert got.ok, got.stderr
        assert got.digest == f"sha256:{v1.sha256}"
        assert not audit("v1").get("fallback")

        # -- notary-server goes away for good; within the timestamp's validity the cached
        # verified data still answers (the fallback is not asked)
        own_notary.stop()
        got = pull("v1")
        assert got.ok, got.stderr
        assert not audit("v1").get("fallback")

        # -- past the timestamp's expiry (14 days) and the rule's grace (none)
        proxy.advance(timedelta(days=15))
        got = pull("v1")
        assert got.ok, got.stderr
        assert got.digest == f"sha256:{v1.sha256}"
        record = audit("v1")
        assert record["outcome"] == "served_signed"
        assert record["fallback"]["source"] == ARCHIVE
        assert record["fallback"]["primary"] == SOURCE
        assert record["snapshot"]["source"] == SOURCE
        dest = tmp_path / "pulled-v2"
        got = skopeo_copy(proxy.host, f"{repo}:v2", dest)  # a whole pull, blobs included
        assert got.ok, got.stderr
        assert (dest / "manifest.json").read_bytes() == bed_manifest(registry, repo, v2.sha256)
        # Pushed but never signed: not in the snapshot, so not served.
        assert not pull("v3").ok
        with proxy.client() as http:
            r = http.get(f"/v2/{repo}/manifests/v3")
            assert r.status_code == 404
            assert "not in the trust snapshot" in r.text
            assert unsigned_digest not in r.text
            tags = http.get(f"/v2/{repo}/tags/list").json()["tags"]
            assert sorted(tags) == ["v1", "v2"]
            ready = http.get("/readyz").json()
            assert ready["fallback"][gun]["fallback"] == ARCHIVE
            assert ready["fallback"][gun]["cause"] == "unavailable"
            metrics = http.get("/metrics").text
        assert f'trustproxy_fallback_answers_total{{fallback="{ARCHIVE}"' in metrics
        # A repository the snapshot does not hold: the primary's 503 stands.
        with proxy.client() as http:
            r = http.get(f"/v2/{bed.repo('other/app')}/manifests/v1")
        assert r.status_code == 503, r.text

        # -- bad snapshots: refused at load with a clear error; a reload keeps the old one
        other_key, _ = write_key(work, "other", ed=True)
        payload = base64.b64decode(json.loads(snapshot.read_text())["payload"])
        bad: dict[str, bytes] = {}
        tampered = json.loads(snapshot.read_text())
        st = json.loads(payload)
        st["predicate"]["repositories"][gun]["tags"]["v1"]["digest"] = unsigned_digest
        st["subject"] = [
            s
            if s["name"] != f"{gun}:v1"
            else {"name": s["name"], "digest": {"sha256": unsigned_digest[7:]}}
            for s in st["subject"]
        ]
        tampered["payload"] = base64.b64encode(json.dumps(st).encode()).decode()
        bad["tampered"] = json.dumps(tampered).encode()
        bad["other-key"] = sign_snapshot(payload, load_private_key(other_key.read_bytes()))
        st = json.loads(payload)
        moved = "registry.elsewhere.example:5000"
        st["predicate"]["repositories"] = {
            gun.replace(bed.registry_host, moved): r
            for r in st["predicate"]["repositories"].values()
        }
        st["predicate"]["registries"] = [moved]
        st["subject"] = [
            {**s, "name": s["name"].replace(bed.registry_host, moved)} for s in st["subject"]
        ]
        bad["other-registry"] = sign_snapshot(
            json.dumps(st).encode(), load_private_key(key.read_bytes())
        )
        expected = {
            "tampered": "tampered (changed after it was signed)",
            "other-key": "not signed by a pinned key",
            "other-registry": f"a snapshot of {moved}, not of {bed.registry_host}",
        }
        good = snapshot.read_bytes()
        for name, data in bad.items():
            path = work / f"{name}.json"
            path.write_bytes(data)
            cfg = write_config(
                work / f"{name}.yaml",
                {
                    **after,
                    "trust": {
                        "sources": {
                            SOURCE: notary_source,
                            ARCHIVE: {**archive, "snapshot": str(path)},
                        }
                    },
                },
            )
            out = trustproxy("config", "check", str(cfg))
            assert out.returncode == 1, (name, out.stdout)
            assert f"trust.sources.{ARCHIVE}.snapshot: refused:" in out.stderr, out.stderr
            assert expected[name] in out.stderr, out.stderr
            out = trustproxy("serve", "--config", str(cfg), timeout=60)
            assert out.returncode == 1, (name, out.stderr[-2000:])
            assert expected[name] in out.stderr
            out = trustproxy(
                "trust",
                "snapshot",
                "verify",
                str(path),
                "--key",
                str(pub),
                "--registry",
                bed.registry_host,
            )
            assert out.returncode == 1
            assert expected[name] in out.stderr
            # SIGHUP with the bad snapshot in place: refused, the verified one keeps serving.
            snapshot.write_bytes(data)
            assert proxy.reload() is False
            got = pull("v1")
            assert got.ok, got.stderr
            assert got.digest == f"sha256:{v1.sha256}"
            snapshot.write_bytes(good)
        assert proxy.reload() is True
        assert pull("v1").digest == f"sha256:{v1.sha256}"
    finally:
        if proxy is not None:
            proxy.stop()
        bed.close()


def bed_manifest(registry: RegistryBed, repo: str, sha256_hex: str) -> bytes:
    """The manifest bytes the registry holds at ``sha256_hex`` (what a pull must get)."""
    import httpx

    r = httpx.get(
        f"{registry.url}/v2/{repo}/manifests/sha256:{sha256_hex}",
        headers={"Accept": images.ACCEPT_ALL},
        timeout=30,
    )
    r.raise_for_status()
    return r.content
