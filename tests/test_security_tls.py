"""The project CA and the broker's TLS listener: paho (the controller's client) and the real
MicroPython unix port (the agent's TLS stack, mbedTLS) verify the CA; wrong CAs and names fail."""

from __future__ import annotations

import os
import ssl
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from controller.errors import BAD_HOST, CA_EXISTS, CA_MISSING, SecurityError
from controller.security import ca, dynsec
from controller.security.broker_config import BrokerSettings, TlsListener
from tests.support.broker import free_port
from tests.support.secure_broker import GeneratedBroker, Peer
from tests.support.upy import UpyResult
from tools.cli import cli

ADMIN, ADMIN_PW = "admin", dynsec.new_password()

# Raw MQTT 3.1.1 CONNECT/CONNACK over MicroPython's ssl module: what the agent's link will do.
UPY_TLS = """
import socket, ssl, sys
host, port, cafile, sni, user, pw = sys.argv[1:7]
with open(cafile, 'rb') as f:
    ca = f.read()
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
ctx.verify_mode = ssl.CERT_REQUIRED
try:
    ctx.load_verify_locations(cadata=ca)
except ValueError as e:
    print('CAFAIL', e)
    sys.exit(4)
s = socket.socket()
s.connect(socket.getaddrinfo(host, int(port))[0][-1])
s.setsockopt(6, 1, 1)
try:
    ss = ctx.wrap_socket(s, server_hostname=sni)
except Exception as e:
    print('TLSFAIL', repr(e))
    sys.exit(3)
def s16(b):
    return bytes([len(b) >> 8, len(b) & 255]) + b
rem = s16(b'MQTT') + b'\\x04\\xc2\\x00\\x3c' + s16(b'upy-tls')
rem += s16(user.encode()) + s16(pw.encode())
ss.write(bytes([0x10, len(rem)]) + rem)
r = ss.read(4)
print('CONNACK', r[0], r[3])
ss.close()
"""


@pytest.fixture
def cadir(tmp_path: Path) -> Path:
    d = tmp_path / "ca"
    ca.init_ca(d)
    ca.issue_server(d, ["localhost", "127.0.0.1"])
    return d


@pytest.fixture
def tls_broker(tmp_path: Path, cadir: Path) -> Iterator[GeneratedBroker]:
    dyn = dynsec.write_initial_file(tmp_path / "dynsec.json", ADMIN, ADMIN_PW)
    tls = TlsListener(
        free_port(), cadir / "ca.crt", cadir / "server.crt", cadir / "server.key", "127.0.0.1"
    )
    b = GeneratedBroker(
        tmp_path / "b", settings=BrokerSettings(data_dir=tmp_path, dynsec_file=dyn, tls=tls)
    )
    b.start()
    with dynsec.DynsecClient("127.0.0.1", b.port, ADMIN, ADMIN_PW) as admin:
        admin.create_device("porto", "ap-a", "pw-a")
    yield b
    b.stop()


def tls_port(b: GeneratedBroker) -> int:
    assert b.settings is not None and b.settings.tls is not None
    return b.settings.tls.port


def client_ctx(cafile: Path, hostname_check: bool = True) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(cafile))
    ctx.check_hostname = hostname_check
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    return ctx


