"""The adversary's cases for one scenario, within a request-count budget.

A `Case` is one hostile request (or an identical group of `copies` requests fired together). The
order is a priority order, and the budget keeps a deterministic prefix of each kind, so the same
scenario and schema give the same requests on every machine:
1. cache-domain confusion over the victims' own shared content (`harness.adversary.confusion`);
2. identical groups: for each simple field, its first valid non-default value sent by 2..k
   requests at once (a batch of equal unusual requests);
3. single values: every field's values round-robin (each field's first value, then each one's
   second, ...), completions and chat interleaved, identity-bearing headers among them;
4. pairwise rows of unusual-but-valid values (`harness.adversary.pairwise`).
The driver fires the single and pairwise cases in mixed groups of 2..k that share batches with
each other and with the victims (`groups`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from harness.adversary.schema import FieldSpec
from harness.adversary.values import Limits, Value, values_for

DEFAULT_BUDGET = 480
"""Hostile requests per adversarial scenario by default (about three minutes on a 2-core machine
with the embedded server, victims included); `--adversary-budget` changes it."""

SHARES = {"confusion": 0.15, "identical": 0.2, "pairwise": 0.15}
"""The most each kind may take of the budget; single values get the rest."""

OWN_FIELDS = frozenset({"model", "prompt", "messages"})
"""Fields every request needs: fuzzed as values, but never dropped."""

IDENTITY_FIELDS = ("cache_salt", "user", "request_id", "session_id")
"""Body fields that name a requester or a cache domain (when the schema declares them)."""
IDENTITY_HEADERS = ("X-Request-Id", "X-Session-Id", "OpenAI-Organization", "OpenAI-Project")
"""Headers that name a requester, fuzzed like fields."""


@dataclass(frozen=True)
class Case:
    """One hostile request (fired `copies` times at once). `name` is the tail of its op id:
    `FIELD=CLASS:LABEL` (several joined by `+`), `@chat` for the chat endpoint, `header:NAME=...`
    for a header, `confuse-PHASE:...` for domain confusion."""

    name: str
    endpoint: str = "completions"
    overrides: dict[str, Any] = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=dict)
    prompt: str | None = None
    """Replaces the adversary's own prompt (domain confusion sends a victim's content)."""
    victim: str | None = None
    """The user whose own cache salt this case sends (sharing by design: a finding, not a FAIL)."""
    copies: int = 1
    kind: str = "value"
    """value | header | identical | pair | confusion | boundary (up to `copies` probes, one at a time)."""
    phase: str = "during"
    """before | during | after the victims' own requests of the main run."""
    fields: tuple[tuple[str, str], ...] = ()
    """(field, value class) pairs the case covers."""
    numeric: str = ""
    """A boundary case's field type, integer | number (`harness.adversary.boundary`)."""

    @property
    def requests(self) -> int:
        return self.copies


@dataclass(frozen=True)
class Target:
    """What the adversary knows of the target: each generation endpoint's fields, its limits, and
    whether the fields came from an OpenAPI document."""

    endpoints: dict[str, list[FieldSpec]]
    limits: Limits = field(default_factory=Limits)
    has_schema: bool = True
    """The fields came from the target's OpenAPI document (False: the fallback list)."""


def label(endpoint: str, parts: list[tuple[str, Value]]) -> str:
    name = "+".join(f"{f}={value_tag(v)}" for f, v in parts)
    return name if endpoint == "completions" else f"{name}@{endpoint}"


def value_tag(v: Value) -> str:
    """CLASS:LABEL, or LABEL alone where it already starts with its class."""
    return v.label if v.label == v.klass or v.label.startswith(v.klass + ":") else f"{v.klass}:{v.label}"


def value_cases(target: Target) -> list[Case]:
    """Every single-field value of every endpoint, round-robin over fields, endpoints interleaved."""
    columns: list[list[Case]] = []
    for endpoint, specs in target.endpoints.items():
        for spec in specs:
            col = [Case(label(endpoint, [(spec.name, v)]), endpoint, {spec.name: v.value}, kind="value",
                        fields=((spec.name, v.klass),)) for v in valid_and_invalid_alternating(
                            values_for(spec, target.limits))]
            if col:
                columns.append(col)
    columns += [header_cases()]
    out: list[Case] = []
    depth = max((len(c) for c in columns), default=0)
    for i in range(depth):
        out += [c[i] for c in columns if i < len(c)]
    return out


