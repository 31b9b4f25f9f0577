"""A fresh certificate authority per cluster: every Dask connection is mutual TLS."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from distributed.security import Security


@dataclass(frozen=True)
class Credentials:
    """PEM text: the cluster's CA, a node pair (scheduler and workers) and a client pair."""

    ca: str
    node_cert: str
    node_key: str
    client_cert: str
    client_key: str

    def node_bundle(self) -> dict[str, str]:
        """What the nodes read from the secret store; the client's key never leaves the client."""
        return {"ca": self.ca, "cert": self.node_cert, "key": self.node_key}

    def client_security(self) -> Security:
        return Security(
            tls_ca_file=self.ca,
            tls_client_cert=self.client_cert,
            tls_client_key=self.client_key,
            require_encryption=True,
        )


def _pem_key(key: ec.EllipticCurvePrivateKey) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()


def _certificate(
    subject: str, key, issuer: x509.Name, signer, lifetime: dt.timedelta, is_ca: bool
) -> x509.Certificate:
    now = dt.datetime.now(dt.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + lifetime)
        .add_extension(x509.BasicConstraints(ca=is_ca, path_length=None), critical=True)
        .sign(signer, hashes.SHA256())
    )


def issue(cluster_id: str, lifetime: dt.timedelta) -> Credentials:
    """EC keys keep the node bundle small enough for one standard SSM parameter (4 KB)."""
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"burst CA {cluster_id}")])
    ca = _certificate(f"burst CA {cluster_id}", ca_key, ca_name, ca_key, lifetime, True)
    pairs = []
    for role in ("node", "client"):
        key = ec.generate_private_key(ec.SECP256R1())
        cert = _certificate(f"burst {role} {cluster_id}", key, ca_name, ca_key, lifetime, False)
        pairs += [cert.public_bytes(serialization.Encoding.PEM).decode(), _pem_key(key)]
    return Credentials(ca.public_bytes(serialization.Encoding.PEM).decode(), *pairs)
