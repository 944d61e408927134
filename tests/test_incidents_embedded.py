"""The incident rule on the real embedded vLLM server: a server the harness owns, killed from
outside mid-run, is restarted and the requests in flight replayed: UNKNOWN (not attributable),
ONE incident in the report, history kept; a proxy fault that crashes on one given request is
replayed through the proxy and bisected to ONE availability FAIL naming that request."""

from __future__ import annotations

import json
import os
import signal
import threading
from pathlib import Path

import pytest
from rich.console import Console

from harness import engine
from harness.checks.availability import availability
from harness.checks.base import CheckContext
from harness.engine import RunOptions
from harness.history.record import FaultInjection, Operation, TriageReplay, read_history
from harness.reporters import write_all
from harness.scenario.io import load_scenario
from harness.stacks.vllm import SERVED_MODEL_NAME, EmbeddedServer
from harness.verdict import Verdict
from tests.test_incidents_run import faulted_burst

pytestmark = pytest.mark.integration

LIBRARY = Path(__file__).resolve().parents[1] / "scenarios"


@pytest.mark.matrix  # a server of its own, killed and restarted: about 2 minutes, `make test-matrix`
def test_owned_server_killed_from_outside_is_unknown_with_one_incident(tmp_path: Path) -> None:
    server = EmbeddedServer(log_path=tmp_path / "vllm.log")
    server.start()
    history = tmp_path / "history.jsonl"
    killed = threading.Event()

    def killer() -> None:
        # Condition polling: once the run has recorded some operations, kill the server's group.
        while not killed.is_set():
            if history.exists() and history.read_text().count('"kind":"op"') >= 12:
                assert server.pgid is not None
                os.killpg(server.pgid, signal.SIGKILL)
                killed.set()
                return
            killed.wait(0.05)

    t = threading.Thread(target=killer, daemon=True)
    t.start()
    try:
        out = engine.run([load_scenario(LIBRARY / "burst.yaml")], server,
                         RunOptions(report_dir=tmp_path, timeout_s=30, solo=False),
                         console=Console(stderr=True, quiet=True))
        write_all(out, tmp_path)
        restarts = server.restarts
    finally:
        killed.set()
        server.stop()
    assert out.verdict is Verdict.UNKNOWN and out.exit_code == 2
    assert restarts == 1  # the harness owns it: restarted once for the replays
    avail = out.check("availability")
    assert avail is not None and avail.verdict is Verdict.UNKNOWN and not avail.violations
    assert any("server died" in n and "not attributable to any input" in n and "history kept" in n
               for n in avail.notes)
    report = json.loads((tmp_path / "report.json").read_text())
    [incident] = report["metadata"]["incidents"]  # ONE event, not one per request that failed
    assert incident["what"] == "server-died" and not incident["reproduced"] and incident["replays"] >= 1
    assert report["metadata"]["stopped"]["scenario"] == "burst"
    records = read_history(history)
    ops = [r for r in records if isinstance(r, Operation)]
    assert sum(o.ok for o in ops) >= 12 and any(not o.ok for o in ops)
    assert any(isinstance(r, TriageReplay) and r.op_ids and not r.reproduced for r in records)


def test_a_request_that_crashes_the_server_is_one_fail_naming_it(embedded_url: str) -> None:
    history = faulted_burst("poison-request", seed=2, hostile=8, url=embedded_url, model=SERVED_MODEL_NAME)
    result = availability(history, CheckContext(tolerance=0.5))
    crashes = {e.op_id for e in history.events if isinstance(e, FaultInjection) and e.action.startswith("crash")}
    assert result.verdict is Verdict.FAIL and crashes
    [v] = result.violations
    assert len(v.op_ids) == 1 and v.op_ids[0] in crashes and v.details["minimal"] and v.details["status"] == 500
