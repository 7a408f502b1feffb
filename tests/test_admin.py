"""The admin page, driven in headless Chromium (playwright-core) against the real binary while the
test makes real handshakes with Python `websockets`: it loads without console errors, the live figures
and the chart move, a refusal appears in the tail with its request id and is found by it, an operator
closes one connection and bans the test's own address (its next handshake gets firewall.banned), the
reload button re-reads the file, the page reconnects after a restart, and with admin.token the page
needs the token (login form: HttpOnly SameSite=Strict cookie), actions need the anti-forgery header,
and /metrics stays open. Screenshots land in target/test-artifacts/admin/."""

import contextlib
import json
import os
import queue
import subprocess
import threading
import time
import urllib.error
import urllib.request

import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect

from conftest import BIN, NODE_MODULES, ROOT, Wsgate, config, free_port, require_tool

ARTIFACTS = ROOT / "target" / "test-artifacts" / "admin"
TOKEN = "admin-token-for-tests-0123456789"

ROUTES = """
[[route]]
path = "/ws/echo"
kind = "echo"

[[route]]
path = "/ws/room/{room}"
kind = "channel"
origins = ["https://app.example"]
"""


class Browser:
    """One Chromium page behind tests/node/drive.js: each call is one step with its own timeout."""

    def __init__(self):
        require_tool("chromium", "headless Chromium (Debian package chromium); scripts/test installs it")
        require_tool(os.path.join(NODE_MODULES, "playwright-core"), "npm ci in tests/node")
        self.proc = subprocess.Popen(
            ["node", str(ROOT / "tests/node/drive.js")],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env={**os.environ, "NODE_PATH": NODE_MODULES},
        )
        self.answers = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.proc.stdout:
            self.answers.put(json.loads(line))
        self.answers.put({"ok": False, "error": "the driver exited: " + self.proc.stderr.read()})

    def __call__(self, op, **kw):
        self.proc.stdin.write(json.dumps({"op": op, **kw}) + "\n")
        self.proc.stdin.flush()
        a = self.answers.get(timeout=kw.get("timeout", 15000) / 1000 + 30)
        assert a["ok"], f"browser {op} {kw}: {a['error']}"
        return a.get("value")

    def wait(self, js, timeout=15000):
        return self("wait", js=js, timeout=timeout)

    def close(self):
        try:
            self("close")
        except Exception:
            pass
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()


@pytest.fixture
def browser():
    b = Browser()
    yield b
    b.close()


def http(url, method="GET", body=None, headers=None):
    """(status, headers, text) of one request, without following redirects."""

    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *a, **k):
            return None

    req = urllib.request.Request(url, method=method, data=body, headers=headers or {})
    try:
        with urllib.request.build_opener(NoRedirect).open(req, timeout=10) as r:
            return r.status, r.headers, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.headers, e.read().decode()


def refused_id(url, **kw):
    """The request id of a refused handshake, and its reason code."""
    with pytest.raises(InvalidStatus) as e:
        connect(url, open_timeout=5, **kw)
    h = e.value.response.headers
    return h["x-request-id"], h.get("wsgate-reason")


