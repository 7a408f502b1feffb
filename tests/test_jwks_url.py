"""JWT keys from an identity provider's URL, against a local HTTPS server made here (its CA and
certificate by `cryptography`): keys fetched at start, a rotated key fetched again when a token names
its kid, the last good set kept while the provider is down, 503 auth.unavailable only when no set was
ever loaded, and OpenID discovery (`issuer` + `/.well-known/openid-configuration`)."""

import datetime
import http.server
import ipaddress
import json
import ssl
import threading
import time

import jwt as pyjwt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from conftest import config, free_port, handshake, raw

NOW = datetime.datetime.now(datetime.timezone.utc)


def pki(d):
    """A CA and a certificate for 127.0.0.1 signed by it, as PEM files in `d`."""
    def name(cn):
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    base = lambda subject, issuer, pub: (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer)
                                         .public_key(pub).serial_number(x509.random_serial_number())
                                         .not_valid_before(NOW - datetime.timedelta(days=1))
                                         .not_valid_after(NOW + datetime.timedelta(days=7)))
    ca = (base(name("IdP test CA"), name("IdP test CA"), ca_key.public_key())
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True).sign(ca_key, hashes.SHA256()))
    cert = (base(name("idp"), name("IdP test CA"), key.public_key())
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
            .sign(ca_key, hashes.SHA256()))
    (d / "ca.pem").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    (d / "idp.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (d / "idp.key").write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                  serialization.NoEncryption()))
    return d / "ca.pem"


class IdP:
    """An HTTPS server on 127.0.0.1 publishing a JWKS (and a discovery document) that the test rotates."""

    def __init__(self, d, port=None):
        self.dir, self.port = d, port or free_port()
        self.keys = {}  # kid -> private key
        self.requests = []
        self.server = None

    @property
    def issuer(self):
        return f"https://127.0.0.1:{self.port}"

    def add_key(self, kid):
        self.keys[kid] = ec.generate_private_key(ec.SECP256R1())

    def jwks(self):
        out = []
        for kid, k in self.keys.items():
            jwk = json.loads(pyjwt.algorithms.ECAlgorithm.to_jwk(k.public_key()))
            jwk.update({"kid": kid, "alg": "ES256", "use": "sig"})
            out.append(jwk)
        return {"keys": out}

    def token(self, kid, **claims):
        c = {"sub": "alice", "iss": self.issuer, "aud": "wsgate", "exp": int(time.time()) + 300, **claims}
        return pyjwt.encode(c, self.keys[kid], algorithm="ES256", headers={"kid": kid})

    def start(self):
        idp = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                idp.requests.append(self.path)
                if self.path == "/.well-known/openid-configuration":
                    body = json.dumps({"issuer": idp.issuer, "jwks_uri": f"{idp.issuer}/keys"}).encode()
                elif self.path in ("/keys", "/jwks.json"):
                    body = json.dumps(idp.jwks()).encode()
                else:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Cache-Control", "public, max-age=3600")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(self.dir / "idp.pem", self.dir / "idp.key")
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.server.socket = ctx.wrap_socket(self.server.socket, server_side=True)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self):
        if self.server:
            self.server.shutdown()
            self.server.server_close()
            self.server = None


@pytest.fixture
def idp(tmp_path):
    pki(tmp_path)
    i = IdP(tmp_path)
    yield i
    i.stop()


def route(idp, source):
    return f"""
    [[route]]
    path = "/ws/idp"
    kind = "echo"
    [route.auth]
    sources = ["bearer"]
    [[route.auth.jwt]]
    issuer = "{idp.issuer}"
    audience = ["wsgate"]
    jwks_ca_file = "{idp.dir / 'ca.pem'}"
    {source}
    """


def attempt(s, token):
    r = raw(s.port, handshake("/ws/idp", headers=[("Authorization", f"Bearer {token}")]))
    return r.status, r.header("wsgate-reason"), r.header("retry-after")


