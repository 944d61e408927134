"""Capability probe: what one target can do, each capability verified by real requests.

The checks need to know which observations a target allows before they can claim anything:
a salt test means nothing without a positive control that same-salt requests do hit, and a
cache-accounting check needs cached-token counts. So the probe never assumes; it sends small
requests and records, for every capability, a three-valued `available` (True / False / None for
"could not verify"), a value and a one-line evidence string saying what was seen.

Every probe prompt starts with a fresh random nonce, so cache entries from earlier runs (or
earlier steps of this probe) cannot make a hit look like something it is not. The cache-reset
step resets the whole server's prefix cache; pass `allow_reset=False` on a shared target.
"""

from __future__ import annotations

import asyncio
import math
import random
import secrets
import time
from dataclasses import dataclass, field
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from harness.scenario.words import draw_words
from harness.client.http import Endpoint, GenerationRequest, GenerationResult, TargetClient

QUERIES_FAMILY = "vllm:prefix_cache_queries"
HITS_FAMILY = "vllm:prefix_cache_hits"
CACHE_CONFIG_FAMILY = "vllm:cache_config_info"
NONCE_WORDS = 4
LOGPROB_DEPTHS = (20, 5, 1)  # asked in this order until one is accepted
_METRICS_SETTLE_S = 5.0


class ProbeError(RuntimeError):
    """The target is unreachable or not OpenAI-compatible; the message is one line."""


@dataclass
class Capability:
    """One capability: verified yes (True), verified no (False) or unverifiable (None)."""

    available: bool | None = None
    value: Any = None
    evidence: str = "not probed"

    def to_json(self) -> dict[str, Any]:
        return {"available": self.available, "value": self.value, "evidence": self.evidence}


@dataclass
class Capabilities:
    """Everything the probe learned about one target; field order is the report order."""

    target: str
    reachable: Capability = field(default_factory=Capability)
    openai_compatible: Capability = field(default_factory=Capability)
    models: Capability = field(default_factory=Capability)
    version: Capability = field(default_factory=Capability)
    completions: Capability = field(default_factory=Capability)
    chat: Capability = field(default_factory=Capability)
    output_token_ids: Capability = field(default_factory=Capability)
    prompt_token_ids: Capability = field(default_factory=Capability)
    logprobs: Capability = field(default_factory=Capability)
    streaming: Capability = field(default_factory=Capability)
    prefix_caching: Capability = field(default_factory=Capability)
    cached_tokens: Capability = field(default_factory=Capability)
    cache_salt_accepted: Capability = field(default_factory=Capability)
    cache_salt_effective: Capability = field(default_factory=Capability)
    prefix_cache_metrics: Capability = field(default_factory=Capability)
    cache_reset: Capability = field(default_factory=Capability)
    block_size: Capability = field(default_factory=Capability)
    openapi: Capability = field(default_factory=Capability)
    base_model: str | None = None
    adapters: dict[str, Capability] = field(default_factory=dict)
    elapsed_s: float | None = None

    def rows(self) -> list[tuple[str, Capability]]:
        """(name, capability) pairs in report order; each adapter gets its own row."""
        rows = [(name, value) for name, value in vars(self).items() if isinstance(value, Capability)]
        rows += [(f"adapter {name}", cap) for name, cap in self.adapters.items()]
        return rows

    @property
    def verified_adapters(self) -> list[str]:
        return [name for name, cap in self.adapters.items() if cap.available]

    def to_json(self) -> dict[str, Any]:
        return {
            "target": self.target,
            "base_model": self.base_model,
            "elapsed_s": self.elapsed_s,
            "capabilities": {n: v.to_json() for n, v in vars(self).items() if isinstance(v, Capability)},
            "adapters": {n: c.to_json() for n, c in self.adapters.items()},
        }


@dataclass
class _Observed:
    """A probe request's result plus the cached-token count seen for it, and where from."""

    result: GenerationResult
    cached: int | None
    via: str  # "usage", "metrics" or "none"


