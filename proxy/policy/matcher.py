"""Which rule applies to a repository: anchored globs on ``<registry>/<repo>`` (pure).

Pattern grammar (``docs/policy.md`` "Matching"):

* A pattern is matched against the whole ``<registry>/<repo>`` string (the fully qualified
  repository name,
  ``docker.io/library/alpine`` for Docker Hub), split into ``/``-separated segments; the
  first segment is the registry ``host[:port]``.
* ``*`` matches any run of characters within one segment (never a ``/``), ``?`` exactly one
  character within one segment, and a segment that is exactly ``**`` matches one or more
  whole segments. Everything else matches itself literally.
* The pattern ``*`` alone is the catch-all: it matches every repository (a special case,
  since ``*`` otherwise never crosses a ``/``).

Anchoring on segments is the point: Portieris before 0.14.2 let
``attacker.example.com/x.trusted.example.com/app`` match a trusted pattern because its
wildcard was not anchored. Here ``trusted.example.com/*`` can only match a repository whose
first segment *is* ``trusted.example.com``.

Most specific wins: the matching rule with the most literal characters; then the fewest
``**``; then the fewest ``*``; then the fewest ``?``. The loader rejects two patterns that
are equally specific and can match the same repository (with an example), so a loaded
policy never needs a tie-break; for policies built in code, the earlier rule wins.

Matching is linear-time per segment (no regular expressions: a pattern like ``*a*a*a*b``
makes a backtracking regex take seconds on a long, client-chosen repository name), and
results are cached per repository string in a bounded LRU.
"""

from __future__ import annotations

import re
import weakref
from collections import OrderedDict, deque
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Final

from proxy.policy.model import Policy, RepositoryRule
from proxy.reference import NAME_RE

__all__ = [
    "CATCH_ALL",
    "MAX_PATTERN_LENGTH",
    "CompiledPattern",
    "NestedGap",
    "PolicyMatcher",
    "compile_pattern",
    "glob_match",
    "match_rule",
    "nested_gap",
    "nested_gaps",
    "overlap_example",
    "tag_allowed",
    "validate_tag_pattern",
]

CATCH_ALL: Final = "*"
DOUBLE_STAR: Final = "**"
MAX_PATTERN_LENGTH: Final = 512  # registry host + distribution's 255-character name, with room
MAX_TAG_PATTERN_LENGTH: Final = 128  # the tag grammar's own limit
DEFAULT_CACHE_SIZE: Final = 4096

_HOST_GLOB = re.compile(r"^[a-z0-9.:*?-]+\Z")
_HOST = re.compile(r"^[a-z0-9]([a-z0-9.-]*[a-z0-9])?(:\d{1,5})?\Z")  # as settings' registry
_PATH_GLOB = re.compile(r"^[a-z0-9._*?-]+\Z")
_TAG_GLOB = re.compile(r"^[A-Za-z0-9._*?-]+\Z")


# --------------------------------------------------------------------------- glob primitives


def glob_match(pattern: str, text: str) -> bool:
    """``*`` (any run) and ``?`` (one character) against ``text``, anchored at both ends.

    The classic greedy algorithm with one backtrack point: O(len(pattern) * len(text)) in
    the worst case, linear in practice, never exponential. The caller splits on ``/``.
    """
    p = t = 0
    star = -1
    mark = 0
    while t < len(text):
        if p < len(pattern) and pattern[p] == "*":
            star, mark = p, t
            p += 1
        elif p < len(pattern) and (pattern[p] == "?" or pattern[p] == text[t]):
            p += 1
            t += 1
        elif star >= 0:
            # Let the last '*' swallow one more character and retry from there; earlier
            # stars never need to move (any later match they could allow, this one allows).
            mark += 1
            p, t = star + 1, mark
        else:
            return False
    while p < len(pattern) and pattern[p] == "*":
        p += 1
    return p == len(pattern)


def _has_wildcard(text: str) -> bool:
    return "*" in text or "?" in text


