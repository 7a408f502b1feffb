"""Authentication delegated to an external HTTP check (auth_request / ext_authz style), against the
real binary and a real check service."""

import asyncio
import json
import socket
import time

import pytest
from websockets.asyncio.client import connect

from conftest import config, handshake, raw, start_python


@pytest.fixture
def service(tmp_path):
    log = tmp_path / "checks.jsonl"
    log.touch()
    proc, port = start_python("auth_service.py", log, tmp_path=tmp_path)
    yield port, log
    proc.kill()
    proc.wait()


def checks(log):
    return [json.loads(l) for l in log.read_text().splitlines()]


def routes(port, extra=""):
    return f"""
    [[route]]
    path = "/ws/ext"
    kind = "echo"
    subprotocols = ["chat.v1"]
    origins = ["https://app.test"]
    [route.auth]
    sources = ["subprotocol:token."]
    external = {{ url = "http://127.0.0.1:{port}/check", timeout = "1s", identity_headers = ["x-auth-roles"] {extra} }}
    """


def status(s, token, path="/ws/ext", more=()):
    headers = [("Authorization", f"Bearer {token}"), ("Origin", "https://app.test"), *more]
    r = raw(s.port, handshake(path + "?room=1", headers=headers))
    return r.status, r.header("wsgate-reason"), r


def test_decisions_and_what_the_check_receives(wsgate, service):
    port, log = service
    s = wsgate(config(routes=routes(port)))
    code, _, r = status(s, "good", more=[("Sec-WebSocket-Protocol", "chat.v1, token.abc")])
    assert code == 101 and r.header("sec-websocket-protocol") == "chat.v1", "a token entry is never selected"
    seen = checks(log)[-1]
    assert seen["authorization"] == "Bearer good" and seen["origin"] == "https://app.test"
    assert seen["x-original-uri"] == "/ws/ext?room=1" and seen["x-original-method"] == "GET"
    assert seen["x-forwarded-for"] == "127.0.0.1" and seen["x-request-id"] == r.header("x-request-id")
    for hop in ("upgrade", "connection", "sec-websocket-key", "sec-websocket-version"):
        assert hop not in seen, f"{hop} must not reach the check service"
    assert status(s, "nope")[:2] == (401, "auth.invalid")
    assert status(s, "forbidden")[:2] == (403, "authz.forbidden")
    assert status(s, "broken")[:2] == (503, "auth.unavailable")
    t0 = time.time()
    code, reason, r = status(s, "slow")
    assert (code, reason) == (503, "auth.unavailable") and time.time() - t0 < 2.5
    assert r.header("retry-after")
    assert "did not answer within" in s.log()


def test_dead_check_service_is_unavailable_not_a_hang(wsgate):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        s = wsgate(config(routes=routes(sock.getsockname()[1])))
        assert status(s, "good")[:2] == (503, "auth.unavailable")


def test_decisions_are_cached_for_the_ttl(wsgate, service):
    port, log = service
    s = wsgate(config(routes=routes(port, ', cache_ttl = "30s"')))
    for _ in range(3):
        assert status(s, "good")[0] == 101
    assert status(s, "nope")[0] == 401
    assert status(s, "nope")[0] == 401
    assert len(checks(log)) == 2, "one check per distinct credential"


def test_identity_headers_travel_to_the_upstream(wsgate, service, tmp_path):
    from conftest import start_python as sp

    port, _ = service
    up_proc, up_port = sp("ws_upstream.py", "echo", tmp_path=tmp_path)
    try:
        text = config(routes=f"""
        [[route]]
        path = "/ws/up"
        kind = "proxy"
        upstream = "ws://127.0.0.1:{up_port}/"
        [route.auth]
        external = {{ url = "http://127.0.0.1:{port}/check", identity_headers = ["x-auth-roles"] }}
        """)
        s = wsgate(text)

        async def go():
            async with connect(s.url + "/ws/up", additional_headers={"Authorization": "Bearer good"}) as ws:
                await ws.send("headers?")
                return json.loads(await ws.recv())

        seen = asyncio.run(asyncio.wait_for(go(), 10))
        assert seen["x-auth-roles"] == "admin,chat"
    finally:
        up_proc.kill()
        up_proc.wait()
