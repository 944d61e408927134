"""The solo oracle's last cold reference: a fresh server process before each request.

llama.cpp offers no salt and no reset, so when the harness launched the server itself
(`harness run --stack llama-cpp`), the solo replay restarts it before every request; the
reference is then cold by construction and cache transparency can PASS there. Against a URL
the harness does not control, the replay stays "warm" and agreement stays UNKNOWN
(tests/test_llamacpp.py).
"""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path

import pytest

from harness.client import TargetClient
from harness.driver.driver import DriverOptions, RunSpec, drive_run
from harness.engine import RunOptions
from harness.frontends.runs import run_files
from harness.history.record import HistoryWriter
from harness.scenario.io import load_scenario
from harness.scenario.render import make_nonce, plan_scenario
from harness.stacks import make_stack
from harness.stacks.llamacpp import llama_cpp_available
from harness.verdict import Verdict

_OK, _WHY = llama_cpp_available()
LIBRARY = Path(__file__).resolve().parents[1] / "scenarios"


@pytest.mark.skipif(not _OK, reason=_WHY)
def test_launched_llamacpp_gets_a_fresh_process_per_solo_request(tmp_path: Path) -> None:
    out = run_files([LIBRARY / "strict-prefix.yaml"], make_stack(None, "llama-cpp"), RunOptions(), tmp_path)
    report = json.loads((tmp_path / "report.json").read_text())
    meta = report["metadata"]
    assert meta["embedded"] and meta["solo_isolation"] == "restart", meta
    checks = {c["name"]: c for c in report["checks"]}
    transparency = checks["cache-transparency"]
    assert transparency["verdict"] == "pass" and transparency["exercised"] > 0, transparency
    assert checks["counterfactual-isolation"]["verdict"] == "pass"
    # The server's own log shows one start per solo request, plus the first.
    records = [json.loads(line) for line in (tmp_path / "history.jsonl").read_text().splitlines()]
    solo_ops = [r for r in records if r["kind"] == "op" and r["run"] == "solo"]
    port = int(re.search(r":(\d+)$", meta["target"]).group(1))  # type: ignore[union-attr]
    log = (Path(".cache") / "logs" / f"llamacpp-{port}.log").read_text(errors="replace")
    assert solo_ops and log.count("Uvicorn running on") == 1 + len(solo_ops)
    # Still not PASS overall: the cache checks need cached-token counts llama.cpp does not report.
    assert out.verdict is Verdict.UNKNOWN


def test_a_restart_run_without_a_restart_hook_fails_instead_of_running_warm(tmp_path: Path) -> None:
    sc = load_scenario(LIBRARY / "strict-prefix.yaml")
    nonce = make_nonce()
    spec = RunSpec("solo", sc, plan_scenario(sc, nonce), nonce, {u.name: "m" for u in sc.users},
                   {u.name: None for u in sc.users}, isolation="restart")

    async def go() -> None:
        async with TargetClient("http://127.0.0.1:9") as client:
            with HistoryWriter(tmp_path / "h.jsonl") as writer:
                await drive_run(client, spec, writer, DriverOptions())

    with pytest.raises(ValueError, match="restart hook"):
        asyncio.run(go())
