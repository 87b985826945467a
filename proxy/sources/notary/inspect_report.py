"""``trustproxy trust inspect``: what a verified Notary repository holds, and why each tag
is or is not acceptable (pure: a loaded :class:`~proxy.sources.notary.tuf.TrustedSet` in, text out).

:func:`build_report` makes one JSON-able dict (the ``--json`` output); :func:`format_pretty`
(like ``docker trust inspect --pretty``) and :func:`format_compact` render it for people.
The JSON contract: ``signed_tags`` lists ``{"tag", "digest", "length", "role", "key_ids"}``
for every tag a ``docker pull`` with content trust accepts (Docker's role rule), whatever
rule was asked for; ``tags`` judges every tag under the requested rule.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from proxy.errors import NotSignedError
from proxy.sources.notary.rules import SigningRule
from proxy.sources.notary.source import acceptable_tags
from proxy.sources.notary.tuf import (
    PinnedRootCerts,
    PinnedRootKeys,
    RootCA,
    RootOfTrust,
    SignedTarget,
    TrustedSet,
    TrustOnFirstUse,
    resolve_docker,
    resolve_required_roles,
    signed_tags,
)
from proxy.sources.notary.tuf.resolve import lookup

__all__ = [
    "TOFU_WARNING",
    "build_error_report",
    "build_report",
    "describe_root_of_trust",
    "format_compact",
    "format_pretty",
]

TOFU_WARNING = "trust on first use: the root is NOT pinned"
REPO_ADMIN = "Repo Admin"  # what Docker calls the targets key holder


def describe_root_of_trust(rot: RootOfTrust) -> dict[str, Any]:
    if isinstance(rot, PinnedRootKeys):
        return {"kind": "root-keys", "pinned": True, "ids": sorted(rot.key_ids)}
    if isinstance(rot, PinnedRootCerts):
        return {"kind": "root-certs", "pinned": True, "ids": sorted(rot.cert_ids)}
    if isinstance(rot, RootCA):
        subjects = [c.subject.rfc4514_string() for c in rot.cas]
        return {"kind": "root-ca", "pinned": True, "cas": subjects}
    if isinstance(rot, TrustOnFirstUse):
        return {"kind": "tofu", "pinned": False, "warning": TOFU_WARNING}
    raise TypeError(f"unknown root of trust {rot!r}")  # pragma: no cover


def _rule_json(rule: SigningRule) -> dict[str, Any]:
    out: dict[str, Any] = {
        "mode": "docker" if rule.required_roles is None else "required-roles",
        "allow_expired_root_cert": rule.allow_expired_root_cert,
    }
    if rule.required_roles is not None:
        out["required_roles"] = [
            {"role": r.name, "min_signatures": r.min_signatures} for r in rule.required_roles
        ]
    return out


def _target_json(t: SignedTarget) -> dict[str, Any]:
    return {
        "tag": t.tag,
        "digest": t.digest,
        "length": t.length,
        "role": t.role,
        "key_ids": list(t.key_ids),
    }


def _signer_names(ts: TrustedSet, role: str) -> list[str]:
    """Who signed ``role``, in Docker's words: "Repo Admin" for targets; for a delegation,
    the other delegations holding a signing key (``docker trust signer add alice`` puts
    alice's key in targets/alice and targets/releases), else the role's own short name."""
    if role == "targets":
        return [REPO_ADMIN]
    signing = set(ts.signers(role))
    names = []
    for other in ts.delegation_names():
        decl = ts.declaration(other)
        if other != role and decl is not None and signing & set(decl.key_ids):
            names.append(other.removeprefix("targets/"))
    return names or [role.removeprefix("targets/")]


def _all_tags(ts: TrustedSet) -> list[str]:
    names: set[str] = set()
    for role in ("targets", *ts.delegated):
        md = ts.targets_role(role)
        if md is not None:
            names.update(md.signed.targets)
    return sorted(names)


def _entries(ts: TrustedSet, tag: str) -> list[dict[str, Any]]:
    out = []
    for role in ("targets", *ts.delegation_names()):
        md = ts.targets_role(role)
        tf = md.signed.targets.get(tag) if md is not None else None
        if tf is None:
            continue
        item: dict[str, Any] = {"role": role, "digest": tf.digest, "length": tf.length}
        if lookup(ts, role, tag) is None:
            item["outside_delegated_paths"] = True
        out.append(item)
    return out


def judge(ts: TrustedSet, tag: str, rule: SigningRule) -> dict[str, Any]:
    """Whether ``tag`` is acceptable under ``rule``, with the reason in words."""
    entries = _entries(ts, tag)
    out: dict[str, Any] = {"tag": tag, "entries": entries}
    try:
        if rule.required_roles is None:
            st = resolve_docker(ts, tag)
        else:
            st = resolve_required_roles(ts, tag, rule.required_roles)
    except NotSignedError as e:
        reason = e.reason
        if rule.required_roles is None and entries:
            others = sorted({e["role"] for e in entries} - {"targets", "targets/releases"})
            if others and not any(e["role"] in ("targets", "targets/releases") for e in entries):
                reason += (
                    f" (signed only in {', '.join(others)}: Docker's rule reads "
                    "targets/releases and targets only)"
                )
        skipped = ts.skipped.get("targets/releases")
        if rule.required_roles is None and skipped is not None:
            reason += f"; targets/releases was skipped: {skipped}"
        out.update(acceptable=False, reason=reason)
        return out
    out.update(acceptable=True, **_target_json(st), signers=_signer_names(ts, st.role))
    disagree = [e for e in entries if e["role"] != st.role and e["digest"] != st.digest]
    if rule.required_roles is None:
        reason = f"signed in {st.role}"
        if st.role == "targets/releases" and any(e["role"] == "targets" for e in disagree):
            reason += " (targets signs another digest: targets/releases wins, as in Docker)"
    else:
        reason = "signed by every required role: " + ", ".join(st.roles)
    out["reason"] = reason
    return out


def build_report(
    ts: TrustedSet,
    *,
    gun: str,
    source: str,
    server: str,
    rule: SigningRule,
    tag: str | None = None,
) -> dict[str, Any]:
    """The whole inspection as a JSON-able dict (see the module docstring)."""
    root = ts.root.signed
    root_keys = []
    for kid in root.roles["root"].key_ids:
        key = root.keys[kid]
        item: dict[str, Any] = {
            "key_id": kid,
            "canonical_key_id": key.canonical_id,
            "key_type": key.key_type,
        }
        cert = key.certificate
        if cert is not None:
            item["subject"] = cert.subject.rfc4514_string()
            item["not_after"] = cert.not_valid_after_utc.isoformat()
        root_keys.append(item)

    def role_keys(role: str) -> dict[str, Any]:
        r = root.roles[role]
        return {"key_ids": list(r.key_ids), "threshold": r.threshold}

    signers = []
    for name in ts.delegation_names():
        decl = ts.declaration(name)
        if decl is None:  # pragma: no cover - names come from loaded parents
            continue
        s: dict[str, Any] = {
            "role": name,
            "name": name.removeprefix("targets/"),
            "key_ids": list(decl.key_ids),
            "threshold": decl.threshold,
            "paths": list(decl.paths),
            "status": ts.status(name),
            "signed_by": list(ts.signers(name)),
        }
        if name in ts.skipped:
            s["error"] = str(ts.skipped[name])
        signers.append(s)

    versions: dict[str, int] = {"root": ts.root.version}
    expires: dict[str, str] = {"root": ts.root.expires.isoformat()}
    for role, md in (("timestamp", ts.timestamp), ("snapshot", ts.snapshot)):
        if md is not None:
            versions[role] = md.version
            expires[role] = md.expires.isoformat()
    for role in ("targets", *ts.delegated):
        tmd = ts.targets_role(role)
        if tmd is not None:
            versions[role] = tmd.version
            expires[role] = tmd.expires.isoformat()

    report: dict[str, Any] = {
        "gun": gun,
        "source": source,
        "server": server,
        "verified": True,
        "reference_time": ts.reference_time.isoformat(),
        "root_of_trust": describe_root_of_trust(ts.root_of_trust),
        "rule": _rule_json(rule),
        "signed_tags": [_target_json(t) for t in signed_tags(ts).values()],
        "acceptable_tags": [_target_json(t) for t in acceptable_tags(ts, rule).values()],
        "tags": [judge(ts, t, rule) for t in _all_tags(ts)],
        "signers": signers,
        "root": {
            "version": ts.root.version,
            "threshold": root.roles["root"].threshold,
            "keys": root_keys,
        },
        "repository_keys": role_keys("targets"),
        "snapshot_keys": role_keys("snapshot"),
        "timestamp_keys": role_keys("timestamp"),
        "versions": versions,
        "expires": expires,
        "warnings": [],
    }
    if ts.expired_root_cert_used:
        report["warnings"].append("the root certificate has expired (allow_expired_root_cert)")
    if not describe_root_of_trust(ts.root_of_trust)["pinned"]:
        report["warnings"].append(TOFU_WARNING)
    if tag is not None:
        report["query"] = judge(ts, tag, rule)
    return report


def build_error_report(
    *, gun: str, source: str, server: str, rule: SigningRule, kind: str, message: str
) -> dict[str, Any]:
    """The ``--json`` answer when the trust data could not be read or verified."""
    return {
        "gun": gun,
        "source": source,
        "server": server,
        "verified": False,
        "root_of_trust": describe_root_of_trust(rule.root_of_trust),
        "rule": _rule_json(rule),
        "error": {"kind": kind, "message": message},
        "signed_tags": [],
    }


def _short(key_id: str) -> str:
    return key_id[:12]  # docker trust inspect --pretty shows 12 hex digits


def _table(rows: Sequence[Sequence[str]]) -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return ["   ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]


def format_pretty(report: dict[str, Any]) -> str:
    """Human form, laid out like ``docker trust inspect --pretty``, plus the verdicts."""
    gun = report["gun"]
    lines: list[str] = []
    query = report.get("query")
    if query is not None:
        lines += [_verdict(query), ""]
    accepted = [t for t in report["tags"] if t["acceptable"]]
    lines.append(f"Signatures for {gun}")
    lines.append("")
    if accepted:
        rows = [("SIGNED TAG", "DIGEST", "SIGNERS")]
        rows += [
            (t["tag"], t["digest"].removeprefix("sha256:"), ", ".join(t["signers"]))
            for t in accepted
        ]
        lines += _table(rows)
    else:
        lines.append(f"No signatures for {gun}")
    refused = [t for t in report["tags"] if not t["acceptable"]]
    if refused:
        lines += ["", f"Tags in the trust data that are NOT acceptable for {gun}", ""]
        lines += _table([("TAG", "WHY"), *((t["tag"], t["reason"]) for t in refused)])
    lines += ["", f"List of signers and their keys for {gun}", ""]
    if report["signers"]:
        rows = [("SIGNER", "KEYS", "STATUS")]
        for s in report["signers"]:
            status = s["status"] + (f": {s['error']}" if "error" in s else "")
            rows.append((s["name"], ", ".join(_short(k) for k in s["key_ids"]), status))
        lines += _table(rows)
    else:
        lines.append(f"No signers for {gun}")
    lines += ["", f"Administrative keys for {gun}", ""]
    repo_keys = ", ".join(_short(k) for k in report["repository_keys"]["key_ids"])
    root_keys = ", ".join(_short(k["canonical_key_id"]) for k in report["root"]["keys"])
    lines.append(f"  Repository Key:\t{repo_keys}")
    lines.append(f"  Root Key:\t{root_keys}")
    lines += ["", _trust_line(report)]
    lines += _warning_lines(report)
    return "\n".join(lines) + "\n"


def format_compact(report: dict[str, Any]) -> str:
    """Short human form: one line per tag."""
    lines: list[str] = []
    query = report.get("query")
    if query is not None:
        lines.append(_verdict(query))
    v = report["versions"]
    lines.append(
        f"{report['gun']}: trust data verified (source {report['source']}, root v{v['root']}, "
        f"targets v{v.get('targets', '?')}, timestamp v{v.get('timestamp', '?')})"
    )
    lines.append(_trust_line(report))
    for t in report["tags"]:
        if t["acceptable"]:
            keys = ",".join(_short(k) for k in t["key_ids"])
            lines.append(f"  {t['tag']}\t{t['digest']}\t{t['length']}\t{t['role']}\t{keys}")
        else:
            lines.append(f"  {t['tag']}\tNOT acceptable: {t['reason']}")
    lines += _warning_lines(report)
    return "\n".join(lines) + "\n"


def _warning_lines(report: dict[str, Any]) -> list[str]:
    # The root-of-trust line already says TOFU; the CLI also warns on stderr.
    return [f"warning: {w}" for w in report["warnings"] if w != TOFU_WARNING]


def _verdict(q: dict[str, Any]) -> str:
    if q["acceptable"]:
        return (
            f"{q['tag']}: acceptable: {q['digest']} ({q['length']} bytes), {q['reason']}, "
            f"signers {', '.join(q['signers'])}"
        )
    return f"{q['tag']}: NOT acceptable: {q['reason']}"


def _trust_line(report: dict[str, Any]) -> str:
    rot = report["root_of_trust"]
    rule = report["rule"]
    mode = (
        "Docker's rule (targets/releases, else targets)"
        if rule["mode"] == "docker"
        else "required roles "
        + ", ".join(f"{r['role']}:{r['min_signatures']}" for r in rule["required_roles"])
    )
    if rot["kind"] == "tofu":
        anchor = TOFU_WARNING.upper()
    elif rot["kind"] == "root-ca":
        anchor = "root certificate must chain to " + "; ".join(rot["cas"])
    else:
        anchor = f"pinned {rot['kind']}: " + ", ".join(_short(i) for i in rot["ids"])
    return f"Root of trust: {anchor}. Rule: {mode}."
