"""`cache-accounting`: every cache hit is explained by a request of the same cache domain.

Black-box, from the history alone (docs/design.md, "Cache accounting"): a request's cached-token count
may not exceed the longest common token prefix it shares with some other request of the same
domain (model or adapter, cache salt) that the server had seen or was running, counting that
request's prompt and generated tokens, rounded down to the block size. An unexplained hit is a
violation even when the output did not change; across salts nothing may be shared. Where tenants
use salts, a positive control (a same-salt hit across users) must be observed, else UNKNOWN.

Cost: near-linear in the history. Each domain's prompts + outputs go into a trie of whole blocks
(`_PrefixIndex`), so a hit is explained by walking its prompt's blocks, not by comparing it with
every other request of its domain (which `explained_prefix`, the reference rule, does).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from functools import reduce
from math import gcd

from harness.checks.base import CheckContext, Need, check
from harness.checks.exercised import common_prefix_len
from harness.history.record import History, Operation, ReplicaAttribution, Role
from harness.nemesis.epochs import AdapterEpochs, alive_since, clearings
from harness.verdict import CheckResult, Verdict, Violation


def domain_model(op: Operation) -> str:
    """The model that served the request (the server may resolve an alias such as "")."""
    return op.served_model or op.model


def infer_block_size(ops: list[Operation]) -> int:
    """The gcd of observed non-zero cached counts (1 when none: no rounding)."""
    counts = [o.cached_tokens for o in ops if o.cached_tokens]
    return reduce(gcd, counts) if counts else 1


def explained_prefix(op: Operation, seen: list[Operation], block: int) -> tuple[int, Operation | None]:
    """Reference rule, one op at a time (quadratic over a domain; the check uses `_PrefixIndex`):
    the longest common prefix of op's prompt with any `seen` prompt + output, rounded down to the
    block, and the first op in `seen` that reaches the unrounded longest prefix."""
    prompt = op.prompt_token_ids or []
    best, source = 0, None
    for other in seen:
        if other.prompt_token_ids is None:
            continue
        n = common_prefix_len(prompt, other.prompt_token_ids + other.output_token_ids)
        if n > best:
            best, source = n, other
    return (best // block) * block, source


def _window(o: Operation, a: int, b: int) -> list[int]:
    """Tokens a..b of o's prompt + output, without building the whole concatenation."""
    p = o.prompt_token_ids or []
    n = len(p)
    if b <= n:
        return p[a:b]
    if a >= n:
        return o.output_token_ids[a - n:b - n]
    return p[a:] + o.output_token_ids[:b - n]


