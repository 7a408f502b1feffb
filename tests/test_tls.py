"""TLS termination with real certificates (rcgen via `wsgate cert dev`, OpenSSL, and backdated ones made with
`cryptography`): round trips, handshake timeouts, and certificates that refuse to start or warn."""

import asyncio
import datetime
import ssl
import subprocess

from websockets.asyncio.client import connect

from conftest import BIN, config, require_tool


def tls_listener(cert, key):
    return f'\n[listener.tls]\ncert = "{cert}"\nkey = "{key}"\n'


def make_cert(tmp_path, name, not_before, not_after, host="localhost"):
    """A self-signed certificate with explicit dates (OpenSSL 3.0's CLI cannot backdate)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host)])
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(host)]), critical=False)
        .sign(key, hashes.SHA256())
    )
    c, k = tmp_path / f"{name}.crt", tmp_path / f"{name}.key"
    c.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    k.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    return c, k


def wss_round_trip(url, cafile):
    ctx = ssl.create_default_context(cafile=str(cafile))

    async def go():
        async with connect(url, ssl=ctx, server_hostname="localhost") as ws:
            await ws.send("over tls")
            return await ws.recv()

    return asyncio.run(asyncio.wait_for(go(), 15))


def test_wss_round_trip_with_a_cert_from_wsgate_cert_dev(wsgate, tmp_path):
    out = subprocess.run([BIN, "cert", "dev", "--host", "localhost", "--out", str(tmp_path)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "key.pem").stat().st_mode & 0o077 == 0, "the private key is private"
    s = wsgate(config(listener_extra=tls_listener(tmp_path / "cert.pem", tmp_path / "key.pem")))
    assert s.url.startswith("wss://")
    assert wss_round_trip(s.url + "/ws/echo", tmp_path / "cert.pem") == "over tls"
    assert 0 < s.metric("wsgate_tls_certificate_expiry_seconds", listener="listener[0]") <= 91 * 86400


def test_wss_round_trip_with_an_openssl_cert(wsgate, tmp_path):
    openssl = require_tool("openssl", "makes the test certificate")
    c, k = tmp_path / "o.crt", tmp_path / "o.key"
    subprocess.run(
        [openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", k, "-out", c, "-days", "30",
         "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost"],
        check=True, capture_output=True,
    )
    s = wsgate(config(listener_extra=tls_listener(c, k)))
    assert wss_round_trip(s.url + "/ws/echo", c) == "over tls"


def test_tls_handshake_timeout_applies_to_silent_clients(wsgate, tmp_path):
    import socket, time

    now = datetime.datetime.now(datetime.timezone.utc)
    c, k = make_cert(tmp_path, "t", now - datetime.timedelta(days=1), now + datetime.timedelta(days=30))
    s = wsgate(config(listener_extra=tls_listener(c, k), limits='handshake_timeout = "500ms"\n'))
    sock = socket.create_connection(("127.0.0.1", s.port), timeout=5)
    t0 = time.time()
    assert sock.recv(10) == b""
    assert time.time() - t0 < 4


def start_fails(tmp_path, text):
    p = tmp_path / "bad.toml"
    p.write_text(text)
    out = subprocess.run([BIN, "serve", "--config", str(p), "--admin", "off"], capture_output=True, text=True, timeout=15)
    assert out.returncode != 0
    return out.stderr


def test_expired_certificate_refuses_to_start(tmp_path):
    now = datetime.datetime.now(datetime.timezone.utc)
    c, k = make_cert(tmp_path, "old", now - datetime.timedelta(days=30), now - datetime.timedelta(days=1))
    err = start_fails(tmp_path, config(listener_extra=tls_listener(c, k)))
    assert "`listener[0].tls.cert`" in err and "expired on" in err and "renew" in err


def test_key_of_another_certificate_refuses_to_start(tmp_path):
    now = datetime.datetime.now(datetime.timezone.utc)
    c, _ = make_cert(tmp_path, "a", now, now + datetime.timedelta(days=30))
    _, k2 = make_cert(tmp_path, "b", now, now + datetime.timedelta(days=30))
    err = start_fails(tmp_path, config(listener_extra=tls_listener(c, k2)))
    assert "`listener[0].tls.key`" in err and "does not belong" in err


def test_certificate_expiring_soon_is_warned_about(wsgate, tmp_path):
    now = datetime.datetime.now(datetime.timezone.utc)
    c, k = make_cert(tmp_path, "soon", now - datetime.timedelta(days=80), now + datetime.timedelta(days=5))
    s = wsgate(config(listener_extra=tls_listener(c, k)))
    assert "expires within 14 days" in s.log()
    out = subprocess.run([BIN, "check", "--config", str(s.config_path)], capture_output=True, text=True)
    assert out.returncode == 0 and "EXPIRES WITHIN 14 DAYS" in out.stdout
