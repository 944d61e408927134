"""The engine against the fake server (bench/fake_server.py, a real prefix cache, no model): a
whole run in memory, the stack lifecycle, RunResult save/load (schema 2 and 1), the reporters as
functions of the result, and a check added in one module."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import pytest
from rich.console import Console

from bench.fake_server import FakeServer, SpawnedServer
from harness import engine
from harness.checks import base as checks_base
from harness.history.record import Event, HistoryHeader, NemesisAction, Operation, Role
from harness.reporters import print_summary, write_all
from harness.result import REPORT_SCHEMA_VERSION, ReportSchemaError, RunResult
from harness.scenario.io import load_scenario
from harness.stacks.base import StackTraits
from harness.stacks.external import ExternalStack
from harness.verdict import CheckResult, Verdict

LIBRARY = Path(__file__).resolve().parents[1] / "scenarios"
QUIET = Console(stderr=True, quiet=True)


@pytest.fixture(scope="module")
def fake() -> Iterator[SpawnedServer]:
    with FakeServer.spawn() as server:
        yield server


@dataclass
class OwnedFake:
    """A Stack the harness owns: a fake server process it starts, restarts and stops."""

    NAME: ClassVar[str] = "fake"
    server: SpawnedServer | None = None
    starts: int = 0
    stops: int = 0
    startup_s: float | None = 0.0
    pending: list[Event] = field(default_factory=list)

    @property
    def traits(self) -> StackTraits:
        return StackTraits(owned=True, can_restart=True)

    @property
    def base_url(self) -> str:
        return self.server.url if self.server else ""

    def start(self) -> str:
        self.starts += 1
        self.server = FakeServer.spawn()
        self.pending.append(NemesisAction("start", 0.0, "started the fake server"))
        return self.base_url

    def stop(self) -> None:
        self.stops += 1
        if self.server:
            self.server.stop()

    def restart(self) -> str:
        self.stop()
        return self.start()

    @property
    def alive(self) -> bool:
        return self.server is not None and self.server.proc.poll() is None

    def check_alive(self) -> None:
        pass

    def events(self) -> list[Event]:
        out, self.pending = self.pending, []
        return out


def test_run_in_memory_passes_and_records_everything(fake: SpawnedServer) -> None:
    scenario = load_scenario(LIBRARY / "strict-prefix.yaml")
    result = engine.run([scenario], ExternalStack(fake.url), engine.RunOptions(seed=5), console=QUIET)
    assert result.verdict is Verdict.PASS, result.reasons
    assert result.exit_code == 0 and result.error is None and result.report_dir is None
    assert isinstance(result.history.records[0], HistoryHeader)
    runs = {o.run for o in result.history.ops}
    assert runs == {"main", "aa-1", "cf-0", "cf-1", "solo"}  # one A/A repeat: identical, so it stops
    assert {o.role for o in result.history.ops} == {Role.MAIN, Role.CALIBRATION, Role.COUNTERFACTUAL, Role.SOLO}
    assert result.meta.seeds == {"strict-prefix": 5} and result.scenarios[0].seed == 5
    assert result.meta.requests == len(result.history.ops) and result.meta.solo_isolation == "salt"
    assert result.check("counterfactual-isolation") and result.check("counterfactual-isolation").exercised > 0


def test_owned_stack_is_started_and_stopped_and_its_events_recorded() -> None:
    stack = OwnedFake()
    scenario = load_scenario(LIBRARY / "strict-prefix.yaml")
    result = engine.run([scenario], stack, engine.RunOptions(counterfactual=False), console=QUIET)
    assert stack.starts == 1 and stack.stops == 1 and not stack.alive
    assert result.meta.embedded and result.meta.stack == "fake"
    assert [e.nemesis for e in result.history.events if isinstance(e, NemesisAction)] == ["start"]
    # without counterfactual re-runs that check cannot decide: fail closed
    assert result.verdict is Verdict.UNKNOWN and any("counterfactual" in r for r in result.reasons)


def test_running_stack_is_not_stopped(fake: SpawnedServer) -> None:
    stack = OwnedFake(server=fake)
    engine.run([load_scenario(LIBRARY / "strict-prefix.yaml")], stack,
               engine.RunOptions(counterfactual=False, solo=False), console=QUIET)
    assert stack.starts == 0 and stack.stops == 0 and stack.alive


def test_unreachable_target_is_unknown_with_message() -> None:
    result = engine.run([load_scenario(LIBRARY / "strict-prefix.yaml")], ExternalStack("http://127.0.0.1:9"),
                        console=QUIET)
    assert result.verdict is Verdict.UNKNOWN and result.error and "unreachable" in result.error
    assert any("stopped early" in r for r in result.reasons)


def test_streamed_history_save_load_and_reporters(fake: SpawnedServer, tmp_path: Path) -> None:
    scenario = load_scenario(LIBRARY / "strict-prefix.yaml")
    result = engine.run([scenario], ExternalStack(fake.url), engine.RunOptions(solo=False, report_dir=tmp_path),
                        console=QUIET)
    assert (tmp_path / "history.jsonl").is_file() and not (tmp_path / "report.json").exists()
    write_all(result, tmp_path)
    print_summary(result, QUIET)
    data = json.loads((tmp_path / "report.json").read_text())
    assert data["schema_version"] == REPORT_SCHEMA_VERSION and data["verdict"] == result.verdict.value
    assert data["reasons"] == result.reasons
    page = (tmp_path / "report.html").read_text()
    assert "counterfactual-isolation" in page and "<testsuite" in (tmp_path / "junit.xml").read_text()
    loaded = RunResult.load(tmp_path)
    assert loaded.verdict is result.verdict and loaded.meta == result.meta
    assert [c.name for c in loaded.checks] == [c.name for c in result.checks]
    assert len(loaded.history.ops) == len(result.history.ops)
    assert loaded.to_json() == data


def test_load_reads_version_1_and_refuses_newer(tmp_path: Path) -> None:
    v1 = {"verdict": "fail", "checks": [{"name": "canary", "description": "d", "verdict": "fail", "exercised": 2,
                                         "drift": 0, "notes": [], "violations": [
                                             {"check": "canary", "scenario": "s", "message": "m", "users": ["a"],
                                              "op_ids": ["x"], "details": {}}]}],
          "metadata": {"target": "http://t", "requests": 2, "error": None, "reproducers": [],
                       "known_findings": [{"id": "k", "title": "t", "reproduced": True, "violations": 1,
                                           "details": "", "reproducer": "", "messages": ["[s] m"]}],
                       "something_old": 1}}
    (tmp_path / "report.json").write_text(json.dumps(v1))
    loaded = RunResult.load(tmp_path)
    assert loaded.verdict is Verdict.FAIL and loaded.exit_code == 1 and loaded.meta.target == "http://t"
    assert loaded.violations[0].op_ids == ["x"] and loaded.known[0].finding.id == "k"
    [again] = loaded.to_json()["metadata"]["known_findings"]
    [old] = v1["metadata"]["known_findings"]
    assert {k: again[k] for k in old} == old and again["status"] == "reproduced"  # new keys added, none lost
    assert loaded.meta.extra == {"something_old": 1}
    (tmp_path / "report.json").write_text(json.dumps({**v1, "schema_version": 99}))
    with pytest.raises(ReportSchemaError, match=r"schema version 99"):
        RunResult.load(tmp_path)
    with pytest.raises(ReportSchemaError, match=r"no report\.json"):
        RunResult.load(tmp_path / "nothing")


def test_a_check_added_in_one_module_reaches_the_engine_and_every_reporter(fake: SpawnedServer,
                                                                           tmp_path: Path) -> None:
    """Adding a check is one definition plus its registration (`@check`): the engine runs it, its
    result decides with the others, and every reporter lists it."""

    @checks_base.check("example-ops-counted", "an example check: every operation was recorded")
    def example(history, ctx):
        ops = [o for o in history.ops if isinstance(o, Operation)]
        return CheckResult("", Verdict.PASS if ops else Verdict.UNKNOWN, exercised=len(ops))

    try:
        result = engine.run([load_scenario(LIBRARY / "strict-prefix.yaml")], ExternalStack(fake.url),
                            engine.RunOptions(counterfactual=False, solo=False, report_dir=tmp_path), console=QUIET)
        write_all(result, tmp_path)
        mine = result.check("example-ops-counted")
        assert mine is not None and mine.verdict is Verdict.PASS and mine.exercised == len(result.history.ops)
        assert mine.description == "an example check: every operation was recorded"
        assert "example-ops-counted" in (tmp_path / "junit.xml").read_text()
        assert "example-ops-counted" in (tmp_path / "report.html").read_text()
        names = [c["name"] for c in json.loads((tmp_path / "report.json").read_text())["checks"]]
        assert "example-ops-counted" in names
    finally:
        del checks_base.REGISTRY["example-ops-counted"]
    assert "example-ops-counted" not in [c.name for c in checks_base.all_checks()]
