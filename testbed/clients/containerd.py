"""A real containerd for the tests: own config, root, state and socket, native snapshotter.

    ctr --address <own socket> image pull --hosts-dir <dir> 127.0.0.1:<registry>/<repo>:<tag>

``ctr`` resolves and fetches in its own process with the same resolver code as containerd's
CRI plugin (``remotes/docker/config``: ``hosts.toml``, then the default host), then writes
the content into the daemon and unpacks it with the native snapshotter. The CRI plugin's
``config_path`` is set as on a Kubernetes node (``hosts_dir``); ``ctr`` is told its hosts
directory with ``--hosts-dir`` on each pull.

Nothing is shared with a system containerd: the socket, the ttrpc socket, root, state and the
``opt`` plugin's directory all live under the instance's own directory, and the debug and
metrics listeners are off. Content is isolated per namespace (``content_sharing_policy =
"isolated"``), so a pull in a fresh namespace fetches every blob again instead of borrowing
it from an earlier pull.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from testbed.clients import CommandResult
from testbed.processes import Server, start_server

REPO_ROOT = Path(__file__).resolve().parents[2]
INSTALL_SCRIPT = REPO_ROOT / "scripts" / "install-client-deps.sh"

_VERSION_RE = re.compile(r"\bv?(\d+)\.(\d+)\.(\d+)")


class ContainerdUnavailable(RuntimeError):
    """containerd cannot be installed or started on this machine (the reason is the text)."""


def ensure_installed() -> None:
    """Install containerd (Debian package ``containerd``) through the project's script when
    ``containerd`` or ``ctr`` is missing; ContainerdUnavailable if it still is."""
    if shutil.which("containerd") and shutil.which("ctr"):
        return
    done = subprocess.run(
        ["bash", str(INSTALL_SCRIPT), "containerd"],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    if not (shutil.which("containerd") and shutil.which("ctr")):
        raise ContainerdUnavailable(
            "containerd is not installed and scripts/install-client-deps.sh containerd "
            f"failed (exit {done.returncode}): {(done.stderr or done.stdout).strip()[-500:]}"
        )


def parse_version(text: str) -> tuple[int, int, int] | None:
    """(major, minor, patch) from ``containerd --version`` output (Debian: ``1.6.20~ds1``)."""
    found = _VERSION_RE.search(text.split("containerd/containerd", 1)[-1])
    return (int(found[1]), int(found[2]), int(found[3])) if found else None


def containerd_version() -> str:
    """The first line of ``containerd --version``."""
    done = subprocess.run(
        ["containerd", "--version"], capture_output=True, text=True, timeout=30, check=False
    )
    return done.stdout.strip().splitlines()[0] if done.stdout.strip() else ""


def config_toml(directory: Path, hosts_dir: Path) -> str:
    """containerd's config (version 2: read by 1.6, 1.7 and, migrated, by 2.x)."""
    return f"""\
version = 2
root = "{directory / "root"}"
state = "{directory / "state"}"

[grpc]
  address = "{directory / "state" / "containerd.sock"}"

[ttrpc]
  address = "{directory / "state" / "containerd.sock.ttrpc"}"

[debug]
  address = ""

[metrics]
  address = ""

[plugins."io.containerd.internal.v1.opt"]
  path = "{directory / "opt"}"

[plugins."io.containerd.metadata.v1.bolt"]
  content_sharing_policy = "isolated"

[plugins."io.containerd.grpc.v1.cri".containerd]
  snapshotter = "native"

[plugins."io.containerd.grpc.v1.cri".registry]
  config_path = "{hosts_dir}"
"""


