"""The timing side-channel audit: can one tenant tell, by time to first token, what another asked?

Two tenants share one target. Each round the victim sends a fresh secret prompt and the attacker
primes a fresh prompt of its own (in random order); then the attacker sends, in random order and
one right after another, four requests of equal token length, streaming, max_tokens 1:

- probe: the victim's exact prompt;
- control: the prompt it primed itself (a same-tenant cache hit: proof the timing is visible);
- miss, miss2: two fresh prompts (cold prefills; two arms so an A/A comparison catches drift).

Under the `salted` policy each tenant has its own cache salt; under `shared-prefix` neither sends
one, so a probe hit is expected and the audit measures how quickly an attacker could tell.
Every prompt starts with a fresh random nonce, so nothing cached earlier is reused. After each
round from `min_probes` on, `harness.audit.stats` tests the arms and the run stops once the
decision is clear. The cached-token field is audited too: under `salted`, the attacker's probe
must never report cached tokens for the victim's prompt.
"""

from __future__ import annotations

import asyncio
import random
import secrets
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from harness.audit.stats import (
    ARMS,
    CONTROL,
    MISS,
    MISS2,
    PROBE,
    Decision,
    Look,
    SequentialPlan,
    fewest_probes,
    look_at,
)
from harness.checks import side_channels
from harness.client import GenerationRequest, TargetClient
from harness.plan.resolve import split_models
from harness.scenario.render import make_nonce, words_text
from harness.scenario.words import draw_words
from harness.verdict import CheckResult, Verdict, Violation, overall

POLICIES: tuple[str, ...] = ("salted", "shared-prefix")
VICTIM, ATTACKER = "victim", "attacker"
SCENARIO = "audit-timing"
TIMING_CHECK = side_channels.TIMING.name
CACHED_CHECK = side_channels.CACHED_TOKENS.name


@dataclass
class AuditConfig:
    """What to audit and how hard to look."""

    target: str
    policy: str = "salted"
    plan: SequentialPlan = field(default_factory=SequentialPlan)
    prompt_words: int = 1500
    """Pool words per prompt after the nonce: long enough that prefill cost shows (on the
    embedded model one token each; keep nonce + words + 1 under the context length)."""
    model: str | None = None
    seed: int | None = None
    """Seeds the words and the arm order (the nonces are always fresh)."""
    warmup_rounds: int = 1
    max_failed_rounds: int = 3
    timeout_s: float = 120.0

    def __post_init__(self) -> None:
        if self.policy not in POLICIES:
            raise ValueError(f"policy must be one of {POLICIES}, got {self.policy!r}")
        if self.prompt_words < 1:
            raise ValueError(f"prompt_words must be at least 1, got {self.prompt_words}")


@dataclass
class Sample:
    """One timed request: which arm (or setup send), whose, where in its round, what came back."""

    arm: str
    tenant: str
    round: int
    position: int
    ok: bool
    ttft_s: float | None
    latency_s: float | None
    cached_tokens: int | None
    prompt_tokens: int | None
    prompt_head: str
    """The prompt's nonce: enough to find the request in a server log."""
    error: str | None = None


@dataclass
class Round:
    """One round: the victim's and the attacker's setup sends, then the four probes as sent."""

    index: int
    setup: list[Sample]
    probes: list[Sample]
    warmup: bool = False

    @property
    def ok(self) -> bool:
        return len(self.setup) == 2 and len(self.probes) == len(ARMS) and all(s.ok for s in self.setup + self.probes)

    def sample(self, arm: str) -> Sample:
        return next(s for s in self.probes if s.arm == arm)


