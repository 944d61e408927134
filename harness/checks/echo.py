"""`prompt-echo`: every response reports its own request's prompt.

A server echoes the prompt token ids of the request it answered (vLLM's `return_token_ids`). Two
of the harness's own requests whose prompts differ cannot be tokenized to the same ids (the
tokenizer is a function of the text, and every victim prompt is plain pool words), so two such
requests reporting the same prompt ids means at least one was answered with another request's
response: a response cache keyed on too little, or responses crossed between connections. The
differential checks miss that bug class when the wrong response is served the same way in every
run, the solo reference included (a response cache that ignores the salt serves the solo replay
too): docs/design.md, "Prompt echo". Hostile requests are left out (their prompts may be crafted
to tokenize alike).
"""

from __future__ import annotations

import json

from harness.checks.base import CheckContext, Need, check
from harness.history.record import History, Operation
from harness.verdict import CheckResult, Verdict, Violation

PROMPT_FIELDS = ("prompt", "messages")
"""The request fields that hold the prompt (completions, chat)."""


def prompt_content(op: Operation) -> str | None:
    """The prompt as the request sent it (JSON of `prompt` or `messages`); None when unknown."""
    if not isinstance(op.request, dict):
        return None
    for name in PROMPT_FIELDS:
        if name in op.request:
            return json.dumps(op.request[name], sort_keys=True)
    return None


@check("prompt-echo", "each response reports its own request's prompt: different prompts never echo the same "
       "prompt token ids", needs=(Need.PROMPT_IDS,))
def prompt_echo(history: History, ctx: CheckContext) -> CheckResult:
    result = CheckResult("", Verdict.UNKNOWN)
    ops = [o for o in history.ops if o.ok and not o.role.hostile]
    contents = {o.op_id: c for o in ops if o.prompt_token_ids and (c := prompt_content(o)) is not None}
    echoed = [o for o in ops if o.op_id in contents]
    if not echoed:
        result.notes.append("no response reported its prompt token ids" if ops else "no request succeeded")
        return result
    groups: dict[tuple[str, tuple[int, ...]], dict[str, list[Operation]]] = {}
    for o in echoed:
        key = (o.endpoint, tuple(o.prompt_token_ids or ()))
        groups.setdefault(key, {}).setdefault(contents[o.op_id], []).append(o)
    result.exercised = len(echoed)
    result.evidence.update({"responses": len(echoed), "distinct_prompt_ids": len(groups),
                            "without_prompt_ids": len(ops) - len(echoed)})
    for (endpoint, ids), by_prompt in groups.items():
        if len(by_prompt) < 2:
            continue
        firsts = [members[0] for members in by_prompt.values()]
        everyone = [o for members in by_prompt.values() for o in members]
        result.violations.append(Violation(
            check="prompt-echo", scenario=firsts[0].scenario, users=sorted({o.user for o in everyone}),
            op_ids=[o.op_id for o in everyone],
            message=(f"{len(by_prompt)} different prompts on {endpoint} were answered with the same {len(ids)} prompt "
                     f"token ids ({', '.join(o.op_id for o in firsts[:4])}{' ...' if len(firsts) > 4 else ''}): "
                     "a response that answers another request"),
            details={"endpoint": endpoint, "prompts": len(by_prompt), "responses": len(everyone),
                     "prompt_token_ids_head": list(ids[:16])},
        ))
    if result.violations:
        result.verdict = Verdict.FAIL
    elif len(echoed) < len(ops):
        result.notes.append(f"{len(ops) - len(echoed)} of {len(ops)} response(s) came without prompt token ids: "
                            "not shown to answer their own request")
    else:
        result.verdict = Verdict.PASS
    return result
