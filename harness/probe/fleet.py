"""Fleet probes: does one tenant's prompt steer another tenant's routing through a prefix-aware router?

A router that scores replicas by the prompt prefixes it has routed (vllm-router's `cache_aware`
keeps a prefix tree of request texts; `kv_aware` follows the replicas' KV-cache events) should
key that index by cache domain. If it forgets the tenant's salt, tenant B's request for a prompt
tenant A sent goes to A's replica: no cache is shared (each replica honours the salt), but B's
routing, and so its latency and its neighbours, depend on A's prompts.

`steering` measures it, per trial: A sends a fresh prompt P with salt A; B sends P with salt B;
then B sends a fresh prompt Q of the same length (the control). Which replica served each comes
from the replicas' ledgers (`stacks.fleet`), exactly. Steered = B's P went to A's replica; control
= B's Q did. It also records B's cached-token counts: any hit on P across salts is a cache leak,
not just a routing dependency. Run it with `python -m harness.probe.fleet` (make fleet-matrix).
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
from dataclasses import asdict, dataclass, field

import httpx

from harness.stacks.fleet import DEFAULT_POLICY, POLICIES, FleetStack
from harness.stacks.vllm import SERVED_MODEL_NAME

SYLLABLES = ("ka", "lo", "mi", "ne", "ru", "ta", "vo", "zi", "pe", "su", "do", "fa")


def words(rng: random.Random, n: int) -> str:
    return " ".join("".join(rng.choice(SYLLABLES) for _ in range(rng.randint(2, 3))) for _ in range(n))


@dataclass
class Trial:
    a: str | None  # the replica that served A's P
    b: str | None  # ... B's P
    control: str | None  # ... B's fresh Q
    b_cached: int | None  # B's cached tokens on P (must be 0: different salts)


@dataclass
class SteeringReport:
    policy: str
    replicas: int
    trials: list[Trial] = field(default_factory=list)

    @property
    def placed(self) -> list[Trial]:
        """Trials whose three requests each reached exactly one replica."""
        return [t for t in self.trials if t.a and t.b and t.control]

    @property
    def steered(self) -> int:
        return sum(t.b == t.a for t in self.placed)

    @property
    def control_same(self) -> int:
        return sum(t.control == t.a for t in self.placed)

    @property
    def leaks(self) -> int:
        """Trials where B's request hit the cache on A's prompt across salts."""
        return sum(bool(t.b_cached) for t in self.trials)

    @property
    def p_chance(self) -> float:
        """P(at least `steered` of the placed trials land on A's replica) if B's replica were
        drawn at random, 1/replicas each: how unlikely the steering is by chance."""
        n, k, q = len(self.placed), self.steered, 1 / self.replicas
        return sum(math.comb(n, i) * q ** i * (1 - q) ** (n - i) for i in range(k, n + 1))

    def summary(self) -> dict[str, object]:
        n = len(self.placed)
        steers = n > 0 and self.steered > self.control_same and self.p_chance < 0.01
        return {
            "policy": self.policy, "replicas": self.replicas, "trials": len(self.trials), "placed": n,
            "steered": self.steered, "control_same_replica": self.control_same,
            "p_chance": round(self.p_chance, 6), "cross_salt_hits": self.leaks,
            "conclusion": (
                "cache leak: a salted request hit another tenant's prefix" if self.leaks else
                f"one tenant's prefix steers another's routing ({self.steered}/{n} to the other tenant's replica; "
                f"control {self.control_same}/{n})" if steers else
                f"no steering shown ({self.steered}/{n} to the other tenant's replica; control "
                f"{self.control_same}/{n})" if n else "no trial was placed: nothing shown"),
            "trial_replicas": [asdict(t) for t in self.trials],
        }


def steering(fleet: FleetStack, trials: int = 8, prompt_words: int = 120, seed: int = 0,
             timeout_s: float = 120.0) -> SteeringReport:
    """The steering probe against a started fleet (see the module docstring)."""
    rng = random.Random(seed)
    nonce = f"{rng.getrandbits(32):08x}"
    report = SteeringReport(policy=fleet.policy, replicas=fleet.size)
    fleet.attribution()  # start from the ledgers' current end
    cached: dict[str, int | None] = {}
    with httpx.Client(base_url=fleet.base_url, timeout=timeout_s) as client:
        for i in range(trials):
            p = f"{nonce} {i} " + words(rng, prompt_words)
            q = f"{nonce} {i} " + words(rng, prompt_words)
            for who, prompt, salt in (("a", p, "fleet-tenant-a"), ("b", p, "fleet-tenant-b"),
                                      ("c", q, "fleet-tenant-b")):
                op = f"steer/{nonce}/{i}/{who}"
                r = client.post("/v1/completions", headers={"X-Harness-Op": op}, json={
                    "model": SERVED_MODEL_NAME, "prompt": prompt, "max_tokens": 1, "temperature": 0,
                    "cache_salt": salt})
                usage = r.json().get("usage") or {} if r.status_code == 200 else {}
                cached[op] = (usage.get("prompt_tokens_details") or {}).get("cached_tokens")
    served = fleet.attribution().served
    for i in range(trials):
        op = f"steer/{nonce}/{i}/"
        report.trials.append(Trial(a=served.get(op + "a"), b=served.get(op + "b"), control=served.get(op + "c"),
                                   b_cached=cached.get(op + "b")))
    return report


def main(argv: list[str] | None = None) -> int:
    """Start a fleet, run the steering probe, print its summary as JSON (exit 1 on a cache leak)."""
    p = argparse.ArgumentParser(prog="python -m harness.probe.fleet", description=__doc__.splitlines()[0])
    p.add_argument("--policy", choices=POLICIES, default=DEFAULT_POLICY)
    p.add_argument("--replicas", type=int, default=2)
    p.add_argument("--trials", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    fleet = FleetStack(replicas=args.replicas, router_policy=args.policy)
    try:
        fleet.start()
        print(f"fleet of {fleet.size} up in {fleet.startup_s:.0f} s; router {fleet.base_url} ({fleet.policy})",
              file=sys.stderr, flush=True)
        summary = steering(fleet, trials=args.trials, seed=args.seed).summary()
    finally:
        fleet.stop()
    summary["startup_s"] = round(fleet.startup_s or 0, 1)
    print(json.dumps(summary, indent=2))
    return 1 if summary["cross_salt_hits"] else 0


if __name__ == "__main__":
    sys.exit(main())
