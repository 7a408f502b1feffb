"""Admitted connections with real clients: Python `websockets` and Node `ws`, for echo, channel rooms,
proxy routes, protocol limits and graceful shutdown."""

import asyncio
import json
import os
import signal
import socket
import subprocess
import time

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from conftest import BIN, NODE_MODULES, ROOT, config, frame, handshake, raw, read_frame, require_tool, run_node

SIZES = [1, 125, 126, 65535, 65536, 1 << 20]


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 30))


def test_python_echo_text_and_binary_1_byte_to_1_mib(wsgate):
    s = wsgate()

    async def go():
        async with connect(s.url + "/ws/echo", max_size=2 << 20) as ws:
            await ws.send("héllo ✓")
            assert await ws.recv() == "héllo ✓"
            for n in SIZES:
                data = bytes((i * 7) & 0xFF for i in range(n))
                await ws.send(data)
                assert await ws.recv() == data
                text = "x" * n
                await ws.send(text)
                assert await ws.recv() == text

    run(go())
    assert s.metric("wsgate_messages_in_total") >= 1 + 2 * len(SIZES)
    assert s.metric("wsgate_handshakes_admitted_total", route="/ws/echo") == 1


def test_node_echo(wsgate):
    s = wsgate()
    assert "echo ok" in run_node("client.js", "echo", s.url + "/ws/echo")


def test_fragmented_message_is_reassembled(wsgate):
    s = wsgate()
    r = raw(s.port, handshake(), keep_open=True)
    assert r.status == 101
    euro = "€".encode()
    r.sock.sendall(frame(0x1, b"a" + euro[:1], fin=False) + frame(0x0, euro[1:], fin=False) + frame(0x0, b"z", fin=True))
    assert read_frame(r.sock) == (0x1, "a€z".encode())


class _Prefixed:
    """A socket whose first bytes were already received (behind the HTTP response head)."""

    def __init__(self, head, sock):
        self.head, self.sock = head, sock

    def recv(self, n):
        if self.head:
            out, self.head = self.head[:n], self.head[n:]
            return out
        return self.sock.recv(n)


def test_frames_sent_in_the_same_write_as_the_handshake_are_not_lost(wsgate):
    # RFC 6455 asks clients to wait for the 101, but eager ones do not; the HTTP parser has then
    # read the first frames already, and they must reach the connection before the socket's.
    s = wsgate()
    early = frame(0x2, b"early") + frame(0x1, b"x" * 300)
    r = raw(s.port, handshake() + early, keep_open=True)
    assert r.status == 101
    sock = _Prefixed(r.body, r.sock)
    assert read_frame(sock) == (0x2, b"early")
    assert read_frame(sock) == (0x1, b"x" * 300)
    r.sock.sendall(frame(0x1, b"later"))
    assert read_frame(sock) == (0x1, b"later")


def test_python_channel_rooms(wsgate):
    s = wsgate()

    async def go():
        u = s.url + "/ws/chat/"
        async with connect(u + "lobby") as a, connect(u + "lobby") as b, connect(u + "other") as c:
            await a.send("hello from a")
            assert await b.recv() == "hello from a"
            assert await a.recv() == "hello from a"  # deliver_to_sender defaults to true
            await b.send(b"\x01\x02")
            assert await a.recv() == b"\x01\x02"
            with pytest.raises(asyncio.TimeoutError):
                await asyncio.wait_for(c.recv(), 0.3)

    run(go())


def test_node_channel_rooms(wsgate):
    s = wsgate()
    u = s.url + "/ws/chat/"
    assert "chat ok" in run_node("client.js", "chat", u + "r1", u + "r1", u + "r2")


def test_python_and_node_share_a_room(wsgate):
    s = wsgate()
    url = s.url + "/ws/chat/mixed"
    require_tool("node", "Node.js")
    node = subprocess.Popen(
        ["node", str(ROOT / "tests/node/client.js"), "hold", url],
        stdout=subprocess.PIPE,
        env={**os.environ, "NODE_PATH": NODE_MODULES},
    )
    try:
        assert node.stdout.readline().strip() == b"open"

        async def go():
            async with connect(url) as py:
                await py.send("to everyone")
                assert await py.recv() == "to everyone"

        run(go())
        assert s.metric("wsgate_messages_out_total") >= 2  # the Python client and the Node client
    finally:
        node.kill()
        node.wait()


