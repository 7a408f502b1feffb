"""Slow and hostile peers against the real binary: a client that never reads (echo, channel, proxy),
an upstream that never reads, a proxied client that goes silent, frames the relay must hold to the
protocol's rules, and connections that never finish their handshake (plain and TLS)."""

import asyncio
import socket
import ssl
import struct
import subprocess
import threading
import time

import pytest
from websockets.asyncio.client import connect

from conftest import BIN, config, frame, handshake, raw, read_frame

SLOW_LIMITS = """
send_timeout = "2s"
ping_interval = "1s"
idle_timeout = "30s"
max_output_bytes = 65536
"""


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def non_reader(port, path, first=None, payload=None):
    """A raw client with a tiny receive buffer that completes the handshake, optionally sends
    `first`, then (with `payload`) writes echo frames from a thread until the server stops taking
    them, and never reads. Returns (socket, thread, bytes-written counter)."""
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.connect(("127.0.0.1", port))
    s.sendall(handshake(path))
    head = b""
    while b"\r\n\r\n" not in head:
        head += s.recv(1)
    assert head.startswith(b"HTTP/1.1 101"), head
    if first:
        s.sendall(frame(0x1, first))
    written = [0]

    def write():
        if payload is None:
            return
        f = frame(0x2, payload)
        s.settimeout(20)
        try:
            deadline = time.time() + 20
            while time.time() < deadline:
                s.sendall(f)
                written[0] += len(f)
        except OSError:
            pass  # blocked for good, or closed by the server

    t = threading.Thread(target=write, daemon=True)
    t.start()
    return s, t, written


def closed_within(sock, secs):
    """Whether the server ends the connection within `secs`; drains what was queued for us."""
    sock.settimeout(secs)
    deadline = time.time() + secs
    try:
        while time.time() < deadline:
            if not sock.recv(65536):
                return True
    except (ConnectionResetError, BrokenPipeError):
        return True
    except socket.timeout:
        return False
    return False


async def round_trips(url, n):
    async with connect(url) as ws:
        for i in range(n):
            await ws.send(f"m{i}")
            assert await ws.recv() == f"m{i}"
    return n


def test_echo_client_that_never_reads_costs_a_bounded_amount_and_is_closed_with_1013(wsgate):
    s = wsgate(config(limits=SLOW_LIMITS))
    before = rss_kib(s.proc.pid)
    sock, writer, written = non_reader(s.port, "/ws/echo", payload=b"x" * 16384)
    # While it stalls, others keep being served.
    assert asyncio.run(asyncio.wait_for(round_trips(s.url + "/ws/echo", 200), 20)) == 200
    log = s.wait_log("peer fell behind (1013)", timeout=15)
    assert "peer fell behind (1013)" in log and "too slow" in log
    grown = rss_kib(s.proc.pid) - before
    assert grown < 16 * 1024, f"the server grew by {grown} KiB for a client that never reads"
    assert closed_within(sock, 10), "the connection is dropped once the close could not be delivered"
    assert s.metric("wsgate_slow_peer_closes_total") >= 1
    writer.join(25)


def test_channel_member_that_never_reads_is_closed_and_the_room_keeps_going(wsgate):
    routes = '[[route]]\npath = "/ws/chat/{room}"\nkind = "channel"\ndeliver_to_sender = false\n'
    s = wsgate(config(limits=SLOW_LIMITS, routes=routes))
    sock, _, _ = non_reader(s.port, "/ws/chat/slow")
    got = []
    n, size = 400, 60000  # 24 MB: more than any socket buffers hold

    async def go():
        async with connect(s.url + "/ws/chat/slow", max_size=None) as pub, \
                connect(s.url + "/ws/chat/slow", max_size=None) as fast:
            for i in range(n):
                await pub.send("p" * size + str(i))
                msg = await asyncio.wait_for(fast.recv(), 10)
                got.append(msg[size:])
            return True

    assert asyncio.run(asyncio.wait_for(go(), 90))
    assert got == [str(i) for i in range(n)], "the others got every message, in order"
    log = s.wait_log("peer fell behind (1013)", timeout=15)
    assert "peer fell behind (1013)" in log
    assert closed_within(sock, 10)


def proxy_config(port):
    return config(
        limits=SLOW_LIMITS,
        routes=f"""
        [[route]]
        path = "/ws/up"
        kind = "proxy"
        upstream = "ws://127.0.0.1:{port}/socket"
        connect_timeout = "2s"
        """,
    )


def test_proxied_client_that_never_reads_is_closed_and_others_keep_going(wsgate, python_peer):
    up = python_peer("ws_upstream.py", "echo")
    s = wsgate(proxy_config(up))
    sock, _, _ = non_reader(s.port, "/ws/up", first=b"flood?")
    assert asyncio.run(asyncio.wait_for(round_trips(s.url + "/ws/up", 100), 20)) == 100
    log = s.wait_log("proxied client stopped reading", timeout=15)
    assert "proxied client stopped reading" in log
    assert closed_within(sock, 10)
    assert s.metric("wsgate_slow_peer_closes_total") >= 1


