"""``policy check`` / ``policy explain``: output and exit codes, through ``register``."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import pytest

from proxy.policy.cli_commands import parse_image_ref, register
from proxy.settings import ENV_PREFIX

CONFIG_DIR = Path(__file__).resolve().parents[3] / "config"
KEY_A = "a" * 64

CONFIG = """\
server:
  listen: 127.0.0.1:8443
upstreams:
  - name: internal
    url: http://127.0.0.1:5000
    registry: 127.0.0.1:5000
trust:
  sources:
    notary:
      type: notary
      url: https://127.0.0.1:4443
policy_file: policy.yaml
"""

POLICY = f"""\
version: "2.0"
trust:
  repositories:
    "127.0.0.1:5000/team/**":
      rootKeys: ["{KEY_A}"]
      allow:
        paths: ["v*"]
    "*":
      requireSignatures: false
"""


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith(ENV_PREFIX):
            monkeypatch.delenv(name)


@pytest.fixture
def files(tmp_path: Path) -> tuple[Path, Path]:
    config, policy = tmp_path / "trustproxy.yaml", tmp_path / "policy.yaml"
    config.write_text(CONFIG)
    policy.write_text(POLICY)
    return config, policy


def _run(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="trustproxy")
    register(parser.add_subparsers())
    args = parser.parse_args(argv)
    code: int = args.handler(args)
    return code


@pytest.mark.parametrize(
    ("argv", "words"),
    [(["policy"], ["check", "explain"]),
     (["policy", "check"], ["FILE", "--config", "path-qualified", "Exit 0 when valid"]),
     (["policy", "explain"], ["IMAGE_REF", "--policy", "--config", "docker.io/library/alpine",
                              "Exit 0 when a rule matches"])],
    ids=["policy", "check", "explain"],
)  # fmt: skip
def test_help(argv: list[str], words: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        _run(*argv, "--help")
    assert info.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    for word in words:
        assert word in text


def test_policy_without_command_prints_help(capsys: pytest.CaptureFixture[str]) -> None:
    assert _run("policy") == 2
    assert "usage: trustproxy policy" in capsys.readouterr().out


def test_check_ok(files: tuple[Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    config, policy = files
    assert _run("policy", "check", str(policy), "--config", str(config)) == 0
    out, err = capsys.readouterr()
    assert out.splitlines() == [
        f"{policy}: OK — 2 rules, most specific first:",
        "  127.0.0.1:5000/team/** → enforce (source notary; pinned root keys; Docker's rule; "
        "tags v*)",
        "  * → off",
    ]
    assert err == ""


def test_check_without_config_notes_unchecked_sources(
    files: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    assert _run("policy", "check", str(files[1])) == 0
    out, err = capsys.readouterr()
    assert "127.0.0.1:5000/team/** → enforce (pinned root keys" in out
    assert "trust source names were not checked" in err


def test_check_warns_about_unreachable_rules_and_uncovered_registries(
    files: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    config, policy = files
    policy.write_text(f'version: "2.0"\ntrust:\n  repositories:\n'
                      f'    "registry.example.com/*":\n      rootKeys: ["{KEY_A}"]\n')  # fmt: skip
    assert _run("policy", "check", str(policy), "--config", str(config)) == 0
    out, err = capsys.readouterr()
    assert "matches no upstream registry of the config (127.0.0.1:5000)" in err
    assert "no rule can match registry 127.0.0.1:5000" in err
    assert 'no "*" rule: repositories no rule matches are refused' in out


@pytest.mark.parametrize(
    ("policy_text", "message"),
    [
        (POLICY.replace("allow:", "alow:"),
         "trust.repositories['127.0.0.1:5000/team/**'].alow: unknown key (did you mean allow?)"),
        (POLICY.replace('rootKeys: ["' + KEY_A + '"]', "mode: audit"),
         "trust.repositories['127.0.0.1:5000/team/**']: mode audit needs a root of trust"),
        (POLICY.replace("rootKeys:", "source: other\n      rootKeys:"),
         "trust.repositories['127.0.0.1:5000/team/**'].source: unknown trust source 'other'"),
        ("version: [", "not valid YAML"),
    ],
    ids=["unknown-key", "no-root", "unknown-source", "not-yaml"],
)  # fmt: skip
def test_check_errors(
    policy_text: str, message: str, files: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    config, policy = files
    policy.write_text(policy_text)
    assert _run("policy", "check", str(policy), "--config", str(config)) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert err.startswith(f"{policy}: ")
    assert message in err


def test_check_missing_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "nope.yaml"
    assert _run("policy", "check", str(missing)) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"{missing}: cannot read")
    assert err.count(str(missing)) == 1


def test_check_bad_config(files: tuple[Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    config, policy = files
    config.write_text("upstreams: []\n")
    assert _run("policy", "check", str(policy), "--config", str(config)) == 1
    assert "upstreams: at least one upstream is required" in capsys.readouterr().err


def test_shipped_policies_check_against_the_shipped_config(
    capsys: pytest.CaptureFixture[str],
) -> None:
    config = str(CONFIG_DIR / "trustproxy.yaml")
    assert _run("policy", "check", str(CONFIG_DIR / "policy.yaml"), "--config", config) == 0
    assert _run("policy", "check", str(CONFIG_DIR / "policy-example.yaml")) == 0
    out, err = capsys.readouterr()
    assert "127.0.0.1:5000/** → enforce (source notary; trust on first use" in out
    assert "trust on first use" in err


@pytest.mark.parametrize(
    ("image", "code", "expected"),
    [
        ("127.0.0.1:5000/team/app:v1", 0, "tags allowed: v* (tag v1 matches)"),
        ("127.0.0.1:5000/team/app", 0, "rule: '127.0.0.1:5000/team/**'"),
        ("127.0.0.1:5000/team/app:latest", 1, "(tag latest does NOT match"),
        ("alpine:3", 0, "repository: docker.io/library/alpine, tag 3"),
    ],
    ids=["tag-allowed", "no-tag", "tag-refused", "docker-hub-off"],
)
def test_explain_exit_codes(
    image: str, code: int, expected: str, files: tuple[Path, Path],
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    config, _ = files
    assert _run("policy", "explain", image, "--config", str(config)) == code
    assert expected in capsys.readouterr().out


def test_explain_no_rule_is_exit_1(
    files: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    _, policy = files
    policy.write_text(POLICY.replace('    "*":\n      requireSignatures: false\n', ""))
    assert _run("policy", "explain", "alpine", "--policy", str(policy)) == 1
    assert "no rule matches: refused (fail closed)" in capsys.readouterr().out


def test_explain_policy_without_config_and_off_ignores_tag_patterns(
    files: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    _, policy = files
    policy.write_text(POLICY.replace("rootKeys", "mode: off\n      rootKeys"))
    assert _run("policy", "explain", "127.0.0.1:5000/team/app:latest", "--policy",
                str(policy)) == 0  # fmt: skip
    assert "tag latest: served unchecked" in capsys.readouterr().out


def test_explain_config_without_policy_file(
    files: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    config, _ = files
    config.write_text(CONFIG.replace("policy_file: policy.yaml\n", ""))
    assert _run("policy", "explain", "alpine", "--config", str(config)) == 1
    assert "no policy_file" in capsys.readouterr().err


@pytest.mark.parametrize(
    "image",
    ["alpine@sha256:" + "a" * 64, "Alpine", "alpine:bad!tag", "127.0.0.1:5000/-x"],
    ids=["digest", "upper-case", "bad-tag", "bad-name"],
)
def test_explain_bad_ref_is_usage_error(
    image: str, files: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    assert _run("policy", "explain", image, "--policy", str(files[1])) == 2
    assert capsys.readouterr().err.startswith("trustproxy policy explain: ")


@pytest.mark.parametrize(
    ("ref", "repository", "tag"),
    [("alpine", "docker.io/library/alpine", None),
     ("alpine:3.20", "docker.io/library/alpine", "3.20"),
     ("myorg/app:v1", "docker.io/myorg/app", "v1"),
     ("index.docker.io/library/alpine", "docker.io/library/alpine", None),
     ("registry.example.com/myorg/app:v1.2.3", "registry.example.com/myorg/app", "v1.2.3"),
     ("127.0.0.1:5000/team/app", "127.0.0.1:5000/team/app", None),
     ("localhost/app:1", "localhost/app", "1"),
     ("Registry.Example.com/app", "registry.example.com/app", None)],
    ids=["official", "official-tag", "hub-user", "index-docker-io", "registry", "port",
         "localhost", "host-case"],
)  # fmt: skip
def test_parse_image_ref(ref: str, repository: str, tag: str | None) -> None:
    assert parse_image_ref(ref) == (repository, tag)