def test_admin_page_live_tail_search_close_ban_and_reload(wsgate, browser):
    gate = wsgate(config(routes=ROUTES))
    browser("open", url=gate.admin + "/")
    browser.wait("document.getElementById('link').textContent === 'live'")
    assert browser("errors") == [], "the page loads without console errors"
    assert browser("eval", js="document.getElementById('f-open').textContent") == "0"

    # Live figures move with real handshakes and messages.
    stack = contextlib.ExitStack()
    conns = [stack.enter_context(connect(gate.url + "/ws/echo", open_timeout=5)) for _ in range(3)]
    rids = [c.response.headers["x-request-id"] for c in conns]
    for c in conns:
        for i in range(5):
            c.send(f"message {i}")
            assert c.recv(timeout=5) == f"message {i}"
    browser.wait("document.getElementById('f-open').textContent === '3'")
    browser.wait("samples.reduce((a, s) => a + s.admitted, 0) >= 3 && samples.reduce((a, s) => a + s.messages_in, 0) >= 15")
    by_route = browser("eval", js="[...document.querySelectorAll('#routes-open tbody tr')].map(r => r.innerText)")
    assert any("/ws/echo" in r and r.rstrip().endswith("3") for r in by_route), by_route

    # A refusal made now appears in the tail with its request id and code.
    rid, code = refused_id(gate.url + "/ws/room/lobby", origin="https://evil.example")
    assert code == "origin.not_allowed"
    for other in range(4):
        refused_id(gate.url + "/ws/nowhere")
    row = browser.wait(
        f"(() => {{ const r = document.querySelector('#refusals tr[data-rid=\"{rid}\"]'); return r && r.innerText; }})()"
    )
    assert "origin.not_allowed" in row and "/ws/room/{room}" in row and "https://evil.example" in row, row
    browser.wait("samples.some(s => s.refused['origin.not_allowed'] === 1) && document.querySelectorAll('#legend span').length >= 3")

    # Search by the request id a client quotes finds exactly that line.
    browser("fill", selector="#q-request", value=rid)
    browser("click", selector="#refusal-filter button[type=submit]")
    browser.wait(
        f"(() => {{ const rows = [...document.querySelectorAll('#refusals tbody tr')]; return rows.length === 1 && rows[0].dataset.rid === '{rid}'; }})()"
    )
    browser("select", selector="#q-code", value="route.not_found")
    browser("fill", selector="#q-request", value="")
    browser("click", selector="#refusal-filter button[type=submit]")
    browser.wait("(() => { const rows = [...document.querySelectorAll('#refusals tbody tr')]; return rows.length === 4 && rows.every(r => r.innerText.includes('route.not_found')); })()")
    browser("click", selector="#q-clear")
    policies = browser("eval", js="document.getElementById('policies').innerText")
    assert "https://app.example" in policies and "origin" in policies, policies
    browser("screenshot", path=str(ARTIFACTS / "admin-live.png"))

    # Close one connection from the page: it gets 1008, the others stay.
    browser("fill", selector="#c-request", value=rids[0])
    browser("click", selector="#conn-filter button[type=submit]")
    browser.wait(f"document.querySelectorAll('#connections tbody tr').length === 1 && document.querySelector('#connections tbody tr').dataset.rid === '{rids[0]}'")
    browser("click", selector="#connections tbody tr button")
    with pytest.raises(ConnectionClosed) as closed:
        conns[0].recv(timeout=10)
    assert closed.value.rcvd.code == 1008 and closed.value.rcvd.reason == "closed by an operator"
    conns[1].send("still here")
    assert conns[1].recv(timeout=5) == "still here"
    browser.wait("document.getElementById('f-open').textContent === '2'")

    # Ban the test's own address for a minute, closing its connections: the next handshake is refused.
    browser("fill", selector="#ban-address", value="127.0.0.1")
    browser("select", selector="#ban-seconds", value="60")
    browser("click", selector="#ban-form button[type=submit]")
    for c in conns[1:]:
        with pytest.raises(ConnectionClosed) as closed:
            c.recv(timeout=10)
        assert closed.value.rcvd.code == 1008
    _, code = refused_id(gate.url + "/ws/echo")
    assert code == "firewall.banned"
    browser.wait("document.querySelector('#bans tbody').innerText.includes('127.0.0.1') && document.querySelector('#bans tbody').innerText.includes('operator')")
    assert "by an operator" in gate.wait_log("by an operator (admin page)")
    browser.wait("document.getElementById('f-open').textContent === '0'")
    browser("screenshot", path=str(ARTIFACTS / "admin-banned.png"))
    browser("click", selector="#bans tbody button")
    browser.wait("document.querySelector('#bans tbody').innerText.includes('No address is banned')")
    with connect(gate.url + "/ws/echo", open_timeout=5) as c:
        c.send("back")
        assert c.recv(timeout=5) == "back"

    # The reload button re-reads the file: a route added there is served at once.
    gate.config_path.write_text(config(routes=ROUTES + '\n[[route]]\npath = "/ws/added"\nkind = "echo"\n'))
    browser("click", selector="#reload")
    notice = browser.wait("(() => { const n = document.getElementById('notice'); return !n.hidden && n.textContent.includes('reloaded') && n.textContent; })()")
    assert "/ws/added" in notice, notice
    with connect(gate.url + "/ws/added", open_timeout=5) as c:
        c.send("new route")
        assert c.recv(timeout=5) == "new route"
    assert gate.metric("wsgate_config_reloads_total", result="ok") == 1
    browser.wait("document.getElementById('policies').innerText.includes('/ws/added')")
    assert browser("errors") == [], "no console errors after every action"
    stack.close()


