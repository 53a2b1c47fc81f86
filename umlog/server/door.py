"""The ``Door`` interface: one protocol front end over the hub.

``umlog serve`` loops over the registered doors (``DOORS``): each declares its
settings once (``settings``: a table named after the door, whose address key is
``listen``), is started on the hub when its ``listen`` is set, prints its
bound address in the ready line (``umlog ready kafka=... mqtt=...``), and is
drained and closed at shutdown. Doors are sibling packages
(``umlog/server/kafka/``, ...) and never import each other: what two of them
need lives in the hub.

Lifecycle, driven by ``umlog.server.runner``::

    door = Door(hub, settings.table(door.name))
    address = await door.start()   # listening; "host:port" actually bound
    ...                            # serving
    await door.drain()             # shutdown: no new connections; the hub answers held
                                   # requests and waits for in-flight ones
    await door.close()             # then the listener goes for good
"""

from __future__ import annotations

import abc
from typing import Any, ClassVar

from .settings import Setting

__all__ = ["Door", "door_classes", "all_settings"]


class Door(abc.ABC):
    """A protocol front end (see the module docstring)."""

    #: the door's name: its config table, its flag prefix, its word in the ready line
    name: ClassVar[str]
    #: every setting of the door's table; ``listen`` first (None: the door is off)
    settings: ClassVar[tuple[Setting, ...]]

    def __init__(self, hub: Any, options: dict[str, Any]) -> None:
        self.hub = hub
        self.options = options

    @classmethod
    def enabled(cls, options: dict[str, Any]) -> bool:
        return options.get("listen") is not None

    @abc.abstractmethod
    async def start(self) -> str | dict[str, str]:
        """Start listening; return the address actually bound, ``host:port``
        (a door with several listeners: ``{ready-line name: host:port}``)."""

    @abc.abstractmethod
    async def drain(self) -> None:
        """Shutdown begins: accept no new connection. Requests the hub holds (long
        polls, group joins) are answered by its ``wake_all``; a door holding
        requests of its own answers them here."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Close the listener for good (connections are closed by the hub)."""

    def listening(self) -> bool:
        """True while the door accepts connections (``/readyz`` asks every door);
        a door keeping its asyncio server in ``_server`` gets this for free."""
        server = getattr(self, "_server", None)
        return server is not None and server.is_serving()


def door_classes() -> list[type[Door]]:
    """Every door ``umlog serve`` knows, in ready-line order."""
    from .amqp import AmqpDoor
    from .http import HttpDoor
    from .kafka import KafkaDoor
    from .mqtt import MqttDoor

    return [KafkaDoor, MqttDoor, AmqpDoor, HttpDoor]


def all_settings() -> list[Setting]:
    """The server's settings and every door's, in documentation order (read
    from the doors' light settings modules: no protocol code is imported)."""
    from .amqp.settings import AMQP_SETTINGS
    from .http.settings import HTTP_SETTINGS
    from .kafka.settings import KAFKA_SETTINGS
    from .mirrors import MIRROR_SETTINGS
    from .mqtt.settings import MQTT_SETTINGS
    from .routes import ROUTE_SETTINGS
    from .security.settings import SECURITY_SETTINGS
    from .settings import SERVER_SETTINGS
    from .tiered import TIERED_SETTINGS
    from .webhooks import WEBHOOK_SETTINGS

    return [*SERVER_SETTINGS, *TIERED_SETTINGS, *KAFKA_SETTINGS, *MQTT_SETTINGS, *AMQP_SETTINGS, *HTTP_SETTINGS,
            *SECURITY_SETTINGS, *WEBHOOK_SETTINGS, *ROUTE_SETTINGS, *MIRROR_SETTINGS]
