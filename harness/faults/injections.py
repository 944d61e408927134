"""What the fault proxy did: one `Injection` per changed request or response, kept in a
thread-safe log, and read into the history as `FaultInjection` records."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

from harness.driver.driver import now
from harness.history.record import FaultInjection


@dataclass(frozen=True)
class Injection:
    """One injected fault: which request (n-th generation request, op id, identity) and what changed."""

    seq: int
    """1-based ordinal of the request among the generation requests this proxy has seen."""
    op: str | None
    user: str | None
    tenant: str | None
    fault: str
    detail: str
    path: str
    at: float = field(default_factory=time.time)
    at_s: float = field(default_factory=now)
    """When, on the driver's clock (`Operation.invoke_s` and `complete_s` read the same)."""

    def to_record(self) -> FaultInjection:
        """This injection as a history record."""
        return FaultInjection(fault=self.fault, at_s=self.at_s, op_id=self.op, user=self.user, tenant=self.tenant,
                              action=self.detail, details={"seq": self.seq, "path": self.path})


class InjectionLog:
    """A thread-safe, append-only list of `Injection`s (the proxy thread writes, callers read)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._items: list[Injection] = []

    def append(self, item: Injection) -> None:
        with self._lock:
            self._items.append(item)

    def snapshot(self) -> list[Injection]:
        with self._lock:
            return list(self._items)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)

    def __iter__(self) -> Iterator[Injection]:
        return iter(self.snapshot())

    def __getitem__(self, i: int) -> Injection:
        with self._lock:
            return self._items[i]

    def __bool__(self) -> bool:
        return len(self) > 0

    def __repr__(self) -> str:
        return f"InjectionLog({self.snapshot()!r})"
