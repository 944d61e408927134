"""Reading and editing the prompt of a generation request body, on either endpoint."""

from __future__ import annotations

from typing import Any


def prompt_text(body: dict[str, Any], endpoint: str) -> str | None:
    """The user-visible prompt: the completion prompt, or all chat message contents joined."""
    if endpoint == "completions":
        p = body.get("prompt")
        if isinstance(p, list) and len(p) == 1 and isinstance(p[0], str):
            p = p[0]
        return p if isinstance(p, str) else None
    msgs = body.get("messages")
    if not isinstance(msgs, list):
        return None
    parts: list[str] = []
    for m in msgs:
        c = m.get("content") if isinstance(m, dict) else None
        if isinstance(c, str):
            parts.append(c)
        elif isinstance(c, list):
            parts.extend(x["text"] for x in c if isinstance(x, dict) and isinstance(x.get("text"), str))
    return "\n".join(parts)


def prepend(body: dict[str, Any], endpoint: str, text: str) -> bool:
    """Put `text` in front of the prompt (chat: of the first message's content); False if impossible."""
    if endpoint == "completions":
        p = body.get("prompt")
        if isinstance(p, str):
            body["prompt"] = f"{text} {p}"
            return True
        if isinstance(p, list) and len(p) == 1 and isinstance(p[0], str):
            body["prompt"] = [f"{text} {p[0]}"]
            return True
        return False
    msgs = body.get("messages")
    if not isinstance(msgs, list) or not msgs or not isinstance(msgs[0], dict):
        return False
    c = msgs[0].get("content")
    if isinstance(c, str):
        msgs[0]["content"] = f"{text} {c}"
        return True
    if isinstance(c, list):
        msgs[0]["content"] = [{"type": "text", "text": f"{text} "}, *c]
        return True
    return False


def common_prefix(a: tuple[str, ...], b: tuple[str, ...]) -> int:
    """How many leading words two prompts share."""
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n
