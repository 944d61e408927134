"""Settings for `harness run` (and the pytest plugin) from a file, below the command-line flags.

Where the settings come from, highest first:
1. the flags given on the command line;
2. the file named by `--config FILE`, else `isolation.toml` in the current folder, else the
   `[tool.harness]` table of `pyproject.toml` in the current folder (the first that exists);
3. the built-in defaults (`RUN_DEFAULTS`, the defaults of `harness run`).

Keys mirror the long flags of `harness run` without the dashes in front (`report-dir`,
`known-findings`, `no-solo`, ...; `report_dir` is accepted too). Relative paths in a file are
taken relative to the folder holding that file. An unknown key or a value of the wrong type is a
`ConfigError` that names the file and the key (`harness run` exits 2 on it).
"""

from __future__ import annotations

import difflib
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.checks.compare import DEFAULT_TOLERANCE
from harness.stacks import STACKS

CONFIG_FILE = "isolation.toml"
PYPROJECT_FILE = "pyproject.toml"
POLICIES = ("shared-prefix", "salted")

RUN_DEFAULTS: dict[str, Any] = {
    "target": None,
    "scenario": [Path("scenarios")],
    "report_dir": Path("reports/latest"),
    "seed": None,
    "tolerance": DEFAULT_TOLERANCE,
    "policy": "shared-prefix",
    "timeout": 60.0,
    "known_findings": None,
    "no_solo": False,
    "no_counterfactual": False,
    "stack": "vllm",
}
"""The defaults of `harness run`, by argparse destination name."""


class ConfigError(ValueError):
    """A configuration file that cannot be used; the message names the file and the key."""


@dataclass(frozen=True)
class FileConfig:
    """Settings read from one file: `values` by argparse destination (`report_dir`), paths resolved."""

    source: str | None = None
    """How to name the file in messages: `isolation.toml`, `pyproject.toml [tool.harness]`; None: no file."""
    path: Path | None = None
    values: dict[str, Any] = field(default_factory=dict)


# --- value checkers: each returns the converted value or raises ValueError with what was expected --


def _str(v: Any, base: Path) -> str:
    if not isinstance(v, str) or not v:
        raise ValueError("expected a non-empty string")
    return v


def _path(v: Any, base: Path) -> Path:
    return base / Path(_str(v, base)).expanduser()


def _paths(v: Any, base: Path) -> list[Path]:
    items = [v] if isinstance(v, str) else v
    if not isinstance(items, list) or not items:
        raise ValueError("expected a path or a non-empty list of paths")
    try:
        return [_path(x, base) for x in items]
    except ValueError:
        raise ValueError("expected a path or a non-empty list of paths") from None


def _int(v: Any, base: Path) -> int:
    if isinstance(v, bool) or not isinstance(v, int):
        raise ValueError("expected an integer")
    return v


def _number(v: Any, base: Path) -> float:
    if isinstance(v, bool) or not isinstance(v, int | float):
        raise ValueError("expected a number")
    return float(v)


def _positive(v: Any, base: Path) -> float:
    x = _number(v, base)
    if x <= 0:
        raise ValueError("expected a number above 0")
    return x


def _non_negative(v: Any, base: Path) -> float:
    x = _number(v, base)
    if x < 0:
        raise ValueError("expected a number of at least 0")
    return x


def _policy(v: Any, base: Path) -> str:
    if v not in POLICIES:
        raise ValueError(f"expected one of {', '.join(POLICIES)}")
    return str(v)


def _stack(v: Any, base: Path) -> str:
    if v not in STACKS:
        raise ValueError(f"expected one of {', '.join(STACKS)}")
    return str(v)


def _bool(v: Any, base: Path) -> bool:
    if not isinstance(v, bool):
        raise ValueError("expected true or false")
    return v


