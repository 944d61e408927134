"""Token-level helpers of the HTML report: the longest prefix each request shares with another
in its cache domain, and best-effort token text for showing token ids."""

from __future__ import annotations

from typing import Any

from harness.checks.exercised import common_prefix_len
from harness.history.record import History, Operation

TREE_BLOCK = 32  # tokens per node of the prefix tree used to find shared prefixes
MAX_VIOLATION_SECTIONS = 200  # full sections; any beyond are listed in the summary table only


# --- shared prefixes -----------------------------------------------------------------------------

def shared_prefixes(ops: list[Operation], block: int = TREE_BLOCK) -> dict[str, int]:
    """op_id -> longest token prefix its prompt shares with another request of its cache domain
    (model, salt) invoked before it completed, counting that request's prompt and output (the
    window `cache-accounting` uses). Near-linear: a tree of `block`-token nodes, keyed by
    (parent node, block tokens), each remembering a few sequences that pass through it; the last
    partial block is compared token by token against those few."""
    usable = [o for o in ops if o.ok and o.prompt_token_ids is not None]
    seqs = {o.op_id: (o.prompt_token_ids or []) + o.output_token_ids for o in usable}
    nodes: dict[tuple[Any, tuple[int, ...]], int] = {}
    owners: list[list[str]] = []
    roots: dict[tuple[str, str | None], int] = {}

    def root(o: Operation) -> int:
        key = (o.model, o.cache_salt)
        if key not in roots:
            roots[key] = len(owners)
            owners.append([])
        return roots[key]

    def insert(o: Operation) -> None:
        seq, node = seqs[o.op_id], root(o)
        if len(owners[node]) < 4:
            owners[node].append(o.op_id)
        for k in range(len(seq) // block):
            key = (node, tuple(seq[k * block:(k + 1) * block]))
            node = nodes.get(key, -1)
            if node < 0:
                node = nodes[key] = len(owners)
                owners.append([])
            if len(owners[node]) < 4:
                owners[node].append(o.op_id)

    def query(o: Operation) -> int:
        prompt, node, depth = o.prompt_token_ids or [], root(o), 0
        if not any(i != o.op_id for i in owners[node]):
            return 0
        while (depth + 1) * block <= len(prompt):
            nxt = nodes.get((node, tuple(prompt[depth * block:(depth + 1) * block])))
            if nxt is None or not any(i != o.op_id for i in owners[nxt]):
                break
            node, depth = nxt, depth + 1
        start = depth * block
        tail = prompt[start:start + block]
        extra = max((common_prefix_len(tail, seqs[i][start:start + block]) for i in owners[node] if i != o.op_id),
                    default=0)
        return start + extra

    by_invoke = sorted(usable, key=lambda o: o.invoke_s)
    out: dict[str, int] = {}
    j = 0
    for q in sorted(usable, key=lambda o: o.complete_s):
        while j < len(by_invoke) and by_invoke[j].invoke_s < q.complete_s:
            insert(by_invoke[j])
            j += 1
        out[q.op_id] = query(q)
    return out


# --- token text (best effort) --------------------------------------------------------------------

def token_words(ops: list[Operation], needed: set[int] | None = None) -> dict[int, str]:
    """token id -> its text, guessed where an op's text splits on whitespace into exactly its
    token count (true for the embedded tokenizer: one token per word); ids seen with two
    different words are dropped. Only ids in `needed` are kept (all when None). A reading aid
    only: tokens are always compared by id."""
    words: dict[int, str] = {}
    bad: set[int] = set()

    def learn(ids: list[int], text: str) -> None:
        parts = text.split()
        if not ids or len(parts) != len(ids):
            return
        for i, w in zip(ids, parts, strict=True):
            if (needed is None or i in needed) and words.setdefault(i, w) != w:
                bad.add(i)

    for o in ops:
        learn(o.output_token_ids, o.output_text)
        prompt = o.request.get("prompt") if isinstance(o.request, dict) else None
        ids = o.prompt_token_ids
        if isinstance(prompt, str) and ids and (needed is None or not needed.isdisjoint(ids)):
            learn(ids, prompt)
    for i in bad:
        words.pop(i, None)
    return words


def shown_tokens(report: dict[str, Any], history: History) -> set[int]:
    """The token ids a violation view may show: outputs and top logprobs of the ops involved."""
    ops = {o.op_id: o for o in history.ops}
    ids: set[int] = set()
    for c in report.get("checks", []):
        for v in c.get("violations", [])[:MAX_VIOLATION_SECTIONS]:
            for i in v.get("op_ids", []):
                if i in ops:
                    ids.update(ops[i].output_token_ids)
                    for top in ops[i].top_logprobs:
                        ids.update(top)
    return ids
