"""Demo key material: an RSA key and a self-signed certificate, and loading them back.

Production deployments bring their own certificates; these exist so ``xds-node keys init`` and the
tests can run a complete signed exchange without any outside PKI.
"""

from __future__ import annotations

import ipaddress
import os
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID


def _slug(name: str) -> str:
    slug = re.sub(r"[^A-Za-z0-9]+", "-", name).strip("-").lower()
    return slug or "node"


def generate_demo_keys(
    dir: Path, *, common_name: str, valid_days: int = 730, key_size: int = 2048
) -> tuple[Path, Path]:
    """Write ``<slug>.key.pem`` (unencrypted PKCS#8, mode 0600) and ``<slug>.cert.pem``; return both paths.

    The certificate is self-signed on purpose: partners pin it exactly (see ``trust.py``), so no CA is
    involved. It is back-dated one day so small clock differences between nodes do not matter.
    """
    dir = Path(dir)
    dir.mkdir(parents=True, exist_ok=True)
    key = rsa.generate_private_key(public_exponent=65537, key_size=key_size)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(days=1))
        .not_valid_after(now + timedelta(days=valid_days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=True,
                key_encipherment=True,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        # usable as a TLS server/client certificate on this machine too (demo and tests)
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                    x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                       critical=False)
        .sign(key, hashes.SHA256())
    )
    slug = _slug(common_name)
    key_path = dir / f"{slug}.key.pem"
    cert_path = dir / f"{slug}.cert.pem"
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(key_pem)
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return key_path, cert_path


def load_key_and_cert(
    key_path: Path | str, cert_path: Path | str, *, password: bytes | None = None
) -> tuple[rsa.RSAPrivateKey, x509.Certificate]:
    """Load a PEM private key and PEM certificate and check that they belong together."""
    key = serialization.load_pem_private_key(Path(key_path).read_bytes(), password=password)
    if not isinstance(key, rsa.RSAPrivateKey):
        raise ValueError("only RSA keys are supported for eHealth Exchange signatures")
    cert = x509.load_pem_x509_certificate(Path(cert_path).read_bytes())
    if cert.public_key().public_numbers() != key.public_key().public_numbers():
        raise ValueError("the certificate does not match the private key")
    return key, cert