KEYS: dict[str, tuple[str, Callable[[Any, Path], Any]]] = {
    "target": ("target", _str),
    "scenario": ("scenario", _paths),
    "report-dir": ("report_dir", _path),
    "seed": ("seed", _int),
    "tolerance": ("tolerance", _non_negative),
    "policy": ("policy", _policy),
    "timeout": ("timeout", _positive),
    "known-findings": ("known_findings", _path),
    "no-solo": ("no_solo", _bool),
    "no-counterfactual": ("no_counterfactual", _bool),
    "stack": ("stack", _stack),
}
"""File key -> (argparse destination, checker)."""


def find_config(folder: Path | None = None) -> tuple[Path, bool] | None:
    """The configuration file in `folder` (default: the current one): (path, is_pyproject), or None.

    `isolation.toml` wins over `pyproject.toml`; a `pyproject.toml` counts only when it has a
    `[tool.harness]` table.
    """
    folder = Path(".") if folder is None else Path(folder)
    own = folder / CONFIG_FILE
    if own.is_file():
        return own, False
    pyproject = folder / PYPROJECT_FILE
    if pyproject.is_file():
        data = _read_toml(pyproject, str(pyproject))
        if isinstance(data.get("tool"), dict) and "harness" in data["tool"]:
            return pyproject, True
    return None


def load_config(path: Path | None = None, folder: Path | None = None) -> FileConfig:
    """Read `path` (a `pyproject.toml` is read from its `[tool.harness]` table), else the file
    `find_config(folder)` finds; no file at all gives an empty `FileConfig`."""
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"{path}: no such configuration file")
        is_pyproject = path.name == PYPROJECT_FILE
    else:
        found = find_config(folder)
        if found is None:
            return FileConfig()
        path, is_pyproject = found
    source = f"{path} [tool.harness]" if is_pyproject else str(path)
    data = _read_toml(path, str(path))
    if is_pyproject:
        tool = data.get("tool")
        table = tool.get("harness") if isinstance(tool, dict) else None
        if table is None:
            raise ConfigError(f"{path}: no [tool.harness] table")
        if not isinstance(table, dict):
            raise ConfigError(f"{source}: expected a table")
        data = table
    return FileConfig(source, path, parse_table(data, source, path.parent))


def parse_table(data: Mapping[str, Any], source: str, base: Path) -> dict[str, Any]:
    """Check and convert one table of settings; keys by argparse destination, paths under `base`."""
    values: dict[str, Any] = {}
    seen: dict[str, str] = {}
    for raw_key, raw in data.items():
        key = raw_key.replace("_", "-")
        if key not in KEYS:
            hint = difflib.get_close_matches(key, KEYS, n=1)
            also = f" (did you mean {hint[0]!r}?)" if hint else ""
            raise ConfigError(f"{source}: unknown key {raw_key!r}{also}; known keys: {', '.join(KEYS)}")
        if key in seen:
            raise ConfigError(f"{source}: key {raw_key!r} given twice (also as {seen[key]!r})")
        seen[key] = raw_key
        dest, check = KEYS[key]
        try:
            values[dest] = check(raw, base)
        except ValueError as exc:
            raise ConfigError(f"{source}: key {raw_key!r}: {exc}, got {raw!r}") from None
    return values


def merge(explicit: Mapping[str, Any], file: FileConfig, defaults: Mapping[str, Any] = RUN_DEFAULTS) -> dict[str, Any]:
    """Each setting from the flags when given (not None), else the file, else the default."""
    out: dict[str, Any] = {}
    for dest, default in defaults.items():
        given = explicit.get(dest)
        if given is not None:
            out[dest] = given
        elif dest in file.values:
            out[dest] = file.values[dest]
        else:
            out[dest] = list(default) if isinstance(default, list) else default
    return out


def _read_toml(path: Path, source: str) -> dict[str, Any]:
    try:
        with open(path, "rb") as fh:
            return tomllib.load(fh)
    except OSError as exc:
        raise ConfigError(f"{source}: cannot read: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{source}: not valid TOML: {exc}") from None
