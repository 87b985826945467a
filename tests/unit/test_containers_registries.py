"""registries.conf merged and routed as containers/image does (proxy.containers_registries),
and the doctor's reading of the files on a host root (drop-in order, per-user files)."""

from __future__ import annotations

from pathlib import Path

import pytest

from proxy import containers_registries as rc
from proxy.doctor import client_config_checks

PROXY = "proxy.example.com:8443"
LOCATION = f'[[registry]]\nprefix = "docker.io"\nlocation = "{PROXY}"\n'
MIRROR = f'[[registry]]\nprefix = "docker.io"\nlocation = "docker.io"\n[[registry.mirror]]\nlocation = "{PROXY}"\n'  # noqa: E501
DIRECT = '[[registry]]\nprefix = "docker.io"\nlocation = "docker.io"\n'


def is_proxy(location: str) -> bool:
    return location.split("/", 1)[0] == PROXY


@pytest.mark.parametrize(
    ("name", "prefix", "matches"),
    [
        ("docker.io/library/alpine:3", "docker.io", True),
        ("docker.io", "docker.io", True),
        ("docker.io.evil.com/x", "docker.io", False),
        ("docker.io/library/alpine@sha256:ab", "docker.io/library/alpine", True),
        ("docker.io/library/alpinex", "docker.io/library/alpine", False),
        ("a.example.com/x", "*.example.com", True),
        ("example.com/x", "*.example.com", False),
        ("evil.com/a.example.com/x", "*.example.com", False),
        ("127.0.0.1:5000/x", "127.0.0.1", True),  # ':' is a boundary, as in containers/image
    ],
)
def test_prefix_matching(name: str, prefix: str, matches: bool) -> None:
    assert (rc.matching_prefix_length(name, prefix) != -1) is matches


@pytest.mark.parametrize(
    ("files", "route"),
    [
        ([LOCATION], "enforcing"),
        ([MIRROR], "falls-back"),
        ([DIRECT], "direct"),
        ([], "direct"),
        ([LOCATION, MIRROR], "falls-back"),  # the later file wins for the prefix
        ([MIRROR, LOCATION], "enforcing"),
        ([LOCATION + '[[registry.mirror]]\nlocation = "other.example.com"\n'], "direct"),
        (
            [
                MIRROR.replace(
                    'location = "docker.io"\n',
                    'location = "docker.io"\nmirror-by-digest-only = true\n',
                )
            ],
            "direct",
        ),
        (
            [
                LOCATION.replace("docker.io", "docker.io/library")
                + DIRECT.replace('"docker.io"\nlocation', '"docker.io/library/alpine"\nlocation')
            ],
            "direct",
        ),
        ([DIRECT + "blocked = true\n"], "blocked"),
    ],
    ids=[
        "location",
        "mirror",
        "direct",
        "nothing",
        "51-over-50",
        "50-over-49",
        "other-mirror-first",
        "digest-only-mirror",
        "more-specific-wins",
        "blocked",
    ],
)
def test_route_of_a_tag_pull(files: list[str], route: str) -> None:
    effective = rc.merge(rc.parse_file(f"f{n}", text) for n, text in enumerate(files))
    name = "docker.io/library/alpine:3.20"
    assert rc.route(rc.find(effective, name), is_proxy, name=name)[0] == route


def test_plain_http_proxy_without_insecure_fails() -> None:
    entry = rc.find(rc.merge([rc.parse_file("f", LOCATION)]), "docker.io/x")
    assert rc.route(entry, is_proxy, proxy_plain_http=True)[0] == "fails"
    insecure = rc.find(
        rc.merge([rc.parse_file("f", LOCATION + "insecure = true\n")]), "docker.io/x"
    )
    assert rc.route(insecure, is_proxy, proxy_plain_http=True)[0] == "enforcing"


@pytest.mark.parametrize(
    "text",
    ["[[registry]]\nlocation = \"https://proxy\"\n", "[[registry]]\nprefix = \"a.com\"\n",
     "registry = 1\n", "[[registry]\n"],
    ids=["scheme", "no-location", "not-array", "bad-toml"],
)  # fmt: skip
def test_files_podman_refuses_are_errors(text: str) -> None:
    with pytest.raises(rc.RegistriesConfError):
        rc.parse_file("f", text)


