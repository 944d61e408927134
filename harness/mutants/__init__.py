"""Mutants inside the real server: named changes to vLLM's own cache, adapter and output code,
applied at server start, and the kill matrix that shows which checks see each one.

Light on purpose: the server's processes import `harness.mutants.patches` at start-up (through
`boot/sitecustomize.py`), so nothing here may import vLLM or the rest of the harness.
"""
