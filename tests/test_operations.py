"""Running wsgate as operators do: SIGHUP (`systemctl reload`) never ends a server or its connections
(what a reload changes is in test_reload.py),
shell completions and man pages generated from the CLI definition, and the systemd unit in deploy/ passes
`systemd-analyze verify`."""

import signal
import subprocess
import time

from websockets.asyncio.client import connect

from conftest import BIN, ROOT, config, require_tool, run


def test_sighup_keeps_a_server_without_tls_and_its_connections(wsgate):
    s = wsgate(config())

    async def go():
        async with connect(s.url + "/ws/echo") as ws:
            await ws.send("before")
            assert await ws.recv() == "before"
            s.proc.send_signal(signal.SIGHUP)
            time.sleep(0.5)
            assert s.proc.poll() is None, "SIGHUP ended the server"
            await ws.send("after")
            assert await ws.recv() == "after"
        async with connect(s.url + "/ws/echo") as ws:
            await ws.send("new")
            assert await ws.recv() == "new"

    run(go())
    assert "SIGHUP" in s.wait_log("SIGHUP", timeout=5)


def test_shell_completions_come_from_the_cli_definition():
    bash = require_tool("bash", "checks the bash completion script")
    for shell in ("bash", "zsh", "fish"):
        out = subprocess.run([BIN, "completions", shell], capture_output=True, text=True, timeout=30)
        assert out.returncode == 0 and "doctor" in out.stdout and "serve" in out.stdout, (shell, out.stderr)
        if shell == "bash":
            check = subprocess.run([bash, "-n"], input=out.stdout, capture_output=True, text=True, timeout=30)
            assert check.returncode == 0, check.stderr
    out = subprocess.run([BIN, "completions", "tcsh"], capture_output=True, text=True, timeout=30)
    assert out.returncode != 0 and "bash" in out.stderr


def test_man_pages_render_and_the_systemd_unit_verifies(tmp_path):
    man = require_tool("man", "renders the man pages")
    analyze = require_tool("systemd-analyze", "verifies deploy/wsgate.service")
    pages = tmp_path / "man" / "man1"
    pages.mkdir(parents=True)
    out = subprocess.run([BIN, "man", str(pages)], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    names = sorted(p.name for p in pages.iterdir())
    assert "wsgate.1" in names and "wsgate-serve.1" in names and "wsgate-doctor.1" in names, names
    shown = subprocess.run([man, "-l", str(pages / "wsgate-serve.1")], capture_output=True, text=True, timeout=30,
                           env={"MANWIDTH": "100", "PATH": "/usr/bin:/bin"})
    assert shown.returncode == 0 and "--config" in shown.stdout, shown.stdout + shown.stderr
    # The unit as shipped, pointed at this build's binary; its Documentation= pages are the ones above.
    unit = (ROOT / "deploy" / "wsgate.service").read_text().replace("/usr/local/bin/wsgate", BIN)
    assert "ExecReload=/bin/kill -HUP $MAINPID" in unit and "LimitNOFILE=" in unit
    (tmp_path / "wsgate.service").write_text(unit)
    verify = subprocess.run([analyze, "verify", str(tmp_path / "wsgate.service")], capture_output=True, text=True,
                            timeout=60, env={"MANPATH": str(tmp_path / "man"), "PATH": "/usr/bin:/bin"})
    assert verify.returncode == 0, verify.stdout + verify.stderr
