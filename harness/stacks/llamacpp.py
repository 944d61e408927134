"""A second serving stack: llama.cpp (through `llama-cpp-python`'s OpenAI-compatible server).

Two jobs, both with the guarantees of every launched stack (`harness.stacks.process`):

- `build_gguf()` converts the project's embedded model (`embedded_model.build()`) to a float32
  GGUF file once, with the conversion script that ships inside the `llama-cpp-python` source
  distribution (vendor/llama.cpp/convert_hf_to_gguf.py). The script does not recognise our
  locally trained tokenizer; its pre-tokenizer is Hugging Face's ByteLevel with the GPT-2 split
  regex, which is exactly llama.cpp's "gpt-2" pre-tokenizer, so that is the choice we give the
  script when (and only when) it cannot decide itself. The result is keyed by the model folder's
  name (which carries the recipe digest), so a changed recipe converts again.
- `LlamaCppServer` starts `python -m llama_cpp.server` on a free loopback port (an
  `OwnedProcess`: its own process group under the watchdog, a log file, `LaunchError` quoting the
  log tail, the whole group killed on stop), healthy once `GET /v1/models` answers.

What this stack offers the harness (measured, see docs/llamacpp.md): completions and chat,
streaming, logprobs keyed by token *text* (no token ids), `/extras/tokenize`, a single-sequence
KV prefix reuse (the longest common prefix with the previous request), no cached-token counts,
no cache salt, no cache reset, no /metrics, no adapters. Requests are served one at a time.
"""

from __future__ import annotations

import importlib
import subprocess
import sys
import tarfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

from harness.stacks.process import LaunchError, OwnedProcess, tail

LLAMA_CPP_VERSION = "0.3.36"
SERVED_MODEL_NAME = "tiny-llama"
DEFAULT_STARTUP_TIMEOUT_S = 300.0
CONVERT_TIMEOUT_S = 900.0
DOWNLOAD_TIMEOUT_S = 900.0
_SDIST = f"llama_cpp_python-{LLAMA_CPP_VERSION}"
# The conversion script, its model classes and the gguf writer: all that is taken from the sdist.
_CONVERTER_PARTS = ("convert_hf_to_gguf.py", "conversion/", "gguf-py/")

# Run in a subprocess: the vendored converter on sys.path, its pre-tokenizer detection kept,
# and "gpt-2" only where it gives up (see the module docstring for why that is the right one).
_CONVERT_DRIVER = r"""
import runpy, sys
src = sys.argv[1]
sys.path[:0] = [src, src + "/gguf-py"]
from conversion import base
_detect = base.TextModel.get_vocab_base_pre
def _pre(self, tokenizer):
    try:
        return _detect(self, tokenizer)
    except NotImplementedError:
        print("harness: pre-tokenizer not recognised; using 'gpt-2' (ByteLevel + GPT-2 regex)", file=sys.stderr)
        return "gpt-2"
base.TextModel.get_vocab_base_pre = _pre
sys.argv = ["convert_hf_to_gguf.py"] + sys.argv[2:]
runpy.run_path(src + "/convert_hf_to_gguf.py", run_name="__main__")
"""


def default_cache_dir() -> Path:
    return Path(__file__).resolve().parents[2] / ".cache" / "llamacpp"


def llama_cpp_available() -> tuple[bool, str]:
    """(True, version) when `llama_cpp` imports in this interpreter, else (False, why)."""
    try:
        llama_cpp = importlib.import_module("llama_cpp")  # optional: only the llama-cpp stack needs it
    except Exception as exc:  # any import failure means "not usable here"
        return False, f"llama_cpp is not importable ({type(exc).__name__}: {exc}); install it with `make llama-cpp`"
    return True, str(getattr(llama_cpp, "__version__", "?"))


def converter_dir(cache_dir: Path | None = None) -> Path:
    """Where the vendored llama.cpp conversion script lives once unpacked."""
    return (cache_dir or default_cache_dir()) / _SDIST / "vendor" / "llama.cpp"


def ensure_converter(cache_dir: Path | None = None, python: str = sys.executable) -> Path:
    """Unpack the conversion script from the llama-cpp-python sdist (downloading it if absent)."""
    cache = cache_dir or default_cache_dir()
    out = converter_dir(cache)
    if (out / "convert_hf_to_gguf.py").is_file() and (out / "gguf-py").is_dir() and (out / "conversion").is_dir():
        return out
    cache.mkdir(parents=True, exist_ok=True)
    archive = cache / f"{_SDIST}.tar.gz"
    if not archive.is_file():
        cmd = [python, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
               f"llama-cpp-python=={LLAMA_CPP_VERSION}", "-d", str(cache)]
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=DOWNLOAD_TIMEOUT_S)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise LaunchError(f"cannot download the llama-cpp-python sdist: {exc}") from exc
        if done.returncode != 0 or not archive.is_file():
            output = (done.stdout + done.stderr)[-2000:]
            raise LaunchError(f"`{' '.join(cmd)}` failed (exit {done.returncode}):\n{output}")
    prefix = f"{_SDIST}/vendor/llama.cpp/"
    with tarfile.open(archive) as tar:
        members = [m for m in tar.getmembers()
                   if m.name.startswith(prefix) and m.name[len(prefix):].startswith(_CONVERTER_PARTS)]
        if not members:
            raise LaunchError(f"{archive} holds no {prefix}convert_hf_to_gguf.py")
        tar.extractall(cache, members=members, filter="data")
    return out


