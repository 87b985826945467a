"""Tag-list pagination done by the proxy itself (pure).

The proxy filters tag lists (only signed tags are visible), so upstream pages cannot be
relayed: a page of n upstream tags may hold fewer than n visible ones, and distribution 2.8
ignores ``n``/``last`` altogether. The proxy therefore reads the whole list (bounded), sorts
it lexically as the OCI Distribution Spec asks, and cuts its own pages.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlencode

from proxy.errors import ClientRequestError

MAX_PAGE = 10_000


@dataclass(frozen=True)
class Page:
    tags: list[str]
    next_link: str | None  # the Link header value for the next page, if any


def parse_page_query(n: str | None, last: str | None) -> tuple[int | None, str | None]:
    """Validate ``n`` and ``last``. Raises ClientRequestError on a bad ``n``."""
    if n is None or n == "":
        return None, last or None
    # ASCII only and bounded: str.isdigit() accepts "²", and int() refuses more than 4300
    # digits; either would escape as a ValueError (a 500) instead of a 400.
    if not (n.isascii() and n.isdigit()):
        raise ClientRequestError(f"n must be a non-negative integer, not {n[:50]!r}")
    digits = n.lstrip("0") or "0"
    if len(digits) > len(str(MAX_PAGE)):
        return MAX_PAGE, last or None
    return min(int(digits), MAX_PAGE), last or None


def paginate(tags: list[str], *, n: int | None, last: str | None, name: str) -> Page:
    """The page after ``last`` with at most ``n`` tags, and the Link to the next one."""
    ordered = sorted(set(tags))
    if last is not None:
        ordered = [t for t in ordered if t > last]
    if n is None:
        return Page(ordered, None)
    page = ordered[:n]
    if n == 0 or len(ordered) <= n:
        return Page(page, None)
    query = urlencode({"n": n, "last": page[-1]})
    return Page(page, f'</v2/{name}/tags/list?{query}>; rel="next"')
