"""`wsgate doctor` against real servers: our own, Python websockets refusing by Origin and by
token, a plain HTTP server, a closed port, TLS with certificates made in the test, and raw servers
that get the handshake wrong. Each test asserts the JSON cause and that the fixes name the change."""

import datetime
import json
import socket
import subprocess
import sys

import pytest

from conftest import BIN, Wsgate, config, free_port
from test_tls import make_cert, tls_listener


def doctor(*args):
    out = subprocess.run([BIN, "doctor", *map(str, args), "--json", "--timeout", "3"], capture_output=True, text=True, timeout=60)
    assert out.returncode in (0, 1), out.stderr
    d = json.loads(out.stdout)
    assert d["ok"] == (out.returncode == 0)
    return d


def fixes(d, side=None):
    return " ".join(f["text"] for f in d["fixes"] if side is None or f["side"] == side)


@pytest.fixture
def peer(python_peer):
    return lambda *args: python_peer("doctor_servers.py", *args)


def test_a_working_endpoint(wsgate):
    s = wsgate()
    d = doctor(s.url + "/ws/echo")
    assert d["ok"] and d["cause"] is None
    assert [st["name"] for st in d["steps"]] == ["dns", "tcp", "http", "websocket"]
    assert all(st["ok"] for st in d["steps"])
    assert set(d) == {"url", "ok", "cause", "summary", "evidence", "fixes", "steps", "experiments", "server", "browser"}


@pytest.mark.parametrize(
    "path,args,cause,fix",
    [
        ("/nope", [], "route.not_found", "route"),
        ("/ws/private", ["--origin", "http://evil.test"], "origin.not_allowed", 'origins = ["http://evil.test"]'),
        ("/ws/private", [], "auth.missing", "cookie"),
        ("/ws/private", ["--token", "wrong"], "auth.invalid", "auth.api_keys"),
    ],
)
def test_wsgate_refusals_are_reported_with_the_servers_own_code(wsgate, path, args, cause, fix):
    import hashlib

    sha = hashlib.sha256(b"right").hexdigest()
    s = wsgate(config(routes=f'[[route]]\npath = "/ws/private"\nkind = "echo"\n[route.auth]\napi_keys = [{{ name = "a", sha256 = "{sha}" }}]\n'))
    d = doctor(s.url + path, *args)
    assert d["cause"] == cause and d["server"]["software"] == "wsgate" and d["server"]["reason"] == cause
    assert fix in fixes(d)
    assert d["experiments"] == [], "the server said why: nothing to guess"
    assert d["server"]["request_id"]


def test_python_websockets_origin_check_is_found_by_experiment(peer):
    port = peer("origins", "https://app.test", "allow-missing")
    d = doctor(f"ws://127.0.0.1:{port}/", "--origin", "https://evil.test")
    assert d["cause"] == "origin.not_allowed"
    assert d["server"]["software"] == "Python websockets"
    assert any(e["change"] == "no Origin" and e["status"] == 101 for e in d["experiments"])
    assert 'origins=["https://evil.test"]' in fixes(d, "server")
    assert len(d["experiments"]) <= 8
    assert "1006" in d["browser"]


def test_origin_check_that_also_refuses_a_missing_origin_is_read_from_the_refusal(peer):
    port = peer("origins", "https://app.test")
    d = doctor(f"ws://127.0.0.1:{port}/", "--origin", "https://evil.test")
    assert d["cause"] == "origin.not_allowed"
    assert all(e["status"] == 403 for e in d["experiments"]), "no variation was admitted"
    assert any("refusal's own text" in e for e in d["evidence"])


def test_token_expected_elsewhere_is_found_by_experiment(peer):
    port = peer("token", "s3cret")
    d = doctor(f"ws://127.0.0.1:{port}/", "--token", "s3cret")  # sent as a bearer header
    assert d["cause"] == "auth.missing"
    assert any("query parameter access_token" in e["change"] and e["status"] == 101 for e in d["experiments"])
    assert doctor(f"ws://127.0.0.1:{port}/", "--token", "s3cret", "--token-via", "query:access_token")["ok"]
    assert doctor(f"ws://127.0.0.1:{port}/", "--token", "nope", "--token-via", "query:access_token")["cause"] == "auth.invalid"
    assert doctor(f"ws://127.0.0.1:{port}/")["cause"] == "auth.missing"


