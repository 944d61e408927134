"""Does a known finding that a run did not provoke still reproduce? Its own reproducer decides
(docs/design.md, "Known findings").

A finding in the baseline applies to a run (same server version, one of its scenarios ran); when
the run's traffic matched none of its violations, the run alone cannot tell "fixed" from "not
provoked this time". So, after the checks and before the verdict, each such finding's `reproduce:`
(`harness.known.Reproduce`: a few exact requests, steps in order, each step's requests fired
together, and what their answers must show) is run against the run's own target, and the finding
is reported as "its reproducer still shows it", "fixed? its reproducer no longer shows it" or
"not re-checked: <why>". A reproducer that takes the server down runs only against a server the
harness owns and can restart (and the server is restarted afterwards when it must stay up).

The result is plain data on the `KnownOutcome` (`Recheck`); it only informs: the verdict is still
decided in `harness.verdict.decide` alone, from the run's own violations, so a reproducer never
turns a FAIL into a PASS. The reproducers' requests are not operations of the run's history, and
what the stack reports about them (a restart, a death the reproducer caused) is not the run's.
"""

from __future__ import annotations

import asyncio
import json
import secrets
from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import Any

import httpx

from harness.client.connection import Connection, current
from harness.incidents.replay import Replayer, ServerGone
from harness.known import KnownFinding, KnownOutcome, Recheck, Reproduce, ReproExpect, ReproRequest, Status
from harness.stacks.base import Stack
from harness.stacks.process import LaunchError

NONCE = "{nonce}"
REQUEST_TIMEOUT_S = 60.0
TAKES_DOWN = ("its reproducer takes the server down: it runs only against a server the harness owns and can "
              "restart")


@dataclass(frozen=True)
class Answer:
    """One reproducer request's answer: status (None: no answer) and output token ids (None: none read)."""

    status: int | None
    token_ids: tuple[int, ...] | None = None
    error: str = ""

    def __str__(self) -> str:
        return "no answer" if self.status is None else f"HTTP {self.status}"


async def recheck_known(outcomes: list[KnownOutcome], stack: Stack, *, restore: bool,
                        timeout_s: float = REQUEST_TIMEOUT_S) -> list[KnownOutcome]:
    """`outcomes` with `recheck` set on each finding the run did not provoke (see the module
    docstring). Reproducers that take the server down run last; with `restore` the server is
    restarted after one that showed its bug (the caller still needs it), else it is left as is."""
    pending = sorted((k for k in outcomes if not k.violations),
                     key=lambda k: bool(k.finding.reproduce and k.finding.reproduce.takes_server_down))
    done = {id(k): replace(k, recheck=await recheck_one(k.finding, stack, restore=restore, timeout_s=timeout_s))
            for k in pending}
    stack.events()  # what the stack saw during the reproducers (restarts, deaths) is not the run's
    return [done.get(id(k), k) for k in outcomes]


async def recheck_one(finding: KnownFinding, stack: Stack, *, restore: bool,
                      timeout_s: float = REQUEST_TIMEOUT_S) -> Recheck:
    """Run `finding`'s reproducer against `stack` (see the module docstring)."""
    repro = finding.reproduce
    if repro is None:
        return Recheck(Status.NOT_RECHECKED, "the finding has no machine-runnable reproducer (reproduce:)")
    if repro.takes_server_down and not (stack.traits.owned and stack.traits.can_restart):
        return Recheck(Status.NOT_RECHECKED, TAKES_DOWN)
    result = await _run(repro, stack, timeout_s)
    if repro.takes_server_down and restore:
        note = await _bring_back(stack, restart=result.status is Status.STILL_SHOWS)
        if note:
            result = replace(result, why=f"{result.why}; {note}")
    return result


async def _run(repro: Reproduce, stack: Stack, timeout_s: float) -> Recheck:
    try:
        await Replayer(stack, timeout_s=timeout_s, wait_s=0.0).ready()
        missing = sorted(_models(repro.requests()) - await served_models(stack.base_url))
        if missing:
            return Recheck(Status.NOT_RECHECKED, f"the target serves no model {', '.join(missing)}")
        return await _trials(repro, stack.base_url, min(timeout_s, REQUEST_TIMEOUT_S))
    except (httpx.HTTPError, ServerGone, LaunchError, OSError, ValueError) as exc:
        return Recheck(Status.NOT_RECHECKED, f"its reproducer could not run: {type(exc).__name__}: {exc}"[:300])


async def _trials(repro: Reproduce, base_url: str, timeout_s: float) -> Recheck:
    """Up to `repro.trials` trials; the first that shows the bug ends them."""
    unclear: list[str] = []
    seen = ""
    for t in range(repro.trials):
        answers = await run_steps(repro, base_url, timeout_s)
        seen = ", ".join(f"{name} {a}" for name, a in answers.items())
        control, why_control = judge(repro.control, answers)
        if control is not True:
            unclear.append(f"its control did not hold ({why_control})")
            continue
        shows, why = judge(repro.shows, answers)
        if shows is True:
            return Recheck(Status.STILL_SHOWS, f"trial {t + 1}: {seen}", t + 1)
        if shows is None:
            unclear.append(why)
    if unclear:
        return Recheck(Status.NOT_RECHECKED, f"its reproducer showed nothing either way in {len(unclear)} of "
                                             f"{repro.trials} trial(s): {unclear[-1]}", repro.trials)
    return Recheck(Status.FIXED, f"{repro.trials} trial(s); last: {seen}", repro.trials)


