"""`harness selftest --nemesis NAME[,NAME]`: the fault x nemesis matrix.

Each nemesis gets a column: an embedded vLLM server launched with what that nemesis needs
(`harness.nemesis.server.embedded_options`; the faults that need a server without LoRA adapters,
`Fault.without_adapters`, get a second one launched so, and are not judged under a nemesis that
needs the adapters), every fault and benign control run through the fault
proxy in front of it while the nemesis acts (`run_fault(..., nemesis=...)`), each row judged as
the plain selftest judges it (`judge`: a fault must be detected by its own detectors citing an
injected request; a benign control must PASS). A column counts only when the nemesis really acted
in every row (the `nemesis` check PASSed): a disturbance that never happened shows nothing.
Exit 0 only when every cell is good. The matrix is written to `selftest-nemesis.json` after every
cell (a long matrix killed part-way keeps what it finished); cells already in that file that this
run does not redo are kept, so the matrix can be run one nemesis (or one row) at a time into one
folder.
"""

from __future__ import annotations

import argparse
import json
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from harness.faults import get
from harness.frontends.commands.selftest import LazyServer, citing_checks, judge, power_only, run_fault
from harness.nemesis import NemesisError, parse_nemeses
from harness.nemesis.runner import embedded_adapters
from harness.nemesis.server import NEEDS_ADAPTERS, embedded_options
from harness.probe.capabilities import ProbeError
from harness.stacks.vllm import EmbeddedServer, LaunchError


def nemesis_matrix(args: argparse.Namespace, faults: list[str], console: Console) -> int:
    """Run `faults` under each nemesis of `args.nemesis`; print and save the matrix; 0 when all good."""
    try:
        names = parse_nemeses(args.nemesis)
    except NemesisError as exc:
        console.print(f"error: {exc}")
        return 2
    if args.target is not None or args.stack != "vllm":
        console.print("error: the nemesis matrix launches an embedded vLLM server per nemesis; drop --target/--stack")
        return 2
    cells: dict[str, dict[str, dict[str, Any]]] = {n: {} for n in names}
    out = args.report_dir / "selftest-nemesis.json"
    earlier = _earlier(out)
    for nemesis in names:
        console.print(f"[bold]nemesis {nemesis}[/] ...")
        try:
            with ExitStack() as column:  # each server launched when a row first needs it
                shared = LazyServer(column, console, **embedded_options((nemesis,)))
                plain = LazyServer(column, console, lora=False, **embedded_options((nemesis,)))
                for fault in faults:
                    console.print(f"[bold]{fault}[/] under {nemesis} ...")
                    if get(fault).without_adapters:
                        cells[nemesis][fault] = _cell_without_adapters(args, fault, nemesis, plain)
                    else:
                        server = shared(f"with what {nemesis} needs, for its column")
                        cells[nemesis][fault] = _cell(args, fault, nemesis, server, shared.lacking)
                    _save(out, _merged(earlier, cells), faults)
        except (LaunchError, ProbeError) as exc:
            console.print(f"error: {exc}")
            return 2
    ok = all(c["good"] for col in cells.values() for c in col.values())
    _print(cells, faults, console)
    _save(out, _merged(earlier, cells), faults)
    console.print(f"matrix: {out}")
    return 0 if ok else 1


def _earlier(path: Path) -> dict[str, dict[str, dict[str, Any]]]:
    """The columns an earlier run wrote to `path` (none when it is missing or unreadable)."""
    try:
        cells = json.loads(path.read_text()).get("cells")
    except (OSError, ValueError, AttributeError):
        return {}
    return cells if isinstance(cells, dict) else {}


def _merged(earlier: dict[str, dict[str, dict[str, Any]]],
            cells: dict[str, dict[str, dict[str, Any]]]) -> dict[str, dict[str, dict[str, Any]]]:
    """The earlier file's cells with this run's cells over them (a rerun row replaces its cell)."""
    out = {n: dict(col) for n, col in earlier.items()}
    for n, col in cells.items():
        out.setdefault(n, {}).update(col)
    return out


def _save(path: Path, cells: dict[str, dict[str, dict[str, Any]]], faults: list[str]) -> None:
    """The matrix so far; `ok` counts every column in the file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    ok = all(c.get("good") for col in cells.values() for c in col.values())
    path.write_text(json.dumps({"ok": ok, "nemeses": list(cells), "faults": faults, "cells": cells}, indent=2))


def _cell(args: argparse.Namespace, fault: str, nemesis: str, server: EmbeddedServer,
          lacking: dict[str, str]) -> dict[str, Any]:
    """One fault under one nemesis: the row's judgement, and whether the nemesis acted."""
    out, injected = run_fault(fault, server.base_url, args.scenarios, args.report_dir / nemesis / fault, args.seed,
                              base=server, nemesis=(nemesis,), adapter_sources=embedded_adapters(server),
                              known_findings=getattr(args, "known_findings", None))
    checks = {r.name: r.verdict.value for r in out.checks}
    j = judge(fault, checks, out.verdict.value, lacking, injections=injected, error=out.error,
              skipped=out.skipped or None, cited=citing_checks(out), power_only=power_only(out))
    acted = out.check("nemesis")
    evidence = dict(acted.evidence) if acted is not None else {}
    good, reason = j.good, j.reason
    if acted is None or acted.verdict.value != "pass":
        good = False
        reason = "; ".join(x for x in [reason, f"the nemesis did not act: {'; '.join(acted.notes) if acted else ''}"]
                           if x)
    return {"good": good, "verdict": j.verdict, "run_verdict": out.verdict.value, "applicable": j.applicable,
            "reason": reason, "injections": injected, "requests": out.meta.requests,
            "duration_s": out.meta.duration_s, "checks": checks, "nemesis_evidence": evidence}


def _cell_without_adapters(args: argparse.Namespace, fault: str, nemesis: str,
                           plain: LazyServer) -> dict[str, Any]:
    """A fault that needs a server without LoRA adapters (`Fault.without_adapters`): its cell on
    the column's server launched so (with the nemesis's options); not judged under a nemesis that
    needs the adapters."""
    if nemesis in NEEDS_ADAPTERS:
        return {"good": True, "verdict": "n/a", "run_verdict": "n/a", "applicable": False,
                "reason": f"not judged: {nemesis} needs LoRA adapters, and {fault} a server without them "
                          f"({get(fault).without_adapters})",
                "injections": 0, "requests": 0, "duration_s": 0.0, "checks": {}, "nemesis_evidence": {}}
    server = plain(f"without LoRA adapters, for {fault} and the later rows that need one "
                   f"({get(fault).without_adapters})")
    return _cell(args, fault, nemesis, server, plain.lacking)


def _print(cells: dict[str, dict[str, dict[str, Any]]], faults: list[str], console: Console) -> None:
    table = Table(title="selftest: fault x nemesis (detected / PASS = good; the nemesis acted in every cell shown)")
    table.add_column("fault", no_wrap=True)
    for nemesis in cells:
        table.add_column(nemesis, no_wrap=True)
    for fault in faults:
        row = []
        for col in cells.values():
            c = col.get(fault)
            if c is None:
                row.append("-")
                continue
            colour = "[green]" if c["good"] else "[red]"
            row.append(f"{colour}{c['verdict'].upper()}[/] ({c['duration_s']:.0f} s)")
        table.add_row(fault, *row)
    console.print(table)
    for nemesis, col in cells.items():
        for fault, c in col.items():
            if not c["good"]:
                console.print(f"[red]{fault} under {nemesis}[/]: {c['reason']}")
