"""Servers for the doctor's tests, each refusing or misbehaving in one known way.

Usage: doctor_servers.py MODE [ARG...]; prints `port N` once listening on 127.0.0.1.
  origins ORIGIN [allow-missing]   Python websockets allowing only ORIGIN (and no Origin)
  token TOKEN         Python websockets requiring ?access_token=TOKEN (401 otherwise)
  close1008           accepts, then closes at once with 1008 "unauthorized"
  tls CERT KEY        Python websockets echo over TLS with the given certificate
  badaccept           a raw server answering 101 with a wrong Sec-WebSocket-Accept
  noproto             a raw server answering 101 without choosing any offered subprotocol
  noupgrade           a raw server answering 101 without Upgrade/Connection headers
  redirect URL        a raw server answering 301 to URL
  reset               a raw server that resets every connection after reading the request
  status CODE         a raw server answering every request with HTTP CODE
  tls12cbc CERT KEY   TLS 1.2 with only CBC cipher suites (which modern clients refuse)
"""

import asyncio
import base64
import hashlib
import http
import socket
import ssl
import struct
import sys
from urllib.parse import parse_qs, urlsplit

from websockets.asyncio.server import serve

GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


async def echo(ws):
    async for msg in ws:
        await ws.send(msg)


async def close_at_once(ws):
    await ws.close(1008, "unauthorized")


async def raw(reader, writer, mode, arg=None):
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = await reader.read(4096)
        if not chunk:
            return
        head += chunk
    key = next(l.split(":", 1)[1].strip() for l in head.decode().split("\r\n") if l.lower().startswith("sec-websocket-key:"))
    accept = base64.b64encode(hashlib.sha1((key + GUID).encode()).digest()).decode()
    if mode == "badaccept":
        accept = base64.b64encode(b"0" * 20).decode()
    if mode == "reset":
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.transport.abort()
        return
    if mode == "status":
        writer.write(f"HTTP/1.1 {arg} Nope\r\nContent-Length: 0\r\n\r\n".encode())
    elif mode == "redirect":
        writer.write(f"HTTP/1.1 301 Moved Permanently\r\nLocation: {arg}\r\nContent-Length: 0\r\n\r\n".encode())
    elif mode == "noupgrade":
        writer.write(f"HTTP/1.1 101 Switching Protocols\r\nSec-WebSocket-Accept: {accept}\r\n\r\n".encode())
    else:
        writer.write(f"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n".encode())
    await writer.drain()
    await asyncio.sleep(5)
    writer.close()


async def main(mode, *args):
    if mode in ("badaccept", "noproto", "noupgrade", "redirect", "reset", "status"):
        arg = args[0] if args else None
        server = await asyncio.start_server(lambda r, w: raw(r, w, mode, arg), "127.0.0.1", 0)
        print(f"port {server.sockets[0].getsockname()[1]}", flush=True)
        async with server:
            await server.serve_forever()
        return
    kwargs, handler = {}, echo
    if mode == "origins":
        kwargs["origins"] = [args[0]] + ([None] if "allow-missing" in args else [])
    elif mode == "token":
        def check(connection, request):
            token = parse_qs(urlsplit(request.path).query).get("access_token", [None])[0]
            if token != args[0]:
                return connection.respond(http.HTTPStatus.UNAUTHORIZED, "token required\n")
        kwargs["process_request"] = check
    elif mode == "close1008":
        handler = close_at_once
    elif mode == "tls":
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(args[0], args[1])
        kwargs["ssl"] = ctx
    elif mode == "tls12cbc":
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(args[0], args[1])
        ctx.maximum_version = ssl.TLSVersion.TLSv1_2
        ctx.set_ciphers("ECDHE-ECDSA-AES128-SHA:@SECLEVEL=0")
        kwargs["ssl"] = ctx
    async with serve(handler, "127.0.0.1", 0, **kwargs) as server:
        print(f"port {server.sockets[0].getsockname()[1]}", flush=True)
        await asyncio.get_running_loop().create_future()


asyncio.run(main(*sys.argv[1:]))
