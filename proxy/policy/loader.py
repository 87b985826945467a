"""Load the policy file (YAML) into the model, or raise ``ConfigError`` naming the key.

The YAML shape is the one users already write for content trust (``docs/policy.md``)::

    version: "2.0"
    trust:
      repositories:
        "<pattern>":
          requireSignatures, mode, source, rootKeys | rootCerts | rootCA | trustOnFirstUse,
          allowExpiredRootCert, signers: [{role, required}], thresholds: {role: N},
          allow: {paths: [tag globs], expires: 15d}, digests: allow | signed,
          fallback: <a trust source, e.g. a signed snapshot>

Errors carry the key path, e.g.
``trust.repositories['registry.example.com/myorg/*'].signers[1].role: ...``. Unknown keys are
errors everywhere (a misspelt ``requireSignature: false`` must not silently enforce, or a
misspelt ``rootKey`` silently fall back). Loading either returns a whole ``Policy`` or raises:
nothing is half-loaded, so a reload that fails keeps the previous policy.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable, Collection, Iterator, Mapping
from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from typing import Any, Final, TypeVar, cast

import yaml

from proxy.errors import ConfigError
from proxy.policy.matcher import (
    CompiledPattern,
    compile_pattern,
    nested_gaps,
    overlap_example,
    validate_tag_pattern,
)
from proxy.policy.model import DigestMode, Mode, Policy, RepositoryRule, Verification
from proxy.sources.registry import source_type, source_type_names

__all__ = [
    "MAX_POLICY_BYTES",
    "SUPPORTED_VERSIONS",
    "RuleContext",
    "RuleSection",
    "kind_of",
    "load_policy",
    "parse_bool",
    "parse_duration",
    "parse_list",
    "parse_policy",
    "parse_str",
]

MAX_POLICY_BYTES: Final = 1024 * 1024  # a policy is hand-written; anything bigger is a mistake
SUPPORTED_VERSIONS: Final = ("2.0", "2")
MAX_EXPIRY_GRACE: Final = timedelta(days=365)  # more than a year past expiry defeats expiry

_TOP_KEYS = ("version", "trust")
_TRUST_KEYS = ("repositories",)
# A rule's own keys; its source type's keys (its verification part) go between them.
_RULE_KEYS_BEFORE = ("requireSignatures", "mode", "source")
_RULE_KEYS_AFTER = ("allow", "digests", "fallback")
_ALLOW_KEYS = ("paths", "expires")

_SOURCE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}\Z")  # as settings' source names
_DURATION = re.compile(r"^\s*(\d+)\s*(s|m|h|d|w)\s*\Z")
_DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}

T = TypeVar("T")


# --------------------------------------------------------------------------- reading


def load_policy(
    path: Path, *, known_sources: Collection[str] | Mapping[str, str] | None = None
) -> Policy:
    """Read, parse and validate the policy file at ``path``.

    ``known_sources`` are the ``trust.sources`` of the main config (names, or names ->
    types): when given, every ``source`` must be one of them, and an enforcing rule without
    ``source`` uses the only one (or is an error when there are several or none). When None
    (checking a policy on its own) source names are not checked and missing ones stay None.
    A rule's verification keys are those of its source's type; where the type is not known
    (no config, or only names) they are read as the first registered type's, as every policy
    file written before there were several types.

    Relative ``rootCA`` files are resolved against the policy file's folder and read now.
    Raises ConfigError naming the offending key; never returns a partial policy.
    """
    try:
        with path.open("rb") as f:
            data = f.read(MAX_POLICY_BYTES + 1)
    except OSError as e:
        raise ConfigError(str(path), f"cannot read: {e.strerror or e}") from e
    if len(data) > MAX_POLICY_BYTES:
        raise ConfigError("", f"larger than {MAX_POLICY_BYTES} bytes: not a policy file")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError("", f"not UTF-8 text: {e.reason}") from e
    raw = _yaml_load(text)
    return parse_policy(
        raw, base_dir=path.resolve().parent, known_sources=known_sources, source_file=path
    )


class _StrictLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that rejects duplicate mapping keys.

    PyYAML keeps the last of two equal keys silently: two rules for one pattern would have
    one quietly replace the other.
    """


class _DuplicateKeyError(yaml.YAMLError):
    pass


