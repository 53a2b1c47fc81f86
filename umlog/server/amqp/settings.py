"""The AMQP door's settings (the ``[amqp]`` table and its flags); a light module
(``umlog serve --help`` reads it without importing the protocol code)."""

from __future__ import annotations

from ..settings import Setting

__all__ = ["AMQP_SETTINGS", "DEFAULT_EXCHANGE_TOPIC"]

#: the log topic of the default exchange ("")
DEFAULT_EXCHANGE_TOPIC = "amq.default"

AMQP_SETTINGS: tuple[Setting, ...] = (
    Setting("amqp", "listen", "hostport", None,
            "AMQP 0-9-1 listener (RabbitMQ clients), HOST:PORT (usually port 5672) [default: off].", flag="--amqp"),
    Setting("amqp", "heartbeat_s", "int", 60,
            "Heartbeat interval the server proposes in connection.tune, seconds; 0 none (the client may lower it).",
            flag="--amqp-heartbeat-s", min=0, max=65_535),
    Setting("amqp", "frame_max", "int", 131_072,
            "Largest frame the server proposes and accepts, bytes (a larger frame closes the connection).",
            flag="--amqp-frame-max", min=4096, max=2**31 - 1),
    Setting("amqp", "channel_max", "int", 2047,
            "Channels per connection the server proposes in connection.tune.",
            flag="--amqp-channel-max", min=1, max=65_535),
    Setting("amqp", "max_message_size", "int", 128 * 1024 * 1024,
            "Largest message body accepted, bytes (a larger one closes the channel with 406, as RabbitMQ).",
            flag="--amqp-max-message-size", min=1, max=512 * 1024 * 1024),
    Setting("amqp", "disk_free_limit_mb", "int", 50,
            "Below this much free space in the data dir, publishing connections are blocked "
            "(connection.blocked) until it is back; 0 never.",
            flag="--amqp-disk-free-limit-mb", min=0, max=2**31 - 1),
)
