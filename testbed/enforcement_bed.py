"""Building blocks for the enforcement integration tests: a registry + notary pair where one
publisher signs images in many repositories, a policy written in the issue's YAML format,
and trustproxy enforcing it in front of both.

    skopeo / httpx --> trustproxy --> docker-registry (or a TamperingUpstream in front of it)
                           |
                           +--HTTPS--> notary-server --> notary-signer

One publisher (one trust directory) owns every repository, so every GUN has the same root
key and one canonical root key ID (``docker trust inspect``'s "Root Key") pins them all, as
it does for a real ``docker trust`` user. Delegation signers are separate trust directories
(``Repository.add_signer``); a signer holding several keys of one role signs that role's
metadata with all of them (used for thresholds, see :func:`add_multi_key_signer`).
"""

from __future__ import annotations

import json
import re
import subprocess
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import yaml

from testbed import images
from testbed.notary_cli import NotaryCli, make_delegation_key
from testbed.notary_server import NotaryBed
from testbed.processes import Server, free_port
from testbed.proxy_server import start_proxy, upstream_config
from testbed.trust_scenarios import TARGETS, Repository, SignedTarget, Signer, cli_for

SOURCE = "notary"  # the trust source's name in the proxy config and in policy rules


# -- policy documents (the YAML format) --------------------------------------------------


def rule(
    *,
    root_keys: Sequence[str] = (),
    root_ca: Path | None = None,
    trust_on_first_use: bool = False,
    signers: Sequence[str | tuple[str, bool]] = (),
    thresholds: Mapping[str, int] | None = None,
    paths: Sequence[str] = (),
    expires: str | None = None,
    digests: str | None = None,
    mode: str = "enforce",
    source: str = SOURCE,
) -> dict[str, Any]:
    """One ``trust.repositories`` entry. ``signers``: role names (short, as in the policy:
    ``security-team`` = ``targets/security-team``), required unless given as
    ``(name, False)``. Empty: Docker's rule."""
    entry: dict[str, Any] = {"requireSignatures": True, "source": source}
    if root_keys:
        entry["rootKeys"] = list(root_keys)
    if root_ca is not None:
        entry["rootCA"] = str(root_ca)
    if trust_on_first_use:
        entry["trustOnFirstUse"] = True
    if signers:
        entry["signers"] = [
            {"role": s, "required": True}
            if isinstance(s, str)
            else {"role": s[0], "required": s[1]}
            for s in signers
        ]
    if thresholds:
        entry["thresholds"] = dict(thresholds)
    if paths or expires is not None:
        allow: dict[str, Any] = {}
        if paths:
            allow["paths"] = list(paths)
        if expires is not None:
            allow["expires"] = expires
        entry["allow"] = allow
    if digests is not None:
        entry["digests"] = digests
    entry["mode"] = mode
    return entry


def unenforced() -> dict[str, Any]:
    """A rule that does not enforce (``requireSignatures: false``)."""
    return {"requireSignatures": False}


