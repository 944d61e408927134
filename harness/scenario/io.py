"""Load and save scenarios as YAML, with errors that name the file, the field and the problem."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import yaml
from pydantic import ValidationError

from harness.scenario.model import Scenario


class ScenarioError(ValueError):
    """A scenario file that cannot be used; the message says where and why."""


def _field_path(loc: tuple[object, ...], data: object) -> str:
    """Render a pydantic location as `users[1].tenant`, naming list items by their `name`."""
    parts: list[str] = []
    node = data
    for item in loc:
        if isinstance(item, int):
            node = node[item] if isinstance(node, list) and item < len(node) else None
            name = node.get("name") if isinstance(node, dict) else None
            parts.append(f"[{item}]" + (f" ({name})" if name else ""))
        else:
            parts.append(("." if parts else "") + str(item))
            node = node.get(item) if isinstance(node, dict) else None
    return "".join(parts) or "(top level)"


def parse_scenario(text: str, source: str = "<string>") -> Scenario:
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ScenarioError(f"{source}: not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ScenarioError(f"{source}: expected a mapping at the top level, got {type(data).__name__}")
    try:
        return Scenario.model_validate(data)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            loc = tuple(x for x in err["loc"] if not (isinstance(x, str) and x in {"int", "list[int]"}))
            msg = err["msg"].removeprefix("Value error, ")
            if err["type"] == "extra_forbidden":
                msg = "unknown field"
            problems.append(f"  {_field_path(loc, data)}: {msg}")
        raise ScenarioError(f"{source}: invalid scenario:\n" + "\n".join(problems)) from None


def load_scenario(path: Path) -> Scenario:
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise ScenarioError(f"{path}: cannot read: {exc.strerror}") from None
    return parse_scenario(text, str(path))


def load_scenarios(paths: list[Path]) -> list[tuple[Path, Scenario]]:
    """Load files and every *.yaml/*.yml under folders (not recursing into `found/`), sorted."""
    files: list[Path] = []
    for p in paths:
        p = Path(p)
        if p.is_dir():
            files.extend(sorted(f for f in p.iterdir() if f.suffix in {".yaml", ".yml"} and f.is_file()))
        elif p.exists():
            files.append(p)
        else:
            raise ScenarioError(f"{p}: no such file or folder")
    if not files:
        raise ScenarioError(f"no scenario files found in {', '.join(map(str, paths))}")
    loaded = [(f, load_scenario(f)) for f in files]
    names = [s.name for _, s in loaded]
    dup = {n for n, k in Counter(names).items() if k > 1}
    if dup:
        raise ScenarioError(f"scenario names must be unique; repeated: {sorted(dup)}")
    return loaded


def dump_scenario(scenario: Scenario, header: str = "") -> str:
    """YAML text for a scenario, with an optional comment header (one `# ` line per line)."""
    body = yaml.safe_dump(scenario.model_dump(mode="json", exclude_defaults=True), sort_keys=False)
    lines = "".join(f"# {line}\n" if line else "#\n" for line in header.splitlines())
    return lines + body
