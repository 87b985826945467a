"""``make demo``: a registry, a Notary, trustproxy in front, and what a client sees through it.

``python -m testbed.demo up`` starts, on free loopback ports and with all state under
``.demo/`` (``--state-dir``):

    skopeo --> trustproxy --> docker-registry          (images pushed by testbed.images)
                   |
                   +--HTTPS--> notary-server --> notary-signer
                               (tags signed with the real `notary` CLI, like `docker trust sign`)

then writes a policy (``<state>/demo-policy.yaml``) that enforces Docker's rule on
``<registry>/demo/*`` with the repository's root key pinned, shows for every demo tag what
Notary says, what the registry holds and what skopeo gets through the proxy (signed tags at
their signed digest, unsigned tags 404 with the reason), what the proxy wrote to its audit
log, and leaves trustproxy running in the foreground (its log followed on stdout) until
Ctrl-C, SIGTERM or ``python -m testbed.demo down``.

Cleanup is by PID, never by name: every process is recorded in ``<state>/pids.json``
(name → pid) the moment it has started, and ``down`` only signals a recorded PID whose
``/proc/<pid>/cmdline`` still names the expected program (a PID reused by an unrelated process
is left alone).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

import httpx

from testbed import images
from testbed.demo_notation import add_notation
from testbed.notary_cli import NotaryCli
from testbed.notary_server import NotaryBed
from testbed.processes import Server
from testbed.proxy_server import REPO_ROOT, start_proxy, upstream_config
from testbed.registry import registry_binary, start_registry
from testbed.trust_scenarios import RELEASES, Repository, cli_for

DEFAULT_STATE_DIR = REPO_ROOT / ".demo"
PIDS_FILE = "pids.json"
# Written first into a state dir we create: nothing is ever deleted from a directory without it.
MARKER_FILE = ".trustproxy-demo"
REPO = "demo/app"
SIGNER = "alice"

# What /proc/<pid>/cmdline must contain (NUL-separated argv) for a recorded PID to still be the
# process the demo started. Servers must also name a file under the state dir (their config).
_CMDLINE_NEEDLE: Mapping[str, str] = {
    "demo": "-m\0testbed.demo\0",
    "docker-registry": "registry",
    "notary-signer": "notary-signer",
    "notary-server": "notary-server",
    "trustproxy": "-m\0proxy\0serve",
    "trustproxy-cosign": "-m\0proxy\0serve",  # testbed/demo_cosign.py
}
_STOP_TIMEOUT = 10.0
# `up` stops its own servers (up to _STOP_TIMEOUT each) when `down` asks it to.
_DEMO_STOP_TIMEOUT = 5 * _STOP_TIMEOUT
_TOOLS = ("docker-registry", "notary", "notary-server", "notary-signer", "skopeo")


# -- output ---------------------------------------------------------------------------------------


def say(text: str = "", *, err: bool = False) -> None:
    """Print and flush; a closed terminal (SIGHUP, EIO) must not stop the cleanup."""
    with contextlib.suppress(OSError):
        print(text, file=sys.stderr if err else sys.stdout, flush=True)


def step(message: str) -> None:
    say(f"==> {message}")


def info(message: str) -> None:
    say(f"    {message}")


def short(digest: str | None) -> str:
    """``sha256:`` and the first 12 hex digits (what `docker images` shows), or ``-``."""
    if not digest:
        return "-"
    algorithm, _, hex_part = digest.partition(":")
    return f"{algorithm}:{hex_part[:12]}"


def shown_path(path: Path) -> str:
    """``path`` relative to the working directory when it is below it (shorter to read)."""
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


# -- signals --------------------------------------------------------------------------------------


class Interrupted(Exception):  # a request to stop, not an error
    """SIGINT or SIGTERM arrived: stop everything the demo started."""

    def __init__(self, signame: str) -> None:
        super().__init__(signame)
        self.signame = signame


class Interrupts:
    """Turns SIGINT/SIGTERM/SIGHUP into :class:`Interrupted`, except inside :meth:`deferred`.

    Starting a server and recording its PID must not be split by an exception, or the
    process would be running with no one knowing its PID: there the signal is remembered
    and raised once the PID is recorded.
    """

    def __init__(self) -> None:
        self.pending: str | None = None
        self._depth = 0
        self._raised = False  # a second Ctrl-C must not interrupt the cleanup the first began

    SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)  # SIGHUP: the terminal closed

    def install(self) -> None:
        for signum in self.SIGNALS:
            signal.signal(signum, self._handle)

    @classmethod
    def ignore(cls) -> None:
        """While cleaning up: a second Ctrl-C must not leave half-stopped servers behind."""
        for signum in cls.SIGNALS:
            signal.signal(signum, signal.SIG_IGN)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.pending = signal.Signals(signum).name
        if self._depth == 0:
            self._raise()

    def _raise(self) -> None:
        if self.pending is not None and not self._raised:
            self._raised = True
            raise Interrupted(self.pending)

    @contextlib.contextmanager
    def deferred(self) -> Iterator[None]:
        self._depth += 1
        try:
            yield
        finally:
            self._depth -= 1
        if self._depth == 0:
            self._raise()


# -- recorded PIDs and stopping them --------------------------------------------------------------


def read_pids(state_dir: Path) -> dict[str, int]:
    """``<state>/pids.json`` (name → pid); empty when missing or unreadable."""
    try:
        raw = json.loads((state_dir / PIDS_FILE).read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(raw, dict):
        return {}
    return {str(k): v for k, v in raw.items() if isinstance(v, int) and v > 0}


def write_pids(state_dir: Path, pids: Mapping[str, int]) -> None:
    """Replace ``pids.json`` atomically: a concurrent ``down`` reads the old or the new."""
    tmp = state_dir / f"{PIDS_FILE}.tmp"
    tmp.write_text(json.dumps(dict(pids), indent=2) + "\n")
    tmp.replace(state_dir / PIDS_FILE)


def is_ours(name: str, pid: int, state_dir: Path) -> bool:
    """Whether ``pid`` is alive (not a zombie) and still the process recorded as ``name``."""
    proc = Path("/proc") / str(pid)
    try:
        stat = (proc / "stat").read_text()
        cmdline = (proc / "cmdline").read_bytes().decode(errors="replace")
    except OSError:
        return False
    # stat: "pid (comm) S ..." where comm may contain spaces and parentheses.
    state = stat.rpartition(")")[2].split()[:1]
    if state in (["Z"], ["X"]):
        return False
    needle = _CMDLINE_NEEDLE.get(name)
    if needle is None or needle not in cmdline:
        return False
    return name == "demo" or str(state_dir) in cmdline


def _wait_gone(name: str, pid: int, state_dir: Path, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while is_ours(name, pid, state_dir):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def stop_pid(name: str, pid: int, state_dir: Path, *, timeout: float = _STOP_TIMEOUT) -> None:
    """SIGTERM ``pid`` if it is still ours, SIGKILL after ``timeout`` seconds."""
    if not is_ours(name, pid, state_dir):
        info(f"{name} (pid {pid}): already gone")
        return
    info(f"stopping {name} (pid {pid})")
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    if _wait_gone(name, pid, state_dir, timeout):
        return
    info(f"{name} (pid {pid}) ignored SIGTERM for {timeout:.0f}s: SIGKILL")
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    _wait_gone(name, pid, state_dir, timeout)


def stop_recorded(state_dir: Path) -> None:
    """Stop what ``pids.json`` records: the ``up`` process first (it stops its own servers and
    reaps them), then any recorded server still running (``up`` was killed, or did not
    finish in time), newest first."""
    pids = read_pids(state_dir)
    demo_pid = pids.pop("demo", None)
    if demo_pid is not None and demo_pid != os.getpid():
        stop_pid("demo", demo_pid, state_dir, timeout=_DEMO_STOP_TIMEOUT)
    for name, pid in reversed(list(pids.items())):
        stop_pid(name, pid, state_dir)


def remove_state(state_dir: Path) -> bool:
    """Delete the state dir, but only one the demo created (it holds the marker file)."""
    if not (state_dir / MARKER_FILE).exists():
        return False
    shutil.rmtree(state_dir, ignore_errors=True)
    return True


def anything_running(state_dir: Path) -> dict[str, int]:
    return {n: p for n, p in read_pids(state_dir).items() if is_ours(n, p, state_dir)}


# -- what the demo builds -------------------------------------------------------------------------


@dataclass(frozen=True)
class DemoTag:
    """One tag of the demo repository: what the registry holds under it now, and the digest
    the demo signed for it in Notary (None: never signed)."""

    tag: str
    story: str
    pushed_digest: str
    signed_digest: str | None = None


@dataclass(frozen=True)
class ClientView:
    """What one tag looks like from the outside."""

    tag: DemoTag
    notary_digest: str | None  # `notary lookup` by a fresh client; None: not signed
    proxy_digest: str | None  # sha256 of what `skopeo inspect --raw` got through the proxy
    proxy_error: str | None = None

    @property
    def passed_through(self) -> bool:
        """The proxy served what the registry holds under the tag, signed or not."""
        return self.proxy_digest == self.tag.pushed_digest and (
            self.notary_digest != self.tag.pushed_digest
        )

    @property
    def expected_with_enforcement(self) -> str:
        # Style notes, habit 3: unsigned → 404 MANIFEST_UNKNOWN; signed → exactly the signed
        # digest, whatever the registry holds under the tag now.
        if self.notary_digest is None:
            return "404 (not signed)"
        return f"{short(self.notary_digest)} (signed)"

    @property
    def proxy_cell(self) -> str:
        """What skopeo got through the proxy, for the table."""
        if self.proxy_digest is None:
            not_found = "manifest unknown" in (self.proxy_error or "")
            return "404 manifest unknown" if not_found else f"error: {self.proxy_error}"
        if self.proxy_digest == self.notary_digest:
            note = "the signed digest"
            if self.proxy_digest != self.tag.pushed_digest:
                note += ", not the registry's"
            return f"{short(self.proxy_digest)} ({note})"
        return short(self.proxy_digest)

    @property
    def as_enforced(self) -> bool:
        if self.notary_digest is None:
            return self.proxy_digest is None
        return self.proxy_digest == self.notary_digest


def skopeo_digest(host: str, ref: str) -> tuple[str | None, str | None]:
    """(digest of the raw manifest, None) or (None, skopeo's error message) for ``ref``."""
    argv = ["skopeo", "inspect", "--raw", "--tls-verify=false", f"docker://{host}/{ref}"]
    done = subprocess.run(argv, capture_output=True, timeout=60, check=False)
    if done.returncode != 0:
        return None, skopeo_error(done.stderr.decode(errors="replace"), limit=200)
    return "sha256:" + hashlib.sha256(done.stdout).hexdigest(), None


def skopeo_error(stderr: str, *, limit: int = 80) -> str:
    """The message of skopeo's ``level=fatal msg="..."`` line, without the image name."""
    found = re.search(r'msg="((?:[^"\\]|\\.)*)"', stderr)
    message = found.group(1).replace('\\"', '"') if found else stderr.strip()
    # "...: reading manifest x in host/repo: manifest unknown: ..." → the registry's words.
    return message.rsplit(f"{REPO}: ", 1)[-1][:limit] or "failed"


def client_views(
    proxy_host: str, gun: str, tags: Sequence[DemoTag], reader: NotaryCli
) -> list[ClientView]:
    """Ask Notary (``notary lookup``) and the proxy (``skopeo inspect --raw``) about every tag."""
    views = []
    for t in tags:
        found = reader.lookup(gun, t.tag)
        digest, error = skopeo_digest(proxy_host, f"{REPO}:{t.tag}")
        views.append(
            ClientView(
                tag=t,
                notary_digest=f"sha256:{found.sha256}" if found else None,
                proxy_digest=digest,
                proxy_error=error,
            )
        )
    return views


def show_client_view(
    proxy_host: str, gun: str, tags: Sequence[DemoTag], reader: NotaryCli, policy: DemoPolicy
) -> list[str]:
    """Print what a client sees through the proxy; return what is wrong (empty: all fine).

    The proxy enforces ``policy``: a signed tag must come at its signed digest (whatever the
    registry holds under the tag now) and an unsigned tag must fail with 404 and a reason;
    anything else, passing a tag through in particular, is a problem.
    """
    views = client_views(proxy_host, gun, tags, reader)
    rows = [("TAG", "NOTARY SAYS", "REGISTRY HAS", "SKOPEO VIA PROXY", "POLICY EXPECTS")]
    for v in views:
        notary = f"signed {short(v.notary_digest)}" if v.notary_digest else "not signed"
        rows.append(
            (v.tag.tag, notary, short(v.tag.pushed_digest), v.proxy_cell,
             v.expected_with_enforcement)
        )  # fmt: skip
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    for r in rows:
        info("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=False)) + "  " + r[-1])
    say()
    for v in views:
        info(f"{v.tag.tag}: {v.tag.story}")
        if v.proxy_digest is None and v.proxy_error:
            info(f"{' ' * len(v.tag.tag)}  refused by the proxy: {v.proxy_error}")

    problems: list[str] = []
    for v in views:
        if v.tag.signed_digest is not None and v.notary_digest != v.tag.signed_digest:
            problems.append(
                f"{v.tag.tag}: notary lookup says {v.notary_digest}, "
                f"the demo signed {v.tag.signed_digest}"
            )
    say()
    step(f"enforced by {shown_path(policy.path)}: {policy.summary}")
    info("signed tags are served at exactly their signed digest (a re-pushed tag too),")
    info("unsigned tags are 404 MANIFEST_UNKNOWN with the reason, and the tag list hides them")
    for v in views:
        if v.as_enforced:
            continue
        if v.passed_through:
            problems.append(
                f"{v.tag.tag}: passed through unchecked ({short(v.proxy_digest)}, what the "
                f"registry holds), expected {v.expected_with_enforcement}"
            )
            continue
        got = short(v.proxy_digest) if v.proxy_digest else f"error {v.proxy_error}"
        problems.append(
            f"{v.tag.tag}: through the proxy got {got}, expected {v.expected_with_enforcement}"
        )
    for p in problems:
        info(f"UNEXPECTED {p}")
    return problems


def show_tag_list(proxy_host: str) -> None:
    argv = ["skopeo", "list-tags", "--tls-verify=false", f"docker://{proxy_host}/{REPO}"]
    step(f"skopeo list-tags docker://{proxy_host}/{REPO}")
    done = subprocess.run(argv, capture_output=True, timeout=60, check=False)
    if done.returncode != 0:
        info(f"error: {skopeo_error(done.stderr.decode(errors='replace'))}")
        return
    tags = json.loads(done.stdout).get("Tags") or []
    info(", ".join(sorted(tags)) or "(no tags)")


# -- the demo itself ------------------------------------------------------------------------------


@dataclass(frozen=True)
class DemoPolicy:
    """The policy the demo's trustproxy enforces (written to ``path``)."""

    path: Path
    pattern: str
    root_keys: tuple[str, ...]

    @property
    def summary(self) -> str:
        keys = ", ".join(k[:12] for k in self.root_keys)
        return (
            f"{self.pattern} in mode enforce, by Docker's rule (targets/releases, then "
            f"targets), root key {keys} pinned"
        )


def write_demo_policy(
    path: Path, registry_host: str, notary_url: str, root_keys: Sequence[str]
) -> DemoPolicy:
    """Write the demo policy (the format of the Enforcement issue) and return what it says."""
    namespace = REPO.split("/")[0]
    pattern = f"{registry_host}/{namespace}/*"
    keys = ", ".join(json.dumps(k) for k in root_keys)
    path.write_text(
        f"""\
# trustproxy demo policy (written by `make demo`).
#
# Every repository under {registry_host}/{namespace}/ must be signed in the notary
# server {notary_url} ("source: notary" in the proxy config). A tag resolves by Docker's rule
# (targets/releases, else targets; other delegations are ignored) and only under the root
# key the demo's publisher created: `docker trust inspect` calls it the "Root Key".
# Other repositories match no rule and are refused (fail closed).
version: "2.0"
trust:
  repositories:
    "{pattern}":
      requireSignatures: true
      source: notary
      rootKeys: [{keys}]
      mode: enforce   # audit: serve, and log what enforce would refuse; off: pass through
"""
    )
    return DemoPolicy(path=path, pattern=pattern, root_keys=tuple(root_keys))


def show_audit(audit_file: Path, *, timeout: float = 5.0) -> None:
    """What trustproxy recorded for the requests above (one JSON line per decision)."""
    step(f"trustproxy's audit records ({shown_path(audit_file)})")
    deadline = time.monotonic() + timeout
    records: list[dict[str, object]] = []
    while True:  # the proxy writes audit lines from a thread: give it a moment
        records = read_audit(audit_file)
        if records or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    if not records:
        info("(none yet)")
        return
    seen: set[tuple[str, str, str]] = set()
    for r in records:
        key = (str(r.get("kind")), str(r.get("reference")), str(r.get("outcome")))
        if key in seen:
            continue
        seen.add(key)
        served = r.get("served_digest")
        what = f"served {short(str(served))}" if served else str(r.get("reason", ""))
        info(f"{key[0]:8} {key[1]:12} {key[2]:16} {what}"[:160])


def read_audit(audit_file: Path) -> list[dict[str, object]]:
    try:
        lines = audit_file.read_text(errors="replace").splitlines()
    except OSError:
        return []
    records = []
    for line in lines:
        with contextlib.suppress(ValueError):
            record = json.loads(line)
            if isinstance(record, dict):
                records.append(record)
    return records


@dataclass
class Demo:
    """Everything one ``up`` started, in start order, and where it keeps its state."""

    state_dir: Path
    interrupts: Interrupts
    servers: list[Server] = field(default_factory=list)

    def record(self, name: str, pid: int) -> None:
        pids = read_pids(self.state_dir)
        pids[name] = pid
        write_pids(self.state_dir, pids)

    def start(self, name: str, starter: Callable[[], Server]) -> Server:
        with self.interrupts.deferred():
            server = starter()
            self.servers.append(server)
            self.record(name, server.pid)
        return server

    def start_notary(self) -> NotaryBed:
        with self.interrupts.deferred():
            bed = NotaryBed.start(self.state_dir / "notary")
            self.servers += [bed.signer, bed.server]
            self.record("notary-signer", bed.signer.pid)
            self.record("notary-server", bed.server.pid)
        return bed

    def stop(self) -> None:
        """Stop every server this process started, newest first, and reap it."""
        for server in reversed(self.servers):
            if server.alive():
                info(f"stopping {server.name} (pid {server.pid})")
            server.stop(timeout=_STOP_TIMEOUT)
        self.servers.clear()

    def dead(self) -> list[Server]:
        return [s for s in self.servers if not s.alive()]


def push_and_sign(registry_url: str, repo: Repository) -> list[DemoTag]:
    """Push the demo images and sign some of their tags (``targets/releases``, by alice)."""

    def sign(tag: str, image: images.Image) -> str:
        repo.sign_bytes(tag, image.manifest, role=RELEASES, signer=SIGNER)
        info(f"{SIGNER} signed {tag} → {short(image.digest)} ({len(image.manifest)} bytes)")
        return image.digest

    tags: list[DemoTag] = []
    with httpx.Client(base_url=registry_url, timeout=30) as http:

        def push(tag: str, image: images.Image) -> str:
            digest = images.push_image(http, REPO, image, tag)
            kind = "multi-arch index" if image.children else "image"
            info(f"pushed {REPO}:{tag} → {short(digest)} ({kind}, {image.media_type})")
            return digest

        one = images.single_image("demo signed-1.0")
        digest = push("signed-1.0", one)
        tags.append(
            DemoTag(
                "signed-1.0", "signed by alice in targets/releases", digest, sign("signed-1.0", one)
            )
        )

        two = images.multi_arch_image("demo signed-2.0")
        digest = push("signed-2.0", two)
        tags.append(
            DemoTag(
                "signed-2.0",
                "multi-arch index (amd64 + arm64), the index signed",
                digest,
                sign("signed-2.0", two),
            )
        )

        unsigned = images.single_image("demo unsigned", docker=True)
        tags.append(DemoTag("unsigned", "pushed, never signed", push("unsigned", unsigned)))

        original = images.single_image("demo moved: the signed original")
        push("moved", original)
        signed = sign("moved", original)
        replacement = images.single_image("demo moved: an unsigned replacement")
        info("re-pushing moved at a different, unsigned image (the tag-move attack):")
        digest = push("moved", replacement)
        tags.append(
            DemoTag(
                "moved",
                f"signed at {short(signed)}, then re-pushed at {short(digest)}: enforcement "
                f"serves the signed {short(signed)}, never the replacement",
                digest,
                signed,
            )
        )
    return tags


def proxy_config(
    registry: Server, bed: NotaryBed, policy_file: Path, audit_file: Path
) -> dict[str, object]:
    """trustproxy's config (keys of proxy/settings.py only: unknown keys are an error)."""
    return {
        "upstreams": [upstream_config("demo-registry", registry.extra["url"])],
        "trust": {
            "sources": {"notary": {"type": "notary", "url": bed.url, "ca_file": str(bed.ca_file)}}
        },
        "policy_file": str(policy_file),
        "audit": {"sink": "file", "path": str(audit_file)},
        "logging": {"format": "text", "level": "info", "access_log": True},
    }


def missing_tools() -> list[str]:
    missing = [t for t in _TOOLS if shutil.which(t) is None]
    if "docker-registry" in missing and registry_binary() is not None:
        missing.remove("docker-registry")  # upstream's binary name is `registry`
    return missing


def prepare_state_dir(state_dir: Path) -> None:
    """Stop a previous demo that is still running, clear its state, mark the dir as ours."""
    running = anything_running(state_dir)
    if running:
        listed = ", ".join(f"{n} (pid {p})" for n, p in running.items())
        step(f"a previous demo is still running: {listed}; stopping it first")
        stop_recorded(state_dir)
    if state_dir.exists():
        if any(state_dir.iterdir()) and not (state_dir / MARKER_FILE).exists():
            raise SystemExit(
                f"refusing to use {state_dir}: it is not empty and was not created by the demo"
            )
        remove_state(state_dir)
    state_dir.mkdir(parents=True, exist_ok=True)
    (state_dir / MARKER_FILE).write_text("state of `python -m testbed.demo`; safe to delete\n")


def run_up(state_dir: Path, *, wait: bool) -> int:
    missing = missing_tools()
    if missing:
        print(
            f"missing: {', '.join(missing)}. `make demo` installs them "
            "(scripts/install-system-deps.sh, as root), or: sudo apt-get install -y "
            "docker-registry notary skopeo",
            file=sys.stderr,
        )
        return 1
    step(f"tools: {', '.join(_TOOLS)}: found")
    prepare_state_dir(state_dir)
    interrupts = Interrupts()
    interrupts.install()
    demo = Demo(state_dir, interrupts)
    demo.record("demo", os.getpid())
    code = 1  # stays 1 if _up raises something unforeseen (the traceback follows cleanup)
    try:
        code = _up(demo, wait=wait)
    except Interrupted as e:
        say()
        step(f"{e.signame}: stopping everything the demo started")
        code = 0
    except (RuntimeError, OSError, httpx.HTTPError, subprocess.SubprocessError) as e:
        # NotaryCliError, NotaryBedError and start_server's errors are RuntimeErrors that
        # carry the failing command's output or the server's log tail.
        say(f"\ndemo failed: {e}", err=True)
    finally:
        Interrupts.ignore()
        demo.stop()
        if code == 0 and remove_state(state_dir):
            info(f"removed {shown_path(state_dir)}")
        else:
            (state_dir / PIDS_FILE).unlink(missing_ok=True)
            info(f"state and logs kept for a look: {shown_path(state_dir)} (`down` removes them)")
    step("demo stopped" if code == 0 else "demo stopped with errors")
    return code


def _up(demo: Demo, *, wait: bool) -> int:
    state = demo.state_dir

    step("starting docker-registry")
    registry = demo.start(
        "docker-registry", lambda: start_registry(state / "registry", name="docker-registry")
    )
    info(f"listening on {registry.extra['url']} (pid {registry.pid})")

    step("starting notary-signer + notary-server (TLS, in-memory storage)")
    bed = demo.start_notary()
    info(f"notary-signer pid {bed.signer.pid}, notary-server {bed.url} (pid {bed.server.pid})")
    info(f"CA certificate: {shown_path(bed.ca_file)}")

    gun = f"{registry.extra['host']}/{REPO}"
    step(f"notary init {gun} (like the first `docker trust sign`)")
    repo = Repository.create(bed, state / "trust", gun)
    info(f"root + targets keys in {shown_path(repo.owner.trust_dir)}, snapshot key on the server")
    repo.add_signer(SIGNER, RELEASES)
    info(
        f"delegation {RELEASES}: signer {SIGNER} (its own trust dir, like `docker trust "
        f"signer add`)"
    )

    step(f"pushing {REPO} to the registry and signing some tags in notary")
    tags = push_and_sign(registry.extra["url"], repo)

    root_keys = repo.key_ids().root_canonical
    policy = write_demo_policy(
        state / "demo-policy.yaml", registry.extra["host"], bed.url, root_keys
    )
    step(f"writing the policy {shown_path(policy.path)} (Docker's rule, root key pinned)")
    audit_file = state / "trustproxy" / "audit.jsonl"
    audit_file.parent.mkdir(parents=True, exist_ok=True)
    step("starting trustproxy in front of the registry, enforcing the policy")
    config = proxy_config(registry, bed, policy.path, audit_file)
    notation = add_notation(state, registry, config, policy.path)  # testbed/demo_notation.py
    proxy = demo.start("trustproxy", lambda: start_proxy(state / "trustproxy", config))
    host = proxy.extra["host"]
    info(
        f"listening on {proxy.extra['url']} (pid {proxy.pid}), config "
        f"{shown_path(Path(proxy.extra['config']))}"
    )

    reader = cli_for(bed, state / "trust" / "reader")
    step(f"what a client sees through trustproxy (skopeo) vs what notary says ({gun})")
    problems = show_client_view(host, gun, tags, reader, policy)
    show_tag_list(host)
    problems += notation.show(host)
    show_audit(audit_file)
    problems += ["cosign"] * _cosign_part(demo, registry)

    say()
    step("try it yourself:" if wait else "try it yourself (while `make demo` runs):")
    for tag in ("signed-1.0", "unsigned", "moved"):
        info(f"skopeo inspect --tls-verify=false docker://{host}/{REPO}:{tag}")
    info(f"skopeo list-tags --tls-verify=false docker://{host}/{REPO}")
    info(f"curl -s http://{host}/v2/{REPO}/tags/list")
    info(f"curl -s http://{host}/v2/{REPO}/manifests/unsigned   # the 404 and its reason")
    info(f"curl -sI -H 'Accept: {images.OCI_MANIFEST}' http://{host}/v2/{REPO}/manifests/moved")
    info(f"notary -c {shown_path(reader.trust_dir / 'testbed-config.json')} list {gun}")
    info(f"tail -f {shown_path(audit_file)}   # one JSON line per decision")
    info(
        f"direct to the registry, for comparison: skopeo inspect --tls-verify=false "
        f"docker://{registry.extra['host']}/{REPO}:moved"
    )

    if problems:
        step(f"{len(problems)} unexpected result(s), see above")
    if not wait:
        step("--no-wait: stopping everything")
        return 1 if problems else 0

    say()
    step("trustproxy is running in the foreground; Ctrl-C or `make demo-down` stops everything")
    info(f"its log ({shown_path(proxy.log_path)}) follows:")
    follow(proxy, demo)
    return 1  # follow only returns when a server died


def _cosign_part(demo: Demo, registry: Server) -> int:
    from testbed.demo_cosign import run_cosign_demo  # its own file: see testbed/demo_cosign.py

    return run_cosign_demo(demo, registry)


def follow(proxy: Server, demo: Demo) -> None:
    """Copy new lines of the proxy's log to stdout until a server dies (or a signal)."""
    with proxy.log_path.open("rb") as log:
        log.seek(0, os.SEEK_END)
        pending = b""
        while True:
            chunk = log.read(65536)
            if chunk:
                pending += chunk
                *lines, pending = pending.split(b"\n")
                for line in lines:
                    say(line.decode(errors="replace"))
                continue
            dead = demo.dead()
            if dead:
                for s in dead:
                    tail = s.log_tail(10)
                    say(f"\n{s.name} (pid {s.pid}) exited unexpectedly:\n{tail}", err=True)
                return
            time.sleep(0.2)


def run_down(state_dir: Path) -> int:
    if not state_dir.exists():
        step(f"no demo state in {shown_path(state_dir)}: nothing to stop")
        return 0
    step(f"stopping the demo recorded in {shown_path(state_dir / PIDS_FILE)}")
    stop_recorded(state_dir)
    left = anything_running(state_dir)
    if left:
        say(f"still running: {left}", err=True)
        return 1
    # A running `up` removes the state itself when it stops.
    if remove_state(state_dir) or not state_dir.exists():
        step(f"stopped; removed {shown_path(state_dir)}")
    else:
        step(f"stopped; left {shown_path(state_dir)} alone (not created by the demo)")
    return 0


# -- entry point ----------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m testbed.demo",
        description="Start a registry, notary and trustproxy, and show what clients see.",
    )
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--state-dir",
        type=Path,
        default=DEFAULT_STATE_DIR,
        help=f"where configs, keys, logs and pids.json live (default: {DEFAULT_STATE_DIR})",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    up = sub.add_parser(
        "up", parents=[common], help="start everything, show, stay in the foreground"
    )
    up.add_argument(
        "--no-wait",
        action="store_true",
        help="stop everything after the show and exit (default when CI is set and stdin "
        "is not a terminal)",
    )
    sub.add_parser(
        "down",
        parents=[common],
        help="stop what `up` started (by recorded PID) and remove the state",
    )
    return parser


def main(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    env = os.environ if environ is None else environ
    state_dir: Path = args.state_dir.resolve()
    if args.command == "down":
        return run_down(state_dir)
    no_wait = args.no_wait or (bool(env.get("CI")) and not sys.stdin.isatty())
    return run_up(state_dir, wait=not no_wait)


if __name__ == "__main__":
    sys.exit(main())