def test_no_experiments_reads_the_answer_alone(peer):
    port = peer("token", "s3cret")
    d = doctor(f"ws://127.0.0.1:{port}/", "--no-experiments")
    assert d["cause"] == "auth.missing" and d["experiments"] == []


def test_plain_http_server_and_closed_port(tmp_path):
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1", "--directory", str(tmp_path)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        import time

        for _ in range(50):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.05)
        assert doctor(f"ws://127.0.0.1:{port}/missing")["cause"] == "http.not_found"
        d = doctor(f"ws://127.0.0.1:{port}/")
        assert d["cause"] == "http.not_websocket" and "proxy_set_header Upgrade" in fixes(d)
    finally:
        proc.kill()
        proc.wait()
    d = doctor(f"ws://127.0.0.1:{free_port()}/")
    assert d["cause"] == "tcp.refused" and [s["name"] for s in d["steps"]] == ["dns", "tcp"]


def test_tls_causes(wsgate, peer, tmp_path):
    subprocess.run([BIN, "cert", "dev", "--host", "localhost", "--out", tmp_path], check=True, capture_output=True)
    s = wsgate(config(listener_extra=tls_listener(tmp_path / "cert.pem", tmp_path / "key.pem")))
    url = f"wss://localhost:{s.port}/ws/echo"
    d = doctor(url)
    assert d["cause"] == "tls.untrusted" and "--cacert" in fixes(d, "client")
    assert any("certificate 0: subject CN=localhost" in e for e in d["evidence"]), "the chain is shown"
    ok = doctor(url, "--cacert", tmp_path / "cert.pem")
    assert ok["ok"]
    tls_step = next(st for st in ok["steps"] if st["name"] == "tls")
    assert "trusted: yes; in date: yes; matches localhost: yes; client certificate requested: no" in tls_step["detail"]
    assert doctor(url, "--insecure")["ok"]
    assert doctor(f"ws://localhost:{s.port}/ws/echo")["cause"] == "tls.required"
    plain = wsgate()
    assert doctor(f"wss://127.0.0.1:{plain.port}/ws/echo")["cause"] == "tls.not_tls"

    now = datetime.datetime.now(datetime.timezone.utc)
    day = datetime.timedelta(days=1)
    for name, nb, na, host, cause in [
        ("expired", now - 30 * day, now - day, "localhost", "tls.expired"),
        ("future", now + day, now + 30 * day, "localhost", "tls.not_yet_valid"),
        ("other", now - day, now + 30 * day, "other.test", "tls.hostname_mismatch"),
    ]:
        c, k = make_cert(tmp_path, name, nb, na, host=host)
        port = peer("tls", c, k)
        d = doctor(f"wss://localhost:{port}/", "--cacert", c)
        assert d["cause"] == cause, (name, d["evidence"])


def test_client_certificate_required(tmp_path):
    from test_mtls import issue, make_ca, write

    ca = make_ca("Doctor CA")
    ca_file, _ = write(tmp_path / "ca", ca[0])
    server = write(tmp_path / "server", *issue(ca, "localhost", "localhost", client=False))
    client = write(tmp_path / "client", *issue(ca, "me", "me.example", client=True))
    text = f'[[listener]]\naddress = "127.0.0.1:0"\n[listener.tls]\ncert = "{server[0]}"\nkey = "{server[1]}"\nclient_ca = "{ca_file}"\n[[route]]\npath = "/ws"\nkind = "echo"\n'
    s = Wsgate(text, tmp_path)
    try:
        url = f"wss://localhost:{s.port}/ws"
        d = doctor(url, "--cacert", ca_file)
        assert d["cause"] == "tls.client_cert_required"
        assert doctor(url, "--cacert", ca_file, "--cert", client[0], "--key", client[1])["ok"]
    finally:
        s.stop()