def policy_document(repositories: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    return {
        "version": "2.0",
        "trust": {"repositories": {k: dict(v) for k, v in repositories.items()}},
    }


def write_policy(path: Path, repositories: Mapping[str, Mapping[str, Any]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(policy_document(repositories), sort_keys=False))
    return path


def proxy_config(
    upstreams: Sequence[Mapping[str, Any]],
    notary: NotaryBed,
    policy_file: Path,
    *,
    audit_file: Path | None = None,
    source_options: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The main config: upstreams, one notary trust source named :data:`SOURCE`, the
    policy file and (optionally) the audit sink as a JSON-lines file."""
    source: dict[str, Any] = {"type": "notary", "url": notary.url, "ca_file": str(notary.ca_file)}
    source.update(source_options or {})
    config: dict[str, Any] = {
        "upstreams": [dict(u) for u in upstreams],
        "trust": {"sources": {SOURCE: source}},
        "policy_file": str(policy_file),
        "logging": {"format": "json"},
    }
    if audit_file is not None:
        config["audit"] = {"sink": "file", "path": str(audit_file)}
    return config


# -- the bed ---------------------------------------------------------------------------------


@dataclass
class EnforcementBed:
    """A registry and a notary bed with one publisher (one root key for every GUN)."""

    workdir: Path
    registry_url: str
    notary: NotaryBed
    owner: NotaryCli
    registry_client: httpx.Client
    namespace: str = "enf"  # first path segment of every repository, unique per bed
    _repos: dict[str, Repository] = field(default_factory=dict)

    @classmethod
    def create(
        cls, workdir: Path, registry_url: str, notary: NotaryBed, *, namespace: str = "enf"
    ) -> EnforcementBed:
        workdir.mkdir(parents=True, exist_ok=True)
        owner = cli_for(notary, workdir / "publisher")
        client = httpx.Client(base_url=registry_url, timeout=30)
        return cls(workdir, registry_url, notary, owner, client, namespace)

    def close(self) -> None:
        self.registry_client.close()

    @property
    def registry_host(self) -> str:
        return self.registry_url.split("://", 1)[1]

    def repo(self, name: str) -> str:
        """Repository path on the registry: ``<namespace>/<name>``."""
        return f"{self.namespace}/{name}"

    def gun(self, name: str) -> str:
        return f"{self.registry_host}/{self.repo(name)}"

    def pattern(self, glob: str) -> str:
        """A policy pattern for repositories ``<namespace>/<glob>`` on this registry."""
        return f"{self.registry_host}/{self.namespace}/{glob}"

    # -- registry ------------------------------------------------------------------------------

    def push(self, name: str, image: images.Image, tag: str | None) -> str:
        """Push ``image`` to ``<namespace>/<name>`` (tagged unless ``tag`` is None)."""
        return images.push_image(self.registry_client, self.repo(name), image, tag)

    # -- notary ---------------------------------------------------------------------------------

    def trust(self, name: str) -> Repository:
        """``notary init`` + publish ``gun(name)`` with the shared publisher (like the first
        ``docker trust sign``); the same repository object on later calls."""
        gun = self.gun(name)
        if gun not in self._repos:
            self.owner.init(gun, server_managed_snapshot=True, publish=True)
            slug = re.sub(r"[^A-Za-z0-9]+", "-", gun).strip("-")
            self._repos[gun] = Repository(
                bed=self.notary, gun=gun, workdir=self.workdir / "repos" / slug, owner=self.owner
            )
        return self._repos[gun]

    @property
    def root_key_id(self) -> str:
        """The publisher's canonical root key ID (the same for every GUN it initialised)."""
        ids = self.owner.root_key_ids()
        if len(ids) != 1:
            raise RuntimeError(f"expected one root key in the publisher's trust dir, got {ids}")
        return ids[0]

    def push_and_sign(
        self,
        name: str,
        tag: str,
        image: images.Image,
        *,
        role: str = TARGETS,
        signer: Signer | str | None = None,
        push_tag: bool = True,
    ) -> SignedTarget:
        """Push ``image`` (tagged ``tag`` unless ``push_tag`` is False) and sign ``tag`` at
        its manifest digest in ``role``."""
        self.push(name, image, tag if push_tag else None)
        return self.trust(name).sign_bytes(tag, image.manifest, role=role, signer=signer)


def add_multi_key_signer(repo: Repository, name: str, role: str, keys: int) -> Signer:
    """A signer holding ``keys`` keys of ``role`` (all added to the role by the owner): notary
    signs the role's metadata with every key of the role it holds, so each publish by this
    signer carries ``keys`` signatures from distinct keys. (notary 0.7 cannot set a delegation
    threshold above 1; a policy threshold counts these signatures.)"""
    made = [make_delegation_key(repo.workdir / "keys", f"{name}-{n}") for n in range(keys)]
    repo.owner.delegation_add(repo.gun, role, [k.public_file for k in made], publish=True)
    cli = cli_for(repo.bed, repo.workdir / f"signer-{name}")
    for k in made:
        cli.key_import(k.private_key, role=role)
    signer = Signer(name=name, role=role, key=made[0], cli=cli)
    repo.signers[name] = signer
    return signer


def import_signer_key(repo: Repository, existing: Signer, name: str) -> Signer:
    """Another trust directory holding only ``existing``'s key (one key of a multi-key role)."""
    cli = cli_for(repo.bed, repo.workdir / f"signer-{name}")
    cli.key_import(existing.key.private_key, role=existing.role)
    signer = Signer(name=name, role=existing.role, key=existing.key, cli=cli)
    repo.signers[name] = signer
    return signer


# -- trustproxy enforcing a policy -------------------------------------------------------------


@dataclass
class EnforcingProxy:
    server: Server
    policy_file: Path
    audit_file: Path | None

    @property
    def url(self) -> str:
        return self.server.extra["url"]

    @property
    def host(self) -> str:
        return self.server.extra["host"]

    def stop(self) -> None:
        self.server.stop()

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=30)

    def manifest(
        self, repo: str, reference: str, *, method: str = "GET", accept: str = images.ACCEPT_ALL
    ) -> httpx.Response:
        with self.client() as http:
            return http.request(
                method, f"/v2/{repo}/manifests/{reference}", headers={"Accept": accept}
            )

    def tags(self, repo: str) -> list[str]:
        with self.client() as http:
            r = http.get(f"/v2/{repo}/tags/list")
        r.raise_for_status()
        tags: list[str] = r.json().get("tags") or []
        return tags

    def metrics(self) -> str:
        with self.client() as http:
            return http.get("/metrics").text

    def audit_records(self) -> list[dict[str, Any]]:
        """Every record in the audit file (JSON lines; without one: JSON log lines that look
        like audit records)."""
        path = self.audit_file if self.audit_file is not None else self.server.log_path
        try:
            text = path.read_text(errors="replace")
        except OSError:
            return []
        records = []
        for line in text.splitlines():
            line = line.strip()
            if not line.startswith("{"):
                continue
            try:
                obj = json.loads(line)
            except ValueError:
                continue
            if isinstance(obj, dict):
                records.append(obj)
        return [r for r in records if "outcome" in r and "reference" in r]

    def wait_audit(
        self, match: Callable[[dict[str, Any]], bool], *, timeout: float = 5.0
    ) -> dict[str, Any]:
        """The first audit record ``match`` accepts; waits for a buffered writer."""
        deadline = time.monotonic() + timeout
        while True:
            found = [r for r in self.audit_records() if match(r)]
            if found:
                return found[-1]
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"no matching audit record in {timeout}s; have: {self.audit_records()[-10:]}"
                    f"\nproxy log:\n{self.server.log_tail(20)}"
                )
            time.sleep(0.05)


def start_enforcing_proxy(
    workdir: Path,
    upstreams: Sequence[Mapping[str, Any]],
    notary: NotaryBed,
    repositories: Mapping[str, Mapping[str, Any]],
    *,
    name: str = "trustproxy",
    audit: bool = True,
    source_options: Mapping[str, Any] | None = None,
) -> EnforcingProxy:
    """Write the policy and config under ``workdir`` and start ``python -m proxy serve``."""
    workdir.mkdir(parents=True, exist_ok=True)
    policy_file = write_policy(workdir / f"{name}-policy.yaml", repositories)
    audit_file = workdir / f"{name}-audit.jsonl" if audit else None
    config = proxy_config(
        upstreams, notary, policy_file, audit_file=audit_file, source_options=source_options
    )
    server = start_proxy(workdir, config, name=name)
    return EnforcingProxy(server=server, policy_file=policy_file, audit_file=audit_file)


def upstream(name: str, url: str, **extra: Any) -> dict[str, Any]:
    return upstream_config(name, url, **extra)


# -- real clients ------------------------------------------------------------------------------


@dataclass(frozen=True)
class SkopeoResult:
    returncode: int
    stdout: bytes
    stderr: str

    @property
    def ok(self) -> bool:
        return self.returncode == 0

    @property
    def digest(self) -> str:
        return images.sha256(self.stdout)

    @property
    def error(self) -> str:
        """skopeo's ``msg="..."`` (the registry's words are at its end)."""
        found = re.search(r'msg="((?:[^"\\]|\\.)*)"', self.stderr)
        return found.group(1).replace('\\"', '"') if found else self.stderr.strip()


def skopeo(*args: str, timeout: float = 120) -> SkopeoResult:
    done = subprocess.run(
        ["skopeo", "--insecure-policy", *args], capture_output=True, timeout=timeout, check=False
    )
    return SkopeoResult(done.returncode, done.stdout, done.stderr.decode(errors="replace"))


def skopeo_inspect_raw(host: str, ref: str) -> SkopeoResult:
    return skopeo("inspect", "--raw", "--tls-verify=false", f"docker://{host}/{ref}")


def skopeo_copy(host: str, ref: str, dest: Path, *, all_images: bool = False) -> SkopeoResult:
    args = ["copy", "--src-tls-verify=false"]
    if all_images:
        args.append("--all")
    return skopeo(*args, f"docker://{host}/{ref}", f"dir:{dest}")


def skopeo_list_tags(host: str, repo: str) -> SkopeoResult:
    return skopeo("list-tags", "--tls-verify=false", f"docker://{host}/{repo}")


def oci_error(response: httpx.Response) -> dict[str, Any]:
    """The first entry of an OCI error body (code, message, detail)."""
    body = response.json()
    errors = body.get("errors") if isinstance(body, dict) else None
    if not isinstance(errors, list) or not errors or not isinstance(errors[0], dict):
        raise AssertionError(f"not an OCI error body: {response.text[:500]}")
    entry: dict[str, Any] = errors[0]
    return entry


# -- an upstream that lies about manifests ------------------------------------------------------


class TamperingUpstream:
    """A registry front that relays GET/HEAD to a real registry, except that a manifest asked
    for by one of the digests in :attr:`replacements` comes back as other bytes (with the
    requested digest in ``Docker-Content-Digest``): a compromised registry or cache."""

    def __init__(self, target_url: str) -> None:
        self.target_url = target_url
        self.replacements: dict[str, bytes] = {}
        self.port = free_port()
        self._client = httpx.Client(base_url=target_url, timeout=30)
        tamper = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                return None

            def do_GET(self) -> None:
                tamper._relay(self, head=False)

            def do_HEAD(self) -> None:
                tamper._relay(self, head=True)

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> TamperingUpstream:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)
        self._client.close()

    def __enter__(self) -> TamperingUpstream:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _relay(self, handler: BaseHTTPRequestHandler, *, head: bool) -> None:
        found = re.search(r"/manifests/(sha256:[0-9a-f]{64})$", handler.path.split("?", 1)[0])
        fake = self.replacements.get(found.group(1)) if found else None
        if found is not None and fake is not None:
            handler.send_response(200)
            handler.send_header("Content-Type", images.OCI_MANIFEST)
            handler.send_header("Content-Length", str(len(fake)))
            handler.send_header("Docker-Content-Digest", found.group(1))
            handler.end_headers()
            if not head:
                handler.wfile.write(fake)
            return
        headers = {k: v for k, v in handler.headers.items() if k.lower() in {"accept", "range"}}
        r = self._client.request("HEAD" if head else "GET", handler.path, headers=headers)
        handler.send_response(r.status_code)
        for key in ("Content-Type", "Docker-Content-Digest", "Content-Range", "Link"):
            if key in r.headers:
                handler.send_header(key, r.headers[key])
        body = r.content
        length = r.headers.get("Content-Length", str(len(body))) if head else str(len(body))
        handler.send_header("Content-Length", length)
        handler.end_headers()
        if not head:
            handler.wfile.write(body)


def wait_until(check: Callable[[], bool], *, timeout: float, interval: float = 0.25) -> float:
    """Call ``check`` until it returns True; the seconds that took. TimeoutError after
    ``timeout`` seconds."""
    start = time.monotonic()
    while not check():
        if time.monotonic() - start > timeout:
            raise TimeoutError(f"condition not met in {timeout}s")
        time.sleep(interval)
    return time.monotonic() - start
