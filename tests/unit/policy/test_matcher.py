"""proxy.policy.matcher: anchored globs on <registry>/<repo>, most specific wins."""

from __future__ import annotations

import gc
from datetime import timedelta

import pytest

from proxy.policy import matcher
from proxy.policy.matcher import (
    PolicyMatcher,
    compile_pattern,
    glob_match,
    match_rule,
    matcher_for,
    overlap_example,
    tag_allowed,
)
from proxy.policy.model import Policy, RepositoryRule


def _rule(pattern: str, tags: tuple[str, ...] = ()) -> RepositoryRule:
    return RepositoryRule(pattern=pattern, mode="off", tag_patterns=tags,
                          expiry_grace=timedelta(0))  # fmt: skip


def _policy(*patterns: str) -> Policy:
    return Policy(rules=tuple(_rule(p) for p in patterns))


@pytest.mark.parametrize(
    ("pattern", "repository", "matches"),
    [
        # Portieris < 0.14.2: an unanchored wildcard matched another host's repository.
        ("trusted.example.com/*", "attacker.example.com/x.trusted.example.com/app", False),
        ("trusted.example.com/**", "attacker.example.com/trusted.example.com/app", False),
        ("trusted.example.com/*", "trusted.example.com.attacker.com/app", False),
        ("trusted.example.com/*", "trusted.example.com/app", True),
        ("registry.example.com/myorg/*", "registry.example.com/myorg/app", True),
        ("registry.example.com/myorg/*", "registry.example.com/myorg/team/app", False),
        ("registry.example.com/myorg/*", "registry.example.com/myorgx/app", False),
        ("registry.example.com/myorg/*", "registry.example.com/myorg", False),
        ("registry.example.com/myorg/*", "evil.com/registry.example.com/myorg/app", False),
        ("registry.example.com/myorg/**", "registry.example.com/myorg/app", True),
        ("registry.example.com/myorg/**", "registry.example.com/myorg/team/app", True),
        ("registry.example.com/myorg/**", "registry.example.com/myorg", False),
        ("registry.example.com/myorg/**", "registry.example.com/myorgx/app", False),
        ("registry.example.com/**/app", "registry.example.com/a/b/app", True),
        ("registry.example.com/**/app", "registry.example.com/a/app", True),
        ("registry.example.com/**/app", "registry.example.com/app", False),  # ** is 1+
        ("registry.example.com/**/app", "registry.example.com/a/b/app2", False),
        ("registry.example.com/**/x/**", "registry.example.com/a/x/b/c", True),
        ("registry.example.com/**/x/**", "registry.example.com/x/b", False),
        ("**/app", "docker.io/library/app", True),
        ("**", "docker.io/library/alpine", True),
        ("127.0.0.1:5000/**", "127.0.0.1:5000/team/app", True),
        ("127.0.0.1:5000/**", "127.0.0.1:5001/team/app", False),
        ("127.0.0.1:5000/**", "127.0.0.1/team/app", False),
        ("127.0.0.1:*/app", "127.0.0.1:5000/app", True),
        ("localhost:5000/app", "localhost:5000/app", True),
        ("*.example.com/app", "registry.example.com/app", True),
        ("*.example.com/app", "a.b.example.com/app", True),  # within the host segment
        ("*.example.com/app", "example.com/app", False),
        ("*.example.com/app", "evil.com/x.example.com/app", False),
        ("docker.io/library/*", "docker.io/library/alpine", True),
        ("docker.io/library/alp?ne", "docker.io/library/alpine", True),
        ("docker.io/library/alp?ne", "docker.io/library/alpne", False),
        ("docker.io/library/alp?ne", "docker.io/library/alp/ne", False),
        ("docker.io/*/alpine", "docker.io/library/alpine", True),
        ("docker.io/team-*", "docker.io/team-a", True),
        ("docker.io/team-*", "docker.io/team-", True),  # * may match nothing
        ("*", "docker.io/library/alpine", True),  # the catch-all crosses '/'
        ("*", "127.0.0.1:5000/a/b/c", True),
        ("registry.example.com/app", "registry.example.com/app", True),
        ("registry.example.com/app", "registry.example.com/app/x", False),
        ("registry.example.com/app", "registry.example.com/ap", False),
    ],
    ids=lambda v: v if isinstance(v, str) else None,
)
def test_pattern_matching(pattern: str, repository: str, matches: bool) -> None:
    assert compile_pattern(pattern).matches(repository) is matches
    # The same through a policy (cache and exact-pattern table included), twice.
    policy = _policy(pattern)
    for _ in range(2):
        rule = match_rule(policy, repository)
        assert (rule is not None) is matches


