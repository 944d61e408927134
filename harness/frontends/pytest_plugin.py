"""pytest plugin: multi-tenant isolation checks inside a team's own test suite.

Registered through the `pytest11` entry point, so installing `harness` is enough:

    import pytest

    @pytest.mark.isolation
    def test_tenants_are_isolated(run_scenario):
        run_scenario("isolation/shared-system-prompt.yaml")   # fails with the reproducer inline

Options: `--isolation-target URL` (default: the configuration file's `target`, else the embedded
vLLM server, started once per session), `--isolation-policy shared-prefix|salted`,
`--isolation-report-dir DIR` (one sub-folder per test; default: the test's tmp_path) and
`--isolation-config FILE`. Settings not given as options come from the same configuration file
as `harness run` (`isolation.toml`, else `[tool.harness]` in `pyproject.toml`, in the rootdir).

Fixtures: `isolation_target` (the URL), `isolation_settings` (the merged settings) and
`run_scenario` (runs one isolation run and returns its `RunResult`; by default it raises
`IsolationFailure`, an AssertionError, unless the verdict is PASS). `assert_isolated(outcome)`
makes the same assertion on an outcome. The marker `@pytest.mark.isolation(**options)` tags a
test (select with `-m isolation`) and sets per-test defaults for `run_scenario`'s options.

Nothing heavy is imported until a fixture is used, so the plugin costs nothing in test suites
that do not use it.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from harness.engine import RunOptions
    from harness.result import RunResult
    from harness.scenario.model import Scenario

MARKER = "isolation"
INLINE_REPRODUCERS = 2
"""How many reproducers a failure message quotes in full (the rest are listed by folder)."""
INLINE_CHARS = 6000
"""Each quoted file is cut after this many characters (the message names the file to read it whole)."""
RUN_OPTIONS = frozenset({"policy", "tolerance", "timeout", "seed", "counterfactual", "solo", "known_findings",
                         "check", "allow_unknown"})


class IsolationFailure(AssertionError):
    """An isolation run whose verdict was not PASS; the message carries the evidence and reproducers."""

    def __init__(self, message: str, outcome: RunResult) -> None:
        super().__init__(message)
        self.outcome = outcome


@dataclass(frozen=True)
class IsolationSettings:
    """What `run_scenario` uses unless a call or the test's marker says otherwise."""

    target: str | None = None
    policy: str = "shared-prefix"
    tolerance: float = 1e-3
    timeout: float = 60.0
    seed: int | None = None
    counterfactual: bool = True
    solo: bool = True
    known_findings: Path | None = None
    report_root: Path | None = None
    source: str | None = None
    """The configuration file the settings came from, if any."""


# --- hooks ----------------------------------------------------------------------------------------


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("isolation", "multi-tenant isolation checks (harness)")
    group.addoption("--isolation-target", metavar="URL", default=None,
                    help="base URL of the OpenAI-compatible server under test (default: the configuration "
                    "file's target, else start the embedded vLLM server once per session)")
    group.addoption("--isolation-policy", choices=("shared-prefix", "salted"), default=None,
                    help="shared-prefix: tenants may share cache, outputs must not change; salted: each tenant "
                    "sends its own cache salt and no cross-tenant reuse may be observable")
    group.addoption("--isolation-report-dir", metavar="DIR", default=None,
                    help="write each test's reports to DIR/<test> (default: the configuration file's report-dir "
                    "as DIR, else the test's tmp_path)")
    group.addoption("--isolation-config", metavar="FILE", default=None,
                    help="configuration file (default: isolation.toml, else [tool.harness] in pyproject.toml, "
                    "in the rootdir)")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        f"{MARKER}(**options): a multi-tenant isolation check; options (policy, tolerance, timeout, seed, "
        "counterfactual, solo, known_findings, allow_unknown) are defaults for run_scenario in this test",
    )


def pytest_report_header(config: pytest.Config) -> str | None:
    target = config.getoption("--isolation-target")
    policy = config.getoption("--isolation-policy")
    if target is None and policy is None:
        return None
    return f"isolation: target={target or '(config file or embedded)'} policy={policy or '(default)'}"


# --- settings -------------------------------------------------------------------------------------


def settings_from(config: pytest.Config) -> IsolationSettings:
    """Options over the configuration file over the defaults of `harness run` (raises ConfigError)."""
    from harness.frontends.config import RUN_DEFAULTS, load_config, merge

    explicit_file = config.getoption("--isolation-config")
    if explicit_file is not None:
        file = load_config(config.invocation_params.dir / explicit_file)
    else:
        file = load_config(folder=config.rootpath)
    explicit = {"target": config.getoption("--isolation-target"), "policy": config.getoption("--isolation-policy")}
    s = merge(explicit, file, RUN_DEFAULTS)
    # The root of the per-test report folders: the option, else the file's report-dir, else none
    # (each test's tmp_path). Paths in a file are already resolved against the file's folder.
    report_dir = config.getoption("--isolation-report-dir")
    root: Path | None = None
    if report_dir:
        root = config.invocation_params.dir / report_dir
    elif "report_dir" in file.values:
        root = Path(file.values["report_dir"])
    return IsolationSettings(
        target=s["target"], policy=s["policy"], tolerance=s["tolerance"], timeout=s["timeout"], seed=s["seed"],
        counterfactual=not s["no_counterfactual"], solo=not s["no_solo"], known_findings=s["known_findings"],
        report_root=root, source=file.source,
    )


