"""Multi-tenant isolation test harness for LLM serving stacks with prefix caching."""

__version__ = "0.1.0"