class CtrResult(CommandResult):
    @property
    def error(self) -> str:
        """ctr's last line: ``ctr: <what failed>``."""
        lines = [ln for ln in self.stderr.splitlines() if ln.startswith("ctr: ")]
        return lines[-1] if lines else self.stderr.strip()[-500:]

    def hosts_tried(self) -> list[str]:
        """``scheme://host`` of each registry host ctr contacted, in order (from --debug)."""
        seen: list[str] = []
        for match in re.finditer(r'url="?(https?://[^/"\s]+)', self.stderr):
            if not seen or seen[-1] != match[1]:
                seen.append(match[1])
        return seen


@dataclass
class Containerd:
    """A running containerd started by :func:`start_containerd`."""

    server: Server
    directory: Path
    hosts_dir: Path
    version: str

    @property
    def parsed_version(self) -> tuple[int, int, int]:
        found = parse_version(self.version)
        if found is None:
            raise RuntimeError(f"cannot read containerd's version from {self.version!r}")
        return found

    @property
    def socket(self) -> Path:
        return self.directory / "state" / "containerd.sock"

    def ctr(self, *args: str, namespace: str = "default", timeout: float = 180) -> CtrResult:
        argv = ["ctr", "--address", str(self.socket), "--namespace", namespace, *args]
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
        return CtrResult.of(argv, done)

    def pull(
        self,
        ref: str,
        *,
        namespace: str,
        platform: str | None = None,
        hosts_dir: Path | None = None,
    ) -> CtrResult:
        """``ctr image pull --hosts-dir`` (debug logging on: the hosts it tried are in stderr)."""
        args = ["--debug", "image", "pull", "--hosts-dir", str(hosts_dir or self.hosts_dir)]
        if platform is not None:
            args += ["--platform", platform]
        argv = ["ctr", "--address", str(self.socket), "--namespace", namespace, *args, ref]
        done = subprocess.run(argv, capture_output=True, text=True, timeout=180, check=False)
        return CtrResult.of(argv, done)

    def image_digest(self, ref: str, *, namespace: str) -> str | None:
        """The target digest containerd recorded for ``ref`` (None: no such image)."""
        listed = self.ctr("image", "ls", namespace=namespace)
        for line in listed.stdout.splitlines()[1:]:
            fields = line.split()
            if len(fields) >= 3 and fields[0] == ref:
                return fields[2]
        return None

    def content_digests(self, *, namespace: str) -> set[str]:
        """Every blob digest in the namespace's content store."""
        listed = self.ctr("content", "ls", "--quiet", namespace=namespace)
        return {ln.strip() for ln in listed.stdout.splitlines() if ln.strip()}

    def stop(self) -> None:
        self.server.stop(timeout=20)


def start_containerd(directory: Path, *, wait_timeout: float = 30.0) -> Containerd:
    """Start containerd under ``directory`` (config, root, state, socket, hosts dir, log).

    ContainerdUnavailable (with the log tail) when it cannot start here."""
    ensure_installed()
    directory.mkdir(parents=True, exist_ok=True)
    hosts_dir = directory / "certs.d"
    hosts_dir.mkdir(exist_ok=True)
    (directory / "state").mkdir(exist_ok=True)
    config = directory / "config.toml"
    config.write_text(config_toml(directory, hosts_dir))
    try:
        server = start_server(
            "containerd",
            ["containerd", "--config", str(config), "--log-level", "info"],
            log_dir=directory,
            wait_timeout=wait_timeout,
        )
    except (OSError, RuntimeError) as e:
        raise ContainerdUnavailable(f"containerd did not start: {e}") from e
    instance = Containerd(server, directory, hosts_dir, containerd_version())
    deadline = time.monotonic() + wait_timeout
    while True:
        if not server.alive():
            raise ContainerdUnavailable(f"containerd exited at start:\n{server.log_tail()}")
        if instance.socket.exists() and instance.ctr("version", timeout=10).ok:
            return instance
        if time.monotonic() > deadline:
            server.stop()
            raise ContainerdUnavailable(
                f"containerd did not answer on {instance.socket} in {wait_timeout}s:\n"
                f"{server.log_tail()}"
            )
        time.sleep(0.1)
