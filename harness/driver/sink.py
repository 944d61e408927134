"""Where the driver records: anything with `append(record)`; the engine gives it a `HistoryWriter`
(streamed to history.jsonl) or a `MemorySink` (memory only)."""

from __future__ import annotations

from typing import Protocol

from harness.history.record import Record


class Sink(Protocol):
    """Receives history records in the order they happen; `records` holds them all."""

    records: list[Record]

    def append(self, rec: Record) -> None: ...

    def close(self) -> None: ...


class MemorySink:
    """A sink that keeps the records in memory only."""

    def __init__(self) -> None:
        self.records: list[Record] = []

    def append(self, rec: Record) -> None:
        self.records.append(rec)

    def close(self) -> None:
        pass