def test_the_page_reconnects_after_a_restart(tmp_path, browser):
    port = free_port()
    first = Wsgate(config(routes=ROUTES), tmp_path, admin=f"127.0.0.1:{port}")
    try:
        browser("open", url=first.admin + "/")
        browser.wait("document.getElementById('link').textContent === 'live'")
        started = browser("eval", js="state.started_ms")
        first.stop()
        browser.wait("document.getElementById('link').textContent === 'reconnecting…'")
        time.sleep(1.1)  # the new process starts in a later millisecond than the first did
        second = Wsgate(config(routes=ROUTES), tmp_path, admin=f"127.0.0.1:{port}")
        try:
            browser.wait(f"state.started_ms !== {started} && document.getElementById('link').textContent === 'live'", timeout=20000)
            with connect(second.url + "/ws/echo", open_timeout=5):
                browser.wait("document.getElementById('f-open').textContent === '1'")
        finally:
            second.stop()
    finally:
        first.stop()


def test_with_a_token_the_page_needs_it_and_actions_need_the_page(wsgate, browser):
    # Configured for every interface, as a token allows; the test binds it to loopback (--admin).
    text = config(routes=ROUTES) + f'\n[admin]\naddress = "0.0.0.0:9090"\ntoken = "{TOKEN}"\n'
    gate = wsgate(text)
    assert gate.admin.startswith("http://127.0.0.1:")
    base = gate.admin
    assert "log in with admin.token" in "".join(gate.banner)

    # Scrapers and load balancers need no token.
    assert http(base + "/metrics")[0] == 200 and http(base + "/healthz")[0] == 200
    status, headers, _ = http(base + "/")
    assert status == 303 and headers["location"] == "/login"
    status, headers, body = http(base + "/api/state")
    assert status == 401 and "Bearer" in headers["www-authenticate"] and "admin.token" in body
    assert http(base + "/api/state", headers={"Authorization": "Bearer wrong-token-0123456789"})[0] == 401
    status, _, body = http(base + "/api/state", headers={"Authorization": f"Bearer {TOKEN}"})
    assert status == 200 and json.loads(body)["token_required"] is True
    # A script with the bearer token needs no anti-forgery header.
    status, _, body = http(base + "/api/ban", "POST", json.dumps({"address": "192.0.2.9", "seconds": 30}).encode(),
                           {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"})
    assert status == 200 and json.loads(body)["banned"] == "192.0.2.9", body
    status, _, body = http(base + "/api/ban", "POST", json.dumps({"address": "not an address", "seconds": 30}).encode(),
                           {"Authorization": f"Bearer {TOKEN}"})
    assert status == 400 and "IP address" in body

    # The browser logs in through the form and gets an HttpOnly, SameSite=Strict cookie.
    browser("open", url=base + "/")
    browser.wait("location.pathname === '/login'")
    browser("fill", selector="#token", value="not-the-token-0123456789")
    browser("click", selector="button[type=submit]")
    browser.wait("document.querySelector('.error').textContent.includes('not the admin token')")
    # The wrong token's 401 is the only console line so far.
    before = browser("errors")
    assert len(before) == 1 and "401" in before[0], before
    browser("fill", selector="#token", value=TOKEN)
    browser("click", selector="button[type=submit]")
    browser.wait("location.pathname === '/' && document.getElementById('link').textContent === 'live'")
    cookie = next(c for c in browser("cookies") if c["name"] == "wsgate_admin")
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict", cookie
    assert "wsgate_admin" not in browser("eval", js="document.cookie")
    browser.wait("document.querySelector('#bans tbody').innerText.includes('192.0.2.9')")
    browser("screenshot", path=str(ARTIFACTS / "admin-token.png"))

    # The cookie alone does not make an action: the anti-forgery header must match, and a
    # cross-site origin is refused even with it.
    jar = {"Cookie": f"wsgate_admin={cookie['value']}", "Content-Type": "application/json"}
    unban = json.dumps({"address": "192.0.2.9"}).encode()
    status, _, body = http(base + "/api/unban", "POST", unban, jar)
    assert status == 403 and "anti-forgery" in body
    csrf = browser("eval", js="csrf")
    status, _, body = http(base + "/api/unban", "POST", unban, {**jar, "x-wsgate-csrf": csrf, "Origin": "http://evil.example"})
    assert status == 403 and "cross-origin" in body
    status, _, body = http(base + "/api/unban", "POST", unban, {**jar, "x-wsgate-csrf": csrf, "Sec-Fetch-Site": "cross-site"})
    assert status == 403 and "cross-site" in body
    status, _, body = http(base + "/api/unban", "POST", unban, {**jar, "x-wsgate-csrf": csrf})
    assert status == 200 and json.loads(body)["lifted"] is True
    assert browser("errors")[1:] == []

    # Guessing: past 20 wrong tokens in 10 s every token check waits (the logged-in page does not).
    statuses = [http(base + "/api/state", headers={"Authorization": f"Bearer guess-{i:020d}"})[0] for i in range(45)]
    # The wrong bearer and login above may count in the same window, and that window may end
    # within these tries (the count starts again): 401s, then only 429s, within 40 tries.
    assert 429 in statuses, statuses
    first = statuses.index(429)
    assert set(statuses[:first]) == {401} and set(statuses[first:]) == {429}, statuses
    assert first <= 40, statuses
    status, headers, _ = http(base + "/api/state", headers={"Authorization": f"Bearer {TOKEN}"})
    assert status == 429 and int(headers["retry-after"]) >= 1
    assert http(base + "/api/state", headers={"Cookie": f"wsgate_admin={cookie['value']}"})[0] == 200
    assert "wrong tokens" in gate.wait_log("wrong tokens in a row")


def test_a_tokenless_page_answers_only_local_names_and_same_page_actions(wsgate):
    gate = wsgate(config(routes=ROUTES))
    # DNS rebinding: a page on another name that resolves to 127.0.0.1 gets nothing.
    status, _, body = http(gate.admin + "/api/state", headers={"Host": "rebind.example:9090"})
    assert status == 421 and "DNS rebinding" in body
    status, _, body = http(gate.admin + "/api/state", headers={"Host": "localhost"})
    assert status == 200
    csrf = json.loads(body)["csrf"]
    # A cross-site form post has no anti-forgery header.
    status, _, body = http(gate.admin + "/api/ban", "POST", b'{"address":"192.0.2.1","seconds":5}', {"Content-Type": "text/plain"})
    assert status == 403 and "anti-forgery" in body
    status, _, body = http(gate.admin + "/api/ban", "POST", b'{"address":"192.0.2.1","seconds":5}', {"x-wsgate-csrf": csrf})
    assert status == 200, body
    status, _, body = http(gate.admin + "/api/ban", "POST", b'{"address":"192.0.2.1","seconds":0}', {"x-wsgate-csrf": csrf})
    assert status == 400 and "seconds" in body
    status, _, body = http(gate.admin + "/api/close", "POST", b'{"id": 999999}', {"x-wsgate-csrf": csrf})
    assert status == 404 and "no open connection" in body
    assert http(gate.admin + "/api/close")[0] == 405


def test_a_public_admin_address_needs_a_token(tmp_path):
    # Checked before anything is bound: no traffic leaves loopback.
    cfg = tmp_path / "public.toml"
    cfg.write_text(config() + '\n[admin]\naddress = "0.0.0.0:9090"\n')
    out = subprocess.run([BIN, "check", "--config", str(cfg)], capture_output=True, text=True, timeout=30)
    assert out.returncode != 0 and "`admin.token`" in out.stderr and "not loopback" in out.stderr, out.stderr
    out = subprocess.run([BIN, "serve", "--config", str(cfg)], capture_output=True, text=True, timeout=30)
    assert out.returncode != 0 and "admin.token" in out.stderr, out.stderr
    cfg.write_text(config())
    out = subprocess.run([BIN, "serve", "--config", str(cfg), "--admin", "0.0.0.0:0"], capture_output=True, text=True, timeout=30)
    assert out.returncode != 0 and "admin.token" in out.stderr, out.stderr
    cfg.write_text(config() + '\n[admin]\naddress = "0.0.0.0:9090"\ntoken = "short"\n')
    out = subprocess.run([BIN, "check", "--config", str(cfg)], capture_output=True, text=True, timeout=30)
    assert out.returncode != 0 and "at least 16 characters" in out.stderr, out.stderr
    (tmp_path / "token").write_text(TOKEN + "\n")
    cfg.write_text(config() + '\n[admin]\naddress = "0.0.0.0:9090"\ntoken_file = "token"\n')
    out = subprocess.run([BIN, "check", "--config", str(cfg)], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0 and "token required" in out.stdout, out.stdout + out.stderr
    assert TOKEN not in out.stdout
