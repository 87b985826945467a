"""WWW-Authenticate parsing, formatting and the passthrough rewrite."""

from __future__ import annotations

import pytest

from proxy.errors import BadDataError, UnknownRepositoryError
from proxy.upstream.challenge import (
    MAX_HEADER_LENGTH,
    Challenge,
    Scope,
    format_challenge,
    format_www_authenticate,
    map_scope_repositories,
    parse_scope,
    parse_scopes,
    parse_www_authenticate,
    rewrite_bearer_challenge,
    rewrite_client_scope,
)

HUB = (
    'Bearer realm="https://auth.docker.io/token",service="registry.docker.io",'
    'scope="repository:library/alpine:pull"'
)

GOOD: list[tuple[str, str, tuple[Challenge, ...]]] = [
    (
        "docker-hub",
        HUB,
        (
            Challenge(
                "Bearer",
                (
                    ("realm", "https://auth.docker.io/token"),
                    ("service", "registry.docker.io"),
                    ("scope", "repository:library/alpine:pull"),
                ),
            ),
        ),
    ),
    (
        "basic",
        'Basic realm="Registry Realm"',
        (Challenge("Basic", (("realm", "Registry Realm"),)),),
    ),
    ("scheme-only", "Negotiate", (Challenge("Negotiate"),)),
    ("scheme-trailing-space", "Negotiate  ", (Challenge("Negotiate"),)),
    ("token68", "Newauth abc==", (Challenge("Newauth", token68="abc=="),)),
    # RFC 7235: "realm=" alone is a token68, not a param with an empty value.
    ("token68-looks-like-param", "Bearer realm=", (Challenge("Bearer", token68="realm="),)),
    ("token68-no-padding", "Newauth a.b/c+d~e", (Challenge("Newauth", token68="a.b/c+d~e"),)),
    (
        "two-challenges",
        'Basic realm="a", Bearer realm="b",service="s"',
        (
            Challenge("Basic", (("realm", "a"),)),
            Challenge("Bearer", (("realm", "b"), ("service", "s"))),
        ),
    ),
    (
        "rfc7235-example",
        'Newauth realm="apps", type=1, title="Login to \\"apps\\"", Basic realm="simple"',
        (
            Challenge("Newauth", (("realm", "apps"), ("type", "1"), ("title", 'Login to "apps"'))),
            Challenge("Basic", (("realm", "simple"),)),
        ),
    ),
    (
        "token68-then-challenge",
        "Newauth abc=, Basic realm=x",
        (Challenge("Newauth", token68="abc="), Challenge("Basic", (("realm", "x"),))),
    ),
    (
        "empty-list-elements",
        ' , ,Basic realm="x" ,, , Bearer realm="y",',
        (Challenge("Basic", (("realm", "x"),)), Challenge("Bearer", (("realm", "y"),))),
    ),
    (
        "bws-around-equals-and-case",
        'bearer Realm = "r" ,  SERVICE=svc',
        (Challenge("bearer", (("realm", "r"), ("service", "svc"))),),
    ),
    (
        "escapes",
        r'Bearer realm="a\\b\"c\d"',
        (Challenge("Bearer", (("realm", 'a\\b"cd'),)),),
    ),
    ("empty-quoted", 'Bearer realm=""', (Challenge("Bearer", (("realm", ""),)),)),
    (
        "unquoted-url-lenient",
        "Bearer realm=https://auth.example/token?x=1,service=reg",
        (Challenge("Bearer", (("realm", "https://auth.example/token?x=1"), ("service", "reg"))),),
    ),
    (
        "comma-inside-quotes",
        'Bearer realm="a,b=c", scope="repository:a/b:pull,push"',
        (Challenge("Bearer", (("realm", "a,b=c"), ("scope", "repository:a/b:pull,push"))),),
    ),
    (
        "several-scopes",
        'Bearer realm="r",scope="repository:a:pull repository:b:pull,push"',
        (
            Challenge(
                "Bearer", (("realm", "r"), ("scope", "repository:a:pull repository:b:pull,push"))
            ),
        ),
    ),
    (
        "error-param",
        'Bearer realm="r",error="insufficient_scope"',
        (Challenge("Bearer", (("realm", "r"), ("error", "insufficient_scope"))),),
    ),
    (
        "obs-text-in-quotes",
        'Basic realm="caf\xe9"',
        (Challenge("Basic", (("realm", "caf\xe9"),)),),
    ),
]


@pytest.mark.parametrize(("header", "expected"), [g[1:] for g in GOOD], ids=[g[0] for g in GOOD])
def test_parse_good(header: str, expected: tuple[Challenge, ...]) -> None:
    assert parse_www_authenticate(header) == expected


