"""Clients for the MQTT door tests: a paho client that records what it gets, and
a raw socket client speaking the door's own codec (for precise control)."""

from __future__ import annotations

import socket
import threading
import uuid

import paho.mqtt.client as mqtt
from helpers import scaled, stop_paho, wait_until
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from umlog.server.mqtt.codec import Connect, PacketReader, encode


class Paho:
    """A paho client, connected and looping; ``messages`` in arrival order.

    ``session``: None is a clean session; a number is a persistent one (3.1.1:
    clean session 0; 5: clean start 0 and this session expiry interval)."""

    def __init__(self, address, protocol=mqtt.MQTTv311, client_id=None, session=None, clean_start=None,
                 transport="tcp", ws_path="/mqtt"):
        self.client_id = client_id or uuid.uuid4().hex[:12]
        persistent = session is not None
        v5 = protocol == mqtt.MQTTv5
        self.c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=self.client_id, protocol=protocol,
                             clean_session=None if v5 else not persistent, transport=transport)
        if transport == "websockets":
            self.c.ws_set_options(path=ws_path)
        self.messages: list = []
        self.lock = threading.Lock()
        self.subscribed: list = []
        self.connacks: list = []
        self.c.on_message = lambda c, u, m: self.messages.append(m)
        self.c.on_subscribe = lambda c, u, mid, reasons, props: self.subscribed.append(reasons)
        self.c.on_connect = lambda c, u, flags, reason, props: self.connacks.append((flags.session_present, reason))
        self.disconnects: list = []
        self.c.on_disconnect = lambda c, u, flags, reason, props: self.disconnects.append(reason)
        kw = {}
        if v5:
            props = Properties(PacketTypes.CONNECT)
            if persistent:
                props.SessionExpiryInterval = session
            kw = {"clean_start": (not persistent) if clean_start is None else clean_start, "properties": props}
        self.c.connect(address[0], address[1], keepalive=30, **kw)
        self.c.loop_start()
        wait_until(lambda: self.connacks, scaled(10), "paho CONNACK")
        wait_until(self.c.is_connected, scaled(10), "paho connected")

    @property
    def session_present(self) -> bool:
        return bool(self.connacks[-1][0])

    def subscribe(self, *subs):
        n = len(self.subscribed)
        self.c.subscribe(list(subs))
        wait_until(lambda: len(self.subscribed) > n, scaled(10), "SUBACK")
        return self.subscribed[-1]

    def publish(self, topic, payload, qos=1, **kw):
        self.c.publish(topic, payload, qos, **kw).wait_for_publish(scaled(10))

    def wait(self, n, what="messages"):
        wait_until(lambda: len(self.messages) >= n, scaled(20), what)
        return self.messages

    def close(self):
        self.c.disconnect()
        stop_paho(self.c)


class Raw:
    """A socket speaking the codec: ``send(packet)``, ``next()`` the next packet."""

    def __init__(self, address, client_id, version=4, clean_start=True, properties=None, keep_alive=60,
                 will=None):
        self.version = version
        self.s = socket.create_connection(address)
        self.s.settimeout(scaled(10))
        self.reader = PacketReader(version=version)
        self.got: list = []
        self.send(Connect(client_id, version=version, clean_start=clean_start, keep_alive=keep_alive,
                          properties=properties, will=will))
        self.connack = self.next()

    def send(self, p) -> None:
        self.s.sendall(encode(p, self.version))

    def next(self):
        while not self.got:
            data = self.s.recv(65536)
            if not data:
                raise ConnectionError("closed by the server")
            self.reader.feed(data)
            self.got += list(self.reader.packets())
        return self.got.pop(0)

    def disconnect(self) -> None:
        """DISCONNECT, then wait for the server to close: it has ended the connection."""
        from umlog.server.mqtt.codec import Disconnect

        self.send(Disconnect())
        while self.s.recv(65536):
            pass
        self.s.close()

    def close(self) -> None:
        self.s.close()
