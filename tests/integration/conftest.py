"""Fixtures for integration tests against real servers and clients."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from testbed.notary_cli import NotaryCli
from testbed.notary_server import NotaryBed
from testbed.tls import CA, make_ca
from testbed.trust_scenarios import ALL_SCENARIOS, Scenario, cli_for

# -- notary_bed* / tls_* fixtures: a real notary-signer + notary-server (testbed.notary_server) --


@pytest.fixture(scope="session")
def tls_ca(tmp_path_factory: pytest.TempPathFactory) -> CA:
    """A throwaway CA for the session (testbed.tls); issue server/client certs from it."""
    return make_ca(tmp_path_factory.mktemp("tls-ca"), "trustproxy session CA")


@pytest.fixture(scope="session")
def notary_bed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NotaryBed]:
    """notary-signer + notary-server on free loopback ports, once per session.

    Skips when the Debian `notary` binaries are not installed."""
    missing = [b for b in ("notary-server", "notary-signer", "notary") if shutil.which(b) is None]
    if missing:
        pytest.skip(f"{', '.join(missing)} not on PATH (Debian package `notary`)")
    bed = NotaryBed.start(tmp_path_factory.mktemp("notary-bed"))
    try:
        yield bed
    finally:
        bed.stop()


@pytest.fixture(scope="session")
def notary_bed_scenarios(
    notary_bed: NotaryBed, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Scenario]:
    """Every scenario of testbed.trust_scenarios, built once on the session's bed."""
    workdir = tmp_path_factory.mktemp("notary-scenarios")
    return {name: build(notary_bed, workdir, None) for name, build in ALL_SCENARIOS.items()}


@pytest.fixture
def notary_bed_reader(notary_bed: NotaryBed, tmp_path: Path) -> NotaryCli:
    """A notary CLI with a fresh, empty trust directory: trusts the server on first use."""
    return cli_for(notary_bed, tmp_path / "reader-trust")
