"""Consumer groups: committed offsets (``offsets``), the embedded consumer
(``consumer``) and the Kafka group protocol's coordinator (``coordinator``).

This layer sits above the engine (``umlog.broker``) and below the front doors;
it knows nothing of bytes on a wire or sockets.
"""

from .consumer import Consumer
from .offsets import OFFSETS_TOPIC, Group, OffsetAndMetadata, OffsetStore

__all__ = ["Group", "Consumer", "OffsetStore", "OffsetAndMetadata", "OFFSETS_TOPIC"]
