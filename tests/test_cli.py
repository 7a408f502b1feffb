"""The command line: `wsgate check` (errors that name the key path, what it prints), the configuration
from WSGATE_CONFIG, the embedded default's banner, and the open-files limit at start."""

import subprocess

import pytest

from conftest import BIN, config


@pytest.mark.parametrize(
    "mutation,key",
    [
        (lambda t: t.replace('address = "127.0.0.1:0"', 'address = "localhost:80"'), "listener[0].address"),
        (lambda t: t.replace('kind = "echo"', 'kind = "echo"\ncolour = "blue"'), "route[0].colour"),
        (lambda t: t.replace('kind = "echo"', 'kind = "mirror"'), "route[0].kind"),
        (lambda t: t + '\n[limits]\nidle_timeout = "soon"\n', "limits.idle_timeout"),
        (lambda t: t.replace('kind = "echo"', 'kind = "proxy"'), "route[0].upstream"),
    ],
)
def test_check_names_the_key_path_and_exits_nonzero(tmp_path, mutation, key):
    p = tmp_path / "broken.toml"
    p.write_text(mutation(config()))
    out = subprocess.run([BIN, "check", "--config", str(p)], capture_output=True, text=True)
    assert out.returncode != 0
    assert str(p) in out.stderr and f"`{key}`" in out.stderr, out.stderr
    serve = subprocess.run([BIN, "serve", "--config", str(p)], capture_output=True, text=True, timeout=10)
    assert serve.returncode != 0 and f"`{key}`" in serve.stderr


def test_check_prints_what_it_would_do(tmp_path):
    p = tmp_path / "ok.toml"
    p.write_text(config())
    out = subprocess.run([BIN, "check", "--config", str(p)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "route[0] /ws/echo -> echo" in out.stdout and "route[1] /ws/chat/{room} -> channel" in out.stdout


def test_config_from_environment_variable(tmp_path):
    import os

    p = tmp_path / "env.toml"
    p.write_text(config().replace('kind = "echo"', 'kind = "mirror"'))
    out = subprocess.run([BIN, "check"], capture_output=True, text=True, env={**os.environ, "WSGATE_CONFIG": str(p)})
    assert out.returncode != 0 and "route[0].kind" in out.stderr


def test_embedded_default_serves_and_prints_what_to_try():
    proc = subprocess.Popen(
        [BIN, "serve", "--listen", "127.0.0.1:0", "--admin", "off"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        text = "".join(proc.stdout.readline() for _ in range(7))
        assert "config: <embedded default>" in text
        assert "listening ws://127.0.0.1:" in text and "/ws/echo" in text and "/ws/chat/lobby" in text
        assert "try: python3 -m websockets ws://127.0.0.1:" in text
    finally:
        proc.terminate()
        assert proc.wait(10) == 0


def test_open_files_limit_is_raised_to_the_hard_limit_or_named_when_too_low(wsgate):
    # A soft limit below the hard one (systemd starts services at 1,024): raised, and said so.
    s = wsgate(nofile=(256, 4096))
    log = s.wait_log("raised the open-files limit")
    assert "from=256" in log and "to=4096" in log
    # A hard limit that cannot hold limits.max_connections: the operator is told what to change.
    s = wsgate(config(limits="max_connections = 10000\n"), nofile=(512, 512))
    line = next(l for l in s.wait_log("open-files limit is below").splitlines() if "below" in l)
    assert "limit=512" in line and "max_connections=10000" in line and "LimitNOFILE" in line
