"""The container image, built and run: the Dockerfile built offline by a real dockerd on a
debootstrap-made Debian bookworm base (``docker import``: no Docker Hub), run read-only with
a mounted config in front of the real registry and notary, and pulled through with skopeo.

The base is a tarball made by ``scripts/base-image-tarball.sh`` (debootstrap, about 1.5
minutes on a fresh machine; cached afterwards). The build reaches PyPI (``--network host``)
for the locked wheels. Measured on 2 cores: about 2 minutes with the base cached (import
5 s, build 60-75 s, three containers on vfs, teardown). The tests skip, and say why, only
where dockerd cannot start or the base cannot be made.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from testbed import images
from testbed.clients.dockerd import Dockerd, DockerdUnavailable, DockerResult, start_dockerd
from testbed.enforcement_bed import EnforcementBed, rule, skopeo_inspect_raw, upstream
from testbed.notary_server import NotaryBed
from testbed.processes import free_port, wait_for_port
from testbed.tls import CA
from tests.conftest import RegistryBed, requires

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
BASE_SCRIPT = ROOT / "scripts" / "base-image-tarball.sh"
BASE = "trustproxy-base:bookworm"
IMAGE = "trustproxy:test"
UID = 10001


def base_tarball(*, make: bool = False) -> Path | None:
    """The base tarball (``TRUSTPROXY_BASE_TARBALL``, else the script's cache); with
    ``make``, debootstrap it when it is not cached."""
    given = os.environ.get("TRUSTPROXY_BASE_TARBALL")
    if given:
        return Path(given) if Path(given).is_file() else None
    done = subprocess.run(
        ["bash", str(BASE_SCRIPT), *([] if make else ["--cached"])],
        capture_output=True, text=True, timeout=900, check=False,
    )  # fmt: skip
    if done.returncode != 0 and make:
        raise RuntimeError(" | ".join(done.stderr.strip().splitlines()[-5:]))
    return Path(done.stdout.strip()) if done.returncode == 0 else None


@dataclass
class Built:
    engine: Dockerd
    build_seconds: float


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Built]:
    try:
        tarball = base_tarball(make=True)
    except (RuntimeError, subprocess.TimeoutExpired) as e:
        pytest.skip(f"image test: the Debian base image cannot be made here (debootstrap): {e}")
    if tarball is None:
        pytest.skip("image test: TRUSTPROXY_BASE_TARBALL names no file")
    workdir = tmp_path_factory.mktemp("image-engine")
    try:
        engine = start_dockerd(workdir)
    except DockerdUnavailable as e:
        pytest.skip(f"image test: dockerd cannot run on this machine: {e}")
    try:
        imported = engine.docker("import", str(tarball), BASE, timeout=600)
        assert imported.ok, imported.output
        start = time.monotonic()
        build = engine.docker(
            "build", "--network", "host", "--build-arg", f"BASE_IMAGE={BASE}",
            "--progress", "plain", "-t", IMAGE, str(ROOT),
            timeout=900, env={"DOCKER_BUILDKIT": "1"},
        )  # fmt: skip
        assert build.ok, build.output[-4000:]
        yield Built(engine, time.monotonic() - start)
    finally:
        engine.docker("rm", "-f", *engine.docker("ps", "-aq").stdout.split())
        engine.stop()
        shutil.rmtree(workdir / "data", ignore_errors=True)  # vfs: a full copy per layer


@dataclass
class Published:
    bed: EnforcementBed
    config_dir: Path
    signed: str  # digest
    unsigned: str


@pytest.fixture(scope="module")
def published(
    registry: RegistryBed, notary_bed: NotaryBed, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Published]:
    requires("skopeo")
    workdir = tmp_path_factory.mktemp("image-bed")
    bed = EnforcementBed.create(
        workdir / "bed", registry.url, notary_bed, namespace=f"img{uuid.uuid4().hex[:8]}"
    )
    try:
        signed = bed.push_and_sign("app", "signed", images.single_image(f"{bed.namespace} s"))
        unsigned = bed.push("app", images.single_image(f"{bed.namespace} u"), "unsigned")
        config_dir = workdir / "etc-trustproxy"
        write_config(config_dir, bed, registry, notary_bed)
        yield Published(bed, config_dir, f"sha256:{signed.sha256}", unsigned)
    finally:
        bed.close()


def write_config(
    folder: Path, bed: EnforcementBed, registry: RegistryBed, notary: NotaryBed
) -> dict[str, Any]:
    """The mounted /etc/trustproxy: config, policy and the notary CA, relative paths, all
    readable by uid 10001 (the folder is bind-mounted as it is)."""
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(notary.ca_file, folder / "notary-ca.crt")
    policy = {
        "version": "2.0",
        "trust": {"repositories": {bed.pattern("*"): rule(root_keys=[bed.root_key_id])}},
    }
    (folder / "policy.yaml").write_text(yaml.safe_dump(policy, sort_keys=False))
    config: dict[str, Any] = {
        "server": {"listen": "0.0.0.0:8443"},
        "upstreams": [upstream("internal", registry.url)],
        "trust": {"sources": {"notary": {"type": "notary", "url": notary.url,
                                         "ca_file": "notary-ca.crt"}}},
        "policy_file": "policy.yaml",
        "logging": {"format": "json"},
    }  # fmt: skip
    (folder / "trustproxy.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    folder.chmod(0o755)
    for f in folder.iterdir():
        f.chmod(0o644)
    return config


def run_container(
    engine: Dockerd, config_dir: Path, port: int, *extra: str
) -> tuple[str, DockerResult]:
    name = f"tp-{uuid.uuid4().hex[:10]}"
    r = engine.docker(
        "run", "-d", "--name", name, "--read-only", "--network", "host",
        # as docs/deploy.md runs it: the workers' state file needs a writable mount
        "--tmpfs", "/var/lib/trustproxy:uid=10001,gid=10001,mode=0700",
        "--health-interval", "1s", "--health-start-period", "1s",
        "-v", f"{config_dir}:/etc/trustproxy:ro",
        "-e", f"TRUSTPROXY_SERVER__LISTEN=127.0.0.1:{port}",
        "-e", f"HEALTHCHECK_URL=http://127.0.0.1:{port}/healthz", *extra, IMAGE,
    )  # fmt: skip
    return name, r


def wait_running(engine: Dockerd, name: str, port: int) -> None:
    deadline = time.monotonic() + 60
    while True:
        state = engine.docker("inspect", "--format", "{{.State.Status}}", name).stdout.strip()
        if state != "running":
            logs = engine.docker("logs", name).output
            raise AssertionError(f"container {state}: {logs[-2000:]}")
        try:
            wait_for_port(port, timeout=0.5)
            return
        except TimeoutError:
            if time.monotonic() > deadline:
                raise AssertionError(engine.docker("logs", name).output[-2000:]) from None


def wait_exited(engine: Dockerd, name: str, timeout: float = 60) -> int:
    deadline = time.monotonic() + timeout
    while True:
        state = engine.docker(
            "inspect", "--format", "{{.State.Status}} {{.State.ExitCode}}", name
        ).stdout.split()
        if state and state[0] == "exited":
            return int(state[1])
        if time.monotonic() > deadline:
            raise AssertionError(f"still {state} after {timeout}s")
        time.sleep(0.2)


def test_image_runs_read_only_non_root_and_enforces(built: Built, published: Published) -> None:
    engine = built.engine
    port = free_port()
    name, r = run_container(engine, published.config_dir, port)
    assert r.ok, r.output
    wait_running(engine, name, port)
    host = f"127.0.0.1:{port}"
    repo = published.bed.repo("app")
    signed = skopeo_inspect_raw(host, f"{repo}:signed")
    assert signed.ok, signed.stderr
    assert signed.digest == published.signed
    unsigned = skopeo_inspect_raw(host, f"{repo}:unsigned")
    assert not unsigned.ok
    assert "not signed" in unsigned.error, unsigned.error
    assert published.unsigned not in unsigned.stderr
    # Non-root, read-only root filesystem, and the image's healthcheck passes.
    user = engine.docker("exec", name, "python", "-c", "import os; print(os.getuid())")
    assert user.stdout.strip() == str(UID), user.output
    write = engine.docker("exec", name, "touch", "/opt/trustproxy/x")
    assert not write.ok
    assert "read-only" in write.output.lower(), write.output
    deadline = time.monotonic() + 30
    health = ""
    while time.monotonic() < deadline and health != "healthy":
        health = engine.docker("inspect", "--format", "{{.State.Health.Status}}", name).stdout
        health = health.strip()
        time.sleep(0.5)
    assert health == "healthy", engine.docker("inspect", name).stdout[-2000:]


@pytest.fixture
def tls_dir(published: Published, tls_ca: CA, tmp_path: Path) -> Path:
    """A config folder like the published one, serving TLS with a key in tls/."""
    folder = tmp_path / "etc-trustproxy"
    shutil.copytree(published.config_dir, folder)
    folder.chmod(0o755)
    pair = tls_ca.issue_server(folder / "tls", "proxy")
    (folder / "tls").chmod(0o755)
    shutil.move(pair.cert, folder / "tls" / "tls.crt")
    shutil.move(pair.key, folder / "tls" / "tls.key")
    (folder / "tls" / "tls.crt").chmod(0o644)
    config = yaml.safe_load((folder / "trustproxy.yaml").read_text())
    config["server"].update(tls_cert_file="tls/tls.crt", tls_key_file="tls/tls.key")
    (folder / "trustproxy.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    return folder


def test_tls_key_must_be_readable_by_uid_10001(built: Built, tls_dir: Path, tls_ca: CA) -> None:
    engine = built.engine
    key = tls_dir / "tls" / "tls.key"
    # root-owned 0600 (what `openssl genpkey` or a secret copied as root leaves): uid 10001
    # cannot read it, and the container stops at start with an error naming the file.
    os.chown(key, 0, 0)
    key.chmod(0o600)
    port = free_port()
    name, r = run_container(engine, tls_dir, port)
    assert r.ok, r.output
    assert wait_exited(engine, name) != 0
    logs = engine.docker("logs", name).output
    assert "tls_key_file" in logs, logs[-2000:]
    assert "permission denied" in logs.lower(), logs[-2000:]
    assert "10001" in logs, logs[-2000:]
    # Readable by the group 10001 (docs/deploy.md): it serves.
    os.chown(key, 0, UID)
    key.chmod(0o640)
    port = free_port()
    name, r = run_container(engine, tls_dir, port)
    assert r.ok, r.output
    wait_running(engine, name, port)
    with httpx.Client(verify=tls_ca.client_context()) as http:
        assert http.get(f"https://127.0.0.1:{port}/v2/").status_code == 200


def test_base_image_is_made_offline_and_cached() -> None:
    """The tarball script does nothing when the cache is there (a second run is fast)."""
    if base_tarball() is None:
        pytest.skip("image test: the base image is not cached (the image tests make it)")
    done = subprocess.run(
        ["bash", str(BASE_SCRIPT)], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    assert Path(done.stdout.strip()) == base_tarball()
    assert "debootstrap" not in done.stderr  # nothing was made again
