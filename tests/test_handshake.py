"""Every handshake refusal of the server issue, over raw TCP: status, reason header, body per
explain level, the log line and the metric."""

import base64
import hashlib
import json
import socket
import time

import pytest

from conftest import KEY, config, handshake, raw

ACCEPT = base64.b64encode(hashlib.sha1((KEY + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11").encode()).digest()).decode()

CASES = [
    # (id, request bytes, status, code, extra header that must be present)
    ("method", handshake(method="POST"), 405, "handshake.method", ("allow", "GET")),
    ("http10", handshake(version="HTTP/1.0"), 400, "handshake.bad_request", None),
    ("no-host", handshake(omit=("Host",)), 400, "handshake.bad_request", None),
    ("plain-http", b"GET /ws/echo HTTP/1.1\r\nHost: x\r\n\r\n", 426, "handshake.not_upgrade", ("upgrade", "websocket")),
    ("upgrade-h2c", handshake(headers=[("Upgrade", "h2c")]), 426, "handshake.not_upgrade", None),
    ("no-connection-upgrade", handshake(headers=[("Connection", "keep-alive")]), 400, "handshake.bad_request", None),
    ("version-8", handshake(headers=[("Sec-WebSocket-Version", "8")]), 426, "handshake.version", ("sec-websocket-version", "13")),
    ("no-version", handshake(omit=("Sec-WebSocket-Version",)), 426, "handshake.version", ("sec-websocket-version", "13")),
    ("short-key", handshake(headers=[("Sec-WebSocket-Key", "AQID")]), 400, "handshake.bad_key", None),
    ("no-key", handshake(omit=("Sec-WebSocket-Key",)), 400, "handshake.bad_key", None),
    ("garbage-key", handshake(headers=[("Sec-WebSocket-Key", "%%%%")]), 400, "handshake.bad_key", None),
    ("two-origins", handshake(headers=[("Origin", "http://a"), ("Origin", "http://b")]), 400, "handshake.duplicate_header", None),
    ("two-keys", handshake().replace(b"\r\n\r\n", f"\r\nSec-WebSocket-Key: {KEY}\r\n\r\n".encode()), 400, "handshake.duplicate_header", None),
    ("unknown-path", handshake(path="/nope"), 404, "route.not_found", None),
    ("trailing-slash", handshake(path="/ws/echo/"), 404, "route.not_found", None),
]


@pytest.fixture(scope="module")
def servers(tmp_path_factory):
    from conftest import Wsgate

    tmp = tmp_path_factory.mktemp("hs")
    routes = """
        [[route]]
        path = "/ws/echo"
        kind = "echo"

        [[route]]
        path = "/ws/proto"
        kind = "echo"
        subprotocols = ["b", "a"]

        [[route]]
        path = "/ws/need"
        kind = "echo"
        subprotocols = ["only"]
        subprotocol_required = true
    """
    s = {level: Wsgate(config(routes=routes, explain=level), tmp) for level in ("none", "code", "full")}
    yield s
    for x in s.values():
        x.stop()


def test_valid_handshake_gets_101_with_the_rfc_accept(servers):
    r = raw(servers["full"].port, handshake())
    assert r.status == 101
    assert r.header("sec-websocket-accept") == ACCEPT
    assert r.header("upgrade").lower() == "websocket"
    assert r.header("x-request-id")
    assert r.header("sec-websocket-protocol") is None


@pytest.mark.parametrize("name,req,status,code,extra", CASES, ids=[c[0] for c in CASES])
def test_refusal_full(servers, name, req, status, code, extra):
    s = servers["full"]
    before = s.metric("wsgate_handshakes_refused_total", code=code)
    r = raw(s.port, req)
    assert r.status == status
    assert r.header("wsgate-reason") == code
    rid = r.header("x-request-id")
    assert rid and len(rid) == 16
    if extra:
        assert r.header(extra[0]) == extra[1]
    body = r.json()
    assert body["code"] == code and body["status"] == status and body["request_id"] == rid
    assert body["message"] and body["fix"]
    assert set(body) == {"code", "status", "message", "fix", "request_id"}
    # one log line with the request id, the code and the detail
    line = next(l for l in s.wait_log(rid).splitlines() if rid in l)
    assert f'code="{code}"' in line and "detail=" in line and "peer=127.0.0.1:" in line
    assert s.metric("wsgate_handshakes_refused_total", code=code) == before + 1


@pytest.mark.parametrize("name,req,status,code,extra", CASES, ids=[c[0] for c in CASES])
def test_refusal_code_level_has_headers_but_no_body(servers, name, req, status, code, extra):
    r = raw(servers["code"].port, req)
    assert r.status == status
    assert r.header("wsgate-reason") == code
    assert r.header("x-request-id")
    assert r.body == b""
    if extra:
        assert r.header(extra[0]) == extra[1]


@pytest.mark.parametrize("name,req,status,code,extra", CASES, ids=[c[0] for c in CASES])
def test_refusal_none_level_is_bare(servers, name, req, status, code, extra):
    r = raw(servers["none"].port, req)
    assert r.status == status
    assert r.header("wsgate-reason") is None
    assert r.header("x-request-id") is None
    assert r.body == b""
    if extra:  # protocol-required headers stay
        assert r.header(extra[0]) == extra[1]


def test_subprotocol_picks_first_client_offer_the_route_supports(servers):
    r = raw(servers["full"].port, handshake("/ws/proto", headers=[("Sec-WebSocket-Protocol", "x, a, b")]))
    assert r.status == 101
    assert r.header("sec-websocket-protocol") == "a"


def test_unsupported_subprotocol_is_refused_without_echoing_the_offer(servers):
    s = servers["full"]
    r = raw(s.port, handshake("/ws/proto", headers=[("Sec-WebSocket-Protocol", "secret-token-123")]))
    assert r.status == 400
    assert r.header("wsgate-reason") == "subprotocol.unsupported"
    assert b"secret-token-123" not in r.body
    time.sleep(0.2)
    assert "secret-token-123" not in s.log()
    r = raw(s.port, handshake("/ws/echo", headers=[("Sec-WebSocket-Protocol", "chat")]))
    assert r.header("wsgate-reason") == "subprotocol.unsupported"


def test_required_subprotocol(servers):
    r = raw(servers["full"].port, handshake("/ws/need"))
    assert r.status == 400 and r.header("wsgate-reason") == "subprotocol.unsupported"
    r = raw(servers["full"].port, handshake("/ws/need", headers=[("Sec-WebSocket-Protocol", "only")]))
    assert r.status == 101 and r.header("sec-websocket-protocol") == "only"


def test_connection_cap_gives_503_with_retry_after(wsgate):
    s = wsgate(config(limits="max_connections = 1\n"))
    first = raw(s.port, handshake(), keep_open=True)
    assert first.status == 101
    r = raw(s.port, handshake())
    assert r.status == 503
    assert r.header("wsgate-reason") == "limit.connections"
    assert r.header("retry-after") == "5"
    first.sock.close()
    deadline = time.time() + 5
    while time.time() < deadline:
        if raw(s.port, handshake()).status == 101:
            break
        time.sleep(0.05)
    else:
        pytest.fail("the slot was not released after the first client left")


def test_slow_client_cannot_hold_a_handshake_slot(wsgate):
    s = wsgate(config(limits='handshake_timeout = "500ms"\n'))
    sock = socket.create_connection(("127.0.0.1", s.port), timeout=5)
    sock.sendall(b"GET /ws/echo HTTP/1.1\r\nHost: x\r\n")  # never finishes the head
    t0 = time.time()
    data = b""
    try:
        while True:
            chunk = sock.recv(4096)
            if not chunk:
                break
            data += chunk
    except (ConnectionResetError, socket.timeout):
        pass
    assert time.time() - t0 < 4, "the server must drop a client that does not finish its request head"


def test_refusal_log_is_json_when_configured(wsgate):
    s = wsgate(config(logging='format = "json"\n'))
    r = raw(s.port, handshake(path="/missing"))
    rid = r.header("x-request-id")
    line = next(l for l in s.wait_log(rid).splitlines() if rid in l)
    rec = json.loads(line)
    assert rec["code"] == "route.not_found" and rec["request_id"] == rid and rec["status"] == 404
    assert rec["detail"] and rec["peer"].startswith("127.0.0.1:")


def test_handshake_arriving_while_draining_gets_503_server_draining(wsgate):
    s = wsgate(config(limits='drain_timeout = "3s"\n'))
    held = raw(s.port, handshake(), keep_open=True)  # an open WebSocket keeps the drain going
    assert held.status == 101
    late = socket.create_connection(("127.0.0.1", s.port), timeout=5)
    req = handshake()
    late.sendall(req[:20])  # the head is half sent when shutdown starts
    time.sleep(0.2)
    s.proc.send_signal(__import__("signal").SIGTERM)
    time.sleep(0.3)
    late.sendall(req[20:])
    head = late.recv(4096).decode()
    assert head.startswith("HTTP/1.1 503")
    assert "wsgate-reason: server.draining" in head and "retry-after: 5" in head
    assert s.proc.wait(10) == 0


def test_metrics_exposition(wsgate):
    s = wsgate()
    r = raw(s.port, handshake(), keep_open=True)
    assert r.status == 101
    deadline = time.time() + 5
    while s.metric("wsgate_connections_open") != 1 and time.time() < deadline:
        time.sleep(0.05)
    text = s.metrics()
    assert "wsgate_connections_open 1" in text
    assert 'wsgate_handshakes_admitted_total{route="/ws/echo"} 1' in text
    assert 'wsgate_handshakes_refused_total{code="origin.not_allowed"} 0' in text, "every code is exported"
    assert "wsgate_handshake_duration_seconds_count 1" in text
    for name in ("messages_in_total", "messages_out_total", "bytes_in_total", "bytes_out_total"):
        assert f"wsgate_{name} " in text
    r.sock.close()
    deadline = time.time() + 5
    while s.metric("wsgate_connections_open") != 0 and time.time() < deadline:
        time.sleep(0.05)
    assert s.metric("wsgate_connections_open") == 0
    import urllib.request

    with urllib.request.urlopen(s.admin + "/healthz", timeout=5) as h:
        assert h.status == 200


def test_identical_refusals_are_rate_limited_in_the_log_not_in_the_metric(wsgate):
    s = wsgate(config(logging='refusal_burst = 3\nrefusal_window = "1s"\n'))
    for _ in range(10):
        assert raw(s.port, handshake("/storm")).status == 404
    time.sleep(0.2)
    lines = [l for l in s.log().splitlines() if "route.not_found" in l]
    assert len(lines) == 3
    assert s.metric("wsgate_handshakes_refused_total", code="route.not_found") == 10
    assert raw(s.port, handshake(omit=("Sec-WebSocket-Key",))).status == 400
    time.sleep(1.1)
    raw(s.port, handshake("/storm"))
    time.sleep(0.2)
    lines = [l for l in s.log().splitlines() if "route.not_found" in l]
    assert len(lines) == 4 and "suppressed_before=7" in lines[-1]
    assert any("handshake.bad_key" in l for l in s.log().splitlines()), "other codes are logged"
