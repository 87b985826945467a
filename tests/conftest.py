"""Shared fixtures: a real registry with test images, and trustproxy in front of it."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field

import httpx
import pytest

from testbed import images
from testbed.processes import Server
from testbed.proxy_server import start_proxy, upstream_config
from testbed.registry import registry_binary, start_registry

REPO = "team/app"
MANY = "team/many"
MANY_TAGS = [f"v{i:02d}" for i in range(25)]


@dataclass
class RegistryBed:
    server: Server
    url: str
    host: str
    digests: dict[str, str] = field(default_factory=dict)  # tag -> manifest digest
    blobs: list[images.Blob] = field(default_factory=list)


def requires(*commands: str) -> None:
    missing = [c for c in commands if shutil.which(c) is None]
    if missing:
        pytest.skip(f"not installed: {', '.join(missing)} (run `make test` to install)")


@pytest.fixture(scope="session")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistryBed]:
    if registry_binary() is None:
        pytest.skip("docker-registry is not installed (run `make test` to install it)")
    server = start_registry(tmp_path_factory.mktemp("registry"))
    bed = RegistryBed(server, server.extra["url"], server.extra["host"])
    try:
        with httpx.Client(base_url=bed.url, timeout=30) as client:
            kinds = {
                "oci": images.single_image("oci"),
                "docker": images.single_image("docker", docker=True),
                "index": images.multi_arch_image("index"),
                "list": images.multi_arch_image("list", docker=True),
            }
            for tag, image in kinds.items():
                bed.digests[tag] = images.push_image(client, REPO, image, tag)
                bed.blobs.extend(image.blobs)
            small = images.single_image("many")
            for tag in MANY_TAGS:
                images.push_image(client, MANY, small, tag)
        yield bed
    finally:
        server.stop()


@pytest.fixture(scope="session")
def proxy(registry: RegistryBed, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """trustproxy in front of the registry: as the default route and under /mirror."""
    config = {
        "upstreams": [
            upstream_config("internal", registry.url),
            upstream_config("mirror", registry.url, prefix="mirror"),
        ],
        "logging": {"format": "json"},
    }
    server = start_proxy(tmp_path_factory.mktemp("proxy"), config)
    try:
        yield server
    finally:
        server.stop()