class _PrefixIndex:
    """One cache domain's sequences (prompt + output of every member) in a trie of whole blocks.

    Node k on a path stands for one exact token prefix of length k*block (a child is keyed by its
    parent and the block's tokens, so equal nodes mean equal prefixes: no hashing shortcuts). Each
    node keeps the earliest invoke time of the members through it and the earliest of a member
    other than that one, which answers "did some other member, invoked before this op completed,
    share these k blocks?" in O(1). With `track_members` it also keeps which members (in member
    order) pass through each node, for finding the reference rule's source.
    """

    def __init__(self, members: list[Operation], block: int, track_members: bool,
                 when: Callable[[Operation, int], float] | None = None) -> None:
        self.block = block
        self.members = members
        self.children: dict[tuple[int, tuple[int, ...]], int] = {}
        self.inv1: list[float] = []  # earliest invoke_s through the node
        self.op1: list[Operation] = []  # the member with that invoke_s
        self.inv2: list[float] = []  # earliest invoke_s of a member other than op1
        self.through: list[list[int]] | None = [] if track_members else None
        self.user: list[str | None] = []  # the one user through the node; None once several
        inf = float("inf")
        b = block
        children, inv1, op1, inv2 = self.children, self.inv1, self.op1, self.inv2
        through, users = self.through, self.user
        for pos, m in enumerate(members):
            p = m.prompt_token_ids
            if p is None:
                continue
            seq = p + m.output_token_ids if m.output_token_ids else p
            t = m.invoke_s
            node = -1
            for k in range(0, len(seq) - b + 1, b):
                if when is not None:
                    t = when(m, k + b)
                key = (node, tuple(seq[k:k + b]))
                child = children.get(key)
                if child is None:
                    child = len(inv1)
                    children[key] = child
                    inv1.append(t)
                    op1.append(m)
                    inv2.append(inf)
                    users.append(m.user)
                    if through is not None:
                        through.append([pos])
                else:
                    if op1[child] is not m:
                        if t < inv1[child]:
                            inv2[child] = inv1[child]
                            inv1[child], op1[child] = t, m
                        elif t < inv2[child]:
                            inv2[child] = t
                    if users[child] is not None and users[child] != m.user:
                        users[child] = None
                    if through is not None:
                        through[child].append(pos)
                node = child

    def explained(self, op: Operation, deadline: float | None = None) -> tuple[int, int]:
        """(allowed, deepest node) for op: whole blocks of its prompt that some other member whose
        time (its invoke time, or the index's `when`) is before `deadline` (default: op's completion)
        also starts with (as prompt + output)."""
        p = op.prompt_token_ids or []
        b = self.block
        deadline = op.complete_s if deadline is None else deadline
        children, inv1, op1, inv2 = self.children, self.inv1, self.op1, self.inv2
        node, depth = -1, 0
        for k in range(0, len(p) - b + 1, b):
            child = children.get((node, tuple(p[k:k + b])))
            if child is None:
                break
            # members through `child` are a subset of those through `node`: stop at the first miss
            if (inv2[child] if op1[child] is op else inv1[child]) >= deadline:
                break
            node, depth = child, depth + 1
        return depth * b, node

    def source_user_differs(self, op: Operation, node: int, allowed: int) -> bool:
        """Is the reference rule's source (the first member, in member order, that is seen by op
        and reaches the longest unrounded common prefix) another user's? `node` is the deepest
        node found by `explained`, at depth allowed/block >= 1."""
        if self.user[node] == op.user:
            return False  # every member through the node is op's own user
        assert self.through is not None
        p = op.prompt_token_ids or []
        b, deadline = self.block, op.complete_s
        rest = p[allowed:allowed + b]
        cap = len(rest)
        best, source = -1, None
        members = self.members
        for pos in self.through[node]:
            m = members[pos]
            if m is op or not m.invoke_s < deadline:
                continue
            extra = common_prefix_len(rest, _window(m, allowed, allowed + b))
            if extra > best:
                best, source = extra, m
                if best >= cap:
                    break  # no later member can do better, and ties keep the first
        return source is not None and source.user != op.user


OUTPUT_ONLY_FIELDS = frozenset({
    "return_token_ids", "return_tokens_as_token_ids", "logprobs", "top_logprobs", "max_tokens", "max_completion_tokens",
    "stream", "stream_options", "temperature", "top_p", "top_k", "seed", "n", "cache_salt", "user"})
"""Request fields that cannot change how a prompt is tokenized (a field not listed here might)."""


def with_recovered_prompt_ids(ops: list[Operation]) -> tuple[list[Operation], int]:
    """Give a hit that came without prompt ids, and a failed request (which may have filled the cache
    before it failed, so it may explain a hit), the ids the server reported for an identical request
    (same endpoint, served model and body but for `OUTPUT_ONLY_FIELDS`): the same text through the
    same tokenizer path has the same ids. Returns the ops and how many got ids."""
    def key(o: Operation) -> str | None:
        if not isinstance(o.request, dict):
            return None
        body = {k: v for k, v in o.request.items() if k not in OUTPUT_ONLY_FIELDS}
        try:
            return repr((o.endpoint, o.served_model or o.model, sorted(body.items())))
        except TypeError:
            return None

    known: dict[str, list[int]] = {}
    for o in ops:
        k = key(o) if o.prompt_token_ids is not None else None
        if k is not None:
            known.setdefault(k, o.prompt_token_ids or [])
    out, recovered = [], 0
    for o in ops:
        # a hit to check, or a failed request that may have filled the cache before failing (a source)
        k = key(o) if o.prompt_token_ids is None and (o.cached_tokens or not o.ok) else None
        if k is not None and k in known:
            out.append(replace(o, prompt_token_ids=known[k]))
            recovered += 1
        else:
            out.append(o)
    return out, recovered


def reached(m: Operation, end: int) -> float:
    """When the block ending at `end` of m's prompt + output was observably in the server's cache:
    a prompt block once m's first token had arrived (its prefill was done), an output block once m
    had completed; never for a failed request (docs/design.md, "Cache accounting")."""
    if not m.ok:
        return _NEVER
    if end <= len(m.prompt_token_ids or ()):
        return m.invoke_s + m.ttft_s if m.ttft_s is not None else m.complete_s
    return m.complete_s


_NEVER = float("inf")


def _nemesis_note(domain: str, model: str, cut: float) -> str:
    """What the nemesis removed from the explanations of a hit, in words ("" when nothing)."""
    notes = []
    if cut != float("-inf"):
        notes.append(f"counting only requests still running when the cache was last cleared (at {cut:.3f} s)")
    if domain != model and "@" in domain:
        notes.append(f"and only requests sent while {model!r} held the same weights ({domain.rpartition('@')[2]})")
    return (" " + " ".join(notes)) if notes else ""


