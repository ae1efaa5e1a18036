"""The project CA: an EC P-256 root kept in a directory, server certificates for the broker and
optional client certificates. Keys are written owner-only (0600) and never overwritten silently.

Layout of the CA directory: ca.key, ca.crt (PEM), ca.der (the same certificate in DER, for
MicroPython), <name>.key + <name>.crt per issued certificate.
Building certificates is pure (keys and names in, objects out); `init_ca`/`issue_*` do the files.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import re
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from controller.errors import BAD_HOST, CA_EXISTS, CA_MISSING, SecurityError

CA_DAYS = 3650  # the root lives ten years; rotating it means re-flashing every device's CA file
SERVER_DAYS = 397  # what browsers accept; the broker's cert is cheap to reissue
CLIENT_DAYS = 825
_LABEL = r"[a-zA-Z0-9]([a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?"
_HOST_RE = re.compile(rf"^(?=.{{1,253}}$){_LABEL}(\.{_LABEL})*$")
_SAFE_NAME = re.compile(r"^[a-z0-9][a-z0-9.-]{0,63}$")


@dataclass(frozen=True)
class Issued:
    key: Path
    cert: Path


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def build_ca(key: ec.EllipticCurvePrivateKey, name: str, days: int = CA_DAYS) -> x509.Certificate:
    """Self-signed root allowed to sign end-entity certificates only (path length 0)."""
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = _now()
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
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
        .add_extension(ski, critical=False)
        .sign(key, hashes.SHA256())
    )


def parse_hosts(hosts: list[str]) -> list[x509.GeneralName]:
    """Each HOST becomes an IP SAN when it parses as an address, otherwise a DNS SAN."""
    if not hosts:
        raise SecurityError(BAD_HOST, "give at least one HOST (DNS name or IP address)")
    names: list[x509.GeneralName] = []
    for h in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(h)))
            continue
        except ValueError:
            pass
        if not _HOST_RE.match(h):
            raise SecurityError(
                BAD_HOST, f"{h!r} is neither an IP address nor a DNS name: fix the HOST argument"
            )
        names.append(x509.DNSName(h.lower()))
    return names


def build_leaf(
    ca_key: ec.EllipticCurvePrivateKey,
    ca_cert: x509.Certificate,
    key: ec.EllipticCurvePrivateKey,
    common_name: str,
    sans: list[x509.GeneralName],
    server: bool,
    days: int,
) -> x509.Certificate:
    now = _now()
    usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(min(now + dt.timedelta(days=days), ca_cert.not_valid_after_utc))
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
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
    )
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return builder.sign(ca_key, hashes.SHA256())


# Files ---------------------------------------------------------------------------------------


def _write(path: Path, data: bytes, mode: int) -> None:
    """Create-exclusive write then rename, so a crash never leaves half a key under the name."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def init_ca(directory: Path, name: str = "idufleet project CA", days: int = CA_DAYS) -> Issued:
    """Create ca.key (0600) and ca.crt in `directory` (0700 when created). Refuses to replace an
    existing CA: every device trusts it, so replacing it is a deliberate, manual act."""
    key_path, cert_path = directory / "ca.key", directory / "ca.crt"
    if key_path.exists() or cert_path.exists():
        raise SecurityError(
            CA_EXISTS,
            f"a CA already exists in {directory}: keep it, or move it away deliberately first",
        )
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    key = new_key()
    cert = build_ca(key, name, days)
    _write(key_path, _key_pem(key), 0o600)
    _write(cert_path, _cert_pem(cert), 0o644)
    # MicroPython's ssl (Mbed TLS build of the unix port) loads DER only: ship this one to devices
    _write(directory / "ca.der", cert.public_bytes(serialization.Encoding.DER), 0o644)
    return Issued(key_path, cert_path)


def load_ca(directory: Path) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    try:
        key = serialization.load_pem_private_key((directory / "ca.key").read_bytes(), None)
        cert = x509.load_pem_x509_certificate((directory / "ca.crt").read_bytes())
    except FileNotFoundError as e:
        raise SecurityError(
            CA_MISSING, f"no CA in {directory}: run `idufleet ca init --dir {directory}` first"
        ) from e
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise SecurityError(CA_MISSING, f"{directory}/ca.key is not an EC key")
    return key, cert


def _issue(
    directory: Path, name: str, cn: str, sans: list[x509.GeneralName], server: bool, days: int
) -> Issued:
    if not _SAFE_NAME.match(name):
        raise SecurityError(BAD_HOST, f"file name {name!r}: use a-z 0-9 . - only")
    ca_key, ca_cert = load_ca(directory)
    key = new_key()
    cert = build_leaf(ca_key, ca_cert, key, cn, sans, server, days)
    key_path, cert_path = directory / f"{name}.key", directory / f"{name}.crt"
    _write(key_path, _key_pem(key), 0o600)
    _write(cert_path, _cert_pem(cert), 0o644)
    return Issued(key_path, cert_path)


def issue_server(
    directory: Path, hosts: list[str], name: str = "server", days: int = SERVER_DAYS
) -> Issued:
    """Broker certificate for every HOST given (SAN DNS or IP); files <name>.key / <name>.crt.
    Reissuing overwrites the previous server pair (restart or SIGHUP the broker to load it)."""
    return _issue(directory, name, hosts[0] if hosts else "", parse_hosts(hosts), True, days)


def issue_client(directory: Path, common_name: str, days: int = CLIENT_DAYS) -> Issued:
    """Client certificate (CN = the broker username), for `require_certificate true` listeners."""
    return _issue(directory, f"client-{common_name}", common_name, [], False, days)


def ca_der(directory: Path) -> bytes:
    """The CA certificate in DER: what MicroPython's load_verify_locations(cadata=...) takes."""
    cert = x509.load_pem_x509_certificate((directory / "ca.crt").read_bytes())
    return cert.public_bytes(serialization.Encoding.DER)