def test_channel_without_echo_to_sender(wsgate):
    routes = '[[route]]\npath = "/ws/chat/{room}"\nkind = "channel"\ndeliver_to_sender = false\n'
    s = wsgate(config(routes=routes))

    async def go():
        async with connect(s.url + "/ws/chat/x") as a, connect(s.url + "/ws/chat/x") as b:
            await a.send("m")
            assert await b.recv() == "m"
            with pytest.raises(asyncio.TimeoutError):
                await asyncio.wait_for(a.recv(), 0.3)

    run(go())


@pytest.fixture
def upstream(python_peer):
    return lambda mode="echo", *tls: python_peer("ws_upstream.py", mode, *tls)


def proxy_config(port, extra="", scheme="ws", host="127.0.0.1"):
    return config(
        routes=f"""
        [[route]]
        path = "/ws/up"
        kind = "proxy"
        upstream = "{scheme}://{host}:{port}/socket"
        forward_headers = ["origin", "x-user"]
        connect_timeout = "2s"
        origins = ["http://app.test"]
        {extra}
        """
    )


def test_proxy_relays_to_a_python_upstream(wsgate, upstream):
    s = wsgate(proxy_config(upstream()))

    async def go():
        async with connect(
            s.url + "/ws/up",
            subprotocols=["chat.v1"],
            additional_headers={"X-User": "alice", "Cookie": "secret=1"},
            origin="http://app.test",
            max_size=2 << 20,
        ) as ws:
            assert ws.subprotocol == "chat.v1"  # chosen by the upstream, passed through
            for n in SIZES:
                data = os.urandom(n)
                await ws.send(data)
                assert await ws.recv() == data
            await ws.send("headers?")
            seen = json.loads(await ws.recv())
            assert seen["x-user"] == "alice"
            assert seen["origin"] == "http://app.test"
            assert "cookie" not in seen, "only forward_headers are forwarded"
            assert seen["x-forwarded-for"] == "127.0.0.1"
            assert len(seen["x-request-id"]) == 16

    run(go())


def proxied(s):
    """A raw connection through the proxy route, after its 101: (socket, frame reader)."""
    r = raw(s.port, handshake(path="/ws/up", headers=[("Origin", "http://app.test")]), keep_open=True)
    assert r.status == 101, r.status
    return r.sock, _Prefixed(r.body, r.sock)


def test_proxy_relays_the_close_handshake_both_ways(wsgate, upstream):
    s = wsgate(proxy_config(upstream()))

    async def go():
        async with connect(s.url + "/ws/up", origin="http://app.test") as ws:
            await ws.send("x")
            assert await ws.recv() == "x"
            await ws.close(4000, "bye")
            return ws.protocol.close_rcvd.code, ws.protocol.close_rcvd.reason  # the upstream's answer, relayed

    assert run(go()) == (4000, "bye")


def test_proxy_relays_fragments_and_control_frames(wsgate, upstream):
    s = wsgate(proxy_config(upstream()))
    sock, reader = proxied(s)
    # A fragmented message with a ping between its fragments: the upstream answers the ping and
    # echoes the reassembled message, both through the relay.
    sock.sendall(frame(0x1, b"ab", fin=False) + frame(0x9, b"p") + frame(0x0, b"cd"))
    got = [read_frame(reader), read_frame(reader)]
    assert (0xA, b"p") in got and (0x1, b"abcd") in got


