"""Mutual TLS and certificate reload against the real binary, with a CA, server and client
certificates made in the test."""

import asyncio
import datetime
import signal
import ssl
import time

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidMessage, InvalidStatus

from conftest import Wsgate

NOW = datetime.datetime.now(datetime.timezone.utc)


def make_ca(name):
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    cert = (
        x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - datetime.timedelta(days=1)).not_valid_after(NOW + datetime.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
                                     key_encipherment=False, data_encipherment=False, key_agreement=False,
                                     encipher_only=False, decipher_only=False), critical=True)
        .sign(key, hashes.SHA256())
    )
    return cert, key


def issue(ca, cn, san, client):
    ca_cert, ca_key = ca
    key = ec.generate_private_key(ec.SECP256R1())
    eku = x509.ExtendedKeyUsageOID.CLIENT_AUTH if client else x509.ExtendedKeyUsageOID.SERVER_AUTH
    name = x509.DNSName(san)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn), x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Example")]))
        .issuer_name(ca_cert.subject).public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(NOW - datetime.timedelta(days=1)).not_valid_after(NOW + datetime.timedelta(days=30))
        .add_extension(x509.SubjectAlternativeName([name]), critical=False)
        .add_extension(x509.ExtendedKeyUsage([eku]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    return cert, key


def write(path, cert, key=None):
    path.with_suffix(".crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    if key:
        path.with_suffix(".key").write_bytes(
            key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
        )
    return path.with_suffix(".crt"), path.with_suffix(".key")


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    d = tmp_path_factory.mktemp("pki")
    ca, other = make_ca("Test CA"), make_ca("Other CA")
    files = {"dir": d}
    files["ca"], _ = write(d / "ca", ca[0])
    files["server"] = write(d / "server", *issue(ca, "localhost", "localhost", client=False))
    files["server2"] = write(d / "server2", *issue(ca, "renewed.localhost", "localhost", client=False))
    files["alice"] = write(d / "alice", *issue(ca, "alice", "alice.clients.example", client=True))
    files["bob"] = write(d / "bob", *issue(ca, "bob", "bob.clients.example", client=True))
    files["mallory"] = write(d / "mallory", *issue(other, "alice", "alice.clients.example", client=True))
    return files


def listener(cert, key, ca=None, mode=None):
    text = f'[[listener]]\naddress = "127.0.0.1:0"\n[listener.tls]\ncert = "{cert}"\nkey = "{key}"\n'
    if ca:
        text += f'client_ca = "{ca}"\nclient_auth = "{mode}"\n'
    return text


ROUTES = """
[[route]]
path = "/ws/open"
kind = "echo"

[[route]]
path = "/ws/certs"
kind = "echo"
client_cert = "required"

[[route]]
path = "/ws/alice"
kind = "echo"
client_cert = "required"
[route.authz]
cert_subjects = ["CN=alice, O=Example"]
cert_sans = ["*.clients.example"]
"""


def ctx(pki, client=None):
    c = ssl.create_default_context(cafile=str(pki["ca"]))
    if client:
        c.load_cert_chain(str(pki[client][0]), str(pki[client][1]))
    return c


async def echo(url, context):
    async with connect(url, ssl=context, server_hostname="localhost", open_timeout=5) as ws:
        await ws.send("x")
        return await ws.recv()


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 15))


@pytest.fixture(scope="module")
def gates(pki):
    s, k = pki["server"]
    required = Wsgate(listener(s, k, pki["ca"], "required") + ROUTES, pki["dir"])
    optional = Wsgate(listener(s, k, pki["ca"], "optional") + ROUTES, pki["dir"])
    yield {"required": required, "optional": optional}
    required.stop()
    optional.stop()


def test_required_client_certificate(gates, pki):
    url = gates["required"].url + "/ws/open"
    assert run(echo(url, ctx(pki, "alice"))) == "x"
    for client in (None, "mallory"):  # no certificate; a certificate from another CA
        # TLS 1.3: the server's alert arrives after the client's side of the handshake, so the
        # client sees the connection end before any HTTP response.
        with pytest.raises((ssl.SSLError, ConnectionError, OSError, InvalidMessage)):
            run(echo(url, ctx(pki, client)))
    # The server logs a failed handshake after the client has already seen the connection end.
    log = gates["required"].wait_log("TLS handshake failed", "UnknownIssuer")
    assert "TLS handshake failed" in log
    assert "no certificate" in log.lower() or "certificaterequired" in log.lower().replace(" ", ""), log[-2000:]
    assert "UnknownIssuer" in log, "the certificate from another CA is named as such"
    assert gates["required"].metric("wsgate_tls_handshake_failures_total") >= 2


def test_optional_client_certificate_and_routes_that_require_one(gates, pki):
    base = gates["optional"].url
    assert run(echo(base + "/ws/open", ctx(pki))) == "x", "optional: no certificate is fine here"
    with pytest.raises(InvalidStatus) as e:
        run(echo(base + "/ws/certs", ctx(pki)))
    assert e.value.response.status_code == 403
    assert e.value.response.headers["wsgate-reason"] == "tls.client_cert_required"
    assert run(echo(base + "/ws/certs", ctx(pki, "bob"))) == "x"


def test_certificate_subject_and_san_authorization(gates, pki):
    base = gates["optional"].url
    assert run(echo(base + "/ws/alice", ctx(pki, "alice"))) == "x"
    with pytest.raises(InvalidStatus) as e:
        run(echo(base + "/ws/alice", ctx(pki, "bob")))
    assert e.value.response.headers["wsgate-reason"] == "authz.forbidden"
    assert "rule cert_subjects" in gates["optional"].log()


def test_certificate_reload_keeps_open_connections(pki, tmp_path):
    import shutil

    cert, key = tmp_path / "live.crt", tmp_path / "live.key"
    shutil.copy(pki["server"][0], cert)
    shutil.copy(pki["server"][1], key)
    s = Wsgate(listener(cert, key) + ROUTES, tmp_path)
    try:
        async def go():
            c = ctx(pki)
            async with connect(s.url + "/ws/open", ssl=c, server_hostname="localhost") as old:
                first = old.transport.get_extra_info("ssl_object").getpeercert()["subject"]
                shutil.copy(pki["server2"][0], cert)
                shutil.copy(pki["server2"][1], key)
                s.proc.send_signal(signal.SIGHUP)
                deadline = time.time() + 6
                while "TLS certificate reloaded" not in s.log() and time.time() < deadline:
                    await asyncio.sleep(0.1)
                async with connect(s.url + "/ws/open", ssl=c, server_hostname="localhost") as new:
                    second = new.transport.get_extra_info("ssl_object").getpeercert()["subject"]
                    await new.send("new")
                    assert await new.recv() == "new"
                await old.send("old still open")
                assert await old.recv() == "old still open"
                return first, second

        first, second = run(go())
        assert ("commonName", "localhost") in [a for rdn in first for a in rdn]
        assert ("commonName", "renewed.localhost") in [a for rdn in second for a in rdn]
        # a broken replacement is refused and the current certificate stays
        key.write_text("not a key")
        s.proc.send_signal(signal.SIGHUP)
        assert "still serving the previous certificate" in s.wait_log("reload failed")
        assert run(echo(s.url + "/ws/open", ctx(pki))) == "x"
    finally:
        s.stop()
