"""The one SSE (server-sent events) parser of the harness: the client reads streams with it, and
the fault proxy reads the streams it captures with it.

`SSEData` gives the data of each event in a byte stream, in order, however the stream is cut
into chunks. Servers send almost every event as one `data: ...` line and a blank line, with LF
endings; those are cut straight from the bytes, which costs a fraction of decoding line by line
(the fast path measured in bench/README.md). Every other block (comments, `event:` or `id:`
fields, data over several lines) goes through `EventDecoder`, the event-stream interpretation of
the HTML standard, and a stream that uses CR line endings anywhere goes through it line by line
from there on, so the events are the standard's in every case (tests/test_wire.py holds this
against httpx-sse's public `EventSource`).
"""

from __future__ import annotations


class EventDecoder:
    """Decodes SSE lines (without their line endings) into event data, by the HTML standard's
    event-stream interpretation: `data` fields accumulate, joined by LF; a blank line dispatches;
    comments and the `event`, `id` and `retry` fields carry no data."""

    def __init__(self) -> None:
        self._data: list[str] = []

    def decode(self, line: str) -> str | None:
        """The data of the event this line completes (a blank line), else None. An event without
        data dispatches as an empty string."""
        if not line:
            data, self._data = "\n".join(self._data), []
            return data
        if line[0] == ":":
            return None
        name, _, value = line.partition(":")
        if name == "data":
            self._data.append(value[1:] if value[:1] == " " else value)
        return None


class SSELines:
    """Splits a byte stream into SSE lines (ended by CRLF, LF or CR), each decoded as UTF-8.
    A chunk may end mid-line or between the CR and LF of one line ending: both are carried over."""

    def __init__(self) -> None:
        self._rest = b""

    def feed(self, chunk: bytes) -> list[str]:
        lines = (self._rest + chunk).splitlines(keepends=True)
        self._rest = b""
        if lines and (lines[-1].endswith(b"\r") or not lines[-1].endswith(b"\n")):
            self._rest = lines.pop()  # unfinished, or a CR whose LF may be in the next chunk
        return [line.rstrip(b"\r\n").decode("utf-8", errors="replace") for line in lines]

    def close(self) -> list[str]:
        rest, self._rest = self._rest, b""
        return [line.decode("utf-8", errors="replace") for line in rest.splitlines()]


class SSEData:
    """The data of each SSE event in a byte stream, in order, as bytes (empty data is skipped)."""

    def __init__(self) -> None:
        self._rest = b""
        self._decoder = EventDecoder()
        self._lines: SSELines | None = None  # line by line (a CR was seen)

    def feed(self, chunk: bytes) -> list[bytes]:
        if self._lines is None and b"\r" in chunk:
            self._lines, rest, self._rest = SSELines(), self._rest, b""
            return self._decode(self._lines.feed(rest + chunk))
        if self._lines is not None:
            return self._decode(self._lines.feed(chunk))
        blocks = (self._rest + chunk if self._rest else chunk).split(b"\n\n")
        self._rest = blocks.pop()  # after the last blank line: the start of an event, or empty
        out: list[bytes] = []
        for block in blocks:
            if block[:6] == b"data: " and b"\n" not in block:
                if len(block) > 6:
                    out.append(block[6:])
            elif block:  # the block's lines, then the blank line that ended it
                out += self._decode([*block.decode("utf-8", errors="replace").split("\n"), ""])
        return out

    def close(self) -> list[bytes]:
        """Events completed by the end of the stream: none in the fast path, whose remainder
        holds no blank line (an event without its blank line is never dispatched)."""
        if self._lines is None:
            return []
        return self._decode(self._lines.close())

    def _decode(self, lines: list[str]) -> list[bytes]:
        out = []
        for line in lines:
            data = self._decoder.decode(line)
            if data:
                out.append(data.encode())
        return out


def stream_data(raw: bytes) -> list[bytes]:
    """The data of every complete event of a whole SSE stream (what `SSEData` gives fed at once)."""
    events = SSEData()
    return events.feed(raw) + events.close()
