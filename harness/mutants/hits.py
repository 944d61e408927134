"""What a mutated server's processes wrote about their patches (see `harness.mutants.patches`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class Hits:
    """Summed over the server's processes."""

    calls: int = 0
    """Calls of a patched function."""
    changed: int = 0
    """Calls in which the mutation changed a value."""
    installed: tuple[str, ...] = ()
    missing: tuple[str, ...] = field(default_factory=tuple)
    """Why a patch could not be installed (a symbol this vLLM lacks, a loader failure)."""

    def to_json(self) -> dict[str, object]:
        return {"calls": self.calls, "changed": self.changed, "installed": list(self.installed),
                "missing": list(self.missing)}


def _lines(folder: Path, kind: str) -> tuple[str, ...]:
    seen: dict[str, None] = {}
    for f in sorted(folder.glob(f"{kind}-*.txt")):
        for line in f.read_text().splitlines():
            if line.strip():
                seen[line.strip()] = None
    return tuple(seen)


def read_hits(folder: Path) -> Hits:
    """Sum the hit files under `folder` (an absent folder reads as no proof at all)."""
    if not folder.is_dir():
        return Hits()
    calls = changed = 0
    for f in folder.glob("hits-*.txt"):
        parts = f.read_text().split()
        if len(parts) >= 2:
            calls += int(parts[0])
            changed += int(parts[1])
    return Hits(calls, changed, _lines(folder, "installed"), _lines(folder, "missing"))
