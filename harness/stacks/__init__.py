"""The servers under test behind one `Stack` protocol (see `harness.stacks.base`)."""

from __future__ import annotations

from harness.stacks.base import Stack, StackTraits

STACKS: tuple[str, ...] = ("vllm", "llama-cpp")
"""The stacks the harness can launch itself (`--stack`)."""


def make_stack(target: str | None, name: str = "vllm") -> Stack:
    """The stack for a run: an external server at `target`, else the named embedded stack."""
    if target:
        from harness.stacks.external import ExternalStack

        return ExternalStack(target)
    if name == "llama-cpp":
        from harness.stacks.llamacpp import LlamaCppServer

        return LlamaCppServer()  # type: ignore[return-value]
    if name == "vllm":
        from harness.stacks.vllm import EmbeddedServer

        return EmbeddedServer()  # type: ignore[return-value]
    raise ValueError(f"unknown stack {name!r}; choose one of {', '.join(STACKS)}")


__all__ = ["STACKS", "Stack", "StackTraits", "make_stack"]
