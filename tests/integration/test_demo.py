"""``make demo`` end to end: ``python -m testbed.demo up|down`` as a user runs it, with real
docker-registry, notary-server/-signer, notary CLI, trustproxy and skopeo."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from testbed.demo import PIDS_FILE, is_ours, missing_tools
from testbed.proxy_server import REPO_ROOT

pytestmark = pytest.mark.integration

FOREGROUND = "trustproxy is running in the foreground"
SERVERS = {"docker-registry", "notary-signer", "notary-server", "trustproxy", "trustproxy-cosign"}


@pytest.fixture(autouse=True)
def _tools() -> None:
    missing = missing_tools()
    if missing:
        pytest.skip(f"not installed: {', '.join(missing)} (run `make demo` or `make test`)")


def demo_argv(*args: str) -> list[str]:
    return [sys.executable, "-m", "testbed.demo", *args]


def demo_env() -> dict[str, str]:
    # Without CI set and stdin not a terminal, `up` stays in the foreground.
    return {k: v for k, v in os.environ.items() if k != "CI"}


def table_row(output: str, tag: str) -> str:
    """The row of the "what a client sees" table for ``tag``."""
    rows = [
        line for line in output.splitlines() if re.match(rf"^ +{re.escape(tag)} +(sig|not)", line)
    ]
    assert len(rows) == 1, output
    return rows[0]


def table_cells(output: str, tag: str) -> list[str]:
    """The cells of ``tag``'s row: tag, notary says, registry has, via proxy, expected."""
    cells = re.split(r" {2,}", table_row(output, tag).strip())
    assert len(cells) == 5, cells
    return cells


def started_pids(output: str) -> dict[str, int]:
    """name → pid from the "stopping <name> (pid N)" lines of a demo that stopped itself."""
    return {m[0]: int(m[1]) for m in re.findall(r"stopping ([\w-]+) \(pid (\d+)\)", output)}


