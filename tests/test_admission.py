"""The origin and authentication gates against the real binary: admitted cases, each refusal, and the
attack battery (origin look-alikes, tokens never echoed or logged)."""

import asyncio
import hashlib
import re
import subprocess
import time

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from conftest import BIN, config, handshake, raw, run_node

KEY = "k3y-for-tests-0123456789"
KEY_SHA = hashlib.sha256(KEY.encode()).hexdigest()

ROUTES = f"""
[[route]]
path = "/ws/public"
kind = "echo"
origins = ["https://app.example.com", "http://localhost:3000", "https://*.example.org", "null"]

[[route]]
path = "/ws/browsers-only"
kind = "echo"
allow_missing_origin = false

[[route]]
path = "/ws/private"
kind = "echo"
subprotocols = ["chat.v1"]
[route.auth]
sources = ["bearer", "cookie:wsgate_token", "subprotocol:token.", "query:access_token"]
api_keys = [{{ name = "ci", sha256 = "{KEY_SHA}" }}]
"""


@pytest.fixture(scope="module")
def gate(tmp_path_factory):
    from conftest import Wsgate

    s = Wsgate(config(routes=ROUTES), tmp_path_factory.mktemp("adm"))
    yield s
    s.stop()


def wait_log(s, needle):
    return next(l for l in s.wait_log(needle).splitlines() if needle in l)


@pytest.mark.parametrize(
    "origin",
    ["https://app.example.com", "HTTPS://App.Example.com:443", "http://localhost:3000", "https://a.example.org",
     "https://a.b.example.org", "null"],
)
def test_allowed_origins_are_admitted(gate, origin):
    assert raw(gate.port, handshake("/ws/public", headers=[("Origin", origin)])).status == 101


ATTACKS = [
    "https://app.example.com.evil.net",   # suffix
    "https://evilapp.example.com",        # prefix
    "https://app.example.com@evil.net",   # userinfo
    "https://good@app.example.com",
    "https://app.example.com:8443",       # port
    "http://app.example.com",             # scheme
    "https://app.example.com.",           # trailing dot
    "https://example.org",                # wildcard's apex
    "https://evilexample.org",
    "https://a.example.org.evil.net",
    "http://localhost:3001",
    "https://app.example.com/",
    "https://APP.EXAMPLE.COM.evil.net",   # upper case look-alike
    "file://",
]


@pytest.mark.parametrize("origin", ATTACKS)
def test_origin_look_alikes_are_refused(gate, origin):
    r = raw(gate.port, handshake("/ws/public", headers=[("Origin", origin)]))
    assert r.status == 403
    assert r.header("wsgate-reason") == "origin.not_allowed"


def test_origin_refusal_log_names_origin_host_and_nearest_entry(gate):
    r = raw(gate.port, handshake("/ws/public", headers=[("Origin", "http://localhost:3001")]))
    line = wait_log(gate, r.header("x-request-id"))
    assert 'Origin \\"http://localhost:3001\\"' in line or 'Origin "http://localhost:3001"' in line
    assert "nearest allowed entry: http://localhost:3000" in line and "Host" in line


def test_two_origins_are_refused(gate):
    r = raw(gate.port, handshake("/ws/public", headers=[("Origin", "https://app.example.com"), ("Origin", "https://evil.net")]))
    assert r.status == 400 and r.header("wsgate-reason") == "handshake.duplicate_header"


def test_same_origin_is_the_default(gate):
    own = f"http://127.0.0.1:{gate.port}"
    host = f"127.0.0.1:{gate.port}"
    assert raw(gate.port, handshake("/ws/browsers-only", host=host, headers=[("Origin", own)])).status == 101
    other = f"http://127.0.0.1:{gate.port + 1}"
    r = raw(gate.port, handshake("/ws/browsers-only", host=host, headers=[("Origin", other)]))
    assert r.status == 403 and r.header("wsgate-reason") == "origin.not_allowed"
    r = raw(gate.port, handshake("/ws/browsers-only", host=host, headers=[("Origin", f"https://127.0.0.1:{gate.port}")]))
    assert r.status == 403, "https is another origin than the ws:// listener's http"
    assert raw(gate.port, handshake("/ws/public")).status == 101, "non-browser clients (no Origin) are admitted by default"


def test_missing_origin_can_be_refused(gate):
    r = raw(gate.port, handshake("/ws/browsers-only"))
    assert r.status == 403 and r.header("wsgate-reason") == "origin.missing"


