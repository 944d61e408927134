"""Crash triage's bisection: the smallest group of requests that still reproduces a failure.

`triage(group, replay)` (and `atriage` for an async `replay`) first replays the whole group, then
narrows it one needed member at a time: the shortest prefix that (with the members kept so far)
still reproduces ends with a needed member, found by binary search. Finally each member is
removed in turn and the rest replayed: the result is 1-minimal (removing any single member makes
the failure go away), shown by replays rather than assumed. So it finds pairs (a group that fails
only when two specific members overlap), not only single culprits. A `hint` (the requests that themselves failed) is
tried right after the whole group, since it is usually where the culprit is.

The algorithm is one generator (`_search`) that proposes groups and is told whether each
reproduced; the sync and async drivers only run the replays, so both behave identically.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Generator, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

T = TypeVar("T")

DEFAULT_MAX_REPLAYS = 64
"""Replays one triage may spend; past it the smallest group that reproduced so far is returned."""


@dataclass(frozen=True)
class Triage(Generic[T]):
    """What a triage showed: the smallest group that reproduced (None: the whole group did not),
    whether it is 1-minimal (the bisection finished within its budget), and the replays spent."""

    group: list[T] | None
    minimal: bool
    replays: int

    @property
    def reproduced(self) -> bool:
        return self.group is not None


def _narrow(current: list[int]) -> Generator[list[int], bool, list[int]]:
    """Reduce a reproducing group (of member indices) one necessary member at a time: binary-search
    the shortest prefix that, with the members kept so far, still reproduces; its last member is
    needed; keep it and search the part before it, until the kept members alone reproduce. About
    log2(n) replays per needed member, so a pair in 64 requests costs about 14, not a sweep."""
    kept: list[int] = []
    rest = list(current)
    while rest:
        if kept and (yield sorted(kept)):
            break
        lo, hi = 1, len(rest)  # kept + rest[:hi] reproduces
        while lo < hi:
            mid = (lo + hi) // 2
            if (yield sorted(kept + rest[:mid])):
                hi = mid
            else:
                lo = mid + 1
        kept.append(rest[hi - 1])
        rest = rest[: hi - 1]
    return sorted(kept)


def _search(group: list[int], hint: list[int]) -> Generator[list[int], bool, list[int] | None]:
    if not (yield group):
        return None
    current = group
    if hint and len(hint) < len(group) and (yield hint):
        current = hint
    while True:
        current = yield from _narrow(current)
        for x in current if len(current) > 1 else ():  # each member shown to be needed
            rest = [y for y in current if y != x]
            if (yield rest):
                current = rest
                break
        else:
            return current


def triage(group: Sequence[T], replay: Callable[[list[T]], bool], *, hint: Sequence[int] = (),
           max_replays: int = DEFAULT_MAX_REPLAYS, attempts: int = 2) -> Triage[T]:
    """`atriage` with a plain `replay` (call it outside a running event loop): the smallest
    subgroup of `group` for which `replay` still reproduces."""

    async def areplay(subgroup: list[T]) -> bool:
        return replay(subgroup)

    return asyncio.run(atriage(group, areplay, hint=hint, max_replays=max_replays, attempts=attempts))


async def atriage(group: Sequence[T], replay: Callable[[list[T]], Awaitable[bool]], *, hint: Sequence[int] = (),
                  max_replays: int = DEFAULT_MAX_REPLAYS, attempts: int = 2) -> Triage[T]:
    """The smallest subgroup of `group` for which `replay` (fire the subgroup concurrently; True
    when the failure recurred) still reproduces. `hint`: positions in `group` to try right after
    the whole group. The whole group gets up to `attempts` tries (a failure that needs overlap
    may miss once); every narrower group one."""
    items = list(group)
    search = _search(list(range(len(items))), _valid(hint, len(items)))
    spent, last, tries = 0, None, attempts
    try:
        proposal = next(search)
        while True:
            if spent >= max_replays:
                return _result(items, last, False, spent)
            ok = False
            for _ in range(max(tries, 1)):
                spent += 1
                if await replay([items[i] for i in proposal]):
                    ok = True
                    break
            tries = 1
            last = proposal if ok else last
            proposal = search.send(ok)
    except StopIteration as stop:
        return _result(items, stop.value, stop.value is not None, spent)


def _valid(hint: Sequence[int], n: int) -> list[int]:
    return sorted({i for i in hint if 0 <= i < n})


def _result(items: list[T], found: list[int] | None, minimal: bool, spent: int) -> Triage[T]:
    return Triage(None if found is None else [items[i] for i in found], minimal, spent)
