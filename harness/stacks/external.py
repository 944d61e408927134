"""A server the harness does not own: a base URL. It cannot be restarted, and other traffic may
reach it, so everything that needs ownership (a cold solo reference by restart, exact counter
agreement) is unavailable and fails closed."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from harness.history.record import Event
from harness.stacks.base import StackTraits


@dataclass
class ExternalStack:
    url: str
    NAME: ClassVar[str] = "external server"
    startup_s: float | None = field(default=None, init=False)

    @property
    def traits(self) -> StackTraits:
        return StackTraits(owned=False, can_restart=False)

    @property
    def base_url(self) -> str:
        return self.url.rstrip("/")

    def start(self) -> str:
        return self.base_url

    def stop(self) -> None:
        pass

    def restart(self) -> str:
        raise NotImplementedError("the harness does not own this server and cannot restart it")

    @property
    def alive(self) -> bool:
        return True

    def check_alive(self) -> None:
        pass

    def events(self) -> list[Event]:
        return []
