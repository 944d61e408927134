"""A PASS with reproduced known findings is never shown as the all-clear (HTML banner, console, JUnit)."""

from __future__ import annotations

import io
from pathlib import Path

from rich.console import Console

from harness.known import KnownFinding, KnownOutcome
from harness.reporters import print_summary, write_all
from harness.result import RunMeta, RunResult
from harness.verdict import CheckResult, Verdict, Violation, decide
from tests.factories import history, info, op


def _result(known_violations: int) -> RunResult:
    finding = KnownFinding(id="srv-bug", title="a base request batched with adapters changes tokens",
                           checks=["cache-transparency"], scenarios=["s"], reproducer="findings/x.md")
    absorbed = [Violation("cache-transparency", "s", f"changed {i}", ["a"], ["main/s/a/0"])
                for i in range(known_violations)]
    checks = [CheckResult("cache-transparency", Verdict.FAIL if absorbed else Verdict.PASS, exercised=3,
                          violations=list(absorbed), evidence={"tokens_compared": 12})]
    return RunResult(decision=decide(checks, absorbed), known=[KnownOutcome(finding, absorbed)],
                     history=history(info("main", {"a": 0}), op("main", "a", [1, 2])),
                     meta=RunMeta(harness_version="t", target="http://x", stack="external server", policy="p",
                                  tolerance=1e-3, started_unix=0.0))


def test_pass_with_reproduced_known_findings_says_so_everywhere(tmp_path: Path) -> None:
    result = _result(known_violations=2)
    assert result.verdict is Verdict.PASS
    assert result.headline == "PASS, with 1 known server bug reproduced"
    write_all(result, tmp_path)
    page = (tmp_path / "report.html").read_text()
    assert 'class="banner pass known"' in page and "known server bug reproduced" in page
    assert "every check held and was exercised" not in page
    junit = (tmp_path / "junit.xml").read_text()
    assert "known-findings" in junit and "<skipped" in junit and "srv-bug" in junit
    out = io.StringIO()
    print_summary(result, Console(file=out, width=200))
    assert "verdict: PASS, with 1 known server bug reproduced" in out.getvalue()


def test_a_plain_pass_keeps_the_all_clear(tmp_path: Path) -> None:
    result = _result(known_violations=0)
    assert result.headline == "PASS"
    write_all(result, tmp_path)
    page = (tmp_path / "report.html").read_text()
    assert 'class="banner pass"' in page and "every check held and was exercised" in page
    assert "known-findings" not in (tmp_path / "junit.xml").read_text()
