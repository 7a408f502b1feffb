"""RFC 6455 and RFC 7692 conformance: the Autobahn|Testsuite fuzzing client against the echo route,
every section (1-10 the protocol, 12 and 13 permessage-deflate under every parameter set the suite
offers). Every case must be OK or INFORMATIONAL, in behaviour and in closing: FAILED, NON-STRICT and
UNIMPLEMENTED all fail the test. The counts are printed (and recorded in the README)."""

import json
import os
import subprocess
from collections import Counter

from conftest import config, require_tool

ACCEPTED = {"OK", "INFORMATIONAL"}


def test_autobahn_fuzzingclient_every_section_strictly(wsgate, tmp_path):
    wstest = require_tool(
        os.environ.get("WSGATE_WSTEST", os.path.expanduser("~/.cache/wsgate/autobahn-venv/bin/wstest")),
        "the Autobahn|Testsuite; scripts/test installs it",
    )
    s = wsgate(config(limits='ping_interval = "5m"\nidle_timeout = "10m"\n'))
    # The suite's client is single-threaded Python and spends most of the time: two of them run side by
    # side (section 12 in one, everything else in the other), about halving the wall time.
    halves = {"a": (["*"], ["12.*"]), "b": (["12.*"], [])}
    procs = {}
    for name, (cases, excluded) in halves.items():
        spec = {
            "outdir": str(tmp_path / f"report-{name}"),
            "servers": [{"agent": "wsgate", "url": s.url + "/ws/echo"}],
            "cases": cases,
            "exclude-cases": excluded,
            "exclude-agent-cases": {},
        }
        (tmp_path / f"spec-{name}.json").write_text(json.dumps(spec))
        procs[name] = subprocess.Popen(
            [wstest, "-m", "fuzzingclient", "-s", str(tmp_path / f"spec-{name}.json")],
            cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
    results = {}
    for name, p in procs.items():
        try:
            output, _ = p.communicate(timeout=1200)
        except subprocess.TimeoutExpired:
            for q in procs.values():
                q.kill()
            raise
        assert p.returncode == 0, output[-3000:]
        results.update(json.loads((tmp_path / f"report-{name}" / "index.json").read_text())["wsgate"])
    assert len(results) > 500, "the suite ran every case"
    sections = {k.split(".")[0] for k in results}
    # Autobahn has no sections 8 and 11.
    assert sections == {"1", "2", "3", "4", "5", "6", "7", "9", "10", "12", "13"}, sections
    behaviour = Counter(r["behavior"] for r in results.values())
    closing = Counter(r["behaviorClose"] for r in results.values())
    print(f"\nAutobahn: {len(results)} cases: behaviour {dict(behaviour)}, closing {dict(closing)}")
    bad = {k: (r["behavior"], r["behaviorClose"]) for k, r in results.items()
           if r["behavior"] not in ACCEPTED or r["behaviorClose"] not in ACCEPTED}
    assert not bad, f"cases not OK: {bad}"
