"""A confluent-kafka ShareConsumer in its own process, for the share-group tests.

    python share_consumer_child.py BOOTSTRAP GROUP TOPIC MODE

MODE: ``explicit`` acknowledges every record (ACCEPT) and commits after each
poll, ``hold`` takes one poll's records and never settles them (to be killed).
Prints one JSON line per event: ``{"ready": true}``, ``{"got": [partition,
offset, delivery count, value]}``, ``{"acked": [[partition, offset], ...]}``
once commit_sync confirmed them, ``{"held": n}``, ``{"error": "..."}``;
SIGTERM ends it (pending acknowledgements committed, then close()).
"""

import json
import signal
import sys
import time

from confluent_kafka import ShareConsumer


def out(obj) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def main() -> None:
    bootstrap, group, topic, mode = sys.argv[1:5]
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    c = ShareConsumer({"bootstrap.servers": bootstrap, "group.id": group,
                       "share.acknowledgement.mode": "explicit"})
    c.subscribe([topic])
    out({"ready": True})
    while not stop:
        msgs = c.poll(0.2)
        done = []
        for m in msgs:
            if m.error():
                out({"error": str(m.error())})
                continue
            out({"got": [m.partition(), m.offset(), m.delivery_count(), m.value().decode()]})
            if mode == "explicit":
                c.acknowledge(m)
                done.append(m)
        if mode == "hold" and done == [] and any(not m.error() for m in msgs):
            out({"held": len(msgs)})
            while True:  # never settles: the parent kills us
                time.sleep(1)
        if done:
            results = c.commit_sync(30)
            bad = {f"{tp.topic}-{tp.partition}": str(e) for tp, e in results.items() if e is not None}
            if bad:
                out({"error": bad})
            acked = {tp.partition for tp, e in results.items() if e is None}
            out({"acked": [[m.partition(), m.offset()] for m in done if m.partition() in acked]})
    c.close()
    out({"closed": True})


if __name__ == "__main__":
    main()
