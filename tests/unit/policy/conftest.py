"""Fixtures for the policy tests."""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from testbed.tls import self_signed_certificate


@pytest.fixture
def ca_pem(tmp_path: Path) -> Path:
    """A CA certificate file next to where the tests write their policy files."""
    key = ec.generate_private_key(ec.SECP256R1())
    cert = self_signed_certificate(key, "policy test CA", ca=True)
    path = tmp_path / "ca.pem"
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return path