BAD: list[tuple[str, str, str]] = [
    ("empty", "", "empty"),
    ("only-commas", " , ,", "empty"),
    ("starts-with-equals", "=abc", "expected an auth scheme"),
    ("quote-as-scheme", '"Basic"', "expected an auth scheme"),
    ("unterminated-quote", 'Bearer realm="abc', "unterminated"),
    ("lone-backslash-at-end", 'Bearer realm="abc\\', "bad escape"),
    ("newline-in-quotes", 'Bearer realm="a\nb"', "control character"),
    ("nul-in-quotes", 'Bearer realm="a\x00b"', "control character"),
    ("missing-value", 'Bearer a="b", realm=', "expected a token or quoted string"),
    ("missing-value-before-comma", "Bearer a=b,realm=,c=d", "expected a token or quoted string"),
    ("param-name-as-scheme", "Bearer realm=,service=x", "expected a space after scheme"),
    ("duplicate-param", 'Bearer realm="a",REALM="b"', "duplicate parameter 'realm'"),
    ("no-comma-between", 'Basic realm="a" Bearer realm="b"', "expected ','"),
    ("junk-after-quoted", 'Bearer realm="a"x', "expected ','"),
    ("scheme-glued-to-quote", 'Bearer"realm"', "expected a space"),
    ("param-without-equals", "Bearer realm x", "expected auth-params or token68"),
    ("quoted-after-scheme", 'Bearer "realm"', "expected auth-params or token68"),
    ("token68-then-junk", "Newauth abc== def", "expected ','"),
    ("too-long", "Bearer realm=" + "a" * MAX_HEADER_LENGTH, "longer than"),
    ("bad-char-param-name", 'Bearer re@lm="x"', "expected auth-params or token68"),
    ("control-in-unquoted", "Bearer realm=a\x01b", "expected ','"),
]


