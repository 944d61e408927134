"""A `Fault` is one object: its spec (what it changes, the real bug it models, the checks that
should catch it, what the target must offer for that, the library scenarios it acts on) and its
request/response hooks, which `harness.faults.proxy.FaultProxy` calls. One module per fault;
`harness/faults/__init__.py` imports each (one registration line).

A fault is a deliberate, documented break of the isolation property, injected between the harness
and a real server so that each check can be shown to fail (a check that never fails on a broken
server proves nothing). A *benign* fault is a control: it perturbs the traffic the way a healthy
stack may (latency, completion order, float noise far below any near-tie tolerance) and must
never make a check FAIL.

The proxy makes one instance per proxy (its state: remembered prompts, a swap pool) and hands it
the `FaultContext`: the seeded coin, the RNG, the injection log and the target's tokenizer.
"""

from __future__ import annotations

import random
from typing import TYPE_CHECKING, ClassVar, Literal, Protocol

from harness.checks.base import Need

if TYPE_CHECKING:
    from harness.faults.exchange import Call, Captured
    from harness.faults.tokenizer import TargetTokenizer

Kind = Literal["fault", "benign", "blind"]
"""fault: a check must FAIL; benign: every check must hold; blind: the run must be UNKNOWN (it hides
what a check needs, so nothing may be claimed: fail closed)."""

HISTORY_SIZE = 512
"""How many earlier prompts / responses the stateful faults remember."""


class FaultContext(Protocol):
    """What the proxy offers a fault's hooks."""

    @property
    def rng(self) -> random.Random:
        """The proxy's seeded RNG: every random choice of a fault comes from it, in order."""

    @property
    def swap_window_s(self) -> float | None:
        """How long `swap` waits for a partner (None: its own default)."""

    @property
    def tokenizer(self) -> TargetTokenizer: ...

    @property
    def target_url(self) -> str:
        """The upstream server's base URL (for a fault that reads the server's own documents)."""

    def draw(self) -> bool:
        """One seeded coin flip (probability `rate`) for a request eligible for the fault."""

    def record(self, call: Call, detail: str) -> None:
        """Log one injection into `call` (it becomes a `FaultInjection` in the history)."""


ADVERSARY_MEETS_LORA_CRASH = (
    "on the embedded vLLM 0.32 with LoRA adapters the adversarial tenant's hostile `prompt_logprobs` crash the "
    "engine (a known finding: findings/vllm-cpu-prompt-logprobs-lora-crash.md), so the row would judge that crash, "
    "not the fault, and a nemesis's evidence dies with the server")
"""Why the faults that act through the adversarial tenant run on an embedded server without LoRA."""


class Fault:
    """One fault: the spec as class attributes, the hooks as methods (both default to nothing)."""

    name: ClassVar[str]
    kind: ClassVar[Kind] = "fault"
    changes: ClassVar[str]
    """What the proxy alters, in one line."""
    models: ClassVar[str]
    """The class of real serving bug (or healthy behaviour, for a benign fault) it stands for."""
    detected_by: ClassVar[str] = "nothing: must PASS"
    """Which harness property should catch it, in words."""
    detectors: ClassVar[tuple[str, ...]] = ()
    """The checks (names in `harness.checks.base.REGISTRY`) expected to FAIL on it."""
    needs: ClassVar[tuple[Need, ...]] = ()
    """Target capabilities without which no check can observe it."""
    scenarios: ClassVar[tuple[str, ...]] = ()
    """The library scenarios (files under scenarios/) in which it has something to act on."""
    controls_every_scenario: ClassVar[bool] = False
    """A benign control that the selftest also runs on every scenario a selected fault uses, so each
    fault's scenarios have a control showing that a correct server PASSes there."""
    timing_audit: ClassVar[bool] = False
    """The selftest also runs the salted timing audit through it."""
    edits_response: ClassVar[bool] = False
    """The proxy buffers the upstream response and hands it to `on_response` (else it streams)."""
    without_adapters: ClassVar[str] = ""
    """Why a selftest that launches the embedded server runs this fault on one launched without LoRA
    adapters ("": on the shared server; e.g. `ADVERSARY_MEETS_LORA_CRASH`)."""
    description: ClassVar[str] = ""
    """`changes` and `models` in one line (set for each subclass)."""

    def __init_subclass__(cls, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        if "changes" in cls.__dict__ or "models" in cls.__dict__:
            cls.description = f"{cls.changes} Models: {cls.models}"

    def __init__(self, ctx: FaultContext) -> None:
        self.ctx = ctx

    async def on_request(self, call: Call) -> Captured | None:
        """Edit `call.body` (set `call.body_changed`) before it goes upstream, or answer it without
        the server by returning a response."""
        return None

    async def on_response(self, call: Call, cap: Captured) -> Captured:
        """The response to send downstream (only with `edits_response`); `cap` may be an error or
        broken response (see `Captured.usable`): faults edit only usable ones."""
        return cap

    def on_abandoned(self, call: Call) -> None:
        """`call` ends without `on_response` (the client went away, the upstream failed): a fault
        that keeps state per request in flight forgets it here."""


REGISTRY: dict[str, type[Fault]] = {}


def register(cls: type[Fault]) -> type[Fault]:
    """Add a fault to the registry (a class decorator)."""
    if cls.name in REGISTRY:
        raise ValueError(f"fault {cls.name!r} registered twice")
    REGISTRY[cls.name] = cls
    return cls


def all_faults(kind: Kind | None = None) -> list[type[Fault]]:
    """The registered faults (of one kind), in registration order."""
    import harness.faults  # noqa: F401  (registers the library's faults)

    return [f for f in REGISTRY.values() if kind is None or f.kind == kind]


def get(name: str) -> type[Fault]:
    """Look a fault up by name; the error lists the valid names."""
    all_faults()
    try:
        return REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown fault {name!r}; known: {', '.join(REGISTRY)}") from None
