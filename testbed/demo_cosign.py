"""The Cosign part of ``make demo``: a Cosign-signed repository next to the Notary one.

In the same docker-registry, ``cosign/app`` and ``cosign/keep`` get a signed tag (a classic
``.sig`` signature made with a cosign key), a tag signed with a cosign 3 bundle (made by
sigstore-js, when it is installed), an unsigned tag, and a tag that moves upstream to an
unsigned image after the proxy saw it signed. A second trustproxy (its own config and
policy, so the Notary part stays as it is) enforces a ``type: cosign`` source: ``cosign/app``
with ``onUnsignedTag: deny``, ``cosign/keep`` with ``onUnsignedTag: lastSigned``.
"""

from __future__ import annotations

import json
import re
import subprocess
import time
from pathlib import Path
from typing import TYPE_CHECKING

import httpx

from testbed import cosign_signer, images, sigstore_js_signer
from testbed.processes import Server
from testbed.proxy_server import start_proxy, upstream_config

if TYPE_CHECKING:
    from testbed.demo import Demo

REPOS = {"cosign/app": "deny", "cosign/keep": "lastSigned"}
REFRESH = 1.0  # the source's refresh_interval: how soon a moved tag is seen


def run_cosign_demo(demo: Demo, registry: Server) -> int:
    """Push, sign, start the cosign proxy, show what clients see; the number of problems."""
    from testbed.demo import info, short, shown_path, step

    state = demo.state_dir / "cosign"
    state.mkdir(parents=True, exist_ok=True)
    host = registry.extra["host"]
    key = cosign_signer.new_key()
    key_file = state / "cosign.pub"
    key_file.write_bytes(cosign_signer.public_pem(key))

    step("Cosign: pushing cosign/app and cosign/keep, signing with a cosign key")
    bundles = sigstore_js_signer.ensure_installed() is None
    expected: dict[tuple[str, str], str | None] = {}
    moved_signed: dict[str, str] = {}
    with httpx.Client(base_url=registry.extra["url"], timeout=30) as client:
        for repo in REPOS:
            reference = f"{host}/{repo}"
            signed = images.single_image(f"cosign demo {repo} signed-1.0")
            digest = images.push_image(client, repo, signed, "signed-1.0")
            cosign_signer.sign_classic(client, repo, digest, reference, [key])
            expected[(repo, "signed-1.0")] = digest
            unsigned = images.single_image(f"cosign demo {repo} unsigned")
            images.push_image(client, repo, unsigned, "unsigned")
            expected[(repo, "unsigned")] = None
            moved = images.single_image(f"cosign demo {repo} moved signed")
            moved_signed[repo] = images.push_image(client, repo, moved, "moved")
            cosign_signer.sign_classic(client, repo, moved_signed[repo], reference, [key])
            if bundles:
                bundled = images.single_image(f"cosign demo {repo} bundle-1.0")
                digest = images.push_image(client, repo, bundled, "bundle-1.0")
                bundle = cosign_signer.dsse_bundle(key, digest)
                cosign_signer.attach_bundle(client, repo, bundled, bundle)
                expected[(repo, "bundle-1.0")] = digest
    info(f"key {shown_path(key_file)}: classic sha256-<hex>.sig signatures (cosign ≤ 2)")
    if bundles:
        info("bundle-1.0: a cosign 3 bundle made by sigstore-js, attached as a referrer")
    else:
        info("sigstore-js is not installed: no bundle-signed tag")

    policy = state / "policy.yaml"
    rules = {
        f"{host}/{repo}": {
            "requireSignatures": True,
            "source": "cosign",
            "authorities": [{"key": str(key_file), "name": "release"}],
            "tlog": "optional",  # a local key, no Rekor here
            "onUnsignedTag": mode,
        }
        for repo, mode in REPOS.items()
    }
    policy.write_text(
        "# trustproxy demo policy for Cosign (written by `make demo`)\n"
        + json.dumps({"version": "2.0", "trust": {"repositories": rules}}, indent=2)
    )
    audit = state / "audit.jsonl"
    config = {
        "upstreams": [upstream_config("demo-registry", registry.extra["url"])],
        "trust": {"sources": {"cosign": {"type": "cosign", "refresh_interval": f"{REFRESH}s"}}},
        "policy_file": str(policy),
        "audit": {"sink": "file", "path": str(audit)},
        "logging": {"format": "text", "level": "warning"},
    }
    step(f"starting a second trustproxy with a cosign source (policy {shown_path(policy)})")
    proxy = demo.start(
        "trustproxy-cosign", lambda: start_proxy(state, config, name="trustproxy-cosign")
    )
    proxy_host = proxy.extra["host"]
    info(f"listening on {proxy.extra['url']} (pid {proxy.pid})")

    problems = 0

    def show(repo: str, tag: str, want: str | None, note: str = "") -> None:
        nonlocal problems
        got, why = _pull(proxy_host, f"{repo}:{tag}")
        seen = f"{short(got)} (signed)" if got else f"404: {why}"
        if got != want:
            problems += 1
            seen += f"   UNEXPECTED: expected {short(want) if want else 'a refusal'}"
        info(f"{repo + ':' + tag:26} {seen}{note}")

    step(f"Cosign: what a client sees through trustproxy (skopeo inspect {proxy_host}/...)")
    for (repo, tag), want in expected.items():
        show(repo, tag, want)
    for repo in REPOS:
        show(repo, "moved", moved_signed[repo])

    step("Cosign: the tag `moved` is re-pushed upstream to an unsigned image")
    with httpx.Client(base_url=registry.extra["url"], timeout=30) as client:
        for repo in REPOS:
            images.push_image(
                client, repo, images.single_image(f"cosign demo {repo} moved unsigned"), "moved"
            )
    time.sleep(2 * REFRESH)  # past the tag's last resolution
    for repo, mode in REPOS.items():
        keeps = mode == "lastSigned"
        note = ": the digest it had while signed" if keeps else ": refused"
        show(
            repo,
            "moved",
            moved_signed[repo] if keeps else None,
            f"   (onUnsignedTag: {mode}{note})",
        )

    done = subprocess.run(
        ["skopeo", "list-tags", "--tls-verify=false", f"docker://{proxy_host}/cosign/app"],
        capture_output=True,
        timeout=60,
        check=False,
    )
    tags = json.loads(done.stdout).get("Tags") or [] if done.returncode == 0 else []
    step(f"Cosign: skopeo list-tags docker://{proxy_host}/cosign/app")
    info(", ".join(sorted(tags)) or "(no tags)")

    step("Cosign: try it yourself")
    info(f"skopeo inspect --tls-verify=false docker://{proxy_host}/cosign/keep:moved")
    info(f"curl -s http://{proxy_host}/v2/cosign/app/manifests/unsigned   # the 404 and why")
    info(
        f"python -m proxy trust inspect --config {shown_path(Path(proxy.extra['config']))} "
        f"{host}/cosign/app"
    )
    info(f"tail -f {shown_path(audit)}")
    return problems


def _pull(host: str, ref: str) -> tuple[str | None, str]:
    """(digest, "") of what skopeo gets for ``ref``, or (None, the registry's words)."""
    argv = ["skopeo", "inspect", "--raw", "--tls-verify=false", f"docker://{host}/{ref}"]
    done = subprocess.run(argv, capture_output=True, timeout=60, check=False)
    if done.returncode == 0:
        return images.sha256(done.stdout), ""
    found = re.search(r'msg="((?:[^"\\]|\\.)*)"', done.stderr.decode(errors="replace"))
    message = found.group(1).replace('\\"', '"') if found else "failed"
    # skopeo prefixes the registry's words with the image name and the error code.
    return None, message.rsplit("manifest unknown: ", 1)[-1]
