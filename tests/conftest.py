"""Shared fixtures: start the real `wsgate` binary on OS-assigned loopback ports and talk to it."""

import base64
import json
import os
import re
import resource
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BIN = os.environ.get("WSGATE_BIN", str(ROOT / "target" / "debug" / "wsgate"))
NODE_MODULES = os.environ.get("WSGATE_NODE_MODULES", str(ROOT / "tests" / "node" / "node_modules"))
IN_CI = os.environ.get("CI") == "true"


def require_tool(path_or_name, why):
    """Fails (in CI) or skips (elsewhere) when a tool a test needs is missing."""
    found = os.path.exists(path_or_name) if os.sep in str(path_or_name) else shutil.which(path_or_name)
    if not found:
        msg = f"{path_or_name} is missing ({why}); scripts/test installs it"
        if IN_CI:
            pytest.fail(msg)
        pytest.skip(msg)
    return path_or_name


class Wsgate:
    """A running `wsgate serve` process with its bound addresses and its log."""

    def __init__(self, config_text, tmp_path, extra_args=(), expect_start=True, nofile=None, admin="127.0.0.1:0", env=None):
        """`nofile`: (soft, hard) open-files limits to start the server with; `admin`: the
        `--admin` argument (None: the file's); `env`: variables over the test environment (None
        removes one, e.g. WSGATE_LOG to let the file's level decide)."""
        self.tmp = tmp_path
        self.config_path = tmp_path / f"wsgate-{id(self)}.toml"
        self.config_path.write_text(config_text)
        self.log_path = tmp_path / f"wsgate-{id(self)}.log"
        self._log = open(self.log_path, "wb")
        require_tool(BIN, "build it with `cargo build`")
        self.proc = subprocess.Popen(
            [BIN, "serve", "--config", str(self.config_path), *(["--admin", admin] if admin else []), *extra_args],
            stdout=subprocess.PIPE,
            stderr=self._log,
            env={k: v for k, v in {**os.environ, "WSGATE_LOG": os.environ.get("WSGATE_TEST_LOG", "info"), **(env or {})}.items() if v is not None},
            preexec_fn=(lambda: resource.setrlimit(resource.RLIMIT_NOFILE, nofile)) if nofile else None,
        )
        self.urls = []
        self.admin = None
        self.banner = []
        if expect_start:
            self._read_banner()

    def _read_banner(self):
        deadline = time.time() + 20
        while time.time() < deadline:
            line = self.proc.stdout.readline().decode()
            if not line:
                raise RuntimeError(f"wsgate exited early ({self.proc.wait()}): {self.log()}")
            self.banner.append(line)
            m = re.match(r"listening (wss?://\S+)", line)
            if m:
                self.urls.append(m.group(1))
            m = re.match(r"admin (http://[^/\s]+)/", line)
            if m:
                self.admin = m.group(1)
                return
            if line.startswith("admin off"):
                return
        raise RuntimeError("wsgate did not print its addresses in time")

    @property
    def url(self):
        return self.urls[0]

    @property
    def port(self):
        return int(self.url.rsplit(":", 1)[1])

    def log(self):
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    def wait_log(self, *needles, timeout=10):
        """The log once every needle is in it: the server writes a line after the client saw the end.

        Bounded: returns the log as it is at the deadline so the caller's assertion names what is missing.
        """
        deadline = time.time() + timeout
        while time.time() < deadline:
            text = self.log()
            if all(n in text for n in needles):
                return text
            time.sleep(0.05)
        return self.log()

    def metrics(self):
        with urllib.request.urlopen(self.admin + "/metrics", timeout=5) as r:
            return r.read().decode()

    def metric(self, name, **labels):
        """The value of one sample, 0 when absent."""
        want = ",".join(f'{k}="{v}"' for k, v in labels.items())
        for line in self.metrics().splitlines():
            if line.startswith("#"):
                continue
            key, _, value = line.rpartition(" ")
            if key == name or key == f"{name}{{{want}}}":
                return float(value)
        return 0.0

    def wait_metric(self, name, value, timeout=10):
        """Waits until a sample has `value`; whether it did."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.metric(name) == value:
                return True
            time.sleep(0.05)
        return self.metric(name) == value

    def stop(self, sig=signal.SIGTERM, timeout=15):
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return self.proc.returncode


def config(routes=None, limits="", listener_extra="", explain=None, admin=True, logging="refusal_burst = 100000\n"):
    """A configuration on 127.0.0.1:0 with the given routes (TOML text). Tests look for specific
    log lines after many refusals from 127.0.0.1, so the log's storm limit is raised by default."""
    routes = routes or '[[route]]\npath = "/ws/echo"\nkind = "echo"\n\n[[route]]\npath = "/ws/chat/{room}"\nkind = "channel"\n'
    text = '[[listener]]\naddress = "127.0.0.1:0"\n'
    if explain:
        text += f'explain = "{explain}"\n'
    text += textwrap.dedent(listener_extra)
    if limits:
        text += "\n[limits]\n" + textwrap.dedent(limits)
    if logging:
        text += "\n[logging]\n" + textwrap.dedent(logging)
    text += "\n" + textwrap.dedent(routes)
    return text


