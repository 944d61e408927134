"""The second serving stack: the whole harness against llama.cpp (llama-cpp-python's server).

One llama.cpp server is started per session on the GGUF of the project's embedded model (built
once and cached). The tests pin what the harness can and cannot show there: token ids are
recovered from token text with the server's own tokenizer (and must agree with the model's
tokenizer), the probe finds no cached-token counts, salt, reset or metrics, the solo oracle falls
back to a possibly warm reference and says so, the counterfactual check still runs, and faults
that act on outputs (flip included, on text-keyed logprobs) are detected through it while faults
that need cache accounting are not.

Skipped only when `llama_cpp` is not importable (`make llama-cpp` installs it). Set
HARNESS_TEST_LLAMACPP_TARGET=http://127.0.0.1:PORT to reuse a running llama.cpp server.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from harness.client import GenerationRequest, TargetClient
from harness.engine import RunOptions
from harness.faults.flip import FLIP_MIN_MARGIN
from harness.faults.proxy import FaultProxy
from harness.frontends.runs import run_files
from harness.probe.capabilities import probe
from harness.probe.needs import solo_isolation
from harness.result import RunResult
from harness.stacks import make_stack
from harness.stacks.llamacpp import LlamaCppServer, build_gguf, gguf_path_for, llama_cpp_available
from harness.stacks.vllm import LaunchError
from harness.testmodel.embedded_model import build
from harness.verdict import Verdict

_OK, _WHY = llama_cpp_available()
needs_llama_cpp = pytest.mark.skipif(not _OK, reason=_WHY)

LIBRARY = Path(__file__).resolve().parents[1] / "scenarios"
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def llamacpp_url() -> Iterator[str]:
    url = os.environ.get("HARNESS_TEST_LLAMACPP_TARGET")
    if url:
        yield url.rstrip("/")
        return
    if not _OK:
        pytest.skip(_WHY)
    # Streams are not cut short here, so the cache paths are tested on their own; the default
    # (interrupting) behaviour has its own test below.
    server = LlamaCppServer(interrupt_requests=False)
    server.start()
    try:
        yield server.base_url
    finally:
        server.stop()


def _checks(report_dir: Path) -> dict[str, dict]:
    report = json.loads((report_dir / "report.json").read_text())
    return {c["name"]: c for c in report["checks"]}


def _isolation(url: str, tmp_path: Path, scenarios: list[str]) -> RunResult:
    """The engine's run of library scenarios against `url`, with the file reports in tmp_path."""
    return run_files([LIBRARY / s for s in scenarios], make_stack(url), RunOptions(), tmp_path)


def _run(url: str, tmp_path: Path, scenarios: list[str], fault: str | None = None) -> tuple[RunResult, int]:
    if fault is None:
        return _isolation(url, tmp_path, scenarios), 0
    with FaultProxy(url, fault=fault, rate=1.0, seed=3) as proxy:
        out = _isolation(proxy.url, tmp_path, scenarios)
        return out, len(proxy.injections)


def test_gguf_is_built_once_and_is_gguf(llamacpp_url: str) -> None:
    model_dir = build()
    t0 = time.monotonic()
    path = build_gguf(model_dir)
    assert time.monotonic() - t0 < 5, "a second build must be a no-op"
    assert path == gguf_path_for(model_dir) and path.read_bytes()[:4] == b"GGUF"