@pytest.mark.parametrize(
    "bad, code",
    [
        (bytes([0x81, 0x02]) + b"hi", 1002),  # unmasked
        (bytes([0x82, 0xFF]) + (1 << 40).to_bytes(8, "big") + b"\x01\x02\x03\x04", 1009),  # too big
        (frame(0x0, b"x"), 1002),  # a continuation with nothing to continue
    ],
)
def test_proxy_closes_invalid_client_frames_with_their_code(wsgate, upstream, bad, code):
    s = wsgate(proxy_config(upstream()))
    sock, reader = proxied(s)
    sock.sendall(frame(0x1, b"ok"))
    assert read_frame(reader) == (0x1, b"ok")
    sock.sendall(bad)
    op, payload = read_frame(reader)
    assert op == 0x8 and int.from_bytes(payload[:2], "big") == code, payload


def test_proxy_tells_the_client_when_the_upstream_fails(wsgate, upstream):
    s = wsgate(proxy_config(upstream()))

    async def go(command):
        async with connect(s.url + "/ws/up", origin="http://app.test") as ws:
            await ws.send(command)
            with pytest.raises(ConnectionClosed) as e:
                await ws.recv()
            return e.value.rcvd.code, e.value.rcvd.reason

    assert run(go("drop?")) == (1011, "the upstream closed the connection")
    code, reason = run(go("masked?"))
    assert code == 1011 and "server frames must not be masked" in reason, reason


def test_node_through_proxy(wsgate, upstream):
    s = wsgate(proxy_config(upstream()))
    assert "echo ok" in run_node("client.js", "echo", s.url + "/ws/up")


def test_dead_upstream_gives_502_unreachable(wsgate):
    with socket.socket() as sock:  # a port that is closed: bound, never listening
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        s = wsgate(proxy_config(port))
        t0 = time.time()
        r = raw(s.port, handshake("/ws/up"))
    assert r.status == 502
    assert r.header("wsgate-reason") == "upstream.unreachable"
    assert time.time() - t0 < 3
    assert "cannot connect to upstream" in s.log()


def test_silent_upstream_gives_502_within_connect_timeout(wsgate):
    with socket.socket() as lst:  # accepts TCP but never answers the handshake
        lst.bind(("127.0.0.1", 0))
        lst.listen(8)
        s = wsgate(proxy_config(lst.getsockname()[1]))
        t0 = time.time()
        r = raw(s.port, handshake("/ws/up"), timeout=10)
        assert r.status == 502 and r.header("wsgate-reason") == "upstream.unreachable"
        assert time.time() - t0 < 5


def test_refusing_upstream_gives_502_refused(wsgate, upstream):
    s = wsgate(proxy_config(upstream("refuse")))

    async def go():
        with pytest.raises(InvalidStatus) as e:
            async with connect(s.url + "/ws/up"):
                pass
        assert e.value.response.status_code == 502
        assert e.value.response.headers["wsgate-reason"] == "upstream.refused"

    run(go())
    assert "answered 403 Forbidden instead of 101" in s.log()


def test_message_over_limit_is_closed_with_1009(wsgate):
    s = wsgate(config(limits="max_message_bytes = 1000\nmax_frame_bytes = 600\n"))

    async def go():
        async with connect(s.url + "/ws/echo") as ws:
            await ws.send(b"x" * 600)
            assert len(await ws.recv()) == 600
            await ws.send(b"x" * 601)  # one frame over max_frame_bytes
            with pytest.raises(ConnectionClosed) as e:
                await ws.recv()
            assert e.value.rcvd.code == 1009
        async with connect(s.url + "/ws/echo") as ws:
            await ws.send([b"x" * 500, b"y" * 501])  # fragments over max_message_bytes
            with pytest.raises(ConnectionClosed) as e:
                await ws.recv()
            assert e.value.rcvd.code == 1009

    run(go())


def test_invalid_utf8_is_closed_with_1007(wsgate):
    s = wsgate()
    for frames in ([frame(0x1, b"ok\xff")], [frame(0x1, b"ok", fin=False), frame(0x0, b"\xc3\x28")]):
        r = raw(s.port, handshake(), keep_open=True)
        r.sock.sendall(b"".join(frames))
        op, payload = read_frame(r.sock)
        assert op == 0x8 and int.from_bytes(payload[:2], "big") == 1007
        r.sock.close()


