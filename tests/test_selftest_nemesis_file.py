"""The fault x nemesis matrix file: saved after every cell, columns of earlier runs kept, so a
matrix run one nemesis at a time (or killed part-way) ends as one file."""

from __future__ import annotations

import json
from pathlib import Path

from harness.frontends.selftest_nemesis import _earlier, _merged, _save


def test_columns_of_an_earlier_run_are_kept_and_ok_covers_them(tmp_path: Path) -> None:
    path = tmp_path / "selftest-nemesis.json"
    assert _earlier(path) == {}
    _save(path, {"cache-reset": {"swap": {"good": True}}}, ["swap"])
    earlier = _earlier(path)
    _save(path, {**earlier, "restart": {"swap": {"good": False}}}, ["swap"])
    saved = json.loads(path.read_text())
    assert saved["nemeses"] == ["cache-reset", "restart"] and saved["ok"] is False
    assert saved["cells"]["cache-reset"]["swap"]["good"] is True


def test_an_unreadable_file_is_no_earlier_run(tmp_path: Path) -> None:
    path = tmp_path / "selftest-nemesis.json"
    path.write_text("{torn")
    assert _earlier(path) == {}
    path.write_text("[1, 2]")
    assert _earlier(path) == {}


def test_a_rerun_row_replaces_its_cell_and_keeps_the_rest_of_its_column() -> None:
    earlier = {"cache-reset": {"swap": {"good": True}, "flaky": {"good": False}}}
    merged = _merged(earlier, {"cache-reset": {"flaky": {"good": True}}})
    assert merged == {"cache-reset": {"swap": {"good": True}, "flaky": {"good": True}}}
    assert earlier["cache-reset"]["flaky"] == {"good": False}  # the input is not changed


def test_faults_acting_through_the_adversary_get_a_server_without_adapters_or_are_not_judged() -> None:
    """On the LoRA server the adversary's hostile prompt_logprobs crash the engine first (a known
    finding); those faults run on a server launched without adapters, shared by their rows, and
    under adapter-churn (which needs the adapters) their cells are not judged."""
    from argparse import Namespace
    from contextlib import ExitStack

    from rich.console import Console

    from harness.faults import all_faults
    from harness.frontends.commands.selftest import LazyServer
    from harness.frontends.selftest_nemesis import _cell_without_adapters
    from harness.nemesis.runner import embedded_adapters
    from harness.stacks.vllm import EmbeddedServer

    needing = {f.name for f in all_faults() if f.without_adapters}
    assert needing == {f.name for f in all_faults() if "adversarial-tenant.yaml" in f.scenarios}
    assert {"crash-combo", "hostile-5xx", "victim-hang"} <= needing
    with ExitStack() as stack:
        plain = LazyServer(stack, Console(quiet=True), lora=False)
        cell = _cell_without_adapters(Namespace(), "crash-combo", "adapter-churn", plain)
        assert plain.server is None  # nothing launched for a cell that is not judged
    assert cell["applicable"] is False and cell["good"] is True and "adapter-churn needs" in cell["reason"]
    assert embedded_adapters(EmbeddedServer(lora=False, model_dir="/nonexistent")) == {}
