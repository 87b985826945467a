"""Throwaway X.509 material for the test bed: one CA, server and client leaf certificates.

Everything is ECDSA P-256 (fast to generate, accepted by Go's crypto/tls and by Python's ssl)
and written as PEM files, because the real servers (notary-server, notary-signer,
docker-registry, uvicorn) take file paths. Private keys are unencrypted PKCS#8.
"""

from __future__ import annotations

import datetime
import ipaddress
import ssl
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

DEFAULT_HOSTS: tuple[str, ...] = ("127.0.0.1", "localhost")

# Backdated so that a few seconds of clock skew between processes never makes a fresh
# certificate "not yet valid".
_BACKDATE = datetime.timedelta(hours=1)
_LIFETIME = datetime.timedelta(days=30)


@dataclass(frozen=True)
class CertPair:
    """A PEM certificate and its PEM (PKCS#8, unencrypted) private key."""

    cert: Path
    key: Path


@dataclass(frozen=True)
class CA:
    """A self-signed CA whose files live on disk; issues leaf certificates."""

    name: str
    cert: Path
    key: Path

    def issue_server(
        self, directory: Path, name: str, hosts: Sequence[str] = DEFAULT_HOSTS
    ) -> CertPair:
        """A TLS server certificate for ``hosts`` (IP addresses become IP SANs).

        Go ignores the CN since 1.15, so the SANs are what clients check.
        """
        if not hosts:
            raise ValueError("a server certificate needs at least one host")
        return self._issue(
            directory,
            name,
            common_name=hosts[0],
            sans=[_san(h) for h in hosts],
            usages=[ExtendedKeyUsageOID.SERVER_AUTH],
        )

    def issue_client(self, directory: Path, name: str, cn: str) -> CertPair:
        """A TLS client certificate (mutual TLS) with common name ``cn``."""
        return self._issue(
            directory,
            name,
            common_name=cn,
            sans=[x509.DNSName(cn)] if _is_dns_name(cn) else [],
            usages=[ExtendedKeyUsageOID.CLIENT_AUTH],
        )

    def client_context(self, client: CertPair | None = None) -> ssl.SSLContext:
        """An SSL context trusting only this CA, optionally presenting ``client``."""
        return client_ssl_context(self.cert, client)

    def _issue(
        self,
        directory: Path,
        name: str,
        *,
        common_name: str,
        sans: list[x509.GeneralName],
        usages: list[x509.ObjectIdentifier],
    ) -> CertPair:
        ca_key = serialization.load_pem_private_key(self.key.read_bytes(), password=None)
        if not isinstance(ca_key, ec.EllipticCurvePrivateKey):
            raise RuntimeError(f"CA key {self.key} is not an EC key")
        ca_cert = x509.load_pem_x509_certificate(self.cert.read_bytes())
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
            .issuer_name(ca_cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - _BACKDATE)
            .not_valid_after(now + _LIFETIME)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=True,
                    key_cert_sign=False,
                    crl_sign=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
            .add_extension(
                x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False
            )
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                critical=False,
            )
        )
        if sans:
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        cert = builder.sign(ca_key, hashes.SHA256())
        return _write(directory, name, cert, key)


def self_signed_certificate(
    key: ec.EllipticCurvePrivateKey,
    common_name: str,
    *,
    lifetime: datetime.timedelta = _LIFETIME,
    ca: bool = False,
) -> x509.Certificate:
    """A self-signed certificate for ``key``; with ``ca=True`` it may sign certificates.

    One builder for the test bed's CA, the token server's signing cert and notary
    delegation certs (``docker trust key generate`` makes a plain self-signed one).
    """
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _BACKDATE)
        .not_valid_after(now + lifetime)
    )
    if ca:
        builder = (
            builder.add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(
                x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False
            )
        )
    return builder.sign(key, hashes.SHA256())


def make_ca(directory: Path, name: str = "trustproxy test CA") -> CA:
    """Create a self-signed CA in ``directory`` (``<slug>-ca.crt`` / ``<slug>-ca.key``)."""
    key = ec.generate_private_key(ec.SECP256R1())
    cert = self_signed_certificate(key, name, ca=True)
    pair = _write(directory, f"{_slug(name)}-ca", cert, key)
    return CA(name=name, cert=pair.cert, key=pair.key)


def client_ssl_context(ca_file: Path, client: CertPair | None = None) -> ssl.SSLContext:
    """Verify servers against ``ca_file`` only; present ``client`` for mutual TLS.

    An SSLContext rather than a path: httpx 0.28 deprecates ``verify=<path>`` and the test
    suite turns warnings into errors.
    """
    context = ssl.create_default_context(cafile=str(ca_file))
    if client is not None:
        context.load_cert_chain(str(client.cert), str(client.key))
    return context


def _write(
    directory: Path, name: str, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey
) -> CertPair:
    directory.mkdir(parents=True, exist_ok=True)
    cert_path = directory / f"{name}.crt"
    key_path = directory / f"{name}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    key_path.chmod(0o600)
    return CertPair(cert=cert_path, key=key_path)


def _san(host: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        return x509.DNSName(host)


def _is_dns_name(value: str) -> bool:
    return bool(value) and all(c.isalnum() or c in "-." for c in value)


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in name.lower()).strip("-") or "ca"