@pytest.fixture(scope="session")
def isolation_settings(pytestconfig: pytest.Config) -> IsolationSettings:
    """The plugin's settings for this session (options, configuration file, defaults)."""
    from harness.frontends.config import ConfigError

    try:
        return settings_from(pytestconfig)
    except ConfigError as exc:
        raise pytest.fail.Exception(f"isolation configuration: {exc}", pytrace=False) from None


@pytest.fixture(scope="session")
def isolation_target(isolation_settings: IsolationSettings) -> Iterator[str]:
    """Base URL of the server under test; without a target, the embedded vLLM server (one per session)."""
    if isolation_settings.target:
        yield isolation_settings.target.rstrip("/")
        return
    from harness.stacks.vllm import EmbeddedServer

    server = EmbeddedServer()
    try:
        server.start()
    except Exception as exc:
        pytest.fail(f"no --isolation-target given and the embedded vLLM server could not start "
                    f"({type(exc).__name__}: {exc}); pass --isolation-target URL or install harness[embedded]",
                    pytrace=False)
    try:
        yield server.base_url
    finally:
        server.stop()


@pytest.fixture
def run_scenario(request: pytest.FixtureRequest, isolation_target: str,
                 isolation_settings: IsolationSettings) -> ScenarioRunner:
    """A callable: `run_scenario(path | Scenario | yaml_text, **options) -> RunResult`."""
    marker = request.node.get_closest_marker(MARKER)
    defaults = dict(marker.kwargs) if marker else {}
    unknown = set(defaults) - RUN_OPTIONS
    if unknown:
        pytest.fail(f"@pytest.mark.{MARKER}: unknown option(s) {sorted(unknown)}; known: {sorted(RUN_OPTIONS)}",
                    pytrace=False)
    return ScenarioRunner(request, isolation_target, isolation_settings, defaults)


# --- running --------------------------------------------------------------------------------------


class ScenarioRunner:
    """Runs isolation scenarios for one test, each run in its own report folder."""

    def __init__(self, request: pytest.FixtureRequest, target: str, settings: IsolationSettings,
                 defaults: dict[str, Any]) -> None:
        self.request = request
        self.target = target
        self.settings = settings
        self.defaults = defaults
        self.outcomes: list[RunResult] = []
        self._calls = 0

    def __call__(self, scenario: str | Path | Scenario | Sequence[str | Path | Scenario], *,
                 policy: str | None = None, tolerance: float | None = None, timeout: float | None = None,
                 seed: int | None = None, counterfactual: bool | None = None, solo: bool | None = None,
                 known_findings: str | Path | None = None, check: bool | None = None,
                 allow_unknown: bool | None = None) -> RunResult:
        """Run `scenario` (a file or folder path, a `Scenario`, YAML text, or a list of these)
        against the target; return the outcome. With `check` (the default) a verdict other than
        PASS raises `IsolationFailure` with the violations and reproducers in its message;
        `allow_unknown=True` lets an UNKNOWN verdict through."""
        __tracebackhide__ = True
        given = {"policy": policy, "tolerance": tolerance, "timeout": timeout, "seed": seed,
                 "counterfactual": counterfactual, "solo": solo, "known_findings": known_findings,
                 "check": check, "allow_unknown": allow_unknown}
        opts = dict(self.defaults) | {k: v for k, v in given.items() if v is not None}
        from harness.engine import RunOptions
        from harness.known import load_known_findings

        report_dir = self._next_report_dir()
        loaded = scenario_objects(scenario, self._test_dir())
        s = self.settings
        known = Path(opts["known_findings"]) if opts.get("known_findings") else s.known_findings
        options = RunOptions(
            seed=opts.get("seed", s.seed), policy=opts.get("policy", s.policy),
            tolerance=opts.get("tolerance", s.tolerance), timeout_s=opts.get("timeout", s.timeout),
            counterfactual=opts.get("counterfactual", s.counterfactual), solo=opts.get("solo", s.solo),
            known_findings=tuple(load_known_findings(known)) if known else (),
            scenario_files=tuple(source for source, _ in loaded),
        )
        outcome = run_objects([sc for _, sc in loaded], self.target, options, report_dir)
        self.outcomes.append(outcome)
        node = self.request.node
        node.user_properties.append(("isolation_verdict", outcome.verdict.value))
        node.user_properties.append(("isolation_report", str(report_dir)))
        if opts.get("check", True):
            assert_isolated(outcome, allow_unknown=bool(opts.get("allow_unknown", False)))
        return outcome

    def _test_dir(self) -> Path | None:
        path = getattr(self.request.node, "path", None)
        return Path(path).parent if path is not None else None

    def _next_report_dir(self) -> Path:
        if self.settings.report_root is not None:
            base = self.settings.report_root / _safe_name(self.request.node.nodeid)
        else:
            base = self.request.getfixturevalue("tmp_path") / "isolation"
        self._calls += 1
        return base if self._calls == 1 else base.with_name(f"{base.name}-{self._calls}")


