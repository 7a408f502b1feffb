"""permessage-deflate (RFC 7692) against the real binary: Python `websockets`, Node `ws` and headless
Chromium negotiate it with their default offers and round-trip text and binary; a raw socket sees
compressed frames on the wire (RSV1, fewer bytes); a decompression bomb closes with 1009 while the
server's peak memory stays bounded; a malformed compressed payload closes with 1007; the route's
`compression` setting chooses off, stateless (the default) or contextual."""

import asyncio
import json
import os
import subprocess
import sys
import time
import zlib

import pytest
from websockets.asyncio.client import connect

from conftest import (NODE_MODULES, ROOT, Prefixed, config, frame, free_port, handshake, raw, read_raw_frame,
                      require_tool, run, run_node)

ECHO = '[[route]]\npath = "/ws/echo"\nkind = "echo"\n'
JSON_TEXT = json.dumps({"user": "alice", "items": [{"id": i, "text": "hello world"} for i in range(200)]})


def routes(compression=None):
    extra = f'compression = "{compression}"\n' if compression else ""
    return ECHO + extra


def deflate(data, level=6):
    c = zlib.compressobj(level, zlib.DEFLATED, -15)
    out = c.compress(data) + c.flush(zlib.Z_SYNC_FLUSH)
    assert out.endswith(b"\x00\x00\xff\xff")
    return out[:-4]


def compressed_frame(opcode, payload, fin=True):
    """A masked client frame with RSV1 set (a compressed message's first frame)."""
    f = bytearray(frame(opcode, payload, fin=fin))
    f[0] |= 0x40
    return bytes(f)


def open_raw(port, offer="permessage-deflate; client_max_window_bits"):
    r = raw(port, handshake(headers=[("Sec-WebSocket-Extensions", offer)]), keep_open=True)
    assert r.status == 101, r.status
    return r, Prefixed(r.body, r.sock)


def test_python_websockets_negotiates_and_round_trips(wsgate):
    s = wsgate(config(routes=routes()))

    async def go():
        async with connect(s.url + "/ws/echo") as ws:
            ext = ws.response.headers["Sec-WebSocket-Extensions"]
            assert ext == "permessage-deflate; server_no_context_takeover; client_no_context_takeover", ext
            for msg in [JSON_TEXT, "short", "héllo ✓" * 1000, b"\x00\x01" * 40000, b"x"]:
                await ws.send(msg)
                assert await ws.recv() == msg

    run(go())


def test_compressed_frames_are_on_the_wire(wsgate):
    s = wsgate(config(routes=routes()))
    r, sock = open_raw(s.port)
    assert r.header("sec-websocket-extensions").startswith("permessage-deflate")
    r.sock.sendall(compressed_frame(0x1, deflate(JSON_TEXT.encode())))
    b0, payload = read_raw_frame(sock)
    assert b0 == 0xC1, hex(b0)  # FIN, RSV1, text
    assert len(payload) < len(JSON_TEXT) / 4, len(payload)
    assert zlib.decompressobj(-15).decompress(payload + b"\x00\x00\xff\xff").decode() == JSON_TEXT
    # A short message goes out as it is (RSV1 clear); an uncompressed one is read as it is.
    r.sock.sendall(frame(0x1, b"tiny"))
    assert read_raw_frame(sock) == (0x81, b"tiny")
    # A compressed message in fragments: RSV1 on the first frame only.
    packed = deflate(JSON_TEXT.encode())
    r.sock.sendall(compressed_frame(0x1, packed[:10], fin=False) + frame(0x0, packed[10:]))
    b0, payload = read_raw_frame(sock)
    assert b0 == 0xC1 and zlib.decompressobj(-15).decompress(payload + b"\x00\x00\xff\xff").decode() == JSON_TEXT
    r.sock.close()


def test_without_an_offer_or_with_compression_off_nothing_is_compressed(wsgate):
    s = wsgate(config(routes=routes()))
    r = raw(s.port, handshake(), keep_open=True)
    assert r.status == 101 and r.header("sec-websocket-extensions") is None
    # RSV1 without the extension is a protocol error.
    r.sock.sendall(compressed_frame(0x1, deflate(b"hello")))
    b0, payload = read_raw_frame(Prefixed(r.body, r.sock))
    assert b0 == 0x88 and int.from_bytes(payload[:2], "big") == 1002
    off = wsgate(config(routes=routes("off")))
    r = raw(off.port, handshake(headers=[("Sec-WebSocket-Extensions", "permessage-deflate")]))
    assert r.status == 101 and r.header("sec-websocket-extensions") is None
    # An offer that cannot be honoured is declined, not refused.
    r = raw(s.port, handshake(headers=[("Sec-WebSocket-Extensions", "permessage-deflate; server_max_window_bits=20")]))
    assert r.status == 101 and r.header("sec-websocket-extensions") is None