def _construct_mapping(loader: _StrictLoader, node: yaml.MappingNode) -> Iterator[dict[Any, Any]]:
    data: dict[Any, Any] = {}
    yield data  # two-step construction, like SafeConstructor.construct_yaml_map
    seen: dict[Any, int] = {}
    for key_node, _ in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge":
            continue  # "<<" merges; explicit keys overriding merged ones are not duplicates
        key = loader.construct_object(key_node, deep=True)
        line = key_node.start_mark.line + 1
        try:
            first = seen.get(key)
        except TypeError:
            continue  # unhashable: construct_mapping below reports it
        if first is not None:
            raise _DuplicateKeyError(f"line {line}: duplicate key {key!r} (first on line {first})")
        seen[key] = line
    data.update(loader.construct_mapping(node, deep=True))


_StrictLoader.add_constructor(
    yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG,
    _construct_mapping,
)


def _yaml_load(text: str) -> Any:
    try:
        return yaml.load(text, Loader=_StrictLoader)  # noqa: S506 - a SafeLoader subclass
    except _DuplicateKeyError as e:
        raise ConfigError("", str(e)) from e
    except yaml.YAMLError as e:
        raise ConfigError("", f"not valid YAML: {e}") from e


# --------------------------------------------------------------------------- helpers


class RuleSection:
    """A mapping in the policy with its key path; unknown keys are rejected up front so that
    a misspelt key is reported as such, not as whatever its absence causes."""

    def __init__(self, data: Any, path: str, allowed: tuple[str, ...]) -> None:
        if data is None:
            data = {}
        if not isinstance(data, dict):
            raise ConfigError(path, f"must be a mapping, not {kind_of(data)}")
        for key in data:
            if key not in allowed:
                where = self._join(path, str(key))
                close = difflib.get_close_matches(str(key), allowed, n=1)
                hint = f" (did you mean {close[0]}?)" if close else ""
                raise ConfigError(where, f"unknown key{hint}; known keys: {', '.join(allowed)}")
        self.data: dict[str, Any] = data
        self.path = path

    @staticmethod
    def _join(path: str, key: str) -> str:
        return f"{path}.{key}" if path else key

    def sub(self, key: str) -> str:
        return self._join(self.path, key)

    def has(self, key: str) -> bool:
        return self.data.get(key) is not None

    def value(self, key: str, parse: Callable[[Any, str], T], default: T) -> T:
        raw = self.data.get(key)
        return default if raw is None else parse(raw, self.sub(key))

    def required(self, key: str, parse: Callable[[Any, str], T]) -> T:
        raw = self.data.get(key)
        if raw is None:
            raise ConfigError(self.sub(key), "is required")
        return parse(raw, self.sub(key))


def kind_of(v: Any) -> str:
    names = {
        dict: "a mapping",
        list: "a list",
        str: "a string",
        bool: "a boolean",
        int: "a number",
        float: "a number",
    }
    return "nothing" if v is None else names.get(type(v), type(v).__name__)


def parse_str(v: Any, path: str) -> str:
    if not isinstance(v, str):
        raise ConfigError(path, f"must be a string, not {kind_of(v)}")
    return v


def parse_bool(v: Any, path: str) -> bool:
    if not isinstance(v, bool):
        raise ConfigError(path, f"must be true or false, not {v!r}")
    return v


def parse_list(v: Any, path: str) -> list[Any]:
    if not isinstance(v, list):
        raise ConfigError(path, f"must be a list, not {kind_of(v)}")
    return v


def _mode(v: Any, path: str) -> Mode:
    # YAML 1.1 (PyYAML) reads an unquoted `off` as false: `mode: off` must still mean off.
    if v is False:
        return "off"
    if v not in ("enforce", "audit", "off"):
        raise ConfigError(path, f"must be one of enforce, audit, off, not {v!r}")
    return cast(Mode, v)


def _digests(v: Any, path: str) -> DigestMode:
    if v not in ("allow", "signed"):
        raise ConfigError(path, f"must be allow or signed, not {v!r}")
    return cast(DigestMode, v)


def _version(v: Any, path: str) -> str:
    # `version: 2.0` unquoted is a float in YAML; accept it as what the user meant.
    text = str(v) if isinstance(v, str | int | float) and not isinstance(v, bool) else None
    if text not in SUPPORTED_VERSIONS:
        raise ConfigError(path, f'unsupported policy version {v!r}: use version: "2.0"')
    return "2.0"


def _source(v: Any, path: str) -> str:
    name = parse_str(v, path)
    if not _SOURCE_NAME.match(name):
        raise ConfigError(path, f"not a trust source name: {name!r}")
    return name


