"""The embedded vLLM server started with one mutant applied (or none: the baseline).

The mutation is applied by `boot/sitecustomize.py`, put first on the server's PYTHONPATH, so every
Python process of the server (the API server, the engine core and its workers, spawned or forked)
loads it; the installed vLLM package is never edited. Each process writes its proof of work into
`hits_dir` (`harness.mutants.hits` reads it). The folder is emptied at the first start only: a server
the harness restarts mid-run (a cold solo reference, a nemesis) adds its new processes' files, so
the proof covers the whole run.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from harness.stacks.vllm import EmbeddedServer

BOOT = Path(__file__).resolve().parent / "boot"


@dataclass
class MutatedServer(EmbeddedServer):
    """`EmbeddedServer` with `mutant` applied (None: unmutated) and `server_args` added."""

    mutant: str | None = None
    hits_dir: Path | None = None
    server_args: list[str] = field(default_factory=list)
    _prepared: bool = field(default=False, init=False, repr=False)

    def prepare(self) -> None:
        super().prepare()
        if self._prepared:  # a restart: the same arguments, and the hits of earlier lives kept
            return
        self._prepared = True
        self.extra_args = [*self.extra_args, *self.server_args]
        if self.mutant is not None:
            if self.hits_dir is None:
                raise ValueError("a mutated server needs a hits folder")
            self.hits_dir.mkdir(parents=True, exist_ok=True)
            for old in self.hits_dir.glob("*.txt"):
                old.unlink()

    def environment(self) -> dict[str, str]:
        env = super().environment()
        if self.mutant is not None:
            assert self.hits_dir is not None
            env["PYTHONPATH"] = os.pathsep.join(p for p in (str(BOOT), env.get("PYTHONPATH", "")) if p)
            env["HARNESS_MUTANT"] = self.mutant
            env["HARNESS_MUTANT_HITS"] = str(self.hits_dir.resolve())
        return env
