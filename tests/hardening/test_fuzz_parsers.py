"""The pure parsers under hypothesis: proxy/reference.py and proxy/tag_pages.py (issue 8).

Differential where it can be: the name grammar is checked against an oracle written another
way (tokens, not one regular expression), and parsed paths must round-trip. Pagination is
walked page by page through its own Link headers. Any input, any exception but the
documented ClientRequestError family is a failure (it would be a 500 in the app).

Not atheris: coverage-guided fuzzing would need a native build and long runs; these
grammars are small enough that generated inputs around them reach every branch, and
the same examples run in `make test`.
"""

from __future__ import annotations

import re
import string
from urllib.parse import parse_qs, urlsplit

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from proxy.errors import (
    ClientRequestError,
    InvalidDigestError,
    InvalidNameError,
    InvalidReferenceError,
)
from proxy.reference import (
    MAX_NAME_LENGTH,
    RepoPath,
    parse_repo_path,
    validate_digest,
    validate_name,
    validate_reference,
)
from proxy.tag_pages import MAX_PAGE, paginate, parse_page_query
from testbed.attempts import AttemptLog
from tests.hardening.test_fuzz_requests import component, fuzz_settings

pytestmark = pytest.mark.hardening

ALNUM = set(string.ascii_lowercase + string.digits)


def oracle_component(text: str) -> bool:
    """OCI name component, as tokens: alnum runs joined by '.', '_', '__' or '-'+."""
    tokens = re.split(r"([._-]+)", text)  # odd positions: separator runs
    runs, seps = tokens[0::2], tokens[1::2]
    if not all(run and set(run) <= ALNUM for run in runs):
        return False
    return all(sep in (".", "_", "__") or set(sep) == {"-"} for sep in seps)


def oracle_name(text: str) -> bool:
    return 0 < len(text) <= MAX_NAME_LENGTH and all(oracle_component(c) for c in text.split("/"))


def oracle_tag(text: str) -> bool:
    word = set(string.ascii_letters + string.digits + "_")
    return (0 < len(text) <= 128 and text[0] in word
            and set(text) <= word | {".", "-"})  # fmt: skip


def oracle_digest(text: str) -> bool:
    algorithm, sep, encoded = text.partition(":")
    size = {"sha256": 64, "sha512": 128}.get(algorithm)
    return bool(sep) and size == len(encoded) and set(encoded) <= set("0123456789abcdef")


# Text around the grammars: their own characters, their neighbours, and hostile ones.
NAME_CHARS = string.ascii_lowercase[:6] + string.digits[:3] + "._-/" + "A:@ %\n\t\x00é"
# The API's own path words are valid name components: "/v2/a/blobs/uploads/manifests/v1".
api_words = st.sampled_from(["blobs", "uploads", "manifests", "tags", "list", "referrers", "v2"])
valid_names = (
    st.lists(st.one_of(component, api_words), min_size=1, max_size=5)
    .map("/".join)
    .filter(lambda n: len(n) <= MAX_NAME_LENGTH)
)
names = st.one_of(valid_names, st.text(NAME_CHARS, max_size=30),
                  st.integers(250, 260).map(lambda n: ("ab/" * n)[:n]))  # fmt: skip
TAG_FIRST = string.ascii_letters + string.digits + "_"
tags = st.one_of(st.builds(str.__add__, st.sampled_from(TAG_FIRST),
                           st.text(TAG_FIRST + ".-", max_size=8)),
                 st.text(string.ascii_letters[:4] + "._-:/ \n+", max_size=12),
                 st.integers(126, 130).map(lambda n: "t" * n))  # fmt: skip
digests = st.builds(
    "{}:{}".format,
    st.sampled_from(["sha256", "sha512", "sha384", "md5", "SHA256", "sha256+b64u", ""]),
    st.one_of(st.integers(0, 130).map(lambda n: "0123456789abcdef"[n % 16] * n),
              st.text("0123456789abcdefABCDEFg\n", max_size=130)),
)  # fmt: skip
references = st.one_of(tags, digests)
endpoints = st.one_of(
    st.builds("manifests/{}".format, references),
    st.builds("blobs/{}".format, digests),
    st.builds("referrers/{}".format, digests),
    st.just("tags/list"),
    st.sampled_from(["blobs/uploads", "blobs/uploads/", "blobs/uploads/x", "tags/list/",
                     "manifests", "manifests/", "tags", ""]),
)  # fmt: skip


def test_campaign_reference_grammar(attempt_log: AttemptLog) -> None:
    """validate_name / validate_reference / validate_digest agree with the oracles, and
    raise only their documented errors."""
    counts = {"name": 0, "reference": 0, "digest": 0}

    @fuzz_settings(400)
    @given(names, references)
    @example("a" * MAX_NAME_LENGTH, "a" * 128)
    @example("a__b", "sha256:" + "0" * 64)
    @example("a___b", "latest\n")
    @example("a-.b", "SHA256:" + "0" * 64)
    def run(name: str, ref: str) -> None:
        try:
            validate_name(name)
            accepted = True
        except InvalidNameError:
            accepted = False
        assert accepted == oracle_name(name), name
        try:
            validate_reference(ref)
            accepted = True
        except (InvalidReferenceError, InvalidDigestError):
            accepted = False
        expected = oracle_digest(ref) if ":" in ref else oracle_tag(ref)
        assert accepted == expected, ref
        try:
            validate_digest(ref)
            accepted = True
        except InvalidDigestError:
            accepted = False
        assert accepted == oracle_digest(ref), ref
        counts["name"] += 1

    run()
    attempt_log.record("client input", "reference grammar vs an independent oracle (pure)",
                       expected="same verdict as the oracle; only documented errors",
                       statuses={"checked": counts["name"]}, unsigned_served=0, ok=True,
                       extra={"examples": counts["name"]})  # fmt: skip


