"""`FaultedStack`: a stack seen through the fault proxy, so that the engine drives a faulted
server like any other and finds each injection in the history (`events()`)."""

from __future__ import annotations

from harness.faults.proxy import DEFAULT_TIMEOUT_S, FaultProxy
from harness.history.record import Event
from harness.stacks.base import Stack, StackTraits


class FaultedStack:
    """`inner` behind a `FaultProxy` injecting `fault` at `rate` (seeded): `base_url` is the
    proxy's; `start()` starts the inner stack if it is not running (and `stop()` stops it only
    then) and the proxy; `events()` gives the inner stack's events and the proxy's injections
    (`FaultInjection` records) since the last call."""

    def __init__(self, inner: Stack, fault: str | None, rate: float = 1.0, seed: int = 0, *,
                 timeout_s: float = DEFAULT_TIMEOUT_S, swap_window_s: float | None = None) -> None:
        self.inner = inner
        self.proxy = FaultProxy("http://unstarted", fault=fault, rate=rate, seed=seed, timeout_s=timeout_s,
                                swap_window_s=swap_window_s)
        self.NAME = f"{inner.NAME} through fault {self.proxy.fault or 'none'}"
        self._started_inner = False
        self._reported = 0

    @property
    def traits(self) -> StackTraits:
        return self.inner.traits

    @property
    def base_url(self) -> str:
        return self.proxy.url

    @property
    def startup_s(self) -> float | None:
        return self.inner.startup_s

    def start(self) -> str:
        if not self.inner.alive:
            self.inner.start()
            self._started_inner = True
        self.proxy.retarget(self.inner.base_url)
        return self.proxy.start()

    def stop(self) -> None:
        self.proxy.stop()
        if self._started_inner:
            self.inner.stop()
            self._started_inner = False

    def restart(self) -> str:
        self.proxy.retarget(self.inner.restart())
        return self.proxy.url

    @property
    def alive(self) -> bool:
        """The inner stack is up and the proxy in front of it serves."""
        return self.proxy.running and self.inner.alive

    def check_alive(self) -> None:
        self.inner.check_alive()

    def events(self) -> list[Event]:
        injections = self.proxy.injections.snapshot()
        new, self._reported = injections[self._reported:], len(injections)
        return [*self.inner.events(), *(inj.to_record() for inj in new)]

    def __enter__(self) -> FaultedStack:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
