"""The pytest plugin as a team would use it: a test file of their own, run by pytest's `pytester`.

Against the real embedded server the team's test passes; through the fault proxy (`flip`: one
confidently wrong token) it fails, and the failure shows the reproducer (scenario YAML and curl
commands) inline. Unit tests cover the plugin's pieces that need no server.
"""

from __future__ import annotations

from importlib.metadata import entry_points
from pathlib import Path

import pytest

from harness.faults.proxy import FaultProxy
from harness.frontends.pytest_plugin import IsolationFailure, assert_isolated, format_outcome, scenario_objects
from harness.history.record import History
from harness.result import RunMeta, RunResult
from harness.scenario.io import ScenarioError, parse_scenario
from harness.verdict import CheckResult, Decision, Verdict, Violation

pytest_plugins = ["pytester"]

TEAM_SCENARIO = """\
# Two tenants share one system prompt; each adds a private question.
name: team-shared-prompt
description: two tenants share one system prompt (completions)
endpoint: completions
max_tokens: 8
seed: 5
shared_prefixes:
  - {name: sys, kind: system, words: 48}
tenants:
  - {name: acme, secrets: 1}
  - {name: globex, secrets: 1}
users:
  - {name: alice, tenant: acme, prefixes: [sys], private_words: 8}
  - {name: bob, tenant: globex, prefixes: [sys], private_words: 8}
schedule: {concurrency: 2, interleaving: random, seed: 1}
"""

TEAM_TEST = """\
import pytest

@pytest.mark.isolation
def test_tenants_are_isolated(run_scenario):
    outcome = run_scenario("isolation/team.yaml")
    assert outcome.verdict.value == "pass"
"""


def _plugin_args() -> list[str]:
    """Nothing when the pytest11 entry point is installed (the normal case); else load it by name."""
    installed = any(ep.value == "harness.frontends.pytest_plugin" for ep in entry_points(group="pytest11"))
    return [] if installed else ["-p", "harness.frontends.pytest_plugin"]


@pytest.fixture(autouse=True)
def _quiet_inner_asyncio(request: pytest.FixtureRequest) -> None:
    """pytest-asyncio (installed here) warns in every inner run that leaves its loop scope unset."""
    if "pytester" in request.fixturenames:
        request.getfixturevalue("pytester").makeini("[pytest]\nasyncio_default_fixture_loop_scope = function\n")


def _team_project(pytester: pytest.Pytester) -> None:
    pytester.mkdir("isolation")
    (pytester.path / "isolation" / "team.yaml").write_text(TEAM_SCENARIO)
    pytester.makepyfile(test_team=TEAM_TEST)


def test_entry_point_is_declared() -> None:
    text = (Path(__file__).resolve().parents[1] / "pyproject.toml").read_text()
    assert '[project.entry-points.pytest11]\nharness = "harness.frontends.pytest_plugin"' in text


# --- with the real server -------------------------------------------------------------------------


@pytest.mark.integration
def test_team_suite_passes_against_embedded_server(pytester: pytest.Pytester, embedded_url: str) -> None:
    _team_project(pytester)
    result = pytester.runpytest_subprocess(*_plugin_args(), "--isolation-target", embedded_url,
                                           "--isolation-report-dir", "reports", "-v", timeout=600)
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["isolation: target=*"])
    folders = list((pytester.path / "reports").iterdir())
    assert len(folders) == 1 and "test_tenants_are_isolated" in folders[0].name
    assert (folders[0] / "report.json").is_file() and (folders[0] / "junit.xml").is_file()


@pytest.mark.integration
def test_team_suite_fails_through_fault_proxy_with_reproducer(pytester: pytest.Pytester, embedded_url: str) -> None:
    _team_project(pytester)
    with FaultProxy(embedded_url, fault="flip", rate=1.0, seed=3) as proxy:
        result = pytester.runpytest_subprocess(*_plugin_args(), "--isolation-target", proxy.url, timeout=600)
        injected = len(proxy.injections)
    assert injected > 0, "the proxy never flipped a token"
    result.assert_outcomes(failed=1)
    out = result.stdout.str()
    assert "IsolationFailure" in out and "isolation verdict FAIL" in out
    assert "[cache-transparency] team-shared-prompt:" in out
    # The reproducer is inline: its folder, the cut-down scenario YAML (seed, nonce) and the curl commands.
    assert "reproducer 1 of" in out and "/reproducers/001-" in out
    assert "scenario.yaml -----" in out and "# Reproducer for a" in out and "nonce:" in out
    assert "requests.sh -----" in out and "curl -sS" in out and proxy.url in out


