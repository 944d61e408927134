"""A fleet under test: N embedded vLLM replicas behind the vLLM project's router (`vllm-router`).

Production isolation bugs also live between servers: a prefix-aware router that keys its prefix
index on the prompt alone and forgets the tenant's salt, session affinity that lets one tenant
steer another's routing. `FleetStack` launches the replicas (`stacks.vllm.EmbeddedServer`, each
with its own log) and then the router (`RouterProcess`, its own log) with the chosen policy, and
stops them together. Clients talk to the router only.

Which replica served each request comes from the replicas themselves: each runs the middleware of
`stacks.replica_tag`, which writes the driver's `X-Harness-Op` header into a per-replica ledger as
the request arrives. `events()` turns the ledgers into a `ReplicaAttribution` record: an exact
join on the op id, not an inference from timing or counters. An op found on two replicas (a retry
by the router) or on none (the router never forwarded it) has no replica, and cache accounting
treats its hits as unchecked (docs/design.md, "Cache accounting").
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import ClassVar

from harness.history.record import Event, Incident, ReplicaAttribution
from harness.stacks.base import StackTraits
from harness.stacks.fleet_settings import (
    DEFAULT_POLICY,
    DEFAULT_REPLICAS,
    POLICIES,
    POLICY_ENV,
    REPLICAS_ENV,
    parse_policy,
    parse_replicas,
)
from harness.stacks.process import LaunchError, OwnedProcess, history_time, restart_incident
from harness.stacks.vllm import DEFAULT_STARTUP_TIMEOUT_S, EmbeddedServer

KV_EVENT_TOPIC = "kv-events"
BLOCK_SIZE = 32  # the replicas' --block-size (stacks.vllm)


@dataclass
class RouterProcess(OwnedProcess):
    """`vllm-router` in front of the replicas' URLs, with one routing policy."""

    NAME: ClassVar[str] = "vllm-router"
    LOG_STEM: ClassVar[str] = "router"
    HEALTH_PATH: ClassVar[str] = "/readiness"  # 200 once it has a healthy worker

    worker_urls: list[str] = field(default_factory=list)
    policy: str = DEFAULT_POLICY
    kv_event_sources: dict[str, str] = field(default_factory=dict)
    """Worker URL -> the ZMQ endpoint of its KV events (kv_aware routing only)."""
    model_dir: Path | None = None
    python: str = sys.executable

    def prepare(self) -> None:
        if importlib.util.find_spec("vllm_router") is None:
            raise LaunchError("vllm-router is not installed; install the `fleet` extra "
                              "(pip install -e '.[fleet]')")

    def command(self) -> list[str]:
        assert self.port is not None
        cmd = [self.python, "-m", "vllm_router.launch_router",
               "--host", self.host, "--port", str(self.port),
               "--policy", self.policy,
               "--worker-urls", *self.worker_urls,
               "--log-level", "info"]
        if self.policy == "kv_aware" and self.kv_event_sources:
            for url, endpoint in self.kv_event_sources.items():
                cmd += ["--kv-event-source", f"{url}={endpoint}"]
            cmd += ["--kv-event-block-size", str(BLOCK_SIZE), "--kv-event-model", str(self.model_dir)]
        return cmd


