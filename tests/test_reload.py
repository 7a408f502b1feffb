"""Reloading the configuration of a running server (SIGHUP, or `wsgate reload --pid-file`): open
WebSockets keep running untouched while new handshakes follow the new origins and routes at once, a
listener added opens and one removed stops accepting, and a broken file is logged and not used."""

import asyncio
import os
import re
import signal
import socket
import subprocess
import time

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from conftest import BIN, config, run

LISTENER = '[[listener]]\naddress = "127.0.0.1:0"\n'


def routes(origin, extra):
    return f"""
[[route]]
path = "/ws/echo"
kind = "echo"
origins = ["{origin}"]
{extra}
"""


def text(origin, extra, listeners=1):
    body = config(routes=routes(origin, extra))
    # config() writes one listener; more are added before the routes.
    return body.replace("[[route]]", LISTENER * (listeners - 1) + "[[route]]", 1)


OLD = '[[route]]\npath = "/ws/old"\nkind = "echo"\n'
NEW = '[[route]]\npath = "/ws/new"\nkind = "echo"\n'


async def status(url, origin=None):
    try:
        async with connect(url, origin=origin) as ws:
            await ws.send("hi")
            assert await ws.recv() == "hi"
            return 101, None
    except InvalidStatus as e:
        return e.response.status_code, e.response.headers.get("wsgate-reason")


def reloaded(s, count):
    """Waits for the count-th reload line of the log; returns the log."""
    deadline = time.time() + 10
    while time.time() < deadline:
        log = s.log()
        if log.count("configuration reloaded") + log.count("configuration reload failed") >= count:
            return log
        time.sleep(0.05)
    raise AssertionError(f"no reload logged: {s.log()[-2000:]}")


def test_reload_keeps_open_connections_and_applies_origins_routes_and_listeners(wsgate, tmp_path):
    pid_file = tmp_path / "wsgate.pid"
    s = wsgate(text("http://a.test", OLD), extra_args=["--pid-file", str(pid_file)])
    cfg = s.config_path  # the file the server reads, rewritten below
    url = s.url

    async def go():
        held = await connect(url + "/ws/echo", origin="http://a.test")
        assert await status(url + "/ws/old") == (101, None)

        # New origins, /ws/old removed, /ws/new and a second listener added.
        cfg.write_text(text("http://b.test", NEW, listeners=2))
        out = subprocess.run([BIN, "reload", "--pid-file", str(pid_file)], capture_output=True, text=True, timeout=10)
        assert out.returncode == 0, out.stderr
        log = reloaded(s, 1)
        assert "configuration reloaded" in log, log
        assert 'routes added ["/ws/new"]' in log and 'routes removed ["/ws/old"]' in log
        second = re.search(r"now listening on (ws://127\.0\.0\.1:\d+)", log).group(1)

        # The connection opened before the reload is untouched.
        await held.send("still here")
        assert await held.recv() == "still here"
        # New handshakes follow the new configuration.
        assert await status(url + "/ws/echo", "http://a.test") == (403, "origin.not_allowed")
        assert await status(url + "/ws/echo", "http://b.test") == (101, None)
        assert (await status(url + "/ws/old"))[0] == 404
        assert await status(url + "/ws/new") == (101, None)
        on_second = await connect(second + "/ws/new")

        # Back to one listener, with SIGHUP this time: the second stops accepting, its open
        # connection keeps running.
        cfg.write_text(text("http://b.test", NEW, listeners=1))
        s.proc.send_signal(signal.SIGHUP)
        log = reloaded(s, 2)
        assert "listeners removed" in log, log
        port = int(second.rsplit(":", 1)[1])
        deadline = time.time() + 5
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
            except OSError:
                break
            assert time.time() < deadline, "the removed listener still accepts"
            await asyncio.sleep(0.1)
        await on_second.send("kept")
        assert await on_second.recv() == "kept"

        # A broken file: logged with the key to fix, the previous configuration stays.
        cfg.write_text(text("http://c.test", NEW).replace('kind = "echo"', 'kind = "mirror"', 1))
        s.proc.send_signal(signal.SIGHUP)
        log = reloaded(s, 3)
        assert "configuration reload failed" in log and "route[0].kind" in log, log
        assert await status(url + "/ws/echo", "http://b.test") == (101, None)
        await held.send("after all")
        assert await held.recv() == "after all"
        await held.close()
        await on_second.close()

    run(go(), timeout=60)
    assert s.metric("wsgate_config_reloads_total", result="ok") == 2
    assert s.metric("wsgate_config_reloads_total", result="error") == 1
    assert s.proc.poll() is None


def test_reload_without_a_pid_file_says_how(tmp_path):
    out = subprocess.run([BIN, "reload", "--pid-file", str(tmp_path / "none.pid")], capture_output=True, text=True,
                         timeout=10)
    assert out.returncode != 0 and "--pid-file" in out.stderr, out.stderr


def test_reload_changes_the_log_level(wsgate):
    """Without WSGATE_LOG (which fixes the level), the file's [logging] level follows a reload."""
    quiet = config(logging='level = "warn"\nrefusal_burst = 100000\n')
    loud = config(logging='level = "info"\nrefusal_burst = 100000\n')
    s = wsgate(quiet, env={"WSGATE_LOG": None})

    def refusal_lines():
        assert run(status(s.url + "/ws/nowhere"))[1] == "route.not_found"
        time.sleep(0.3)
        return s.log().count("handshake refused")

    def reload_to(text, count):
        s.config_path.write_text(text)
        s.proc.send_signal(signal.SIGHUP)
        deadline = time.time() + 10
        while s.metric("wsgate_config_reloads_total", result="ok") < count:
            assert time.time() < deadline, s.log()[-2000:]
            time.sleep(0.05)

    assert refusal_lines() == 0, "warn: refusals (info) are not logged"
    reload_to(loud, 1)
    assert refusal_lines() == 1, "info after the reload"
    reload_to(quiet, 2)
    assert refusal_lines() == 1, "warn again"
