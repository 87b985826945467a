"""proxy.routing: longest prefix, default route, Docker Hub library/, GUN and scope."""

from __future__ import annotations

import pytest

from proxy.errors import UnknownRepositoryError
from proxy.routing import DOCKER_HUB, Router
from proxy.settings import UpstreamSettings


def up(name: str, prefix: str | None = None, registry: str | None = None) -> UpstreamSettings:
    return UpstreamSettings(
        name=name, url=f"https://{name}.example", registry=registry or f"{name}.example",
        prefix=prefix,
    )  # fmt: skip


DEFAULT = up("internal")
HUB = up("hub", prefix="hub", registry=DOCKER_HUB)
TEAM = up("team", prefix="mirror/team")
MIRROR = up("mirror", prefix="mirror")
ROUTER = Router((MIRROR, DEFAULT, TEAM, HUB))


@pytest.mark.parametrize(
    ("name", "upstream", "upstream_name"),
    [
        ("app", DEFAULT, "app"),
        ("team/app", DEFAULT, "team/app"),
        ("mirror/app", MIRROR, "app"),
        ("mirror/team/app", TEAM, "app"),  # longest prefix wins, whatever the config order
        ("mirror/team", MIRROR, "team"),  # a prefix alone is a repository of the shorter one
        ("mirror/teamwork/app", MIRROR, "teamwork/app"),  # prefixes match whole components
        ("mirror", DEFAULT, "mirror"),
        ("mirrors/app", DEFAULT, "mirrors/app"),
        ("hub/alpine", HUB, "library/alpine"),  # Docker Hub official images
        ("hub/bitnami/redis", HUB, "bitnami/redis"),
        ("hub/library/alpine", HUB, "library/alpine"),
    ],
    ids=["default", "default-nested", "prefix", "longest-prefix", "prefix-as-repo",
         "component-boundary", "bare-prefix", "prefix-lookalike", "hub-library",
         "hub-user", "hub-explicit-library"],
)  # fmt: skip
def test_route(name: str, upstream: UpstreamSettings, upstream_name: str) -> None:
    route = ROUTER.route(name)
    assert route.upstream is upstream
    assert route.client_name == name
    assert route.upstream_name == upstream_name
    assert route.repository == f"{upstream.registry}/{upstream_name}"
    assert route.scope == f"repository:{upstream_name}:pull"


def test_hub_gun_is_docker_io_library() -> None:
    assert ROUTER.route("hub/alpine").repository == "docker.io/library/alpine"


def test_library_rule_only_for_docker_hub() -> None:
    assert ROUTER.route("alpine").upstream_name == "alpine"
    hub_default = Router((up("dh", registry=DOCKER_HUB),))
    assert hub_default.route("alpine").upstream_name == "library/alpine"


def test_no_route_without_default() -> None:
    router = Router((MIRROR, HUB))
    assert router.default is None
    with pytest.raises(UnknownRepositoryError, match="team/app"):
        router.route("team/app")
    with pytest.raises(UnknownRepositoryError):
        router.route("mirror")  # the prefix alone names no repository


def test_default_is_the_upstream_without_prefix() -> None:
    assert ROUTER.default is DEFAULT


@pytest.mark.parametrize(
    "name",
    ["app", "mirror/app", "mirror/team/app", "hub/alpine", "hub/bitnami/redis"],
    ids=["default", "prefix", "longest-prefix", "hub-library", "hub-user"],
)
def test_client_name_routes_back_to_the_same_repository(name: str) -> None:
    route = ROUTER.route(name)
    back = ROUTER.route(ROUTER.client_name(route.upstream, route.upstream_name))
    assert (back.upstream, back.upstream_name) == (route.upstream, route.upstream_name)
