"""Proxy routes with real clients and a real upstream (Python `websockets`, Node `ws`): relaying both ways,
the close handshake, fragments and control frames, invalid frames, failing, silent, refusing and TLS
upstreams, and shutdown."""

import json
import os
import signal
import socket
import subprocess
import time

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from conftest import BIN, SIZES, Prefixed, config, frame, handshake, raw, read_frame, run, run_node


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
    return r.sock, Prefixed(r.body, r.sock)


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


def test_proxy_negotiates_permessage_deflate_end_to_end(wsgate, upstream):
    # The upstream (websockets) accepts permessage-deflate: the client gets the upstream's answer and
    # compressed frames pass as they are, both ways.
    s = wsgate(proxy_config(upstream()))

    async def go(url):
        async with connect(url, origin="http://app.test", max_size=2 << 20) as ws:
            text = json.dumps({"items": ["hello world"] * 500})
            for msg in [text, os.urandom(70000), "short"]:
                await ws.send(msg)
                assert await ws.recv() == msg
            return ws.response.headers.get("Sec-WebSocket-Extensions")

    answer = run(go(s.url + "/ws/up"))
    assert answer and answer.startswith("permessage-deflate"), answer
    # On the wire: a compressed text message comes back compressed (RSV1), fewer bytes than its text.
    import zlib
    r = raw(s.port, handshake(path="/ws/up", headers=[("Origin", "http://app.test"),
                                                      ("Sec-WebSocket-Extensions", "permessage-deflate")]), keep_open=True)
    assert r.status == 101 and r.header("sec-websocket-extensions").startswith("permessage-deflate")
    text = json.dumps({"items": ["hello world"] * 500}).encode()
    c = zlib.compressobj(6, zlib.DEFLATED, -9)
    packed = (c.compress(text) + c.flush(zlib.Z_SYNC_FLUSH))[:-4]
    f = bytearray(frame(0x1, packed))
    f[0] |= 0x40
    r.sock.sendall(bytes(f))
    sock = Prefixed(r.body, r.sock)
    head = sock.recv(2)
    assert head[0] == 0xC1, hex(head[0])
    r.sock.close()

    # An upstream that declines: the client's 101 declines too, and plain frames pass.
    plain = wsgate(proxy_config(upstream("echo-plain")))
    assert run(go(plain.url + "/ws/up")) is None
    # compression = "off": nothing is offered upstream, even to one that would accept.
    off = wsgate(proxy_config(upstream(), extra='compression = "off"'))
    assert run(go(off.url + "/ws/up")) is None
