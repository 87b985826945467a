"""proxy.tag_pages: n/last semantics, sorting, dedupe and the next-page Link."""

from __future__ import annotations

from urllib.parse import parse_qs, urlsplit

import pytest

from proxy.errors import ClientRequestError
from proxy.tag_pages import MAX_PAGE, paginate, parse_page_query

TAGS = ["v2", "latest", "v10", "v1", "latest", "alpha"]
ORDERED = sorted(set(TAGS))  # lexical, as the OCI Distribution Spec asks


def next_query(link: str | None, name: str) -> dict[str, list[str]]:
    assert link is not None
    assert link.endswith('>; rel="next"')
    url = urlsplit(link[1 : link.index(">")])
    assert url.path == f"/v2/{name}/tags/list"
    return parse_qs(url.query)


@pytest.mark.parametrize(
    ("n", "last", "expected"),
    [(None, None, (None, None)), ("", "", (None, None)), ("5", None, (5, None)),
     ("0", "v1", (0, "v1")), ("007", None, (7, None)), (None, "v1", (None, "v1")),
     (str(MAX_PAGE + 1), None, (MAX_PAGE, None)), ("9" * 5000, None, (MAX_PAGE, None)),
     ("0" * 5000 + "3", None, (3, None))],
    ids=["none", "empty", "n", "zero", "leading-zeros", "last-only", "capped", "huge",
         "many-zeros"],
)  # fmt: skip
def test_parse_page_query(
    n: str | None, last: str | None, expected: tuple[int | None, str | None]
) -> None:
    assert parse_page_query(n, last) == expected


@pytest.mark.parametrize(
    "n",
    ["-1", "abc", "1.5", " 3", "3 ", "+3", "0x10", "²", "٣", "1e3"],
    ids=[
        "negative",
        "word",
        "float",
        "lead-space",
        "trail-space",
        "plus",
        "hex",
        "superscript",
        "arabic-digit",
        "exponent",
    ],
)
def test_bad_n(n: str) -> None:
    with pytest.raises(ClientRequestError, match="n must be"):
        parse_page_query(n, None)


def test_all_tags_sorted_and_deduplicated_without_n() -> None:
    page = paginate(TAGS, n=None, last=None, name="team/app")
    assert page.tags == ORDERED
    assert page.next_link is None


def test_pages_walk_the_whole_list() -> None:
    seen: list[str] = []
    last: str | None = None
    for _ in range(len(ORDERED) + 1):
        page = paginate(TAGS, n=2, last=last, name="team/app")
        assert len(page.tags) <= 2
        seen.extend(page.tags)
        if page.next_link is None:
            break
        query = next_query(page.next_link, "team/app")
        assert query["n"] == ["2"]
        assert query["last"] == [page.tags[-1]]
        last = query["last"][0]
    assert seen == ORDERED


def test_last_page_exactly_full_has_no_link() -> None:
    page = paginate(TAGS, n=len(ORDERED), last=None, name="a")
    assert page.tags == ORDERED
    assert page.next_link is None


def test_n_zero_is_an_empty_page_without_link() -> None:
    page = paginate(TAGS, n=0, last=None, name="a")
    assert page.tags == []
    assert page.next_link is None


@pytest.mark.parametrize(
    ("last", "expected"),
    [("latest", [t for t in ORDERED if t > "latest"]), ("zzz", []), ("a", ORDERED),
     ("not-a-tag-but-between", [t for t in ORDERED if t > "not-a-tag-but-between"])],
    ids=["existing", "after-all", "before-all", "absent"],
)  # fmt: skip
def test_last_is_exclusive_and_need_not_exist(last: str, expected: list[str]) -> None:
    assert paginate(TAGS, n=None, last=last, name="a").tags == expected


def test_empty_list() -> None:
    page = paginate([], n=3, last=None, name="a")
    assert page.tags == []
    assert page.next_link is None


def test_link_names_the_client_repository() -> None:
    page = paginate(TAGS, n=1, last=None, name="mirror/team/app")
    assert next_query(page.next_link, "mirror/team/app")["last"] == [ORDERED[0]]