def test_server_tokenizer_matches_the_model_tokenizer(llamacpp_url: str) -> None:
    """The id recovery rests on this: llama.cpp's 'gpt-2' pre-tokenizer splits like the model's."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(build())
    texts = ["alpha beta gamma", " river stone  bridge\n\nlamp", "it's 12 o'clock, 3.5 apples!",
             "<|user|> hello<|end|><|assistant|>", "naïve café ✅ 🦙"]

    async def go() -> list[list[int] | None]:
        async with TargetClient(llamacpp_url) as client:
            return [await client.tokenize("tiny-llama", t) for t in texts]

    for text, ids in zip(texts, asyncio.run(go()), strict=True):
        assert ids == tok.encode(text, add_special_tokens=False), text


def test_client_recovers_token_ids_from_text(llamacpp_url: str) -> None:
    """No token ids on the wire; the client maps each token's text to one id, logprobs included."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(build())
    prompt = " ".join(["river", "stone", "bridge", "lamp", "garden"] * 6)

    async def go():
        async with TargetClient(llamacpp_url) as client:
            reqs = [GenerationRequest("completions", "tiny-llama", prompt=prompt, max_tokens=8, top_logprobs=3),
                    GenerationRequest("completions", "tiny-llama", prompt=prompt, max_tokens=8, top_logprobs=3,
                                      stream=True),
                    GenerationRequest("chat", "tiny-llama", messages=[{"role": "user", "content": prompt}],
                                      max_tokens=8, top_logprobs=3)]
            return [await client.generate(r) for r in reqs]

    plain, streamed, chat = asyncio.run(go())
    for res in (plain, streamed, chat):
        assert res.ok, res.error
        assert res.token_ids_source == "tokenize" and len(res.output_token_ids) == 8
        assert tok.decode(res.output_token_ids) == res.output_text
        assert res.cached_tokens is None  # never reported: unknown, not 0
        assert all(t in top and len(top) >= 3 for t, top in zip(res.output_token_ids, res.top_logprobs, strict=False))
    assert streamed.output_token_ids == plain.output_token_ids


def test_probe_finds_no_cache_observations(llamacpp_url: str) -> None:
    async def go():
        async with TargetClient(llamacpp_url) as client:
            return await probe(client)

    caps = asyncio.run(go())
    assert caps.completions.available and caps.chat.available and caps.streaming.available
    assert caps.output_token_ids.available and "/extras/tokenize" in caps.output_token_ids.evidence
    assert caps.logprobs.available
    assert caps.cached_tokens.available is False
    assert caps.prefix_caching.available is None  # no way to observe hits
    assert caps.cache_salt_effective.available is not True
    assert caps.cache_reset.available is False
    assert caps.prefix_cache_metrics.available is False
    assert caps.adapters == {}
    assert solo_isolation(caps) == "warm"


def test_run_says_what_could_not_be_shown(llamacpp_url: str, tmp_path: Path) -> None:
    out, _ = _run(llamacpp_url, tmp_path, ["shared-system-prompt.yaml", "adapter-tenants.yaml"])
    checks = _checks(tmp_path)
    verdicts = {n: c["verdict"] for n, c in checks.items()}
    assert out.verdict is Verdict.UNKNOWN and out.exit_code == 2, verdicts
    assert verdicts["counterfactual-isolation"] == "pass" and verdicts["canary"] == "pass"
    assert verdicts["requests"] == "pass"
    for name in ("exercised", "cache-accounting", "cache-transparency"):
        assert verdicts[name] == "unknown", (name, checks[name]["notes"])
    assert verdicts["server-counters"] in ("unknown", "n/a"), checks["server-counters"]["notes"]
    assert any("may have run warm" in n for n in checks["cache-transparency"]["notes"])
    assert any("/extras/tokenize" in n for n in checks["counterfactual-isolation"]["notes"])
    meta = out.metadata()
    assert meta["solo_isolation"] == "warm"
    assert "adapter-tenants" in meta["skipped_scenarios"] and "adapter" in meta["skipped_scenarios"]["adapter-tenants"]


@pytest.mark.parametrize(("fault", "scenarios"), [("inject-context", ["shared-document.yaml"]),
                                                  ("bleed", ["shared-system-prompt.yaml"])])
