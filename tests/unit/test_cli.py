"""proxy.cli: help texts, `config check` output and exit codes."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from proxy.cli import main
from proxy.settings import ENV_PREFIX

ROOT = Path(__file__).resolve().parents[2]

VALID = """\
server:
  listen: 127.0.0.1:8443
upstreams:
  - name: internal
    url: http://127.0.0.1:5000
    registry: 127.0.0.1:5000
  - name: hub
    url: https://registry-1.docker.io
    registry: docker.io
    prefix: hub
trust:
  sources:
    notary:
      type: notary
      url: https://127.0.0.1:4443
      ca_file: notary-ca.crt
cache:
  redis_url: null
policy_file: policy.yaml
"""


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for name in list(os.environ):
        if name.startswith(ENV_PREFIX):
            monkeypatch.delenv(name)


@pytest.mark.parametrize(
    ("argv", "words"),
    [([], ["serve", "config", ENV_PREFIX]), (["serve"], ["--config", "config file"]),
     (["config"], ["check"]),
     (["config", "check"], ["file", "Validate a config file", "Exit 0 when valid"])],
    ids=["top", "serve", "config", "config-check"],
)  # fmt: skip
def test_help_exits_zero_and_explains(
    argv: list[str], words: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as info:
        main([*argv, "--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: trustproxy")
    text = " ".join(out.split())  # argparse wraps lines to the terminal width
    for word in words:
        assert word in text


@pytest.mark.parametrize(("argv"), [[], ["config"]], ids=["no-command", "config-no-command"])
def test_missing_command_prints_help_and_exits_2(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(argv) == 2
    assert "usage: trustproxy" in capsys.readouterr().out


def test_unknown_command_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["frobnicate"])
    assert info.value.code == 2
    assert "invalid choice" in capsys.readouterr().err


def test_config_check_valid(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "notary-ca.crt").write_text("x")
    (tmp_path / "policy.yaml").write_text("x")
    config = tmp_path / "trustproxy.yaml"
    config.write_text(VALID)
    assert main(["config", "check", str(config)]) == 0
    captured = capsys.readouterr()
    assert captured.err == ""
    assert captured.out.startswith(f"{config}: OK")
    assert "listen 127.0.0.1:8443" in captured.out
    assert "internal (http://127.0.0.1:5000, registry 127.0.0.1:5000)" in captured.out
    assert "hub (https://registry-1.docker.io, registry docker.io, prefix /hub)" in captured.out


def test_config_check_prints_warnings(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "trustproxy.yaml"
    config.write_text(VALID)
    assert main(["config", "check", str(config)]) == 0
    captured = capsys.readouterr()
    warnings = [line for line in captured.err.splitlines() if line.startswith("warning: ")]
    assert len(warnings) == 2
    assert any("trust.sources.notary.ca_file: file not found" in w for w in warnings)
    assert any("policy_file: file not found" in w for w in warnings)
    assert ": OK" in captured.out


@pytest.mark.parametrize(
    ("text", "message"),
    [(VALID.replace("http://127.0.0.1:5000", "127.0.0.1:5000", 1), "upstreams[0].url: not a URL"),
     (VALID + "extra: 1\n", "extra: unknown key"),
     ("server: [\n", "not valid YAML")],
    ids=["bad-url", "unknown-key", "bad-yaml"],
)  # fmt: skip
def test_config_check_invalid(
    tmp_path: Path, text: str, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "trustproxy.yaml"
    config.write_text(text)
    assert main(["config", "check", str(config)]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith(f"{config}: ")
    assert message in captured.err


def test_config_check_applies_environment(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "trustproxy.yaml"
    config.write_text(VALID)
    monkeypatch.setenv("TRUSTPROXY_UPSTREAMS__0__URL", "not-a-url")
    assert main(["config", "check", str(config)]) == 1
    assert "upstreams[0].url: not a URL" in capsys.readouterr().err


def test_config_check_missing_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["config", "check", str(tmp_path / "nope.yaml")]) == 1
    assert "cannot read" in capsys.readouterr().err


def test_serve_with_bad_config_exits_1_before_serving(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "trustproxy.yaml"
    config.write_text("upstreams: []\n")
    assert main(["serve", "--config", str(config)]) == 1
    assert "upstreams: at least one upstream is required" in capsys.readouterr().err


def test_serve_with_an_audit_file_it_cannot_open_exits_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import proxy.observability

    # serve configures the process's logging; a test must not.
    monkeypatch.setattr(proxy.observability, "configure_logging", lambda _settings: None)
    (tmp_path / "audit.log").mkdir()  # a folder where the file should be
    config = tmp_path / "trustproxy.yaml"
    config.write_text(VALID + "audit: {sink: file, path: audit.log}\n")
    assert main(["serve", "--config", str(config)]) == 1
    assert "audit.path: cannot open" in capsys.readouterr().err


def test_policy_commands_are_wired(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["policy", "--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert "check" in out
    assert "explain" in out


def test_python_dash_m_proxy_help() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "proxy", "--help"],
        cwd=ROOT, capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: trustproxy")
    assert "config" in result.stdout
    assert "serve" in result.stdout


def test_serve_with_a_tls_key_it_cannot_read_exits_1_naming_the_file_and_uid(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # A root-owned 0600 key in the container (uid 10001); root reads anything, so the
    # refusal is simulated at open().
    import proxy.observability

    monkeypatch.setattr(proxy.observability, "configure_logging", lambda _settings: None)
    (tmp_path / "tls.crt").write_text("cert")
    (tmp_path / "tls.key").write_text("key")
    real_open = Path.open

    def guarded(self: Path, *args: Any, **kwargs: Any) -> Any:
        if self.name == "tls.key":
            raise PermissionError(13, "Permission denied", str(self))
        return real_open(self, *args, **kwargs)

    monkeypatch.setattr(Path, "open", guarded)
    config = tmp_path / "trustproxy.yaml"
    config.write_text(
        VALID.replace(
            "  listen: 127.0.0.1:8443\n",
            "  listen: 127.0.0.1:8443\n  tls_cert_file: tls.crt\n  tls_key_file: tls.key\n",
        )
    )
    assert main(["serve", "--config", str(config)]) == 1
    err = capsys.readouterr().err
    assert "server.tls_key_file: cannot read" in err, err
    assert "Permission denied" in err
    assert f"uid {os.getuid()}" in err
    assert "0640" in err


def test_a_process_that_only_serves_does_not_load_sigstore_or_the_cli_tools() -> None:
    # What `serve` imports is resident in the master and every worker forked from it.
    code = (
        "import sys\n"
        "from proxy.cli import build_parser\n"
        "import proxy.sources.cosign.entry, proxy.sources.notation.entry\n"
        "build_parser(only='serve')\n"
        "heavy = sorted(m for m in ('sigstore', 'pydantic', 'rich', 'click', 'proxy.doctor',"
        " 'proxy.policy.cli_commands') if m in sys.modules)\n"
        "print(','.join(heavy))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert out.stdout.strip() == ""
