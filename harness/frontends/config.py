"""Settings for `harness run` (and the pytest plugin) from a file, below the command-line flags.

Where the settings come from, highest first:
1. the flags given on the command line;
2. the environment variables of `ENV_KEYS` (HARNESS_TARGET, HARNESS_POLICY, HARNESS_REPORT_DIR);
3. the file named by `--config FILE`, else `isolation.toml` in the current folder, else the
   `[tool.harness]` table of `pyproject.toml` in the current folder (the first that exists);
4. the built-in defaults (`RUN_DEFAULTS`, the defaults of `harness run`).

Keys mirror the long flags of `harness run` without the dashes in front (`report-dir`,
`known-findings`, `no-solo`, ...; `report_dir` is accepted too). Relative paths in a file are
taken relative to the folder holding that file. An unknown key or a value of the wrong type is a
`ConfigError` that names the file and the key (`harness run` exits 2 on it).

Credentials are never written in a file: `api-key-env` names the variable holding the key, and
`tenants.NAME.api_key_env` each tenant's; `headers` (and a tenant's `headers`) are tables of
header values, where `${VAR}` is read from the environment (`harness.frontends.target_args`).
"""

from __future__ import annotations

import difflib
import os
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.checks.compare import DEFAULT_TOLERANCE
from harness.scenario.library import library_path
from harness.stacks import STACKS
from harness.stacks.fleet_settings import parse_policy, parse_replicas

CONFIG_FILE = "isolation.toml"
PYPROJECT_FILE = "pyproject.toml"
POLICIES = ("shared-prefix", "salted")

RUN_DEFAULTS: dict[str, Any] = {
    "target": None,
    "scenario": [library_path()],
    "report_dir": Path("reports/latest"),
    "seed": None,
    "tolerance": DEFAULT_TOLERANCE,
    "policy": "shared-prefix",
    "timeout": 60.0,
    "known_findings": None,
    "no_solo": False,
    "no_counterfactual": False,
    "stack": "vllm",
    "model": None,
    "gateway_salts": False,
    "replay_incidents": False,
    "nemesis": None,
    "replicas": None,
    "router_policy": None,
    "adversary_budget": None,
}
"""The defaults of `harness run`, by argparse destination name."""

ENV_KEYS: dict[str, str] = {"target": "HARNESS_TARGET", "policy": "HARNESS_POLICY", "report_dir": "HARNESS_REPORT_DIR"}
"""argparse destination -> the environment variable that sets it (below the flags, above the file)."""


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


def _replicas(v: Any, base: Path) -> int:
    if isinstance(v, str):  # a file gives a number; "2" in quotes is a typo worth naming
        raise ValueError("expected a whole number of replicas, not a string")
    return parse_replicas(v)


def _router_policy(v: Any, base: Path) -> str:
    return parse_policy(v)


def _budget(v: Any, base: Path) -> int:
    n = _int(v, base)
    if n < 1:
        raise ValueError("expected a request count of at least 1")
    return n


def _bool(v: Any, base: Path) -> bool:
    if not isinstance(v, bool):
        raise ValueError("expected true or false")
    return v


def _headers(v: Any, base: Path) -> dict[str, str]:
    if not isinstance(v, dict) or not all(isinstance(k, str) and k and isinstance(x, str) for k, x in v.items()):
        raise ValueError("expected a table of header names to string values")
    return dict(v)


def _env_name(v: Any, base: Path) -> str:
    name = _str(v, base)
    if not name.replace("_", "a").isalnum() or name[0].isdigit():
        raise ValueError("expected the name of an environment variable")
    return name


def _tenants(v: Any, base: Path) -> dict[str, dict[str, Any]]:
    if not isinstance(v, dict):
        raise ValueError("expected a table of tenants")
    out: dict[str, dict[str, Any]] = {}
    for name, spec in v.items():
        if not isinstance(spec, dict):
            raise ValueError(f"tenant {name!r}: expected a table with api_key_env and/or headers")
        unknown = set(spec) - {"api_key_env", "api-key-env", "headers"}
        if unknown:
            raise ValueError(f"tenant {name!r}: unknown key(s) {sorted(unknown)}; known: api_key_env, headers")
        env = spec.get("api_key_env", spec.get("api-key-env"))
        out[name] = {"api_key_env": _env_name(env, base) if env is not None else None,
                     "headers": _headers(spec.get("headers", {}), base)}
    return out


def _no_secret(v: Any, base: Path) -> Any:
    raise ValueError("a key is not read from a file; name the environment variable holding it with api-key-env")


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
    "model": ("model", _str),
    "gateway-salts": ("gateway_salts", _bool),
    "replay-incidents": ("replay_incidents", _bool),
    "nemesis": ("nemesis", _str),
    "replicas": ("replicas", _replicas),
    "router-policy": ("router_policy", _router_policy),
    "adversary-budget": ("adversary_budget", _budget),
    "allow-disruptive": ("allow_disruptive", _bool),
    "api-key-env": ("api_key_env", _env_name),
    "api-key": ("api_key", _no_secret),
    "headers": ("headers", _headers),
    "ca-bundle": ("ca_bundle", _path),
    "insecure": ("insecure", _bool),
    "client-cert": ("client_cert", _path),
    "client-key": ("client_key", _path),
    "tenants": ("tenants", _tenants),
}
"""File key -> (argparse destination, checker)."""

CONNECTION_KEYS = frozenset({"api-key-env", "api-key", "headers", "ca-bundle", "insecure", "client-cert", "client-key",
                             "allow-disruptive", "tenants"})
"""Keys read by `harness.frontends.target_args.connection_from`, not merged into RUN_DEFAULTS'
settings. `api-key-env`, `headers` and `tenants` exist only in a file (the flags are `--api-key`
and `--header`); `api-key` is refused in a file."""


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


def merge(explicit: Mapping[str, Any], file: FileConfig, defaults: Mapping[str, Any] = RUN_DEFAULTS,
          environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Each setting from the flags when given (not None), else its environment variable
    (`ENV_KEYS`), else the file, else the default."""
    env = os.environ if environ is None else environ
    out: dict[str, Any] = {}
    for dest, default in defaults.items():
        given = explicit.get(dest)
        var = ENV_KEYS.get(dest)
        if given is not None:
            out[dest] = given
        elif var and env.get(var):
            try:
                out[dest] = KEYS[dest.replace("_", "-")][1](env[var], Path("."))
            except ValueError as exc:
                raise ConfigError(f"environment variable {var}: {exc}, got {env[var]!r}") from None
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
