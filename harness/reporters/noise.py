"""The noise profile beside the verdict: what the A/A runs showed about the target's own noise, how
outputs were judged against it, and how big a leak the run could have missed (docs/design.md,
"Comparing two generations"). Read from report.json's metadata and the counterfactual check's
evidence, so a saved run shows the same lines as a live one."""

from __future__ import annotations

from typing import Any

from harness.result import RunResult


def noise_lines(result: RunResult) -> list[str]:
    """One line each: the A/A measurement, the judging rule, the leak the run could have missed."""
    p: dict[str, Any] = result.meta.extra.get("noise_profile") or {}
    cf = result.check("counterfactual-isolation")
    ev = cf.evidence if cf is not None else {}
    override = bool(result.meta.extra.get("tolerance_override"))
    lines: list[str] = []
    if not p.get("calibrated"):
        lines.append("noise: no A/A runs compared: outputs judged by the exact rule "
                     f"(near-tie bound {result.meta.tolerance:g} nats)")
    else:
        head = (f"noise (A/A): {p.get('repeats')} repeat(s), {p.get('diverged')} of {p.get('conversations')} "
                f"conversations diverged (rate {float(p.get('rate', 0)):.3f}); {p.get('requests')} extra requests, "
                f"{p.get('wall_s')} s")
        if p.get("deterministic"):
            lines.append(head + ": deterministic, exact rule kept")
        else:
            q = p.get("margin_quantiles") or {}
            lines.append(head + f"; margins at divergences median {q.get('median', '-')}, p90 {q.get('p90', '-')}, "
                         f"max {q.get('max', '-')} nats; highest rank {p.get('max_rank', '-')}"
                         + (f"; {p.get('unexplained')} not near-tie shaped" if p.get("unexplained") else ""))
    bound = ev.get("margin_bound", p.get("margin_bound"))
    if bound is not None:
        lines.append(f"judged: near-tie bound {float(bound):.3g} nats"
                     + (" (set by hand with --tolerance)" if override else ""))
    if "rate_p_value" in ev:
        lines.append(f"rate test: counterfactual {ev.get('cf_rate')} vs A/A {ev.get('aa_rate')}, Fisher's exact "
                     f"one-sided p = {ev.get('rate_p_value')} (alpha {ev.get('alpha')})")
    if "min_detectable_leak_rate" in ev:
        lines.append(f"could have missed: a leak changing fewer than {float(ev['min_detectable_leak_rate']):.1%} of "
                     "compared conversations beyond the noise (detected with probability 0.8 above that)"
                     + ("; NOT enough power for the rate the run claims to exclude" if ev.get("underpowered") else ""))
    return lines