def test_keys_fetched_at_start_rotated_and_kept_while_the_idp_is_down(wsgate, idp):
    idp.add_key("a")
    idp.start()
    s = wsgate(config(routes=route(idp, f'jwks_url = "{idp.issuer}/jwks.json"')))
    assert attempt(s, idp.token("a"))[0] == 101
    assert "identity provider keys loaded" in s.log()
    fetched = len(idp.requests)

    # The provider rotates: a token with the new kid makes wsgate fetch again (503 and Retry-After
    # meanwhile), then it is admitted.
    idp.add_key("b")
    status, reason, retry = attempt(s, idp.token("b"))
    assert (status, reason) == (503, "auth.unavailable") and retry, (status, reason)
    deadline = time.time() + 10
    while attempt(s, idp.token("b"))[0] != 101:
        assert time.time() < deadline, "the rotated key was not fetched"
        time.sleep(0.2)
    assert len(idp.requests) == fetched + 1, idp.requests
    # Made-up kids do not make wsgate hammer the provider: at most one refetch per 10 s (one was just
    # made), so they are simply invalid.
    forged = pyjwt.encode({"sub": "x", "iss": idp.issuer, "aud": "wsgate", "exp": int(time.time()) + 60},
                          ec.generate_private_key(ec.SECP256R1()), algorithm="ES256", headers={"kid": "zz"})
    assert [attempt(s, forged)[1] for _ in range(5)] == ["auth.invalid"] * 5
    time.sleep(0.6)
    assert len(idp.requests) == fetched + 1, idp.requests

    # The provider goes down: the keys it published keep working.
    idp.stop()
    assert attempt(s, idp.token("a"))[0] == 101
    assert attempt(s, idp.token("b"))[0] == 101


def test_never_loaded_is_503_until_the_idp_answers(wsgate, idp):
    idp.add_key("a")
    s = wsgate(config(routes=route(idp, f'jwks_url = "{idp.issuer}/jwks.json"')))
    status, reason, retry = attempt(s, idp.token("a"))
    assert (status, reason) == (503, "auth.unavailable") and retry
    assert "none were ever loaded" in s.wait_log("none were ever loaded", timeout=10)
    idp.start()  # the provider comes up: wsgate retries on its own (5 s, then backing off)
    deadline = time.time() + 20
    while attempt(s, idp.token("a"))[0] != 101:
        assert time.time() < deadline, "the key set was not fetched once the provider answered"
        time.sleep(0.5)


def test_openid_discovery_finds_the_keys(wsgate, idp):
    idp.add_key("a")
    idp.start()
    s = wsgate(config(routes=route(idp, "discovery = true")))
    assert attempt(s, idp.token("a"))[0] == 101
    assert idp.requests[:2] == ["/.well-known/openid-configuration", "/keys"], idp.requests


def test_jwks_url_settings_are_checked(tmp_path, idp):
    import subprocess
    from conftest import BIN
    cfg = tmp_path / "c.toml"
    for source, needle in [
        ('jwks_url = "http://127.0.0.1:1/jwks.json"', "https://"),
        ('jwks_url = "https://127.0.0.1:1/jwks.json"\nalgorithms = ["ES256"]', "remove `algorithms`"),
    ]:
        cfg.write_text(config(routes=route(idp, source)))
        out = subprocess.run([BIN, "check", "--config", str(cfg)], capture_output=True, text=True, timeout=30)
        assert out.returncode != 0 and needle in out.stderr, out.stderr
    cfg.write_text(config(routes=route(idp, 'jwks_url = "https://127.0.0.1:1/jwks.json"')))
    out = subprocess.run([BIN, "check", "--config", str(cfg)], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0 and "keys fetched from https://127.0.0.1:1/jwks.json" in out.stdout, out.stdout


def test_a_reload_keeps_the_keys_already_fetched(wsgate, idp):
    import signal
    idp.add_key("a")
    idp.start()
    s = wsgate(config(routes=route(idp, f'jwks_url = "{idp.issuer}/jwks.json"')))
    assert attempt(s, idp.token("a"))[0] == 101
    idp.stop()
    # Same URL after the reload: the set fetched before is kept, though the provider is down.
    s.proc.send_signal(signal.SIGHUP)
    assert "configuration reloaded" in s.wait_log("configuration reloaded", timeout=10)
    assert attempt(s, idp.token("a"))[0] == 101
