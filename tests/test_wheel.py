"""A clean install: the wheel, installed (not editable) into a fresh virtual environment with its
dependencies from the package index, runs from a folder outside the repository: --version, probe,
and a run of the default scenario library (package data) against a fake server; nothing is
written inside the installed package."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from harness import __version__
from tests.fake_stack import FakeStack

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[1]


def _sh(argv: list[str], cwd: Path, timeout: float = 600,
        ok: tuple[int, ...] = (0,)) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HARNESS_", "OPENAI_", "PYTHON", "VIRTUAL_ENV"))}
    out = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env)
    assert out.returncode in ok, f"{argv}: exit {out.returncode}\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
    return out


def _files(folder: Path) -> set[Path]:
    return {p for p in folder.rglob("*") if p.is_file() and "__pycache__" not in p.parts}


def test_wheel_installs_and_runs_outside_the_repository(tmp_path: Path) -> None:
    dist, venv, work = tmp_path / "dist", tmp_path / "venv", tmp_path / "elsewhere"
    work.mkdir()
    _sh([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(dist), str(ROOT)], cwd=tmp_path)
    wheel = next(dist.glob("kvbleed-*.whl"))
    _sh([sys.executable, "-m", "venv", str(venv)], cwd=tmp_path)
    py, cli = venv / "bin" / "python", venv / "bin" / "kvbleed"
    _sh([str(py), "-m", "pip", "install", "-q", "--disable-pip-version-check", str(wheel)], cwd=work)

    site = Path(_sh([str(py), "-c", "import harness, os; print(os.path.dirname(harness.__file__))"],
                    cwd=work).stdout.strip())
    assert venv in site.parents, site  # the installed copy, not the repository
    library = sorted(p.name for p in (site / "library").glob("*.yaml"))
    assert library == sorted(p.name for p in (ROOT / "scenarios").glob("*.yaml"))
    before = _files(site)

    assert _sh([str(cli), "--version"], cwd=work).stdout.strip() == f"kvbleed {__version__}"
    with FakeStack() as stack:
        caps = json.loads(_sh([str(cli), "probe", "--target", stack.base_url, "--json"], cwd=work).stdout)
        assert caps["target"] == stack.base_url
        # A short run of one packaged scenario ...
        _sh([str(cli), "run", "--target", stack.base_url, "--report-dir", "short", "--no-counterfactual",
             "--scenario", str(site / "library" / "salted-tenants.yaml")], cwd=work, ok=(0, 1, 2))
    report = json.loads((work / "short" / "report.json").read_text())
    assert report["metadata"]["requests"] > 0 and report["metadata"]["error"] is None, report["metadata"]
    # ... and the default library, found inside the installed package, loaded in full (the target is
    # unreachable: the run stops at once, UNKNOWN, with the files it would have run in its report).
    run = _sh([str(cli), "run", "--target", "http://127.0.0.1:9", "--report-dir", "default"], cwd=work, ok=(2,))
    report = json.loads((work / "default" / "report.json").read_text())
    files = report["metadata"]["scenario_files"]
    assert sorted(Path(f).name for f in files) == library, run.stderr[-2000:]
    assert all(site in Path(f).parents for f in files)
    assert _files(site) == before  # nothing written into the installed package
