"""The HTML reporters' shared pieces: the jinja2 environment (autoescaping everything: model text
is untrusted), the number format and the error a folder that cannot be rendered raises."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape

TEMPLATES = Path(__file__).resolve().parent / "templates"


class ReportError(RuntimeError):
    """The folder cannot be rendered (e.g. it holds no report.json)."""


def env() -> Environment:
    e = Environment(loader=FileSystemLoader(str(TEMPLATES)), autoescape=select_autoescape(["html", "j2"],
                    default=True, default_for_string=True), undefined=StrictUndefined, trim_blocks=True,
                    lstrip_blocks=True)
    e.filters["fmt"] = fmt
    return e


def fmt(value: Any, digits: int = 3) -> str:
    """A number for people: '-' for None, rounded floats, plain ints."""
    if value is None:
        return "-"
    if isinstance(value, float):
        if math.isnan(value) or math.isinf(value):
            return str(value)
        return f"{value:.{digits}g}" if abs(value) < 1e-3 and value else f"{value:.{digits}f}".rstrip("0").rstrip(".")
    return str(value)
