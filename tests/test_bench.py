"""A smoke run of every benchmark mode (tiny counts, a few seconds), so the harness never rots.
It asserts that every mode produced numbers for every server, never how fast anything was."""

import json
import os
import subprocess

from conftest import NODE_MODULES, ROOT, require_tool

BENCH = os.environ.get("WSGATE_BENCH_BIN", str(ROOT / "target" / "debug" / "wsgate-bench"))


def test_benchmark_smoke_run(tmp_path):
    require_tool(BENCH, "build it with `cargo build -p wsgate-bench`")
    # Bun (uWebSockets inside) is the pub/sub and echo baseline; `npm ci` in tests/node installs it.
    require_tool(os.path.join(NODE_MODULES, "@oven/bun-linux-x64", "bin", "bun"), "npm ci in tests/node (Bun)")
    require_tool("redis-server", "Debian's redis-server, for the cross-node fan-out")
    wsgate = os.environ.get("WSGATE_BIN", str(ROOT / "target" / "debug" / "wsgate"))
    out = subprocess.run([BENCH, "run", "--smoke", "--wsgate", wsgate, "--out", str(tmp_path)], capture_output=True, text=True, timeout=300,
                         env={**os.environ, "WSGATE_NODE_MODULES": NODE_MODULES})
    assert out.returncode == 0, out.stderr
    doc = json.loads((tmp_path / "results.json").read_text())
    servers = {"wsgate", "fastwebsockets", "tungstenite", "bun"}
    cases = {r["case"] for r in doc["echo"]}
    assert len(cases) == 6
    for case in cases:
        rows = [r for r in doc["echo"] if r["case"] == case]
        assert {r["server"] for r in rows} == servers, case
        assert all(r["msgs_per_sec"] > 0 and r["p99_us"] > 0 for r in rows)
    assert doc["handshake"]["with_policy_per_sec"] > 0 and doc["handshake"]["without_policy_per_sec"] > 0
    assert {r["server"] for r in doc["fanout"]} == {"wsgate", "bun"}
    assert all(r["deliveries_per_sec"] > 0 and r["server_cpu_us_per_delivery"] > 0 for r in doc["fanout"])
    assert {r["case"] for r in doc["fanout"]} == {"1 room × 5, 20 B", "4 rooms × 3, 2 publishers, 20 B"}
    assert {(r["case"], r["setup"]) for r in doc["cluster"]} == {
        (c, s) for c in ("1 room × 6, 20 B", "4 rooms × 4, 20 B") for s in ("one node", "two nodes + Redis")}
    assert all(r["deliveries_per_sec"] > 0 and r["server_cpu_us_per_delivery"] > 0 for r in doc["cluster"])
    assert all(r["p50_us_node_b"] > 0 for r in doc["cluster"] if r["setup"] != "one node")
    assert {r["server"] for r in doc["idle"]} == servers | {
        "wsgate (room members)", "wsgate (deflate, stateless)", "wsgate (deflate, contextual)", "yawc (deflate)"}
    compression = {(r["case"], r["server"]) for r in doc["compression"]}
    assert compression == {(f"4 × {k} KiB JSON text", s) for k in (1, 16) for s in (
        "wsgate, deflate (stateless)", "wsgate, deflate (contextual)", "wsgate, not compressed", "yawc, deflate")}
    assert all(r["msgs_per_sec"] > 0 and r["wire_bytes_per_msg"] > 0 for r in doc["compression"])
    assert "### Compression ratios (same run)" in (tmp_path / "results.md").read_text()
    assert {r["proxy"] for r in doc["proxy"]} == {"wsgate", "nginx"}
    assert all(r["msgs_per_sec"] > 0 for r in doc["proxy"])
    assert {r["server"] for r in doc["callgrind"]["echo"]} == {"wsgate", "fastwebsockets", "tungstenite"}
    assert all(r["instructions_per_message"] > 0 for r in doc["callgrind"]["echo"])
    assert doc["callgrind"]["fanout"]["instructions_per_delivery"] > 0
    md = (tmp_path / "results.md").read_text()
    assert "### Ratios (same run)" in md and "### Fan-out ratios (same run)" in md
    assert "### Fan-out across nodes, ratios (same run)" in md


def test_soak_smoke_run(tmp_path):
    """2,000 connections over echo, channel and proxy routes for 20 s with churn: the soak exits 0
    only when its figures are flat, nothing failed and no descriptor was left behind."""
    require_tool(BENCH, "build it with `cargo build -p wsgate-bench`")
    wsgate = os.environ.get("WSGATE_BIN", str(ROOT / "target" / "debug" / "wsgate"))
    out = subprocess.run([BENCH, "soak", "--smoke", "--wsgate", wsgate, "--out", str(tmp_path)],
                         capture_output=True, text=True, timeout=240)
    assert out.returncode == 0, out.stdout + out.stderr
    doc = json.loads((tmp_path / "soak.json").read_text())
    assert doc["connections"] == 2000 and doc["failed"] == 0
    assert doc["fds_after"] == doc["baseline"]["fds"], "no descriptor left behind"
    assert doc["start"]["tasks"] > 2000 and doc["round_trips"] > 0 and doc["deliveries"] > 0
    assert "| open descriptors once every client left |" in (tmp_path / "soak.md").read_text()
