"""The default scenario library, shipped inside the package (package data `harness/library`, the
repository's `scenarios/` folder) and found through `importlib.resources`, so an installed
wheel runs it from any folder."""

from __future__ import annotations

from importlib import resources
from pathlib import Path


def library_path() -> Path:
    """The folder of the default scenarios (a real folder: the package is installed unzipped)."""
    folder = resources.files("harness") / "library"
    if not isinstance(folder, Path) or not folder.is_dir():
        raise FileNotFoundError(f"the default scenario library is missing from the installed package ({folder})")
    return folder
