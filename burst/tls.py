"""A fresh certificate authority per cluster: every Dask connection is mutual TLS, and each
party has its own identity.

Four certificates, each with its own key, signed by the cluster's CA:

- `scheduler` and `worker`: serve TLS and connect to each other (server and client auth);
- `client`: this machine's, client auth only; it never leaves the client;
- `driver`: a detached job's driver on the scheduler instance, client auth only.

The role is the certificate's organizational unit (OU): the scheduler lets only a `client` or
`driver` certificate act as a Dask client (burst.node), so a node's key cannot.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from distributed.security import Security

from burst.errors import CertificateRefused
from burst.node import REFUSED

NODE_ROLES = ("scheduler", "worker", "driver")  # whose pairs go to the cluster's secret store
ROLES = (*NODE_ROLES, "client")
_USAGES = {
    "scheduler": [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH],
    "worker": [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH],
    "client": [ExtendedKeyUsageOID.CLIENT_AUTH],
    "driver": [ExtendedKeyUsageOID.CLIENT_AUTH],
}


@dataclass(frozen=True)
class Pair:
    cert: str
    key: str


@dataclass(frozen=True)
class Credentials:
    """PEM text: the cluster's CA and one pair per role (see the module's docstring)."""

    ca: str
    pairs: dict[str, Pair]

    @property
    def client_cert(self) -> str:
        return self.pairs["client"].cert

    @property
    def client_key(self) -> str:
        return self.pairs["client"].key

    def node_bundle(self) -> dict[str, dict[str, str]]:
        """What goes to the secret store, one entry per node role, each stored apart (and read
        by that role's instances alone); the client's pair is not in it."""
        return {
            role: {"ca": self.ca, "cert": self.pairs[role].cert, "key": self.pairs[role].key}
            for role in NODE_ROLES
        }

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


def _name(role: str, cluster_id: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, f"burst {role} {cluster_id}"),
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, role),
        ]
    )


def _certificate(
    subject: x509.Name,
    key,
    issuer: x509.Name,
    signer,
    lifetime: dt.timedelta,
    usages: list[x509.ObjectIdentifier] | None,
) -> x509.Certificate:
    """The CA when `usages` is None; else a leaf for those extended key usages."""
    now = dt.datetime.now(dt.UTC)
    is_ca = usages is None
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + lifetime)
        .add_extension(x509.BasicConstraints(ca=is_ca, path_length=0 if is_ca else None), True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=not is_ca,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=is_ca,
                crl_sign=is_ca,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(signer.public_key()), False
        )
    )
    if usages:
        builder = builder.add_extension(x509.ExtendedKeyUsage(usages), critical=False)
    return builder.sign(signer, hashes.SHA256())


def issue(cluster_id: str, lifetime: dt.timedelta) -> Credentials:
    """EC keys keep each role's bundle small enough for one standard SSM parameter (4 KB)."""
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"burst CA {cluster_id}")])
    ca = _certificate(ca_name, ca_key, ca_name, ca_key, lifetime, None)
    pairs = {}
    for role in ROLES:
        key = ec.generate_private_key(ec.SECP256R1())
        cert = _certificate(_name(role, cluster_id), key, ca_name, ca_key, lifetime, _USAGES[role])
        pairs[role] = Pair(cert.public_bytes(serialization.Encoding.PEM).decode(), _pem_key(key))
    return Credentials(ca.public_bytes(serialization.Encoding.PEM).decode(), pairs)


def refusal(error: BaseException) -> CertificateRefused | None:
    """The scheduler's refusal of a certificate (burst.node.only_for), as burst's error, when
    `error` or what caused it is one: distributed's Client raises the scheduler's text as an
    ImportError (what it does with any error in the scheduler's stream-start reply)."""
    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, ImportError | PermissionError) and REFUSED in str(error):
            return CertificateRefused(
                f"the scheduler refused this connection: {error}",
                "connect with the cluster's own client certificate: Client(cluster), or "
                "Security from cluster.security",
                code="CertificateRefused",
            )
        error = error.__cause__ or error.__context__
    return None
