"""nginx as an authenticating gateway in front of a target, for tests (`make gateway` installs it).

`Gateway(upstream, tenants=..., operator_key=..., upstream_key=...)` writes an nginx
configuration and the policy script (`tenant_gateway.js`) with the keys into a folder of its own,
runs nginx in the foreground in its own process group, and stops it on exit. The gateway:
- answers 401 to a request without a known key;
- lets tenants' keys reach /v1/ only (403 elsewhere: metrics and cache reset are the operator's);
- sets each tenant's `cache_salt` in the JSON body (see tenant_gateway.js);
- replaces the key with the upstream's own (`upstream_key`) and streams responses unbuffered;
- optionally terminates TLS (`tls=(cert, key)`), and requires a client certificate signed by
  `client_ca` when given.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from urllib.parse import urlsplit

from harness.stacks.process import free_port
from tests.procs import wait_for

NGINX = Path("/usr/sbin/nginx")
JS_MODULE = Path("/usr/lib/nginx/modules/ngx_http_js_module.so")
POLICY = Path(__file__).with_name("tenant_gateway.js")


def available() -> bool:
    """nginx and its JavaScript module are installed (`make gateway`)."""
    return NGINX.is_file() and JS_MODULE.is_file()


@dataclass(frozen=True)
class TenantKey:
    tenant: str
    salt: str


class Gateway:
    """One nginx gateway process; see the module docstring."""

    def __init__(self, upstream: str, folder: Path, *, tenants: dict[str, TenantKey], operator_key: str,
                 upstream_key: str | None = None, tls: tuple[Path, Path] | None = None,
                 client_ca: Path | None = None) -> None:
        self.upstream, self.folder = upstream.rstrip("/"), Path(folder)
        self.tenants, self.operator_key, self.upstream_key = tenants, operator_key, upstream_key
        self.tls, self.client_ca = tls, client_ca
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://{'localhost' if self.tls else '127.0.0.1'}:{self.port}"

    def _keys(self) -> str:
        keys: dict[str, dict[str, object]] = {k: {"tenant": t.tenant, "salt": t.salt} for k, t in self.tenants.items()}
        keys[self.operator_key] = {"operator": True}
        return f"var KEYS = {json.dumps(keys)};\n\n"

    def _config(self) -> str:
        d = self.folder
        up = urlsplit(self.upstream)
        auth = f'proxy_set_header Authorization "Bearer {self.upstream_key}";' if self.upstream_key else \
            "proxy_set_header Authorization \"\";"
        ssl = ""
        if self.tls:
            cert, key = self.tls
            ssl = f"ssl_certificate {cert};\n        ssl_certificate_key {key};"
            if self.client_ca:
                ssl += f"\n        ssl_client_certificate {self.client_ca};\n        ssl_verify_client on;"
        proxy = f"""
            proxy_pass {up.scheme}://{up.netloc};
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            {auth}
            proxy_set_body $gateway_body;
            proxy_buffering off;
            proxy_request_buffering on;
            proxy_read_timeout 600s;"""
        return f"""load_module {JS_MODULE};
worker_processes 1;
error_log {d}/error.log info;
pid {d}/nginx.pid;
events {{ worker_connections 1024; }}
http {{
    access_log {d}/access.log;
    client_body_temp_path {d}/tmp-body;
    proxy_temp_path {d}/tmp-proxy;
    fastcgi_temp_path {d}/tmp-fastcgi;
    uwsgi_temp_path {d}/tmp-uwsgi;
    scgi_temp_path {d}/tmp-scgi;
    client_body_buffer_size 8m;
    client_max_body_size 8m;
    js_path {d};
    js_import gw from gateway.js;
    js_set $gateway_identity gw.identity;
    js_set $gateway_operator gw.operator;
    js_set $gateway_body gw.body;
    server {{
        listen 127.0.0.1:{self.port}{' ssl' if self.tls else ''};
        {ssl}
        location /v1/ {{
            if ($gateway_identity = "") {{ return 401 '{{"error": "invalid or missing API key"}}'; }}{proxy}
        }}
        location / {{
            if ($gateway_identity = "") {{ return 401 '{{"error": "invalid or missing API key"}}'; }}
            if ($gateway_operator = "") {{ return 403 '{{"error": "operator only"}}'; }}{proxy}
        }}
    }}
}}
"""

    def start(self) -> str:
        self.folder.mkdir(parents=True, exist_ok=True)
        (self.folder / "gateway.js").write_text(self._keys() + POLICY.read_text())
        (self.folder / "nginx.conf").write_text(self._config())
        log = open(self.folder / "stderr.log", "wb")  # noqa: SIM115  (nginx holds it while it runs)
        self.proc = subprocess.Popen([str(NGINX), "-p", str(self.folder), "-c", str(self.folder / "nginx.conf"),
                                      "-g", "daemon off;"], stdout=log, stderr=log, start_new_session=True)
        log.close()
        if not wait_for(lambda: self.proc is None or self.proc.poll() is not None or _listening(self.port), 30):
            self.stop()
            raise RuntimeError(f"nginx did not listen on {self.port}: {self.log_tail()}")
        if self.proc.poll() is not None:
            raise RuntimeError(f"nginx exited with {self.proc.returncode}: {self.log_tail()}")
        return self.url

    def log_tail(self) -> str:
        parts = [(self.folder / name).read_text(errors="replace")[-2000:] for name in ("stderr.log", "error.log")
                 if (self.folder / name).is_file()]
        return "\n".join(parts)

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)

    def __enter__(self) -> Gateway:
        self.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()


def _listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False