@dataclass
class AuditResult:
    """The whole audit: every round, every look, the checks and the verdict."""

    config: AuditConfig
    model: str
    seed: int
    salts: dict[str, str | None]
    rounds: list[Round] = field(default_factory=list)
    looks: list[Look] = field(default_factory=list)
    checks: list[CheckResult] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    duration_s: float = 0.0

    @property
    def counted(self) -> list[Round]:
        """The rounds the statistics use: complete and not warm-up."""
        return [r for r in self.rounds if r.ok and not r.warmup]

    @property
    def final(self) -> Look | None:
        return self.looks[-1] if self.looks else None

    @property
    def probes_per_arm(self) -> int:
        return len(self.counted)

    @property
    def verdict(self) -> Verdict:
        return overall(self.checks)

    def arms(self) -> dict[str, list[float]]:
        """Time to first token per arm, in round order, over the counted rounds."""
        return {a: [float(r.sample(a).ttft_s or 0.0) for r in self.counted] for a in ARMS}

    def cached(self) -> dict[str, list[int | None]]:
        return {a: [r.sample(a).cached_tokens for r in self.counted] for a in ARMS}

    def to_dict(self) -> dict[str, Any]:
        final = self.final
        plan = self.config.plan
        return {
            "verdict": self.verdict.value,
            "policy": self.config.policy,
            "target": self.config.target,
            "model": self.model,
            "seed": self.seed,
            "salts": self.salts,
            "prompt_words": self.config.prompt_words,
            "alpha": plan.alpha,
            "alpha_per_look": plan.alpha_per_look,
            "min_probes": plan.min_probes,
            "max_probes": plan.max_probes,
            "clear_p": plan.clear_p,
            "fewest_probes_possible": fewest_probes(plan),
            "probes_per_arm": self.probes_per_arm,
            "decision": final.decision.value if final else None,
            "duration_s": round(self.duration_s, 3),
            "checks": [_check_dict(c) for c in self.checks],
            "notes": self.notes,
            "samples_ttft_s": self.arms(),
            "cached_tokens": self.cached(),
            "final": final.to_dict() if final else None,
            "looks": [lk.to_dict() for lk in self.looks],
            "rounds": [
                {"index": r.index, "warmup": r.warmup, "ok": r.ok,
                 "setup": [asdict(s) for s in r.setup], "probes": [asdict(s) for s in r.probes]}
                for r in self.rounds
            ],
        }


def _check_dict(c: CheckResult) -> dict[str, Any]:
    return {"name": c.name, "verdict": c.verdict.value, "exercised": c.exercised, "description": c.description,
            "notes": c.notes, "violations": [asdict(v) for v in c.violations]}


# --- measurement -----------------------------------------------------------------------------------


class _Prompts:
    """Fresh prompts: a fresh random nonce, then `words` pool words drawn from the seeded generator."""

    def __init__(self, rng: random.Random, words: int) -> None:
        self.rng = rng
        self.words = words
        self.nonces = random.Random(secrets.randbits(64))

    def fresh(self) -> tuple[str, str]:
        nonce = make_nonce(self.nonces)
        return nonce + words_text(draw_words(self.rng, self.words)), nonce.strip()


async def _send(client: TargetClient, model: str, prompt: str, head: str, salt: str | None,
                arm: str, tenant: str, index: int, position: int) -> Sample:
    req = GenerationRequest(
        endpoint="completions", model=model, prompt=prompt, max_tokens=1, stream=True, top_logprobs=0,
        cache_salt=salt, headers={"X-Harness-Tenant": tenant, "X-Harness-User": tenant,
                                  "X-Harness-Op": f"r{index}-{arm}"},
    )
    res = await client.generate(req)
    error = res.error
    if res.ok and res.ttft_s is None:
        error = "no token arrived in the stream"
    return Sample(arm, tenant, index, position, res.ok and error is None, res.ttft_s, res.latency_s,
                  res.cached_tokens, res.prompt_tokens, head, error)


async def _round(client: TargetClient, model: str, prompts: _Prompts, rng: random.Random,
                 salts: dict[str, str | None], index: int, warmup: bool) -> Round:
    """Victim sends its secret and the attacker primes its control (random order); then the
    attacker sends probe, control, miss and miss2 in random order, one right after another."""
    secret, secret_head = prompts.fresh()
    own, own_head = prompts.fresh()
    miss, miss_head = prompts.fresh()
    miss2, miss2_head = prompts.fresh()
    setup_plan = [(VICTIM, VICTIM, secret, secret_head), ("prime", ATTACKER, own, own_head)]
    rng.shuffle(setup_plan)
    probe_plan = [(PROBE, secret, secret_head), (CONTROL, own, own_head), (MISS, miss, miss_head),
                  (MISS2, miss2, miss2_head)]
    rng.shuffle(probe_plan)
    setup: list[Sample] = []
    for pos, (arm, tenant, text, head) in enumerate(setup_plan):
        setup.append(await _send(client, model, text, head, salts[tenant], arm, tenant, index, pos))
        if not setup[-1].ok:
            return Round(index, setup, [], warmup)
    probes: list[Sample] = []
    for pos, (arm, text, head) in enumerate(probe_plan):
        probes.append(await _send(client, model, text, head, salts[ATTACKER], arm, ATTACKER, index, pos))
        if not probes[-1].ok:
            break
    return Round(index, setup, probes, warmup)


