"""The kill matrix's fast subset against the real embedded vLLM server (about 4 minutes, in
`make test`): two mutants that the checks must kill and one equivalent mutant that they must not,
each on its own scenarios and its own server start, judged against one unmutated baseline."""

from __future__ import annotations

from pathlib import Path

import pytest
from rich.console import Console

from harness.mutants.catalog import get
from harness.mutants.runner import MatrixOptions, run_matrix

pytestmark = [pytest.mark.integration]


def test_two_mutants_killed_and_an_equivalent_one_not(tmp_path: Path) -> None:
    chosen = [get("cached-over-by-block"), get("half-block-hash"), get("hash-domain-tag")]
    opts = MatrixOptions(report_dir=tmp_path, timing=False)
    state = run_matrix(chosen, opts, Console(stderr=True))
    rows = state["mutants"]
    for name, scenario in (("cached-over-by-block", "strict-prefix"), ("half-block-hash", "block-boundary")):
        assert rows[name]["status"] == "killed", (name, rows[name]["reason"])
        assert rows[name]["hits"]["changed"] > 0 and rows[name]["reproducer"]["scenario"] == scenario
    equivalent = rows["hash-domain-tag"]
    assert equivalent["status"] == "not-killed", equivalent["reason"]
    assert equivalent["hits"]["calls"] > 0
    assert state["baselines"]["default/library"]["outcomes"]["strict-prefix"]["verdict"] in ("pass", "unknown")
    assert state["ok"] and state["kill_rate"] == {"killed": 2, "applicable": 2}
