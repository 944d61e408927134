"""The embedded default stack: vLLM with prefix caching on the tiny local model.

The server runs with prefix caching, cached-token details, the cache reset endpoint, block size
32 and both LoRA adapters, on a loopback port; the launch, health wait, log, whole-group stop and
the watchdog that kills it with the harness are `stacks.process.OwnedProcess`'s.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

from harness.stacks.process import LaunchError, OwnedProcess, free_port, port_in_use, tail

SERVED_MODEL_NAME = "tiny-llama"
DEFAULT_STARTUP_TIMEOUT_S = 600.0


@dataclass
class EmbeddedServer(OwnedProcess):
    """The embedded vLLM server; use as a context manager or call start()/stop()."""

    NAME: ClassVar[str] = "embedded vLLM"
    LOG_STEM: ClassVar[str] = "vllm"
    HEALTH_PATH: ClassVar[str] = "/health"  # answers 200 once the model is loaded

    model_dir: Path | None = None
    startup_timeout_s: float = DEFAULT_STARTUP_TIMEOUT_S
    extra_args: list[str] = field(default_factory=list)
    """More server options, after (and so overriding) the defaults above: e.g. the small KV cache of
    the memory-pressure nemesis (`harness.nemesis.memory_pressure.SERVER_ARGS`)."""
    extra_env: dict[str, str] = field(default_factory=dict)
    """More environment for the server, e.g. `VLLM_ALLOW_RUNTIME_LORA_UPDATING` for adapter churn."""
    python: str = sys.executable
    lora: bool = True
    """Serve the model's LoRA adapters (`--enable-lora`). Off, the server takes no adapter path at
    all: the engine crash of findings/vllm-cpu-prompt-logprobs-lora-crash.md needs it on."""

    def prepare(self) -> None:
        if self.model_dir is None:
            from harness.testmodel.embedded_model import build

            self.model_dir = build()
        if not Path(self.model_dir).is_dir():
            raise LaunchError(f"model folder does not exist: {self.model_dir}")

    def command(self) -> list[str]:
        from harness.testmodel.embedded_model import adapter_dirs

        assert self.model_dir is not None and self.port is not None
        adapters = [f"{name}={path}" for name, path in adapter_dirs(Path(self.model_dir)).items()]
        return [
            self.python, "-m", "vllm.entrypoints.openai.api_server",
            "--model", str(self.model_dir),
            "--served-model-name", SERVED_MODEL_NAME,
            "--host", self.host, "--port", str(self.port),
            "--dtype", "float32",
            "--max-model-len", "2048",
            "--enable-prefix-caching",
            "--enable-prompt-tokens-details",
            "--block-size", "32",
            "--gpu-memory-utilization", "0.3",
            "--kv-cache-memory-bytes", str(1 << 30),
            *(("--enable-lora", "--max-lora-rank", "8", "--max-loras", "2", "--lora-modules", *adapters)
              if self.lora else ()),
            *self.extra_args,
        ]

    def environment(self) -> dict[str, str]:
        env = dict(os.environ, VLLM_SERVER_DEV_MODE="1", PYTHONUNBUFFERED="1")
        env.setdefault("VLLM_LOGGING_LEVEL", "INFO")
        env.update(self.extra_env)
        return env


__all__ = ["DEFAULT_STARTUP_TIMEOUT_S", "SERVED_MODEL_NAME", "EmbeddedServer", "LaunchError", "free_port",
           "port_in_use", "tail"]
