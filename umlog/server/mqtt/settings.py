"""The MQTT door's settings (the ``[mqtt]`` table and its flags); a light module
(``umlog serve --help`` reads it without importing the protocol code)."""

from __future__ import annotations

from ..settings import Setting

__all__ = ["MQTT_SETTINGS", "DEFAULT_MQTT_TOPIC"]

DEFAULT_MQTT_TOPIC = "mqtt-messages"

MQTT_SETTINGS: tuple[Setting, ...] = (
    Setting("mqtt", "listen", "hostport", None,
            "MQTT 3.1.1/5.0 listener, HOST:PORT (usually port 1883) [default: off].", flag="--mqtt"),
    Setting("mqtt", "topic", "str", DEFAULT_MQTT_TOPIC,
            "Log topic every PUBLISH is appended to (key = MQTT topic name, value = payload).",
            flag="--mqtt-topic"),
    Setting("mqtt", "max_packet_size", "int", 16 * 1024 * 1024,
            "Largest MQTT packet accepted, in bytes (a larger one closes that connection).",
            flag="--mqtt-max-packet-size", min=64, max=268_435_460),
    Setting("mqtt", "connect_timeout_ms", "int", 10_000,
            "A connection that sends no CONNECT within this time is closed.",
            flag="--mqtt-connect-timeout-ms", min=100, max=3_600_000),
)
