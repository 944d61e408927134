"""Driver cost: the harness's driver against `vllm bench serve`'s, on the same fake server.

Both drivers send the same requests (streamed `/v1/completions`, the same prompt and output
lengths, top-5 logprobs, token ids) to `bench/fake_server.py`, which answers at zero model cost,
so what is measured is the client: CPU seconds of the driving process per 1,000 requests and
requests per second, at several concurrency levels. Each cell runs in a fresh child process.

- harness: `drive_run` recording its full history (JSONL, flushed per record), CPU time of the
  process (`time.process_time`) around `drive_run` only.
- vllm: `vllm.benchmarks.serve` (dataset `random`, the embedded model's tokenizer), CPU time
  around its `benchmark()` coroutine only (the request loop and its metrics), so that importing
  vLLM and building the dataset are not charged to it; the whole child's CPU time
  (`RUSAGE_CHILDREN`) is reported next to it.

Then a scale run: 2,000 simulated users with multi-turn conversations in one process (peak RSS,
errors, throughput), and the checks over the history it recorded.

    .venv/bin/python -m bench.bench_driver            # full matrix, writes bench/results/driver.json
    .venv/bin/python -m bench.bench_driver --quick    # a smaller, faster matrix

The machine's other load makes wall times noisy; compare CPU times measured in the same run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
MODEL = "fake-model"
TENANTS = 4


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


# --- one cell: the harness driver ---------------------------------------------------------------

def _scenario(users: int, turns: int, concurrency: int, interleaving: str, stream: bool, endpoint: str,
              max_tokens: int, sys_words: int, private_words: int, secrets: int):
    from harness.scenario.model import Scenario, Schedule, SharedPrefix, Tenant, User

    return Scenario(
        name="bench", endpoint=endpoint, stream=stream, max_tokens=max_tokens, top_logprobs=5, seed=1,
        shared_prefixes=[SharedPrefix(name="sys", words=sys_words)],
        tenants=[Tenant(name=f"t{i}", secrets=secrets) for i in range(TENANTS)],
        users=[User(name=f"u{i:05d}", tenant=f"t{i % TENANTS}", prefixes=["sys"], private_words=private_words,
                    turns=turns) for i in range(users)],
        schedule=Schedule(concurrency=concurrency, interleaving=interleaving, seed=3),
    )


def harness_cell(p: dict[str, Any]) -> dict[str, Any]:
    import httpx

    from harness.checks.base import CheckContext, run_checks
    from harness.client import TargetClient
    from harness.driver.driver import RunSpec, TargetDown, drive_run
    from harness.history.record import History, HistoryWriter
    from harness.scenario.render import make_nonce, plan_scenario

    base_rss = _rss_mb()
    sc = _scenario(p["users"], p["turns"], p["concurrency"], p["interleaving"], p["stream"], p["endpoint"],
                   p["max_tokens"], p["sys_words"], p["private_words"], p["secrets"])
    nonce = make_nonce()
    plans = plan_scenario(sc, nonce)
    spec = RunSpec("main", sc, plans, nonce, {u.name: MODEL for u in sc.users}, {u.name: None for u in sc.users})
    transport = None
    limits = httpx.Limits(max_connections=512, max_keepalive_connections=512)
    if p["transport"] == "httpx":
        transport = httpx.AsyncHTTPTransport(limits=limits)
    elif p["transport"] == "httpx-aiohttp":
        from httpx_aiohttp import AiohttpTransport

        transport = AiohttpTransport(limits=limits)
    elif p["transport"] != "default":
        raise ValueError(p["transport"])
    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        writer = HistoryWriter(Path(tmp) / "history.jsonl")

        async def go() -> None:
            async with TargetClient(p["url"], timeout_s=120.0, transport=transport) as client:
                out["transport_class"] = type(client._http._transport).__name__
                t0, w0 = time.process_time(), time.perf_counter()
                try:
                    await drive_run(client, spec, writer)
                except TargetDown as exc:
                    out["target_down"] = str(exc)
                out["cpu_s"] = time.process_time() - t0
                out["wall_s"] = time.perf_counter() - w0

        asyncio.run(go())
        writer.close()
        out["history_mb"] = (Path(tmp) / "history.jsonl").stat().st_size / 1e6
    ops = [r for r in writer.records if getattr(r, "kind", "") == "op"]
    out["requests"] = len(ops)
    out["errors"] = sum(1 for o in ops if not o.ok)
    out["first_error"] = next((o.error for o in ops if not o.ok), None)
    out["base_rss_mb"] = base_rss
    out["maxrss_mb"] = _rss_mb()
    if p.get("checks"):
        history = History(writer.records)
        t0 = time.process_time()
        results = run_checks(history, CheckContext(tolerance=1e-3))
        out["checks_cpu_s"] = time.process_time() - t0
        out["checks"] = {r.name: r.verdict.value for r in results}
        out["check_notes"] = {r.name: r.notes[:2] for r in results if r.notes}
    return out


# --- one cell: vllm bench serve's driver --------------------------------------------------------

def vllm_cell(p: dict[str, Any]) -> dict[str, Any]:
    import vllm.benchmarks.serve as serve
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    parser = FlexibleArgumentParser()
    serve.add_cli_args(parser)
    argv = [
        "--backend", "openai", "--base-url", p["url"], "--endpoint", "/v1/completions",
        "--model", MODEL, "--tokenizer", p["tokenizer"], "--dataset-name", "random",
        "--random-input-len", str(p["input_len"]), "--random-output-len", str(p["max_tokens"]),
        "--random-range-ratio", "0", "--num-prompts", str(p["requests"]),
        "--max-concurrency", str(p["concurrency"]), "--request-rate", "inf", "--logprobs", "5",
        "--ignore-eos", "--disable-tqdm", "--seed", "1",
        "--extra-body", json.dumps({"return_token_ids": True, "return_tokens_as_token_ids": True}),
    ]
    args = parser.parse_args(argv)
    measured: dict[str, float] = {}
    original = serve.benchmark

    async def timed_benchmark(*a: Any, **kw: Any) -> Any:
        t0, w0 = time.process_time(), time.perf_counter()
        result = await original(*a, **kw)
        measured["cpu_s"] = time.process_time() - t0
        measured["wall_s"] = time.perf_counter() - w0
        return result

    serve.benchmark = timed_benchmark
    base_rss = _rss_mb()
    sys_stdout = sys.stdout
    sys.stdout = sys.stderr  # vllm prints its report; keep stdout for our JSON line
    try:
        result = serve.main(args)
    finally:
        sys.stdout = sys_stdout
    completed = int(result.get("completed", 0))
    return {**measured, "requests": p["requests"], "errors": p["requests"] - completed,
            "base_rss_mb": base_rss, "maxrss_mb": _rss_mb()}


# --- orchestration ------------------------------------------------------------------------------

def _cores() -> tuple[set[int], set[int]] | None:
    """(the fake server's core, the drivers' core) where there are two to give, else None: each
    side on its own core, as the issue's own figures were taken, so neither steals the other's."""
    cores = sorted(os.sched_getaffinity(0))
    return ({cores[0]}, {cores[1]}) if len(cores) >= 2 else None


def _pin(pid: int, cores: set[int]) -> None:
    os.sched_setaffinity(pid, cores)


def run_cell(kind: str, params: dict[str, Any], timeout_s: float = 1800) -> dict[str, Any]:
    """Run one cell in a fresh child process; adds the child's whole CPU time (RUSAGE_CHILDREN)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    cores = _cores()
    proc = subprocess.run([sys.executable, "-m", "bench.bench_driver", "_cell", kind, json.dumps(params)],
                          cwd=ROOT, capture_output=True, text=True, timeout=timeout_s,
                          preexec_fn=(lambda: _pin(0, cores[1])) if cores else None)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise RuntimeError(f"{kind} cell failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    out["process_cpu_s"] = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    out.update(kind=kind, concurrency=params.get("concurrency"), transport=params.get("transport", "aiohttp (own)"))
    n = out["requests"] or 1
    out["cpu_ms_per_req"] = 1000.0 * out["cpu_s"] / n
    out["rps"] = n / out["wall_s"] if out.get("wall_s") else None
    return out


def embedded_tokenizer() -> str:
    """The embedded model's folder (built if need be): `vllm bench serve` takes its tokenizer."""
    proc = subprocess.run([sys.executable, "-m", "harness.testmodel.embedded_model"], cwd=ROOT, capture_output=True,
                          text=True, check=True)
    for line in proc.stdout.splitlines():
        if line.strip() and (Path(line.strip()) / "tokenizer.json").is_file():
            return line.strip()
    raise RuntimeError(f"no model folder in the output of harness.testmodel.embedded_model: {proc.stdout[-500:]}")


def _median_cell(cells: list[dict[str, Any]]) -> dict[str, Any]:
    by_cpu = sorted(cells, key=lambda c: c["cpu_ms_per_req"])
    med = dict(by_cpu[len(by_cpu) // 2])
    med["cpu_ms_per_req_all"] = [round(c["cpu_ms_per_req"], 3) for c in cells]
    med["rps"] = statistics.median(c["rps"] for c in cells)
    med["errors"] = sum(c["errors"] for c in cells)
    return med


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="harness driver vs vllm bench serve, on the fake server")
    ap.add_argument("--requests", type=int, default=2000, help="requests per cell")
    ap.add_argument("--concurrency", default="1,64,512")
    ap.add_argument("--repeats", type=int, default=7, help="runs per cell; the median CPU/request is reported")
    ap.add_argument("--transports", default="default,httpx", help="harness transports to measure")
    ap.add_argument("--scale-users", type=int, default=2000, help="0: no scale run")
    ap.add_argument("--scale-turns", type=int, default=4)
    ap.add_argument("--max-tokens", type=int, default=16)
    ap.add_argument("--quick", action="store_true", help="500 requests, 1 repeat, 500 scale users")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "driver.json")
    ap.add_argument("--table", action="store_true", help="print the markdown table of --out again and stop")
    args = ap.parse_args(argv)
    if args.table:
        print(markdown(json.loads(args.out.read_text())))
        return 0
    if args.quick:
        args.requests, args.repeats, args.scale_users = 500, 1, 500
    from bench.fake_server import FakeServer

    tokenizer = embedded_tokenizer()
    sys_words, private_words, secrets = 60, 61, 1
    input_len = 3 + sys_words + private_words + 4 * secrets  # nonce + prefix + private + canary words
    shape = dict(max_tokens=args.max_tokens, sys_words=sys_words, private_words=private_words, secrets=secrets,
                 endpoint="completions", stream=True)
    transports = [t for t in args.transports.split(",") if t]
    rows: list[dict[str, Any]] = []
    with FakeServer.spawn() as server:
        if _cores():
            _pin(server.proc.pid, _cores()[0])  # type: ignore[index]
        for c in [int(x) for x in args.concurrency.split(",")]:
            cells: dict[str, list[dict[str, Any]]] = {}
            for _ in range(args.repeats):  # interleaved, so both drivers see the same background load
                cells.setdefault("vllm", []).append(run_cell("vllm", dict(
                    url=server.url, tokenizer=tokenizer, input_len=input_len, max_tokens=args.max_tokens,
                    requests=args.requests, concurrency=c)))
                for t in transports:
                    cells.setdefault(t, []).append(run_cell("harness", dict(
                        url=server.url, users=args.requests, turns=1, concurrency=c, interleaving="random",
                        transport=t, **shape)))
            for key, cs in cells.items():
                row = _median_cell(cs)
                if key != "vllm":  # each repeat's harness cell over the vllm cell run just before it
                    row["paired_ratios"] = [round(h["cpu_ms_per_req"] / v["cpu_ms_per_req"], 3)
                                            for h, v in zip(cs, cells["vllm"], strict=True)]
                rows.append(row)
                print(f"c={c:<4} {key:<14} {row['cpu_ms_per_req']:.3f} CPU-ms/req (all {row['cpu_ms_per_req_all']}) "
                      f"{row['rps']:.0f} req/s errors={row['errors']} rss={row['maxrss_mb']:.0f}MB", flush=True)
        scale = None if args.scale_users <= 0 else run_cell("harness", dict(
            url=server.url, users=args.scale_users, turns=args.scale_turns, concurrency=args.scale_users,
            interleaving="burst", transport="default", checks=True, **shape))
        if scale is not None:
                print(f"scale: {args.scale_users} users x {args.scale_turns} turns: {scale['requests']} requests, "
                  f"errors={scale['errors']}, {scale['rps']:.0f} req/s, {scale['cpu_ms_per_req']:.3f} CPU-ms/req, "
                  f"peak RSS {scale['maxrss_mb']:.0f} MB (after imports {scale['base_rss_mb']:.0f} MB), "
                  f"checks {scale.get('checks')} in {scale.get('checks_cpu_s', 0):.1f} s", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    report = {"requests_per_cell": args.requests, "repeats": args.repeats, "input_len": input_len,
              "max_tokens": args.max_tokens, "rows": rows, "scale": scale,
              "scale_users": args.scale_users, "scale_turns": args.scale_turns}
    args.out.write_text(json.dumps(report, indent=1))
    print(markdown(report))
    return 0


def markdown(report: dict[str, Any]) -> str:
    rows = report["rows"]
    lines = [f"Streamed `/v1/completions`, {report['input_len']}-token prompts, {report['max_tokens']} output tokens, "
             f"top-5 logprobs and token ids; {report['requests_per_cell']} requests per cell, median of "
             f"{report['repeats']}.", "",
             "| concurrency | driver | CPU ms / request | CPU s / 1,000 requests | requests / s | errors | "
             "harness ÷ vllm (CPU) | per-repeat ratios (median) |", "|---|---|---|---|---|---|---|---|"]
    vllm = {r["concurrency"]: r for r in rows if r["kind"] == "vllm"}
    for r in rows:
        name = "vllm bench serve" if r["kind"] == "vllm" else f"harness ({r['transport']})"
        ratio = "" if r["kind"] == "vllm" else f"{r['cpu_ms_per_req'] / vllm[r['concurrency']]['cpu_ms_per_req']:.2f}"
        paired = r.get("paired_ratios") or []
        pairs = f"{', '.join(f'{x:.2f}' for x in paired)} ({statistics.median(paired):.2f})" if paired else ""
        lines.append(f"| {r['concurrency']} | {name} | {r['cpu_ms_per_req']:.3f} | {r['cpu_ms_per_req']:.2f} | "
                     f"{r['rps']:.0f} | {r['errors']} | {ratio} | {pairs} |")
    s = report["scale"]
    if s is None:  # --scale-users 0
        return "\n".join(lines)
    lines += ["", "| scale run | figure |", "|---|---|",
              f"| users × turns (burst: all users in flight) | {report['scale_users']} × {report['scale_turns']} |",  # noqa: RUF001  (intentional: the multiplication sign in the markdown table)
              f"| requests / errors | {s['requests']} / {s['errors']} |",
              f"| requests / s | {s['rps']:.0f} |",
              f"| CPU ms / request | {s['cpu_ms_per_req']:.3f} |",
              f"| peak RSS (after imports) | {s['maxrss_mb']:.0f} MB ({s['base_rss_mb']:.0f} MB) |",
              f"| history written | {s['history_mb']:.1f} MB |"]
    if s.get("checks"):
        lines.append(f"| checks over its history | {s['checks_cpu_s']:.1f} s CPU: "
                     + ", ".join(f"{k} {v}" for k, v in s["checks"].items()) + " |")
    return "\n".join(lines)


def _cell_main(kind: str, params: str) -> int:
    p = json.loads(params)
    out = harness_cell(p) if kind == "harness" else vllm_cell(p)
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "_cell":
        sys.exit(_cell_main(sys.argv[2], sys.argv[3]))
    sys.exit(main())
