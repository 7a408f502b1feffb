"""TLS termination with real certificates (rcgen via `wsgate cert dev`, OpenSSL, and backdated ones made with
`cryptography`), and the `check` command's errors."""

import asyncio
import datetime
import ssl
import subprocess

import pytest
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


@pytest.mark.parametrize(
    "mutation,key",
    [
        (lambda t: t.replace('address = "127.0.0.1:0"', 'address = "localhost:80"'), "listener[0].address"),
        (lambda t: t.replace('kind = "echo"', 'kind = "echo"\ncolour = "blue"'), "route[0].colour"),
        (lambda t: t.replace('kind = "echo"', 'kind = "mirror"'), "route[0].kind"),
        (lambda t: t + '\n[limits]\nidle_timeout = "soon"\n', "limits.idle_timeout"),
        (lambda t: t.replace('kind = "echo"', 'kind = "proxy"'), "route[0].upstream"),
    ],
)
def test_check_names_the_key_path_and_exits_nonzero(tmp_path, mutation, key):
    p = tmp_path / "broken.toml"
    p.write_text(mutation(config()))
    out = subprocess.run([BIN, "check", "--config", str(p)], capture_output=True, text=True)
    assert out.returncode != 0
    assert str(p) in out.stderr and f"`{key}`" in out.stderr, out.stderr
    serve = subprocess.run([BIN, "serve", "--config", str(p)], capture_output=True, text=True, timeout=10)
    assert serve.returncode != 0 and f"`{key}`" in serve.stderr


def test_check_prints_what_it_would_do(tmp_path):
    p = tmp_path / "ok.toml"
    p.write_text(config())
    out = subprocess.run([BIN, "check", "--config", str(p)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "route[0] /ws/echo -> echo" in out.stdout and "route[1] /ws/chat/{room} -> channel" in out.stdout


def test_config_from_environment_variable(tmp_path):
    import os

    p = tmp_path / "env.toml"
    p.write_text(config().replace('kind = "echo"', 'kind = "mirror"'))
    out = subprocess.run([BIN, "check"], capture_output=True, text=True, env={**os.environ, "WSGATE_CONFIG": str(p)})
    assert out.returncode != 0 and "route[0].kind" in out.stderr


def test_embedded_default_serves_and_prints_what_to_try():
    proc = subprocess.Popen(
        [BIN, "serve", "--listen", "127.0.0.1:0", "--admin", "off"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        text = "".join(proc.stdout.readline() for _ in range(7))
        assert "config: <embedded default>" in text
        assert "listening ws://127.0.0.1:" in text and "/ws/echo" in text and "/ws/chat/lobby" in text
        assert "try: python3 -m websockets ws://127.0.0.1:" in text
    finally:
        proc.terminate()
        assert proc.wait(10) == 0


def test_open_files_limit_is_raised_to_the_hard_limit_or_named_when_too_low(wsgate):
    # A soft limit below the hard one (systemd starts services at 1,024): raised, and said so.
    s = wsgate(nofile=(256, 4096))
    log = s.wait_log("raised the open-files limit")
    assert "from=256" in log and "to=4096" in log
    # A hard limit that cannot hold limits.max_connections: the operator is told what to change.
    s = wsgate(config(limits="max_connections = 10000\n"), nofile=(512, 512))
    line = next(l for l in s.wait_log("open-files limit is below").splitlines() if "below" in l)
    assert "limit=512" in line and "max_connections=10000" in line and "LimitNOFILE" in line