def test_output_faults_are_detected(fault: str, scenarios: list[str], llamacpp_url: str, tmp_path: Path) -> None:
    out, injected = _run(llamacpp_url, tmp_path, scenarios, fault)
    assert injected > 0
    failed = {n for n, c in _checks(tmp_path).items() if c["verdict"] == "fail"}
    assert out.verdict is Verdict.FAIL and failed & {"counterfactual-isolation", "cache-transparency"}, failed
    assert any((tmp_path / "reproducers").iterdir())


@pytest.mark.parametrize(("endpoint", "stream"), [("completions", False), ("completions", True), ("chat", True)])
def test_flip_injects_on_text_keyed_logprobs(endpoint: str, stream: bool, llamacpp_url: str) -> None:
    """llama.cpp keys logprobs by token text and sends no ids: flip still changes exactly one
    confident token, to a pool word that is one token on the server and lies outside that position's
    top logprobs, and the client's id recovery sees exactly that change."""
    prompt = " ".join(["zitufu", "zipet", "kuka", "ritede", "dobara", "namifo", "nivo", "kene", "siva"] * 3)
    kw = {"prompt": prompt} if endpoint == "completions" else {"messages": [{"role": "user", "content": prompt}]}
    req = GenerationRequest(endpoint, "tiny-llama", max_tokens=16, top_logprobs=5, stream=stream, **kw)

    async def go():
        async with FaultProxy(llamacpp_url, fault="flip", seed=3) as proxy:
            async with TargetClient(llamacpp_url) as direct, TargetClient(proxy.url) as via:
                reference = await direct.generate(req)
                faulted = await via.generate(req)
                tokenized = await direct.tokenize("tiny-llama", faulted.output_text)
            return reference, faulted, tokenized, proxy.injections.snapshot()

    reference, faulted, tokenized, injections = asyncio.run(go())
    assert reference.ok and faulted.ok, (reference.error, faulted.error)
    assert len(injections) == 1, "no position had a top-1 margin above FLIP_MIN_MARGIN"
    assert "one token on the target" in injections[0].detail
    assert faulted.token_ids_source == "tokenize", "every flipped-response token maps back to one id"
    a, b = reference.output_token_ids, faulted.output_token_ids
    diffs = [k for k, (x, y) in enumerate(zip(a, b, strict=False)) if x != y]
    assert len(a) == len(b) and len(diffs) == 1
    k = diffs[0]
    ranked = sorted(reference.top_logprobs[k].values(), reverse=True)
    assert ranked[0] - ranked[1] > FLIP_MIN_MARGIN and b[k] not in reference.top_logprobs[k]
    assert b[k] in faulted.top_logprobs[k] and faulted.token_logprobs[k] < min(reference.top_logprobs[k].values())
    assert tokenized == b != a, "the text says the new token too"


def test_flip_is_detected_on_llamacpp(llamacpp_url: str, tmp_path: Path) -> None:
    """A run of strict-prefix through the flipping proxy FAILs, because of the flips: the violations
    name requests the proxy flipped, and the new token is outside the reference's top logprobs (not a
    near-tie that drift could explain)."""
    with FaultProxy(llamacpp_url, fault="flip", rate=1.0, seed=3) as proxy:
        out = _isolation(proxy.url, tmp_path, ["strict-prefix.yaml"])
        flipped = {i.op for i in proxy.injections if i.op}
    checks = _checks(tmp_path)
    failed = {n for n, c in checks.items() if c["verdict"] == "fail"}
    assert flipped and out.verdict is Verdict.FAIL and "cache-transparency" in failed, failed
    shown = [v for n in failed for v in checks[n]["violations"] if set(v["op_ids"]) & flipped]
    assert shown, "no violation names a flipped request"
    assert any("not among the" in v["message"] for v in shown), shown[0]["message"]  # not a near-tie


def test_accounting_fault_cannot_act_without_counts(llamacpp_url: str, tmp_path: Path) -> None:
    """phantom-hit edits a reported cached-token count; llama.cpp reports none, so nothing to detect."""
    out, injected = _run(llamacpp_url, tmp_path, ["strict-prefix.yaml"], "phantom-hit")
    assert injected == 0
    assert _checks(tmp_path)["cache-accounting"]["verdict"] == "unknown"
    assert out.verdict is Verdict.UNKNOWN