def parse_duration(v: Any, path: str) -> timedelta:
    """``0`` or a whole number with a unit: ``30s``, ``15m``, ``12h``, ``15d``, ``2w``.

    A unit is required (except for 0) because a bare ``15`` reads as days to some and as
    seconds to others. Raises ConfigError.
    """
    if v == 0 and not isinstance(v, bool):
        return timedelta(0)
    m = _DURATION.match(v) if isinstance(v, str) else None
    if m is None:
        raise ConfigError(
            path, f"not a duration (0, or a number with s, m, h, d or w, e.g. 15d): {v!r}"
        )
    seconds = int(m.group(1)) * _DURATION_UNITS[m.group(2)]
    if seconds > MAX_EXPIRY_GRACE.total_seconds():
        raise ConfigError(path, f"at most {MAX_EXPIRY_GRACE.days}d: {v!r}")
    return timedelta(seconds=seconds)


# --------------------------------------------------------------------------- parsing


class RuleContext:
    """What parsing a rule may need beyond the rule: the policy's folder (relative files),
    the config's sources (name -> type, when known) and where warnings go."""

    def __init__(
        self, base_dir: Path, known_sources: Collection[str] | Mapping[str, str] | None
    ) -> None:
        self.base_dir = base_dir
        self.known_sources = None if known_sources is None else tuple(known_sources)
        self.source_types: Mapping[str, str] = (
            dict(known_sources) if isinstance(known_sources, Mapping) else {}
        )
        self.warnings: list[str] = []

    def type_of(self, source: str | None) -> str:
        """The registry type a rule naming ``source`` is read as (see load_policy)."""
        found = self.source_types.get(source) if source is not None else None
        return found if found is not None else source_type_names()[0]


def parse_policy(
    raw: Any,
    *,
    base_dir: Path,
    known_sources: Collection[str] | Mapping[str, str] | None = None,
    source_file: Path | None = None,
) -> Policy:
    """Validate a policy tree (as YAML-loaded) and build the model. Raises ConfigError.

    ``base_dir`` resolves relative ``rootCA`` files; ``known_sources`` as for load_policy.
    """
    if not isinstance(raw, dict):
        what = "empty" if raw is None else f"{kind_of(raw)}"
        raise ConfigError("", f"the policy must be a mapping at the top level, not {what}")
    top = RuleSection(raw, "", _TOP_KEYS)
    version = top.required("version", _version)
    trust = RuleSection(top.data.get("trust"), "trust", _TRUST_KEYS)
    if "repositories" not in trust.data:
        raise ConfigError("trust.repositories", "is required (a mapping of pattern -> rule)")
    repos_raw = trust.data["repositories"]
    if repos_raw is None:
        repos_raw = {}
    if not isinstance(repos_raw, dict):
        raise ConfigError("trust.repositories", f"must be a mapping, not {kind_of(repos_raw)}")
    ctx = RuleContext(base_dir, known_sources)
    rules: list[RepositoryRule] = []
    compiled: list[CompiledPattern] = []
    for pattern, body in repos_raw.items():
        path = f"trust.repositories[{pattern!r}]"
        if not isinstance(pattern, str):
            raise ConfigError(path, f"a pattern must be a string, not {kind_of(pattern)}")
        try:
            compiled.append(compile_pattern(pattern))
        except ValueError as e:
            raise ConfigError(path, f"bad pattern: {e}") from e
        rules.append(_parse_rule(pattern, body, path, ctx))
    _check_ambiguity(compiled, rules)
    if not rules:
        ctx.warnings.append("trust.repositories is empty: every repository is refused")
    policy = Policy(rules=tuple(rules), source_file=source_file, version=version)
    # Seed users write `myorg/*` meaning "all of myorg"; when a weaker rule catches what is
    # nested below it, say so at every load (policy check, serve, reload).
    ctx.warnings.extend(f"{g.rule.path}: {g.message()}" for g in nested_gaps(policy))
    return replace(policy, warnings=tuple(ctx.warnings))