async def run_audit(config: AuditConfig, on_look: Callable[[Look], None] | None = None) -> AuditResult:
    """Measure round by round, look after each from `min_probes` on, stop when the decision is
    clear (or at `max_probes`), then judge. Request errors make rounds void; too many, UNKNOWN."""
    seed = config.seed if config.seed is not None else secrets.randbits(32)
    rng = random.Random(seed)
    salts: dict[str, str | None] = (
        {VICTIM: f"victim-{secrets.token_hex(8)}", ATTACKER: f"attacker-{secrets.token_hex(8)}"}
        if config.policy == "salted" else {VICTIM: None, ATTACKER: None}
    )
    t0 = time.monotonic()
    async with TargetClient(config.target, timeout_s=config.timeout_s) as client:
        model = config.model or split_models(await client.model_entries())[0]
        result = AuditResult(config, model, seed, salts)
        prompts = _Prompts(rng, config.prompt_words)
        plan = config.plan
        failed = 0
        index = 0
        while result.probes_per_arm < plan.max_probes:
            warmup = index < config.warmup_rounds
            rnd = await _round(client, model, prompts, rng, salts, index, warmup)
            index += 1
            result.rounds.append(rnd)
            if not rnd.ok:
                failed += 1
                if failed > config.max_failed_rounds:
                    break
                continue
            if warmup or result.probes_per_arm < plan.min_probes:
                continue
            lk = look_at(result.arms(), plan)
            result.looks.append(lk)
            if on_look is not None:
                on_look(lk)
            if lk.decision is not Decision.CONTINUE:
                break
    result.duration_s = time.monotonic() - t0
    errors = [s.error for r in result.rounds for s in r.setup + r.probes if not s.ok]
    if errors:
        result.notes.append(f"{len(errors)} request(s) failed ({failed} round(s) void); first: {errors[0]}")
    result.checks = [judge_timing(result.final, config.policy, plan, errors), judge_cached(result, config.policy)]
    return result


def audit(config: AuditConfig, on_look: Callable[[Look], None] | None = None) -> AuditResult:
    """Synchronous wrapper of `run_audit`."""
    return asyncio.run(run_audit(config, on_look))


# --- judging (pure) --------------------------------------------------------------------------------


def _ms(s: float) -> str:
    return f"{s * 1000:.1f} ms"


def describe(look: Look) -> str:
    """The numbers of one look in one line per comparison."""
    lines = []
    for c in look.comparisons.values():
        tests = ", ".join(f"{t.test} p={t.p:.3g} (Holm {t.p_holm:.3g})" for t in c.tests)
        e = c.effect
        lines.append(
            f"{c.name}: median {_ms(e.median_sample)} vs {_ms(e.median_reference)} "
            f"(diff {_ms(e.median_diff)}), {e.share_faster_than_fastest:.0%} below the fastest {c.reference}; "
            f"{tests}; {'REJECTED' if c.detected else 'not rejected'}"
        )
    return "\n".join(lines)


