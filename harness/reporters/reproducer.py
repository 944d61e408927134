"""A reproducer per violation: the scenario cut down to the users involved, plus curl commands.

The YAML's header comment carries the seed, the run's nonce and the violation in plain words;
`requests.sh` replays the exact requests (bodies as sent) against the target.
"""

from __future__ import annotations

import json
import shlex
from pathlib import Path

from harness.history.record import History, Operation
from harness.plan.identity import wire_body
from harness.result import RunResult
from harness.scenario.io import dump_scenario
from harness.scenario.model import Scenario
from harness.verdict import Violation


def involved_users(scenario: Scenario, users: list[str]) -> set[str]:
    """The violation's users plus every user sharing a prefix with one of them."""
    named = set(users)
    prefixes = {p for u in scenario.users if u.name in named for p in u.prefixes}
    return named | {u.name for u in scenario.users if prefixes & set(u.prefixes)}


DEFAULT_KEY_ENV = "HARNESS_API_KEY"


def auth(env: str = DEFAULT_KEY_ENV) -> str:
    """curl's key: read from the environment variable `env` when the replay runs (nothing when it
    is unset); the history holds no key."""
    return f'${{{env}:+-H}} ${{{env}:+"Authorization: Bearer ${env}"}}'


def tenant_key_envs(scenario: Scenario | None) -> dict[str, str]:
    """Tenant -> the environment variable of its own key, where the scenario names one."""
    return {t.name: t.api_key_env for t in scenario.tenants if t.api_key_env} if scenario else {}


def curl_command(base_url: str, op: Operation, background: bool = False, identity: bool = False,
                 key_env: str = DEFAULT_KEY_ENV) -> str:
    """One request as a curl command, its key read from `key_env` (the tenant's own variable where
    it has one); `identity` adds the harness's X-Harness-* headers (what a fault proxy, and the
    triage replays, key on)."""
    path = "/v1/completions" if op.endpoint == "completions" else "/v1/chat/completions"
    body = json.dumps(wire_body(op.request, op.tenant), indent=1)
    ids = "".join(f" -H {shlex.quote(f'{k}: {v}')}" for k, v in (
        ("X-Harness-User", op.user), ("X-Harness-Tenant", op.tenant), ("X-Harness-Op", op.op_id))) if identity else ""
    ids = "".join(f" -H {header_arg(k, v)}" for k, v in op.headers.items()) + ids
    return (f"# {op.op_id} (user {op.user}, tenant {op.tenant})\n"
            f"curl -sS {shlex.quote(base_url + path)} {auth(key_env)} -H 'Content-Type: application/json'{ids} "
            "--data-binary @- <<'JSON'"
            f"{' &' if background else ''}\n{body}\nJSON\n" + ("" if background else "echo"))


def header_arg(name: str, value: str) -> str:
    """curl's -H argument sending `name: value` byte for byte as the client did (Latin-1): an
    empty value as `name;` (curl drops a header written `name:`), other bytes through printf."""
    if value == "":
        return shlex.quote(f"{name};")
    if value.isascii() and value.isprintable():
        return shlex.quote(f"{name}: {value}")
    raw = f"{name}: {value}".encode("latin-1")
    escaped = "".join(chr(b) if 32 <= b < 127 and chr(b) not in "%\\'" else f"\\{b:03o}" for b in raw)
    return f"\"$(printf '{escaped}')\""


def concurrent_ops(history: History, op: Operation) -> list[Operation]:
    """The requests of op's run that were in flight at the same time as op (op included)."""
    return [o for o in history.ops_of(op.scenario, op.run)
            if o.invoke_s < op.complete_s and op.invoke_s < o.complete_s]


def write_reproducer(folder: Path, index: int, violation: Violation, scenario: Scenario | None,
                     history: History, base_url: str) -> Path:
    out = folder / f"{index:03d}-{violation.check}-{violation.scenario}"
    out.mkdir(parents=True, exist_ok=True)
    main = history.run_info(violation.scenario, "main")
    header = "\n".join([
        f"Reproducer for a {violation.check} violation in scenario {violation.scenario!r}",
        violation.message,
        f"seed: {scenario.seed if scenario else '?'}   nonce:{main.nonce if main else '?'}",
        f"replay: kvbleed run --scenario {out / 'scenario.yaml'} --target URL",
    ])
    if scenario is not None:
        cut = scenario.restricted_to(involved_users(scenario, violation.users))
        (out / "scenario.yaml").write_text(dump_scenario(cut, header))
    ops = {o.op_id: o for o in history.ops}
    envs = tenant_key_envs(scenario)
    lines = ["#!/usr/bin/env sh", "# " + violation.message.replace("\n", " "),
             f"# Keys come from the environment: {DEFAULT_KEY_ENV}"
             + "".join(f", {env} for tenant {t}" for t, env in sorted(envs.items())) + "; no secret is written here.",
             "# The exact requests involved:"]

    def curl(op: Operation, background: bool = False, identity: bool = False) -> str:
        return curl_command(base_url, op, background, identity, envs.get(op.tenant, DEFAULT_KEY_ENV))

    if violation.details.get("fire_together"):
        # An incident's smallest reproducing group (harness.incidents): the failure needs these
        # requests in flight together, so they are fired concurrently, exactly as the replay did.
        lines += ["# sent concurrently, as the triage replay that reproduced it did:"]
        lines += [curl(ops[i], background=True, identity=True) for i in violation.op_ids if i in ops]
        lines += ["wait", "echo", "curl -sS -o /dev/null -w 'server answers GET /v1/models: HTTP %{http_code}\\n' "
                  + shlex.quote(base_url + "/v1/models")]
        (out / "requests.sh").write_text("\n".join(lines) + "\n")
        (out / "violation.json").write_text(json.dumps(violation.__dict__, indent=2, default=str))
        return out
    lines += [curl(ops[i]) for i in violation.op_ids if i in ops]
    observed = ops.get(violation.op_ids[-1]) if violation.op_ids else None
    batch = concurrent_ops(history, observed) if observed is not None else []
    if observed is not None and len(batch) > 1:
        lines += ["", f"# The {len(batch)} requests that were in flight together with {observed.op_id}, sent",
                  "# concurrently (a violation that needs batching only shows when they share a batch):"]
        lines += [curl(o, background=True) for o in batch] + ["wait", "echo"]
    (out / "requests.sh").write_text("\n".join(lines) + "\n")
    (out / "violation.json").write_text(json.dumps(violation.__dict__, indent=2, default=str))
    return out


def write_reproducers(result: RunResult, folder: Path) -> list[str]:
    """A reproducer per violation (known findings' last), numbered in report order, under
    `folder/reproducers/`; returns their paths."""
    by_name = {s.name: s for s in result.scenarios}
    out = []
    for i, v in enumerate(result.violations + result.known_violations):
        out.append(str(write_reproducer(Path(folder) / "reproducers", i + 1, v, by_name.get(v.scenario),
                                        result.history, result.meta.target)))
    return out
