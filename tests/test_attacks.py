"""Bypass attempts that once got through, each against the real binary: a credential offered twice
as a subprotocol, absolute-form targets naming another host, request bodies on an upgrade
(request-smuggling shapes) and oversized request heads. The forwarding-header spoof is in
test_firewall.py, the JWT claim and `crit` cases in test_jwt.py."""

import asyncio
import hashlib
import json
import socket
import time

import pytest
from websockets.asyncio.client import connect

from conftest import config, handshake, raw

KEY = "k3y-for-attack-tests-0123456789"
KEY_SHA = hashlib.sha256(KEY.encode()).hexdigest()

ROUTES = f"""
[[route]]
path = "/ws/echo"
kind = "echo"
hosts = ["127.0.0.1"]

[[route]]
path = "/ws/private"
kind = "echo"
subprotocols = ["chat.v1"]
[route.auth]
sources = ["bearer", "subprotocol:token."]
api_keys = [{{ name = "ci", sha256 = "{KEY_SHA}" }}]
"""


def proxy_routes(port):
    return f"""
[[route]]
path = "/ws/up"
kind = "proxy"
upstream = "ws://127.0.0.1:{port}/socket"
connect_timeout = "2s"
[route.auth]
sources = ["bearer", "subprotocol:token."]
api_keys = [{{ name = "ci", sha256 = "{KEY_SHA}" }}]
"""


@pytest.mark.parametrize("offer", [
    f"token.{KEY}, token.{KEY}",
    f"token.{KEY}, chat.v9, token.{KEY}",
    f"token.{KEY}, token.another-value",
])
def test_credential_entries_never_reach_the_upstream_the_answer_or_the_log(wsgate, python_peer, offer):
    """An upstream that selects whatever is offered first would pick a surviving token entry."""
    up = python_peer("ws_upstream.py", "echo-any")
    s = wsgate(config(routes=proxy_routes(up)))
    r = raw(s.port, handshake("/ws/up", headers=[("Sec-WebSocket-Protocol", offer)]), keep_open=True)
    assert r.status == 101
    assert "token." not in json.dumps(r.headers), r.headers
    # What the upstream received, asked through the relay.
    from conftest import frame, read_frame
    r.sock.sendall(frame(0x1, b"headers?"))
    op, payload = read_frame(r.sock)
    seen = json.loads(payload)
    assert "token." not in seen.get("sec-websocket-protocol", ""), seen
    r.sock.close()
    time.sleep(0.2)
    assert KEY not in s.log() and "another-value" not in s.log()


def test_bearer_credential_still_strips_token_entries(wsgate, python_peer):
    up = python_peer("ws_upstream.py", "echo-any")
    s = wsgate(config(routes=proxy_routes(up)))

    async def go():
        async with connect(s.url + "/ws/up", subprotocols=["token.leak-me"],
                           additional_headers={"Authorization": f"Bearer {KEY}"}) as ws:
            assert ws.subprotocol is None
            await ws.send("headers?")
            seen = json.loads(await ws.recv())
            assert "leak-me" not in json.dumps(seen)

    asyncio.run(asyncio.wait_for(go(), 10))


def test_duplicate_token_on_a_local_route_is_not_selectable(wsgate):
    s = wsgate(config(routes=ROUTES))
    r = raw(s.port, handshake("/ws/private", headers=[("Sec-WebSocket-Protocol", f"token.{KEY}, token.{KEY}, chat.v1")]))
    assert r.status == 101 and r.header("sec-websocket-protocol") == "chat.v1"
    r = raw(s.port, handshake("/ws/private", headers=[("Sec-WebSocket-Protocol", f"token.{KEY}, token.{KEY}")]))
    assert r.status == 101 and r.header("sec-websocket-protocol") is None


@pytest.mark.parametrize("target,host,status", [
    ("http://other.host/ws/echo", "127.0.0.1", 400),   # the allowlist would have judged the Host
    ("http://127.0.0.1/ws/echo", "other.host", 400),
    ("http://127.0.0.1/ws/echo", "127.0.0.1", 101),     # agreeing: fine
])
def test_absolute_form_target_must_agree_with_host(wsgate, target, host, status):
    s = wsgate(config(routes=ROUTES))
    r = raw(s.port, handshake(target, host=host))
    assert r.status == status
    if status == 400:
        assert r.header("wsgate-reason") == "handshake.bad_request"
        assert "absolute-form" in s.wait_log("absolute-form")


BODY_SHAPES = {
    "chunked": ([("Transfer-Encoding", "chunked")], b"5\r\nhello\r\n0\r\n\r\n"),
    "content-length": ([("Content-Length", "5")], b"hello"),
    "both": ([("Content-Length", "5"), ("Transfer-Encoding", "chunked")], b"0\r\n\r\n"),
}


@pytest.mark.parametrize("shape", sorted(BODY_SHAPES))
def test_upgrade_requests_with_a_body_are_refused_and_the_connection_closed(wsgate, shape):
    s = wsgate(config(routes=ROUTES))
    headers, body = BODY_SHAPES[shape]
    # A smuggled second request behind the body must never be answered.
    smuggled = handshake("/ws/echo")
    r = raw(s.port, handshake("/ws/echo", headers=headers) + body + smuggled, keep_open=True)
    assert r.status == 400 and r.header("wsgate-reason") == "handshake.body", shape
    assert r.header("connection") == "close"
    r.sock.settimeout(3)
    rest = b""
    try:
        while chunk := r.sock.recv(65536):
            rest += chunk
    except (ConnectionResetError, socket.timeout):
        pass
    assert b"101" not in rest and b"HTTP/1.1" not in rest, "nothing behind the body is served"


def test_content_length_zero_is_no_body(wsgate):
    s = wsgate(config(routes=ROUTES))
    assert raw(s.port, handshake("/ws/echo", headers=[("Content-Length", "0")])).status == 101


@pytest.mark.parametrize("what,headers,path", [
    ("one 64 KiB header", [("X-Big", "a" * 65536)], "/ws/echo"),
    ("one header over 8 KiB", [("Cookie", "c=" + "a" * 9000)], "/ws/echo"),
    ("many headers over 32 KiB", [(f"X-H{i}", "b" * 4000) for i in range(9)], "/ws/echo"),
    ("a long target", [], "/ws/echo?" + "q" * 9000),
])
def test_oversized_heads_get_431_with_a_code(wsgate, what, headers, path):
    s = wsgate(config(routes=ROUTES))
    r = raw(s.port, handshake(path, headers=headers))
    assert r.status == 431, what
    assert r.header("wsgate-reason") == "handshake.head_too_large", what


def test_head_limits_are_configurable(wsgate):
    s = wsgate(config(routes=ROUTES, limits="max_header_bytes = 16384\nmax_head_bytes = 65536\n"))
    assert raw(s.port, handshake("/ws/echo", headers=[("Cookie", "c=" + "a" * 9000)])).status == 101
    r = raw(s.port, handshake("/ws/echo", headers=[("Cookie", "c=" + "a" * 17000)]))
    assert r.status == 431 and r.header("wsgate-reason") == "handshake.head_too_large"
    assert "limits.max_header_bytes" in s.wait_log("limits.max_header_bytes")