@pytest.mark.parametrize(
    ("patterns", "repository", "winner"),
    [
        (["*", "registry.example.com/myorg/*"], "registry.example.com/myorg/app",
         "registry.example.com/myorg/*"),
        (["registry.example.com/**", "registry.example.com/myorg/*"],
         "registry.example.com/myorg/app", "registry.example.com/myorg/*"),
        (["registry.example.com/myorg/*", "registry.example.com/myorg/app"],
         "registry.example.com/myorg/app", "registry.example.com/myorg/app"),
        # An exact pattern beats a wildcard that matches the same string with '*' empty.
        (["registry.example.com/myorg/app*", "registry.example.com/myorg/app"],
         "registry.example.com/myorg/app", "registry.example.com/myorg/app"),
        (["registry.example.com/myorg/**", "registry.example.com/*/app"],
         "registry.example.com/myorg/app", "registry.example.com/myorg/**"),
        # Same literal count: fewer '**' wins, then fewer '*', then fewer '?'.
        (["registry.example.com/**/app", "registry.example.com/*/app"],
         "registry.example.com/x/app", "registry.example.com/*/app"),
        (["registry.example.com/a*", "registry.example.com/a?"], "registry.example.com/ab",
         "registry.example.com/a?"),
        (["registry.example.com/*", "*.example.com/app"], "registry.example.com/app",
         "registry.example.com/*"),
        (["*", "**"], "docker.io/library/alpine", "*"),
        (["*"], "anything/at/all", "*"),
    ],
    ids=["specific-beats-catch-all", "one-segment-beats-double-star", "exact-wins",
         "exact-beats-empty-star", "more-literals", "fewer-double-stars", "fewer-stars",
         "host-literal-beats-host-glob", "catch-all-before-double-star", "catch-all-only"],
)  # fmt: skip
def test_most_specific_wins(patterns: list[str], repository: str, winner: str) -> None:
    for order in (patterns, list(reversed(patterns))):  # file order never decides
        rule = match_rule(_policy(*order), repository)
        assert rule is not None
        assert rule.pattern == winner


def test_no_match_is_none() -> None:
    policy = _policy("registry.example.com/myorg/*")
    assert match_rule(policy, "registry.example.com/other/app") is None
    assert match_rule(policy, "registry.example.com/other/app") is None  # cached miss


def test_equal_specificity_falls_back_to_file_order() -> None:
    # The loader rejects this; a policy built in code still gets a deterministic answer.
    a, b = "registry.example.com/a*", "registry.example.com/*b"
    assert match_rule(_policy(a, b), "registry.example.com/ab").pattern == a  # type: ignore[union-attr]
    assert match_rule(_policy(b, a), "registry.example.com/ab").pattern == b  # type: ignore[union-attr]


def test_matching_lists_every_match_most_specific_first() -> None:
    m = PolicyMatcher(_policy("*", "registry.example.com/**", "registry.example.com/myorg/*"))
    assert [r.pattern for r in m.matching("registry.example.com/myorg/app")] == [
        "registry.example.com/myorg/*", "registry.example.com/**", "*"
    ]  # fmt: skip
    assert [r.pattern for r in m.ordered] == [
        "registry.example.com/myorg/*", "registry.example.com/**", "*"
    ]  # fmt: skip


