"""How connections end, with real clients and raw frames: 1009 over the message limit, 1007 for invalid
UTF-8, 1002 for protocol errors, pings and the idle close, and the graceful shutdown's 1001."""

import asyncio
import json
import os
import signal
import subprocess
import time

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from conftest import NODE_MODULES, ROOT, config, frame, handshake, raw, read_frame, require_tool, run


def test_message_over_limit_is_closed_with_1009(wsgate):
    s = wsgate(config(limits="max_message_bytes = 1000\nmax_frame_bytes = 600\n"))

    async def go():
        # Uncompressed: the frame limit is on the wire (a compressed 601 bytes of "x" is a few).
        async with connect(s.url + "/ws/echo", compression=None) as ws:
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
