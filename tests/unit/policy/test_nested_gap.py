"""The one-segment pitfall: an enforcing ``<prefix>/*`` does not cover ``<prefix>/team/app``,
which falls to a weaker rule. ``policy check`` (load warnings) and ``policy explain`` say so."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import pytest

from proxy.policy.cli_commands import register
from proxy.policy.explain import explain
from proxy.policy.loader import parse_policy
from proxy.policy.matcher import match_rule, nested_gaps
from proxy.policy.model import Policy

KEY = "b" * 64
ENFORCE: dict[str, Any] = {"rootKeys": [KEY]}
AUDIT: dict[str, Any] = {"rootKeys": [KEY], "mode": "audit"}
OFF: dict[str, Any] = {"requireSignatures": False}
ORG = "registry.example.com/myorg"


def policy(rules: dict[str, dict[str, Any]]) -> Policy:
    raw = {"version": "2.0", "trust": {"repositories": rules}}
    return parse_policy(raw, base_dir=Path("/"))


@pytest.mark.parametrize(
    ("rules", "warned"),
    [
        ({f"{ORG}/*": ENFORCE, "*": OFF}, f"{ORG}/*"),
        ({f"{ORG}/*": ENFORCE, "registry.example.com/**": OFF}, f"{ORG}/*"),
        ({f"{ORG}/*": ENFORCE, "registry.example.com/**": AUDIT}, f"{ORG}/*"),
        ({f"{ORG}/*": AUDIT, "*": OFF}, f"{ORG}/*"),
        ({f"{ORG}/**": ENFORCE, "*": OFF}, None),  # the fix
        ({f"{ORG}/*": ENFORCE}, None),  # nested falls to no rule: refused (fail closed)
        ({f"{ORG}/*": ENFORCE, "*": ENFORCE}, None),  # what catches it is as strong
        ({f"{ORG}/*": ENFORCE, f"{ORG}/team/*": OFF, "*": OFF}, None),  # written on purpose
        ({f"{ORG}/*": OFF, "*": OFF}, None),  # nothing promised
        ({f"{ORG}/app": ENFORCE, "*": OFF}, None),  # not a '/*' rule
    ],
    ids=["catch-all-off", "registry-off", "registry-audit", "audit-over-off", "double-star",
         "no-fallback", "strong-fallback", "deliberate-nested-rule", "off-rule", "exact"],
)  # fmt: skip
def test_check_warns_when_nested_repositories_fall_to_a_weaker_rule(
    rules: dict[str, dict[str, Any]], warned: str | None
) -> None:
    p = policy(rules)
    gaps = nested_gaps(p)
    assert [g.rule.pattern for g in gaps] == ([warned] if warned else [])
    if warned is None:
        assert p.warnings == ()
        return
    (gap,) = gaps
    assert p.warnings == (f"trust.repositories[{warned!r}]: {gap.message()}",)
    assert f"did you mean '{ORG}/**'?" in p.warnings[0]
    # The warning tells the truth: the example really falls to that rule.
    assert match_rule(p, gap.example) is gap.falls_to
    assert gap.example == f"{ORG}/team/app"


def test_explain_shows_which_rule_a_nested_repository_falls_to() -> None:
    p = policy({f"{ORG}/*": ENFORCE, "*": OFF})
    lines = explain(p, f"{ORG}/team/app", None)
    assert lines[1] == "rule: '*' (trust.repositories['*'])"
    assert (
        f"  note: '{ORG}/*' (enforce) does not cover this repository ('*' is one path "
        f"segment); did you mean '{ORG}/**'?"
    ) in lines
    covered = explain(p, f"{ORG}/app", None)
    assert any(f"{ORG}/team/app falls to '*' (off)" in line for line in covered)


def test_explain_of_a_double_star_rule_has_no_note() -> None:
    p = policy({f"{ORG}/**": ENFORCE, "*": OFF})
    lines = explain(p, f"{ORG}/team/app", None)
    assert lines[1].startswith(f"rule: '{ORG}/**'")
    assert not any("note:" in line or "NOT covered" in line for line in lines)


def test_policy_check_and_explain_commands_show_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    file = tmp_path / "policy.yaml"
    file.write_text(
        'version: "2.0"\ntrust:\n  repositories:\n'
        f'    "{ORG}/*": {{rootKeys: ["{KEY}"]}}\n'
        '    "*": {requireSignatures: false}\n'
    )

    def run(*argv: str) -> int:
        parser = argparse.ArgumentParser(prog="trustproxy")
        register(parser.add_subparsers())
        args = parser.parse_args(argv)
        code: int = args.handler(args)
        return code

    assert run("policy", "check", str(file)) == 0  # a warning, not an error
    err = capsys.readouterr().err
    assert f"warning: trust.repositories['{ORG}/*']: '*' matches one path segment" in err
    assert f"did you mean '{ORG}/**'?" in err
    assert run("policy", "explain", f"{ORG}/team/app:v1", "--policy", str(file)) == 0
    out = capsys.readouterr().out
    assert "rule: '*'" in out
    assert f"note: '{ORG}/*' (enforce) does not cover this repository" in out
