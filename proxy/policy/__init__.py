"""Signing policy: which repositories are enforced, with which trust source, root of trust
and signers (model), loaded from YAML with path-qualified errors (loader), and matched by
anchored globs on ``<registry>/<repo>`` with the most specific pattern winning (matcher)."""