@dataclass(frozen=True)
class CompiledPattern:
    """A validated repository pattern, ready to match."""

    pattern: str
    segments: tuple[str, ...]  # "**" marks a multi-segment wildcard
    catch_all: bool
    #: higher sorts first: (literal characters, -"**" count, -"*" count, -"?" count)
    specificity: tuple[int, int, int, int]

    @property
    def exact(self) -> bool:
        return not self.catch_all and not _has_wildcard(self.pattern)

    def matches(self, repository: str) -> bool:
        if self.catch_all:
            return True
        if self.exact:
            return repository == self.pattern
        return self.matches_segments(repository.split("/"))

    def matches_segments(self, parts: Sequence[str]) -> bool:
        if self.catch_all:
            return True
        if DOUBLE_STAR not in self.segments:
            return len(parts) == len(self.segments) and all(
                _segment_match(seg, part) for seg, part in zip(self.segments, parts, strict=True)
            )
        return _match_with_double_star(self.segments, parts)

    def could_match_registry(self, registry: str) -> bool:
        """Whether some repository on ``registry`` (host[:port]) can match this pattern."""
        if self.catch_all or self.segments[0] == DOUBLE_STAR:
            return True
        return _segment_match(self.segments[0], registry)


def _segment_match(seg: str, part: str) -> bool:
    return glob_match(seg, part) if _has_wildcard(seg) else seg == part


def _match_with_double_star(segments: tuple[str, ...], parts: Sequence[str]) -> bool:
    # Memoised over (pattern segment, repository segment): O(P * R^2) segment matches at
    # worst, with P and R bounded by the name length limits.
    memo: dict[tuple[int, int], bool] = {}
    min_rest = [0] * (len(segments) + 1)  # how many parts the rest of the pattern needs
    for i in range(len(segments) - 1, -1, -1):
        min_rest[i] = min_rest[i + 1] + 1

    def go(i: int, j: int) -> bool:
        key = (i, j)
        if key in memo:
            return memo[key]
        if i == len(segments):
            result = j == len(parts)
        elif len(parts) - j < min_rest[i]:
            result = False
        elif segments[i] == DOUBLE_STAR:
            last = len(parts) - min_rest[i + 1]
            result = any(go(i + 1, k) for k in range(j + 1, last + 1))
        else:
            result = _segment_match(segments[i], parts[j]) and go(i + 1, j + 1)
        memo[key] = result
        return result

    return go(0, 0)


def compile_pattern(pattern: str) -> CompiledPattern:
    """Validate and compile a repository pattern. Raises ValueError saying what is wrong."""
    if not isinstance(pattern, str):
        raise ValueError(f"a pattern must be a string, not {type(pattern).__name__}")
    if pattern == CATCH_ALL:
        return CompiledPattern(pattern, (CATCH_ALL,), True, (0, 0, -1, 0))
    if not pattern:
        raise ValueError("empty pattern")
    if len(pattern) > MAX_PATTERN_LENGTH:
        raise ValueError(f"longer than {MAX_PATTERN_LENGTH} characters")
    if pattern != pattern.lower():
        raise ValueError("repository names and registry hosts are lower case")
    segments = tuple(pattern.split("/"))
    if any(not s for s in segments):
        raise ValueError("empty path segment (leading, trailing or double '/')")
    for seg in segments:
        if DOUBLE_STAR in seg and seg != DOUBLE_STAR:
            raise ValueError(f"'**' must be a whole path segment, not part of {seg!r}")
    if len(segments) < 2 and DOUBLE_STAR not in segments:
        raise ValueError(
            "a pattern is <registry>/<repository> (e.g. registry.example.com/myorg/*); "
            'use "*" alone for the catch-all'
        )
    host, rest = segments[0], segments[1:]
    if host != DOUBLE_STAR:
        if not _HOST_GLOB.match(host):
            raise ValueError(f"{host!r} is not a registry host[:port]")
        # Docker's rule for telling a registry from a repository: a dot, a port, or
        # localhost. Without it "myorg/*" would silently mean a registry called "myorg".
        if not _has_wildcard(host) and (
            not _HOST.match(host) or not ("." in host or ":" in host or host == "localhost")
        ):
            raise ValueError(
                f"the first segment must be the registry host[:port], not {host!r} "
                "(Docker Hub is docker.io, e.g. docker.io/library/*)"
            )
    for seg in rest:
        if seg == DOUBLE_STAR:
            continue
        if not _PATH_GLOB.match(seg):
            raise ValueError(f"{seg!r} is not a repository path segment (a-z, 0-9, '.', '_', '-')")
        # A literal segment outside the name grammar can never match: say so now.
        if not _has_wildcard(seg) and not NAME_RE.match(seg):
            raise ValueError(f"{seg!r} can never match a repository name")
    literals = sum(1 for c in pattern if c not in "*?")
    doubles = segments.count(DOUBLE_STAR)
    stars = pattern.count("*") - 2 * doubles
    questions = pattern.count("?")
    return CompiledPattern(pattern, segments, False, (literals, -doubles, -stars, -questions))


