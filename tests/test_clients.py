"""Admitted connections with real clients: Python `websockets` and Node `ws`, for echo and channel rooms.
Proxy routes are in test_proxy.py, close codes and shutdown in test_close_codes.py."""

import asyncio
import os
import subprocess

import pytest
from websockets.asyncio.client import connect

from conftest import NODE_MODULES, ROOT, SIZES, Prefixed, config, frame, handshake, raw, read_frame, require_tool, run, run_node

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


def test_frames_sent_in_the_same_write_as_the_handshake_are_not_lost(wsgate):
    # RFC 6455 asks clients to wait for the 101, but eager ones do not; the HTTP parser has then
    # read the first frames already, and they must reach the connection before the socket's.
    s = wsgate()
    early = frame(0x2, b"early") + frame(0x1, b"x" * 300)
    r = raw(s.port, handshake() + early, keep_open=True)
    assert r.status == 101
    sock = Prefixed(r.body, r.sock)
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