def replicas_of(history: History) -> dict[str, str] | None:
    """Op id -> the replica of a fleet that served it, from the history's `ReplicaAttribution`
    records; None when the history has none (a single server). Ops that reached several replicas
    (a router retry) are left out: their replica is not established."""
    records = [e for e in history.events if isinstance(e, ReplicaAttribution)]
    if not records:
        return None
    served: dict[str, str] = {}
    ambiguous: set[str] = set()
    for rec in records:
        ambiguous.update(rec.ambiguous)
        for op_id, replica in rec.served.items():
            if served.setdefault(op_id, replica) != replica:
                ambiguous.add(op_id)
    for op_id in ambiguous:
        served.pop(op_id, None)
    return served


@check("cache-accounting", "every cached-token count is explained by a same-domain (model, salt) shared prefix",
       needs=(Need.CACHED_TOKENS,))
def accounting(history: History, ctx: CheckContext) -> CheckResult:
    result = CheckResult("", Verdict.UNKNOWN)
    everything, recovered = with_recovered_prompt_ids(history.ops)
    ops = [o for o in everything if o.ok]
    if not ops or all(o.cached_tokens is None for o in ops):
        result.notes.append("the target reported no cached-token counts")
        return result
    ev = result.evidence
    if recovered:
        ev["hits_ids_from_identical_request"] = recovered
        result.notes.append(f"{recovered} request(s) without prompt ids (hits, or failed requests as possible sources) "
                            "took the ids of an identical request of the run")
    blind = [o for o in ops if o.cached_tokens and o.prompt_token_ids is None]
    if blind:
        ev["hits_without_ids"] = len(blind)
        result.notes.append(f"{len(blind)} hit(s) came without prompt token ids and could not be checked "
                            f"(first: {blind[0].op_id})")
    block = infer_block_size([o for o in ops if o.prompt_token_ids is not None])
    result.notes.append(f"block size inferred from cached counts: {block}")
    # Failed requests may have filled the cache before failing: they explain hits (never observably).
    sources = [o for o in everything if o.prompt_token_ids is not None]
    # Under a nemesis (docs/design.md, "Cache accounting (black-box)"): an adapter name loaded with other weights
    # is a new domain, and after a cache reset or restart only requests alive since then explain a hit.
    epochs = AdapterEpochs(history.events)
    cleared = clearings(history.events)
    if epochs or cleared:
        ev["adapter_weight_changes"] = sum(max(0, len(set(w)) - 1) for w in epochs.weights.values())
        ev["cache_clearings"] = len(cleared)

    # In a fleet a replica's cache holds only what that replica served: a hit is explained only by
    # its own domain's requests on the same replica. A request whose replica is not established may
    # have been served by any of them: it joins every replica's domain, and the check cannot PASS.
    fleet = replicas_of(history)
    names = sorted(set(fleet.values())) if fleet is not None else []
    unplaced = [o for o in sources if fleet is not None and o.op_id not in fleet]
    if fleet is not None:
        ev["replicas"] = len(names)
        ev["ops_without_replica"] = len(unplaced)
        result.notes.append(f"fleet: a hit is explained only by its domain's requests on the same replica "
                            f"({len(names)} replica(s) served; replica per request from the replicas' ledgers)")

    tenancy: dict[tuple[str, str | None], tuple[str, str | None]] = {}

    def domain_of(o: Operation, replica: str | None = None) -> tuple[str, str | None]:
        model = domain_model(o)
        weights = epochs.weights_at(model, o.invoke_s) if epochs else None
        model = f"{model}@{weights}" if weights else model
        replica = replica or (fleet.get(o.op_id) if fleet is not None else None)
        key = (f"{model} on replica {replica}" if replica else model), o.cache_salt
        tenancy[key] = (model, o.cache_salt)
        return key

    domains: dict[tuple[str, str | None], list[Operation]] = {}
    for o in sources:
        if fleet is None or o.op_id in fleet:
            domains.setdefault(domain_of(o), []).append(o)
        else:
            for name in names:
                domains.setdefault(domain_of(o, name), []).append(o)
    salted_control = {domain_of(o): False for o in ops if o.cache_salt and o.role is not Role.SOLO}
    unchecked: list[Operation] = []
    loose: dict[tuple[str, str | None], _PrefixIndex] = {}
    ambiguous: list[tuple[tuple[str, str | None], Operation]] = []
    for key, members in domains.items():
        if not any(m.cached_tokens and m.ok for m in members):
            continue
        full = loose[key] = _PrefixIndex(members, block, track_members=key in salted_control)
        since: dict[float, tuple[_PrefixIndex, list[Operation]]] = {}
        stricts: dict[float, _PrefixIndex] = {}
        for op in members:
            if not (op.ok and op.cached_tokens):
                continue
            if fleet is not None and op.op_id not in fleet:
                continue  # a hit whose replica is not established: counted once below, never excused
            result.exercised += 1
            cut = alive_since(cleared, op.invoke_s) if cleared else float("-inf")
            if cut == float("-inf"):
                index, alive = full, members
            else:  # only members still alive when the last clearing before op began
                if cut not in since:
                    kept = [m for m in members if m.complete_s >= cut]
                    since[cut] = _PrefixIndex(kept, block, track_members=key in salted_control), kept
                index, alive = since[cut]
            allowed, node = index.explained(op)
            if (key in salted_control and not salted_control[key] and allowed > 0
                    and index.source_user_differs(op, node, allowed)):
                salted_control[key] = True
            if op.cached_tokens > allowed:
                result.violations.append(Violation(
                    check="cache-accounting", scenario=op.scenario, users=[op.user], op_ids=[op.op_id],
                    message=(f"{op.op_id}: {op.cached_tokens} cached tokens, but the longest prefix shared with any "
                             f"request of its domain (model {op.model!r}, salt {op.cache_salt!r}) explains only "
                             f"{allowed}" + _nemesis_note(key[0], op.model, cut)),
                    details={"cached_tokens": op.cached_tokens, "explained": allowed, "block_size": block,
                             "model": op.model, "cache_salt": op.cache_salt,
                             **({"domain": key[0]} if key[0] != domain_model(op) else {}),
                             **({"alive_since_s": cut} if cut != float("-inf") else {})},
                ))
                continue
            strict = stricts.get(cut) or stricts.setdefault(
                cut, _PrefixIndex(alive, block, track_members=False, when=reached))
            if op.cached_tokens > strict.explained(op, op.invoke_s)[0]:
                ambiguous.append((key, op))  # only requests still running when op was sent explain it
    # An ambiguous hit hides a cross-domain leak only where another domain held the same prefix in
    # time; where none did, its only possible sources are its own domain's: checked. (Domains
    # without hits of their own get their index only when an ambiguous hit needs it.) The same
    # model and salt on another replica of a fleet is not such a domain: a hit from there would be
    # blocks shared between replicas within one cache domain, never another tenant's context.
    for key, op in ambiguous:
        for k, members in domains.items():
            if k == key or tenancy[k] == tenancy[key]:
                continue
            other = loose.get(k) or loose.setdefault(k, _PrefixIndex(members, block, track_members=False))
            if other.explained(op)[0] >= (op.cached_tokens or 0):
                unchecked.append(op)
                break
    blind_replica = [o for o in ops if o.cached_tokens and fleet is not None and o.op_id not in fleet]
    if blind_replica:
        result.exercised += len(blind_replica)
        unchecked += blind_replica
        result.notes.append(f"{len(blind_replica)} hit(s) with no established replica (first: "
                            f"{blind_replica[0].op_id}): not checked, never explained fleet-wide")
    ev["hits"] = result.exercised
    ev["hits_unchecked"] = len(unchecked)
    ev["hits_checked"] = result.exercised - len(unchecked)
    if result.violations:
        result.verdict = Verdict.FAIL
        return result
    if unchecked:
        result.notes.append(
            f"{len(unchecked)} of {result.exercised} hit(s) could be explained only by a same-domain request that "
            f"had not observably reached the cache when they were sent (first: {unchecked[0].op_id}): not checked, "
            "never excused")
    if salted_control:
        hit = sum(salted_control.values())
        result.notes.append(f"salted domains with a same-salt cross-user hit (positive control): {hit} of "
                            f"{len(salted_control)}")
        if hit == 0:
            result.notes.append("no same-salt cross-user hit observed: salt separation cannot be shown")
            return result
    if blind or unchecked:
        return result  # UNKNOWN: hits that could not be checked were not shown to be explained
    if unplaced:
        result.notes.append(f"{len(unplaced)} request(s) with no established replica (first: {unplaced[0].op_id}) "
                            "may have filled any replica's cache: the hits are not shown explained per replica")
        return result
    result.verdict = Verdict.PASS if result.exercised else Verdict.UNKNOWN
    if not result.exercised:
        result.notes.append("no cache hit was observed")
    return result