def test_up_no_wait_shows_tags_and_leaves_nothing_running(tmp_path: Path) -> None:
    state = tmp_path / "demo"
    done = subprocess.run(
        demo_argv("up", "--no-wait", "--state-dir", str(state)),
        cwd=REPO_ROOT,
        env=demo_env(),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    assert "UNEXPECTED" not in output
    assert "not implemented" not in output

    # The policy: Docker's rule on <registry>/demo/* with the repository's root key pinned.
    enforced = re.search(r"==> enforced by (\S+): (.*)", output)
    assert enforced is not None, output
    assert enforced.group(1).endswith("demo-policy.yaml")
    assert "mode enforce" in enforced.group(2)
    assert "Docker's rule (targets/releases, then targets)" in enforced.group(2)
    assert re.search(r"root key [0-9a-f]{12} pinned", enforced.group(2)), output

    # Signed tags: exactly the signed digest through the proxy, whatever the registry holds.
    for tag in ("signed-1.0", "signed-2.0", "moved"):
        _, notary, registry, proxy, expects = table_cells(output, tag)
        signed = notary.removeprefix("signed ")
        assert notary.startswith("signed sha256:"), output
        assert proxy.startswith(f"{signed} (the signed digest"), output
        assert expects == f"{signed} (signed)", output
    _, notary, registry, proxy, _ = table_cells(output, "moved")
    assert registry != notary.removeprefix("signed "), output  # the tag was re-pushed...
    assert proxy.endswith("not the registry's)"), output  # ...and is served as signed
    # Unsigned: 404 with the reason.
    _, notary, _, proxy, expects = table_cells(output, "unsigned")
    assert notary == "not signed"
    assert proxy == "404 manifest unknown", output
    assert expects == "404 (not signed)"
    refusal = re.search(r"refused by the proxy: (.*)", output)
    assert refusal is not None, output
    assert "not signed" in refusal.group(1), output

    # The tag list through the proxy shows signed tags only.
    listed = re.search(r"==> skopeo list-tags .*\n +(.*)\n", output)
    assert listed is not None, output
    assert set(listed.group(1).split(", ")) == {"signed-1.0", "signed-2.0", "moved"}, output
    # The audit records of those requests.
    audit = output[output.index("trustproxy's audit records") :]
    assert re.search(r"manifest +unsigned +denied", audit), output
    assert re.search(r"manifest +moved +served_signed +served sha256:", audit), output
    assert "skopeo inspect --tls-verify=false docker://127.0.0.1:" in output
    # The Notation-signed repository beside it (testbed/demo_notation.py).
    assert re.search(r"demo/notation-app:signed-1.0 -> served sha256:", output), output
    assert "demo/notation-app:unsigned -> refused by the proxy: manifest unknown: no Notation" in (
        output
    ), output

    # The Cosign part (testbed/demo_cosign.py): signed, unsigned, and a moved tag under both
    # onUnsignedTag choices.
    cosign = output[output.index("==> Cosign: what a client sees") :]
    assert re.search(r"cosign/app:signed-1.0 +sha256:[0-9a-f]{12} \(signed\)", cosign), output
    assert re.search(r"cosign/app:unsigned +404: no cosign signature for sha256:", cosign)
    moved = cosign[cosign.index("re-pushed upstream") :]
    assert re.search(r"cosign/app:moved +404: no cosign signature", moved), output
    assert re.search(r"cosign/keep:moved +sha256:[0-9a-f]{12} \(signed\) .*lastSigned", moved)

    pids = started_pids(output)
    assert set(pids) == SERVERS, output
    assert not [n for n, pid in pids.items() if is_ours(n, pid, state)]
    assert not state.exists()


@dataclass
class RunningDemo:
    process: subprocess.Popen[str]
    state: Path
    reader: threading.Thread
    lines: list[str] = field(default_factory=list)

    def output(self) -> str:
        return "".join(self.lines)

    def wait(self, timeout: float = 60) -> int:
        """Wait for ``up`` to exit and for its last output line to be collected."""
        code = self.process.wait(timeout=timeout)
        self.reader.join(timeout=10)
        return code

    def recorded(self) -> dict[str, int]:
        """pids.json, checked: every process the demo starts, each alive and ours."""
        pids: dict[str, int] = json.loads((self.state / PIDS_FILE).read_text())
        assert set(pids) == {"demo"} | SERVERS, pids
        assert all(is_ours(name, pid, self.state) for name, pid in pids.items()), pids
        return pids


@pytest.fixture
def running_demo(tmp_path: Path) -> Iterator[RunningDemo]:
    """``up`` in the foreground (no --no-wait), its output collected by a thread; yields once
    the foreground line is printed. Whatever a test leaves running is stopped afterwards."""
    state = tmp_path / "demo"
    ready = threading.Event()
    with subprocess.Popen(
        demo_argv("up", "--state-dir", str(state)),
        cwd=REPO_ROOT,
        env=demo_env(),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    ) as up:
        assert up.stdout is not None
        stdout = up.stdout
        lines: list[str] = []

        def collect() -> None:
            for line in stdout:
                lines.append(line)
                if FOREGROUND in line:
                    ready.set()
            ready.set()  # EOF: up exited before reaching the foreground

        reader = threading.Thread(target=collect, daemon=True)
        reader.start()
        demo = RunningDemo(up, state, reader, lines)
        try:
            assert ready.wait(timeout=90), demo.output()
            assert up.poll() is None, demo.output()
            yield demo
        finally:
            if up.poll() is None:
                subprocess.run(
                    demo_argv("down", "--state-dir", str(state)),
                    cwd=REPO_ROOT,
                    capture_output=True,
                    timeout=120,
                    check=False,
                )
            demo.wait()


def test_down_stops_a_running_demo(running_demo: RunningDemo) -> None:
    pids = running_demo.recorded()
    state = running_demo.state

    down = subprocess.run(
        demo_argv("down", "--state-dir", str(state)),
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert down.returncode == 0, down.stdout + down.stderr
    assert f"stopping demo (pid {pids['demo']})" in down.stdout
    assert "stopped; removed" in down.stdout
    assert running_demo.wait() == 0, running_demo.output()
    assert "SIGTERM: stopping everything the demo started" in running_demo.output()
    assert not [n for n, pid in pids.items() if is_ours(n, pid, state)]
    assert not state.exists()


def test_ctrl_c_stops_everything(running_demo: RunningDemo) -> None:
    pids = running_demo.recorded()

    running_demo.process.send_signal(signal.SIGINT)
    assert running_demo.wait() == 0, running_demo.output()
    assert "SIGINT: stopping everything the demo started" in running_demo.output()
    assert not [n for n, pid in pids.items() if is_ours(n, pid, running_demo.state)]
    assert not running_demo.state.exists()