def test_contextual_mode_keeps_the_windows(wsgate):
    s = wsgate(config(routes=routes("contextual")))

    async def go():
        async with connect(s.url + "/ws/echo") as ws:
            assert ws.response.headers["Sec-WebSocket-Extensions"] == "permessage-deflate"
            for i in range(20):
                msg = JSON_TEXT + str(i)
                await ws.send(msg)
                assert await ws.recv() == msg

    run(go())
    # On the wire, the second identical message is smaller than the first: the window was kept.
    r, sock = open_raw(s.port, "permessage-deflate")
    c = zlib.compressobj(6, zlib.DEFLATED, -15)
    sizes = []
    for _ in range(2):
        packed = c.compress(JSON_TEXT.encode()) + c.flush(zlib.Z_SYNC_FLUSH)
        r.sock.sendall(compressed_frame(0x1, packed[:-4]))
        b0, payload = read_raw_frame(sock)
        assert b0 == 0xC1
        sizes.append(len(payload))
    assert sizes[1] < sizes[0], sizes
    r.sock.close()


def peak_rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    raise AssertionError("no VmHWM")


def test_a_decompression_bomb_closes_with_1009_and_memory_stays_bounded(wsgate):
    s = wsgate(config(routes=routes(), limits="max_message_bytes = 1048576\n"))
    # About 1 MiB of deflate that inflates to 1 GiB of zeros, made in pieces.
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    zeros = bytes(1 << 20)
    bomb = b"".join(c.compress(zeros) for _ in range(1024)) + c.flush(zlib.Z_SYNC_FLUSH)
    bomb = bomb[:-4]
    assert len(bomb) < 1100 * 1024, len(bomb)
    before = peak_rss_kib(s.proc.pid)
    r, sock = open_raw(s.port)
    r.sock.sendall(compressed_frame(0x2, bomb))
    b0, payload = read_raw_frame(sock)
    assert b0 == 0x88 and int.from_bytes(payload[:2], "big") == 1009, (hex(b0), payload)
    r.sock.close()
    # The server read the 1 MiB frame and inflated at most the 1 MiB limit: its peak memory grew by
    # a few MiB, nowhere near the 1 GiB the bomb holds.
    grown = peak_rss_kib(s.proc.pid) - before
    print(f"peak RSS grew by {grown} KiB for a bomb of {len(bomb)} bytes")
    assert grown < 64 * 1024, f"peak RSS grew by {grown} KiB"


def test_a_malformed_compressed_payload_closes_with_1007(wsgate):
    s = wsgate(config(routes=routes()))
    r, sock = open_raw(s.port)
    r.sock.sendall(compressed_frame(0x2, b"\xff\xff\xff\xff\xff\x00"))
    b0, payload = read_raw_frame(sock)
    assert b0 == 0x88 and int.from_bytes(payload[:2], "big") == 1007, payload
    r.sock.close()
    # Compressed text that inflates to invalid UTF-8 is 1007 too.
    r, sock = open_raw(s.port)
    r.sock.sendall(compressed_frame(0x1, deflate(b"\xc3\x28 not utf-8")))
    b0, payload = read_raw_frame(sock)
    assert b0 == 0x88 and int.from_bytes(payload[:2], "big") == 1007, payload
    r.sock.close()
    # RSV1 on a continuation frame is a protocol error.
    r, sock = open_raw(s.port)
    r.sock.sendall(frame(0x1, b"a", fin=False) + compressed_frame(0x0, deflate(b"b")))
    b0, payload = read_raw_frame(sock)
    assert b0 == 0x88 and int.from_bytes(payload[:2], "big") == 1002, payload
    r.sock.close()


def test_node_ws_negotiates_and_round_trips(wsgate):
    s = wsgate(config(routes=routes()))
    out = run_node("client.js", "deflate", s.url + "/ws/echo")
    ext = json.loads(out.strip().splitlines()[-1])["extensions"]
    assert ext.startswith("permessage-deflate"), ext