@dataclass
class FleetStack:
    """N embedded vLLM replicas behind `vllm-router`; `base_url` is the router's."""

    NAME: ClassVar[str] = "vLLM fleet"

    replicas: int | None = None
    """How many replicas (None: $HARNESS_FLEET_REPLICAS, else 2; `stacks.fleet_settings`)."""
    router_policy: str | None = None
    """The router's `--policy` (None: $HARNESS_FLEET_POLICY, else cache_aware)."""
    port: int | None = None
    """The router's port (None: a free one); the replicas always take free ports."""
    log_path: Path | None = None
    """The router's log; each replica logs to `.cache/logs/vllm-PORT.log`."""
    host: str = "127.0.0.1"
    model_dir: Path | None = None
    startup_timeout_s: float = DEFAULT_STARTUP_TIMEOUT_S
    extra_args: list[str] = field(default_factory=list)
    """Extra vLLM arguments for every replica."""
    kill_replica_at: tuple[str, int] | None = None
    """(replica, K): that replica kills itself when its K-th request arrives (the replica-failure
    nemesis, `stacks.replica_tag`); its death is an incident the harness caused."""
    servers: list[EmbeddedServer] = field(default_factory=list, init=False)
    router: RouterProcess | None = field(default=None, init=False)
    startup_s: float | None = field(default=None, init=False)
    restarts: int = field(default=0, init=False)
    ledger_dir: Path | None = field(default=None, init=False)
    _ledger_read: dict[str, int] = field(default_factory=dict, init=False, repr=False)
    _events: list[Event] = field(default_factory=list, init=False, repr=False)

    def __post_init__(self) -> None:
        """Resolve the settings (argument, else environment, else default); ValueError naming
        where a bad value came from."""
        for attr, var, parse, default in (("replicas", REPLICAS_ENV, parse_replicas, DEFAULT_REPLICAS),
                                          ("router_policy", POLICY_ENV, parse_policy, DEFAULT_POLICY)):
            given = getattr(self, attr)
            source = f"{attr}={given!r}" if given is not None else f"${var}={os.environ.get(var)!r}"
            raw = given if given is not None else (os.environ.get(var) or default)
            try:
                setattr(self, attr, parse(raw))
            except ValueError as exc:
                raise ValueError(f"fleet: {source}: {exc}") from None

    @property
    def size(self) -> int:
        """The number of replicas (resolved)."""
        assert self.replicas is not None
        return self.replicas

    @property
    def policy(self) -> str:
        """The router's policy (resolved)."""
        assert self.router_policy is not None
        return self.router_policy

    # --- the Stack protocol -------------------------------------------------------------------

    @property
    def traits(self) -> StackTraits:
        return StackTraits(owned=True, can_restart=True, replicas=self.size)

    @property
    def base_url(self) -> str:
        return self.router.base_url if self.router is not None else ""

    def start(self) -> str:
        """Start every replica (concurrently), then the router; on any failure stop them all."""
        t0 = time.monotonic()
        if self.model_dir is None:
            from harness.testmodel.embedded_model import build

            self.model_dir = build()
        try:
            self._start_replicas()
            self._start_router()
        except BaseException:
            self.stop()
            raise
        self.startup_s = time.monotonic() - t0
        return self.base_url

    def stop(self) -> None:
        """Stop the router, then the replicas. Idempotent."""
        if self.router is not None:
            self.router.stop()
        for server in self.servers:
            server.stop()

    def restart(self) -> str:
        """A fresh fleet on the same ports: every replica's cache and the router's prefix index
        start empty. Recorded as one incident the harness caused."""
        self.stop()
        self.restarts += 1
        self._events.append(restart_incident(self.NAME, self.restarts))
        for server in self.servers:
            server.restart()
            server.events()  # the fleet's own incident stands for these
        assert self.router is not None
        self.router.restart()
        self.router.events()
        return self.base_url

    @property
    def alive(self) -> bool:
        return (self.router is not None and self.router.alive and len(self.servers) == self.size
                and all(s.alive for s in self.servers))

    def check_alive(self) -> None:
        for proc in [*self.servers, *([self.router] if self.router else [])]:
            proc.check_alive()

    def events(self) -> list[Event]:
        """Deaths and restarts of any process of the fleet, then which replica served each op
        recorded in the ledgers since the last call."""
        out, self._events = self._events, []
        for proc in [*self.servers, *([self.router] if self.router else [])]:
            out += proc.events()
        # Always, even empty: a history from a fleet must say so, or accounting would take it for
        # one server and explain hits fleet-wide (with no ledger line, every op is unplaced: UNKNOWN).
        out.append(self.attribution())
        return out

    def wait(self) -> int | None:
        """Block until a process of the fleet exits (`harness serve`); its exit code, or None if
        none runs."""
        procs = [*self.servers, *([self.router] if self.router else [])]
        if not any(p.proc is not None for p in procs):
            return None
        while True:
            for p in procs:
                if p.proc is not None and p.proc.poll() is not None:
                    return p.wait()
            time.sleep(1.0)  # watching external processes for `serve`, not test synchronisation

    @property
    def returncode(self) -> int | None:
        """The exit code of the first process of the fleet that has exited, else None."""
        for p in [*self.servers, *([self.router] if self.router else [])]:
            if p.returncode is not None:
                return p.returncode
        return None

    # --- replicas and attribution -------------------------------------------------------------

    def replica_names(self) -> list[str]:
        return [f"r{i}" for i in range(self.size)]

    def ledger_entries(self) -> list[tuple[str, str]]:
        """(replica, op id) for every request the replicas recorded since the last call."""
        out: list[tuple[str, str]] = []
        if self.ledger_dir is None:
            return out
        for name in self.replica_names():
            path = self.ledger_dir / f"{name}.jsonl"
            if not path.exists():
                continue
            with open(path, "rb") as fh:
                fh.seek(self._ledger_read.get(name, 0))
                data = fh.read()
            end = data.rfind(b"\n") + 1  # a line still being written waits for the next call
            self._ledger_read[name] = self._ledger_read.get(name, 0) + end
            for line in data[:end].splitlines():
                try:
                    rec = json.loads(line)
                except ValueError:
                    continue
                if isinstance(rec, dict) and isinstance(rec.get("op"), str):
                    out.append((name, rec["op"]))
        return out

    def attribution(self) -> ReplicaAttribution:
        """The ledgers since the last call as a history record (see the module docstring)."""
        seen: dict[str, set[str]] = {}
        for replica, op in self.ledger_entries():
            seen.setdefault(op, set()).add(replica)
        served = {op: next(iter(rs)) for op, rs in seen.items() if len(rs) == 1}
        ambiguous = sorted(op for op, rs in seen.items() if len(rs) > 1)
        return ReplicaAttribution(at_s=history_time(), replicas=self.replica_names(), served=served,
                                  ambiguous=ambiguous, source="replica ledger (X-Harness-Op)")

    # --- plumbing -----------------------------------------------------------------------------

    def _start_replicas(self) -> None:
        from harness.stacks.process import free_port

        if self.ledger_dir is None:
            base = (self.log_path.parent if self.log_path else Path(".cache") / "logs")
            self.ledger_dir = base / f"fleet-ledger-{os.getpid()}-{free_port()}"
            self.ledger_dir.mkdir(parents=True, exist_ok=True)
        if not self.servers:
            for name in self.replica_names():
                self.servers.append(_Replica(
                    model_dir=self.model_dir, startup_timeout_s=self.startup_timeout_s,
                    extra_args=[*self.extra_args, "--middleware", "harness.stacks.replica_tag.tag"],
                    replica=name, ledger=self.ledger_dir / f"{name}.jsonl",
                    die_at=(self.kill_replica_at[1] if self.kill_replica_at and self.kill_replica_at[0] == name
                            else None),
                    kv_events_port=(free_port() if self.policy == "kv_aware" else None)))
        errors: list[BaseException] = []

        def launch(server: EmbeddedServer) -> None:
            try:
                server.start()
            except BaseException as exc:  # collected, re-raised below
                errors.append(exc)

        threads = [threading.Thread(target=launch, args=(s,), daemon=True) for s in self.servers]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if errors:
            raise errors[0]

    def _start_router(self) -> None:
        if self.router is None:
            sources = {s.base_url: f"tcp://127.0.0.1:{s.kv_events_port}"
                       for s in self.servers if isinstance(s, _Replica) and s.kv_events_port}
            self.router = RouterProcess(port=self.port, log_path=self.log_path, host=self.host,
                                        startup_timeout_s=self.startup_timeout_s,
                                        worker_urls=[s.base_url for s in self.servers],
                                        policy=self.policy, kv_event_sources=sources,
                                        model_dir=self.model_dir)
        self.router.start()