def test_protocol_error_is_closed_with_1002(wsgate):
    s = wsgate()
    r = raw(s.port, handshake(), keep_open=True)
    r.sock.sendall(frame(0x0, b"continuation without a start"))
    op, payload = read_frame(r.sock)
    assert op == 0x8 and int.from_bytes(payload[:2], "big") == 1002


def test_server_pings_and_closes_an_idle_client(wsgate):
    s = wsgate(config(limits='ping_interval = "200ms"\nidle_timeout = "1s"\n'))

    async def go():  # websockets answers pings: it stays open past the idle timeout
        async with connect(s.url + "/ws/echo", ping_interval=None) as ws:
            await asyncio.sleep(1.6)
            await ws.send("still here")
            assert await ws.recv() == "still here"

    run(go())
    r = raw(s.port, handshake(), keep_open=True)  # a raw client that never answers
    t0 = time.time()
    r.sock.settimeout(5)
    op, _ = read_frame(r.sock)
    assert op == 0x9, "the server pings"
    while True:
        op, payload = read_frame(r.sock)
        if op == 0x8:
            break
    assert int.from_bytes(payload[:2], "big") == 1000 and b"idle" in payload
    assert time.time() - t0 < 3


def test_graceful_shutdown_sends_1001_and_exits_0(wsgate):
    s = wsgate(config(limits='drain_timeout = "3s"\n'))
    require_tool("node", "Node.js")
    node = subprocess.Popen(
        ["node", str(ROOT / "tests/node/client.js"), "hold", s.url + "/ws/chat/room"],
        stdout=subprocess.PIPE,
        env={**os.environ, "NODE_PATH": NODE_MODULES},
    )
    assert node.stdout.readline().strip() == b"open"

    async def go():
        async with connect(s.url + "/ws/echo") as ws:
            await ws.send("x")
            await ws.recv()
            t0 = time.time()
            s.proc.send_signal(signal.SIGTERM)
            with pytest.raises(ConnectionClosed) as e:
                await ws.recv()
            assert e.value.rcvd.code == 1001
            return t0

    t0 = run(go())
    assert json.loads(node.stdout.readline())["code"] == 1001
    node.wait(5)
    assert s.proc.wait(5) == 0
    assert time.time() - t0 < 3.5
    assert "all connections closed" in s.log()


def test_proxy_to_a_wss_upstream_with_its_ca(wsgate, upstream, tmp_path):
    out = subprocess.run([BIN, "cert", "dev", "--host", "localhost", "--out", str(tmp_path)], capture_output=True)
    assert out.returncode == 0
    port = upstream("echo", tmp_path / "cert.pem", tmp_path / "key.pem")
    s = wsgate(proxy_config(port, scheme="wss", host="localhost", extra=f'upstream_ca = "{tmp_path / "cert.pem"}"'))

    async def go():
        async with connect(s.url + "/ws/up") as ws:
            await ws.send("through tls")
            assert await ws.recv() == "through tls"

    run(go())


def test_proxy_to_an_untrusted_wss_upstream_gives_502(wsgate, upstream, tmp_path):
    out = subprocess.run([BIN, "cert", "dev", "--host", "localhost", "--out", str(tmp_path)], capture_output=True)
    assert out.returncode == 0
    port = upstream("echo", tmp_path / "cert.pem", tmp_path / "key.pem")
    s = wsgate(proxy_config(port, scheme="wss", host="localhost"))  # no upstream_ca: not trusted
    r = raw(s.port, handshake("/ws/up"))
    assert r.status == 502 and r.header("wsgate-reason") == "upstream.unreachable"
    assert "TLS handshake with upstream" in s.log()


def test_graceful_shutdown_closes_proxied_connections_with_1001(wsgate, upstream):
    s = wsgate(proxy_config(upstream()))

    async def go():
        async with connect(s.url + "/ws/up", origin="http://app.test") as ws:
            await ws.send("x")
            assert await ws.recv() == "x"
            s.proc.send_signal(signal.SIGTERM)
            with pytest.raises(ConnectionClosed) as e:
                await ws.recv()
            return e.value.rcvd.code

    assert run(go()) == 1001
    assert s.proc.wait(5) == 0
