"""WebSocket servers of the frameworks people run, each set up the way its users set it up, for the
doctor's framework matrix. Usage: frameworks.py NAME PORT; serves on 127.0.0.1:PORT until killed.

  tornado    Tornado's WebSocketHandler at /ws (its default check_origin: same host only)
  socketio   python-socketio's ASGI app on uvicorn, cors_allowed_origins=["https://app.example"]
  starlette  Starlette on uvicorn, /ws reads ?token= and closes before accepting without it
  channels   Django Channels on daphne, /ws/ behind AllowedHostsOriginValidator (ALLOWED_HOSTS app.example, 127.0.0.1)
  pyws       Python websockets, origins https://app.example (and none), subprotocols ["chat.v1"]
"""

import asyncio
import os
import sys

NAME, PORT = sys.argv[1], int(sys.argv[2])
HOST = "127.0.0.1"


def tornado_app():
    import tornado.web
    import tornado.websocket

    class Echo(tornado.websocket.WebSocketHandler):
        def on_message(self, message):
            self.write_message(message)

    async def main():
        tornado.web.Application([(r"/ws", Echo)]).listen(PORT, address=HOST)
        await asyncio.Event().wait()

    asyncio.run(main())


def socketio_app():
    import socketio
    import uvicorn

    sio = socketio.AsyncServer(async_mode="asgi", cors_allowed_origins=["https://app.example"])
    uvicorn.run(socketio.ASGIApp(sio), host=HOST, port=PORT, log_level="warning")


def starlette_app():
    import uvicorn
    from starlette.applications import Starlette
    from starlette.routing import WebSocketRoute

    async def ws(websocket):
        if websocket.query_params.get("token") != "secret-token":
            await websocket.close(code=1008)
            return
        await websocket.accept()
        async for message in websocket.iter_text():
            await websocket.send_text(message)

    uvicorn.run(Starlette(routes=[WebSocketRoute("/ws", ws)]), host=HOST, port=PORT, log_level="warning")


def channels_app():
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from daphne.cli import CommandLineInterface

    CommandLineInterface().run(["-b", HOST, "-p", str(PORT), "--verbosity", "0", "frameworks_channels:application"])


def pyws_app():
    from websockets.asyncio.server import serve

    async def echo(ws):
        async for message in ws:
            await ws.send(message)

    async def main():
        async with serve(echo, HOST, PORT, origins=["https://app.example", None], subprotocols=["chat.v1"]):
            await asyncio.Event().wait()

    asyncio.run(main())


{"tornado": tornado_app, "socketio": socketio_app, "starlette": starlette_app, "channels": channels_app, "pyws": pyws_app}[NAME]()
