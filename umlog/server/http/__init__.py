"""The HTTP door: ``door`` (the aiohttp application, connection accounting,
``/healthz``, ``/readyz``), ``rest`` (Confluent REST Proxy v2), ``stream``
(Server-Sent Events and WebSocket), ``metrics`` (Prometheus), ``records`` (a
record as JSON), ``settings`` (the ``[http]`` table). Names are imported on
first use, so reading the settings does not load aiohttp."""

from __future__ import annotations

__all__ = ["HttpDoor"]


def __getattr__(name: str):
    if name == "HttpDoor":
        from .door import HttpDoor

        return HttpDoor
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