PAGE = """<!doctype html><meta charset="utf-8"><title>wsgate compression</title>
<script>
const url = new URLSearchParams(location.search).get('ws');
const text = JSON.stringify({user: 'alice', items: Array.from({length: 200}, (_, i) => ({id: i, text: 'hello world'}))});
const bin = new Uint8Array(65536).fill(7);
const ws = new WebSocket(url);
ws.binaryType = 'arraybuffer';
let step = 0;
ws.onopen = () => ws.send(text);
ws.onmessage = (e) => {
  if (step === 0) { window.textOk = e.data === text; step = 1; ws.send(bin); return; }
  const back = new Uint8Array(e.data);
  const binOk = back.length === bin.length && back.every((b) => b === 7);
  window.result = {extensions: ws.extensions, text: window.textOk, binary: binOk};
  ws.close(1000);
};
ws.onclose = (e) => { if (window.result === undefined) window.result = {closed: e.code}; };
</script>"""


def test_chromium_negotiates_and_round_trips(wsgate, tmp_path):
    require_tool("chromium", "headless Chromium (Debian package chromium); scripts/test installs it")
    require_tool(os.path.join(NODE_MODULES, "playwright-core"), "npm ci in tests/node")
    port = free_port()
    s = wsgate(config(routes=routes() + f'origins = ["http://127.0.0.1:{port}"]\n'))
    (tmp_path / "index.html").write_text(PAGE)
    pages = subprocess.Popen([sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1", "--directory",
                              str(tmp_path)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(0.5)
        out = subprocess.run(["node", str(ROOT / "tests/node/browser.js"),
                              f"http://127.0.0.1:{port}/index.html?ws={s.url}/ws/echo"],
                             capture_output=True, text=True, timeout=60, env={**os.environ, "NODE_PATH": NODE_MODULES})
        assert out.returncode == 0, out.stderr
        result = json.loads(out.stdout.strip().splitlines()[-1])
    finally:
        pages.kill()
        pages.wait()
    assert result["extensions"].startswith("permessage-deflate"), result
    assert result["text"] and result["binary"], result


def test_a_channel_compresses_a_broadcast_once_for_its_deflate_members(wsgate):
    room = '[[route]]\npath = "/ws/chat/{room}"\nkind = "channel"\ndeliver_to_sender = false\n'
    s = wsgate(config(routes=room))

    def member(offer):
        headers = [("Sec-WebSocket-Extensions", offer)] if offer else []
        r = raw(s.port, handshake(path="/ws/chat/lobby", headers=headers), keep_open=True)
        assert r.status == 101
        return r, Prefixed(r.body, r.sock)

    z1, z2, plain = member("permessage-deflate"), member("permessage-deflate; client_max_window_bits"), member(None)
    # A member that asked for a smaller server window gets plain frames (the room's are 15-bit).
    small = member("permessage-deflate; server_max_window_bits=10")

    async def publish():
        async with connect(s.url + "/ws/chat/lobby") as ws:
            await ws.send(JSON_TEXT)
            await ws.send("short")

    run(publish())
    got = {}
    for name, (r, sock) in {"z1": z1, "z2": z2, "plain": plain, "small": small}.items():
        got[name] = [read_raw_frame(sock), read_raw_frame(sock)]
        r.sock.close()
    assert got["z1"] == got["z2"]
    (b0, packed), short = got["z1"]
    assert b0 == 0xC1 and len(packed) < len(JSON_TEXT) / 4
    assert zlib.decompressobj(-15).decompress(packed + b"\x00\x00\xff\xff").decode() == JSON_TEXT
    assert short == (0x81, b"short")
    for name in ("plain", "small"):
        assert got[name] == [(0x81, JSON_TEXT.encode()), (0x81, b"short")], name


def test_compression_settings_are_checked(tmp_path):
    from conftest import BIN
    cfg = tmp_path / "c.toml"
    for route, needle in [
        ('[[route]]\npath = "/ws/e"\nkind = "echo"\ncompression = "gzip"\n', '"stateless"'),
        ('[[route]]\npath = "/ws/c/{room}"\nkind = "channel"\ncompression = "contextual"\n', "once per member"),
    ]:
        cfg.write_text(config(routes=route))
        out = subprocess.run([BIN, "check", "--config", str(cfg)], capture_output=True, text=True, timeout=30)
        assert out.returncode != 0 and "compression" in out.stderr and needle in out.stderr, out.stderr