def test_cache_is_bounded() -> None:
    m = PolicyMatcher(_policy("registry.example.com/*"), cache_size=3)
    for i in range(10):
        m.match(f"registry.example.com/app{i}")
    assert len(m._cache) == 3
    assert list(m._cache) == [f"registry.example.com/app{i}" for i in (7, 8, 9)]


def test_compiled_matcher_is_per_policy_object_and_released() -> None:
    policy = _policy("registry.example.com/*")
    assert matcher_for(policy) is matcher_for(policy)
    other = _policy("registry.example.com/*")  # equal, but another object: own matcher
    assert matcher_for(other) is not matcher_for(policy)
    key = id(policy)
    del policy
    gc.collect()
    assert key not in matcher._MATCHERS


def test_adversarial_pattern_still_answers() -> None:
    # A backtracking regex for this pattern runs for minutes on such a name (the suite's
    # timeout would catch a regression); the glob matcher is O(pattern * name).
    c = compile_pattern("registry.example.com/" + "*a" * 12 + "*b")
    assert not c.matches("registry.example.com/" + "a" * 250)
    assert c.matches("registry.example.com/" + "a" * 250 + "b")


@pytest.mark.parametrize(
    ("pattern", "text", "matches"),
    [("v*.*.*", "v1.2.3", True), ("v*.*.*", "v1.2", False), ("v*.*.*", "1.2.3", False),
     ("v*.*.*", "v1.2.3-rc1", True), ("latest", "latest", True), ("latest", "Latest", False),
     ("*", "", True), ("?", "", False), ("a*b*c", "abxbc", True), ("a*b*c", "abxbcx", False),
     ("**", "anything", True)],
    ids=["semver", "two-parts", "no-v", "rc", "literal", "case-sensitive", "star-empty",
         "question-needs-one", "multi-star", "anchored-end", "double-star-is-star"],
)  # fmt: skip
def test_glob_match(pattern: str, text: str, matches: bool) -> None:
    assert glob_match(pattern, text) is matches


def test_tag_allowed() -> None:
    assert tag_allowed(_rule("registry.example.com/*"), "anything")
    rule = _rule("registry.example.com/*", ("v*.*.*", "stable"))
    assert tag_allowed(rule, "v1.2.3")
    assert tag_allowed(rule, "stable")
    assert not tag_allowed(rule, "latest")


@pytest.mark.parametrize(
    ("a", "b", "example"),
    [("registry.example.com/a*", "registry.example.com/*b", "registry.example.com/ab"),
     ("registry.example.com/a*", "registry.example.com/b*", None),
     ("registry.example.com/*/x", "registry.example.com/x/*", "registry.example.com/x/x"),
     ("registry.example.com/**/x", "registry.example.com/x/**", "registry.example.com/x/x"),
     ("registry.example.com/**", "registry.example.com/*", "registry.example.com/x"),
     ("registry.example.com/*", "registry.example.com/*/*", None),
     ("a.com/x", "b.com/x", None), ("a.com/?", "a.com/xy", None)],
    ids=["overlap", "disjoint-prefix", "segments", "double-stars", "double-vs-single",
         "segment-count", "hosts", "question-length"],
)  # fmt: skip
def test_overlap_example(a: str, b: str, example: str | None) -> None:
    found = overlap_example(compile_pattern(a), compile_pattern(b))
    assert found == example
    if found is not None:
        assert compile_pattern(a).matches(found)
        assert compile_pattern(b).matches(found)


def test_could_match_registry() -> None:
    assert compile_pattern("127.0.0.1:5000/**").could_match_registry("127.0.0.1:5000")
    assert not compile_pattern("127.0.0.1:5000/**").could_match_registry("docker.io")
    assert compile_pattern("*.io/**").could_match_registry("docker.io")
    assert compile_pattern("**/app").could_match_registry("docker.io")
    assert compile_pattern("*").could_match_registry("docker.io")
