"""The Kafka door: the Kafka wire protocol in front of the engine.

``KafkaDoor`` holds the shared state, ``KafkaProtocol`` one connection, and
``handlers/`` one module per API. ``start_kafka`` binds a listening socket.
"""

from __future__ import annotations

import asyncio

from .door import KafkaDoor
from .protocol import KafkaProtocol

__all__ = ["KafkaDoor", "KafkaProtocol", "start_kafka"]


async def start_kafka(door: KafkaDoor, host: str, port: int, **kw) -> asyncio.base_events.Server:
    """Listen on host:port (port 0: a free one); returns the asyncio Server."""
    loop = asyncio.get_running_loop()
    return await loop.create_server(lambda: KafkaProtocol(door), host, port, reuse_address=True, **kw)
