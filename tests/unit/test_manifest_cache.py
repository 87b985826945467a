"""proxy.manifest_cache: LRU by bytes, per (upstream, repository, digest), verified bytes only."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import pytest

from proxy.errors import ConfigError, InvalidDigestError
from proxy.manifest_cache import ENTRY_OVERHEAD, CachedManifest, ManifestCache
from proxy.settings import MiB, apply_env_overrides, parse_settings

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
HEADERS = {"content-type": OCI_MANIFEST}


def sha256(data: bytes) -> str:
    return f"sha256:{hashlib.sha256(data).hexdigest()}"


def body(n: int, fill: bytes = b"m") -> bytes:
    return fill * n


def cost(data: bytes, headers: dict[str, str] | None = None) -> int:
    return CachedManifest(data, tuple((headers or {}).items())).cost


def put(cache: ManifestCache, data: bytes, repo: str = "team/app", up: str = "internal") -> bool:
    return cache.put(up, repo, sha256(data), data, HEADERS)


# --------------------------------------------------------------------------- basics


def test_put_then_get_returns_bytes_and_headers() -> None:
    cache = ManifestCache(1 * MiB)
    data = b'{"schemaVersion": 2}'
    assert put(cache, data)
    entry = cache.get("internal", "team/app", sha256(data))
    assert entry is not None
    assert entry.body == data
    assert entry.media_type == OCI_MANIFEST
    assert entry.header_map == HEADERS
    assert (cache.hits, cache.misses, len(cache)) == (1, 0, 1)
    assert cache.total_bytes == cost(data, HEADERS)


def test_media_type_is_none_without_content_type() -> None:
    assert CachedManifest(b"x").media_type is None


def test_miss_is_counted() -> None:
    cache = ManifestCache(1 * MiB)
    assert cache.get("internal", "team/app", sha256(b"nothing")) is None
    assert cache.misses == 1


@pytest.mark.parametrize(
    ("key", "hit"),
    [(("internal", "team/app"), True), (("internal", "team/other"), False),
     (("mirror", "team/app"), False)],
    ids=["same", "other-repository", "other-upstream"],
)  # fmt: skip
def test_entries_are_per_upstream_and_repository(key: tuple[str, str], hit: bool) -> None:
    cache = ManifestCache(1 * MiB)
    data = b"manifest"
    put(cache, data, repo="team/app", up="internal")
    assert (cache.get(*key, sha256(data)) is not None) is hit


def test_replacing_an_entry_keeps_the_byte_count_right() -> None:
    cache = ManifestCache(1 * MiB)
    data = body(100)
    put(cache, data)
    cache.put("internal", "team/app", sha256(data), data, {})
    assert len(cache) == 1
    assert cache.total_bytes == cost(data)


def test_clear() -> None:
    cache = ManifestCache(1 * MiB)
    put(cache, body(10))
    cache.clear()
    assert (len(cache), cache.total_bytes) == (0, 0)


# --------------------------------------------------------------------------- bounds


def test_least_recently_used_goes_first_when_bytes_run_out() -> None:
    a, b, c = body(1000, b"a"), body(1000, b"b"), body(1000, b"c")
    # Room for two entries: the third evicts whichever was used least recently.
    cache = ManifestCache(2 * cost(a, HEADERS) + 10)
    cache.max_entry_bytes = cache.max_bytes  # this test is about eviction, not the share
    put(cache, a)
    put(cache, b)
    assert cache.get("internal", "team/app", sha256(a)) is not None  # a is now the newest
    put(cache, c)
    assert ("internal", "team/app", sha256(b)) not in cache
    assert ("internal", "team/app", sha256(a)) in cache
    assert ("internal", "team/app", sha256(c)) in cache
    assert cache.evictions == 1
    assert cache.total_bytes <= cache.max_bytes


def test_eviction_is_by_bytes_not_by_count() -> None:
    small = [body(10, bytes([65 + i])) for i in range(10)]
    big = body(2000, b"z")
    cache = ManifestCache(cost(big, HEADERS) + 3 * cost(small[0], HEADERS))
    cache.max_entry_bytes = cache.max_bytes
    for data in small:
        put(cache, data)
    put(cache, big)
    # The big one needs the room of several small ones: only three of them stay.
    assert len(cache) == 4
    assert [("internal", "team/app", sha256(d)) in cache for d in small] == [False] * 7 + [True] * 3
    assert cache.total_bytes <= cache.max_bytes


def test_an_entry_over_its_share_is_not_cached() -> None:
    cache = ManifestCache(8 * 1024)
    assert cache.max_entry_bytes == 1024
    fits = body(1024 - ENTRY_OVERHEAD - len("content-type") - len(OCI_MANIFEST), b"f")
    too_big = fits + b"!"
    put(cache, fits)
    assert not put(cache, too_big)
    assert ("internal", "team/app", sha256(fits)) in cache
    assert ("internal", "team/app", sha256(too_big)) not in cache
    assert cache.evictions == 0  # a refused entry evicts nothing


def test_zero_bytes_disables_the_cache() -> None:
    cache = ManifestCache(0)
    assert not cache.enabled
    assert not put(cache, b"manifest")
    assert cache.get("internal", "team/app", sha256(b"manifest")) is None
    assert len(cache) == 0


def test_negative_size_is_a_caller_bug() -> None:
    with pytest.raises(ValueError, match="max_bytes"):
        ManifestCache(-1)


# --------------------------------------------------------------------------- verified only


def test_bytes_that_do_not_match_the_digest_are_refused() -> None:
    cache = ManifestCache(1 * MiB)
    with pytest.raises(RuntimeError, match="do not hash"):
        cache.put("internal", "team/app", sha256(b"signed"), b"other bytes", HEADERS)
    assert len(cache) == 0


def test_sha512_digests_are_checked_too() -> None:
    cache = ManifestCache(1 * MiB)
    data = b"manifest"
    digest = f"sha512:{hashlib.sha512(data).hexdigest()}"
    assert cache.put("internal", "team/app", digest, data, HEADERS)
    with pytest.raises(RuntimeError):
        cache.put("internal", "team/app", digest, b"other", HEADERS)


def test_unknown_digest_algorithm_is_refused() -> None:
    cache = ManifestCache(1 * MiB)
    with pytest.raises(InvalidDigestError):
        cache.put("internal", "team/app", "md5:abc", b"x", HEADERS)


# --------------------------------------------------------------------------- settings


def _settings(limits: dict[str, Any] | None = None, env: dict[str, str] | None = None) -> Any:
    raw: dict[str, Any] = {
        "upstreams": [{"name": "internal", "url": "http://127.0.0.1:5000",
                       "registry": "127.0.0.1:5000"}],
    }  # fmt: skip
    if limits is not None:
        raw["limits"] = limits
    apply_env_overrides(raw, env or {})
    return parse_settings(raw, base_dir=Path("."), check_files=False)


@pytest.mark.parametrize(
    ("limits", "env", "expected"),
    [(None, None, 64 * MiB), ({"manifest_cache_bytes": "8MiB"}, None, 8 * MiB),
     ({"manifest_cache_bytes": 0}, None, 0), ({"manifest_cache_bytes": 4096}, None, 4096),
     (None, {"TRUSTPROXY_LIMITS__MANIFEST_CACHE_BYTES": "0"}, 0),
     (None, {"TRUSTPROXY_LIMITS__MANIFEST_CACHE_BYTES": "16MiB"}, 16 * MiB)],
    ids=["default", "size", "zero-disables", "bytes", "env-zero", "env-size"],
)  # fmt: skip
def test_manifest_cache_bytes_setting(
    limits: dict[str, Any] | None, env: dict[str, str] | None, expected: int
) -> None:
    assert _settings(limits, env).limits.manifest_cache_bytes == expected


@pytest.mark.parametrize("value", [-1, "lots", True], ids=["negative", "word", "bool"])
def test_bad_manifest_cache_bytes(value: Any) -> None:
    with pytest.raises(ConfigError) as info:
        _settings({"manifest_cache_bytes": value})
    assert info.value.path == "limits.manifest_cache_bytes"


# --------------------------------------------------------------------------- re-check


class Ticks:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_an_entry_is_due_for_a_recheck_only_after_the_interval_and_once() -> None:
    ticks = Ticks()
    cache = ManifestCache(1 * MiB, recheck_after=30, clock=ticks)
    data = b'{"schemaVersion": 2}'
    key = ("internal", "team/app", sha256(data))
    put(cache, data)
    assert not cache.claim_recheck(*key)  # just fetched: that was the check
    ticks.now += 29.9
    assert not cache.claim_recheck(*key)
    ticks.now += 0.1
    assert cache.claim_recheck(*key)
    assert not cache.claim_recheck(*key)  # claimed: concurrent hits do not ask too
    ticks.now += 30
    assert cache.claim_recheck(*key)
    assert cache.rechecks == 2


def test_release_makes_the_next_hit_ask_again_and_confirm_restarts_the_interval() -> None:
    ticks = Ticks()
    cache = ManifestCache(1 * MiB, recheck_after=30, clock=ticks)
    data = b'{"schemaVersion": 2}'
    key = ("internal", "team/app", sha256(data))
    put(cache, data)
    ticks.now += 31
    assert cache.claim_recheck(*key)
    cache.release(*key)  # the re-check was cancelled: nothing learnt
    assert cache.claim_recheck(*key)
    ticks.now += 31
    cache.confirm(*key)  # the upstream said yes (passthrough HEAD)
    assert not cache.claim_recheck(*key)


def test_discard_drops_the_entry_and_its_bytes() -> None:
    cache = ManifestCache(1 * MiB)
    data = b'{"schemaVersion": 2}'
    put(cache, data)
    assert cache.discard("internal", "team/app", sha256(data))
    assert not cache.discard("internal", "team/app", sha256(data))
    assert cache.get("internal", "team/app", sha256(data)) is None
    assert (len(cache), cache.total_bytes, cache.discards) == (0, 0, 1)
    # Unknown keys are no-ops.
    assert not cache.claim_recheck("internal", "team/app", sha256(data))
    cache.confirm("internal", "team/app", sha256(data))
    cache.release("internal", "team/app", sha256(data))


def test_recheck_zero_is_always_due() -> None:
    cache = ManifestCache(1 * MiB, recheck_after=0, clock=Ticks())
    data = b"{}"
    put(cache, data)
    assert cache.claim_recheck("internal", "team/app", sha256(data))
    assert cache.claim_recheck("internal", "team/app", sha256(data))


def test_negative_recheck_is_a_caller_bug() -> None:
    with pytest.raises(ValueError, match="recheck_after"):
        ManifestCache(1 * MiB, recheck_after=-1)


@pytest.mark.parametrize(
    ("value", "expected"),
    [(None, 30.0), (0, 0.0), ("0s", 0.0), ("90s", 90.0), ("2m", 120.0), (5, 5.0)],
    ids=["default", "zero", "zero-s", "seconds", "minutes", "number"],
)
def test_manifest_cache_recheck_setting(value: Any, expected: float) -> None:
    limits = None if value is None else {"manifest_cache_recheck": value}
    assert _settings(limits).limits.manifest_cache_recheck == expected


@pytest.mark.parametrize(
    "value", [-1, "soon", True, "-5s"], ids=["negative", "word", "bool", "neg"]
)
def test_bad_manifest_cache_recheck(value: Any) -> None:
    with pytest.raises(ConfigError) as info:
        _settings({"manifest_cache_recheck": value})
    assert info.value.path == "limits.manifest_cache_recheck"