def test_ca_files_and_certificates(tmp_path: Path, cadir: Path) -> None:
    assert os.stat(cadir).st_mode & 0o777 == 0o700
    for key in ("ca.key", "server.key"):
        assert os.stat(cadir / key).st_mode & 0o777 == 0o600
    root = x509.load_pem_x509_certificate((cadir / "ca.crt").read_bytes())
    assert (cadir / "ca.der").read_bytes() == ca.ca_der(cadir)
    leaf = x509.load_pem_x509_certificate((cadir / "server.crt").read_bytes())
    assert isinstance(root.public_key(), ec.EllipticCurvePublicKey)
    assert root.public_key().curve.name == "secp256r1"  # type: ignore[union-attr]
    assert root.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    leaf.verify_directly_issued_by(root)
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["localhost"]
    assert [str(i) for i in san.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    assert leaf.not_valid_after_utc <= root.not_valid_after_utc
    with pytest.raises(SecurityError) as e:
        ca.init_ca(cadir)
    assert e.value.code == CA_EXISTS
    with pytest.raises(SecurityError) as e:
        ca.issue_server(cadir, ["bad_host!"])
    assert e.value.code == BAD_HOST
    with pytest.raises(SecurityError) as e:
        ca.issue_server(tmp_path / "nowhere", ["localhost"])
    assert e.value.code == CA_MISSING


def test_paho_verifies_the_ca(tls_broker: GeneratedBroker, cadir: Path) -> None:
    p = Peer(tls_port(tls_broker), "ap-a", "pw-a", tls=client_ctx(cadir / "ca.crt"))
    try:
        assert p.connect() == 0
        assert p.subscribe("idu/1/porto/ap-a/cmd") == [1]
    finally:
        p.close()
    # the admin channel works over TLS too (what the controller and provisioning use)
    ctx = client_ctx(cadir / "ca.crt")
    with dynsec.DynsecClient("localhost", tls_port(tls_broker), ADMIN, ADMIN_PW, tls=ctx) as a:
        assert "ap-a" in a.list_clients()


def test_paho_refuses_wrong_ca_and_wrong_name(
    tls_broker: GeneratedBroker, tmp_path: Path, cadir: Path
) -> None:
    other = tmp_path / "other"
    ca.init_ca(other)
    p = Peer(tls_port(tls_broker), "ap-a", "pw-a", tls=client_ctx(other / "ca.crt"))
    with pytest.raises(ssl.SSLCertVerificationError):
        p.connect()
    ca.issue_server(cadir, ["mqtt.example.org"], name="elsewhere")
    tls = TlsListener(
        free_port(), cadir / "ca.crt", cadir / "elsewhere.crt", cadir / "elsewhere.key", "127.0.0.1"
    )
    assert tls_broker.settings is not None
    b2 = GeneratedBroker(
        tmp_path / "b2",
        settings=BrokerSettings(
            data_dir=tmp_path / "b2", dynsec_file=tls_broker.settings.dynsec_file, tls=tls
        ),
        plain=True,
    )
    b2.start()
    try:
        p2 = Peer(tls.port, "ap-a", "pw-a", tls=client_ctx(cadir / "ca.crt"))
        with pytest.raises(ssl.SSLCertVerificationError, match=r"match|mismatch"):
            p2.connect()
    finally:
        b2.stop()


@pytest.mark.parametrize(
    ("which", "sni", "expect"),
    [
        ("der", "localhost", "CONNACK 32 0"),
        ("der", "127.0.0.1", "CONNACK 32 0"),  # IP SAN matched by mbedTLS 3.6
        ("der", "wrong.example", "TLSFAIL"),
        ("other-der", "localhost", "TLSFAIL"),
        ("pem", "localhost", "CAFAIL"),  # this build parses DER only: ship the CA as DER
    ],
)
def test_micropython_tls_verifies_the_ca(
    tls_broker: GeneratedBroker,
    cadir: Path,
    tmp_path: Path,
    upy: Callable[..., UpyResult],
    which: str,
    sni: str,
    expect: str,
) -> None:
    if which == "other-der":
        ca.init_ca(tmp_path / "other")
        data = ca.ca_der(tmp_path / "other")
    elif which == "der":
        data = ca.ca_der(cadir)
    else:
        data = (cadir / "ca.crt").read_bytes()
    cafile = tmp_path / "ca.bin"
    cafile.write_bytes(data)
    args = ("127.0.0.1", str(tls_port(tls_broker)), str(cafile), sni, "ap-a", "pw-a")
    r = upy(UPY_TLS, *args, timeout=60)
    assert expect in r.stdout, r.stdout + r.stderr
    if expect.startswith("CONNACK"):
        assert r.returncode == 0
    else:
        assert r.returncode != 0


UPY_ASYNC_TLS = """
import sys, ssl, asyncio
host, port, cafile = sys.argv[1:4]
async def main():
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    try:
        ctx.load_verify_locations(cafile=cafile)
    except ValueError as e:
        print('CAFAIL', e)
        return
    ctx.verify_mode = ssl.CERT_REQUIRED
    r, w = await asyncio.open_connection(host, int(port), ssl=ctx)
    # The handshake is deferred: verification fails at the first write or drain (which of the
    # two depends on whether the socket was writable at once), so both sit inside the try.
    print('OPENED')
    def s16(b):
        return bytes([len(b) >> 8, len(b) & 255]) + b
    rem = s16(b'MQTT') + b'\\x04\\xc2\\x00\\x3c' + s16(b'upy-a') + s16(b'ap-a') + s16(b'pw-a')
    try:
        w.write(bytes([0x10, len(rem)]) + rem)
        await w.drain()
    except Exception as e:
        print('TLSFAIL', type(e).__name__, e)
        return
    b = await r.read(4)
    print('CONNACK', b[0], b[3])
asyncio.run(main())
"""


@pytest.mark.parametrize(
    ("host", "der", "expect"),
    [
        ("localhost", True, "CONNACK 32 0"),
        ("127.0.0.1", True, "CONNACK 32 0"),  # the fixture's cert has an IP SAN too
        ("localhost", False, "CAFAIL"),  # cafile= must be a DER file on this build
    ],
)
def test_micropython_asyncio_tls_with_cafile(
    tls_broker: GeneratedBroker,
    cadir: Path,
    tmp_path: Path,
    upy: Callable[..., UpyResult],
    host: str,
    der: bool,
    expect: str,
) -> None:
    """MicroPython's TLS through asyncio.open_connection(host, port, ssl=ctx), the CA loaded
    with cafile=: the certificate is checked against `host` (firmware/link.py takes the same
    steps on its own socket; tests/test_firmware_tls.py runs the agent over TLS)."""
    cafile = tmp_path / ("ca.der" if der else "ca.pem")
    cafile.write_bytes(ca.ca_der(cadir) if der else (cadir / "ca.crt").read_bytes())
    r = upy(UPY_ASYNC_TLS, host, str(tls_port(tls_broker)), str(cafile), timeout=60)
    assert expect in r.stdout, r.stdout + r.stderr


def test_micropython_asyncio_tls_checks_the_host(
    tmp_path: Path, cadir: Path, upy: Callable[..., UpyResult]
) -> None:
    ca.issue_server(cadir, ["localhost"], name="dnsonly")
    dyn = dynsec.write_initial_file(tmp_path / "d.json", ADMIN, ADMIN_PW)
    tls = TlsListener(
        free_port(), cadir / "ca.crt", cadir / "dnsonly.crt", cadir / "dnsonly.key", "127.0.0.1"
    )
    b = GeneratedBroker(
        tmp_path / "b", settings=BrokerSettings(data_dir=tmp_path, dynsec_file=dyn, tls=tls)
    )
    b.start()
    try:
        cafile = tmp_path / "ca.der"
        cafile.write_bytes(ca.ca_der(cadir))
        r = upy(UPY_ASYNC_TLS, "127.0.0.1", str(tls.port), str(cafile), timeout=60)
        # ValueError, not OSError: a link layer that only catches OSError must catch this too
        assert "OPENED\nTLSFAIL ValueError" in r.stdout, r.stdout + r.stderr
        assert "does not match" in r.stdout
    finally:
        b.stop()


def test_client_certificates_when_required(tmp_path: Path, cadir: Path) -> None:
    dyn = dynsec.write_initial_file(tmp_path / "dynsec.json", ADMIN, ADMIN_PW)
    tls = TlsListener(
        free_port(),
        cadir / "ca.crt",
        cadir / "server.crt",
        cadir / "server.key",
        "127.0.0.1",
        require_certificate=True,
    )
    b = GeneratedBroker(
        tmp_path / "b", settings=BrokerSettings(data_dir=tmp_path, dynsec_file=dyn, tls=tls)
    )
    b.start()
    try:
        with dynsec.DynsecClient("127.0.0.1", b.port, ADMIN, ADMIN_PW) as admin:
            admin.create_device("porto", "ap-a", "pw-a")
        issued = ca.issue_client(cadir, "ap-a")
        assert os.stat(issued.key).st_mode & 0o777 == 0o600
        with_cert = client_ctx(cadir / "ca.crt")
        with_cert.load_cert_chain(issued.cert, issued.key)
        p = Peer(tls.port, "ap-a", "pw-a", tls=with_cert)
        try:
            assert p.connect() == 0
        finally:
            p.close()
        bare = Peer(tls.port, "ap-a", "pw-a", tls=client_ctx(cadir / "ca.crt"))
        try:  # TLS 1.3 reports the missing certificate after the handshake, at the CONNECT
            rc = bare.connect(timeout=3)
        except (ssl.SSLError, OSError):
            rc = -2
        finally:
            bare.close()
        assert rc != 0, "connected without a client certificate"
    finally:
        b.stop()


def test_cli_ca_commands(tmp_path: Path) -> None:
    d = tmp_path / "cli-ca"
    runner = CliRunner()
    r = runner.invoke(cli, ["ca", "init", "--dir", str(d)])
    assert r.exit_code == 0, r.output
    assert (d / "ca.crt").exists() and os.stat(d / "ca.key").st_mode & 0o777 == 0o600
    r = runner.invoke(cli, ["ca", "issue-server", "broker.porto.pt", "10.0.0.5", "--dir", str(d)])
    assert r.exit_code == 0, r.output
    assert "BEGIN" not in r.output  # never print key material
    r = runner.invoke(cli, ["ca", "init", "--dir", str(d)])
    assert r.exit_code == 1 and "already exists" in r.output and len(r.output.splitlines()) == 1
    r = runner.invoke(cli, ["ca", "issue-server", "no_such host", "--dir", str(d)])
    assert r.exit_code == 1 and "neither an IP address nor a DNS name" in r.output
