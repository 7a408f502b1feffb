"""The doctor against the frameworks people run, each started here on loopback and misconfigured the
way its users misconfigure it: Tornado's same-host origin check (alone and behind nginx, which replaces
its Server header), python-socketio's cors_allowed_origins on uvicorn, Starlette on uvicorn reading the
token from ?token=, Django Channels' AllowedHostsOriginValidator on daphne, Python websockets with a
subprotocol list, Node ws with a verifyClient origin allowlist, Node Socket.IO with an allowRequest
origin check, HAProxy's deny rule and Apache's Require rule and ProxyPass (with Tornado behind them),
and wss:// pointed at plain ports.
Each asserts the cause, the recognised server and the named setting; recorded answers of servers that
cannot run here are unit tests in crates/wsgate-doctor/src/servers.rs."""

import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import pytest

from conftest import NODE_MODULES, ROOT, free_port, require_tool, start_nginx
from test_doctor import doctor

PEER = ROOT / "tests" / "peers" / "frameworks.py"


def wait_port(port, proc, what):
    deadline = time.time() + 30
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            if proc.poll() is not None:
                raise RuntimeError(f"{what} exited: {proc.stdout.read().decode(errors='replace')[-2000:]}")
            time.sleep(0.1)
    raise RuntimeError(f"{what} did not listen on {port}")


