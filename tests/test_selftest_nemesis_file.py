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
