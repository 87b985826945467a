"""The image tests use the real notary bed and CA of the integration tests: the same fixtures,
not copies (instantiated once more when tests here run in the same session)."""

from __future__ import annotations

from tests.integration.conftest import notary_bed, tls_ca

__all__ = ["notary_bed", "tls_ca"]
