"""`mutants.json`: the kill matrix as data (rows, baselines, kill rate, wall time), merged across runs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

FILE = "mutants.json"


def read_mutants_json(folder: Path) -> dict[str, Any]:
    """The stored matrix in `folder`, or an empty one."""
    path = Path(folder) / FILE
    if path.is_file():
        state: dict[str, Any] = json.loads(path.read_text())
        state.setdefault("baselines", {})
        state.setdefault("mutants", {})
        return state
    return {"baselines": {}, "mutants": {}}


def write_mutants_json(state: dict[str, Any], folder: Path) -> Path:
    path = Path(folder) / FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(state, indent=2))
    return path