# --------------------------------------------------------------------------- ambiguity


_NS = ""  # edge label: any one character but '/'; otherwise the label is that character
_Edges = list[list[tuple[str | None, int]]]  # None: an epsilon edge


def _nfa(segments: tuple[str, ...]) -> tuple[_Edges, int]:
    edges: _Edges = [[]]

    def new() -> int:
        edges.append([])
        return len(edges) - 1

    cur = 0
    for n, seg in enumerate(segments):
        if n:
            nxt = new()
            edges[cur].append(("/", nxt))
            cur = nxt
        if seg == DOUBLE_STAR:  # [^/]+(/[^/]+)*
            inside, after_slash = new(), new()
            edges[cur].append((_NS, inside))
            edges[inside].append((_NS, inside))
            edges[inside].append(("/", after_slash))
            edges[after_slash].append((_NS, inside))
            cur = inside
            continue
        for ch in seg:
            if ch == "*":
                nxt = new()
                edges[cur].append((_NS, cur))
                edges[cur].append((None, nxt))
            else:
                nxt = new()
                edges[cur].append((_NS if ch == "?" else ch, nxt))
            cur = nxt
    return edges, cur


def _closure(edges: _Edges, state: int) -> set[int]:
    seen = {state}
    stack = [state]
    while stack:
        s = stack.pop()
        for label, t in edges[s]:
            if label is None and t not in seen:
                seen.add(t)
                stack.append(t)
    return seen


def _both(a: str, b: str) -> str | None:
    """A character both edge labels accept, or None."""
    if a == _NS and b == _NS:
        return "x"
    if a == _NS:
        return b if b != "/" else None
    if b == _NS:
        return a if a != "/" else None
    return a if a == b else None


def overlap_example(a: CompiledPattern, b: CompiledPattern) -> str | None:
    """A repository string both patterns match, or None when no string matches both.

    Breadth-first search of the product of the two patterns' automata, so the example is a
    shortest one. Used at load time only.
    """
    if a.catch_all or b.catch_all:
        other = b if a.catch_all else a
        return _some_match(other)
    ea, fa = _nfa(a.segments)
    eb, fb = _nfa(b.segments)
    start = (0, 0)
    parent: dict[tuple[int, int], tuple[tuple[int, int], str] | None] = {start: None}
    queue = deque([start])
    while queue:
        pair = queue.popleft()
        ca, cb = _closure(ea, pair[0]), _closure(eb, pair[1])
        if fa in ca and fb in cb:
            out: list[str] = []
            node: tuple[int, int] | None = pair
            while node is not None and parent[node] is not None:
                prev, ch = parent[node]  # type: ignore[misc]
                out.append(ch)
                node = prev
            return "".join(reversed(out))
        for sa in ca:
            for la, ta in ea[sa]:
                if la is None:
                    continue
                for sb in cb:
                    for lb, tb in eb[sb]:
                        if lb is None:
                            continue
                        ch = _both(la, lb)
                        nxt = (ta, tb)
                        if ch is not None and nxt not in parent:
                            parent[nxt] = (pair, ch)
                            queue.append(nxt)
    return None


