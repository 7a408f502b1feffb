"""RFC 6455 conformance: the Autobahn|Testsuite fuzzing client against the echo route.

Sections 12 and 13 test permessage-deflate (RFC 7692), which wsgate does not negotiate; they are excluded
and reported as not supported. Every other case must not be FAILED (in behaviour or in closing)."""

import json
import os
import subprocess
from collections import Counter

from conftest import config, require_tool

NOT_SUPPORTED = ["12.*", "13.*"]


def test_autobahn_fuzzingclient_cases_1_to_11(wsgate, tmp_path):
    wstest = require_tool(
        os.environ.get("WSGATE_WSTEST", os.path.expanduser("~/.cache/wsgate/autobahn-venv/bin/wstest")),
        "the Autobahn|Testsuite; scripts/test installs it",
    )
    s = wsgate(config(limits='ping_interval = "5m"\nidle_timeout = "10m"\n'))
    spec = {
        "outdir": str(tmp_path / "report"),
        "servers": [{"agent": "wsgate", "url": s.url + "/ws/echo"}],
        "cases": ["*"],
        "exclude-cases": NOT_SUPPORTED,
        "exclude-agent-cases": {},
    }
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    out = subprocess.run(
        [wstest, "-m", "fuzzingclient", "-s", str(tmp_path / "spec.json")],
        cwd=tmp_path, capture_output=True, text=True, timeout=900,
    )
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    results = json.loads((tmp_path / "report" / "index.json").read_text())["wsgate"]
    assert len(results) > 290, "the suite ran every case of sections 1-11"
    behaviour = Counter(r["behavior"] for r in results.values())
    print(f"\nAutobahn: {len(results)} cases: {dict(behaviour)}; not supported: {NOT_SUPPORTED} (permessage-deflate)")
    failed = {k: (r["behavior"], r["behaviorClose"]) for k, r in results.items()
              if "FAILED" in r["behavior"] or "FAILED" in r["behaviorClose"] or r["behavior"] == "UNIMPLEMENTED"}
    assert not failed, f"cases failed: {failed}"
