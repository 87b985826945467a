"""Say in words which rule applies to a repository and what it requires (pure).

``trustproxy policy explain`` prints these lines; they are also what an operator reads to
understand a refusal, so each line says what happens, not only what is configured.
"""

from __future__ import annotations

from datetime import timedelta

from proxy.policy.matcher import compile_pattern, matcher_for, nested_gap, tag_allowed
from proxy.policy.model import Policy, RepositoryRule

__all__ = ["NO_RULE", "explain", "format_grace"]

NO_RULE = "no rule matches: refused (fail closed)"

_MODES = {
    "enforce": "enforce: only tags signed as below are served, at their signed digest; "
    "anything else is refused (404)",
    "audit": "audit: signed tags are served at their signed digest; what enforce would "
    "refuse is served unchecked and logged",
    "off": "off: served unchecked (no signature is looked at)",
}
_DIGESTS = {
    "allow": "allow: pulls by digest are served unchecked (Docker's behaviour: a digest "
    "names its content)",
    "signed": "signed: pulls by digest are served only for signed digests (and manifests "
    "listed in a signed index)",
}


def explain(policy: Policy, repository: str, tag: str | None) -> list[str]:
    """Human-readable lines: the rule that matches ``repository`` (``<registry>/<repo>``)
    and what it requires of ``tag`` (None: of any tag). Raises ValueError only for a policy
    built in code with an invalid pattern."""
    matcher = matcher_for(policy)
    matching = matcher.matching(repository)
    lines = [f"repository: {repository}" + (f", tag {tag}" if tag is not None else "")]
    missed = _missed_by_one_segment(policy, repository, matching[0] if matching else None)
    if not matching:
        lines.append(NO_RULE)
        lines.extend(missed)
        return lines
    rule, shadowed = matching[0], matching[1:]
    where = rule.path or "(built in code)"
    if policy.source_file is not None:
        where += f" in {policy.source_file}"
    lines.append(f"rule: {rule.pattern!r} ({where})")
    if shadowed:
        others = ", ".join(repr(r.pattern) for r in shadowed)
        lines.append(f"  also matches, less specific (not applied): {others}")
    lines.extend(missed)
    gap = nested_gap(policy, rule)
    if gap is not None:
        falls = (
            f"{gap.falls_to.pattern!r} ({gap.falls_to.mode})"
            if gap.falls_to is not None
            else "no rule (refused)"
        )
        lines.append(
            f"  nested repositories are NOT covered ('*' is one path segment): "
            f"{gap.example} falls to {falls}; {gap.suggestion!r} covers every depth"
        )
    lines.append(f"mode: {_MODES[rule.mode]}")
    if not rule.enforced:
        if tag is not None:
            lines.append(
                f"tag {tag}: served unchecked (mode off checks nothing, tag patterns included)"
            )
        return lines
    lines.append(f"source: {rule.source or '(not named: the config must define exactly one)'}")
    if rule.verification is None:
        lines.append("verification: (none: refused)")
    else:
        lines.extend(rule.verification.explain())  # what the source's type checks
    lines.append(_tag_line(rule, tag))
    lines.append(f"digests: {_DIGESTS[rule.digests]}")
    if rule.fallback is not None:
        lines.append(
            f"fallback: {rule.fallback}, only when {rule.source or 'the source'} has no trust "
            "data for a repository or stays unreachable past the expiry grace (audited)"
        )
    lines.append(f"expiry grace: {_grace_line(rule.expiry_grace)}")
    return lines


def _missed_by_one_segment(
    policy: Policy, repository: str, applied: RepositoryRule | None
) -> list[str]:
    """A note for each stronger ``<prefix>/*`` rule that would cover ``repository`` as
    ``<prefix>/**`` but does not, because ``*`` is one segment (the seed users' pitfall)."""
    out = []
    parts = repository.split("/")
    for rule in matcher_for(policy).ordered:
        gap = nested_gap(policy, rule)
        if gap is None or rule is applied or gap.falls_to is not applied:
            continue
        if compile_pattern(gap.suggestion).matches_segments(parts):
            out.append(
                f"  note: {rule.pattern!r} ({rule.mode}) does not cover this repository "
                f"('*' is one path segment); did you mean {gap.suggestion!r}?"
            )
    return out


def _tag_line(rule: RepositoryRule, tag: str | None) -> str:
    patterns = ", ".join(rule.tag_patterns) if rule.tag_patterns else "any tag"
    line = f"tags allowed: {patterns}"
    if tag is not None:
        if tag_allowed(rule, tag):
            line += f" (tag {tag} matches)"
        else:
            line += f" (tag {tag} does NOT match: refused whatever its signatures)"
    return line


def format_grace(grace: timedelta) -> str:
    """``15d``, ``12h``, ``90s``: the largest unit that divides the grace exactly."""
    seconds = int(grace.total_seconds())
    for unit, size in (("w", 7 * 86400), ("d", 86400), ("h", 3600), ("m", 60)):
        if seconds and seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def _grace_line(grace: timedelta) -> str:
    if not grace:
        return "none: expired trust data is never served"
    return (
        f"{format_grace(grace)}: when the trust server cannot be reached, cached "
        "verified data is served up to this long past its expiry"
    )