# --- without a server -----------------------------------------------------------------------------


def test_options_and_marker_are_registered(pytester: pytest.Pytester) -> None:
    result = pytester.runpytest(*_plugin_args(), "--help")
    result.stdout.fnmatch_lines(["*--isolation-target=URL*", "*--isolation-policy=*", "*--isolation-report-dir=DIR*",
                                 "*--isolation-config=FILE*"])
    result = pytester.runpytest(*_plugin_args(), "--markers")
    result.stdout.fnmatch_lines(["@pytest.mark.isolation(**options)*"])


def test_unknown_marker_option_is_a_clear_error(pytester: pytest.Pytester) -> None:
    pytester.makepyfile("""
        import pytest

        @pytest.mark.isolation(polcy="salted")
        def test_x(run_scenario):
            run_scenario("nothing.yaml")
    """)
    result = pytester.runpytest(*_plugin_args(), "--isolation-target", "http://127.0.0.1:9")
    result.assert_outcomes(errors=1)
    assert "@pytest.mark.isolation: unknown option(s) ['polcy']" in result.stdout.str()


def test_configuration_file_error_names_file_and_key(pytester: pytest.Pytester) -> None:
    pytester.makefile(".toml", isolation='target = "http://127.0.0.1:9"\npolcy = "salted"\n')
    pytester.makepyfile("""
        def test_x(run_scenario):
            pass
    """)
    result = pytester.runpytest(*_plugin_args())
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*isolation configuration: *isolation.toml: unknown key 'polcy'*"])


def test_settings_come_from_the_configuration_file_under_the_options(pytester: pytest.Pytester) -> None:
    pytester.makefile(".toml", isolation='target = "http://file:1"\npolicy = "salted"\ntimeout = 5\n'
                                         'report-dir = "out"\nno-solo = true\n')
    pytester.makepyfile("""
        def test_x(isolation_settings, isolation_target, pytestconfig):
            s = isolation_settings
            assert isolation_target == "http://cli:2"
            assert s.policy == "salted" and s.timeout == 5.0 and s.solo is False and s.counterfactual is True
            assert s.report_root == pytestconfig.rootpath / "out"
            assert s.source.endswith("isolation.toml")
    """)
    result = pytester.runpytest(*_plugin_args(), "--isolation-target", "http://cli:2")
    result.assert_outcomes(passed=1)


class _FakeServer:
    """Stands in for EmbeddedServer: counts starts and stops."""

    starts = 0
    stops = 0

    def __init__(self) -> None:
        self.base_url = ""

    def start(self) -> str:
        type(self).starts += 1
        self.base_url = "http://127.0.0.1:1"
        return self.base_url

    def stop(self) -> None:
        type(self).stops += 1


