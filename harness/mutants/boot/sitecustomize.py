"""Loaded by every Python process of a mutated server (this folder is first on its PYTHONPATH).

With HARNESS_MUTANT set it installs that mutant's patches (`harness.mutants.patches.install`);
otherwise it does nothing. A failure here must not pass silently: it is written to the hits folder
as a missing-symbol record, and the harness then reports the mutant n/a with that reason.
"""

import os

if os.environ.get("HARNESS_MUTANT"):
    try:
        from harness.mutants.patches import install

        install(os.environ["HARNESS_MUTANT"], os.environ.get("HARNESS_MUTANT_HITS", ""))
    except Exception as exc:  # reported, never swallowed: see the docstring
        folder = os.environ.get("HARNESS_MUTANT_HITS", "")
        if folder:
            with open(os.path.join(folder, f"missing-{os.getpid()}.txt"), "a") as fh:
                fh.write(f"the patch loader failed: {type(exc).__name__}: {exc}\n")
