"""An upstream WebSocket server for proxy tests, built on Python `websockets`.

Usage: ws_upstream.py MODE [CERT KEY]   where MODE is `echo` (echoes; on request reports headers,
vanishes without a close frame, or sends a masked frame, which no server may), `echo-any` (the same,
choosing whatever subprotocol the client offers first, as a careless upstream would), `echo-plain`
(echo declining permessage-deflate, which `websockets` otherwise accepts) or
`sink` (never reads what it is sent), `refuse` (answers every handshake with 403); in every mode
but `sink`, the message `flood?` makes it send 64 KiB messages as fast as they are taken. With CERT
and KEY it serves wss://. Prints `port N` once
listening on 127.0.0.1.
"""

import asyncio
import http
import json
import ssl
import sys

from websockets.asyncio.server import serve


async def flood(ws):
    """Sends 64 KiB messages as fast as the connection takes them, until it ends."""
    chunk = b"f" * 65536
    try:
        while True:
            await ws.send(chunk)
    except Exception:
        return


async def echo(ws):
    if MODE == "sink":  # never reads: the library stops reading once its queue is full
        await ws.wait_closed()
        return
    async for msg in ws:
        if msg == "flood?":
            await flood(ws)
            return
        if msg == "headers?":
            await ws.send(json.dumps({k.lower(): v for k, v in ws.request.headers.raw_items()}))
        elif msg == "drop?":  # vanish without a close frame
            ws.transport.abort()
            return
        elif msg == "masked?":  # a frame no server may send (masked): a protocol violation
            ws.transport.write(bytes([0x81, 0x82, 1, 2, 3, 4, ord("h") ^ 1, ord("i") ^ 2]))
        else:
            await ws.send(msg)


def refuse(connection, request):
    return connection.respond(http.HTTPStatus.FORBIDDEN, "go away\n")


MODE = "echo"


async def main(mode, cert=None, key=None):
    global MODE
    MODE = mode
    # Picks chat.v2 or chat.v1 when offered, and accepts clients that offer none.
    def select(connection, offered):
        return next((p for p in ("chat.v2", "chat.v1") if p in offered), None)

    def select_any(connection, offered):
        return offered[0] if offered else None

    # Room for 1 MiB messages of random bytes, which permessage-deflate makes a little longer.
    kwargs = {"select_subprotocol": select_any if mode == "echo-any" else select, "max_size": 4 << 20}
    if mode == "refuse":
        kwargs["process_request"] = refuse
    if mode == "echo-plain":
        kwargs["compression"] = None
    if cert:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(cert, key)
        kwargs["ssl"] = ctx
    async with serve(echo, "127.0.0.1", 0, **kwargs) as server:
        port = server.sockets[0].getsockname()[1]
        print(f"port {port}", flush=True)
        await asyncio.get_running_loop().create_future()


asyncio.run(main(*(sys.argv[1:] or ["echo"])))