def test_salt_fault_changes_nothing_observable(llamacpp_url: str, tmp_path: Path) -> None:
    """salt-drop strips cache_salt, which llama.cpp ignores anyway: injected, but nothing can show it."""
    out, injected = _run(llamacpp_url, tmp_path, ["salted-tenants.yaml"], "salt-drop")
    assert injected > 0
    verdicts = {n: c["verdict"] for n, c in _checks(tmp_path).items()}
    assert "fail" not in verdicts.values() and verdicts["cache-accounting"] == "unknown", verdicts
    assert out.verdict is Verdict.UNKNOWN


@needs_llama_cpp
def test_finding_another_request_cuts_a_stream_short(tmp_path: Path) -> None:
    """Finding (llama-cpp-python 0.3.36 defaults): a request that arrives while another tenant's
    stream runs ends that stream early: `[DONE]` without a finish_reason, far short of max_tokens."""
    prompt = " ".join(["depe", "sepi", "gesug", "dizu", "gata", "radu"] * 3)

    def stream_tokens(url: str, other: bool) -> tuple[int, str | None]:
        body = {"model": "tiny-llama", "prompt": prompt, "max_tokens": 200, "temperature": 0, "stream": True}
        chunks, finish = 0, None
        with httpx.Client(base_url=url, timeout=60) as http, http.stream("POST", "/v1/completions", json=body) as resp:
            try:
                for line in resp.iter_lines():
                    if not line.startswith("data: ") or line == "data: [DONE]":
                        continue
                    choice = json.loads(line[6:])["choices"][0]
                    chunks += 1
                    finish = choice.get("finish_reason") or finish
                    if other and chunks == 1:  # another tenant's request, once this stream is running
                        httpx.post(url + "/v1/completions", json={"model": "tiny-llama", "prompt": " kemu",
                                                                  "max_tokens": 1}, timeout=60)
            except httpx.RemoteProtocolError:
                pass  # the cut stream may also end mid-body instead of with [DONE]
        return chunks, finish

    with LlamaCppServer(log_path=tmp_path / "server.log") as server:  # the server's defaults
        alone = stream_tokens(server.base_url, other=False)
        disturbed = stream_tokens(server.base_url, other=True)
    assert alone[0] >= 200 and alone[1] == "length", alone
    assert disturbed[0] < 100 and disturbed[1] is None, disturbed


@needs_llama_cpp
def test_finding_a_grammar_that_does_not_parse_kills_the_server(tmp_path: Path) -> None:
    """Finding (llama-cpp-python 0.3.36): one tenant's `"grammar": "x"` segfaults the server
    (libllama.so, after "failed to parse grammar"), taking it down for every tenant."""
    with LlamaCppServer(log_path=tmp_path / "server.log") as server:
        with pytest.raises(httpx.HTTPError):
            httpx.post(server.base_url + "/v1/completions", timeout=60,
                       json={"model": "tiny-llama", "prompt": " hello", "max_tokens": 4, "grammar": "x"})
        assert server.proc is not None and server.proc.wait(timeout=30) != 0
        assert "failed to parse grammar" in (tmp_path / "server.log").read_text()


@needs_llama_cpp
def test_bad_gguf_gives_launch_error_with_log(tmp_path: Path) -> None:
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGUF" + b"\0" * 64)
    server = LlamaCppServer(gguf=bad, log_path=tmp_path / "server.log", startup_timeout_s=120)
    with pytest.raises(LaunchError) as err:
        server.start()
    assert "exited with code" in str(err.value) and str(tmp_path / "server.log") in str(err.value)
    assert server.pgid is not None and not server.alive
    with pytest.raises(ProcessLookupError):
        os.killpg(server.pgid, 0)