def judge_timing(look: Look | None, policy: str, plan: SequentialPlan, errors: list[str | None] | None = None
                 ) -> CheckResult:
    """Salted: probe indistinguishable from a miss while the control is detected -> PASS; control
    not detected or A/A rejected -> UNKNOWN; probe detected -> FAIL. Shared-prefix: the same
    measurement is a finding (PASS, or UNKNOWN without power), never a FAIL."""
    desc = side_channels.TIMING.description
    res = CheckResult(TIMING_CHECK, Verdict.UNKNOWN, description=desc)
    if look is None:
        res.notes.append(f"too few complete rounds to test (need {plan.min_probes} per arm)"
                         + (f"; first error: {next(e for e in errors if e)}" if errors and any(errors) else ""))
        return res
    res.exercised = look.n
    head = (f"{look.n} probes per arm, alpha {plan.alpha:g} ({look.alpha:.3g} per look, "
            f"{plan.looks} looks), decision {look.decision.value}")
    res.notes.append(head)
    res.notes.extend(describe(look).splitlines())
    probe, control, aa = look.probe, look.control, look.aa
    if look.aa_rejected:
        res.notes.append(f"A/A null rejected: two arms of fresh prompts differ (Holm p {aa.min_p_holm:.3g}); "
                         "the measurement is not trustworthy")
        return res
    if policy == "shared-prefix":
        if look.probe_detected:
            res.verdict = Verdict.PASS
            res.notes.append(
                f"finding: under shared-prefix an attacker tells the victim's prompt after {look.n} probes per arm "
                f"(Holm p {probe.min_p_holm:.3g}); one probe alone is below every miss "
                f"{probe.effect.share_faster_than_fastest:.0%} of the time")
        elif look.control_detected:
            res.verdict = Verdict.PASS
            res.notes.append("finding: under shared-prefix the victim's prompt was not told apart from a fresh one "
                             "(the cache did not share it across tenants)")
        else:
            res.notes.append("no power: the same-tenant control was not detected")
        return res
    if look.probe_detected:
        res.verdict = Verdict.FAIL
        e = probe.effect
        res.violations.append(Violation(
            TIMING_CHECK, SCENARIO,
            f"the attacker tells the victim's prompt from a fresh one by time to first token: median "
            f"{_ms(e.median_sample)} vs {_ms(e.median_reference)} (faster by {_ms(e.median_diff)}), "
            f"{e.share_faster_than_fastest:.0%} of probes below the fastest miss, Holm p {probe.min_p_holm:.3g} "
            f"<= {look.alpha:.3g} after {look.n} probes per arm",
            [VICTIM, ATTACKER], [],
            {"p": {t.test: t.p for t in probe.tests}, "p_holm": {t.test: t.p_holm for t in probe.tests},
             "effect": asdict(e), "probes_per_arm": look.n},
        ))
        return res
    if not look.control_detected:
        res.notes.append(f"no power: the same-tenant control was not detected (Holm p {control.min_p_holm:.3g} > "
                         f"{look.alpha:.3g}); the server is too noisy or does not cache")
        return res
    res.verdict = Verdict.PASS
    return res


def judge_cached(result: AuditResult, policy: str) -> CheckResult:
    """Under salted, the attacker's probe must never report cached tokens for the victim's prompt
    (one such response is a FAIL); the same-tenant control shows the field can report hits."""
    desc = side_channels.CACHED_TOKENS.description
    res = CheckResult(CACHED_CHECK, Verdict.UNKNOWN, description=desc)
    rounds = result.counted
    if not rounds:
        res.notes.append("no complete rounds")
        return res
    cached = result.cached()
    leaks = [(r, r.sample(PROBE)) for r in rounds if (r.sample(PROBE).cached_tokens or 0) > 0]
    control_hits = sum(1 for v in cached[CONTROL] if (v or 0) > 0)
    reported = any(v is not None for vs in cached.values() for v in vs)
    res.exercised = control_hits
    odd = [(a, i) for a in (MISS, MISS2) for i, v in enumerate(cached[a]) if (v or 0) > 0]
    if odd:
        res.notes.append(f"{len(odd)} fresh prompt(s) reported cached tokens (nothing explains them)")
    if leaks:
        first_round, first = leaks[0]
        what = (f"{len(leaks)} of {len(rounds)} probes reported cached tokens for the victim's prompt "
                f"(first: round {first_round.index}, {first.cached_tokens} of {first.prompt_tokens} tokens)")
        if policy == "shared-prefix":
            res.verdict = Verdict.PASS
            res.notes.append(f"finding: under shared-prefix {what}")
            return res
        res.verdict = Verdict.FAIL
        res.violations.append(Violation(
            CACHED_CHECK, SCENARIO, f"cross-salt cache hit visible to the attacker: {what}",
            [VICTIM, ATTACKER], [f"r{r.index}-{PROBE}" for r, _ in leaks],
            {"rounds": [r.index for r, _ in leaks], "cached_tokens": [s.cached_tokens for _, s in leaks],
             "prompt_heads": [s.prompt_head for _, s in leaks]},
        ))
        return res
    if not reported:
        res.verdict = Verdict.PASS
        res.notes.append("the target reports no cached-token counts: nothing can leak through them")
        return res
    if control_hits == 0:
        res.notes.append("the field never reported a hit, not even for the same-tenant control: not exercised")
        return res
    res.verdict = Verdict.PASS
    res.notes.append(f"no probe reported cached tokens; the control reported a hit in {control_hits} of "
                     f"{len(rounds)} rounds")
    if control_hits < len(rounds):
        res.notes.append(f"the control missed in {len(rounds) - control_hits} round(s): evicted, or the cache "
                         "was reset by other traffic (this costs the timing test power, never correctness)")
    return res
