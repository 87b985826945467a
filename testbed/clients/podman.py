"""Real podman and skopeo with a private view of the machine's container config.

podman, CRI-O, buildah and skopeo read ``/etc/containers/registries.conf``, its drop-in folder
``registries.conf.d/`` and the per-user ``$HOME/.config/containers/registries.conf{,.d}``
(containers/image ``sysregistriesv2``). To apply a documented recipe *verbatim, at its
documented path* without touching the machine, every command runs in a mount namespace of
its own (``unshare --mount``) where a folder of the test bed is bind-mounted over
``/etc/containers`` (and another over ``/var/lib/containers``, root's blob-info cache), with
``HOME`` pointing into the bed. Nothing of the machine's config leaks in, and nothing of the
test's leaks out.

The bed is laid out like a host root, so ``trustproxy doctor --host-root`` reads exactly the
files the clients read::

    <root>/etc/containers/            -> /etc/containers (registries.conf, policy.json, ...)
    <root>/root/                      -> $HOME (.config/containers/registries.conf{,.d})
    <root>/var/lib/containers/        -> /var/lib/containers
    <root>/storage                    podman --root (--runroot: a short temporary folder)

podman runs with its own ``--root``/``--runroot``, ``--cgroup-manager=cgroupfs``,
``--events-backend=file`` and the vfs storage driver (no overlay mounts needed).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

from testbed.clients import CommandResult

REPO_ROOT = Path(__file__).resolve().parents[2]
INSTALL_SCRIPT = REPO_ROOT / "scripts" / "install-client-deps.sh"

# Bind-mounted inside the private mount namespace; each must exist on the machine (the mount
# point), which installing podman/skopeo (containers-common) guarantees for /etc/containers.
PRIVATE_DIRS = ("etc/containers", "var/lib/containers")

# What a fresh Debian 12 host has in /etc/containers/registries.conf, minus comments: no
# unqualified-search-registries, so a short name without an alias fails closed.
DEBIAN_REGISTRIES_CONF = ""

ACCEPT_ANYTHING_POLICY = {"default": [{"type": "insecureAcceptAnything"}]}

_MOUNT_AND_RUN = (
    'set -e; root="$1"; shift; '
    'for d in etc/containers var/lib/containers; do mount --bind "$root/$d" "/$d"; done; '
    'exec "$@"'
)


class Result(CommandResult):
    @property
    def error(self) -> str:
        """The client's error line (``Error: ...`` or logrus ``msg="..."``)."""
        found = re.search(r'msg="((?:[^"\\]|\\.)*)"', self.stderr)
        if found:
            return found.group(1).replace('\\"', '"')
        lines = [ln for ln in self.stderr.splitlines() if ln.startswith("Error")]
        return lines[-1] if lines else self.stderr.strip()[-500:]


def _version(binary: str) -> str:
    done = subprocess.run([binary, "--version"], capture_output=True, text=True, check=False)
    found = re.search(r"version\s+(\S+)", done.stdout)
    return found.group(1) if found else "unknown"


def install_podman() -> str | None:
    """Install podman via the project's script when missing; None, or why it cannot run."""
    if shutil.which("podman") is None:
        done = subprocess.run(
            ["bash", str(INSTALL_SCRIPT), "podman"], capture_output=True, text=True, check=False
        )
        if done.returncode != 0 or shutil.which("podman") is None:
            tail = (done.stderr or done.stdout).strip()[-400:]
            return f"podman is not installed and could not be installed ({tail})"
    return None


def unavailable_reason() -> str | None:
    """None when podman and skopeo can run here in a private mount namespace; else why not."""
    missing = [c for c in ("podman", "skopeo", "unshare") if shutil.which(c) is None]
    if missing:
        return f"not installed: {', '.join(missing)}"
    if os.geteuid() != 0:
        return "needs root: the clients' config is isolated in a mount namespace (unshare -m)"
    for d in PRIVATE_DIRS:
        # The mount points: the clients' own standard folders (podman as root creates
        # /var/lib/containers on first use; a fresh machine may not have it yet).
        try:
            Path("/", d).mkdir(parents=True, exist_ok=True)
        except OSError as e:
            return f"/{d} does not exist and cannot be created ({e.strerror})"
    done = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "true"],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        return f"cannot create a mount namespace here (unshare -m: {done.stderr.strip()})"
    return None


