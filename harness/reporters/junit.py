"""`junit.xml`: one test case per check, so CI systems show each check's verdict.

FAIL becomes a <failure> with every violation; UNKNOWN becomes an <error> (a run that could not
show isolation must not look green).
"""

from __future__ import annotations

from pathlib import Path

from junitparser import Error, Failure, JUnitXml, Skipped, TestCase, TestSuite

from harness.result import RunResult
from harness.verdict import Verdict


def write_junit(result: RunResult, folder: Path, suite_name: str = "isolation") -> Path:
    """Write `folder/junit.xml`; returns its path."""
    path = Path(folder) / "junit.xml"
    suite = TestSuite(suite_name)
    for r in result.checks:
        case = TestCase(r.name, classname=f"harness.{suite_name}")
        case.system_out = "\n".join([f"exercised: {r.exercised}", f"drift: {r.drift}", *r.notes])
        if r.verdict is Verdict.FAIL:
            text = "\n".join(f"[{v.scenario}] {v.message}" for v in r.violations)
            case.result = [Failure(f"{len(r.violations)} violation(s)", "violation")]
            case.result[0].text = text
        elif r.verdict is Verdict.UNKNOWN:
            case.result = [Error("UNKNOWN: " + ("; ".join(r.notes) or "not exercised"), "unknown")]
        elif r.verdict is Verdict.NOT_APPLICABLE:
            case.result = [Skipped("not applicable: " + "; ".join(r.notes))]
        suite.add_testcase(case)
    if result.known_reproduced:
        # Not the all-clear: a PASS with known server bugs shows as skipped, naming them.
        case = TestCase("known-findings", classname=f"harness.{suite_name}")
        case.system_out = "\n".join(f"{k.finding.id}: {k.finding.title} ({len(k.violations)} violation(s)); "
                                     f"see {k.finding.reproducer}" for k in result.known_reproduced)
        case.result = [Skipped(f"{result.headline}: acknowledged server bugs, not counted in the verdict")]
        suite.add_testcase(case)
    xml = JUnitXml()
    xml.add_testsuite(suite)
    xml.write(str(path), pretty=True)
    return path