def test_broken_handshakes_and_a_close_right_after_opening(peer):
    d = doctor(f"ws://127.0.0.1:{peer('badaccept')}/")
    assert d["cause"] == "ws.bad_accept"
    d = doctor(f"ws://127.0.0.1:{peer('noproto')}/", "--subprotocol", "chat.v1")
    assert d["cause"] == "subprotocol.not_echoed"
    d = doctor(f"ws://127.0.0.1:{peer('close1008')}/")
    assert d["cause"] == "ws.closed_after_open"
    assert any("1008" in e and "unauthorized" in e for e in d["evidence"])
    assert "1008" in d["browser"]


def test_reset_redirect_and_a_101_without_upgrade(peer):
    assert doctor(f"ws://127.0.0.1:{peer('reset')}/")["cause"] == "tcp.reset"
    d = doctor(f"ws://127.0.0.1:{peer('redirect', 'wss://elsewhere.test/ws')}/")
    assert d["cause"] == "http.redirect" and any("wss://elsewhere.test/ws" in e for e in d["evidence"])
    assert doctor(f"ws://127.0.0.1:{peer('noupgrade')}/")["cause"] == "ws.upgrade_header_missing"


def test_wsgate_refusing_for_its_codes(wsgate, tmp_path):
    import hashlib

    sha = hashlib.sha256(b"k").hexdigest()
    dead = free_port()
    routes = f"""
    [[route]]
    path = "/ws/proto"
    kind = "echo"
    subprotocols = ["v2"]
    [[route]]
    path = "/ws/browsers"
    kind = "echo"
    allow_missing_origin = false
    [[route]]
    path = "/ws/fw"
    kind = "echo"
    firewall = {{ deny = ["127.0.0.1"] }}
    [[route]]
    path = "/ws/host"
    kind = "echo"
    hosts = ["gw.test"]
    [[route]]
    path = "/ws/authz"
    kind = "echo"
    [route.auth]
    api_keys = [{{ name = "k", sha256 = "{sha}" }}]
    [route.authz]
    require_scopes = ["admin"]
    [[route]]
    path = "/ws/up"
    kind = "proxy"
    upstream = "ws://127.0.0.1:{dead}/"
    [[route]]
    path = "/ws/ext"
    kind = "echo"
    [route.auth]
    external = {{ url = "http://127.0.0.1:{dead}/check" }}
    """
    s = wsgate(config(routes=routes))
    for path, args, cause in [
        ("/ws/proto", ["--subprotocol", "v1"], "subprotocol.unsupported"),
        ("/ws/browsers", [], "origin.missing"),
        ("/ws/fw", [], "firewall.ip_denied"),
        ("/ws/host", [], "host.not_allowed"),
        ("/ws/authz", ["--token", "k"], "authz.forbidden"),
        ("/ws/up", [], "upstream.unreachable"),
        ("/ws/ext", [], "auth.unavailable"),
    ]:
        d = doctor(s.url + path, *args)
        assert (d["cause"], d["server"]["reason"]) == (cause, cause), path
        assert d["fixes"] and d["server"]["request_id"]