@pytest.mark.parametrize(("header", "match"), [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_parse_bad(header: str, match: str) -> None:
    with pytest.raises(BadDataError, match=match):
        parse_www_authenticate(header)


def test_parse_rejects_non_str() -> None:
    with pytest.raises(TypeError):
        parse_www_authenticate(b"Basic realm=x")  # type: ignore[arg-type]


def test_accessors() -> None:
    (c,) = parse_www_authenticate(
        'Bearer realm="r",service="s",scope="repository:a:pull  repository:b:push"'
    )
    assert c.is_scheme("BEARER")
    assert not c.is_scheme("basic")
    assert (c.realm, c.service) == ("r", "s")
    assert c.get("SCOPE") == "repository:a:pull  repository:b:push"
    assert c.scopes == ("repository:a:pull", "repository:b:push")
    assert c.get("nope") is None
    assert Challenge("Basic").scopes == ()


@pytest.mark.parametrize("header", [g[1] for g in GOOD], ids=[g[0] for g in GOOD])
def test_format_round_trips(header: str) -> None:
    parsed = parse_www_authenticate(header)
    assert parse_www_authenticate(format_www_authenticate(parsed)) == parsed


def test_format_exact() -> None:
    c = Challenge("Bearer", (("realm", 'a"b\\c'), ("service", "s")))
    assert format_challenge(c) == 'Bearer realm="a\\"b\\\\c",service="s"'
    assert format_challenge(Challenge("Negotiate")) == "Negotiate"
    assert format_challenge(Challenge("Newauth", token68="ab==")) == "Newauth ab=="


@pytest.mark.parametrize(
    "challenge",
    [
        Challenge("Bearer", (("realm", "a\r\nSet-Cookie: x"),)),
        Challenge("Bearer", (("re alm", "x"),)),
        Challenge("Bea rer"),
        Challenge(""),
    ],
    ids=["crlf-injection", "bad-param-name", "bad-scheme", "empty-scheme"],
)
def test_format_refuses_header_injection(challenge: Challenge) -> None:
    with pytest.raises(ValueError, match=r"invalid|control"):
        format_challenge(challenge)


def test_replace_params() -> None:
    c = Challenge("Bearer", (("realm", "r"), ("service", "s"), ("scope", "x:y:z")))
    got = c.replace_params({"Realm": "R", "scope": None, "new": "n"})
    assert got.params == (("realm", "R"), ("service", "s"), ("new", "n"))


SCOPES_GOOD = [
    ("simple", "repository:library/alpine:pull", Scope("repository", "library/alpine", ("pull",))),
    ("two-actions", "repository:a/b:pull,push", Scope("repository", "a/b", ("pull", "push"))),
    (
        "name-with-port",
        "repository:host:5000/a:pull",
        Scope("repository", "host:5000/a", ("pull",)),
    ),
    ("class", "repository(plugin):a:pull", Scope("repository(plugin)", "a", ("pull",))),
    ("catalog", "registry:catalog:*", Scope("registry", "catalog", ("*",))),
]


@pytest.mark.parametrize(
    ("text", "expected"), [s[1:] for s in SCOPES_GOOD], ids=[s[0] for s in SCOPES_GOOD]
)
def test_parse_scope(text: str, expected: Scope) -> None:
    assert parse_scope(text) == expected
    assert str(expected) == text


@pytest.mark.parametrize(
    "text",
    ["", "repository", "repository:a", ":a:pull", "repository::pull", "repository:a:", "r:a:pull,"],
    ids=["empty", "type-only", "no-actions", "no-type", "no-name", "empty-actions", "empty-action"],
)
def test_parse_scope_bad(text: str) -> None:
    with pytest.raises(BadDataError, match="malformed scope"):
        parse_scope(text)


def test_parse_scopes_splits_on_whitespace() -> None:
    assert parse_scopes("  repository:a:pull\trepository:b:push ") == (
        Scope("repository", "a", ("pull",)),
        Scope("repository", "b", ("push",)),
    )
    assert parse_scopes("") == ()


def _to_client(name: str) -> str:
    return f"hub/{name}"


def _to_upstream(name: str) -> str:
    if not name.startswith("hub/"):
        raise UnknownRepositoryError(name)
    return name.removeprefix("hub/")


REWRITE = [
    (
        "docker-hub",
        HUB,
        'Bearer realm="https://proxy.example/token",service="registry.docker.io",'
        'scope="repository:hub/library/alpine:pull"',
    ),
    (
        "no-scope",
        'Bearer realm="https://auth/x",service="s"',
        'Bearer realm="https://proxy.example/token",service="s"',
    ),
    (
        "several-scopes-and-catalog",
        'Bearer realm="r",scope="repository:a:pull registry:catalog:* repository:b:pull,push",'
        'error="insufficient_scope"',
        'Bearer realm="https://proxy.example/token",'
        'scope="repository:hub/a:pull registry:catalog:* repository:hub/b:pull,push",'
        'error="insufficient_scope"',
    ),
    (
        "basic-untouched",
        'Basic realm="upstream", Bearer realm="r"',
        'Basic realm="upstream", Bearer realm="https://proxy.example/token"',
    ),
    (
        "missing-realm-added",
        "Bearer service=s",
        'Bearer service="s",realm="https://proxy.example/token"',
    ),
]


@pytest.mark.parametrize(
    ("header", "expected"), [r[1:] for r in REWRITE], ids=[r[0] for r in REWRITE]
)
def test_rewrite_bearer_challenge(header: str, expected: str) -> None:
    got = rewrite_bearer_challenge(header, realm="https://proxy.example/token", repo_map=_to_client)
    assert got == expected


def test_rewrite_replaces_service_when_given() -> None:
    got = rewrite_bearer_challenge(HUB, realm="https://p/t", repo_map=_to_client, service="proxy")
    (c,) = parse_www_authenticate(got)
    assert c.service == "proxy"


@pytest.mark.parametrize(
    "header",
    [
        'Bearer realm="r",scope="repository:a"',
        'Bearer realm="x',
        'Bearer realm="r",scope="::"',
        "Bearer realm=",
    ],
    ids=["bad-scope", "bad-header", "colons-only-scope", "bearer-token68"],
)
def test_rewrite_bad_input(header: str) -> None:
    with pytest.raises(BadDataError):
        rewrite_bearer_challenge(header, realm="https://p/t", repo_map=_to_client)


def test_rewrite_propagates_repo_map_errors() -> None:
    with pytest.raises(UnknownRepositoryError):
        rewrite_bearer_challenge(HUB, realm="https://p/t", repo_map=_to_upstream)


CLIENT_SCOPES = [
    ("pull", "repository:hub/a:pull", "repository:a:pull"),
    ("push-dropped", "repository:hub/a:pull,push", "repository:a:pull"),
    ("push-only-dropped", "repository:hub/a:push repository:hub/b:pull", "repository:b:pull"),
    ("catalog-dropped", "registry:catalog:* repository:hub/a:pull", "repository:a:pull"),
    ("wildcard-dropped", "repository:hub/a:*", ""),
    ("empty", "", ""),
]


@pytest.mark.parametrize(
    ("text", "expected"), [c[1:] for c in CLIENT_SCOPES], ids=[c[0] for c in CLIENT_SCOPES]
)
def test_rewrite_client_scope(text: str, expected: str) -> None:
    assert rewrite_client_scope(text, repo_map=_to_upstream) == expected


def test_client_scope_round_trip_inverts_challenge() -> None:
    upstream = "repository:library/alpine:pull"
    shown = map_scope_repositories(upstream, _to_client)
    assert shown == "repository:hub/library/alpine:pull"
    assert rewrite_client_scope(shown, repo_map=_to_upstream) == upstream


def test_rewrite_client_scope_bad() -> None:
    with pytest.raises(BadDataError):
        rewrite_client_scope("repository:x", repo_map=_to_upstream)
    with pytest.raises(UnknownRepositoryError):
        rewrite_client_scope("repository:other/a:pull", repo_map=_to_upstream)