@pytest.fixture
def wsgate(tmp_path):
    """Factory: `wsgate(config_text)` starts a server that is stopped after the test."""
    started = []

    def start(text=None, **kw):
        s = Wsgate(text or config(), tmp_path, **kw)
        started.append(s)
        return s

    yield start
    for s in started:
        s.stop(signal.SIGKILL if s.proc.poll() is None else signal.SIGTERM)


KEY = base64.b64encode(b"0123456789abcdef").decode()


def handshake(path="/ws/echo", host="127.0.0.1", headers=None, method="GET", version="HTTP/1.1", omit=()):
    """A raw opening handshake; `headers` is a list of (name, value) added after the defaults."""
    base = [
        ("Host", host),
        ("Upgrade", "websocket"),
        ("Connection", "Upgrade"),
        ("Sec-WebSocket-Key", KEY),
        ("Sec-WebSocket-Version", "13"),
    ]
    lines = [f"{method} {path} {version}"]
    for name, value in base:
        if name not in omit and not any(n.lower() == name.lower() for n, _ in (headers or []) if n != "Origin"):
            lines.append(f"{name}: {value}")
    for name, value in headers or []:
        lines.append(f"{name}: {value}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


class RawResponse:
    def __init__(self, status, headers, body, sock):
        self.status = status
        self.headers = headers  # lower-case name -> list of values
        self.body = body
        self.sock = sock

    def header(self, name):
        v = self.headers.get(name.lower())
        return v[0] if v else None

    def json(self):
        return json.loads(self.body)


def raw(port, data, timeout=5, keep_open=False, source=None):
    """Sends raw bytes and parses the HTTP response head (and body by Content-Length); `source`
    picks another loopback source address (127.0.0.2, ...)."""
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout, source_address=(source, 0) if source else None)
    s.sendall(data)
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = s.recv(65536)
        if not chunk:
            break
        buf += chunk
    head, _, rest = buf.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        k, _, v = line.partition(":")
        headers.setdefault(k.strip().lower(), []).append(v.strip())
    length = int(headers.get("content-length", ["0"])[0])
    while len(rest) < length:
        chunk = s.recv(65536)
        if not chunk:
            break
        rest += chunk
    if not keep_open:
        s.close()
    return RawResponse(status, headers, rest[:length] if length else rest, s)


def frame(opcode, payload, fin=True, mask=b"\x01\x02\x03\x04"):
    """A masked client frame."""
    b0 = (0x80 if fin else 0) | opcode
    n = len(payload)
    if n < 126:
        head = bytes([b0, 0x80 | n])
    elif n < 65536:
        head = bytes([b0, 0x80 | 126]) + n.to_bytes(2, "big")
    else:
        head = bytes([b0, 0x80 | 127]) + n.to_bytes(8, "big")
    masked = bytes(c ^ mask[i % 4] for i, c in enumerate(payload))
    return head + mask + masked


