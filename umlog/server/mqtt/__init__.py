"""The MQTT door (MQTT 3.1.1 and 5.0): ``codec`` is its sans-I/O packet codec,
``door`` the door and its fan-out, ``protocol`` one connection, ``session``
sessions that outlive connections, ``shared`` shared subscriptions, ``ws``
MQTT over WebSocket, ``settings`` the ``[mqtt]`` table. Names are imported on
first use, so reading the settings does not load the protocol code."""

from __future__ import annotations

__all__ = ["MqttDoor"]


def __getattr__(name: str):
    if name == "MqttDoor":
        from .door import MqttDoor

        return MqttDoor
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
