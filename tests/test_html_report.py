"""report.html: a page people can read, checked in real headless Chromium.

- a passing and a failing run (the `flip` fault through the proxy) against the real server, each
  rendered, its DOM dumped and a screenshot saved beside it (screenshot-pass.png / -fail.png);
- model output that is HTML or script stays text: escaped by the template, and blocked again by the
  page's Content-Security-Policy (each layer shown on its own, plus a control that the detection
  itself works);
- a synthetic 2,000-request history renders to under 5 MB and opens quickly;
- `harness report DIR` re-renders a saved folder and refuses one without report.json.
Chromium is the Debian package (`make browser`); only its absence skips the browser tests.
"""

from __future__ import annotations

import json
import random
import re
import struct
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from harness.faults.proxy import FaultProxy
from harness.frontends.cli import main as cli_main
from harness.frontends.runs import RunConfig, run_isolation
from harness.history.record import HistoryWriter, Operation, RunInfo
from harness.reporters import html as html_reporter
from harness.reporters.html import shared_prefixes, write_selftest_html
from harness.reporters.reproducer import curl_command
from harness.result import RunResult
from harness.verdict import CheckResult, Verdict, Violation

LIBRARY = Path(__file__).resolve().parents[1] / "scenarios"
CHROMIUM = Path("/usr/bin/chromium")
needs_chromium = pytest.mark.skipif(not CHROMIUM.exists(),
                                    reason="/usr/bin/chromium is absent (install it with `make browser`)")
PAYLOAD = "<script>document.title='PWNED'</script><img src=x onerror=\"document.title='PWNED'\">"
CSP_RE = re.compile(r'<meta http-equiv="Content-Security-Policy"[^>]*>')


# --- Chromium ------------------------------------------------------------------------------------

def _chromium(page: Path, *extra: str, timeout: float = 90) -> tuple[str, float]:
    """Run headless Chromium on a local page with a fresh profile; (stdout, wall seconds)."""
    with tempfile.TemporaryDirectory(prefix="chromium-") as profile:
        cmd = [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
               "--disable-background-networking", "--disable-component-update", "--disable-sync",
               f"--user-data-dir={profile}", *extra, page.resolve().as_uri()]
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        wall = time.perf_counter() - t0
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout, wall


def dump_dom(page: Path) -> str:
    return _chromium(page, "--dump-dom")[0]


def screenshot(page: Path, out: Path) -> tuple[int, int]:
    """Save a 1400x3000 screenshot; returns the PNG's (width, height) read from its header."""
    _chromium(page, f"--screenshot={out}", "--window-size=1400,3000")
    head = out.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    return struct.unpack(">II", head[16:24])


def _title(dom: str) -> str:
    m = re.search(r"<title>(.*?)</title>", dom, re.S)
    return m.group(1) if m else ""


def _assert_self_contained(html: str) -> None:
    """No fetches: no external src/href/url(), no scripts, and a CSP forbidding both."""
    assert CSP_RE.search(html) and "default-src 'none'" in html and "script-src 'none'" in html
    assert not re.search(r'(src|href)\s*=\s*"(https?:)?//', html), "the page references a remote resource"
    assert "url(" not in html and "@import" not in html
    assert "<script" not in html.lower().replace("&lt;script", "")


# --- synthetic report folders --------------------------------------------------------------------

def write_html(folder: Path, fallback: bool = True) -> Path:
    """Render a saved folder's page the way `harness report` does: through `RunResult.load`."""
    return html_reporter.write_html(RunResult.load(folder), folder, fallback=fallback)


def report_v1(verdict: Verdict, results: list[CheckResult], meta: dict) -> dict:
    """report.json as schema version 1 wrote it (no schema_version): read by `RunResult.load`."""
    return {"verdict": verdict.value, "metadata": meta, "checks": [
        {"name": r.name, "description": r.description, "verdict": r.verdict.value, "exercised": r.exercised,
         "drift": r.drift, "violations": [v.__dict__ for v in r.violations], "notes": r.notes} for r in results]}