def _parse_rule(pattern: str, body: Any, path: str, ctx: RuleContext) -> RepositoryRule:
    # The source decides which verification keys the rule may have: read it first (the
    # unknown-key check below then names the keys of that source's type).
    named = body.get("source") if isinstance(body, dict) else None
    entry = source_type(ctx.type_of(named if isinstance(named, str) else None))
    node = RuleSection(body, path, (*_RULE_KEYS_BEFORE, *entry.rule_keys, *_RULE_KEYS_AFTER))
    require = node.value("requireSignatures", parse_bool, None)
    written_mode = node.value("mode", _mode, None)
    mode: Mode
    if require is False:
        if written_mode in ("enforce", "audit"):
            raise ConfigError(
                node.sub("mode"),
                f"{written_mode} contradicts requireSignatures: false (which means mode off)",
            )
        mode = "off"
    else:
        mode = written_mode or "enforce"  # fail closed: a rule enforces unless told not to
        if require is True and mode == "off":
            ctx.warnings.append(
                f"{node.sub('mode')}: off, so requireSignatures: true has no "
                "effect (nothing is checked)"
            )

    source = _resolve_source(node, mode, ctx)
    if source is not None and source in ctx.source_types:
        entry = source_type(ctx.type_of(source))  # the only one, when not named
    verification = entry.parse_rule(node, mode, ctx)
    allow = RuleSection(node.data.get("allow"), node.sub("allow"), _ALLOW_KEYS)
    tag_patterns = _tag_patterns(allow)
    grace = allow.value("expires", parse_duration, timedelta(0))
    digests: DigestMode = node.value("digests", _digests, "allow")
    fallback, fallback_verification = _fallback(node, mode, source, ctx)
    return RepositoryRule(
        pattern=pattern,
        mode=mode,
        source=source,
        verification=verification,
        tag_patterns=tag_patterns,
        expiry_grace=grace,
        digests=digests,
        fallback=fallback,
        fallback_verification=fallback_verification,
        path=node.path,
    )


def _fallback(
    node: RuleSection, mode: Mode, source: str | None, ctx: RuleContext
) -> tuple[str | None, Verification | None]:
    """``fallback: <source>``: a source whose own data is its authority (its type has no
    verification keys in rules: a signed trust snapshot), other than the rule's."""
    fallback = node.value("fallback", _source, None)
    if fallback is None:
        return None, None
    where = node.sub("fallback")
    if fallback == source:
        raise ConfigError(where, f"{fallback!r} is the rule's own source: name another one")
    if mode == "off":
        ctx.warnings.append(f"{where}: mode off, so the fallback is never asked")
    known = ctx.known_sources
    if known is not None and fallback not in known:
        defined = ", ".join(sorted(known)) if known else "none"
        raise ConfigError(
            where, f"unknown trust source {fallback!r} (the config's trust.sources: {defined})"
        )
    typ = ctx.source_types.get(fallback)
    if typ is None:
        return fallback, None  # its type is checked when the config is known (serve knows it)
    entry = source_type(typ)
    if entry.rule_keys:
        raise ConfigError(
            where,
            f"{fallback!r} is a {entry.title} source, whose rules need keys of their own: a "
            "fallback must be a source that is its own authority (a signed trust snapshot)",
        )
    return fallback, entry.parse_rule(RuleSection({}, where, ()), mode, ctx)


def _resolve_source(node: RuleSection, mode: Mode, ctx: RuleContext) -> str | None:
    source = node.value("source", _source, None)
    known = ctx.known_sources
    if known is None:
        return source  # checked when the config is known (serve always knows it)
    if source is not None:
        if source not in known:
            defined = ", ".join(sorted(known)) if known else "none"
            raise ConfigError(
                node.sub("source"),
                f"unknown trust source {source!r} (the config's trust.sources: {defined})",
            )
        return source
    if mode == "off":
        return None
    if len(known) == 1:
        return known[0]  # the only source: no need to name it
    if not known:
        raise ConfigError(
            node.sub("source"),
            f"mode {mode} needs a trust source, and the config defines no trust.sources",
        )
    raise ConfigError(
        node.sub("source"),
        f"is required: the config defines several trust sources ({', '.join(sorted(known))})",
    )


def _tag_patterns(allow: RuleSection) -> tuple[str, ...]:
    items: list[Any] = allow.value("paths", parse_list, [])
    out: list[str] = []
    for i, item in enumerate(items):
        path = f"{allow.sub('paths')}[{i}]"
        text = parse_str(item, path)
        try:
            validate_tag_pattern(text)
        except ValueError as e:
            raise ConfigError(path, str(e)) from e
        out.append(text)
    return tuple(out)


def _check_ambiguity(compiled: list[CompiledPattern], rules: list[RepositoryRule]) -> None:
    """Reject two patterns that are equally specific and match a common repository: which
    one applies would depend on their order in the file, which nobody reading it sees."""
    groups: dict[tuple[int, int, int, int], list[int]] = {}
    for i, c in enumerate(compiled):
        groups.setdefault(c.specificity, []).append(i)
    for members in groups.values():
        for n, j in enumerate(members):
            for i in members[:n]:
                example = overlap_example(compiled[i], compiled[j])
                if example is not None:
                    raise ConfigError(
                        rules[j].path,
                        f"as specific as {rules[i].pattern!r} and both match e.g. "
                        f"{example!r}: make one of them more specific (see docs/policy.md, "
                        "'Most specific wins')",
                    )