def test_upstream_that_never_reads_closes_the_client_with_1011(wsgate, python_peer):
    up = python_peer("ws_upstream.py", "sink")
    s = wsgate(proxy_config(up))

    async def go():
        # Uncompressed, so the bytes pile up as fast as they are sent.
        async with connect(s.url + "/ws/up", max_size=None, compression=None) as ws:
            async def push():
                while True:
                    await ws.send(b"u" * 65536)

            pusher = asyncio.create_task(push())
            try:
                await asyncio.wait_for(ws.wait_closed(), 20)
            finally:
                pusher.cancel()
            return ws.close_code, ws.close_reason

    code, reason = asyncio.run(asyncio.wait_for(go(), 30))
    assert code == 1011 and "stopped reading" in reason
    assert "upstream stopped reading" in s.wait_log("upstream stopped reading")


def test_relay_pings_a_quiet_client_and_closes_a_silent_one(wsgate, python_peer):
    up = python_peer("ws_upstream.py", "echo")
    text = proxy_config(up).replace('idle_timeout = "30s"', 'idle_timeout = "3s"')
    s = wsgate(text)
    # A raw client that never answers pings: one ping, then close 1000 "idle timeout".
    r = raw(s.port, handshake("/ws/up"), keep_open=True)
    assert r.status == 101
    r.sock.settimeout(10)
    seen = []
    while True:
        op, payload = read_frame(r.sock)
        seen.append(op)
        if op == 0x8:
            break
    assert 0x9 in seen, "a keep-alive ping came first"
    assert struct.unpack("!H", payload[:2])[0] == 1000 and b"idle timeout" in payload

    # A client that answers pings (websockets does) outlives the idle timeout.
    async def go():
        async with connect(s.url + "/ws/up") as ws:
            await asyncio.sleep(5)
            await ws.send("still here")
            return await ws.recv()

    assert asyncio.run(asyncio.wait_for(go(), 20)) == "still here"


@pytest.mark.parametrize("bad,code,why", [
    (frame(0x1, b"bad \xff text"), 1007, b"invalid UTF-8"),
    (frame(0x1, b"\xe2", fin=False) + frame(0x0, b"\x28"), 1007, b"invalid UTF-8"),
    (frame(0x8, b"\x03"), 1002, b"1-byte payload"),
    (frame(0x8, struct.pack("!H", 1005)), 1002, b"may not be sent"),
    (frame(0x8, struct.pack("!H", 1000) + b"\xff"), 1007, b"not UTF-8"),
])
def test_relay_holds_frames_to_the_protocol(wsgate, python_peer, bad, code, why):
    """The relay answers itself (its own reason, not the upstream's), as the endpoints would."""
    up = python_peer("ws_upstream.py", "echo")
    s = wsgate(proxy_config(up))
    r = raw(s.port, handshake("/ws/up"), keep_open=True)
    assert r.status == 101
    r.sock.settimeout(10)
    r.sock.sendall(frame(0x1, b"fine"))
    assert read_frame(r.sock) == (0x1, b"fine")
    r.sock.sendall(bad)
    while True:
        op, payload = read_frame(r.sock)
        if op == 0x8:
            break
    assert struct.unpack("!H", payload[:2])[0] == code
    assert why in payload, payload


def start_trickling(port, n, source):
    """`n` connections from `source` that send half a request head and stop."""
    socks = []
    for _ in range(n):
        c = socket.create_connection(("127.0.0.1", port), source_address=(source, 0), timeout=5)
        c.sendall(b"GET /ws/echo HTTP/1.1\r\nHost: 127.0.0.1\r\nUpg")
        socks.append(c)
    return socks


def test_trickled_heads_are_bounded_per_address(wsgate):
    s = wsgate(config(limits='max_handshakes_per_client = 4\nhandshake_timeout = "30s"\n'))
    held = start_trickling(s.port, 4, "127.0.0.7")
    time.sleep(0.3)
    r = raw(s.port, handshake(), source="127.0.0.7")
    assert r.status == 429 and r.header("wsgate-reason") == "limit.handshakes_in_progress"
    assert r.header("x-request-id")
    assert raw(s.port, handshake(), source="127.0.0.8").status == 101, "another address is served"
    held[0].close()
    time.sleep(0.3)
    assert raw(s.port, handshake(), source="127.0.0.7").status == 101, "a slot came back"
    assert s.metric("wsgate_handshakes_refused_total", code="limit.handshakes_in_progress") >= 1
    for c in held:
        c.close()


def test_half_open_tls_handshakes_are_bounded_per_address(wsgate, tmp_path):
    out = subprocess.run([BIN, "cert", "dev", "--host", "localhost", "--out", str(tmp_path)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    tls = f'\n[listener.tls]\ncert = "{tmp_path / "cert.pem"}"\nkey = "{tmp_path / "key.pem"}"\n'
    s = wsgate(config(listener_extra=tls, limits='max_handshakes_per_client = 3\nhandshake_timeout = "30s"\n'))
    held = [socket.create_connection(("127.0.0.1", s.port), source_address=("127.0.0.9", 0)) for _ in range(3)]
    time.sleep(0.3)
    extra = socket.create_connection(("127.0.0.1", s.port), source_address=("127.0.0.9", 0), timeout=5)
    assert closed_within(extra, 5), "the fourth half-open TLS connection is closed at once"
    ctx = ssl.create_default_context(cafile=str(tmp_path / "cert.pem"))

    async def go():
        async with connect(s.url + "/ws/echo", ssl=ctx, server_hostname="localhost") as ws:
            await ws.send("tls")
            return await ws.recv()

    assert asyncio.run(asyncio.wait_for(go(), 15)) == "tls", "another address is served"
    assert "limit.handshakes_in_progress" in s.wait_log("limit.handshakes_in_progress")
    for c in held:
        c.close()