def read_frame(sock):
    """Reads one unmasked server frame: (opcode, payload)."""
    b0, payload = read_raw_frame(sock)
    return b0 & 0x0F, payload


def read_raw_frame(sock):
    """Reads one unmasked server frame: (its first byte, with FIN and RSV1, and its payload)."""
    def exact(n):
        out = b""
        while len(out) < n:
            c = sock.recv(n - len(out))
            if not c:
                raise ConnectionError("closed")
            out += c
        return out
    b0, b1 = exact(2)
    n = b1 & 0x7F
    if n == 126:
        n = int.from_bytes(exact(2), "big")
    elif n == 127:
        n = int.from_bytes(exact(8), "big")
    return b0, exact(n)


def run_node(script, *args, timeout=30):
    """Runs a Node script from tests/node with `ws` available; returns stdout."""
    node = require_tool("node", "Node.js runs the `ws` client tests")
    require_tool(os.path.join(NODE_MODULES, "ws"), "npm ci in tests/node")
    out = subprocess.run(
        [node, str(ROOT / "tests" / "node" / script), *map(str, args)],
        capture_output=True,
        timeout=timeout,
        env={**os.environ, "NODE_PATH": NODE_MODULES},
    )
    if out.returncode != 0:
        raise AssertionError(f"node {script} failed ({out.returncode}): {out.stdout.decode()} {out.stderr.decode()}")
    return out.stdout.decode()


# Message sizes across every length encoding of a frame header (7-bit, 16-bit, 64-bit).
SIZES = [1, 125, 126, 65535, 65536, 1 << 20]


class Prefixed:
    """A socket whose first bytes were already received (behind the HTTP response head)."""

    def __init__(self, head, sock):
        self.head, self.sock = head, sock

    def recv(self, n):
        if self.head:
            out, self.head = self.head[:n], self.head[n:]
            return out
        return self.sock.recv(n)


def run(coro, timeout=30):
    """Runs a client coroutine to completion, bounded so a hung peer fails the test instead of CI."""
    import asyncio

    return asyncio.run(asyncio.wait_for(coro, timeout))


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def python_peer(tmp_path):
    """Factory: `python_peer("script.py", *args)` starts a helper from tests/peers, returns its port,
    and stops it after the test."""
    procs = []

    def start(script, *args):
        proc, port = start_python(script, *args, tmp_path=tmp_path)
        procs.append(proc)
        return port

    yield start
    for p in procs:
        p.kill()
        p.wait()


def start_python(script, *args, tmp_path):
    """Starts a helper Python server from tests/peers and returns (proc, port) from its first line."""
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "tests" / "peers" / script), *map(str, args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    line = proc.stdout.readline().decode()
    m = re.search(r"port (\d+)", line)
    if not m:
        proc.kill()
        raise RuntimeError(f"{script} did not start: {line}")
    return proc, int(m.group(1))


def start_nginx(d, conf, **fmt):
    """Starts Debian's nginx unprivileged in the foreground on a free loopback port with `conf`
    (formatted with d=the directory, port=the port, and `fmt`); returns (process, port). Fails in
    CI and skips elsewhere when nginx is missing."""
    exe = shutil.which("nginx") or ("/usr/sbin/nginx" if os.path.exists("/usr/sbin/nginx") else None)
    if not exe:
        msg = "nginx is missing (Debian package nginx); scripts/test installs it"
        if IN_CI:
            pytest.fail(msg)
        pytest.skip(msg)
    port = free_port()
    (d / "nginx.conf").write_text(conf.format(d=d, port=port, **fmt))
    # Its own session, so a test can stop the master and its workers together (os.killpg).
    proc = subprocess.Popen(
        [exe, "-p", str(d), "-c", str(d / "nginx.conf"), "-g", f"daemon off; pid {d}/nginx.pid; error_log stderr;"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True,
    )
    for _ in range(200):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return proc, port
        except OSError:
            if proc.poll() is not None:
                raise RuntimeError(f"nginx did not start: {proc.stderr.read().decode()}")
            time.sleep(0.05)
    proc.kill()
    raise RuntimeError("nginx did not listen in time")
