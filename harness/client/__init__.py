"""The HTTP client of the harness, one job per module: `types` (the wire types), `sse` (the one
SSE parser), `parse` (token ids, logprobs, the accumulator), `transport` (httpx over aiohttp),
`llamacpp_ids` (ids recovered through the server's tokenizer) and `target` (`TargetClient`).
Importers use `from harness.client import ...`."""

from harness.client.parse import Accumulator, by_id, entries_by_id, logprob_value, token_id_of
from harness.client.sse import EventDecoder, SSEData, SSELines, stream_data
from harness.client.target import TargetClient
from harness.client.transport import default_transport
from harness.client.types import Endpoint, GenerationRequest, GenerationResult

__all__ = [
    "Accumulator", "Endpoint", "EventDecoder", "GenerationRequest", "GenerationResult", "SSEData", "SSELines",
    "TargetClient", "by_id", "default_transport", "entries_by_id", "logprob_value", "stream_data", "token_id_of",
]