@dataclass
class _Counters:
    queries: float
    hits: float


def _one_line(text: str, limit: int = 300) -> str:
    line = " ".join(str(text).split())
    return line if len(line) <= limit else line[: limit - 3] + "..."


def _words(n: int) -> str:
    return " ".join(draw_words(random.Random(secrets.randbits(64)), n))


def _prompt(n_words: int) -> str:
    """A fresh nonce followed by n pool words, so no earlier cache entry can match it."""
    return f"{_words(NONCE_WORDS)} {_words(n_words)}"


def parse_prefix_cache_metrics(text: str) -> tuple[_Counters | None, int | None, bool | None]:
    """Parse Prometheus text: (queries/hits counters or None, block_size label, prefix caching label)."""
    queries = hits = None
    block_size: int | None = None
    enabled: bool | None = None
    for family in text_string_to_metric_families(text):
        # prometheus_client strips `_total` from counter family names; accept either spelling.
        name = family.name.removesuffix("_total")
        if name in (QUERIES_FAMILY, HITS_FAMILY):
            total = sum(s.value for s in family.samples if not s.name.endswith("_created"))
            if name == QUERIES_FAMILY:
                queries = total
            else:
                hits = total
        elif name == CACHE_CONFIG_FAMILY:
            for s in family.samples:
                if s.labels.get("block_size", "").isdigit():
                    block_size = int(s.labels["block_size"])
                if s.labels.get("enable_prefix_caching") in ("True", "False"):
                    enabled = s.labels["enable_prefix_caching"] == "True"
    counters = _Counters(queries, hits) if queries is not None and hits is not None else None
    return counters, block_size, enabled


def request_fields(openapi: dict[str, Any], path: str) -> list[str] | None:
    """The property names of the JSON request body of POST `path`, or None if not declared."""
    try:
        schema = openapi["paths"][path]["post"]["requestBody"]["content"]["application/json"]["schema"]
    except (KeyError, TypeError):
        return None
    names: list[str] = []

    def walk(node: Any, depth: int = 0) -> None:
        if not isinstance(node, dict) or depth > 8:
            return
        ref = node.get("$ref")
        if isinstance(ref, str) and ref.startswith("#/"):
            target: Any = openapi
            for part in ref[2:].split("/"):
                target = target.get(part, {}) if isinstance(target, dict) else {}
            walk(target, depth + 1)
        for key in ("allOf", "anyOf", "oneOf"):
            for sub in node.get(key) or []:
                walk(sub, depth + 1)
        for name in node.get("properties") or {}:
            if name not in names:
                names.append(name)

    walk(schema)
    return names