def run_objects(scenarios: list[Scenario], target: str, options: RunOptions, report_dir: Path) -> RunResult:
    """One run of `scenarios` against `target` with reports in `report_dir`, also from inside a
    running event loop (then in a worker thread)."""
    from rich.console import Console

    from harness.frontends.runs import run_and_report
    from harness.stacks.external import ExternalStack

    def go() -> RunResult:
        return run_and_report(scenarios, ExternalStack(target), options, report_dir, Console(stderr=True))

    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return go()
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(go).result()


def scenario_objects(scenario: Any, test_dir: Path | None = None) -> list[tuple[str, Scenario]]:
    """(source, Scenario) for each item: a `Scenario` as given, YAML text parsed in memory, a file
    or folder path loaded (a relative path is looked up in the current folder, then beside the
    test file)."""
    from harness.scenario.io import ScenarioError, load_scenarios, parse_scenario
    from harness.scenario.model import Scenario

    items = list(scenario) if isinstance(scenario, list | tuple) else [scenario]
    if not items:
        raise ScenarioError("run_scenario: no scenario given")
    out: list[tuple[str, Scenario]] = []
    for i, item in enumerate(items):
        if isinstance(item, Scenario):
            out.append((f"<run_scenario Scenario #{i + 1}>", item))
        elif isinstance(item, str) and "\n" in item:
            source = f"<run_scenario YAML #{i + 1}>"
            out.append((source, parse_scenario(item, source)))
        elif isinstance(item, str | Path):
            p = Path(item).expanduser()
            if not p.is_absolute() and not p.exists() and test_dir is not None and (test_dir / p).exists():
                p = test_dir / p
            if not p.exists():
                raise ScenarioError(f"run_scenario: {item}: no such file or folder (looked in the current folder"
                                    + (f" and in {test_dir}" if test_dir else "") + ")")
            out += [(str(path), sc) for path, sc in load_scenarios([p])]
        else:
            raise TypeError(f"run_scenario: expected a path, a Scenario or YAML text, got {type(item).__name__}")
    return out


def _safe_name(text: str) -> str:
    return re.sub(r"[^\w.-]+", "_", text).strip("_")[-120:] or "test"


# --- assertion and failure message ----------------------------------------------------------------


def assert_isolated(outcome: RunResult, allow_unknown: bool = False) -> None:
    """Raise `IsolationFailure` unless the verdict is PASS (or UNKNOWN with `allow_unknown`)."""
    __tracebackhide__ = True
    from harness.verdict import Verdict

    if outcome.verdict is Verdict.PASS or (allow_unknown and outcome.verdict is Verdict.UNKNOWN):
        return
    raise IsolationFailure(format_outcome(outcome), outcome)


def format_outcome(outcome: RunResult) -> str:
    """The failure message: verdict, each violation in words, then the reproducers inline."""
    from harness.verdict import Verdict

    d = outcome.report_dir
    lines = [f"isolation verdict {outcome.verdict.value.upper()}; report folder {d} "
             "(report.html, report.json, junit.xml, history.jsonl)"]
    if outcome.error:
        lines.append(f"the run stopped early: {outcome.error}")
    violations = [v for r in outcome.results for v in r.violations]
    if violations:
        lines.append(f"{len(violations)} violation(s):")
        lines += [f"  [{v.check}] {v.scenario}: {v.message}" for v in violations]
    if outcome.verdict is Verdict.UNKNOWN:
        for r in outcome.results:
            if r.verdict is Verdict.UNKNOWN:
                why = "; ".join(r.notes) or r.description or "could not decide"
                lines.append(f"  [{r.name}] UNKNOWN: {why}")
    reproducers = [Path(p) for p in outcome.reproducers]
    if not reproducers and d is not None and (d / "reproducers").is_dir():
        reproducers = sorted(p for p in (d / "reproducers").iterdir() if p.is_dir())
    for i, folder in enumerate(reproducers):
        if i >= INLINE_REPRODUCERS:
            lines.append(f"{len(reproducers) - INLINE_REPRODUCERS} more reproducer(s): "
                         + ", ".join(str(p) for p in reproducers[INLINE_REPRODUCERS:]))
            break
        lines.append(f"reproducer {i + 1} of {len(reproducers)}: {folder}")
        for name in ("scenario.yaml", "requests.sh"):
            lines.append(f"----- {folder / name} -----")
            lines.append(_quote(folder / name))
    return "\n".join(lines)


def _quote(path: Path) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError as exc:
        return f"(cannot read: {exc.strerror})"
    if len(text) > INLINE_CHARS:
        return text[:INLINE_CHARS] + f"\n... ({len(text) - INLINE_CHARS} more characters in {path})"
    return text.rstrip("\n")


__all__ = ["IsolationFailure", "IsolationSettings", "ScenarioRunner", "assert_isolated", "format_outcome",
           "run_objects", "scenario_objects"]
