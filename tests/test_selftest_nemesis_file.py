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


def test_a_fault_that_needs_a_server_without_adapters_gets_one_or_is_not_judged() -> None:
    """crash-combo meets the LoRA server's own engine crash first; it runs on a server launched
    without adapters, and under adapter-churn (which needs them) its cell is not judged."""
    from argparse import Namespace

    from rich.console import Console

    from harness.faults import all_faults, get
    from harness.frontends.commands.selftest import row_server
    from harness.frontends.selftest_nemesis import _cell_without_adapters
    from harness.nemesis.runner import embedded_adapters
    from harness.stacks.vllm import EmbeddedServer

    assert [f.name for f in all_faults() if f.without_adapters] == ["crash-combo"]
    quiet = Console(quiet=True)
    cell = _cell_without_adapters(Namespace(), "crash-combo", "adapter-churn", quiet)
    assert cell["applicable"] is False and cell["good"] is True and "adapter-churn needs" in cell["reason"]
    # not launched by the selftest (a --target), or a fault fine with adapters: the shared target
    for fault, launched in (("crash-combo", False), ("swap", True)):
        with row_server(fault, launched, "http://t", quiet) as url:
            assert url == "http://t"
    assert get("swap").without_adapters == ""
    assert embedded_adapters(EmbeddedServer(lora=False, model_dir="/nonexistent")) == {}