def synth_folder(d: Path, *, scenarios: int = 1, users: int = 3, turns: int = 1, prompt_len: int = 96,
                 violations: int = 1, payload: str | None = None, seed: int = 0) -> dict:
    """Write a report folder by hand (history.jsonl, report.json, reproducers/) with the real record
    and report classes: 4 runs (main, cf-0, cf-1, solo) per scenario, `violations` output violations
    of counterfactual-isolation. `payload` replaces the first violation's observed output text, its
    message and one user's error text, to test escaping."""
    rng = random.Random(seed)
    d.mkdir(parents=True, exist_ok=True)
    ops: list[Operation] = []
    clock = 0.0
    with HistoryWriter(d / "history.jsonl") as w:
        for s in range(scenarios):
            name = f"sc{s}"
            names = [f"u{i}" for i in range(users)]
            tenants = {u: f"t{i % 3}" for i, u in enumerate(names)}
            base = [rng.randrange(700, 2400) for _ in range(prompt_len // 2)]
            private = {u: [rng.randrange(700, 2400) for _ in range(prompt_len - len(base))] for u in names}
            for run in ("main", "cf-0", "cf-1", "solo"):
                w.append(RunInfo(run=run, scenario=name, nonce=" a b c", seed=s, variants={u: 0 for u in names},
                                 canaries={u: [] for u in names}, tenants=tenants,
                                 models={u: "tiny-llama" for u in names},
                                 isolation="salt" if run == "solo" else "shared"))
                for turn in range(turns):
                    for u in names:
                        prompt = base + private[u] + [1000 + turn] * 4
                        out_ids = [rng.randrange(700, 2400) for _ in range(16)]
                        invoke = clock + rng.random() * 0.05
                        complete = invoke + 0.05 + rng.random() * 0.2
                        clock += 0.01
                        salt = f"solo-{u}-{turn}" if run == "solo" else None
                        cached = 0 if salt else (len(base) // 32) * 32
                        op = Operation(
                            run=run, scenario=name, op_id=f"{run}/{name}/{u}/{turn}", user=u, tenant=tenants[u],
                            turn=turn, model="tiny-llama", endpoint="completions", stream=False, cache_salt=salt,
                            request={"model": "tiny-llama", "prompt": " ".join(f"w{t}" for t in prompt),
                                     "max_tokens": 16, "logprobs": 5},
                            invoke_s=invoke, complete_s=complete, ok=True, status=200,
                            prompt_token_ids=prompt, output_token_ids=out_ids,
                            output_text=" ".join(f"w{t}" for t in out_ids),
                            token_logprobs=[-0.5] * 16,
                            top_logprobs=[{t + k: -0.5 - k / 2 for k in range(5)} for t in out_ids],
                            cached_tokens=cached, prompt_tokens=len(prompt), ttft_s=0.03, finish_reason="length")
                        ops.append(op)
            clock += 0.5
        by_id = {o.op_id: o for o in ops}
        found: list[Violation] = []
        mains = [o for o in ops if o.run == "main"]
        for k, ref in enumerate(mains[:violations]):
            obs = by_id[ref.op_id.replace("main/", "cf-0/", 1)]
            obs.output_token_ids = [*ref.output_token_ids[:5], ref.output_token_ids[5] + 7, *ref.output_token_ids[6:]]
            obs.top_logprobs = list(ref.top_logprobs)
            obs.output_text = " ".join(f"w{t}" for t in obs.output_token_ids)
            message = f"user {ref.user!r} turn {ref.turn}: cf-0 output differs from main at token 5"
            if payload and k == 0:
                obs.output_text = payload
                message += " " + payload
            found.append(Violation("counterfactual-isolation", ref.scenario, message, [ref.user],
                                   [ref.op_id, obs.op_id],
                                   {"position": 5, "reference_token": ref.output_token_ids[5],
                                    "observed_token": obs.output_token_ids[5], "margin": None,
                                    "reference_run": "main", "observed_run": "cf-0", "turn": ref.turn}))
        if payload:
            bad = ops[1]
            bad.ok, bad.status, bad.error, bad.output_text = False, 500, payload, payload
        for op in ops:
            w.append(op)
    results = [CheckResult("counterfactual-isolation", Verdict.FAIL if found else Verdict.PASS,
                           exercised=len(mains), violations=found, description="a user's outputs do not change"),
               CheckResult("requests", Verdict.PASS, exercised=len(ops), description="every request succeeded",
                           notes=[payload] if payload else [])]
    meta = {"target": "http://127.0.0.1:1", "requests": len(ops), "duration_s": clock, "harness_version": "test",
            "seeds": {f"sc{s}": s for s in range(scenarios)}, "nonces": {}, "reproducers": []}
    for i, v in enumerate(found, start=1):
        r = d / "reproducers" / f"{i:03d}-{v.check}-{v.scenario}"
        r.mkdir(parents=True)
        (r / "scenario.yaml").write_text(f"# Reproducer\n# {v.message}\nname: {v.scenario}\n")
        (r / "requests.sh").write_text("#!/usr/bin/env sh\n" + "\n".join(curl_command(meta["target"], by_id[i_])
                                                                          for i_ in v.op_ids) + "\n")
        (r / "violation.json").write_text(json.dumps(v.__dict__))
        meta["reproducers"].append(str(r))
    report = report_v1(Verdict.FAIL if found else Verdict.PASS, results, meta)
    (d / "report.json").write_text(json.dumps(report, indent=2))
    return report


# --- pure-Python parts ---------------------------------------------------------------------------

def _brute_shared(ops: list[Operation]) -> dict[str, int]:
    out = {}
    for q in ops:
        best = 0
        for o in ops:
            if o is q or (o.model, o.cache_salt) != (q.model, q.cache_salt) or not o.invoke_s < q.complete_s:
                continue
            a, b = q.prompt_token_ids or [], (o.prompt_token_ids or []) + o.output_token_ids
            n = next((i for i in range(min(len(a), len(b))) if a[i] != b[i]), min(len(a), len(b)))
            best = max(best, n)
        out[q.op_id] = best
    return out


def test_shared_prefixes_match_brute_force() -> None:
    """Block-aligned values are exact; within the last block the few remembered sequences are used."""
    rng = random.Random(7)
    bases = [[rng.randrange(50) for _ in range(rng.randrange(0, 150))] for _ in range(4)]
    ops = []
    for i in range(120):
        prompt = rng.choice(bases)[: rng.randrange(0, 150)] + [rng.randrange(50) for _ in range(rng.randrange(1, 60))]
        t = rng.random() * 10
        ops.append(Operation(run="main", scenario="s", op_id=f"o{i}", user=f"u{i % 7}", tenant="t", turn=0,
                             model=rng.choice(["m", "a"]), endpoint="completions", stream=False,
                             cache_salt=rng.choice([None, "x"]), request={}, invoke_s=t,
                             complete_s=t + rng.random(), ok=True, prompt_token_ids=prompt,
                             output_token_ids=[rng.randrange(50) for _ in range(8)]))
    fast, brute = shared_prefixes(ops), _brute_shared(ops)
    for op_id, n in brute.items():
        assert fast[op_id] // 32 == n // 32 and fast[op_id] <= n, (op_id, fast[op_id], n)
    assert sum(fast[k] == brute[k] for k in brute) > 0.9 * len(brute)


def test_model_text_is_escaped_in_the_html(tmp_path: Path) -> None:
    synth_folder(tmp_path, payload=PAYLOAD)
    html = write_html(tmp_path).read_text()
    assert "<script>document.title" not in html and "<img src=x" not in html
    assert "&lt;script&gt;document.title=&#39;PWNED&#39;&lt;/script&gt;" in html
    _assert_self_contained(html)


def test_report_command_rerenders_and_rejects(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    synth_folder(tmp_path / "run")
    assert cli_main(["report", str(tmp_path / "run")]) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / "run" / "report.html")
    assert "violation" in (tmp_path / "run" / "report.html").read_text()
    (tmp_path / "empty").mkdir()
    assert cli_main(["report", str(tmp_path / "empty")]) == 2
    assert "no report.json" in capsys.readouterr().err


def test_render_bug_keeps_the_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A live run's call falls back to an error page (the verdict survives); `harness report` raises."""
    synth_folder(tmp_path)
    monkeypatch.setattr(html_reporter, "build_cache", lambda history: 1 / 0)
    page = write_html(tmp_path).read_text()
    assert "could not be rendered" in page and "ZeroDivisionError" in page
    with pytest.raises(ZeroDivisionError):
        write_html(tmp_path, fallback=False)


def test_selftest_page(tmp_path: Path) -> None:
    (tmp_path / "flip").mkdir()
    synth_folder(tmp_path / "flip")
    write_html(tmp_path / "flip")
    (tmp_path / "selftest.json").write_text(json.dumps({"ok": False, "faults": {
        "flip": {"kind": "fault", "verdict": "fail", "injections": 3, "checks": {"cache-transparency": "fail",
                 "canary": "pass"}, "detected_by": ["cache-transparency"], "requests_to_detection": 7,
                 "requests": 12, "error": None},
        "noise": {"kind": "benign", "verdict": "fail", "injections": 9, "checks": {"cache-transparency": "fail",
                  "canary": "pass"}, "detected_by": ["cache-transparency"], "requests_to_detection": 3,
                  "requests": 12, "error": PAYLOAD}}}))
    html = write_selftest_html(tmp_path).read_text()
    assert 'class="banner fail"' in html and 'href="flip/report.html"' in html
    assert "<script>" not in html and "&lt;script&gt;" in html
    assert cli_main(["report", str(tmp_path)]) == 0


# --- Chromium: real runs -------------------------------------------------------------------------

def _assert_page(dom: str, verdict: str, report: dict) -> None:
    assert f'class="banner {verdict}"' in dom and f"<b>{verdict.upper()}</b>" in dom
    for c in report["checks"]:
        assert f'<td class="mono">{c["name"]}</td>' in dom, c["name"]
    assert dom.count("<svg") >= 1, "no timeline"
    n_ops = report["metadata"]["requests"]
    assert len(re.findall(r"<rect [^>]*><title>", dom)) == n_ops, "one timeline bar per request"


@needs_chromium
def test_passing_run_page_in_chromium(embedded_url: str, tmp_path: Path) -> None:
    out = run_isolation(RunConfig(target=embedded_url, scenario_paths=[LIBRARY / "strict-prefix.yaml"],
                                  report_dir=tmp_path))
    page = tmp_path / "report.html"
    assert page.is_file(), "a run must write report.html"
    _assert_self_contained(page.read_text())
    dom = dump_dom(page)
    _assert_page(dom, out.verdict.value, out.report)
    assert screenshot(page, tmp_path / "screenshot-pass.png") == (1400, 3000)
    assert out.verdict is Verdict.PASS, [(c["name"], c["verdict"], c["notes"]) for c in out.report["checks"]
                                         if c["verdict"] != "pass"]
    assert 'class="violation"' not in dom and "None." in dom


@needs_chromium
def test_failing_run_page_in_chromium(embedded_url: str, tmp_path: Path) -> None:
    with FaultProxy(embedded_url, fault="flip", rate=1.0, seed=3) as proxy:
        out = run_isolation(RunConfig(target=proxy.url, scenario_paths=[LIBRARY / "strict-prefix.yaml"],
                                      report_dir=tmp_path))
    assert out.verdict is Verdict.FAIL
    page = tmp_path / "report.html"
    dom = dump_dom(page)
    _assert_page(dom, "fail", out.report)
    n = sum(len(c["violations"]) for c in out.report["checks"])
    assert dom.count('<section class="violation"') == n
    assert dom.count('<tr class="first">') == n, "each output violation shows its first divergence"
    assert dom.count("Top logprobs at position") == n and "Reference margin between the two tokens" in dom
    assert dom.count("curl -sS") >= n and dom.count("# Reproducer for a") == n, "reproducers embedded"
    assert len(re.findall(r'stroke="#cf222e" stroke-width="2"><title>', dom)) >= 2, "violations marked on the timeline"
    assert screenshot(page, tmp_path / "screenshot-fail.png") == (1400, 3000)
    # Re-rendering from the saved folder alone gives the same page (screenshots are not embedded).
    before = page.read_text()
    assert cli_main(["report", str(tmp_path)]) == 0
    assert page.read_text() == before


# --- Chromium: untrusted text --------------------------------------------------------------------

@needs_chromium
def test_model_output_never_runs_in_chromium(tmp_path: Path) -> None:
    synth_folder(tmp_path / "run", payload=PAYLOAD)
    page = write_html(tmp_path / "run")
    dom = dump_dom(page)
    assert _title(dom) == "isolation report: FAIL"
    assert "&lt;script&gt;document.title='PWNED'&lt;/script&gt;" in dom, "the payload shows as text"
    assert "<img src=\"x\"" not in dom, "the payload became an element"
    # Escaping alone holds: the same page without its Content-Security-Policy.
    bare = tmp_path / "no-csp.html"
    bare.write_text(CSP_RE.sub("", page.read_text()))
    assert _title(dump_dom(bare)) == "isolation report: FAIL"
    # The CSP alone holds too, and the detection works: the payload unescaped runs without the CSP.
    raw = page.read_text().replace("&lt;script&gt;document.title=&#39;PWNED&#39;&lt;/script&gt;",
                                   "<script>document.title='PWNED'</script>", 1)
    (tmp_path / "raw-csp.html").write_text(raw)
    assert _title(dump_dom(tmp_path / "raw-csp.html")) == "isolation report: FAIL"
    (tmp_path / "raw.html").write_text(CSP_RE.sub("", raw))
    assert _title(dump_dom(tmp_path / "raw.html")) == "PWNED"


# --- size and speed ------------------------------------------------------------------------------

TIMER = ("<script nonce=\"t\">document.body.getBoundingClientRect();"
         "document.documentElement.setAttribute('data-ready-ms', String(Math.round(performance.now())));</script>")


@needs_chromium
def test_two_thousand_requests_small_and_fast(tmp_path: Path) -> None:
    """5 scenarios x 4 runs x 25 users x 4 turns = 2,000 requests with 300-token prompts and 20
    violations. Asserts < 5 MB; 'open time' is measured inside the page by a timing script added to
    a copy (parse, style and layout of the whole page, from navigation start), and must be < 2 s."""
    d = tmp_path / "big"
    report = synth_folder(d, scenarios=5, users=25, turns=4, prompt_len=300, violations=20)
    assert report["metadata"]["requests"] == 2000
    t0 = time.perf_counter()
    page = write_html(d)
    render_s = time.perf_counter() - t0
    size = page.stat().st_size
    assert size < 5_000_000, f"report.html is {size / 1e6:.2f} MB"
    timed = tmp_path / "timed.html"
    html = CSP_RE.sub("<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; "
                      "style-src 'unsafe-inline'; img-src data:; script-src 'nonce-t'\">", page.read_text())
    timed.write_text(html.replace("</body>", TIMER + "</body>"))
    dom, wall = _chromium(timed, "--dump-dom")
    ready = re.search(r'data-ready-ms="(\d+)"', dom)
    assert ready, "the timing script did not run"
    ready_ms = int(ready.group(1))
    (tmp_path / "blank.html").write_text("<!DOCTYPE html><title>x</title>" + TIMER.replace("nonce=\"t\"", ""))
    _, blank_wall = _chromium(tmp_path / "blank.html", "--dump-dom")
    assert len(re.findall(r"<rect [^>]*><title>", dom)) == 2000
    figures = {"requests": 2000, "html_bytes": size, "python_render_s": round(render_s, 2),
               "in_page_ready_ms": ready_ms, "chromium_dump_dom_wall_s": round(wall, 2),
               "chromium_blank_page_wall_s": round(blank_wall, 2)}
    (tmp_path / "size-speed.json").write_text(json.dumps(figures, indent=1))
    print("2,000-request report:", figures)
    assert ready_ms < 2000, figures
