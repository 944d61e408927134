"""The HTML report's violation sections: per violation, the operations involved, reference vs
observed tokens from the first divergence, top logprobs and margin there, and its reproducer."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.checks.base import all_checks
from harness.history.record import History, Operation
from harness.reporters.html_env import fmt
from harness.reporters.html_tokens import MAX_VIOLATION_SECTIONS

CONTEXT_BEFORE = 3  # tokens shown before the first divergence
MAX_TOKEN_ROWS = 64
MAX_REPRO_CHARS = 200_000  # per reproducer file embedded in the page


def output_checks() -> set[str]:
    """Names of the checks that compare generated tokens against a reference (from the registry)."""
    return {c.name for c in all_checks() if c.compares_outputs}


@dataclass
class TokenRow:
    position: int
    reference: int | None
    observed: int | None
    ref_word: str
    obs_word: str
    diverged: bool
    first: bool


@dataclass
class OpSummary:
    op_id: str
    run: str
    user: str
    tenant: str
    model: str
    salt: str | None
    ok: bool
    status: int | None
    cached: int | None
    prompt_tokens: int | None
    latency_s: float
    output_text: str
    error: str | None


@dataclass
class ViolationView:
    index: int
    anchor: str
    check: str
    scenario: str
    message: str
    users: list[tuple[str, str]]
    ops: list[OpSummary]
    details: list[tuple[str, str]]
    tokens: list[TokenRow] = field(default_factory=list)
    ref_top: list[tuple[int, str, float, str]] = field(default_factory=list)
    obs_top: list[tuple[int, str, float, str]] = field(default_factory=list)
    position: int | None = None
    margin: str = ""
    canary: str = ""
    repro_dir: str = ""
    scenario_yaml: str = ""
    requests_sh: str = ""


def _summary(o: Operation) -> OpSummary:
    return OpSummary(o.op_id, o.run, o.user, o.tenant, o.model, o.cache_salt, o.ok, o.status, o.cached_tokens,
                     o.prompt_tokens, o.complete_s - o.invoke_s, o.output_text, o.error)


def _top(op: Operation, pos: int, words: dict[int, str], ref_tok: int | None, obs_tok: int | None
         ) -> list[tuple[int, str, float, str]]:
    top = op.top_logprobs[pos] if pos < len(op.top_logprobs) else {}
    mark = {ref_tok: "reference", obs_tok: "observed"} if ref_tok != obs_tok else {ref_tok: "both"}
    return [(t, words.get(t, ""), lp, mark.get(t, "")) for t, lp in sorted(top.items(), key=lambda kv: -kv[1])]


def _read_text(path: Path) -> str:
    if not path.is_file():
        return ""
    text = path.read_text(encoding="utf-8", errors="replace")
    if len(text) > MAX_REPRO_CHARS:
        text = text[:MAX_REPRO_CHARS] + f"\n... ({len(text)} characters; see {path.name})"
    return text


def _repro_dirs(report_dir: Path) -> dict[int, Path]:
    root = report_dir / "reproducers"
    out = {}
    if root.is_dir():
        for d in root.iterdir():
            head = d.name.split("-", 1)[0]
            if d.is_dir() and head.isdigit():
                out[int(head)] = d
    return out


def build_violations(report: dict[str, Any], history: History, report_dir: Path | None,
                     words: dict[int, str]) -> list[ViolationView]:
    """A view per violation, in report order (which is also the reproducers' numbering)."""
    ops = {o.op_id: o for o in history.ops}
    tenants: dict[tuple[str, str], str] = {}
    for r in history.runs:
        for u, t in r.tenants.items():
            tenants.setdefault((r.scenario, u), t)
    repros = _repro_dirs(report_dir) if report_dir is not None else {}
    compare = output_checks()
    views = []
    flat = [v for c in report.get("checks", []) for v in c.get("violations", [])]
    for i, v in enumerate(flat[:MAX_VIOLATION_SECTIONS], start=1):
        details = v.get("details") or {}
        vops = [ops[i_] for i_ in v.get("op_ids", []) if i_ in ops]
        users = list(dict.fromkeys(list(v.get("users", [])) + [o.user for o in vops]))
        view = ViolationView(
            index=i, anchor=f"v{i}", check=v.get("check", ""), scenario=v.get("scenario", ""),
            message=v.get("message", ""),
            users=[(u, tenants.get((v.get("scenario", ""), u), "?")) for u in users],
            ops=[_summary(o) for o in vops],
            details=[(str(k), json.dumps(val, default=str) if isinstance(val, (dict, list)) else fmt(val, 6))
                     for k, val in details.items()],
            canary=str(details.get("canary") or ""),
        )
        pos = details.get("position")
        if v.get("check") in compare and len(vops) == 2 and isinstance(pos, int):
            ref, obs = vops
            view.position = pos
            a, b = ref.output_token_ids, obs.output_token_ids
            start = max(0, pos - CONTEXT_BEFORE)
            end = min(max(len(a), len(b)), start + MAX_TOKEN_ROWS)
            for p in range(start, end):
                ta = a[p] if p < len(a) else None
                tb = b[p] if p < len(b) else None
                view.tokens.append(TokenRow(p, ta, tb, words.get(ta, "") if ta is not None else "",
                                            words.get(tb, "") if tb is not None else "", ta != tb, p == pos))
            rt, ot = details.get("reference_token"), details.get("observed_token")
            view.ref_top = _top(ref, pos, words, rt, ot)
            view.obs_top = _top(obs, pos, words, rt, ot)
            m = details.get("margin")
            view.margin = (f"{m:.6g} nats" if isinstance(m, (int, float)) else
                           "n/a (the two tokens are not both among the reference's top logprobs)")
        d = repros.get(i)
        if d is not None:
            view.repro_dir = f"reproducers/{d.name}"
            view.scenario_yaml = _read_text(d / "scenario.yaml")
            view.requests_sh = _read_text(d / "requests.sh")
        views.append(view)
    return views