def gguf_path_for(model_dir: Path, cache_dir: Path | None = None) -> Path:
    return (cache_dir or default_cache_dir()) / "gguf" / f"{Path(model_dir).name}-f32.gguf"


def build_gguf(model_dir: Path | None = None, cache_dir: Path | None = None, force: bool = False,
               python: str = sys.executable) -> Path:
    """Convert the embedded model to a float32 GGUF once; return its path (a no-op when present)."""
    if model_dir is None:
        from harness.testmodel.embedded_model import build

        model_dir = build()
    model_dir = Path(model_dir)
    if not (model_dir / "config.json").is_file():
        raise LaunchError(f"not a model folder (no config.json): {model_dir}")
    out = gguf_path_for(model_dir, cache_dir)
    if out.is_file() and not force:
        return out
    src = ensure_converter(cache_dir, python)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    log = out.with_name(out.name + ".convert.log")
    tmp.unlink(missing_ok=True)
    cmd = [python, "-c", _CONVERT_DRIVER, str(src), str(model_dir), "--outfile", str(tmp), "--outtype", "f32"]
    with open(log, "wb") as fh:
        try:
            code = subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT, timeout=CONVERT_TIMEOUT_S).returncode
        except subprocess.TimeoutExpired:
            code = None
    if code != 0 or not tmp.is_file():
        tmp.unlink(missing_ok=True)
        what = "timed out" if code is None else f"exited with code {code}"
        raise LaunchError(f"GGUF conversion of {model_dir} {what}; log {log}:\n{tail(log)}")
    tmp.replace(out)
    return out


@dataclass
class LlamaCppServer(OwnedProcess):
    """llama-cpp-python's server on the GGUF of the embedded model; a context manager like EmbeddedServer."""

    NAME: ClassVar[str] = "llama.cpp server"
    LOG_STEM: ClassVar[str] = "llamacpp"
    HEALTH_PATH: ClassVar[str] = "/v1/models"  # llama-cpp-python has no /health

    model_dir: Path | None = None
    gguf: Path | None = None
    n_ctx: int = 2048
    # llama-cpp-python cuts a running *stream* short (sends [DONE] early) whenever another
    # request is waiting (default True in 0.3.36): one tenant's request truncates another's
    # answer, a finding the harness reports (docs/llamacpp.md). None keeps the server's default;
    # False turns the feature off, so that the cache paths can be tested on their own.
    interrupt_requests: bool | None = None
    startup_timeout_s: float = DEFAULT_STARTUP_TIMEOUT_S
    extra_args: list[str] = field(default_factory=list)
    python: str = sys.executable
    gguf_build_s: float | None = field(default=None, init=False)

    def prepare(self) -> None:
        ok, why = llama_cpp_available() if self.python == sys.executable else (True, "")
        if not ok:
            raise LaunchError(why)
        if self.gguf is None:
            t0 = time.monotonic()
            self.gguf = build_gguf(self.model_dir, python=self.python)
            self.gguf_build_s = time.monotonic() - t0
        if not Path(self.gguf).is_file():
            raise LaunchError(f"GGUF file does not exist: {self.gguf}")

    def command(self) -> list[str]:
        assert self.gguf is not None and self.port is not None
        return [
            self.python, "-m", "llama_cpp.server",
            "--model", str(self.gguf),
            "--model_alias", SERVED_MODEL_NAME,
            "--host", self.host, "--port", str(self.port),
            "--n_ctx", str(self.n_ctx),
            *([] if self.interrupt_requests is None else ["--interrupt_requests", str(self.interrupt_requests)]),
            *self.extra_args,
        ]


def main(argv: list[str] | None = None) -> int:
    """`python -m harness.stacks.llamacpp`: build the GGUF (idempotent) and print its path."""
    import argparse

    parser = argparse.ArgumentParser(description="Convert the embedded model to GGUF for llama.cpp (idempotent).")
    parser.add_argument("--model-dir", type=Path, default=None)
    parser.add_argument("--force", action="store_true")
    args = parser.parse_args(argv)
    try:
        print(build_gguf(args.model_dir, force=args.force))
    except LaunchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