class _Prober:
    """Runs the probe steps one after another (sequential, so metric deltas are attributable)."""

    def __init__(self, client: TargetClient, allow_reset: bool) -> None:
        self.client = client
        self.allow_reset = allow_reset
        self.caps = Capabilities(target=client.base_url)
        self.base = ""
        self.metrics_ok = False
        self.metrics_block_size: int | None = None
        self.cached_counts: list[int] = []

    # --- helpers --------------------------------------------------------------------------

    async def _counters(self) -> _Counters | None:
        try:
            counters, _, _ = parse_prefix_cache_metrics(await self.client.get_text("/metrics"))
        except (httpx.HTTPError, ValueError):
            return None
        return counters

    async def _settled_counters(self, before: _Counters, prompt_tokens: int | None) -> _Counters | None:
        """Poll /metrics until the request's queried tokens show up (stats arrive asynchronously)."""
        need = prompt_tokens or 1
        deadline = time.monotonic() + _METRICS_SETTLE_S
        while True:
            after = await self._counters()
            if after is None or after.queries - before.queries >= need or time.monotonic() > deadline:
                return after
            await asyncio.sleep(0.05)  # polling an external counter, bounded by the deadline

    async def send(self, req: GenerationRequest) -> _Observed:
        """Send one request; take its cached-token count from usage, else from the hit counter."""
        before = await self._counters() if self.metrics_ok else None
        res = await self.client.generate(req)
        if not res.ok:
            return _Observed(res, None, "none")
        if res.cached_tokens is not None:
            obs = _Observed(res, res.cached_tokens, "usage")
        elif before is not None:
            after = await self._settled_counters(before, res.prompt_tokens)
            obs = _Observed(res, int(after.hits - before.hits), "metrics") if after else _Observed(res, None, "none")
        else:
            obs = _Observed(res, None, "none")
        if obs.cached:
            self.cached_counts.append(obs.cached)
        return obs

    def request(self, endpoint: Endpoint, text: str, **kw: Any) -> GenerationRequest:
        kw.setdefault("max_tokens", 4)
        kw.setdefault("top_logprobs", 0)
        if endpoint == "chat":
            return GenerationRequest("chat", self.base, messages=[{"role": "user", "content": text}], **kw)
        return GenerationRequest("completions", self.base, prompt=text, **kw)

    # --- steps ----------------------------------------------------------------------------

    async def models(self) -> list[dict[str, Any]]:
        url = self.client.base_url
        try:
            data = await self.client.get_json("/v1/models")
        except httpx.HTTPStatusError as exc:
            raise ProbeError(
                f"{url} is not an OpenAI-compatible server: GET /v1/models answered HTTP {exc.response.status_code}"
            ) from None
        except httpx.HTTPError as exc:
            raise ProbeError(f"cannot reach {url}: {type(exc).__name__}: {_one_line(str(exc)) or 'no detail'}") from None
        except ValueError:
            raise ProbeError(f"{url} is not an OpenAI-compatible server: GET /v1/models did not answer JSON") from None
        entries = data.get("data") if isinstance(data, dict) else None
        if not isinstance(entries, list) or not all(isinstance(e, dict) and isinstance(e.get("id"), str) for e in entries):
            raise ProbeError(f"{url} is not an OpenAI-compatible server: GET /v1/models has no 'data' list of models")
        if not entries:
            raise ProbeError(f"{url} serves no model: GET /v1/models answered an empty list")
        c = self.caps
        c.reachable = Capability(True, url, "GET /v1/models answered HTTP 200")
        c.openai_compatible = Capability(True, True, f"/v1/models lists {len(entries)} model object(s) under 'data'")
        return entries

    async def classify_models(self, entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Pick the base model (first entry without a parent); every other entry is an adapter candidate."""
        base = next((e for e in entries if not e.get("parent")), entries[0])
        self.base = self.caps.base_model = base["id"]
        candidates = [e for e in entries if e is not base]
        names = [e["id"] for e in entries]
        self.caps.models = Capability(True, names, f"base {self.base!r}; {len(candidates)} adapter candidate(s)")
        return candidates

    async def adapters(self, candidates: list[dict[str, Any]]) -> None:
        text = _prompt(12)
        base = await self.client.generate(self.request("completions", text))
        for entry in candidates:
            name = entry["id"]
            looks = f"parent={entry['parent']!r}" if entry.get("parent") else "listed after the base model"
            req = self.request("completions", text)
            req.model = name
            res = await self.client.generate(req)
            if res.ok:
                differs = "differs from" if res.output_token_ids != base.output_token_ids else "equals"
                self.caps.adapters[name] = Capability(True, name, f"{looks}; completion HTTP 200; output {differs} base")
            else:
                self.caps.adapters[name] = Capability(False, name, f"{looks}; completion failed: HTTP {res.status} {_one_line(res.error or '', 120)}")

    async def version(self) -> None:
        try:
            data = await self.client.get_json("/version")
        except (httpx.HTTPError, ValueError) as exc:
            self.caps.version = Capability(False, None, f"GET /version failed: {_one_line(str(exc), 120)}")
            return
        v = data.get("version") if isinstance(data, dict) else None
        self.caps.version = Capability(v is not None, v, f"GET /version answered {_one_line(str(data), 120)}")

    async def generation(self) -> None:
        """Completions, chat, token ids, logprob depth and streaming, with one prompt per endpoint."""
        c = self.caps
        outputs: dict[str, GenerationResult] = {}
        for endpoint in ("completions", "chat"):
            text = _prompt(24)
            res = GenerationResult(ok=False)
            depth_asked = 0
            for depth in LOGPROB_DEPTHS:
                depth_asked = depth
                res = await self.client.generate(self.request(endpoint, text, top_logprobs=depth))
                if res.ok or res.status != 400:
                    break
            if not res.ok:
                res = await self.client.generate(self.request(endpoint, text))
                depth_asked = 0
            outputs[endpoint] = res
            cap = (
                Capability(True, True, f"HTTP 200, {len(res.output_token_ids)} tokens, finish={res.finish_reason}")
                if res.ok else Capability(False, False, f"HTTP {res.status}: {_one_line(res.error or '', 160)}")
            )
            setattr(c, endpoint, cap)
            if endpoint == "completions" or not c.completions.available:
                self._token_ids_and_logprobs(endpoint, res, depth_asked)
            # streaming: same prompt, compared with the non-streamed answer
            sres = await self.client.generate(self.request(endpoint, text, stream=True))
            outputs[f"{endpoint}-stream"] = sres
        self._streaming(outputs)

    def _token_ids_and_logprobs(self, endpoint: str, res: GenerationResult, depth_asked: int) -> None:
        c = self.caps
        if not res.ok:
            return
        n_out = len(res.output_token_ids)
        c.output_token_ids = Capability(
            n_out > 0, n_out > 0,
            f"{endpoint}: {n_out} output token ids" + ("" if n_out else " (neither token_ids nor token_id: logprob keys)")
            + ("" if res.token_ids_source in (None, "server") else
               f" recovered from token text via /extras/tokenize ({res.token_ids_source}); the server sent none"),
        )
        p = res.prompt_token_ids
        if p is None:
            c.prompt_token_ids = Capability(False, False, f"{endpoint}: no prompt_token_ids in the response")
        else:
            agree = "matching" if len(p) == res.prompt_tokens else f"but usage.prompt_tokens={res.prompt_tokens}"
            c.prompt_token_ids = Capability(len(p) > 0, len(p) > 0, f"{endpoint}: {len(p)} prompt token ids, {agree} usage")
        if not depth_asked:
            c.logprobs = Capability(False, 0, f"{endpoint}: every logprobs depth in {LOGPROB_DEPTHS} was refused")
            return
        depth = min((len(t) for t in res.top_logprobs), default=0)
        chosen_in = all(tok in top for tok, top in zip(res.output_token_ids, res.top_logprobs))
        ev = f"{endpoint}: asked {depth_asked}, got {depth} per position keyed by token id"
        if res.token_ids_source not in (None, "server"):
            ev += " (the server keyed them by text; ids from /extras/tokenize)"
        if depth:
            ev += "; chosen token in its top list" if chosen_in else "; chosen token NOT always in its top list"
        else:
            ev += " (no token_id: keys: return_tokens_as_token_ids ignored?)"
        c.logprobs = Capability(depth > 0, depth, ev)

    def _streaming(self, outputs: dict[str, GenerationResult]) -> None:
        parts: list[str] = []
        value: dict[str, bool] = {}
        for endpoint in ("completions", "chat"):
            plain, streamed = outputs[endpoint], outputs[f"{endpoint}-stream"]
            ok = streamed.ok and bool(streamed.output_token_ids) and streamed.ttft_s is not None
            value[endpoint] = ok
            if not streamed.ok:
                parts.append(f"{endpoint}: HTTP {streamed.status} {_one_line(streamed.error or '', 80)}")
            elif not ok:
                parts.append(f"{endpoint}: stream carried no tokens")
            else:
                same = "same ids as" if streamed.output_token_ids == plain.output_token_ids else "ids DIFFER from"
                parts.append(f"{endpoint}: {same} non-streamed, ttft {streamed.ttft_s:.3f} s")
        self.caps.streaming = Capability(all(value.values()), value, "; ".join(parts))

    async def metrics(self) -> None:
        try:
            text = await self.client.get_text("/metrics")
        except httpx.HTTPError as exc:
            self.caps.prefix_cache_metrics = Capability(False, None, f"GET /metrics failed: {_one_line(str(exc), 120)}")
            return
        try:
            counters, self.metrics_block_size, enabled = parse_prefix_cache_metrics(text)
        except ValueError as exc:
            self.caps.prefix_cache_metrics = Capability(False, None, f"/metrics is not Prometheus text: {_one_line(str(exc), 100)}")
            return
        self.metrics_ok = counters is not None
        if counters is None:
            self.caps.prefix_cache_metrics = Capability(False, None, f"/metrics lacks {QUERIES_FAMILY} and/or {HITS_FAMILY}")
        else:
            flag = "" if enabled is None else f"; cache_config_info enable_prefix_caching={enabled}"
            self.caps.prefix_cache_metrics = Capability(
                True, {"queries": counters.queries, "hits": counters.hits},
                f"{QUERIES_FAMILY}_total and {HITS_FAMILY}_total present{flag}",
            )

    async def caching(self) -> None:
        """Repeat a ~100-word prompt: the repeat must hit, in usage and in the hit counter."""
        c = self.caps
        before = await self._counters() if self.metrics_ok else None
        text = _prompt(100)
        first = await self.send(self.request("completions", text))
        second = await self.send(self.request("completions", text))
        after = await self._counters() if self.metrics_ok else None
        if not (first.result.ok and second.result.ok):
            bad = first if not first.result.ok else second
            msg = f"repeat test failed: HTTP {bad.result.status}"
            c.cached_tokens = Capability(None, None, msg)
            c.prefix_caching = Capability(None, None, msg)
            return
        n = second.result.prompt_tokens
        usage = second.result.cached_tokens
        if usage is None:
            c.cached_tokens = Capability(False, None, "usage.prompt_tokens_details.cached_tokens absent on a repeated prompt")
        else:
            c.cached_tokens = Capability(
                usage > 0, usage, f"repeat of a {n}-token prompt reported cached_tokens={usage} (first {first.result.cached_tokens})"
            )
        if second.cached is None:
            c.prefix_caching = Capability(None, None, "no way to observe hits (no cached_tokens, no hit counter)")
        else:
            c.prefix_caching = Capability(
                second.cached > 0, second.cached > 0, f"repeat hit {second.cached} of {n} tokens (seen via {second.via})"
            )
        if before is not None and after is not None:
            dq, dh = after.queries - before.queries, after.hits - before.hits
            c.prefix_cache_metrics.evidence += f"; repeat test moved queries +{dq:.0f}, hits +{dh:.0f}"
            if dh <= 0 and (second.cached or 0) > 0:
                c.prefix_cache_metrics.evidence += " (hit counter did not move on a reported hit)"

    async def salt(self) -> None:
        """Same salt must hit (positive control); a different salt must not."""
        c = self.caps
        text = _prompt(70)
        s1, s2 = f"probe-{secrets.token_hex(8)}", f"probe-{secrets.token_hex(8)}"
        cold = await self.send(self.request("completions", text, cache_salt=s1))
        same = await self.send(self.request("completions", text, cache_salt=s1))
        other = await self.send(self.request("completions", text, cache_salt=s2))
        statuses = [o.result.status for o in (cold, same, other)]
        accepted = all(o.result.ok for o in (cold, same, other))
        fields = self.caps.openapi.value if isinstance(self.caps.openapi.value, dict) else {}
        declared = "; declared in OpenAPI" if "cache_salt" in (fields.get("completions") or []) else ""
        c.cache_salt_accepted = Capability(accepted, accepted, f"requests with cache_salt answered {statuses}{declared}")
        if not accepted:
            c.cache_salt_effective = Capability(False, False, "cache_salt was refused")
            return
        if same.cached is None or other.cached is None:
            c.cache_salt_effective = Capability(None, None, "cannot observe cache hits, so the salt cannot be tested")
            return
        ev = f"same salt hit {same.cached}, different salt hit {other.cached} (cold {cold.cached}; via {same.via})"
        if same.cached <= 0:
            c.cache_salt_effective = Capability(None, None, ev + ": no positive control, so unverified")
        else:
            c.cache_salt_effective = Capability(other.cached == 0, other.cached == 0, ev)

    async def reset(self) -> None:
        """Hit, reset, repeat: after POST /reset_prefix_cache the same prompt must miss."""
        c = self.caps
        if not self.allow_reset:
            c.cache_reset = Capability(None, None, "skipped (allow_reset=False)")
            return
        text = _prompt(50)
        await self.send(self.request("completions", text))
        warm = await self.send(self.request("completions", text))
        said_yes = await self.client.reset_prefix_cache()
        if not said_yes:
            c.cache_reset = Capability(False, False, "POST /reset_prefix_cache did not answer HTTP 200")
            return
        after = await self.send(self.request("completions", text))
        if warm.cached is None or after.cached is None:
            c.cache_reset = Capability(None, None, "reset answered 200 but cache hits cannot be observed")
        elif warm.cached <= 0:
            c.cache_reset = Capability(None, None, f"reset answered 200 but the repeat before it did not hit ({warm.cached})")
        else:
            c.cache_reset = Capability(
                after.cached == 0, after.cached == 0,
                f"POST /reset_prefix_cache 200; repeat hit {warm.cached} before, {after.cached} after",
            )

    def block_size(self) -> None:
        counts = sorted(set(self.cached_counts), reverse=True)
        g = math.gcd(*counts) if counts else None
        label = self.metrics_block_size
        if label is not None:
            agree = "" if not counts else (
                f"; cached counts {counts} are multiples" if all(n % label == 0 for n in counts)
                else f"; cached counts {counts} are NOT all multiples"
            )
            self.caps.block_size = Capability(True, label, f"cache_config_info block_size={label}{agree}")
        elif g:
            self.caps.block_size = Capability(True, g, f"gcd of cached counts {counts} = {g} (an upper bound)")
        else:
            self.caps.block_size = Capability(None, None, "no cache_config_info label and no cache hit seen")

    async def openapi(self) -> None:
        try:
            doc = await self.client.get_json("/openapi.json")
        except (httpx.HTTPError, ValueError) as exc:
            self.caps.openapi = Capability(False, None, f"GET /openapi.json failed: {_one_line(str(exc), 120)}")
            return
        fields = {
            "completions": request_fields(doc, "/v1/completions") if isinstance(doc, dict) else None,
            "chat": request_fields(doc, "/v1/chat/completions") if isinstance(doc, dict) else None,
        }
        parts = [f"{k}: {len(v)} request fields" if v else f"{k}: no request schema" for k, v in fields.items()]
        salted = [k for k, v in fields.items() if v and "cache_salt" in v]
        if salted:
            parts.append(f"cache_salt declared for {'+'.join(salted)}")
        self.caps.openapi = Capability(any(fields.values()), fields, "; ".join(parts))


async def probe(client: TargetClient, *, allow_reset: bool = True) -> Capabilities:
    """Probe one target with real requests; raise ProbeError if it is unreachable or not OpenAI-compatible."""
    t0 = time.monotonic()
    p = _Prober(client, allow_reset)
    entries = await p.models()
    candidates = await p.classify_models(entries)
    await p.version()
    await p.openapi()
    await p.metrics()
    await p.generation()
    await p.adapters(candidates)
    await p.caching()
    await p.salt()
    await p.reset()
    p.block_size()
    p.caps.elapsed_s = round(time.monotonic() - t0, 3)
    return p.caps