def _some_match(p: CompiledPattern) -> str:
    if p.catch_all:
        return "registry.example.com/app"
    return "/".join(
        "x" if s == DOUBLE_STAR else s.replace("*", "").replace("?", "x") or "x" for s in p.segments
    )


# --------------------------------------------------------------------------- tags


def validate_tag_pattern(pattern: str) -> None:
    """Raises ValueError unless ``pattern`` is a tag glob (tag characters, ``*``, ``?``)."""
    if not pattern:
        raise ValueError("empty tag pattern")
    if len(pattern) > MAX_TAG_PATTERN_LENGTH:
        raise ValueError(f"longer than {MAX_TAG_PATTERN_LENGTH} characters")
    if not _TAG_GLOB.match(pattern):
        raise ValueError(
            f"{pattern!r} is not a tag pattern (letters, digits, '.', '_', '-', '*', '?')"
        )


def tag_allowed(rule: RepositoryRule, tag: str) -> bool:
    """Whether ``tag`` matches one of the rule's ``allow.paths`` globs (none: any tag).

    Tags have no ``/``, so ``*`` matches any run of characters; the match is anchored and
    case-sensitive (tags are).
    """
    if not rule.tag_patterns:
        return True
    return any(_tag_glob(p, tag) for p in rule.tag_patterns)


@lru_cache(maxsize=DEFAULT_CACHE_SIZE)
def _tag_glob(pattern: str, tag: str) -> bool:
    return glob_match(pattern, tag)


# --------------------------------------------------------------------------- policy


class PolicyMatcher:
    """The rules of one policy, most specific first, with a bounded per-repository cache."""

    def __init__(self, policy: Policy, *, cache_size: int = DEFAULT_CACHE_SIZE) -> None:
        compiled = [(compile_pattern(r.pattern), i, r) for i, r in enumerate(policy.rules)]
        # Most specific first; the index keeps equal ones in file order (the loader rejects
        # equal ones that overlap, so for a loaded policy the order never decides).
        compiled.sort(key=lambda c: (tuple(-x for x in c[0].specificity), c[1]))
        self._ordered: tuple[tuple[CompiledPattern, RepositoryRule], ...] = tuple(
            (c, r) for c, _, r in compiled
        )
        # Exact patterns beat any wildcard matching the same string, so a dict hit is final.
        self._exact: dict[str, RepositoryRule] = {}
        for c, r in self._ordered:
            if c.exact:
                self._exact.setdefault(c.pattern, r)
        self._cache: OrderedDict[str, RepositoryRule | None] = OrderedDict()
        self._cache_size = cache_size

    @property
    def ordered(self) -> tuple[RepositoryRule, ...]:
        """The rules in the order they are tried (most specific first)."""
        return tuple(r for _, r in self._ordered)

    def match(self, repository: str) -> RepositoryRule | None:
        """The most specific rule matching ``<registry>/<repo>``, or None (fail closed)."""
        try:
            rule = self._cache[repository]
        except KeyError:
            pass
        else:
            self._cache.move_to_end(repository)
            return rule
        rule = self._exact.get(repository)
        if rule is None:
            parts = repository.split("/")
            rule = next((r for c, r in self._ordered if c.matches_segments(parts)), None)
        self._cache[repository] = rule
        if len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        return rule

    def matching(self, repository: str) -> list[RepositoryRule]:
        """Every rule matching ``repository``, most specific (the one that applies) first."""
        parts = repository.split("/")
        return [r for c, r in self._ordered if c.matches_segments(parts)]


# One compiled matcher per live Policy object, found by identity (hashing a whole policy on
# every request would cost more than the match). The weak reference guards against id()
# reuse; the finaliser drops the entry when the policy is replaced on reload and collected.
_MATCHERS: dict[int, tuple[weakref.ref[Policy], PolicyMatcher]] = {}


