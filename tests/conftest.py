"""Shared fixtures: the real embedded vLLM server, started once per test session.

Set HARNESS_TEST_TARGET=http://127.0.0.1:PORT to reuse a server that is already running
(handy while developing); otherwise the session starts its own and stops it at the end.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from harness.stacks.vllm import EmbeddedServer


@pytest.fixture(scope="session")
def embedded_url() -> Iterator[str]:
    url = os.environ.get("HARNESS_TEST_TARGET")
    if url:
        yield url.rstrip("/")
        return
    server = EmbeddedServer()
    server.start()
    try:
        yield server.base_url
    finally:
        server.stop()
