"""The Kafka door: the Kafka wire protocol in front of the hub and the engine.

``KafkaDoor`` is the door (its listener and shared state), ``KafkaProtocol``
one connection, ``handlers/`` one module per API, ``settings`` the ``[kafka]``
table. Names are imported on first use, so reading the settings (``umlog serve
--help``) does not load the protocol code.
"""

from __future__ import annotations

__all__ = ["KafkaDoor", "KafkaProtocol"]


def __getattr__(name: str):
    if name == "KafkaDoor":
        from .door import KafkaDoor

        return KafkaDoor
    if name == "KafkaProtocol":
        from .protocol import KafkaProtocol

        return KafkaProtocol
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