def _servers_on(port: int) -> list[int]:
    """Pids of llama.cpp server processes started for `port`."""
    import psutil

    found = []
    for p in psutil.process_iter(["cmdline"]):
        cmd = p.info["cmdline"] or []
        if "llama_cpp.server" in cmd and str(port) in cmd:
            found.append(p.pid)
    return found


@needs_llama_cpp
@pytest.mark.parametrize("when", ["ready", "starting"])
def test_serve_stack_llama_cpp_stops_on_sigterm(when: str, tmp_path: Path) -> None:
    """`harness serve --stack llama-cpp` serves, and a SIGTERM (once ready, or during start-up)
    stops the server's whole process group: no orphan holds the port."""
    from harness.stacks.vllm import free_port, port_in_use

    port = free_port()
    proc = subprocess.Popen([str(Path(sys.executable).parent / "kvbleed"), "serve", "--stack", "llama-cpp",
                             "--port", str(port), "--log", str(tmp_path / "serve.log")],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    try:
        lines = []
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            if line.startswith(when):
                break
        assert lines and lines[-1].startswith(when), "".join(lines)
        if when == "ready":
            assert lines[-1].startswith(f"ready at http://127.0.0.1:{port}")
        else:  # signal once the server process exists, typically before it is healthy
            deadline = time.monotonic() + 30
            while not _servers_on(port) and time.monotonic() < deadline:
                time.sleep(0.05)  # polling for another process to appear, bounded by the deadline
            assert _servers_on(port)
        proc.send_signal(signal.SIGTERM)
        rest = proc.communicate(timeout=60)[0]
        assert proc.returncode == 0, rest
        assert not _servers_on(port) and not port_in_use(port)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


# --- the client's id recovery, against a scripted llama.cpp-shaped server (no llama_cpp needed) ---

_VOCAB = {" red": 11, " green": 12, " blue": 13, " dup": 14}


def _fake_llamacpp(request: httpx.Request) -> httpx.Response:
    body = json.loads(request.content)
    if request.url.path == "/extras/tokenize":
        text = body["input"]
        if text == " dup":
            return httpx.Response(200, json={"tokens": [1, 2]})  # not one token: cannot be mapped alone
        ids = [_VOCAB[" " + w] for w in text.split()] if all(" " + w in _VOCAB for w in text.split()) else [99]
        return httpx.Response(200, json={"tokens": ids})
    toks = [" red", " dup"] if body["prompt"] == "dup" else [" red", " green"]
    lp = {"tokens": toks, "text_offset": [0, 4], "token_logprobs": [-0.1, -0.2],
          "top_logprobs": [{t: -0.1, " blue": -3.0} for t in toks]}
    return httpx.Response(200, json={"model": "m", "choices": [
        {"index": 0, "text": "".join(toks), "logprobs": lp, "finish_reason": "length"}]})


def _generate(prompt: str, handler) -> object:
    async def go():
        async with TargetClient("http://fake", transport=httpx.MockTransport(handler)) as client:
            return await client.generate(GenerationRequest("completions", "m", prompt=prompt, max_tokens=2))

    return asyncio.run(go())


def test_client_maps_text_logprobs_to_ids() -> None:
    res = _generate("x", _fake_llamacpp)
    assert res.ok and res.token_ids_source == "tokenize"
    assert res.output_token_ids == [11, 12]
    assert res.top_logprobs == [{11: -0.1, 13: -3.0}, {12: -0.1, 13: -3.0}]


def test_client_falls_back_to_tokenizing_the_whole_text() -> None:
    res = _generate("dup", _fake_llamacpp)
    assert res.ok and res.token_ids_source == "tokenize-text" and res.output_token_ids == [11, 14]


def test_client_without_tokenize_endpoint_reports_no_ids() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/extras/tokenize":
            return httpx.Response(404, json={"detail": "Not Found"})
        return _fake_llamacpp(request)

    res = _generate("x", handler)
    assert res.ok and res.output_token_ids == [] and res.token_ids_source is None
