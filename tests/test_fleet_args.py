"""`--replicas` and `--router-policy` on `kvbleed run` and `kvbleed serve`, without a server: the
values are validated where they are read (flags, configuration file, environment) and reach the
fleet stack's constructor; given for any other stack they are an error, never ignored."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from harness.frontends.cli import main
from harness.frontends.commands import run as run_cmd
from harness.frontends.commands import serve as serve_cmd
from harness.stacks.fleet import FleetStack
from harness.stacks.process import LaunchError


class _Stub:
    exit_code = 0


@pytest.fixture
def made(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> list[tuple[str | None, str, dict[str, Any]]]:
    """The stacks `kvbleed run` builds (target, name, options); nothing is started."""
    monkeypatch.chdir(tmp_path)
    for var in ("HARNESS_TARGET", "HARNESS_FLEET_REPLICAS", "HARNESS_FLEET_POLICY"):
        monkeypatch.delenv(var, raising=False)
    seen: list[tuple[str | None, str, dict[str, Any]]] = []

    def make(target: str | None, name: str = "vllm", **options: Any) -> Any:
        seen.append((target, name, options))
        return FleetStack(**options) if name == "vllm-fleet" else object()

    monkeypatch.setattr(run_cmd, "make_stack", make)
    monkeypatch.setattr(run_cmd, "run_files", lambda *a, **k: _Stub())
    monkeypatch.setattr(run_cmd, "run_isolation", lambda cfg: _Stub())
    return seen


def test_run_passes_the_flags_to_the_fleet(made: list[tuple[str | None, str, dict[str, Any]]]) -> None:
    assert main(["run", "--stack", "vllm-fleet", "--replicas", "3", "--router-policy", "round_robin"]) == 0
    assert made == [(None, "vllm-fleet", {"replicas": 3, "router_policy": "round_robin"})]


def test_run_without_flags_launches_the_fleet_with_its_defaults(made: list[tuple[str | None, str, dict[str, Any]]],
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HARNESS_FLEET_POLICY", "kv_aware")
    assert main(["run", "--stack", "vllm-fleet"]) == 0
    assert made == [(None, "vllm-fleet", {})]
    assert FleetStack().policy == "kv_aware" and FleetStack().size == 2  # the environment, beside the flags


def test_run_reads_the_configuration_file(made: list[tuple[str | None, str, dict[str, Any]]], tmp_path: Path) -> None:
    (tmp_path / "isolation.toml").write_text('stack = "vllm-fleet"\nreplicas = 4\nrouter-policy = "cache_aware"\n')
    assert main(["run", "--replicas", "2"]) == 0  # the flag over the file
    assert made == [(None, "vllm-fleet", {"replicas": 2, "router_policy": "cache_aware"})]


@pytest.mark.parametrize(("argv", "message"), [
    (["--stack", "vllm", "--replicas", "2"], "apply to --stack vllm-fleet only, not to --stack vllm"),
    (["--target", "http://127.0.0.1:9", "--router-policy", "kv_aware"], "not to a --target"),
])
def test_run_refuses_fleet_flags_without_a_fleet(made: list[tuple[str | None, str, dict[str, Any]]], argv: list[str],
                                                 message: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", *argv]) == 2
    assert message in capsys.readouterr().err and made == []


@pytest.mark.parametrize(("argv", "message"), [
    (["--replicas", "0"], "expected a whole number of replicas from 1 to 16"),
    (["--replicas", "two"], "expected a whole number of replicas"),
    (["--router-policy", "nearest"], "expected a router policy, one of cache_aware"),
])
def test_bad_values_are_usage_errors(made: list[tuple[str | None, str, dict[str, Any]]], argv: list[str],
                                     message: str, capsys: pytest.CaptureFixture[str]) -> None:
    for command in ("run", "serve"):
        with pytest.raises(SystemExit) as exit_:
            main([command, "--stack", "vllm-fleet", *argv])
        assert exit_.value.code == 2 and message in capsys.readouterr().err
    assert made == []


@pytest.mark.parametrize(("toml", "message"), [
    ('replicas = "3"', "key 'replicas': expected a whole number of replicas, not a string"),
    ("replicas = 40", "from 1 to 16"),
    ('router-policy = "nearest"', "key 'router-policy': expected a router policy"),
])
def test_bad_values_in_the_file_name_the_key(made: list[tuple[str | None, str, dict[str, Any]]], tmp_path: Path,
                                             toml: str, message: str, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "isolation.toml").write_text(f'stack = "vllm-fleet"\n{toml}\n')
    assert main(["run"]) == 2
    assert message in capsys.readouterr().err and made == []


def test_a_bad_environment_value_names_the_variable(made: list[tuple[str | None, str, dict[str, Any]]],
                                                    monkeypatch: pytest.MonkeyPatch,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("HARNESS_FLEET_REPLICAS", "many")
    assert main(["run", "--stack", "vllm-fleet"]) == 2
    assert "$HARNESS_FLEET_REPLICAS='many': expected a whole number of replicas" in capsys.readouterr().err
    assert main(["run", "--stack", "vllm-fleet", "--replicas", "2"]) == 0  # the flag wins over the variable


def test_serve_passes_the_flags_to_the_fleet(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    seen: list[FleetStack] = []

    def make(target: str | None, name: str = "vllm", **options: Any) -> FleetStack:
        assert name == "vllm-fleet"
        fleet = FleetStack(**options)
        seen.append(fleet)
        return fleet

    def start(self: FleetStack) -> str:
        raise LaunchError("not launched in a unit test")

    monkeypatch.setattr(serve_cmd, "make_stack", make)
    monkeypatch.setattr(FleetStack, "start", start)
    assert main(["serve", "--stack", "vllm-fleet", "--replicas", "3", "--router-policy", "kv_aware",
                 "--log", str(tmp_path / "router.log")]) == 2
    assert "not launched in a unit test" in capsys.readouterr().err
    assert [(f.size, f.policy) for f in seen] == [(3, "kv_aware")]
    assert main(["serve", "--stack", "vllm", "--replicas", "3"]) == 2
    assert "apply to --stack vllm-fleet only" in capsys.readouterr().err and len(seen) == 1


def test_help_names_the_flags(capsys: pytest.CaptureFixture[str]) -> None:
    for command in ("run", "serve"):
        with pytest.raises(SystemExit):
            main([command, "--help"])
        text = " ".join(capsys.readouterr().out.split())
        assert "--replicas N" in text and "--router-policy POLICY" in text and "vllm-fleet only" in text
        assert "sticky_least_loaded" in text and "$HARNESS_FLEET_REPLICAS" in text