class ContainersHost:
    """A private ``/etc/containers`` + ``$HOME`` for podman and skopeo (see module doc)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        for d in (*PRIVATE_DIRS, "root", "storage", "tmp"):
            (root / d).mkdir(parents=True, exist_ok=True)
        # podman refuses a runroot longer than 50 characters: a short folder of its own.
        self.run_dir = Path(tempfile.mkdtemp(prefix="podman-run-"))
        self.reset()

    def close(self) -> None:
        self.podman("rmi", "--all", "--force")
        shutil.rmtree(self.run_dir, ignore_errors=True)

    @property
    def etc(self) -> Path:
        return self.root / "etc/containers"

    @property
    def home(self) -> Path:
        return self.root / "root"

    def reset(self) -> None:
        """Back to a fresh Debian host: the default (empty) registries.conf, no drop-ins, no
        per-user files, an accept-anything signature policy (signatures are the proxy's job);
        podman's image store emptied."""
        for d in (self.etc, self.home / ".config"):
            shutil.rmtree(d, ignore_errors=True)
        self.etc.mkdir(parents=True)
        (self.etc / "registries.conf").write_text(DEBIAN_REGISTRIES_CONF)
        (self.etc / "policy.json").write_text(json.dumps(ACCEPT_ANYTHING_POLICY))
        (self.run_dir / "auth.json").write_text('{"auths": {}}')
        # Empty on purpose: podman's built-in defaults, nothing from the machine.
        (self.etc / "containers.conf").write_text("")
        (self.etc / "storage.conf").write_text(
            '[storage]\ndriver = "vfs"\n'
            f'runroot = "{self.run_dir / "storage"}"\ngraphroot = "{self.root / "storage"}"\n'
        )
        if (self.root / "storage").exists():
            self.podman("rmi", "--all", "--force")

    def write(self, relative: str, text: str) -> Path:
        """Write a config file at ``relative`` under the bed's root
        (``etc/containers/registries.conf.d/50-trustproxy.conf``, ``root/.config/...``)."""
        path = self.root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        return path

    def _env(self) -> dict[str, str]:
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("CONTAINERS_", "REGISTRY_AUTH", "XDG_", "DOCKER_"))
        }
        env.update(
            HOME=str(self.home),
            XDG_RUNTIME_DIR=str(self.run_dir),
            TMPDIR=str(self.root / "tmp"),
            REGISTRY_AUTH_FILE=str(self.run_dir / "auth.json"),
        )
        return env

    def run(
        self, argv: list[str], *, timeout: float = 180, env: dict[str, str] | None = None
    ) -> Result:
        full = [
            "unshare", "--mount", "--propagation", "private",
            "sh", "-c", _MOUNT_AND_RUN, "sh", str(self.root), *argv,
        ]  # fmt: skip
        done = subprocess.run(
            full,
            capture_output=True,
            text=True,
            timeout=timeout,
            env={**self._env(), **(env or {})},
            check=False,
        )
        return Result.of(argv, done)

    def podman(self, *args: str, timeout: float = 180, env: dict[str, str] | None = None) -> Result:
        return self.run(
            [
                "podman",
                "--root", str(self.root / "storage"),
                "--runroot", str(self.run_dir / "storage"),
                "--tmpdir", str(self.run_dir / "libpod"),
                "--cgroup-manager=cgroupfs",
                "--events-backend=file",
                "--storage-driver=vfs",
                *args,
            ],
            timeout=timeout,
            env=env,
        )  # fmt: skip

    def skopeo(self, *args: str, timeout: float = 120) -> Result:
        return self.run(["skopeo", *args], timeout=timeout)

    def pulled_digest(self, reference: str) -> str:
        """The manifest digest podman recorded for ``reference`` after a pull."""
        done = self.podman("image", "inspect", "--format", "{{.Digest}}", reference)
        if not done.ok:
            raise AssertionError(f"podman image inspect {reference}: {done.stderr}")
        return done.stdout.strip()


def versions() -> dict[str, str]:
    return {c: _version(c) for c in ("podman", "skopeo") if shutil.which(c)}
