"""A run whose harness is killed (SIGKILL: nothing of it can clean up) keeps its streamed history,
and `kvbleed report DIR` judges that history: never PASS, every report file written, and the
report says where the run stopped (docs/design.md, "Incidents")."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from harness.frontends.cli import main
from harness.history.record import HistoryHeader, Operation, read_history
from harness.salvage import NothingToSalvage, salvage
from harness.verdict import Verdict
from tests.fake_stack import FakeStack

LIBRARY = Path(__file__).resolve().parents[1] / "scenarios"


def _wait_for_ops(history: Path, proc: subprocess.Popen[str], n: int, limit_s: float = 90.0) -> None:
    """Condition polling (not sleep-as-synchronisation): until the streamed history holds n ops."""
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        if history.exists() and history.read_text().count('"kind":"op"') >= n:
            return
        if proc.poll() is not None:
            pytest.fail(f"the run ended before it was killed: {proc.stdout.read() if proc.stdout else ''}")
        time.sleep(0.05)
    pytest.fail(f"no {n} operations streamed within {limit_s} s")


def test_a_run_killed_with_sigkill_is_judged_from_its_history(tmp_path: Path) -> None:
    report = tmp_path / "report"
    with FakeStack() as stack:
        proc = subprocess.Popen(
            [str(Path(sys.executable).parent / "kvbleed"), "run", "--target", stack.base_url,
             "--report-dir", str(report), "--scenario", str(LIBRARY / "burst.yaml"),
             "--scenario", str(LIBRARY / "multi-turn.yaml")],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
        try:
            _wait_for_ops(report / "history.jsonl", proc, 10)
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
    assert not (report / "report.json").exists()  # the harness had no chance to write it
    recorded = [r for r in read_history(report / "history.jsonl", torn_tail_ok=True) if isinstance(r, Operation)]

    assert main(["report", str(report)]) == 0
    data = json.loads((report / "report.json").read_text())
    assert data["verdict"] == "unknown"  # an honest server, a run cut short: never PASS
    assert data["metadata"]["salvaged"] is True and data["metadata"]["requests"] == len(recorded) >= 10
    stopped = data["metadata"]["stopped"]
    assert "stopped before the run finished" in stopped["reason"]
    assert stopped["requests_recorded"] == len(recorded) and stopped["scenario"] in ("burst", "multi-turn")
    assert (report / "report.html").is_file() and (report / "junit.xml").is_file()


def test_a_torn_last_line_is_dropped_and_settings_come_from_the_header(tmp_path: Path) -> None:
    header = HistoryHeader(harness_version="x", stack_owned=False, policy="isolated", tolerance=0.25)
    (tmp_path / "history.jsonl").write_text(json.dumps(header.__dict__) + '\n{"kind":"op","op_id":"a/b')
    result = salvage(tmp_path)
    assert result.verdict is Verdict.UNKNOWN and result.meta.policy == "isolated" and result.meta.tolerance == 0.25
    assert result.meta.requests == 0 and result.error and "stopped before the run finished" in result.error


def test_a_folder_without_history_is_refused(tmp_path: Path) -> None:
    with pytest.raises(NothingToSalvage):
        salvage(tmp_path)
    assert main(["report", str(tmp_path)]) == 2