def matcher_for(policy: Policy) -> PolicyMatcher:
    """The (cached) compiled matcher of ``policy``. Raises ValueError on a bad pattern."""
    key = id(policy)
    entry = _MATCHERS.get(key)
    if entry is not None and entry[0]() is policy:
        return entry[1]
    matcher = PolicyMatcher(policy)
    _MATCHERS[key] = (weakref.ref(policy), matcher)
    weakref.finalize(policy, _MATCHERS.pop, key, None)
    return matcher


def match_rule(policy: Policy, repository: str) -> RepositoryRule | None:
    """The rule that applies to ``repository`` (``<registry>/<repo>``, e.g.
    ``127.0.0.1:5000/team/app`` or ``docker.io/library/alpine``), or None when no rule
    matches: the caller refuses the repository (fail closed).

    Raises ValueError only for a policy built in code with an invalid pattern (the loader
    validates every pattern).
    """
    return matcher_for(policy).match(repository)


# ------------------------------------------------------------------ the one-segment pitfall

# How much a mode checks, to tell a weaker rule from a stronger one.
_STRENGTH: Final = {"enforce": 2, "audit": 1, "off": 0}
NESTED_EXAMPLE: Final = ("team", "app")


@dataclass(frozen=True)
class NestedGap:
    """An enforcing rule ``<prefix>/*`` that does not cover ``<prefix>/team/app`` (``*`` is one
    segment), which then falls to a weaker, less specific rule (or to none)."""

    rule: RepositoryRule
    example: str  # a nested repository the rule does not cover
    falls_to: RepositoryRule | None  # what applies to it instead; None: refused
    suggestion: str  # the pattern that covers every depth: <prefix>/**

    @property
    def weakens(self) -> bool:
        """The nested repository gets less checking than the rule promises (not refused)."""
        return (
            self.falls_to is not None and _STRENGTH[self.falls_to.mode] < _STRENGTH[self.rule.mode]
        )

    def message(self) -> str:
        falls = (
            f"{self.falls_to.pattern!r} ({self.falls_to.mode})"
            if self.falls_to is not None
            else "no rule (refused)"
        )
        return (
            f"'*' matches one path segment: {self.example} is not covered and falls to "
            f"{falls}; did you mean {self.suggestion!r}?"
        )


def _example_segment(seg: str) -> str:
    return "x" if seg == DOUBLE_STAR else seg.replace("*", "x").replace("?", "x")


def nested_gap(policy: Policy, rule: RepositoryRule) -> NestedGap | None:
    """For an enforcing or auditing ``rule`` whose pattern ends in ``/*``: a repository one
    level deeper than it reaches, and the rule that applies there instead (None when the rule
    does not end in ``/*`` or a rule at least as strong, or a more specific one, covers it:
    nothing was lost). Raises ValueError only for an invalid pattern built in code."""
    compiled = compile_pattern(rule.pattern)
    if compiled.catch_all or compiled.segments[-1] != CATCH_ALL or not rule.enforced:
        return None
    parent = compiled.segments[:-1]
    example = "/".join([*(_example_segment(s) for s in parent), *NESTED_EXAMPLE])
    falls_to = matcher_for(policy).match(example)
    if falls_to is rule:
        return None
    if falls_to is not None:
        if _STRENGTH[falls_to.mode] >= _STRENGTH[rule.mode]:
            return None
        # A more specific rule for the nested path was written on purpose.
        if compile_pattern(falls_to.pattern).specificity > compiled.specificity:
            return None
    return NestedGap(rule, example, falls_to, "/".join([*parent, DOUBLE_STAR]))


def nested_gaps(policy: Policy) -> list[NestedGap]:
    """Every rule of ``policy`` whose ``/*`` hands nested repositories to a weaker rule."""
    gaps = (nested_gap(policy, r) for r in matcher_for(policy).ordered)
    return [g for g in gaps if g is not None and g.weakens]
