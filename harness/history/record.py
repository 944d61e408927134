"""The history: an append-only record of every operation, saved as JSONL.

Two record types: `RunInfo` (one per driven run: scenario, nonce, which user content variant each
user had, canaries, the cache-isolation mode of a replay) and `Operation` (one per request, with
invoke/complete times and everything the client returned). Every check reads only these.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Iterable, TextIO

from harness.target.client import GenerationResult


@dataclass
class RunInfo:
    """One driven run of a scenario: the main run, a counterfactual re-run or a solo replay."""

    run: str  # "main", "cf-0", "cf-1", "solo"
    scenario: str
    nonce: str
    seed: int
    variants: dict[str, int]  # user -> private content variant
    canaries: dict[str, list[str]]  # user -> canary phrases in that user's content
    tenants: dict[str, str]  # user -> tenant
    models: dict[str, str]  # user -> model or adapter name sent
    isolation: str = "shared"  # "shared" (normal run) | "salt" | "reset" | "warm" (solo replay modes)
    requires_cross_user_hits: bool = False
    note: str = ""
    kind: str = "run"


@dataclass
class Operation:
    """One request and its result, as recorded by the driver."""

    run: str
    scenario: str
    op_id: str
    user: str
    tenant: str
    turn: int
    model: str
    endpoint: str
    stream: bool
    cache_salt: str | None
    request: dict[str, Any]
    invoke_s: float
    complete_s: float
    ok: bool
    status: int | None = None
    error: str | None = None
    served_model: str | None = None
    prompt_token_ids: list[int] | None = None
    output_token_ids: list[int] = field(default_factory=list)
    output_text: str = ""
    token_logprobs: list[float] = field(default_factory=list)
    top_logprobs: list[dict[int, float]] = field(default_factory=list)
    cached_tokens: int | None = None
    prompt_tokens: int | None = None
    ttft_s: float | None = None
    finish_reason: str | None = None
    token_ids_source: str | None = None  # see GenerationResult: "server", "tokenize", "tokenize-text"
    kind: str = "op"

    @classmethod
    def from_result(cls, result: GenerationResult, **meta: Any) -> "Operation":
        own = {f.name for f in fields(cls)}
        values = {k: v for k, v in asdict(result).items() if k in own}
        return cls(**meta, **values)


@dataclass
class MetricsSnapshot:
    """The server's own prefix-cache counters at a point of the run (None: not exposed)."""

    label: str  # "before" | "after"
    at_s: float
    queries: float | None
    hits: float | None
    kind: str = "metrics"


Record = RunInfo | Operation | MetricsSnapshot


def _to_json(rec: Record) -> str:
    d = asdict(rec)
    if isinstance(rec, Operation):
        d["top_logprobs"] = [{str(k): v for k, v in top.items()} for top in rec.top_logprobs]
    return json.dumps(d, separators=(",", ":"), allow_nan=True)


def _from_json(line: str) -> Record:
    d = json.loads(line)
    if d.get("kind") == "run":
        return RunInfo(**d)
    if d.get("kind") == "metrics":
        return MetricsSnapshot(**d)
    d["top_logprobs"] = [{int(k): v for k, v in top.items()} for top in d.get("top_logprobs") or []]
    return Operation(**d)


class HistoryWriter:
    """Appends records to a JSONL file as they happen (flushed per record: nothing is lost)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fh: TextIO = open(self.path, "a", encoding="utf-8")
        self.records: list[Record] = []

    def append(self, rec: Record) -> None:
        self.records.append(rec)
        self._fh.write(_to_json(rec) + "\n")
        self._fh.flush()

    def close(self) -> None:
        self._fh.close()

    def __enter__(self) -> "HistoryWriter":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_history(path: Path) -> list[Record]:
    with open(path, encoding="utf-8") as fh:
        return [_from_json(line) for line in fh if line.strip()]


@dataclass
class History:
    """Read-side view of a history: run infos and operations, indexed for the checks."""

    records: list[Record]

    @property
    def runs(self) -> list[RunInfo]:
        return [r for r in self.records if isinstance(r, RunInfo)]

    @property
    def metrics(self) -> list[MetricsSnapshot]:
        return [r for r in self.records if isinstance(r, MetricsSnapshot)]

    @property
    def ops(self) -> list[Operation]:
        return [r for r in self.records if isinstance(r, Operation)]

    def run_info(self, scenario: str, run: str) -> RunInfo | None:
        return next((r for r in self.runs if r.scenario == scenario and r.run == run), None)

    def ops_of(self, scenario: str, run: str) -> list[Operation]:
        return [o for o in self.ops if o.scenario == scenario and o.run == run]

    def scenarios(self) -> list[str]:
        return list(dict.fromkeys(r.scenario for r in self.runs))

    @staticmethod
    def conversations(ops: Iterable[Operation]) -> dict[str, list[Operation]]:
        """user -> that user's operations in turn order."""
        out: dict[str, list[Operation]] = {}
        for o in sorted(ops, key=lambda o: (o.user, o.turn)):
            out.setdefault(o.user, []).append(o)
        return out
