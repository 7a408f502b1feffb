"""An external check service for wsgate's tests (like an nginx auth_request backend).

Decides by the bearer token: good -> 204 with identity headers, forbidden -> 403, broken -> 500,
slow -> answers after 3 s, anything else -> 401. Appends each request's headers as a JSON line to
the file named on the command line. Prints `port N` once listening on 127.0.0.1.
"""

import json
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

LOG = sys.argv[1]


class Check(BaseHTTPRequestHandler):
    def do_GET(self):
        with open(LOG, "a") as f:
            f.write(json.dumps({k.lower(): v for k, v in self.headers.items()}) + "\n")
        token = self.headers.get("Authorization", "").removeprefix("Bearer ")
        if token == "slow":
            time.sleep(3)
        status = {"good": 204, "forbidden": 403, "broken": 500, "slow": 204}.get(token, 401)
        self.send_response(status)
        if status == 204:
            self.send_header("X-Auth-User", "alice")
            self.send_header("X-Auth-Roles", "admin,chat")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


server = ThreadingHTTPServer(("127.0.0.1", 0), Check)
print(f"port {server.server_address[1]}", flush=True)
server.serve_forever()