@pytest.fixture(scope="module")
def frameworks():
    """Starts every framework once for the module: name -> port."""
    procs, ports = [], {}
    for name in ("tornado", "socketio", "starlette", "channels", "pyws"):
        port = free_port()
        p = subprocess.Popen([sys.executable, str(PEER), name, str(port)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=str(ROOT / "tests" / "peers"))
        procs.append((p, port, name))
        ports[name] = port
    require_tool("node", "Node.js runs the ws server")
    port = free_port()
    p = subprocess.Popen(["node", str(ROOT / "tests/node/ws_server.js"), str(port)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                         env={**os.environ, "NODE_PATH": NODE_MODULES})
    procs.append((p, port, "node ws"))
    ports["nodews"] = port
    port = free_port()
    p = subprocess.Popen(["node", str(ROOT / "tests/node/socketio_server.js"), str(port)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                         env={**os.environ, "NODE_PATH": NODE_MODULES})
    procs.append((p, port, "node socket.io"))
    ports["socketio-node"] = port
    try:
        for p, port, name in procs:
            wait_port(port, p, name)
        yield ports
    finally:
        for p, _, _ in procs:
            p.kill()
            p.wait()


def start_proxy(tool, package, conf, text, args):
    """Starts Debian's `tool` in the foreground with `conf` (written from `text`, whose {port} is a
    free loopback port), in a session of its own; returns (process, port)."""
    exe = require_tool(shutil.which(tool) or f"/usr/sbin/{tool}", f"Debian package {package}")
    port = free_port()
    conf.write_text(text.format(port=port))
    proc = subprocess.Popen([exe, *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    wait_port(port, proc, tool)
    return proc, port


def rule_then_tornado(port, proxy, setting):
    """The proxy's own refusal at /blocked names the proxy and its setting; an Origin refusal from
    Tornado behind it at /ws names Tornado."""
    d = doctor(f"ws://127.0.0.1:{port}/blocked")
    assert d["cause"] == "forbidden.unconditional", d["evidence"]
    assert d["server"]["software"] == proxy and d["server"]["confidence"] == "high", d["server"]
    assert setting in server_fixes(d, proxy)
    d = doctor(f"ws://127.0.0.1:{port}/ws", "--origin", "https://app.example")
    assert d["cause"] == "origin.not_allowed" and d["server"]["software"] == "Tornado", d["server"]


def stop_group(proc):
    """Stops a server and the workers it forked (started in a session of its own)."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


def server_fixes(d, software):
    return " ".join(f["text"] for f in d["fixes"] if f["side"] == "server" and f["software"] == software)


def no_wsgate_advice(d):
    """wsgate's configuration is advised to wsgate only."""
    for f in d["fixes"]:
        assert "route's" not in f["text"] and "origins = [" not in f["text"] and "wsgate" not in f["text"], f


def test_tornado_refuses_another_origin(frameworks):
    d = doctor(f"ws://127.0.0.1:{frameworks['tornado']}/ws", "--origin", "https://app.example")
    assert d["cause"] == "origin.not_allowed", d["evidence"]
    assert d["server"]["software"] == "Tornado" and d["server"]["confidence"] == "high", d["server"]
    assert "check_origin" in server_fixes(d, "Tornado")
    assert any("Cross origin websockets not allowed" in e for e in d["evidence"]), "the refusal's text is shown"
    no_wsgate_advice(d)


def test_socketio_python_refuses_an_origin_outside_cors_allowed_origins(frameworks):
    d = doctor(f"ws://127.0.0.1:{frameworks['socketio']}/socket.io/?EIO=4&transport=websocket", "--origin", "https://evil.example")
    assert d["cause"] == "origin.not_allowed", d["evidence"]
    assert d["server"]["software"] == "Socket.IO (Python)", d["server"]
    assert "cors_allowed_origins" in server_fixes(d, "Socket.IO (Python)")
    no_wsgate_advice(d)


def test_socketio_node_refuses_in_allow_request_with_a_400_forbidden(frameworks):
    d = doctor(f"ws://127.0.0.1:{frameworks['socketio-node']}/socket.io/?EIO=4&transport=websocket", "--origin", "https://evil.example")
    # allowRequest admits https://app.example only, which no variation sends; engine.io says so
    # with a 400 whose text is "Forbidden".
    assert d["cause"] == "forbidden.unconditional", d["evidence"]
    assert d["server"]["software"] == "Socket.IO (Node)" and d["server"]["confidence"] == "high", d["server"]
    assert "allowRequest" in server_fixes(d, "Socket.IO (Node)")
    no_wsgate_advice(d)


def test_starlette_reads_the_token_from_the_query_parameter_token(frameworks):
    d = doctor(f"ws://127.0.0.1:{frameworks['starlette']}/ws", "--token", "secret-token")
    assert d["cause"] == "auth.missing", d["evidence"]
    assert any(e["change"] == "credential in the query parameter token" and e["status"] == 101 for e in d["experiments"]), d["experiments"]
    assert len(d["experiments"]) <= 8
    # The empty 403 looks like uvicorn; the plain GET the doctor sent to identify it confirms it.
    assert d["server"]["software"] == "uvicorn (Starlette/FastAPI)" and d["server"]["confidence"] == "high", d["server"]
    assert "websocket.query_params" in server_fixes(d, "uvicorn (Starlette/FastAPI)")
    client = [f["text"] for f in d["fixes"] if f["side"] == "client"]
    assert "query parameter token" in client[0], client
    no_wsgate_advice(d)


def test_django_channels_refuses_an_origin_outside_allowed_hosts(frameworks):
    d = doctor(f"ws://127.0.0.1:{frameworks['channels']}/ws/", "--origin", "https://www.example.com")
    assert d["cause"] == "origin.not_allowed", d["evidence"]
    assert d["server"]["software"] == "daphne (Django Channels)", d["server"]
    assert any("Access denied" in e for e in d["server"]["evidence"]), d["server"]["evidence"]
    assert '"www.example.com"' in server_fixes(d, "daphne (Django Channels)") and "ALLOWED_HOSTS" in server_fixes(d, "daphne (Django Channels)")
    no_wsgate_advice(d)


def test_python_websockets_states_the_subprotocol_it_wants(frameworks):
    url = f"ws://127.0.0.1:{frameworks['pyws']}/"
    d = doctor(url, "--origin", "https://app.example", "--subprotocol", "other.v1")
    assert d["cause"] == "subprotocol.unsupported", d["evidence"]
    assert d["server"]["software"] == "Python websockets"
    assert "subprotocols=" in server_fixes(d, "Python websockets")
    # Without variations the 400's own text decides, never "forbidden".
    d = doctor(url, "--origin", "https://app.example", "--subprotocol", "other.v1", "--no-experiments")
    assert d["cause"] == "subprotocol.unsupported", d["evidence"]
    d = doctor(url, "--origin", "https://evil.example")
    assert d["cause"] == "origin.not_allowed" and "origins=" in server_fixes(d, "Python websockets")


def test_node_ws_verify_client_answers_401_for_any_refusal(frameworks):
    d = doctor(f"ws://127.0.0.1:{frameworks['nodews']}/", "--origin", "https://evil.example")
    # No variation the doctor can make is admitted (the allowlist has https://app.example only):
    # ws's 401 without a challenge says no more than a 403.
    assert d["cause"] == "forbidden.unconditional", d["evidence"]
    assert d["server"]["software"] == "Node ws", d["server"]
    assert "verifyClient" in server_fixes(d, "Node ws")
    # handleProtocols returning false makes ws accept without a subprotocol, which browsers refuse.
    d = doctor(f"ws://127.0.0.1:{frameworks['nodews']}/", "--origin", "https://app.example", "--subprotocol", "other.v1")
    assert d["cause"] == "subprotocol.not_echoed", d["evidence"]
    assert doctor(f"ws://127.0.0.1:{frameworks['nodews']}/", "--origin", "https://app.example", "--subprotocol", "chat.v1")["ok"]


@pytest.mark.parametrize("name, path, software", [
    ("pyws", "/", "Python websockets"),
    ("starlette", "/ws", "uvicorn (Starlette/FastAPI)"),
    ("nodews", "/", None),
])
def test_wss_pointed_at_a_plain_port_is_not_tls(frameworks, name, path, software):
    d = doctor(f"wss://127.0.0.1:{frameworks[name]}{path}")
    assert d["cause"] == "tls.not_tls", d["evidence"]
    assert any("plain HTTP request to the same port got HTTP" in e for e in d["evidence"]), d["evidence"]
    if software:
        assert d["server"]["software"] == software, d["server"]
        assert "TLS" in server_fixes(d, software)


NGINX_CONF = """
worker_processes 1;
events {{ worker_connections 64; }}
http {{
    access_log off;
    client_body_temp_path {d}/body; proxy_temp_path {d}/proxy; fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi; scgi_temp_path {d}/scgi;
    server {{
        listen 127.0.0.1:{port};
        location /ws {{
            proxy_pass http://127.0.0.1:{tornado}/ws;
            proxy_http_version 1.1;
            proxy_set_header Upgrade $http_upgrade;
            proxy_set_header Connection "upgrade";
            proxy_set_header Host $host;
        }}
        location / {{ return 404; }}
    }}
}}
"""


def test_tornado_behind_nginx_is_named_with_nginx_in_front(frameworks, tmp_path):
    proc, port = start_nginx(tmp_path, NGINX_CONF, tornado=frameworks["tornado"])
    try:
        d = doctor(f"ws://127.0.0.1:{port}/ws", "--origin", "https://app.example")
        assert d["cause"] == "origin.not_allowed", d["evidence"]
        # nginx replaced Tornado's Server header; Tornado's own words still name it.
        assert d["server"]["software"] == "Tornado" and d["server"]["via"] == "nginx", d["server"]
        assert d["server"]["header"].startswith("nginx")
        assert "check_origin" in server_fixes(d, "Tornado")
    finally:
        stop_group(proc)


HAPROXY_CONF = """
global
    maxconn 64
defaults
    mode http
    timeout connect 2s
    timeout client 10s
    timeout server 10s
    timeout tunnel 1h
frontend fe
    bind 127.0.0.1:{port}
    http-request deny if {{ path_beg /blocked }}
    default_backend be
backend be
    server tornado 127.0.0.1:{tornado}
"""


def test_haproxy_deny_rule_and_tornado_behind_it(frameworks, tmp_path):
    conf = tmp_path / "haproxy.cfg"
    text = HAPROXY_CONF.replace("{tornado}", str(frameworks["tornado"]))
    proc, port = start_proxy("haproxy", "haproxy", conf, text, ["-f", str(conf), "-db"])
    try:
        rule_then_tornado(port, "HAProxy", "http-request deny")
    finally:
        stop_group(proc)


APACHE_CONF = """
ServerRoot /usr/lib/apache2
PidFile {d}/httpd.pid
ErrorLog {d}/error.log
LoadModule mpm_event_module modules/mod_mpm_event.so
LoadModule authz_core_module modules/mod_authz_core.so
LoadModule authz_host_module modules/mod_authz_host.so
LoadModule proxy_module modules/mod_proxy.so
LoadModule proxy_http_module modules/mod_proxy_http.so
LoadModule proxy_wstunnel_module modules/mod_proxy_wstunnel.so
User nobody
Group nogroup
Listen 127.0.0.1:{port}
ServerName localhost
<Location /blocked>
    Require all denied
</Location>
ProxyPass /no-upgrade http://127.0.0.1:{tornado}/ws
ProxyPass /ws ws://127.0.0.1:{tornado}/ws
"""


def test_apache_require_rule_and_a_proxy_pass_without_upgrade(frameworks, tmp_path):
    conf = tmp_path / "httpd.conf"
    text = APACHE_CONF.replace("{d}", str(tmp_path)).replace("{tornado}", str(frameworks["tornado"]))
    # apache2 forks workers: stop_group stops them with it.
    proc, port = start_proxy("apache2", "apache2", conf, text, ["-f", str(conf), "-DFOREGROUND"])
    try:
        rule_then_tornado(port, "Apache", "Require")
        # ProxyPass to http:// without upgrade=websocket: Tornado sees a plain request.
        d = doctor(f"ws://127.0.0.1:{port}/no-upgrade")
        assert d["cause"] == "http.upgrade_required", d["evidence"]
        assert server_fixes(d, "the proxy in front"), d["fixes"]
    finally:
        stop_group(proc)
