"""``umlog serve``: one asyncio loop, one hub, several doors.

::

    doors     kafka/ (today; MQTT, HTTP, AMQP are siblings)   protocol only, never import each other
    hub       hub.py: durability gate, append listeners, group coordinator,
              connection accounting, descriptor budget        what every door needs, once
    engine    umlog.Broker -> Topic -> Partition              the log itself (also the embedded API)

``runner.py`` opens the data dir, makes the hub, starts every enabled door
(``door.py``: the interface and the registry) and stops them cleanly;
``settings.py`` declares the settings once for the flags, the config file
and the docs.
"""
