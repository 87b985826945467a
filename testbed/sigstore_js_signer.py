"""sigstore-js (npm ``@sigstore/sign``) as an independent signer of key-based bundles.

``ensure_installed()`` installs it with ``scripts/install-sigstore-js.sh`` when missing and
says why it cannot when it cannot; ``sign_dsse_bundle`` runs ``sigstore_js/sign_bundle.cjs``
(offline: a local key, no Fulcio, no Rekor) and returns the bundle JSON bytes.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

HERE = Path(__file__).resolve().parent
PROJECT = HERE.parent
SCRIPT = HERE / "sigstore_js" / "sign_bundle.cjs"
MODULES = HERE / "sigstore_js" / "node_modules" / "@sigstore" / "sign"
INSTALL = PROJECT / "scripts" / "install-sigstore-js.sh"


def ensure_installed() -> str | None:
    """None when sigstore-js is ready, else the reason it is not (for a test skip)."""
    if MODULES.is_dir() and shutil.which("node"):
        return None
    try:
        done = subprocess.run(
            ["bash", str(INSTALL)], capture_output=True, text=True, timeout=300, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"cannot install sigstore-js: {e}"
    if done.returncode != 0 or not MODULES.is_dir() or not shutil.which("node"):
        return f"cannot install sigstore-js: {done.stderr.strip()[-300:] or done.returncode}"
    return None


def sign_dsse_bundle(
    private_key_pem: Path, payload: Path, payload_type: str, hint: str = ""
) -> bytes:
    """A v0.3 bundle with a DSSE envelope over ``payload``, signed with the key, by sigstore-js."""
    done = subprocess.run(
        ["node", str(SCRIPT), str(private_key_pem), str(payload), payload_type, hint],
        capture_output=True,
        timeout=60,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"sign_bundle.cjs failed: {done.stderr.decode(errors='replace')}")
    return done.stdout
