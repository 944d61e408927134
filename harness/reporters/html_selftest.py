"""The selftest's page: the fault x check matrix from selftest.json, linking each fault's own report."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from harness.reporters.html_env import ReportError, env


def render_selftest_html(report_dir: Path) -> str:
    """The selftest matrix (fault x check) from selftest.json, linking each fault's own report."""
    report_dir = Path(report_dir)
    path = report_dir / "selftest.json"
    if not path.is_file():
        raise ReportError(f"{report_dir} holds no selftest.json")
    data = json.loads(path.read_text(encoding="utf-8"))
    faults: dict[str, dict[str, Any]] = data.get("faults", {})
    checks = sorted({c for r in faults.values() for c in r.get("checks", {})})
    try:
        from harness.faults import REGISTRY as CATALOG
        about = {k: s.description for k, s in CATALOG.items()}
    except ImportError:  # pragma: no cover - the catalog ships with the harness
        about = {}
    rows = []
    for name, r in faults.items():
        detected = bool(r.get("detected_by"))
        good = r.get("good")  # written by the selftest (capability-aware); older files: judged here
        if good is None:
            good = detected if r.get("kind") == "fault" else (not detected and r.get("verdict") == "pass")
        rows.append({"name": name, "kind": r.get("kind", ""), "verdict": r.get("verdict", "unknown"), "good": good,
                     "cells": [r.get("checks", {}).get(c, "") for c in checks], "injections": r.get("injections"),
                     "to_detect": r.get("requests_to_detection"), "requests": r.get("requests"),
                     "error": r.get("error") or "", "about": about.get(name, ""), "reason": r.get("reason") or "",
                     "link": f"{name}/report.html" if (report_dir / name / "report.html").is_file() else ""})
    return env().get_template("selftest.html.j2").render(ok=bool(data.get("ok")), checks=checks, rows=rows)


def write_selftest_html(report_dir: Path) -> Path:
    """Render report_dir/report.html for a selftest folder; returns its path."""
    out = Path(report_dir) / "report.html"
    out.write_text(render_selftest_html(report_dir), encoding="utf-8")
    return out
