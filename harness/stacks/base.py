"""The `Stack` protocol: a server (or several) under test that the harness may own.

A stack is what `engine.run` drives against. It says where to send requests, whether the harness
owns the processes (and so may restart them, see docs/design.md, "The pipeline"), and what it
can do. Implementations: `stacks.vllm.EmbeddedServer`, `stacks.llamacpp.LlamaCppServer`,
`stacks.external.ExternalStack` (a URL the harness does not own); a fleet is one more.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from harness.history.record import Event


@dataclass(frozen=True)
class StackTraits:
    """What a stack can do, independent of what the probe later finds on the wire."""

    owned: bool
    """The harness launched the processes: it may restart them, and no other traffic exists."""
    can_restart: bool
    """`restart()` gives a fresh server process (an empty cache by construction)."""
    replicas: int = 1


@runtime_checkable
class Stack(Protocol):
    """A server under test. `start` returns the base URL; `stop` is idempotent."""

    @property
    def NAME(self) -> str:
        """The stack's name in words ("embedded vLLM")."""

    @property
    def traits(self) -> StackTraits: ...

    @property
    def base_url(self) -> str: ...

    @property
    def startup_s(self) -> float | None: ...

    def start(self) -> str: ...

    def stop(self) -> None: ...

    def restart(self) -> str: ...

    @property
    def alive(self) -> bool: ...

    def check_alive(self) -> None:
        """Raise `stacks.LaunchError` quoting the log when an owned process has died."""

    def events(self) -> list[Event]:
        """What the stack did or suffered since the last call (fault injections, restarts, deaths),
        as history records; the engine appends them to the run's history."""
