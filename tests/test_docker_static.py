"""docker/ checked without Docker (no daemon or compose plugin on these machines).

The compose files parse and wire the services as documented (health checks, depends_on, the
harness run against http://vllm:8000); the Dockerfiles copy only files that exist and that their
ignore files let through; and the Dockerfiles' RUN lines are the Makefile's set-up lines, parsed
from both files and compared, so a change to one that is not made in the other fails here.
"""

from __future__ import annotations

import argparse
import fnmatch
import re
import shlex
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

from harness.frontends.cli import build_parser
from harness.scenario.io import load_scenario

ROOT = Path(__file__).resolve().parents[1]
DOCKER = ROOT / "docker"
VAR = re.compile(r"\$\{(\w+)(?:(:?[-?])((?:[^{}]|\{[^{}]*\})*))?\}")


# --- small parsers ----------------------------------------------------------------------------------


def dockerfile(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs: comments dropped, continuation lines joined."""
    out: list[tuple[str, str]] = []
    pending = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line = pending + line
        pending = ""
        word, _, rest = line.partition(" ")
        out.append((word.upper(), " ".join(rest.split())))
    return out


def run_commands(path: Path) -> list[str]:
    """Every shell command of the Dockerfile's RUN lines, split at `&&`."""
    return [c.strip() for kw, args in dockerfile(path) if kw == "RUN" for c in args.split("&&")]


def makefile() -> tuple[dict[str, str], dict[str, list[str]]]:
    """(variables, target -> recipe lines), with $(VAR) references expanded."""
    variables: dict[str, str] = {}
    recipes: dict[str, list[str]] = {}
    current: str | None = None
    for line in (ROOT / "Makefile").read_text().splitlines():
        if line.startswith("\t") and current is not None:
            recipes[current].append(line.strip())
            continue
        m = re.match(r"^([A-Z_]+)\s*(?::=|\?=|=)\s*(.*)$", line)
        if m:
            variables[m.group(1)] = m.group(2).strip()
            current = None
            continue
        m = re.match(r"^([^\s:#=][^:=]*):(?!=)", line)
        current = None
        if m:
            for target in m.group(1).split():
                current = expand(target, variables)
                recipes.setdefault(current, [])
    return variables, {t: [expand(c, variables) for c in cmds] for t, cmds in recipes.items()}


def expand(text: str, variables: dict[str, str]) -> str:
    for _ in range(10):
        new = re.sub(r"\$\((\w+)\)", lambda m: variables.get(m.group(1), m.group(0)), text)
        if new == text:
            break
        text = new
    return text


def interpolate(value: str, env: dict[str, str]) -> str:
    """Compose's ${VAR}, ${VAR:-default} and ${VAR:?error} (the forms the compose files use)."""

    def one(m: re.Match[str]) -> str:
        name, op, arg = m.group(1), m.group(2), m.group(3)
        if env.get(name):
            return env[name]
        if op in (":-", "-"):
            return interpolate(arg or "", env)
        if op in (":?", "?"):
            raise KeyError(f"{name}: {arg}")
        return ""

    return VAR.sub(one, value)


def compose(name: str) -> dict[str, Any]:
    data = yaml.safe_load((DOCKER / name).read_text())
    assert isinstance(data, dict) and set(data["services"]) == {"vllm", "harness"}, data
    return data


def compose_variables(name: str) -> set[str]:
    return {m.group(1) for m in VAR.finditer((DOCKER / name).read_text().split("\nservices:", 1)[1])}


def ignored(ignore_file: Path, rel: str) -> bool:
    """Whether a path is left out of the build context (last matching .dockerignore pattern wins)."""
    result = False
    for pat in (p.strip() for p in ignore_file.read_text().splitlines()):
        if not pat or pat.startswith("#"):
            continue
        negate = pat.startswith("!")
        pat = pat.lstrip("!")
        parts = rel.split("/")
        prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        if pat == "**" or any(fnmatch.fnmatch(p, pat) for p in prefixes) or \
                (pat.startswith("**/") and any(fnmatch.fnmatch(x, pat[3:]) for x in parts)):
            result = not negate
    return result


# --- the Makefile and the Dockerfiles agree -----------------------------------------------------------


def test_makefile_setup_is_what_the_images_rely_on() -> None:
    variables, recipes = makefile()
    assert "setup" in recipes and variables["PY"] == "$(VENV)/bin/python"
    stamp = recipes[".venv/.setup-done"]
    assert ".venv/bin/python -m pip install -q --upgrade pip" in stamp
    assert ".venv/bin/python -m pip install -q -e '.[embedded,test]'" in stamp
    assert any(c.startswith(".venv/bin/python -m pip uninstall -y -q torchvision torchaudio torchcodec")
               for c in stamp), stamp


def test_harness_image_runs_the_makefile_install_without_the_embedded_extra() -> None:
    _, recipes = makefile()
    pip_lines = [c for c in recipes[".venv/.setup-done"] if " -m pip install " in c]
    expected = [c.replace(".venv/bin/python", "python").replace("-e '.[embedded,test]'", ".") for c in pip_lines]
    assert run_commands(DOCKER / "Dockerfile") == expected
    text = (DOCKER / "Dockerfile").read_text()
    assert "vllm" not in " ".join(run_commands(DOCKER / "Dockerfile")) and "uninstall" not in text


def test_harness_image_entrypoint() -> None:
    steps = dockerfile(DOCKER / "Dockerfile")
    assert steps[0] == ("FROM", "python:3.11-slim")
    assert ("ENTRYPOINT", '["kvbleed"]') in steps
    assert ("WORKDIR", "/app") in steps  # so the default scenarios/ and known-findings.yaml resolve


def test_cpu_image_runs_make_setup_and_serves_on_all_interfaces() -> None:
    steps = dockerfile(DOCKER / "Dockerfile.cpu")
    assert steps[0] == ("FROM", "python:3.11-slim")
    cmds = run_commands(DOCKER / "Dockerfile.cpu")
    assert "make setup" in cmds  # the Makefile's own set-up, uninstall of torchvision & co included
    apt = next(c for c in cmds if c.startswith("apt-get install"))
    assert {"make", "g++", "libnuma1"} <= set(apt.split())
    cmd = next(args for kw, args in steps if kw == "CMD")
    argv = yaml.safe_load(cmd)  # a JSON array
    assert argv[:2] == [".venv/bin/kvbleed", "serve"] and argv[argv.index("--port") + 1] == "8000"
    assert argv[argv.index("--host") + 1] == "0.0.0.0"


def _subcommand(name: str) -> argparse.ArgumentParser:
    """The parser of one `harness` subcommand (argparse has no public accessor for it)."""
    for action in build_parser()._actions:
        if isinstance(action.choices, dict) and name in action.choices:
            parser = action.choices[name]
            assert isinstance(parser, argparse.ArgumentParser)
            return parser
    raise AssertionError(f"no `harness {name}` subcommand")


def test_cpu_image_command_parses_with_harness_serve() -> None:
    serve = _subcommand("serve")
    if "--host" not in serve._option_string_actions:
        pytest.xfail("`harness serve --host` is not there yet; docker/Dockerfile.cpu needs it")
    argv = yaml.safe_load(next(a for k, a in dockerfile(DOCKER / "Dockerfile.cpu") if k == "CMD"))
    args = serve.parse_args(argv[2:])
    assert args.host == "0.0.0.0" and args.port == 8000


@pytest.mark.parametrize("name", ["Dockerfile", "Dockerfile.cpu"])
def test_copied_files_exist_and_are_in_the_build_context(name: str) -> None:
    ignore = DOCKER / f"{name}.dockerignore"
    copies = [args.split() for kw, args in dockerfile(DOCKER / name) if kw == "COPY"]
    assert copies
    for *sources, _dest in copies:
        for src in sources:
            assert (ROOT / src).exists(), src
            assert not ignored(ignore, src), f"{src} is excluded by {ignore.name}"
    for junk in (".venv/bin/python", ".cache/embedded-model", "reports/latest/report.json",
                 "harness/__pycache__/x.pyc"):
        assert ignored(ignore, junk), junk


# --- the compose files ------------------------------------------------------------------------------


def _health_url(service: dict[str, Any]) -> str:
    test = service["healthcheck"]["test"]
    assert test[0] == "CMD"
    url = re.search(r"https?://[^'\"]+", " ".join(test))
    assert url, test
    return url.group(0)


@pytest.mark.parametrize("name", ["compose.gpu.yaml", "compose.cpu.yaml"])
def test_harness_waits_for_a_healthy_server_and_runs_against_it(name: str) -> None:
    services = compose(name)["services"]
    vllm, harness = services["vllm"], services["harness"]
    assert _health_url(vllm) == "http://localhost:8000/health"
    hc = vllm["healthcheck"]
    assert {"interval", "timeout", "retries", "start_period"} <= set(hc)
    assert harness["depends_on"] == {"vllm": {"condition": "service_healthy"}}
    assert harness["build"] == {"context": "..", "dockerfile": "docker/Dockerfile"}
    assert (DOCKER / harness["build"]["context"] / harness["build"]["dockerfile"]).resolve() == DOCKER / "Dockerfile"
    argv = shlex.split(interpolate(harness["command"], {}))
    assert argv[0] == "run" and argv[argv.index("--target") + 1] == "http://vllm:8000"
    assert argv[argv.index("--report-dir") + 1] == "/reports"
    assert any(v.endswith(":/reports") for v in harness["volumes"])
    # HARNESS_ARGS reaches the run as extra flags.
    extra = shlex.split(interpolate(harness["command"], {"HARNESS_ARGS": "--seed 3 --no-solo"}))
    assert extra[-3:] == ["--seed", "3", "--no-solo"]
    # Every flag parses with the real `harness run`.
    run = _subcommand("run")
    assert run.parse_args(extra[1:]).target == "http://vllm:8000"


def test_gpu_server_is_official_vllm_with_prefix_caching_on_a_gpu() -> None:
    vllm = compose("compose.gpu.yaml")["services"]["vllm"]
    assert interpolate(vllm["image"], {}) == "vllm/vllm-openai:latest"
    assert vllm["entrypoint"] == ["python3", "-m", "vllm.entrypoints.openai.api_server"]
    args = [interpolate(a, {"MODEL": "Qwen/Qwen2.5-0.5B-Instruct"}) for a in vllm["command"]]
    assert "--model=Qwen/Qwen2.5-0.5B-Instruct" in args
    assert {"--enable-prefix-caching", "--enable-prompt-tokens-details", "--host=0.0.0.0", "--port=8000"} <= set(args)
    with pytest.raises(KeyError, match="MODEL"):
        interpolate(vllm["command"][0], {})  # MODEL is required
    assert vllm["environment"]["VLLM_SERVER_DEV_MODE"] == "1"
    device = vllm["deploy"]["resources"]["reservations"]["devices"][0]
    assert device["driver"] == "nvidia" and "gpu" in device["capabilities"] and device["count"] == 1


def test_gpu_harness_settings_file_lists_every_scenario_that_needs_no_adapter() -> None:
    harness = compose("compose.gpu.yaml")["services"]["harness"]
    mount = next(v for v in harness["volumes"] if v.endswith(":/app/isolation.toml:ro"))
    toml_path = DOCKER / mount.split(":")[0]
    settings = tomllib.loads(toml_path.read_text())
    from harness.frontends.config import parse_table

    parse_table(settings, str(toml_path), Path("/app"))  # every key is one `harness run` knows
    listed = {Path(p).name for p in settings["scenario"]}
    library = {p.name: load_scenario(p) for p in (ROOT / "scenarios").glob("*.yaml")}
    needs_adapter = {n for n, s in library.items() if any(t.adapter for t in s.tenants)}
    assert listed <= set(library), listed - set(library)
    assert listed == set(library) - needs_adapter


def test_cpu_server_is_built_from_the_cpu_dockerfile() -> None:
    services = compose("compose.cpu.yaml")["services"]
    assert services["vllm"]["build"] == {"context": "..", "dockerfile": "docker/Dockerfile.cpu"}
    assert "deploy" not in services["vllm"]  # no GPU reservation
    argv = shlex.split(interpolate(services["harness"]["command"], {}))
    assert argv[argv.index("--known-findings") + 1] == "known-findings.yaml"
    assert (ROOT / "known-findings.yaml").is_file()


@pytest.mark.parametrize("name", ["compose.gpu.yaml", "compose.cpu.yaml"])
def test_every_compose_variable_is_documented(name: str) -> None:
    docs = (ROOT / "docs" / "integrations.md").read_text()
    header = (DOCKER / name).read_text().split("\nservices:", 1)[0]
    for var in compose_variables(name):
        assert f"`{var}`" in docs, f"{var} (used in {name}) is not documented in docs/integrations.md"
        assert var in header, f"{var} is not named in the header comment of {name}"


# --- the user guide's snippets ----------------------------------------------------------------------


def _blocks(lang: str) -> list[str]:
    text = (ROOT / "docs" / "integrations.md").read_text()
    return re.findall(rf"```{lang}\n(.*?)```", text, flags=re.S)


def test_guide_yaml_snippets_parse_and_upload_the_report() -> None:
    blocks = [yaml.safe_load(b) for b in _blocks("yaml")]
    github = next(b for b in blocks if "jobs" in b)
    steps = github["jobs"]["isolation"]["steps"]
    assert any("make isolation-check TARGET=" in s.get("run", "") for s in steps)
    upload = next(s for s in steps if s.get("uses", "").startswith("actions/upload-artifact"))
    assert upload["if"] == "always()" and upload["with"]["path"] == "reports/latest/"
    gitlab = next(b for b in blocks if "isolation" in b and "script" in b["isolation"])["isolation"]
    assert any("make isolation-check" in c for c in gitlab["script"])
    assert gitlab["artifacts"]["when"] == "always"
    assert gitlab["artifacts"]["reports"]["junit"] == "reports/latest/junit.xml"
    _, recipes = makefile()
    assert "isolation-check" in recipes and "reports/latest" in makefile()[0]["REPORT_DIR"]


def test_guide_toml_snippets_use_only_known_keys() -> None:
    from harness.frontends.config import parse_table

    blocks = [tomllib.loads(b) for b in _blocks("toml")]
    assert len(blocks) == 2
    parse_table(blocks[0], "isolation.toml", ROOT)
    parse_table(blocks[1]["tool"]["harness"], "pyproject.toml [tool.harness]", ROOT)


def test_guide_commands_parse_with_the_real_cli() -> None:
    parser = build_parser()
    lines = [ln.strip() for b in _blocks("sh") for ln in b.replace("\\\n", " ").splitlines()]
    runs = [shlex.split(ln.split("kvbleed ", 1)[1]) for ln in lines if re.match(r"^(\S+=\S+ )*kvbleed run", ln)]
    assert runs
    for argv in runs:
        parser.parse_args(argv)
    for block in _blocks("python"):
        compile(block, "docs/integrations.md", "exec")
    plugin = (ROOT / "harness" / "frontends" / "pytest_plugin.py").read_text()
    for opt in set(re.findall(r"--isolation-[a-z-]+", (ROOT / "docs" / "integrations.md").read_text())):
        assert f'"{opt}"' in plugin, opt
