"""The MQTT door's settings (the ``[mqtt]`` table, its flags and ``[[mqtt.route]]``);
a light module (``umlog serve --help`` reads it without importing the protocol code)."""

from __future__ import annotations

import re
from typing import Any

from ..security.settings import MQTT_SCHEMES, tls_settings
from ..settings import ArrayOfTables, Setting, SettingsError

__all__ = ["MQTT_SETTINGS", "MQTT_ROUTE_SETTINGS", "DEFAULT_MQTT_TOPIC", "SESSIONS_TOPIC", "RETAINED_TOPIC"]

DEFAULT_MQTT_TOPIC = "mqtt-messages"
RETAINED_TOPIC = "mqtt-retained"
SESSIONS_TOPIC = "mqtt-sessions"
_TOPIC_NAME = re.compile(r"[A-Za-z0-9._-]{1,249}")


def _check_route(entry: dict[str, Any], where: str) -> dict[str, Any]:
    from .codec import MQTTError, check_topic_filter, parse_shared

    try:
        share, _ = parse_shared(entry["filter"])
        if share is not None:
            raise MQTTError("a route's filter cannot be a shared subscription")
        check_topic_filter(entry["filter"])
    except MQTTError as e:
        raise SettingsError(f"{where}: mqtt.route.filter: {e}") from None
    t = entry["topic"]
    if not _TOPIC_NAME.fullmatch(t) or t in (".", "..") or t.startswith("__"):
        raise SettingsError(f"{where}: mqtt.route.topic {t!r} is not a topic name for messages")
    if t in (RETAINED_TOPIC, SESSIONS_TOPIC):
        raise SettingsError(f"{where}: mqtt.route.topic {t!r} is the MQTT door's own store")
    return entry


MQTT_ROUTE_SETTINGS = ArrayOfTables("mqtt.route", "Send the PUBLISHes whose topic matches a filter to another log "
                                                  "topic (README: MQTT).", (
    Setting("mqtt.route", "filter", "str", None,
            "MQTT topic filter (+ and # allowed); the first route whose filter matches wins.", required=True),
    Setting("mqtt.route", "topic", "str", None,
            "Log topic those PUBLISHes are appended to instead of [mqtt] topic (created if missing); "
            "subscribers are fed from it too.", required=True),
), check=_check_route)

MQTT_SETTINGS: tuple[Setting, ...] = (
    Setting("mqtt", "listen", "listeners", None,
            "MQTT 3.1.1/5.0 listener, HOST:PORT (usually port 1883), or a list of SCHEME://HOST:PORT with "
            "schemes mqtt, mqtts, ws, wss [default: off].", flag="--mqtt", choices=MQTT_SCHEMES),
    Setting("mqtt", "ws_listen", "hostport", None,
            "MQTT over WebSocket listener, HOST:PORT (any path, subprotocol mqtt) [default: off].",
            flag="--mqtt-ws"),
    Setting("mqtt", "topic", "str", DEFAULT_MQTT_TOPIC,
            "Log topic every PUBLISH is appended to (key = MQTT topic name, value = payload).",
            flag="--mqtt-topic"),
    Setting("mqtt", "max_packet_size", "int", 16 * 1024 * 1024,
            "Largest MQTT packet accepted, in bytes (a larger one closes that connection).",
            flag="--mqtt-max-packet-size", min=64, max=268_435_460),
    Setting("mqtt", "connect_timeout_ms", "int", 10_000,
            "A connection that sends no CONNECT within this time is closed.",
            flag="--mqtt-connect-timeout-ms", min=100, max=3_600_000),
    Setting("mqtt", "max_keep_alive", "int", 0,
            "Longest keep alive a client may use, in seconds (0: no cap). An MQTT 5 client asking for a longer "
            "one or none (0) is told this one (Server Keep Alive) and held to it; an MQTT 3.1.1 client, which "
            "cannot be told, is refused (CONNACK 0x02, as mosquitto's max_keepalive does).",
            flag="--mqtt-max-keep-alive", min=0, max=65535),
    Setting("mqtt", "receive_maximum", "int", 1024,
            "Receive Maximum told MQTT 5 clients (in CONNACK when below 65535): QoS 1 and 2 PUBLISHes a client "
            "may have unacknowledged. One with more QoS 2 ones than this awaiting PUBREL is disconnected (0x93).",
            flag="--mqtt-receive-maximum", min=1, max=65535),
    *tls_settings("mqtt"),
    *MQTT_ROUTE_SETTINGS,
)