def test_search_registries_and_aliases_merge_like_the_clients() -> None:
    effective = rc.merge(
        [
            rc.parse_file("main", 'unqualified-search-registries = ["quay.io"]\n'),
            rc.parse_file("50", '[aliases]\n"a" = "docker.io/library/a"\n'),
            rc.parse_file("60", 'unqualified-search-registries = []\n[aliases]\n"a" = "x.io/a"\n'),
        ]
    )
    assert effective.search == ()
    assert effective.search_origin == "60"
    assert effective.aliases == {"a": "x.io/a"}


def test_dropins_are_read_in_lexical_order() -> None:
    assert rc.order_dropins(["51-b.conf", "50-a.conf", "x.toml", "100.conf"]) == [
        "100.conf",
        "50-a.conf",
        "51-b.conf",
    ]


# -- the doctor on a host root ------------------------------------------------------------------


def write(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


SYS = "etc/containers/registries.conf.d/"
USER = "root/.config/containers/"


@pytest.mark.parametrize(
    ("files", "expected"),
    [
        ({SYS + "50-trustproxy.conf": LOCATION}, [("pass", "enforcing")]),
        ({SYS + "50-trustproxy.conf": LOCATION, SYS + "51-mirror.conf": MIRROR},
         [("warn", "50-trustproxy.conf [docker.io]: overridden by /etc/containers/"
                   "registries.conf.d/51-mirror.conf"),
          ("warn", "51-mirror.conf [docker.io]: the proxy is a mirror")]),
        ({SYS + "49-mirror.conf": MIRROR, SYS + "50-trustproxy.conf": LOCATION},
         [("pass", "50-trustproxy.conf [docker.io]: location is the proxy"),
          ("info", "49-mirror.conf [docker.io]: overridden by")]),
        ({SYS + "50-trustproxy.conf": LOCATION, USER + "registries.conf.d/10-x.conf": DIRECT},
         [("warn", "overridden by /root/.config/containers/registries.conf.d/10-x.conf"),
          ("warn", "pulled from docker.io, not the proxy: not enforcing (it replaced")]),
        ({SYS + "50-trustproxy.conf": LOCATION, USER + "registries.conf": ""},
         [("warn", "NOT read for this user (their entries for the proxy are ignored: "
                   "/etc/containers/registries.conf.d/50-trustproxy.conf [docker.io])")]),
        ({SYS + "50-other.conf": DIRECT, USER + "registries.conf": ""},
         [("info", "registries.conf and registries.conf.d are NOT read for this user")]),
        ({USER + "registries.conf.d/50-trustproxy.conf": LOCATION}, [("pass", "enforcing")]),
        ({SYS + "50-trustproxy.conf": LOCATION + DIRECT.replace(
            '"docker.io"\nlocation', '"docker.io/library"\nlocation')},
         [("warn", "more specific than docker.io"), ("pass", "enforcing")]),
        ({SYS + "50-trustproxy.conf": LOCATION.replace(f'"{PROXY}"', '"https://x"')},
         [("warn", "URI schemes are not supported: podman/CRI-O refuse every pull")]),
    ],
    ids=["location", "51-overrides-50", "50-overrides-49", "per-user-dropin-overrides",
         "per-user-main-hides-system", "per-user-main-nothing-hidden", "per-user-location",
         "more-specific-entry",
         "refused-file"],
)  # fmt: skip
def test_doctor_reads_registries_conf_as_the_clients_do(
    files: dict[str, str], expected: list[tuple[str, str]], tmp_path: Path
) -> None:
    write(tmp_path, files)
    checks = [c for c in client_config_checks(tmp_path, f"https://{PROXY}")]
    got = sorted((c.status, c.summary) for c in checks)
    assert len(got) == len(expected), got
    for status, words in expected:
        assert any(s == status and words in summary for s, summary in got), (status, words, got)


def test_doctor_names_short_name_behaviour(tmp_path: Path) -> None:
    write(tmp_path, {SYS + "50-trustproxy.conf": LOCATION})
    (check,) = client_config_checks(tmp_path, f"https://{PROXY}")
    assert "short names without an alias fail" in check.details[0]