@dataclass
class _Replica(EmbeddedServer):
    """One replica: the embedded server with its name, its ledger, and (for kv_aware routing) a
    ZMQ publisher of its KV-cache events."""

    replica: str = "r0"
    ledger: Path | None = None
    kv_events_port: int | None = None
    die_at: int | None = None

    def command(self) -> list[str]:
        cmd = super().command()
        if self.kv_events_port is not None:
            cmd += ["--kv-events-config", json.dumps({
                "enable_kv_cache_events": True, "publisher": "zmq",
                "endpoint": f"tcp://*:{self.kv_events_port}", "topic": KV_EVENT_TOPIC})]
        return cmd

    def environment(self) -> dict[str, str]:
        env = super().environment()
        env["HARNESS_REPLICA"] = self.replica
        # Each replica compiles its kernels into its own folder: two replicas compiling into torch
        # inductor's shared default folder at once produced C++ compile errors (measured here), and
        # the replica's engine died on its first request.
        env["TORCHINDUCTOR_CACHE_DIR"] = str(Path(".cache").resolve() / "inductor" / f"fleet-{self.replica}")
        if self.ledger is not None:
            env["HARNESS_REPLICA_LEDGER"] = str(self.ledger)
        if self.die_at is not None:
            env["HARNESS_REPLICA_DIE_AT"] = str(self.die_at)
        return env

    def events(self) -> list[Event]:
        """As the embedded server's, but a death this replica was told to die is the harness's doing."""
        out = super().events()
        if self.die_at is None:
            return out
        return [replace(e, caused_by_harness=True,
                        message=f"replica {self.replica} killed itself at its request {self.die_at} (the "
                                f"replica-failure nemesis); {e.message}")
                if isinstance(e, Incident) and e.what == "server-died" else e for e in out]


__all__ = ["DEFAULT_POLICY", "DEFAULT_REPLICAS", "POLICIES", "FleetStack", "RouterProcess"]
