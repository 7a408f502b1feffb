"""Headless Chromium against the real binary: a page from an allowed origin connects with its token in a
cookie and in a subprotocol entry; the same page from another loopback port (a disallowed origin) is
refused with origin.not_allowed, and the server's log line says so."""

import hashlib
import json
import os
import subprocess
import sys
import time

import pytest

from conftest import NODE_MODULES, ROOT, config, free_port, require_tool

KEY = "browser-key-0123456789abcdef"

PAGE = """<!doctype html><meta charset="utf-8"><title>wsgate browser test</title>
<script>
const params = new URLSearchParams(location.search);
const url = params.get('ws');
const mode = params.get('mode');
const key = params.get('key');
function finish(r) { window.result = r; }
let ws;
if (mode === 'cookie') {
  document.cookie = 'wsgate_token=' + key + '; path=/; SameSite=Strict';
  ws = new WebSocket(url);
} else {
  document.cookie = 'wsgate_token=; path=/; max-age=0';
  ws = new WebSocket(url, ['chat.v1', 'token.' + key]);
}
ws.onopen = () => ws.send('hello from ' + location.origin);
ws.onmessage = (e) => { finish({ open: true, echo: e.data, protocol: ws.protocol }); ws.close(1000); };
ws.onclose = (e) => { if (window.result === undefined) finish({ open: false, code: e.code }); };
</script>"""


@pytest.fixture
def pages(tmp_path):
    require_tool("chromium", "headless Chromium (Debian package chromium); scripts/test installs it")
    (tmp_path / "index.html").write_text(PAGE)
    procs, ports = [], []
    for _ in range(2):
        port = free_port()
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1", "--directory", str(tmp_path)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        ))
        ports.append(port)
    time.sleep(0.5)
    yield ports
    for p in procs:
        p.kill()
        p.wait()


def browse(url):
    require_tool(os.path.join(NODE_MODULES, "playwright-core"), "npm ci in tests/node")
    out = subprocess.run(
        ["node", str(ROOT / "tests/node/browser.js"), url],
        capture_output=True, text=True, timeout=60, env={**os.environ, "NODE_PATH": NODE_MODULES},
    )
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_browser_origins_and_tokens(wsgate, pages):
    allowed, other = pages
    sha = hashlib.sha256(KEY.encode()).hexdigest()
    routes = f"""
    [[route]]
    path = "/ws/private"
    kind = "echo"
    subprotocols = ["chat.v1"]
    origins = ["http://127.0.0.1:{allowed}"]
    [route.auth]
    sources = ["cookie:wsgate_token", "subprotocol:token."]
    api_keys = [{{ name = "browser", sha256 = "{sha}" }}]
    """
    s = wsgate(config(routes=routes))
    ws = s.url + "/ws/private"

    for mode in ("cookie", "subprotocol"):
        r = browse(f"http://127.0.0.1:{allowed}/index.html?ws={ws}&mode={mode}&key={KEY}")
        assert r["open"] is True, (mode, r)
        assert r["echo"] == f"hello from http://127.0.0.1:{allowed}"
        if mode == "subprotocol":
            assert r["protocol"] == "chat.v1", "the token entry is never selected"

    r = browse(f"http://127.0.0.1:{other}/index.html?ws={ws}&mode=cookie&key={KEY}")
    assert r == {"open": False, "code": 1006}, "a browser only sees 1006 for a refused handshake"
    line = next(l for l in s.wait_log("origin.not_allowed").splitlines() if "origin.not_allowed" in l)
    assert f"http://127.0.0.1:{other}" in line and f"nearest allowed entry: http://127.0.0.1:{allowed}" in line
    assert KEY not in s.log()
