"""Audits that measure rather than replay: the timing side-channel audit (`harness audit-timing`).

`harness.audit.stats` holds the statistics (pure), `harness.audit.timing` the measurement and
the verdict.
"""

from harness.audit.stats import SequentialPlan
from harness.audit.timing import AuditConfig, AuditResult, audit, run_audit

__all__ = ["AuditConfig", "AuditResult", "SequentialPlan", "audit", "run_audit"]
