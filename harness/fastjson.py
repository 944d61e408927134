"""JSON on the hot path: orjson where it gives the same answer, the standard library where not.

Every request's response is parsed and every history record written here, so this is where
the harness spends most of its per-request CPU after the HTTP client. orjson is several times
faster, but it refuses the NaN / Infinity literals that the standard library reads and writes
(servers may send them for logprobs; a missing logprob is recorded as NaN), so those cases go
through `json` and round-trip exactly as before.
"""

from __future__ import annotations

import dataclasses
import json
import math
from typing import Any

import orjson

_OPTIONS = orjson.OPT_NON_STR_KEYS  # int keys (token ids) are written as strings, as json does


def loads(data: str | bytes) -> Any:
    """Parse one JSON document."""
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        return json.loads(data)  # NaN / Infinity literals, or a genuine error (raised as json's)


def dumps(obj: Any, *, finite: bool = True) -> bytes:
    """Serialise compactly; `finite=False` says the object may hold NaN or an infinity, which
    orjson would silently write as null, so it goes through the standard library instead."""
    if finite:
        try:
            return orjson.dumps(obj, option=_OPTIONS)
        except orjson.JSONEncodeError:
            pass  # what orjson cannot write (an integer past 64 bits, a key of an odd type)
    return json.dumps(obj, separators=(",", ":"), allow_nan=True, default=_dataclass_fields).encode()


def _dataclass_fields(obj: Any) -> dict[str, Any]:
    """What orjson writes for a dataclass instance, for the standard library's fallback."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)}
    raise TypeError(f"{type(obj).__name__} is not JSON serialisable")


def all_finite(values: Any) -> bool:
    """True when every float in an iterable is finite (no NaN, no infinity)."""
    return all(map(math.isfinite, values))