def judge(expect: ReproExpect, answers: dict[str, Answer]) -> tuple[bool | None, str]:
    """Whether `answers` meet `expect`: True, False, or None when they cannot tell (a token
    comparison without token ids); with the first reason it does not hold."""
    for name, allowed in expect.statuses.items():
        a = answers[name]
        if a.status not in allowed:
            return False, f"{name} got {a}, not {_statuses(allowed)}"
    for pairs, same in ((expect.tokens_same, True), (expect.tokens_differ, False)):
        for x, y in pairs:
            ax, ay = answers[x], answers[y]
            if ax.token_ids is None or ay.token_ids is None:
                lacking = x if ax.token_ids is None else y
                return None, f"{lacking} has no output token ids to compare ({answers[lacking]})"
            if (ax.token_ids == ay.token_ids) is not same:
                return False, f"{x} and {y} output {'different' if same else 'the same'} tokens"
    return True, ""


async def run_steps(repro: Reproduce, base_url: str, timeout_s: float) -> dict[str, Answer]:
    """One trial: each step's requests fired together, steps in order; name -> answer."""
    conn = current()
    width = max(len(step) for step in repro.steps)
    limits = httpx.Limits(max_connections=width, max_keepalive_connections=0)
    out: dict[str, Answer] = {}
    async with httpx.AsyncClient(base_url=base_url, limits=limits, verify=conn.verify(),
                                 timeout=httpx.Timeout(timeout_s, connect=min(10.0, timeout_s))) as client:
        for step in repro.steps:
            answers = await asyncio.gather(*(send(client, conn, q) for q in step))
            out.update({q.name: a for q, a in zip(step, answers, strict=True)})
    return out


async def send(client: httpx.AsyncClient, conn: Connection, q: ReproRequest) -> Answer:
    """POST one reproducer request (its `{nonce}`s filled) and read its status and token ids."""
    headers = {**conn.base_headers(), "Content-Type": "application/json"}
    try:
        resp = await client.post(q.path, content=json.dumps(_fill(q.body)), headers=headers)
    except httpx.HTTPError as exc:
        return Answer(None, None, f"{type(exc).__name__}: {exc}"[:200])
    return Answer(resp.status_code, _token_ids(resp) if resp.status_code == 200 else None,
                  "" if resp.status_code < 400 else resp.text[:200])


async def served_models(base_url: str) -> set[str]:
    """The model and adapter names the target lists at GET /v1/models."""
    conn = current()
    async with httpx.AsyncClient(base_url=base_url, timeout=10.0, headers=conn.base_headers(),
                                 verify=conn.verify()) as c:
        resp = await c.get("/v1/models")
        resp.raise_for_status()
        data = resp.json().get("data") or []
    return {str(m.get("id")) for m in data if isinstance(m, dict)}


def _models(requests: Iterable[ReproRequest]) -> set[str]:
    return {str(q.body["model"]) for q in requests if "model" in q.body}


def _fill(value: Any) -> Any:
    """`value` with every `{nonce}` in its strings replaced by a fresh random hex string."""
    if isinstance(value, str) and NONCE in value:
        return value.replace(NONCE, secrets.token_hex(8))
    if isinstance(value, dict):
        return {k: _fill(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_fill(v) for v in value]
    return value


def _token_ids(resp: httpx.Response) -> tuple[int, ...] | None:
    """The first choice's output token ids (`choices[0].token_ids`, as vLLM returns them with
    `return_token_ids`); None when the answer has none."""
    try:
        ids = resp.json()["choices"][0]["token_ids"]
    except (ValueError, KeyError, IndexError, TypeError):
        return None
    if not isinstance(ids, list) or not all(isinstance(i, int) for i in ids):
        return None
    return tuple(ids)


def _statuses(allowed: list[int | None]) -> str:
    return " or ".join("no answer" if s is None else str(s) for s in allowed)


async def _bring_back(stack: Stack, *, restart: bool) -> str:
    """After a reproducer that may take the server down: a fresh server when it showed its bug
    (an engine that failed may still answer for a moment), else restart only one that does not
    answer. Returns what went wrong ("" when the server serves again)."""
    try:
        if restart:
            await asyncio.to_thread(stack.restart)
        await Replayer(stack, wait_s=0.0).ready()
    except (ServerGone, LaunchError, OSError) as exc:
        return f"the server did not come back afterwards: {type(exc).__name__}: {exc}"[:300]
    return "the server was restarted afterwards" if restart else ""