def test_campaign_repo_paths_round_trip(attempt_log: AttemptLog) -> None:
    """parse_repo_path on /v2/<name>/<endpoint>: None, a ClientRequestError, or a RepoPath
    whose parts are valid and rebuild the very path parsed."""
    seen = {"parsed": 0, "refused": 0, "none": 0}

    @fuzz_settings(400)
    @given(names, endpoints)
    @example("a/blobs/uploads", "manifests/v1")  # a name with the upload endpoint's words
    @example("x/manifests/y", "manifests/v1")
    @example("tags/list", "tags/list")
    def run(name: str, endpoint: str) -> None:
        path = f"/v2/{name}/{endpoint}"
        try:
            parsed = parse_repo_path(path)
        except ClientRequestError:
            seen["refused"] += 1
            return
        if parsed is None:
            seen["none"] += 1
            return
        seen["parsed"] += 1
        assert oracle_name(parsed.name), (path, parsed)
        rebuilt = {
            "manifests": f"/v2/{parsed.name}/manifests/{parsed.reference}",
            "blobs": f"/v2/{parsed.name}/blobs/{parsed.reference}",
            "referrers": f"/v2/{parsed.name}/referrers/{parsed.reference}",
            "tags": f"/v2/{parsed.name}/tags/list",
        }.get(parsed.kind)
        if rebuilt is not None:
            assert rebuilt == path, (path, parsed)
        if parsed.kind == "manifests":
            assert oracle_tag(parsed.reference) or oracle_digest(parsed.reference)
        elif parsed.kind in ("blobs", "referrers"):
            assert oracle_digest(parsed.reference)
        # A valid name with a valid endpoint is read as exactly that, never as another
        # name or endpoint (the upload endpoint only when the client named it).
        if oracle_name(name) and endpoint == "manifests/v1":
            assert parsed == RepoPath(name, "manifests", "v1")

    run()
    attempt_log.record("client input", "/v2 path parsing round trip (pure)",
                       expected="parts valid and rebuild the path; only documented errors",
                       statuses=seen, unsigned_served=0, ok=True,
                       extra={"examples": sum(seen.values())})  # fmt: skip
    assert seen["parsed"] > 0
    assert seen["refused"] > 0


n_texts = st.one_of(
    st.integers(-5, 20_000).map(str),
    st.text(string.digits + "-+ .e²١x\x00", max_size=8),
    st.integers(4290, 4400).map(lambda n: "9" * n),  # past int()'s digit limit
    st.none(),
)


@fuzz_settings(300)
@given(n_texts, st.one_of(st.none(), st.text(max_size=10)))
@example("9" * 5000, None)
@example("0" * 5000 + "7", None)
@example("²", None)
def test_page_query(n: str | None, last: str | None) -> None:
    """``n``: a whole number (capped) or a ClientRequestError, whatever the text."""
    try:
        page_size, last_out = parse_page_query(n, last)
    except ClientRequestError:
        assert n is not None
        assert not (n.isascii() and n.isdigit())
        return
    assert last_out == (last or None)
    if n is None or n == "":
        assert page_size is None
    else:
        assert n.isascii()
        assert n.isdigit()
        digits = n.lstrip("0") or "0"
        # Compared by length first: int() refuses more than 4300 digits.
        assert page_size == (MAX_PAGE if len(digits) > 6 else min(int(digits), MAX_PAGE))


tag_lists = st.lists(st.text(string.ascii_letters + string.digits + "._-&=%;+ é", min_size=1,
                             max_size=6), max_size=30)  # fmt: skip


@fuzz_settings(200)
@given(tag_lists, st.integers(0, 12), st.one_of(st.none(), st.text(max_size=4)))
def test_pages_walk_through_their_links(tag_list: list[str], n: int, last: str | None) -> None:
    """Following each page's Link from ``last`` visits every later tag once, in order, in
    pages of at most ``n``; the Link names the repository and carries ``last`` intact."""
    expected = sorted(t for t in set(tag_list) if last is None or t > last)
    seen: list[str] = []
    cursor = last
    for _ in range(len(expected) + 2):
        page = paginate(tag_list, n=n, last=cursor, name="team/app")
        assert len(page.tags) <= n
        seen.extend(page.tags)
        if page.next_link is None:
            break
        assert n > 0
        assert page.tags
        m = re.fullmatch(r'<(?P<url>[^>]*)>; rel="next"', page.next_link)
        assert m is not None, page.next_link
        url = urlsplit(m["url"])
        assert url.path == "/v2/team/app/tags/list"
        query = parse_qs(url.query)
        assert query["n"] == [str(n)]
        cursor = query["last"][0]
        assert cursor == page.tags[-1]
    if n == 0:
        assert seen == []
    else:
        assert seen == expected
