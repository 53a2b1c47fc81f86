"""The AMQP 0-9-1 door: RabbitMQ clients on the same log (``umlog serve --amqp HOST:PORT``).

The mapping
-----------
* An **exchange** ``X`` is the log topic ``X`` (the default exchange ``""``:
  ``amq.default``), made with one partition when the exchange is declared, so
  a queue fed by it is FIFO. A published message is one record of it: key =
  routing key, value = body, properties as headers (``codec.py`` lists them;
  the headers table is kept as the field-table bytes the client sent, so every
  field type comes back as it went). Any door's append to topic ``X`` is
  routed like a publish to exchange ``X`` with routing key = the record's key.
* A **queue** is a share group (``umlog.delivery.group``) over the topics of
  the exchanges it is bound to, named ``amqp:QUEUE:ID`` (ID changes when a
  queue is declared anew, so a deleted queue's state never leaks into its
  successor). Its **bindings are its filter**: a binding holds the exchange
  topic's end offsets when it was made (``since``) and when it was removed
  (``until``), and a record belongs to the queue when a binding live at its
  offset routes it (direct: key equal; fanout: always; topic: ``*``/``#``;
  headers: ``x-match`` over the headers table). Every queue is bound to the
  default exchange with its own name, as in RabbitMQ.
* **Durable exchanges, queues and bindings** are ``DATA/meta/amqp.json``,
  rewritten whole and atomically (temp file, fsync, rename) before the
  ``-ok`` of the method that changed them. A JSON file rather than a
  compacted topic: it is small, read once at start, changed rarely, and a
  person can read it; non-durable ones live in memory only (their share-group
  state is dropped at the next start).

Theory of operation
-------------------
Nothing is copied: a message published once to a fanout exchange with ten
queues bound is one record, and each queue's share group reads it. A queue's
``pump`` acquires records from its group for consumers with room (prefetch),
in turn, and for each one decides (``Queue.verdict``): not routed here (no
binding covers it) -> acknowledged in the group at once, never sent, as the
MQTT door's shared subscriptions do; expired (``expiration`` property or
``x-message-ttl``, from the record's timestamp) or past ``x-delivery-limit``
-> dead-lettered; otherwise delivered, locked to that consumer's handle until
basic.ack (acknowledged in the group), basic.nack/reject with requeue
(released: available again at once, delivered with ``redelivered`` and the
count raised) or without (dead-lettered), or the channel's end (released).
The group's state is durable (``__share_group_state``), so after a SIGKILL or
a restart what was delivered and not acked comes back with ``redelivered``,
and what was acked never does.

Counting (queue.declare-ok, basic.get-ok, purge, x-max-length) reads: the
group's released records plus the log past its window, filtered; it costs a
scan of the queue's backlog (capped at a million records), which is the
price of not keeping a copy per queue. ``x-max-length`` is kept by dropping
the oldest ready messages (dead-lettered with reason ``maxlen``) whenever the
queue is woken by an append, and before basic.get and queue.declare answer.

Dead letters are published by the door to ``x-dead-letter-exchange`` (a
record of its topic, routing key ``x-dead-letter-routing-key`` or the
original), with RabbitMQ's ``x-death`` table and ``x-first-death-*`` /
``x-last-death-*`` headers, then acknowledged in the queue's group; a crash
between the two gives a second dead letter, never none.

A ``stream`` queue (``x-queue-type: stream``) has no group: each consumer
reads the bound topics from ``x-stream-offset`` (first, last, next, an
offset of the exchange topic, a timestamp, an interval such as ``1h``), with
the binding filter, and gets ``x-stream-offset`` in each message's headers.
"""

from .door import AmqpDoor

__all__ = ["AmqpDoor"]
