"""Old vs new checks over one saved run: re-check a history.jsonl with this harness's checks,
known-finding matching and verdict function, and compare with the report.json saved beside it.

    python -m bench.compare_checks REPORT_DIR [--known-findings known-findings.yaml]

REPORT_DIR holds history.jsonl (any schema version this harness reads; version 1 has no header)
and report.json (schema 1 or 2). Per check it compares verdict, exercised, violation count, drift
and notes; then the known-finding matches and the run verdict. The run's own settings (tolerance,
policy, server version, early-stop error, skipped scenarios) come from the saved metadata. Exit
0 when everything is identical, 1 otherwise (each difference printed).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from harness.checks.base import CheckContext, run_checks
from harness.history.record import History, read_history
from harness.known import known_violations, load_known_findings, match_known
from harness.verdict import decide


def compare(report_dir: Path, known_findings: Path | None) -> list[str]:
    """The differences between the saved report and a re-check of its history (empty: identical)."""
    old: dict[str, Any] = json.loads((report_dir / "report.json").read_text())
    meta = old.get("metadata") or {}
    history = History(read_history(report_dir / "history.jsonl"))
    ctx = CheckContext(float(meta.get("tolerance", 1e-3)), str(meta.get("policy", "shared-prefix")))
    results = run_checks(history, ctx) if history.ops else []
    error = meta.get("error")
    findings = load_known_findings(known_findings) if known_findings else []
    known = [] if error else match_known(results, findings, meta.get("server_version"), history)
    decision = decide(results, known_violations(known), error=error, skipped=meta.get("skipped_scenarios") or {})
    diffs: list[str] = []
    new_checks = {r.name: r for r in decision.checks}
    old_checks = {c["name"]: c for c in old.get("checks", [])}
    if list(new_checks) != list(old_checks):
        diffs.append(f"check names/order: old {list(old_checks)} new {list(new_checks)}")
    for name, c in old_checks.items():
        r = new_checks.get(name)
        if r is None:
            continue
        got = {"verdict": r.verdict.value, "exercised": r.exercised, "violations": len(r.violations),
               "drift": r.drift, "notes": r.notes}
        want = {"verdict": c["verdict"], "exercised": c["exercised"], "violations": len(c["violations"]),
                "drift": c["drift"], "notes": c["notes"]}
        for k in got:
            if got[k] != want[k]:
                diffs.append(f"{name}.{k}: old {want[k]!r} new {got[k]!r}")
    old_known = [(k["id"], k["violations"]) for k in meta.get("known_findings", [])]
    new_known = [(k.finding.id, len(k.violations)) for k in known]
    if old_known != new_known:
        diffs.append(f"known findings: old {old_known} new {new_known}")
    if decision.verdict.value != old.get("verdict"):
        diffs.append(f"run verdict: old {old.get('verdict')} new {decision.verdict.value} ({decision.reasons})")
    return diffs


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("report_dir", type=Path)
    ap.add_argument("--known-findings", type=Path, default=None)
    args = ap.parse_args(argv)
    diffs = compare(args.report_dir, args.known_findings)
    for d in diffs:
        print(d)
    report = json.loads((args.report_dir / "report.json").read_text())
    print(f"{args.report_dir}: {len(report.get('checks', []))} checks, run verdict {report.get('verdict')}: "
          + ("identical" if not diffs else f"{len(diffs)} difference(s)"))
    return 1 if diffs else 0


if __name__ == "__main__":
    raise SystemExit(main())