def private(gate, **kw):
    async def go():
        async with connect(gate.url + "/ws/private", **kw) as ws:
            await ws.send("hi")
            assert await ws.recv() == "hi"
            return ws.subprotocol

    return asyncio.run(asyncio.wait_for(go(), 10))


def test_bearer_cookie_query_and_subprotocol_credentials(gate):
    private(gate, additional_headers={"Authorization": f"Bearer {KEY}"})
    private(gate, additional_headers={"Cookie": f"theme=dark; wsgate_token={KEY}"})
    asyncio.run(asyncio.wait_for(_query(gate), 10))
    assert private(gate, subprotocols=["chat.v1", f"token.{KEY}"]) == "chat.v1"


async def _query(gate):
    async with connect(gate.url + f"/ws/private?access_token={KEY}") as ws:
        await ws.send("q")
        assert await ws.recv() == "q"


def test_token_in_subprotocol_is_never_echoed_or_logged(gate):
    r = raw(gate.port, handshake("/ws/private", headers=[("Sec-WebSocket-Protocol", f"token.{KEY}, chat.v1")]))
    assert r.status == 101
    assert r.header("sec-websocket-protocol") == "chat.v1"
    assert KEY not in str(r.headers)
    r = raw(gate.port, handshake("/ws/private", headers=[("Sec-WebSocket-Protocol", f"token.{KEY}")]))
    assert r.status == 101 and r.header("sec-websocket-protocol") is None
    r = raw(gate.port, handshake("/ws/private", headers=[("Sec-WebSocket-Protocol", "token.not-the-key-9876")]))
    assert r.status == 401 and r.header("wsgate-reason") == "auth.invalid"
    assert b"not-the-key-9876" not in r.body
    time.sleep(0.2)
    assert KEY not in gate.log() and "not-the-key-9876" not in gate.log()


def test_node_browser_style_subprotocol_token(gate):
    out = run_node("client.js", "echo-proto", gate.url + "/ws/private", f"chat.v1,token.{KEY}")
    assert "protocol chat.v1" in out


def test_missing_and_invalid_credentials_get_401_with_www_authenticate(gate):
    r = raw(gate.port, handshake("/ws/private"))
    assert r.status == 401 and r.header("wsgate-reason") == "auth.missing"
    assert r.header("www-authenticate").startswith("Bearer")
    assert "cookie" in r.json()["fix"]
    r = raw(gate.port, handshake("/ws/private", headers=[("Authorization", "Bearer wrong")]))
    assert r.status == 401 and r.header("wsgate-reason") == "auth.invalid"
    assert 'error="invalid_token"' in r.header("www-authenticate")
    with pytest.raises(InvalidStatus) as e:
        private(gate, additional_headers={"Authorization": "Bearer nope"})
    assert e.value.response.status_code == 401


def test_embedded_default_prints_a_working_development_token():
    proc = subprocess.Popen([BIN, "serve", "--listen", "127.0.0.1:0", "--admin", "off"], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True)
    try:
        text = ""
        while "development token" not in text:
            line = proc.stdout.readline()
            assert line, text
            text += line
        port = int(re.search(r"listening ws://127.0.0.1:(\d+)", text).group(1))
        token = re.search(r"development token: (\S+)", text).group(1)
        r = raw(port, handshake("/ws/chat/lobby"))
        assert r.status == 401 and r.header("wsgate-reason") == "auth.missing"
        assert raw(port, handshake(f"/ws/chat/lobby?access_token={token}")).status == 101
        assert raw(port, handshake("/ws/echo")).status == 101
    finally:
        proc.terminate()
        proc.wait(10)


def test_config_errors_for_policies(tmp_path):
    for bad, key in [
        ('origins = ["*"]', "route[0].origins[0]"),
        ('origins = ["https://*.com"]', "route[0].origins[0]"),
        ('[route.auth]\nsources = ["header:x"]\ndev_token = true', "route[0].auth.sources[0]"),
        ('[route.auth]\nsources = ["bearer"]', "route[0].auth.api_keys"),
        ('[route.auth]\napi_keys = [{ name = "a", sha256 = "xyz" }]', "route[0].auth.api_keys[0].sha256"),
    ]:
        p = tmp_path / "c.toml"
        p.write_text(config(routes=f'[[route]]\npath = "/ws"\nkind = "echo"\n{bad}\n'))
        out = subprocess.run([BIN, "check", "--config", str(p)], capture_output=True, text=True)
        assert out.returncode != 0 and f"`{key}`" in out.stderr, (bad, out.stderr)


