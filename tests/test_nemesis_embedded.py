"""One nemesis on the real embedded server (the selftest's cache-reset column, cut to one scenario):
while the harness resets the prefix cache mid-run, a benign control still PASSes and a fault is
still detected by its own detector citing an injected request. The full fault x nemesis matrix runs
outside CI (`make selftest-nemesis`, figures in the README)."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.frontends.commands.selftest import citing_checks, judge, run_fault
from harness.history.record import NemesisAction
from harness.verdict import Verdict

LIBRARY = Path(__file__).resolve().parents[1] / "scenarios"


@pytest.mark.parametrize("fault", ["noise", "phantom-hit"])
def test_cache_reset_column(fault: str, embedded_url: str, tmp_path: Path) -> None:
    out, injected = run_fault(fault, embedded_url, LIBRARY, tmp_path, seed=0, files=["strict-prefix.yaml"],
                              nemesis=("cache-reset",))
    resets = [e for e in out.history.events if isinstance(e, NemesisAction) and e.action == "reset"]
    assert resets and any(r.took_effect for r in resets), "the nemesis never reset the cache"
    nemesis = out.check("nemesis")
    assert nemesis is not None and nemesis.verdict is Verdict.PASS, nemesis
    checks = {r.name: r.verdict.value for r in out.checks}
    j = judge(fault, checks, out.verdict.value, {}, injections=injected, error=out.error,
              skipped=out.skipped or None, cited=citing_checks(out))
    assert injected > 0 and j.good, (j.reason, out.reasons)
    if fault == "noise":
        assert out.verdict is Verdict.PASS
    else:
        assert "cache-accounting" in citing_checks(out)
