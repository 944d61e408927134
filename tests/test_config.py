"""Configuration files for `harness run`: isolation.toml or [tool.harness], flags over the file.

Unit tests only: `run_isolation` is replaced by a stub that records the RunConfig it was given.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.checks.compare import DEFAULT_TOLERANCE
from harness.frontends.cli import main
from harness.frontends.commands import run as run_cmd
from harness.frontends.config import RUN_DEFAULTS, ConfigError, FileConfig, find_config, load_config, merge
from harness.frontends.runs import RunConfig
from harness.scenario.library import library_path
from harness.verdict import Verdict


class _Stub:
    verdict = Verdict.PASS
    exit_code = 0


@pytest.fixture
def captured(monkeypatch: pytest.MonkeyPatch) -> list[RunConfig]:
    """The RunConfigs `harness run` would have run."""
    seen: list[RunConfig] = []

    def fake(cfg: RunConfig) -> _Stub:
        seen.append(cfg)
        return _Stub()

    monkeypatch.setattr(run_cmd, "run_isolation", fake)
    return seen


@pytest.fixture
def here(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    for var in ("HARNESS_TARGET", "HARNESS_POLICY", "HARNESS_REPORT_DIR", "HARNESS_API_KEY", "OPENAI_API_KEY"):
        monkeypatch.delenv(var, raising=False)
    return tmp_path


FULL = """
target = "http://gpu-box:8000"
scenario = ["scenarios/a.yaml", "more"]
report-dir = "out/iso"
seed = 7
tolerance = 0.01
policy = "salted"
timeout = 30
known-findings = "kf.yaml"
no-solo = true
no-counterfactual = false
"""


def test_defaults_unchanged_without_a_file(here: Path, captured: list[RunConfig]) -> None:
    assert main(["run"]) == 0
    cfg = captured[0]
    assert captured == [RunConfig()]
    assert cfg.connection is not None and not cfg.connection.tenants and not cfg.connection.allow_disruptive
    assert cfg.target is None and cfg.scenario_paths == [library_path()] and cfg.report_dir == Path("reports/latest")
    assert cfg.tolerance == DEFAULT_TOLERANCE and cfg.policy == "shared-prefix" and cfg.timeout_s == 60.0
    assert cfg.solo and cfg.counterfactual and cfg.known_findings is None and cfg.seed is None


def test_isolation_toml_in_the_current_folder(here: Path, captured: list[RunConfig]) -> None:
    (here / "isolation.toml").write_text(FULL)
    assert main(["run"]) == 0
    assert captured == [RunConfig(target="http://gpu-box:8000", scenario_paths=[Path("scenarios/a.yaml"), Path("more")],
                                  report_dir=Path("out/iso"), seed=7, tolerance=0.01, policy="salted", timeout_s=30.0,
                                  counterfactual=True, solo=False, known_findings=Path("kf.yaml"))]


def test_flags_override_the_file(here: Path, captured: list[RunConfig]) -> None:
    (here / "isolation.toml").write_text(FULL)
    assert main(["run", "--target", "http://other:1", "--policy", "shared-prefix", "--scenario", "x.yaml",
                 "--seed", "0", "--no-counterfactual"]) == 0
    cfg = captured[0]
    assert cfg.target == "http://other:1" and cfg.policy == "shared-prefix"
    assert cfg.scenario_paths == [Path("x.yaml")]  # flags replace the file's list, they do not extend it
    assert cfg.seed == 0  # a flag equal to a falsy value still counts as given
    assert cfg.counterfactual is False and cfg.solo is False  # no-solo from the file, no-counterfactual from the flag
    assert cfg.report_dir == Path("out/iso") and cfg.timeout_s == 30.0


def test_pyproject_tool_harness(here: Path, captured: list[RunConfig]) -> None:
    (here / "pyproject.toml").write_text('[project]\nname = "x"\n\n[tool.harness]\ntarget = "http://a:1"\n'
                                        'scenario = "iso"\n')
    assert main(["run"]) == 0
    assert captured[0].target == "http://a:1" and captured[0].scenario_paths == [Path("iso")]


def test_isolation_toml_wins_over_pyproject(here: Path) -> None:
    (here / "pyproject.toml").write_text('[tool.harness]\ntarget = "http://py:1"\n')
    assert find_config() == (Path("pyproject.toml"), True)
    (here / "isolation.toml").write_text('target = "http://own:1"\n')
    assert find_config() == (Path("isolation.toml"), False)
    assert load_config().values == {"target": "http://own:1"}


def test_pyproject_without_tool_harness_is_no_config(here: Path, captured: list[RunConfig]) -> None:
    (here / "pyproject.toml").write_text('[project]\nname = "x"\n[tool.ruff]\nline-length = 100\n')
    assert find_config() is None and load_config() == FileConfig()
    assert main(["run"]) == 0 and captured == [RunConfig()]


def test_explicit_config_resolves_paths_against_its_folder(here: Path, captured: list[RunConfig]) -> None:
    (here / "ci").mkdir()
    (here / "ci" / "iso.toml").write_text('scenario = ["../scenarios", "/abs/s.yaml"]\nreport_dir = "out"\n')
    (here / "isolation.toml").write_text('target = "http://ignored:1"\n')
    assert main(["run", "--config", "ci/iso.toml"]) == 0
    cfg = captured[0]
    assert cfg.target is None  # --config replaces the file found by default, it does not add to it
    assert cfg.scenario_paths == [Path("ci/../scenarios"), Path("/abs/s.yaml")]
    assert cfg.report_dir == Path("ci/out")  # underscores are accepted for dashes


def test_explicit_pyproject_is_read_from_tool_harness(tmp_path: Path) -> None:
    p = tmp_path / "pyproject.toml"
    p.write_text('[tool.harness]\npolicy = "salted"\n')
    file = load_config(p)
    assert file.values == {"policy": "salted"} and file.source == f"{p} [tool.harness]"
    p.write_text('[project]\nname = "x"\n')
    with pytest.raises(ConfigError, match=r"no \[tool.harness\] table"):
        load_config(p)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('targt = "http://x"\n', "unknown key 'targt' (did you mean 'target'?); known keys: target, scenario"),
        ('[tool]\nx = 1\n', "unknown key 'tool'"),
        ('seed = "7"\n', "key 'seed': expected an integer, got '7'"),
        ("seed = true\n", "key 'seed': expected an integer, got True"),
        ('policy = "open"\n', "key 'policy': expected one of shared-prefix, salted, got 'open'"),
        ("timeout = 0\n", "key 'timeout': expected a number above 0, got 0"),
        ("tolerance = -1.0\n", "key 'tolerance': expected a number of at least 0"),
        ('no-solo = "yes"\n', "key 'no-solo': expected true or false, got 'yes'"),
        ("scenario = []\n", "key 'scenario': expected a path or a non-empty list of paths"),
        ('scenario = ["a", 3]\n', "key 'scenario': expected a path or a non-empty list of paths"),
        ('target = ""\n', "key 'target': expected a non-empty string"),
        ('report-dir = "a"\nreport_dir = "b"\n', "key 'report_dir' given twice (also as 'report-dir')"),
        ("target = \n", "not valid TOML"),
    ],
)
def test_bad_file_is_exit_2_naming_file_and_key(here: Path, captured: list[RunConfig],
                                                capsys: pytest.CaptureFixture[str], text: str, message: str) -> None:
    (here / "isolation.toml").write_text(text)
    assert main(["run"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: isolation.toml: ") and message in err, err
    assert captured == []  # nothing ran


def test_unknown_key_in_pyproject_names_the_table(here: Path, captured: list[RunConfig],
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    (here / "pyproject.toml").write_text('[tool.harness]\nreport = "x"\n')
    assert main(["run"]) == 2
    assert "error: pyproject.toml [tool.harness]: unknown key 'report'" in capsys.readouterr().err


def test_missing_explicit_config_is_exit_2(here: Path, captured: list[RunConfig],
                                           capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", "--config", "nope.toml"]) == 2
    assert "error: nope.toml: no such configuration file" in capsys.readouterr().err


def test_the_file_in_use_is_named(here: Path, captured: list[RunConfig], capsys: pytest.CaptureFixture[str]) -> None:
    (here / "isolation.toml").write_text('seed = 3\n')
    main(["run"])
    assert "config: isolation.toml" in capsys.readouterr().err


def test_merge_order() -> None:
    file = FileConfig("f", Path("f"), {"policy": "salted", "timeout": 5.0})
    out = merge({"policy": None, "timeout": 9.0}, file)
    assert out["policy"] == "salted" and out["timeout"] == 9.0 and out["report_dir"] == RUN_DEFAULTS["report_dir"]
    out["scenario"].append(Path("x"))
    assert RUN_DEFAULTS["scenario"] == [library_path()]  # defaults are copied, never shared


def test_every_key_mirrors_a_flag_of_harness_run() -> None:
    from harness.frontends.cli import build_parser
    from harness.frontends.config import CONNECTION_KEYS, KEYS

    sub = next(a for a in build_parser()._subparsers._group_actions)  # type: ignore[union-attr]
    flags = {o.lstrip("-") for a in sub.choices["run"]._actions for o in a.option_strings if o.startswith("--")}
    file_only = {"api-key-env", "headers", "tenants"}  # a file names variables; the flags are --api-key, --header
    assert set(KEYS) - file_only == flags - {"help", "config", "header"}
    assert {dest for key, (dest, _) in KEYS.items() if key not in CONNECTION_KEYS} == set(RUN_DEFAULTS)
