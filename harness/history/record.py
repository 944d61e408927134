"""The history: an append-only record of every operation, saved as JSONL.

Record kinds (docs/design.md, "History"): a `HistoryHeader` first (the schema version),
`RunInfo` (one per driven run: scenario, nonce, which user content variant each user had,
canaries, the cache-isolation mode of a replay), `Operation` (one per request, with invoke/complete
times and everything the client returned), `MetricsSnapshot`, and the kinds for what happens to
the server rather than through it: `FaultInjection`, `NemesisAction`, `Incident`, `CalibrationRun`
and `TriageReplay`. Every check reads only these. A file without a header is schema version 1.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field, fields
from enum import StrEnum
from pathlib import Path
from typing import Any, BinaryIO

from harness import fastjson
from harness.fastjson import all_finite

SCHEMA_VERSION = 2
"""Version 2 added the header and the fault, nemesis, incident, calibration and triage kinds; a
version 1 file (no header) reads the same otherwise."""


class HistorySchemaError(ValueError):
    """A history file this version of the harness cannot read (newer schema, or not a history)."""


class Role(StrEnum):
    """What a run is for; `RunInfo.run` names the run ("cf-2"), its role says what it is."""

    MAIN = "main"
    COUNTERFACTUAL = "counterfactual"
    SOLO = "solo"
    ADVERSARY = "adversary"
    ADVERSARY_ALONE = "adversary-alone"
    CALIBRATION = "calibration"
    """An A/A repeat of the main run ("aa-N"): the same content and schedule, to measure the noise."""

    @classmethod
    def of_run(cls, run: str) -> Role:
        """The role of a run name as the planner gives them ("main", "cf-N", "aa-N", "solo", "adversary...")."""
        if run.startswith("cf-"):
            return cls.COUNTERFACTUAL
        if run.startswith("aa-"):
            return cls.CALIBRATION
        if run == cls.ADVERSARY_ALONE.value:
            return cls.ADVERSARY_ALONE
        if run.startswith("adversary"):
            return cls.ADVERSARY
        return cls(run)

    @property
    def hostile(self) -> bool:
        return self in (Role.ADVERSARY, Role.ADVERSARY_ALONE)


@dataclass
class HistoryHeader:
    """The first record of a history file: which schema the rest follows."""

    schema_version: int = SCHEMA_VERSION
    harness_version: str = ""
    stack_owned: bool | None = None
    """The harness launched the server and no other client reaches it (None: not recorded)."""
    policy: str | None = None
    tolerance: float | None = None
    """The run's comparison settings, so that a history whose run never finished can be judged
    the same way (`harness.salvage`; None: not recorded)."""
    kind: str = "header"


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
    borrowed_salt_of: str | None = None
    """A hostile request that sent this user's exact cache salt (the adversary's victim-salt cases)."""
    headers: dict[str, str] = field(default_factory=dict)
    """Headers the request chose beyond the connection's and the harness's own `X-Harness-*` (the
    adversary's fuzzed identity headers), exactly as sent: replays and reproducers send them too."""
    kind: str = "op"

    @classmethod
    def from_result(cls, result: object, **meta: Any) -> Operation:
        """An operation from a client result (any dataclass with the same field names) and the
        driver's metadata. Shallow: the result's lists become the operation's (asdict deep-copies
        every token and logprob, which cost more CPU per request than the HTTP client)."""
        return cls(**meta, **{k: getattr(result, k) for k in _shared_fields(cls, type(result))})

    @property
    def role(self) -> Role:
        return Role.of_run(self.run)


LIFE_END = "life-end"
"""The label of the counters of a server the harness is about to restart."""
LIFE_START = "life-start"
"""The label of the counters of the fresh server after that restart."""


@dataclass
class MetricsSnapshot:
    """The server's own prefix-cache counters at a point of the run (None: not exposed)."""

    label: str  # "before" | "after" | "life-end" / "life-start" around a restart by the harness
    at_s: float
    queries: float | None
    hits: float | None
    kind: str = "metrics"


@dataclass
class FaultInjection:
    """The fault proxy changed a request or response (or injected an error) for one operation."""

    fault: str
    at_s: float
    op_id: str | None  # the harness operation whose traffic was changed (X-Harness-Op), if known
    user: str | None = None
    tenant: str | None = None
    action: str = ""  # what was done, in words: "swapped the response with op ...", "HTTP 503"
    details: dict[str, Any] = field(default_factory=dict)
    kind: str = "fault"


@dataclass
class NemesisAction:
    """Something the harness did to the server while clients ran (cache reset, adapter reload, ...)."""

    nemesis: str
    at_s: float
    action: str
    took_effect: bool = True
    details: dict[str, Any] = field(default_factory=dict)
    kind: str = "nemesis"


@dataclass
class Incident:
    """A loss of service during the run: a server death, connection loss, timeout or run of 5xx,
    with the operations that were in flight."""

    what: str  # "server-died" | "connection-lost" | "timeout" | "5xx-run"
    at_s: float
    in_flight: list[str] = field(default_factory=list)  # op ids
    caused_by_harness: bool = False  # a restart or kill the harness's own nemesis/fleet test made
    message: str = ""
    kind: str = "incident"


@dataclass
class CalibrationRun:
    """A repeat of the same traffic used to measure the target's own noise (A/A runs)."""

    run: str
    scenario: str
    repeat: int
    note: str = ""
    kind: str = "calibration"


@dataclass
class TriageReplay:
    """A replay of requests that were in flight at an incident, to see whether they reproduce it."""

    incident_at_s: float
    op_ids: list[str]
    reproduced: bool
    note: str = ""
    server_down: bool = False
    """The server did not answer after this replay (it died: no chance recurrence of a 5xx)."""
    confirming: bool = False
    """A confirmation replay of the bisection's final group (harness.incidents.triage_run)."""
    control: bool = False
    """A plain request that succeeded in the run, replayed alone after the confirmations: when it
    fails too, the target was refusing everyone, not reacting to the group."""
    kind: str = "triage"


@dataclass
class ReplicaAttribution:
    """Which replica of a fleet served each operation (by op id), from the replicas' own ledgers
    (`stacks.fleet`). An op that reached several replicas (a router retry) is ambiguous; an op in
    neither map has no known replica."""

    at_s: float
    replicas: list[str]
    served: dict[str, str] = field(default_factory=dict)  # op id -> replica
    ambiguous: list[str] = field(default_factory=list)  # op ids seen on more than one replica
    source: str = ""
    kind: str = "replicas"


Event = FaultInjection | NemesisAction | Incident | CalibrationRun | TriageReplay | ReplicaAttribution
Record = HistoryHeader | RunInfo | Operation | MetricsSnapshot | Event
_EVENT_KINDS: dict[str, type[HistoryHeader | RunInfo | MetricsSnapshot | Event]] = {
    "header": HistoryHeader, "run": RunInfo, "metrics": MetricsSnapshot, "fault": FaultInjection,
    "nemesis": NemesisAction, "incident": Incident, "calibration": CalibrationRun, "triage": TriageReplay,
    "replicas": ReplicaAttribution,
}


_SHARED_FIELDS: dict[tuple[type, type], tuple[str, ...]] = {}
_FIELD_NAMES: dict[type, tuple[str, ...]] = {}


def _shared_fields(cls: type, other: type) -> tuple[str, ...]:
    """The dataclass fields of `other` that `cls` also has, computed once per pair of classes."""
    names = _SHARED_FIELDS.get((cls, other))
    if names is None:
        own = {f.name for f in fields(cls)}
        names = _SHARED_FIELDS[(cls, other)] = tuple(f.name for f in fields(other) if f.name in own)
    return names


def _field_names(cls: type) -> tuple[str, ...]:
    """The dataclass fields of `cls`, computed once per class."""
    names = _FIELD_NAMES.get(cls)
    if names is None:
        names = _FIELD_NAMES[cls] = tuple(f.name for f in fields(cls))
    return names


def _to_json(rec: Record) -> bytes:
    # Dataclasses are serialised field by field in orjson itself (no intermediate dict); a record
    # holding a NaN or infinite logprob goes through the standard library, which keeps them.
    if isinstance(rec, Operation) and not _finite_logprobs(rec):
        return fastjson.dumps({k: getattr(rec, k) for k in _field_names(type(rec))}, finite=False)
    return fastjson.dumps(rec)


def _finite_logprobs(op: Operation) -> bool:
    """No NaN or infinite logprob anywhere in the operation. One sum per list is finite when
    every term is (the common case); only a sum that is not gets the exact, per-value check."""
    try:
        if math.isfinite(sum(op.token_logprobs)) and math.isfinite(sum(map(sum, map(dict.values, op.top_logprobs)))):
            return True
    except TypeError:  # a top-logprob container that is not a dict: the exact check below
        pass
    return all_finite(op.token_logprobs) and all(all_finite(top.values()) for top in op.top_logprobs)


def _from_json(line: str | bytes) -> Record:
    d = fastjson.loads(line)
    if not isinstance(d, dict):
        raise HistorySchemaError(f"not a history record: {str(line)[:80]}")
    cls = _EVENT_KINDS.get(d.get("kind", "op"))
    if cls is HistoryHeader and int(d.get("schema_version", 0)) > SCHEMA_VERSION:
        raise HistorySchemaError(
            f"history schema version {d.get('schema_version')} is newer than this harness reads "
            f"({SCHEMA_VERSION}); upgrade the harness to read it")
    if cls is not None:
        return cls(**d)
    if d.get("kind", "op") != "op":
        raise HistorySchemaError(f"unknown history record kind {d.get('kind')!r}")
    d["top_logprobs"] = [{int(k): v for k, v in top.items()} for top in d.get("top_logprobs") or []]
    return Operation(**d)


class HistoryWriter:
    """Appends records to a JSONL file as they happen (flushed per record: nothing is lost)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fh: BinaryIO = open(self.path, "ab")  # noqa: SIM115  (open until close(); flushed per record)
        self.records: list[Record] = []

    def append(self, rec: Record) -> None:
        self.records.append(rec)
        self._fh.write(_to_json(rec) + b"\n")
        self._fh.flush()

    def close(self) -> None:
        self._fh.close()

    def __enter__(self) -> HistoryWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_history(path: Path, *, torn_tail_ok: bool = False) -> list[Record]:
    """The records of a history file. `torn_tail_ok`: a last line cut off mid-write (the writing
    process was killed) is dropped instead of failing the read."""
    with open(path, "rb") as fh:
        lines = [line for line in fh if line.strip()]
    if torn_tail_ok and lines and not lines[-1].endswith(b"\n"):
        try:
            _from_json(lines[-1])
        except (ValueError, TypeError, HistorySchemaError):
            lines.pop()
    records = [_from_json(line) for line in lines]
    if not records or not isinstance(records[0], HistoryHeader):
        _upgrade_v1(records)
    return records


def _upgrade_v1(records: list[Record]) -> None:
    """Version 1 named the user whose salt an adversarial case borrowed only in its op id
    ("adversary/SCENARIO/boundary-31-victim-salt:USER"); version 2 has `borrowed_salt_of`."""
    for r in records:
        if isinstance(r, Operation) and r.borrowed_salt_of is None and r.run.startswith("adversary"):
            head, sep, user = r.op_id.rpartition("-victim-salt:")
            if sep and head:
                r.borrowed_salt_of = user


class _Index:
    """One pass over the records: by kind, and operations and run infos by (scenario, run)."""

    def __init__(self, records: list[Record]) -> None:
        self.key = (id(records), len(records))
        self.runs: list[RunInfo] = []
        self.metrics: list[MetricsSnapshot] = []
        self.events: list[Event] = []
        self.schema_version = 1
        self.header: HistoryHeader | None = None
        self.ops: list[Operation] = []
        self.ops_by_run: dict[tuple[str, str], list[Operation]] = {}
        self.info_by_run: dict[tuple[str, str], RunInfo] = {}
        for r in records:
            if isinstance(r, Operation):
                self.ops.append(r)
                self.ops_by_run.setdefault((r.scenario, r.run), []).append(r)
            elif isinstance(r, RunInfo):
                self.runs.append(r)
                self.info_by_run.setdefault((r.scenario, r.run), r)
            elif isinstance(r, MetricsSnapshot):
                self.metrics.append(r)
            elif isinstance(r, HistoryHeader):
                self.schema_version = r.schema_version
                self.header = r
            else:
                self.events.append(r)
        self.scenarios = list(dict.fromkeys(r.scenario for r in self.runs))


@dataclass
class History:
    """Read-side view of a history: run infos and operations, indexed for the checks.

    The index is built in one pass (again if records are appended), so `ops_of` and `run_info`
    cost what they return, not a scan of the whole history: the checks stay linear in its size."""

    records: list[Record]

    def _index(self) -> _Index:
        idx: _Index | None = self.__dict__.get("_idx")
        if idx is None or idx.key != (id(self.records), len(self.records)):
            idx = self.__dict__["_idx"] = _Index(self.records)
        return idx

    @property
    def runs(self) -> list[RunInfo]:
        return list(self._index().runs)

    @property
    def metrics(self) -> list[MetricsSnapshot]:
        return list(self._index().metrics)

    @property
    def ops(self) -> list[Operation]:
        return list(self._index().ops)

    @property
    def events(self) -> list[Event]:
        """Fault injections, nemesis actions, incidents, calibration and triage records, in order."""
        return list(self._index().events)

    @property
    def schema_version(self) -> int:
        return self._index().schema_version

    @property
    def header(self) -> HistoryHeader | None:
        """The header record (None in a version-1 history)."""
        return self._index().header

    def run_info(self, scenario: str, run: str) -> RunInfo | None:
        return self._index().info_by_run.get((scenario, run))

    def ops_of(self, scenario: str, run: str) -> list[Operation]:
        return list(self._index().ops_by_run.get((scenario, run), ()))

    def scenarios(self) -> list[str]:
        return list(self._index().scenarios)

    @staticmethod
    def conversations(ops: Iterable[Operation]) -> dict[str, list[Operation]]:
        """user -> that user's operations in turn order."""
        out: dict[str, list[Operation]] = {}
        for o in sorted(ops, key=lambda o: (o.user, o.turn)):
            out.setdefault(o.user, []).append(o)
        return out
