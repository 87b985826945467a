"""The Notation part of ``make demo``: a repository signed with Notation beside the Notary one.

``add_notation`` (called by testbed.demo before trustproxy starts) writes what a team that
runs ``notation verify`` already has (a ``trustpolicy.json`` and a trust store folder in
Notation's layout), pushes ``demo/notation-app`` with one tag signed by the project's test
Notation signer (a JWS envelope, the signature manifest and the ``sha256-<hex>`` tag index, as
notation pushes them to a registry without the referrers API) and one unsigned tag, and adds a
``type: notation`` source and a policy rule for the repository. Its ``show`` then prints what a
client sees through the proxy and returns what is unexpected.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from testbed import images
from testbed.notation_bed import push_signature
from testbed.notation_signer import Signer, make_cert, signature_artifact
from testbed.processes import Server

__all__ = ["NOTATION_REPO", "NotationDemo", "add_notation"]

NOTATION_REPO = "demo/notation-app"
IDENTITY = "x509.subject: C=US, ST=WA, O=trustproxy-test"


def _say(text: str) -> None:
    with contextlib.suppress(OSError):
        print(text, flush=True)


@dataclass(frozen=True)
class NotationDemo:
    folder: Path
    signed: str  # the digest of the signed tag
    signer: str

    def show(self, proxy_host: str) -> list[str]:
        """Print what skopeo gets through the proxy; return what is unexpected."""
        _say(f"==> Notation: {NOTATION_REPO} signed by {self.signer} (notation's trustpolicy.json")
        _say(f"    and trust store in {self.folder}; source type: notation)")
        problems: list[str] = []
        for tag, expected in (("signed-1.0", self.signed), ("unsigned", None)):
            digest, error = _skopeo_digest(proxy_host, f"{NOTATION_REPO}:{tag}")
            if digest is not None:
                _say(f"    {NOTATION_REPO}:{tag} -> served {digest[:19]} (signature verified)")
            else:
                _say(f"    {NOTATION_REPO}:{tag} -> refused by the proxy: {error}")
            if digest != expected:
                got = digest or f"error {error}"
                problems.append(f"{NOTATION_REPO}:{tag}: through the proxy got {got}")
        for p in problems:
            _say(f"    UNEXPECTED {p}")
        return problems


def _skopeo_digest(host: str, ref: str) -> tuple[str | None, str]:
    argv = ["skopeo", "inspect", "--raw", "--tls-verify=false", f"docker://{host}/{ref}"]
    done = subprocess.run(argv, capture_output=True, timeout=60, check=False)
    if done.returncode != 0:
        stderr = done.stderr.decode(errors="replace")
        found = re.search(r'msg="((?:[^"\\]|\\.)*)"', stderr)
        message = found.group(1).replace('\\"', '"') if found else stderr.strip()
        return None, message.rsplit(f"{NOTATION_REPO}: ", 1)[-1][:200]
    return "sha256:" + hashlib.sha256(done.stdout).hexdigest(), ""


def add_notation(
    state: Path, registry: Server, config: dict[str, Any], policy_file: Path
) -> NotationDemo:
    """Set up the Notation repository, source and rule (see the module docstring)."""
    folder = state / "notation"
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    cert = make_cert("demo-signer", key)
    store = folder / "truststore" / "x509" / "ca" / "demo"
    store.mkdir(parents=True)
    (store / "demo-signer.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    host = registry.extra["host"]
    statement = {
        "name": "demo-notation",
        "registryScopes": [f"{host}/{NOTATION_REPO}"],
        "signatureVerification": {"level": "strict"},
        "trustStores": ["ca:demo"],
        "trustedIdentities": [IDENTITY],
    }
    doc = {"version": "1.0", "trustPolicies": [statement]}
    (folder / "trustpolicy.json").write_text(json.dumps(doc, indent=2), encoding="utf-8")

    url = registry.extra["url"]
    signer = Signer(key, [cert])
    with httpx.Client(base_url=url, timeout=30) as client:
        signed = images.single_image("demo notation signed-1.0")
        digest = images.push_image(client, NOTATION_REPO, signed, "signed-1.0")
        images.push_image(client, NOTATION_REPO, images.single_image("demo notation x"), "unsigned")
    subject = {"mediaType": signed.media_type, "digest": digest, "size": len(signed.manifest)}
    payload = Signer.payload(signed.media_type, digest, len(signed.manifest))
    push_signature(url, NOTATION_REPO, signature_artifact(subject, signer.jws(payload)))

    config["trust"]["sources"]["notation"] = {
        "type": "notation",
        "trust_policy": str(folder / "trustpolicy.json"),
        "trust_store": str(folder / "truststore"),
    }
    with policy_file.open("a", encoding="utf-8") as f:
        f.write(
            f'    "{host}/{NOTATION_REPO}":   # more specific than the rule above: it wins\n'
            "      source: notation   # judged by the statement of trustpolicy.json whose\n"
            "                         # registryScopes names the repository\n"
        )
    _say(f"==> Notation: pushed {NOTATION_REPO} (signed-1.0 signed, unsigned not)")
    return NotationDemo(folder, digest, cert.subject.rfc4514_string())
