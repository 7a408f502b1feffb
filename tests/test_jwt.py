"""JWT authentication against the real binary: tokens minted by PyJWT with keys made by `cryptography`,
carried by bearer, cookie and subprotocol, and the attack battery (alg none, key confusion, expired,
not yet valid, wrong aud/iss, unknown kid, tampered, garbage)."""

import base64
import hashlib
import hmac
import json
import time

import jwt as pyjwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from conftest import Wsgate, config, handshake, raw

SECRET = "a-shared-secret-of-at-least-32-bytes!"
ISS = "https://issuer.test"


def b64(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("jwt")
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    rsa_pub = rsa_key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    (tmp / "rsa.pub.pem").write_bytes(rsa_pub)
    ec_key = ec.generate_private_key(ec.SECP256R1())
    jwk = json.loads(pyjwt.algorithms.ECAlgorithm.to_jwk(ec_key.public_key()))
    jwk.update({"kid": "ec-1", "alg": "ES256", "use": "sig"})
    (tmp / "jwks.json").write_text(json.dumps({"keys": [jwk]}))
    return {"dir": tmp, "rsa": rsa_key, "rsa_pub": rsa_pub, "ec": ec_key}


@pytest.fixture(scope="module")
def gate(keys):
    routes = f"""
    [[route]]
    path = "/ws/hs"
    kind = "echo"
    subprotocols = ["chat.v1"]
    [route.auth]
    sources = ["bearer", "cookie:wsgate_token", "subprotocol:token."]
    [[route.auth.jwt]]
    issuer = "{ISS}"
    audience = ["wsgate"]
    kid = "hs-1"
    secret = "{SECRET}"
    leeway = "5s"

    [[route]]
    path = "/ws/rs"
    kind = "echo"
    [route.auth]
    [[route.auth.jwt]]
    issuer = "{ISS}"
    public_key_file = "rsa.pub.pem"
    algorithms = ["RS256"]

    [[route]]
    path = "/ws/rs-inline"
    kind = "echo"
    [route.auth]
    [[route.auth.jwt]]
    issuer = "{ISS}"
    public_key = '''
{keys["rsa_pub"].decode()}'''
    algorithms = ["RS256", "PS256"]

    [[route]]
    path = "/ws/jwks"
    kind = "echo"
    [route.auth]
    [[route.auth.jwt]]
    issuer = "https://other.test"
    jwks_file = "jwks.json"
    """
    s = Wsgate(config(routes=routes), keys["dir"])  # relative key paths: next to the config file
    yield s
    s.stop()


def claims(**over):
    c = {"sub": "alice", "iss": ISS, "aud": "wsgate", "exp": int(time.time()) + 300}
    c.update(over)
    return {k: v for k, v in c.items() if v is not None}


def hs(c=None, kid="hs-1", secret=SECRET):
    return pyjwt.encode(c or claims(), secret, algorithm="HS256", headers={"kid": kid} if kid else None)


def status(gate, path, token, via="bearer"):
    headers = {
        "bearer": [("Authorization", f"Bearer {token}")],
        "cookie": [("Cookie", f"wsgate_token={token}")],
        "subprotocol": [("Sec-WebSocket-Protocol", f"chat.v1, token.{token}")],
    }[via]
    r = raw(gate.port, handshake(path, headers=headers))
    return r.status, r.header("wsgate-reason"), r


@pytest.mark.parametrize("via", ["bearer", "cookie", "subprotocol"])
def test_hs256_token_in_each_source(gate, via):
    code, _, r = status(gate, "/ws/hs", hs(), via)
    assert code == 101
    if via == "subprotocol":
        assert r.header("sec-websocket-protocol") == "chat.v1"


def test_rs256_with_a_pem_public_key(gate, keys):
    token = pyjwt.encode(claims(), keys["rsa"], algorithm="RS256")
    assert status(gate, "/ws/rs", token)[0] == 101
    assert status(gate, "/ws/rs-inline", token)[0] == 101, "an inline PEM key"
    ps = pyjwt.encode(claims(), keys["rsa"], algorithm="PS256")
    assert status(gate, "/ws/rs-inline", ps)[0] == 101
    assert status(gate, "/ws/rs", ps)[:2] == (401, "auth.invalid"), "PS256 is not in that key's allowlist"


def test_es256_from_a_jwks_by_kid(gate, keys):
    token = pyjwt.encode(claims(iss="https://other.test"), keys["ec"], algorithm="ES256", headers={"kid": "ec-1"})
    assert status(gate, "/ws/jwks", token)[0] == 101
    token = pyjwt.encode(claims(iss="https://other.test"), keys["ec"], algorithm="ES256", headers={"kid": "ec-2"})
    assert status(gate, "/ws/jwks", token)[:2] == (401, "auth.invalid")


def test_alg_none_is_refused(gate):
    token = b64(json.dumps({"alg": "none", "typ": "JWT", "kid": "hs-1"}).encode()) + "." + b64(json.dumps(claims()).encode()) + "."
    assert status(gate, "/ws/hs", token)[:2] == (401, "auth.invalid")
    assert status(gate, "/ws/rs", token)[:2] == (401, "auth.invalid")


def test_hs256_signed_with_the_rsa_public_key_is_refused(gate, keys):
    header = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    payload = b64(json.dumps(claims()).encode())
    sig = hmac.new(keys["rsa_pub"], f"{header}.{payload}".encode(), hashlib.sha256).digest()
    token = f"{header}.{payload}.{b64(sig)}"
    code, reason, r = status(gate, "/ws/rs", token)
    assert (code, reason) == (401, "auth.invalid")


@pytest.mark.parametrize(
    "name,token_fn,reason",
    [
        ("expired", lambda: hs(claims(exp=int(time.time()) - 60)), "auth.expired"),
        ("not-yet-valid", lambda: hs(claims(nbf=int(time.time()) + 600)), "auth.invalid"),
        ("wrong-aud", lambda: hs(claims(aud="someone-else")), "auth.invalid"),
        ("wrong-iss", lambda: hs(claims(iss="https://evil.test")), "auth.invalid"),
        ("no-exp", lambda: hs(claims(exp=None)), "auth.invalid"),
        ("unknown-kid", lambda: hs(kid="hs-9"), "auth.invalid"),
        ("wrong-secret", lambda: hs(secret="another-secret-of-at-least-32-bytes"), "auth.invalid"),
        ("tampered", lambda: (lambda t: t.split(".")[0] + "." + b64(json.dumps(claims(sub="mallory")).encode()) + "." + t.split(".")[2])(hs()), "auth.invalid"),
        ("garbage", lambda: "eyJhbGciOiJIUzI1NiJ9.garbage.garbage", "auth.invalid"),
        # The route names an audience and an issuer: tokens without the claim are refused.
        ("no-aud", lambda: hs(claims(aud=None)), "auth.invalid"),
        ("no-iss", lambda: hs(claims(iss=None)), "auth.invalid"),
        # RFC 7515 §4.1.11: an unknown critical header extension must be refused.
        ("crit", lambda: pyjwt.encode(claims(), SECRET, algorithm="HS256",
                                      headers={"kid": "hs-1", "crit": ["urn:x-ext"], "urn:x-ext": 1}), "auth.invalid"),
    ],
)
def test_jwt_attacks(gate, name, token_fn, reason):
    token = token_fn()
    code, got, r = status(gate, "/ws/hs", token)
    assert (code, got) == (401, reason), name
    assert r.header("www-authenticate").startswith("Bearer")
    time.sleep(0.05)
    assert token not in gate.log(), "tokens are never logged"


def test_missing_token(gate):
    r = raw(gate.port, handshake("/ws/hs"))
    assert r.status == 401 and r.header("wsgate-reason") == "auth.missing"


def test_authorization_by_channel_claim_claims_and_scopes(wsgate, tmp_path):
    key_sha = hashlib.sha256(b"reader-key").hexdigest()
    routes = f"""
    [[route]]
    path = "/ws/chat/{{room}}"
    kind = "channel"
    [route.auth]
    api_keys = [{{ name = "reader", sha256 = "{key_sha}", scopes = ["chat:read"] }}]
    [[route.auth.jwt]]
    issuer = "{ISS}"
    secret = "{SECRET}"
    [route.authz]
    channel = "chat:{{room}}"
    channel_claim = "rooms"

    [[route]]
    path = "/ws/admin"
    kind = "echo"
    [route.auth]
    api_keys = [{{ name = "reader", sha256 = "{key_sha}", scopes = ["chat:read"] }}]
    [[route.auth.jwt]]
    issuer = "{ISS}"
    secret = "{SECRET}"
    [route.authz]
    require_claims = {{ role = "admin" }}
    require_scopes = ["chat:write"]
    """
    s = wsgate(config(routes=routes))
    member = hs(claims(rooms=["chat:team-*"], aud=None), kid=None)
    assert status(s, "/ws/chat/team-a", member)[0] == 101
    code, reason, r = status(s, "/ws/chat/lobby", member)
    assert (code, reason) == (403, "authz.forbidden")
    line = next(l for l in s.log().splitlines() if r.header("x-request-id") in l)
    assert "rule channel" in line and "chat:lobby" in line
    admin = hs(claims(role="admin", scope="chat:read chat:write", aud=None), kid=None)
    assert status(s, "/ws/admin", admin)[0] == 101
    assert status(s, "/ws/admin", hs(claims(role="user", scope="chat:write", aud=None), kid=None))[:2] == (403, "authz.forbidden")
    code, reason, _ = status(s, "/ws/admin", "reader-key")
    assert (code, reason) == (403, "authz.forbidden"), "the API key lacks role and chat:write"