def test_without_a_target_the_embedded_server_starts_once_per_session(pytester: pytest.Pytester,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    import harness.stacks.vllm

    monkeypatch.setattr(harness.stacks.vllm, "EmbeddedServer", _FakeServer)
    monkeypatch.setattr(_FakeServer, "starts", 0)
    monkeypatch.setattr(_FakeServer, "stops", 0)
    pytester.makepyfile("""
        def test_a(isolation_target):
            assert isolation_target == "http://127.0.0.1:1"

        def test_b(isolation_target):
            assert isolation_target == "http://127.0.0.1:1"
    """)
    result = pytester.runpytest(*_plugin_args())
    result.assert_outcomes(passed=2)
    assert (_FakeServer.starts, _FakeServer.stops) == (1, 1)


def test_marker_options_and_call_options_reach_the_run(pytester: pytest.Pytester,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    import harness.frontends.pytest_plugin as plugin

    seen: list = []

    def fake_run(scenarios, target, options, report_dir):
        seen.append((scenarios, target, options, report_dir))
        return _result(report_dir, Verdict.PASS)

    monkeypatch.setattr(plugin, "run_objects", fake_run)
    (pytester.path / "team.yaml").write_text(TEAM_SCENARIO)
    pytester.makepyfile(f"""
        import pytest

        @pytest.mark.isolation(policy="salted", seed=4)
        def test_x(run_scenario):
            run_scenario("team.yaml")
            run_scenario({TEAM_SCENARIO!r}, tolerance=0.5, policy="shared-prefix")
    """)
    result = pytester.runpytest(*_plugin_args(), "--isolation-target", "http://127.0.0.1:9",
                                "--isolation-report-dir", "out")
    result.assert_outcomes(passed=1)
    (sc1, target, first, dir1), (sc2, _, second, dir2) = seen
    assert (first.policy, first.seed, target) == ("salted", 4, "http://127.0.0.1:9")
    assert (second.policy, second.seed, second.tolerance) == ("shared-prefix", 4, 0.5)
    assert dir1 == pytester.path / "out" / "test_marker_options_and_call_options_reach_the_run.py_test_x"
    assert dir2.name == dir1.name + "-2"
    assert first.scenario_files == ("team.yaml",)  # as given, relative to the current folder
    assert sc1 == sc2 == [parse_scenario(TEAM_SCENARIO)]  # YAML text is parsed in memory, never written
    assert not list(pytester.path.glob("out/*-input"))


def test_scenario_inputs(tmp_path: Path) -> None:
    sc = parse_scenario(TEAM_SCENARIO)
    # A Scenario object is used as given and YAML text is parsed in memory: nothing is written.
    [(_, from_obj), (_, from_text)] = scenario_objects([sc, TEAM_SCENARIO])
    assert from_obj is sc and from_text == sc
    assert not list(tmp_path.iterdir())
    # A relative path is looked up beside the test file when the current folder lacks it.
    (tmp_path / "tests" / "iso").mkdir(parents=True)
    (tmp_path / "tests" / "iso" / "a.yaml").write_text(TEAM_SCENARIO)
    [(source, loaded)] = scenario_objects("iso/a.yaml", tmp_path / "tests")
    assert Path(source) == tmp_path / "tests" / "iso" / "a.yaml" and loaded == sc
    with pytest.raises(ScenarioError, match="no such file"):
        scenario_objects("missing.yaml", tmp_path)
    with pytest.raises(ScenarioError, match="unknown field"):
        scenario_objects(TEAM_SCENARIO + "bogus: 1\n")
    with pytest.raises(TypeError):
        scenario_objects(42)


def _result(folder: Path, verdict: Verdict, results: list[CheckResult] | None = None, error: str | None = None,
            reproducers: list[str] | None = None) -> RunResult:
    return RunResult(decision=Decision(verdict, [], results or []), known=[], history=History([]), meta=RunMeta(),
                     error=error, report_dir=folder, reproducers=reproducers or [])


def _outcome(tmp_path: Path, verdict: Verdict, violations: list[Violation], error: str | None = None) -> RunResult:
    repro = tmp_path / "reproducers" / "001-cache-transparency-demo"
    repro.mkdir(parents=True)
    (repro / "scenario.yaml").write_text("# Reproducer for a cache-transparency violation\nname: demo\n")
    (repro / "requests.sh").write_text("#!/usr/bin/env sh\ncurl -sS http://x/v1/completions\n" + "x" * 10000)
    results = [CheckResult("cache-transparency", verdict, 1, violations),
               CheckResult("exercised", Verdict.UNKNOWN, 0, notes=["no cache hit across users"])]
    return _result(tmp_path, verdict, results, error, [str(repro)])


def test_failure_message_quotes_the_reproducer(tmp_path: Path) -> None:
    v = Violation("cache-transparency", "demo", "user 'alice' turn 0: main differs from solo", ["alice"], ["op1"])
    outcome = _outcome(tmp_path, Verdict.FAIL, [v])
    with pytest.raises(IsolationFailure) as info:
        assert_isolated(outcome)
    msg = str(info.value)
    assert info.value.outcome is outcome and isinstance(info.value, AssertionError)
    assert msg.startswith("isolation verdict FAIL") and "[cache-transparency] demo: user 'alice'" in msg
    assert "reproducer 1 of 1:" in msg and "# Reproducer for a cache-transparency" in msg and "curl -sS" in msg
    assert "more characters in" in msg and len(msg) < 9000  # long files are cut, with their path named


def test_unknown_fails_unless_allowed(tmp_path: Path) -> None:
    outcome = _outcome(tmp_path, Verdict.UNKNOWN, [], error="target http://x is unreachable")
    assert_isolated(outcome, allow_unknown=True)
    with pytest.raises(IsolationFailure, match=r"(?s)UNKNOWN.*unreachable.*no cache hit across users"):
        assert_isolated(outcome)
    assert_isolated(_result(tmp_path, Verdict.PASS))
    assert "isolation verdict UNKNOWN" in format_outcome(outcome)

