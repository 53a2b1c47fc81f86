"""The Kafka door's settings (the ``[kafka]`` table and its flags).

A light module: ``umlog serve --help`` builds its options from it without
importing the protocol code.
"""

from __future__ import annotations

from ..security.settings import KAFKA_SCHEMES, tls_settings
from ..settings import Setting

__all__ = ["KAFKA_SETTINGS", "DEFAULT_MAX_REQUEST_SIZE", "DEFAULT_FETCH_MAX_BYTES"]

DEFAULT_MAX_REQUEST_SIZE = 100 * 1024 * 1024
# Kafka's broker fetch.max.bytes (KIP-541): the most one Fetch response holds,
# whatever the client asks for. A response is read into memory (pread), so
# this bounds what one connection can make the server hold.
DEFAULT_FETCH_MAX_BYTES = 55 * 1024 * 1024

_INT31 = 2**31 - 1

KAFKA_SETTINGS: tuple[Setting, ...] = (
    Setting("kafka", "listen", "listeners", "127.0.0.1:9092",
            "Kafka listener, HOST:PORT (port 0 picks a free one), or a list of SCHEME://HOST:PORT with schemes "
            "PLAINTEXT, SSL, SASL_PLAINTEXT, SASL_SSL (README: Security).", flag="--kafka", choices=KAFKA_SCHEMES),
    Setting("kafka", "advertise", "hostport", None,
            "Address given to clients in Metadata [default: the listener's].", flag="--advertise"),
    Setting("kafka", "auto_create", "bool", True, "Create unknown topics on Metadata requests.",
            flag="--auto-create/--no-auto-create"),
    Setting("kafka", "default_partitions", "int", 1, "Partitions of auto-created topics.",
            flag="--default-partitions", min=1, max=100_000),
    Setting("kafka", "max_request_size", "int", DEFAULT_MAX_REQUEST_SIZE, "Largest request frame in bytes.",
            flag="--max-request-size", min=1024, max=_INT31),
    Setting("kafka", "fetch_max_bytes", "int", DEFAULT_FETCH_MAX_BYTES,
            "Most bytes one Fetch answer holds, whatever the client asks (Kafka's fetch.max.bytes).",
            flag="--fetch-max-bytes", min=1024, max=_INT31),
    *tls_settings("kafka"),
)
