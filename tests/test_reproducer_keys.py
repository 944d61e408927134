"""Reproducers read keys from the environment, each tenant's own variable where its scenario names
one, and never hold a secret."""

from __future__ import annotations

from pathlib import Path

from harness.reporters.reproducer import write_reproducer
from harness.scenario.model import Scenario
from harness.verdict import Violation
from tests.factories import history, info, op


def test_each_tenant_request_reads_its_own_key_variable(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("ACME_KEY", "sk-acme-secret")
    scenario = Scenario.model_validate({
        "name": "s", "seed": 1,
        "tenants": [{"name": "acme", "api_key_env": "ACME_KEY"}, {"name": "globex"}],
        "users": [{"name": "a", "tenant": "acme"}, {"name": "g", "tenant": "globex"}],
    })
    h = history(info("main", {"a": 0, "g": 0}), op("main", "a", [1], tenant="acme"),
                op("main", "g", [2], tenant="globex"))
    v = Violation("canary", "s", "m", ["a", "g"], ["main/s/a/0", "main/s/g/0"])
    out = write_reproducer(tmp_path, 1, v, scenario, h, "http://target")
    script = (out / "requests.sh").read_text()
    def first_curl(op_id: str) -> str:
        return script.split(f"# {op_id} ", 1)[1].split("JSON", 1)[0]

    assert '"Authorization: Bearer $ACME_KEY"' in first_curl("main/s/a/0")
    assert "HARNESS_API_KEY" not in first_curl("main/s/a/0")
    assert '"Authorization: Bearer $HARNESS_API_KEY"' in first_curl("main/s/g/0")
    assert "ACME_KEY for tenant acme" in script and "sk-acme-secret" not in script
