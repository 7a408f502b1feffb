"""The doctor against nginx (Debian's) as a WebSocket reverse proxy: done right, done wrong (no
Upgrade forwarding), with `deny`, with an Origin check returning 403, with `auth_request` returning 401,
and with a short idle timeout."""

import json
import subprocess

import pytest

from conftest import BIN, config, free_port, start_nginx, start_python
from test_doctor import doctor, fixes

NGINX_CONF = """
worker_processes 1;
events {{ worker_connections 64; }}
http {{
    access_log off;
    client_body_temp_path {d}/body; proxy_temp_path {d}/proxy; fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi; scgi_temp_path {d}/scgi;
    map $http_origin $bad_origin {{ default 1; "" 0; "https://app.test" 0; }}
    server {{
        listen 127.0.0.1:{port};
        location /right {{
            proxy_pass http://127.0.0.1:{ws}/ws/echo;
            proxy_http_version 1.1;
            proxy_set_header Upgrade $http_upgrade;
            proxy_set_header Connection "upgrade";
        }}
        location /wrong {{
            proxy_pass http://127.0.0.1:{py}/;
            proxy_http_version 1.1;
        }}
        location /denied {{
            deny all;
            proxy_pass http://127.0.0.1:{ws}/ws/echo;
        }}
        location /origin {{
            if ($bad_origin) {{ return 403; }}
            proxy_pass http://127.0.0.1:{ws}/ws/echo;
            proxy_http_version 1.1;
            proxy_set_header Upgrade $http_upgrade;
            proxy_set_header Connection "upgrade";
        }}
        location /auth {{
            auth_request /_check;
            proxy_pass http://127.0.0.1:{ws}/ws/echo;
            proxy_http_version 1.1;
            proxy_set_header Upgrade $http_upgrade;
            proxy_set_header Connection "upgrade";
        }}
        location = /_check {{
            internal;
            if ($http_authorization = "Bearer good") {{ return 204; }}
            return 401;
        }}
        location /idle {{
            proxy_pass http://127.0.0.1:{ws}/ws/echo;
            proxy_http_version 1.1;
            proxy_set_header Upgrade $http_upgrade;
            proxy_set_header Connection "upgrade";
            proxy_read_timeout 1s;
        }}
        location /hostless {{
            proxy_pass http://127.0.0.1:{same}/ws/echo;
            proxy_http_version 1.1;
            proxy_set_header Upgrade $http_upgrade;
            proxy_set_header Connection "upgrade";
        }}
        location /dead {{
            proxy_pass http://127.0.0.1:{dead}/;
            proxy_http_version 1.1;
            proxy_set_header Upgrade $http_upgrade;
            proxy_set_header Connection "upgrade";
        }}
        location / {{ return 404; }}
    }}
}}
"""


@pytest.fixture(scope="module")
def nginx(tmp_path_factory):
    d = tmp_path_factory.mktemp("nginx")
    from conftest import Wsgate

    # The backend behind nginx allows the page origin the nginx check lets through.
    routes = '[[route]]\npath = "/ws/echo"\nkind = "echo"\norigins = ["https://app.test"]\n'
    backend = Wsgate(config(routes=routes, limits='ping_interval = "5m"\nidle_timeout = "10m"\n'), d)
    py, py_port = start_python("ws_upstream.py", "echo", tmp_path=d)
    same = Wsgate(config(), d)  # default policy: same-origin, compared with the Host it receives
    proc, port = start_nginx(d, NGINX_CONF, ws=backend.port, py=py_port, dead=free_port(), same=same.port)
    yield f"ws://127.0.0.1:{port}"
    proc.terminate()
    proc.wait(10)
    py.kill()
    py.wait()
    backend.stop()
    same.stop()


def test_nginx_done_right(nginx):
    d = doctor(nginx + "/right")
    assert d["ok"], d["evidence"]


def test_nginx_without_upgrade_forwarding(nginx):
    d = doctor(nginx + "/wrong")
    assert d["cause"] in ("http.upgrade_required", "http.not_websocket"), d["evidence"]
    # The backend's own words come back through nginx: both are named, and the fix is nginx's.
    assert d["server"]["software"] == "Python websockets" and d["server"]["via"] == "nginx", d["server"]
    assert "proxy_set_header Upgrade $http_upgrade" in fixes(d, "server")
    assert any(f["software"] == "nginx" and "proxy_http_version 1.1" in f["text"] for f in d["fixes"]), d["fixes"]


def test_nginx_deny(nginx):
    d = doctor(nginx + "/denied", "--origin", "https://app.test")
    assert d["cause"] == "forbidden.unconditional"
    assert all(e["status"] == 403 for e in d["experiments"]) and d["experiments"]
    assert "deny" in fixes(d, "server")


def test_nginx_origin_check(nginx):
    d = doctor(nginx + "/origin", "--origin", "https://evil.test")
    assert d["cause"] == "origin.not_allowed"
    assert "$http_origin" in fixes(d, "server")
    assert doctor(nginx + "/origin", "--origin", "https://app.test")["ok"]


def test_nginx_auth_request(nginx):
    d = doctor(nginx + "/auth")
    assert d["cause"] == "auth.missing"
    d = doctor(nginx + "/auth", "--token", "good", "--token-via", "query:access_token")
    assert d["cause"] == "auth.missing", "the credential is in the wrong place"
    assert any("Authorization header" in e["change"] and e["status"] == 101 for e in d["experiments"])
    assert doctor(nginx + "/auth", "--token", "good")["ok"]
    assert doctor(nginx + "/auth", "--token", "bad")["cause"] == "auth.invalid"


def test_nginx_rewriting_host_before_a_same_origin_check(nginx):
    own = nginx.replace("ws://", "http://")
    d = doctor(nginx + "/hostless", "--origin", own)
    assert d["cause"] == "origin.not_allowed"
    assert "proxy_set_header Host $host" in fixes(d, "server")


def test_nginx_with_its_backend_down(nginx):
    d = doctor(nginx + "/dead")
    assert d["cause"] == "http.upstream" and d["server"]["software"] == "nginx"


def test_nginx_idle_timeout_is_seen_with_hold(nginx):
    out = subprocess.run([BIN, "doctor", nginx + "/idle", "--hold", "3", "--json"], capture_output=True, text=True, timeout=30)
    d = json.loads(out.stdout)
    assert d["cause"] == "idle.timeout", d["steps"]
    assert "proxy_read_timeout" in fixes(d, "server")
