"""Serving a scripted aiohttp application on a loopback port, for the tests' fake servers."""

from __future__ import annotations

from aiohttp import web

from harness.stacks.vllm import free_port


async def serve_app(app: web.Application) -> tuple[web.AppRunner, str]:
    """Start `app` on a free loopback port; (its runner, to clean up, and its base URL)."""
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return runner, f"http://127.0.0.1:{port}"
