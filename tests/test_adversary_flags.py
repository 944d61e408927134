"""`--adversary-budget` on `kvbleed run` (flag, configuration file, `make isolation-check
ADVERSARY_BUDGET=N`) and `--adversary` / `--adversary-budget` on `kvbleed explore`, without a server:
the values reach the engine's `RunOptions` and the exploration's `ExploreConfig`; a bad value is an
error, never ignored."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest

from harness.adversary.cases import DEFAULT_BUDGET
from harness.frontends import explore as explore_mod
from harness.frontends.cli import build_parser, main
from harness.frontends.commands import run as run_cmd
from harness.frontends.explore import ExploreConfig, ExploreResult

ROOT = Path(__file__).resolve().parents[1]


class _Stub:
    exit_code = 0


@pytest.fixture
def options(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """The `RunOptions` that `kvbleed run` hands the engine; no server is started."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("HARNESS_TARGET", raising=False)
    seen: list[Any] = []

    def files(paths: Any, stack: Any, opts: Any, *rest: Any, **kw: Any) -> _Stub:
        seen.append(opts)
        return _Stub()

    def isolation(cfg: Any) -> _Stub:
        seen.append(cfg.options())
        return _Stub()

    monkeypatch.setattr(run_cmd, "make_stack", lambda *a, **k: object())
    monkeypatch.setattr(run_cmd, "run_files", files)
    monkeypatch.setattr(run_cmd, "run_isolation", isolation)
    return seen


def test_run_hands_the_budget_to_the_engine(options: list[Any]) -> None:
    assert main(["run", "--target", "http://127.0.0.1:9", "--adversary-budget", "900"]) == 0
    assert [o.adversary_budget for o in options] == [900]


def test_run_without_the_flag_keeps_the_default_budget(options: list[Any]) -> None:
    assert main(["run", "--target", "http://127.0.0.1:9"]) == 0
    assert [o.adversary_budget for o in options] == [None]  # the engine then plans DEFAULT_BUDGET


def test_run_reads_the_budget_from_the_configuration_file(options: list[Any], tmp_path: Path) -> None:
    (tmp_path / "isolation.toml").write_text("adversary-budget = 120\n")
    assert main(["run", "--target", "http://127.0.0.1:9"]) == 0
    assert main(["run", "--target", "http://127.0.0.1:9", "--adversary-budget", "30"]) == 0  # the flag wins
    assert [o.adversary_budget for o in options] == [120, 30]


@pytest.mark.parametrize("value", ["0", "-3", "lots"])
def test_run_refuses_a_budget_that_is_not_a_request_count(options: list[Any], value: str) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["run", "--target", "http://127.0.0.1:9", "--adversary-budget", value])
    assert exit_.value.code == 2 and not options


def test_run_refuses_a_bad_budget_in_the_file(options: list[Any], tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "isolation.toml").write_text("adversary-budget = 0\n")
    assert main(["run", "--target", "http://127.0.0.1:9"]) == 2 and not options
    assert "adversary-budget" in capsys.readouterr().err


def test_the_help_says_what_the_flags_do() -> None:
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")  # the subcommands' parsers
    run_help = sub.choices["run"].format_help()  # type: ignore[attr-defined]
    explore_help = sub.choices["explore"].format_help()  # type: ignore[attr-defined]
    assert "--adversary-budget N" in run_help and "hostile requests" in run_help and str(DEFAULT_BUDGET) in run_help
    assert "--adversary " in explore_help and "--adversary-budget N" in explore_help


def test_make_isolation_check_passes_the_budget_on() -> None:
    out = subprocess.run(["make", "-n", "isolation-check", "ADVERSARY_BUDGET=77"],
                         cwd=ROOT, capture_output=True, text=True, check=True, timeout=60).stdout
    assert "--adversary-budget 77" in out
    plain = subprocess.run(["make", "-n", "isolation-check"], cwd=ROOT, capture_output=True, text=True,
                           check=True, timeout=60).stdout
    assert "--adversary-budget" not in plain


@pytest.fixture
def explored(monkeypatch: pytest.MonkeyPatch) -> list[ExploreConfig]:
    """The `ExploreConfig` that `kvbleed explore` builds; nothing is generated or sent."""
    seen: list[ExploreConfig] = []

    def fake(cfg: ExploreConfig, on_example: Any = None) -> ExploreResult:
        seen.append(cfg)
        return ExploreResult(seed=cfg.seed or 0)

    monkeypatch.setattr(explore_mod, "explore", fake)
    return seen


def test_explore_draws_the_adversary_with_its_budget(explored: list[ExploreConfig], tmp_path: Path) -> None:
    base = ["explore", "--target", "http://127.0.0.1:9", "--examples", "1", "--seed", "3",
            "--report-dir", str(tmp_path)]
    main(base)
    main([*base, "--adversary"])
    main([*base, "--adversary", "--adversary-budget", "64"])
    assert [(c.adversary, c.adversary_budget) for c in explored] == [(False, None), (True, None), (True, 64)]


@pytest.mark.parametrize("extra", [["--adversary-budget", "64"], ["--adversary", "--adversary-budget", "0"]])
def test_explore_refuses_a_budget_without_the_adversary_or_below_one(explored: list[ExploreConfig], tmp_path: Path,
                                                                     extra: list[str]) -> None:
    argv = ["explore", "--target", "http://127.0.0.1:9", "--examples", "1", "--report-dir", str(tmp_path), *extra]
    assert main(argv) == 2 and not explored
