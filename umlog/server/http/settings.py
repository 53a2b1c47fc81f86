"""The HTTP door's settings (the ``[http]`` table and its flags); a light module
(``umlog serve --help`` reads it without importing aiohttp)."""

from __future__ import annotations

from ..security.settings import HTTP_SCHEMES, tls_settings
from ..settings import Setting

__all__ = ["HTTP_SETTINGS", "DEFAULT_HTTP_LISTEN"]

DEFAULT_HTTP_LISTEN = "127.0.0.1:8080"

_INT31 = 2**31 - 1

HTTP_SETTINGS: tuple[Setting, ...] = (
    Setting("http", "listen", "listeners", DEFAULT_HTTP_LISTEN,
            "HTTP listener (REST Proxy v2 API, SSE/WebSocket streams, /metrics, /healthz), HOST:PORT, or a list "
            "of SCHEME://HOST:PORT with schemes http, https; off: no HTTP.", flag="--http", off=True,
            choices=HTTP_SCHEMES),
    Setting("http", "max_body_bytes", "int", 16 * 1024 * 1024,
            "Largest request body in bytes (a larger one is answered 413).",
            flag="--http-max-body-bytes", min=1024, max=_INT31),
    Setting("http", "stream_buffer_bytes", "int", 4 * 1024 * 1024,
            "An SSE or WebSocket client whose unsent bytes pass this is disconnected (a slow reader "
            "never holds the log back).", flag="--http-stream-buffer-bytes", min=4096, max=_INT31),
    Setting("http", "heartbeat_ms", "int", 15_000,
            "A comment line (SSE) or ping (WebSocket) on an idle stream this often.",
            flag="--http-heartbeat-ms", min=100, max=3_600_000),
    Setting("http", "consumer_instance_timeout_ms", "int", 300_000,
            "A REST consumer instance unused this long is deleted (REST Proxy's consumer.instance.timeout.ms).",
            flag="--http-consumer-instance-timeout-ms", min=1000, max=_INT31),
    *tls_settings("http"),
)