def test_wsgate_limits_expiry_and_refusing_upstream(wsgate, peer):
    import time as _time

    import jwt as pyjwt

    from conftest import handshake

    secret = "a-shared-secret-of-at-least-32-bytes!"
    refusing = peer("token", "never-given")
    routes = f"""
    [[route]]
    path = "/ws/jwt"
    kind = "echo"
    [route.auth]
    [[route.auth.jwt]]
    secret = "{secret}"
    leeway = "0s"
    [[route]]
    path = "/ws/up"
    kind = "proxy"
    upstream = "ws://127.0.0.1:{refusing}/"
    [[route]]
    path = "/ws/echo"
    kind = "echo"
    """
    s = wsgate(config(routes=routes, limits="max_connections_per_client = 1\n"))
    expired = pyjwt.encode({"sub": "a", "exp": int(_time.time()) - 60}, secret, algorithm="HS256")
    d = doctor(s.url + "/ws/jwt", "--token", expired)
    assert d["cause"] == "auth.expired" and "fresh token" in fixes(d, "client")
    assert doctor(s.url + "/ws/up")["cause"] == "upstream.refused"
    held = socket.create_connection(("127.0.0.1", s.port))
    held.sendall(handshake())
    assert held.recv(100).startswith(b"HTTP/1.1 101")
    assert doctor(s.url + "/ws/echo")["cause"] == "limit.client_connections"
    held.close()
    r = wsgate(config(limits="handshake_rate = 1\nhandshake_burst = 1\n"))
    doctor(r.url + "/ws/echo")
    d = doctor(r.url + "/ws/echo")
    assert d["cause"] == "limit.rate" and "Retry-After" in fixes(d, "client")


def test_tcp_timeout_http_version_and_tls_protocol(peer, tmp_path):
    # A listener that never accepts, with a full accept queue: the kernel drops further SYNs.
    lst = socket.socket()
    lst.bind(("127.0.0.1", 0))
    lst.listen(0)
    port = lst.getsockname()[1]
    fillers = []
    for _ in range(3):
        s = socket.socket()
        s.setblocking(False)
        s.connect_ex(("127.0.0.1", port))
        fillers.append(s)
    try:
        out = subprocess.run([BIN, "doctor", f"ws://127.0.0.1:{port}/", "--json", "--timeout", "1"], capture_output=True, text=True, timeout=30)
        d = json.loads(out.stdout)
        assert d["cause"] in ("tcp.timeout",), d["steps"]
    finally:
        for s in fillers:
            s.close()
        lst.close()
    assert doctor(f"ws://127.0.0.1:{peer('status', 505)}/")["cause"] == "http.version"
    now = datetime.datetime.now(datetime.timezone.utc)
    c, k = make_cert(tmp_path, "cbc", now - datetime.timedelta(days=1), now + datetime.timedelta(days=30))
    d = doctor(f"wss://localhost:{peer('tls12cbc', c, k)}/", "--cacert", c)
    assert d["cause"] == "tls.protocol", d["steps"]


def test_human_output_and_usage_errors(wsgate):
    s = wsgate()
    out = subprocess.run([BIN, "doctor", s.url + "/nope"], capture_output=True, text=True)
    assert out.returncode == 1
    assert "✗ http" in out.stdout and "Cause:" in out.stdout and "Fix on the server side:" in out.stdout
    assert "\x1b[" not in out.stdout, "no colour when piped"
    assert "What a browser shows:" in out.stdout
    bad = subprocess.run([BIN, "doctor", "http://x/"], capture_output=True, text=True)
    assert bad.returncode == 2 and "ws://" in bad.stderr
    bad = subprocess.run([BIN, "doctor", "ws://x/", "--token-via", "carrier-pigeon"], capture_output=True, text=True)
    assert bad.returncode == 2


def test_chromium_devtools_endpoint_refusing_an_origin(tmp_path):
    import time
    import urllib.request

    from conftest import require_tool

    chromium = require_tool("chromium", "headless Chromium (Debian package chromium)")
    port = free_port()
    proc = subprocess.Popen(
        [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         f"--user-data-dir={tmp_path / 'profile'}", f"--remote-debugging-port={port}", "about:blank"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        ws_url = None
        for _ in range(100):
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/version", timeout=1) as r:
                    ws_url = json.load(r)["webSocketDebuggerUrl"]
                    break
            except OSError:
                time.sleep(0.1)
        assert ws_url, "Chromium's DevTools endpoint did not come up"
        d = doctor(ws_url, "--origin", "http://evil.test")
        assert d["cause"] == "origin.not_allowed" and d["server"]["software"] == "Chromium DevTools"
        assert "--remote-allow-origins=http://evil.test" in fixes(d, "server")
        assert doctor(ws_url)["ok"], "without an Origin, DevTools admits the client"
    finally:
        proc.kill()
        proc.wait()