def valid_and_invalid_alternating(values: list[Value]) -> list[Value]:
    """A field's values with valid and invalid ones taking turns, so that a budget that reaches
    only the first few values of every field still sends each field an invalid one (validation
    bugs such as an HTTP 500 for a value of the wrong type live there)."""
    valid = [v for v in values if v.valid]
    invalid = [v for v in values if not v.valid]
    out: list[Value] = []
    for i in range(max(len(valid), len(invalid))):
        out += [v[i] for v in (valid, invalid) if i < len(v)]
    return out


def header_cases() -> list[Case]:
    """Identity-bearing headers with unusual values (header values must be Latin-1: no Unicode)."""
    vals = [("empty", "empty", ""), ("long", "long", "h" * 8000), ("nested", "nested", '{"user":"x"}'),
            ("latin1", "unicode", "\u00dfen\u00e9")]
    return [Case(f"header:{h}={k}:{lab}", headers={h: v}, kind="header", fields=((f"header:{h}", k),))
            for lab, k, v in vals for h in IDENTITY_HEADERS]


def simple_fields(specs: list[FieldSpec]) -> list[FieldSpec]:
    """Fields with a boolean, number or enum type: one unusual value cannot be invalid by shape."""
    return [s for s in specs if s.name not in OWN_FIELDS
            and set(s.types) <= {"boolean", "integer", "number", "string"} and
            (set(s.types) & {"boolean", "integer", "number"} or "enum" in s.schema)]


def identical_cases(target: Target, group: int) -> list[Case]:
    """For each simple field: its first valid non-default value, sent by 2 requests at once
    (every field of every endpoint), then by 3..`group` at once (a batch of equal unusual
    requests)."""
    firsts: list[tuple[str, FieldSpec, Value]] = []
    for endpoint, specs in target.endpoints.items():
        for spec in simple_fields(specs):
            vals = [v for v in values_for(spec, target.limits)
                    if v.valid and not spec.is_default(v.value) and v.klass not in ("drawn", "long", "limit")]
            if vals:
                firsts.append((endpoint, spec, vals[0]))
    return [Case(label(endpoint, [(spec.name, v)]) + f"#x{size}", endpoint, {spec.name: v.value}, copies=size,
                 kind="identical", fields=((spec.name, v.klass),))
            for size in range(2, max(2, group) + 1) for endpoint, spec, v in firsts]


def within_budget(cases: list[Case], budget: int) -> list[Case]:
    """The longest prefix of `cases` whose requests fit in `budget`."""
    out, used = [], 0
    for c in cases:
        if used + c.requests > budget:
            break
        out.append(c)
        used += c.requests
    return out


def spend(kinds: dict[str, list[Case]], budget: int) -> list[Case]:
    """Share `budget` among the kinds (confusion, identical, pairwise capped by SHARES, values get
    the rest and whatever the others leave)."""
    chosen: dict[str, list[Case]] = {}
    left = budget
    for kind, share in SHARES.items():
        chosen[kind] = within_budget(kinds.get(kind, []), int(budget * share))
        left -= sum(c.requests for c in chosen[kind])
    chosen["value"] = within_budget(kinds.get("value", []), left)
    order = ("confusion", "identical", "value", "pairwise")
    return [c for k in order for c in chosen.get(k, [])]


def fallback_target() -> Target:
    """No OpenAPI document: only the fields every OpenAI-compatible server takes (the run is then
    UNKNOWN for availability: see `harness.adversary.coverage`)."""
    base = [FieldSpec("cache_salt", {"type": "string"}, True), FieldSpec("user", {"type": "string"}, True),
            FieldSpec("max_tokens", {"type": "integer"}, True, 16), FieldSpec("n", {"type": "integer"}, False, 1)]
    return Target({"completions": base}, has_schema=False)