def test_http_basic_with_argon2_from_wsgate_passwd_and_bcrypt(wsgate):
    import base64

    import bcrypt

    argon = subprocess.run([BIN, "passwd"], input="s3cret\n", capture_output=True, text=True)
    assert argon.returncode == 0 and argon.stdout.startswith("$argon2id$"), argon.stderr
    bc = bcrypt.hashpw(b"hunter2", bcrypt.gensalt(rounds=4)).decode()
    routes = f"""
    [[route]]
    path = "/ws/basic"
    kind = "echo"
    [route.auth]
    sources = ["basic"]
    basic_users = [{{ name = "alice", hash = "{argon.stdout.strip()}" }}, {{ name = "bob", hash = "{bc}" }}]
    """
    s = wsgate(config(routes=routes))

    def basic(user_pass):
        v = base64.b64encode(user_pass.encode()).decode()
        r = raw(s.port, handshake("/ws/basic", headers=[("Authorization", f"Basic {v}")]))
        return r.status, r.header("wsgate-reason")

    assert basic("alice:s3cret") == (101, None)
    assert basic("bob:hunter2") == (101, None)
    assert basic("alice:wrong") == (401, "auth.invalid")
    assert basic("mallory:s3cret") == (401, "auth.invalid")
    assert "s3cret" not in s.log() and "hunter2" not in s.log()


def test_listener_policy_is_inherited_and_routes_may_override_or_tighten(wsgate):
    text = f"""
[[listener]]
address = "127.0.0.1:0"
[listener.policy]
origins = ["https://app.example.com"]
firewall = {{ deny = ["127.0.0.3"] }}
[listener.policy.auth]
sources = ["bearer"]
api_keys = [{{ name = "ci", sha256 = "{KEY_SHA}" }}]

[[listener]]
address = "127.0.0.1:0"

[logging]
refusal_burst = 100000

[[route]]
path = "/ws/inherits"
kind = "echo"

[[route]]
path = "/ws/own-origins"
kind = "echo"
origins = ["https://other.example.com"]
firewall = {{ deny = ["127.0.0.4"] }}
"""
    s = wsgate(text)
    strict, open_port = s.port, int(s.urls[1].rsplit(":", 1)[1])
    app = [("Origin", "https://app.example.com")]
    bearer = [("Authorization", f"Bearer {KEY}")]
    # the listener's policy applies to a route without its own
    assert raw(strict, handshake("/ws/inherits", headers=app)).header("wsgate-reason") == "auth.missing"
    assert raw(strict, handshake("/ws/inherits", headers=[("Origin", "https://evil.test")] + bearer)).status == 403
    assert raw(strict, handshake("/ws/inherits", headers=app + bearer)).status == 101
    # a route's own setting overrides it; the listener's auth still applies
    assert raw(strict, handshake("/ws/own-origins", headers=app + bearer)).status == 403
    assert raw(strict, handshake("/ws/own-origins", headers=[("Origin", "https://other.example.com")] + bearer)).status == 101
    # the same routes on the other listener have no listener policy
    assert raw(open_port, handshake("/ws/inherits")).status == 101
    # firewall rules of listener and route both apply (a route can only tighten)
    from test_firewall import raw_from

    assert raw_from("127.0.0.3", strict, handshake("/ws/own-origins", headers=app + bearer))[0] == 403
    assert raw_from("127.0.0.4", strict, handshake("/ws/own-origins", headers=[("Origin", "https://other.example.com")] + bearer))[0] == 403
    assert raw_from("127.0.0.3", open_port, handshake("/ws/inherits"))[0] == 101
    out = subprocess.run([BIN, "check", "--config", str(s.config_path)], capture_output=True, text=True)
    assert out.returncode == 0 and "on listener[0]:" in out.stdout and "listener firewall" in out.stdout


def test_listener_policy_errors_name_the_listener_key(tmp_path):
    p = tmp_path / "c.toml"
    p.write_text('[[listener]]\naddress = "127.0.0.1:0"\n[listener.policy]\norigins = ["*"]\n[[route]]\npath = "/ws"\nkind = "echo"\n')
    out = subprocess.run([BIN, "check", "--config", str(p)], capture_output=True, text=True)
    assert out.returncode != 0 and "`listener[0].policy.origins[0]`" in out.stderr, out.stderr
