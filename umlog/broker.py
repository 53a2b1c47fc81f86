"""The embedded broker: a data dir of topics, each a list of partitions.

Data dir layout::

    DATA/.lock                  fcntl lock of the one writer process (holds its pid)
    DATA/.clean                 present only after a clean close
    DATA/meta/cluster.json      {"cluster_id", "format"}
    DATA/meta/topic-<name>.json {"name", "id", "partitions", "config": {overrides}}
    DATA/<topic>-<partition>/   segments (umlog.log.segment)

Theory of operation
-------------------
Opening for writing takes the lock, reads the meta files, removes ``.clean``
(so that a crash from now on is noticed) and loads every partition: after a
clean close only each partition's tail is scanned to find its end; otherwise
the tail is validated batch by batch and truncated at the first bad batch.

A background flusher thread (not with ``fsync="always"``, where appends sync
themselves) seals per-record batches older than ``linger_ms`` and, with
``fsync="interval"``, fdatasyncs dirty partitions every ``interval_ms``.
``close()`` seals and syncs everything, trims the indexes and writes ``.clean``.

The Broker, Topic and Partition objects may be shared between threads:
mutations of a partition hold its lock, and topic creation/deletion hold
the broker's lock.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import shutil
import threading
import uuid
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from ._native.core import RecordMetadata, TopicAppender, partition_for_key
from .config import TopicConfig, validate_topic_name
from .errors import (
    BrokerClosedError,
    DataDirError,
    DataDirLockedError,
    InvalidConfigError,
    ReadOnlyError,
    TopicExistsError,
    UnknownTopicError,
)
from .log.cleaner import Cleaner, check_keys, is_compacted
from .log.files import atomic_write_json, fsync_dir, parse_partition_dir, partition_dir_name, read_json
from .log.partition import AppendHooks, Partition

__all__ = ["Broker", "Topic", "RecordMetadata", "FSYNC_POLICIES"]

FSYNC_POLICIES = ("never", "interval", "always")
FORMAT_VERSION = 1
# Topics the broker keeps for itself: hidden from topics() unless asked for, never
# deleted by delete_topic. ``__consumer_offsets`` holds committed group offsets,
# ``__share_group_state`` the share groups' windows (umlog/delivery/state.py).
# ``__delayed`` the records of delayed delivery until they are due (umlog/delivery/delay.py).
# ``__remote_log_metadata`` which segments tiered storage holds (umlog/log/tiered.py).
INTERNAL_TOPICS = frozenset({"__consumer_offsets", "__share_group_state", "__delayed", "__audit",
                             "__remote_log_metadata"})

class Topic:
    """A named set of partitions with one config.

    ``append`` routes a record to ``partition`` if given, else to the
    partition of its key's murmur2 hash (as the Java client does), else to a
    sticky partition that changes when its open batch is sealed.
    """

    def __init__(self, broker: Broker, name: str, topic_id: str, config: TopicConfig, partitions: list[Partition]):
        self._broker = broker
        self.name = name
        self.id = topic_id
        self.config = config
        self.partitions = partitions
        self._appender = TopicAppender([p.lock for p in partitions], self._on_full)
        self._sync_each = broker.fsync == "always"
        self._sticky = 0  # append_many's round robin for keyless calls
        self._readonly = broker.readonly
        self._set_append_path()

    def _set_append_path(self) -> None:
        """Install the native append unless this topic needs the method below."""
        self.__dict__.pop("append", None)
        delay = self._broker.hooks.delay
        if delay is not None and self.name not in INTERNAL_TOPICS:
            # A record with a delay header leaves the native path (only records
            # with headers are looked at): umlog/delivery/delay.py.
            self._appender.set_delayed(lambda v, k, h, t, p: delay.append_record(self, v, k, h, t, p))
        else:
            self._appender.set_delayed(None)
        if not self._sync_each and not self._readonly and not is_compacted(self.config):
            # The per-record hot path without a Python frame: the instance
            # attribute shadows the method below, which stays the documented
            # behaviour (and the path for fsync="always", read-only topics and
            # compacted topics, which refuse keyless records). Measured 474 ->
            # 361 ns per append on a loaded machine, 206 ns quiet (the per-record
            # append row of ``python bench/embedded.py``).
            self.append = self._appender.append

    def __repr__(self) -> str:
        return f"<Topic {self.name!r} partitions={len(self.partitions)}>"

    @property
    def num_partitions(self) -> int:
        return len(self.partitions)

    def partition(self, index: int) -> Partition:
        if not 0 <= index < len(self.partitions):
            raise IndexError(f"topic {self.name!r} has no partition {index} (it has {len(self.partitions)})")
        return self.partitions[index]

    def _on_full(self, index: int) -> None:
        self.partitions[index].seal()

    def _next_sticky(self) -> int:
        self._sticky = p = (self._sticky + 1) % len(self.partitions)
        return p

    def _added_partitions(self) -> None:
        self._appender.set_batches([p.lock for p in self.partitions])

    def append(self, value, key=None, headers=None, timestamp=None, partition=None) -> RecordMetadata:
        """Append one record.

        The record goes into its partition's open batch in one native call
        (see Partition for when that batch is written and synced).

        :param value: bytes-like or None (a tombstone).
        :param key: bytes-like or None.
        :param headers: iterable of (str, bytes-like or None) pairs.
        :param timestamp: ms since the epoch; None means now.
        :param partition: index; None routes by key (murmur2) or sticky.
        :return: RecordMetadata(partition, offset, timestamp).
        :raises TypeError: value or key is not bytes-like.
        """
        if self._readonly:
            raise ReadOnlyError(f"topic {self.name!r} is open read-only")
        if key is None and is_compacted(self.config):
            check_keys(self.name, -1 if partition is None else partition, None)
        md = self._appender.append(value, key, headers, timestamp, partition)
        if self._sync_each and self._broker.hooks.sync_inline():
            self.partitions[md.partition].sync_through(md.offset + 1)
        return md

    def append_many(
        self,
        values: Sequence,
        keys: Sequence | None = None,
        headers: Sequence | None = None,
        timestamps: Sequence | None = None,
        partition: int | None = None,
    ):
        """Append many records as whole batches (the fast path).

        With ``partition`` (or no keys) every record goes to one partition and
        the result is a ``range`` of their offsets. With keys and no partition,
        records are grouped by their key's partition and the result is a list
        of ``(partition, offset)`` pairs in input order.
        """
        if partition is not None:
            return self.partition(partition).append_many(values, keys, headers, timestamps)
        if keys is None:
            self._sticky = p = (self._sticky + 1) % len(self.partitions)  # spread successive calls
            return self.partitions[p].append_many(values, None, headers, timestamps)
        n = len(self.partitions)
        if len(keys) != len(values):
            raise ValueError(f"keys has {len(keys)} items for {len(values)} values")
        groups: dict[int, list[int]] = {}
        for i, k in enumerate(keys):
            groups.setdefault(partition_for_key(k, n) if k is not None else i % n, []).append(i)
        out: list[Any] = [None] * len(values)
        for p, idx in groups.items():
            offsets = self.partitions[p].append_many(
                [values[i] for i in idx],
                [keys[i] for i in idx],
                None if headers is None else [headers[i] for i in idx],
                None if timestamps is None else [timestamps[i] for i in idx],
            )
            for i, o in zip(idx, offsets):
                out[i] = (p, o)
        return out


class Broker:
    """A data dir opened for writing (one process) or reading (any number)."""

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        fsync: str = "never",
        readonly: bool = False,
        interval_ms: int = 1000,
        linger_ms: int = 100,
        cleaner_interval_ms: int | None = 30_000,
        delay_clock=None,
        tiered: Mapping[str, Any] | None = None,
    ) -> None:
        if fsync not in FSYNC_POLICIES:
            raise ValueError(f"fsync must be one of {', '.join(FSYNC_POLICIES)}, not {fsync!r}")
        self.path = os.fspath(path)
        self.fsync = fsync
        self.readonly = readonly
        self.interval_ms = interval_ms
        self.linger_ms = linger_ms
        if cleaner_interval_ms is not None and (not isinstance(cleaner_interval_ms, int) or cleaner_interval_ms < 0):
            raise ValueError(f"cleaner_interval_ms must be an int >= 0 or None, not {cleaner_interval_ms!r}")
        self.cleaner_interval_ms = cleaner_interval_ms
        self._cleaner: Cleaner | None = None
        # Tiered storage (umlog/log/tiered.py): the object store settings, or None.
        self._tiered_settings = dict(tiered) if tiered else None
        self._tiering = None
        self._lock = threading.RLock()
        self._topics: dict[str, Topic] = {}
        self._lock_fd = -1
        self._closed = False
        self._offsets = None  # umlog.groups.offsets.OffsetStore, opened on first use
        self._share = None  # umlog.delivery.group.ShareGroups, opened on first use
        self._stop = threading.Event()
        self._flusher: threading.Thread | None = None
        self.was_clean = True
        self.hooks = AppendHooks()  # shared by every partition: listeners, deferred syncs
        if not readonly:
            # Delayed delivery (umlog/delivery/delay.py; delay_clock: seconds, as time.time).
            from .delivery.delay import DelayHook

            self.hooks.delay = DelayHook(self, delay_clock)
        self._open()

    # -- opening -----------------------------------------------------------------

    def _meta(self, *parts: str) -> str:
        return os.path.join(self.path, "meta", *parts)

    def _open(self) -> None:
        path = self.path
        if os.path.exists(path) and not os.path.isdir(path):
            raise DataDirError(f"{path} is not a directory")
        if self.readonly:
            if not os.path.isfile(self._meta("cluster.json")):
                raise DataDirError(f"{path} is not a umlog data dir (no meta/cluster.json)")
        else:
            os.makedirs(path, exist_ok=True)
            self._take_lock()
            try:
                self._init_meta()
            except BaseException:
                self._release_lock()
                raise
        meta = read_json(self._meta("cluster.json"))
        self.cluster_id = meta["cluster_id"]
        clean_path = os.path.join(path, ".clean")
        self.was_clean = os.path.exists(clean_path)
        if not self.readonly and self.was_clean:
            os.unlink(clean_path)  # from now on a crash must be noticed
            fsync_dir(path)
        try:
            self._load_topics()
        except BaseException:
            self._release_lock()
            raise
        if not self.readonly and self.fsync != "always":
            self._flusher = threading.Thread(target=self._flush_loop, name="umlog-flusher", daemon=True)
            self._flusher.start()
        if not self.readonly:
            # Retention and compaction (umlog/log/cleaner.py): a thread every
            # cleaner_interval_ms (None or 0: none; run_retention/compact only).
            self._cleaner = Cleaner(self, self.cleaner_interval_ms)
        self._open_tiering()
        if not self.readonly:
            if "__delayed" in self._topics:
                # Pending delayed records: decided and scheduled before any append.
                try:
                    self.hooks.delay.ensure()
                except BaseException:
                    self.close()
                    raise

    def _open_tiering(self) -> None:
        """Tiered storage when configured (a read-only opener: as the writer left it in
        meta/tiered.json), after the topics are loaded: remote segments attached."""
        from .log.tiered import TieredStorage

        settings = self._tiered_settings
        if settings is None and self.readonly:
            settings = TieredStorage.persisted(self.path)
        if settings is None:
            return
        try:
            self._tiering = TieredStorage(self, settings)
        except BaseException:
            self.close()
            raise

    @property
    def tiering(self):
        """The broker's ``TieredStorage`` (umlog/log/tiered.py), or None."""
        return self._tiering

    def tier_status(self, topic: str | None = None) -> list[dict]:
        """Tiered partitions: local and remote offset ranges and bytes, upload backlog."""
        self._check_open()
        return [] if self._tiering is None else self._tiering.status(topic)

    def _take_lock(self) -> None:
        lock_path = os.path.join(self.path, ".lock")
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            if e.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                os.close(fd)
                raise
            try:
                pid = int(os.pread(fd, 32, 0).decode().strip() or 0) or None
            except ValueError:
                pid = None
            os.close(fd)
            who = f"process {pid}" if pid else "another process"
            msg = f"data dir {self.path} is locked by {who} (one writer per data dir)"
            raise DataDirLockedError(msg, pid) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._lock_fd = fd

    def _release_lock(self) -> None:
        if self._lock_fd >= 0:
            try:
                fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
            finally:
                os.close(self._lock_fd)
                self._lock_fd = -1

    def _init_meta(self) -> None:
        meta_dir = self._meta()
        cluster = self._meta("cluster.json")
        if os.path.isfile(cluster):
            return
        foreign = sorted(n for n in os.listdir(self.path) if n not in (".lock", "meta"))
        if foreign:
            shown = ", ".join(foreign[:5]) + (" ..." if len(foreign) > 5 else "")
            raise DataDirError(
                f"{self.path} is not a umlog data dir and not empty (found {shown}); "
                "choose an empty or new directory"
            )
        os.makedirs(meta_dir, exist_ok=True)
        atomic_write_json(cluster, {"cluster_id": uuid.uuid4().hex[:22], "format": FORMAT_VERSION})
        # A brand-new data dir has nothing to recover.
        open(os.path.join(self.path, ".clean"), "wb").close()
        # meta/ and .clean in the data dir, the data dir in its parent.
        fsync_dir(self.path)
        try:
            fsync_dir(os.path.dirname(os.path.abspath(self.path)))
        except OSError:  # a parent we may not open (permissions): the data dir's own entries are safe
            pass

    def _load_topics(self) -> None:
        metas = {}
        for name in os.listdir(self._meta()):
            if name.startswith("topic-") and name.endswith(".json"):
                m = read_json(self._meta(name))
                metas[m["name"]] = m
        unknown = []
        for entry in os.listdir(self.path):
            if entry in (".lock", ".clean", "meta"):
                continue
            if entry.endswith(".deleting"):
                if not self.readonly:
                    shutil.rmtree(os.path.join(self.path, entry), ignore_errors=True)
                continue
            parsed = parse_partition_dir(entry)
            if parsed is not None and parsed[0] in metas and parsed[1] >= metas[parsed[0]]["partitions"]:
                # add_partitions creates the directories, then writes the meta:
                # a crash (or a failure) in between leaves these, never acknowledged.
                if not self.readonly:
                    logging.getLogger("umlog").warning("removing %s: partition of an unfinished add_partitions",
                                                       entry)
                    shutil.rmtree(os.path.join(self.path, entry), ignore_errors=True)
                continue
            if parsed is None or parsed[0] not in metas:
                unknown.append(entry)
        if unknown:
            shown = ", ".join(sorted(unknown)[:5])
            raise DataDirError(f"{self.path} holds files that are not umlog's: {shown}")
        for name, m in sorted(metas.items()):
            self._topics[name] = self._make_topic(m)

    def _make_topic(self, m: dict) -> Topic:
        cfg = TopicConfig(m.get("config") or {})
        parts = self._open_partitions(m["name"], range(m["partitions"]), cfg, self.was_clean)
        t = Topic(self, m["name"], m["id"], cfg, parts)
        if getattr(self, "_tiering", None) is not None:
            for p in parts:
                self._tiering.attach(t, p)
        return t

    def _open_partitions(self, name: str, indexes: range, cfg: TopicConfig, clean: bool,
                         new: bool = False) -> list[Partition]:
        """Open (or create) partitions; if one fails (EMFILE, ENOSPC...), those opened
        are closed again (and, when ``new``, their directories removed) before raising."""
        parts: list[Partition] = []
        try:
            for i in indexes:
                parts.append(Partition(os.path.join(self.path, partition_dir_name(name, i)), name, i, cfg,
                                       writable=not self.readonly, clean=clean, fsync=self.fsync,
                                       hooks=self.hooks))
        except BaseException:
            for p in parts:
                for seg in p.segments:
                    seg.close()
                if new:
                    shutil.rmtree(p.directory, ignore_errors=True)
            raise
        return parts

    def _sync_new_dirs(self) -> None:
        """Make new partition folders' entries durable (the data dir's fsync); their
        files' entries are synced by each partition's first group commit. Under
        fsync="never" nothing is promised, and nothing is fsync'd."""
        if self.fsync != "never":
            fsync_dir(self.path)

    # -- topics ----------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise BrokerClosedError(f"broker on {self.path} is closed")

    @property
    def closed(self) -> bool:
        return self._closed

    def check_writable(self) -> None:
        """Raise BrokerClosedError or ReadOnlyError unless appends are possible."""
        self._check_writable()

    def _check_writable(self) -> None:
        self._check_open()
        if self.readonly:
            raise ReadOnlyError(f"{self.path} is open read-only")

    def topics(self, internal: bool = False) -> list[str]:
        """Topic names, sorted; internal ones (``__consumer_offsets``) only with ``internal=True``."""
        self._check_open()
        if self.readonly:
            self._refresh_topics()
        if internal:
            return sorted(self._topics)
        return sorted(n for n in self._topics if n not in INTERNAL_TOPICS)

    def _refresh_topics(self) -> None:
        with self._lock:
            for name in os.listdir(self._meta()):
                if name.startswith("topic-") and name.endswith(".json"):
                    m = read_json(self._meta(name))
                    t = self._topics.get(m["name"])
                    if t is None or t.num_partitions != m["partitions"]:
                        self._topics[m["name"]] = self._make_topic(m)

    def topic(self, name: str) -> Topic:
        """The topic named ``name``; raises UnknownTopicError."""
        self._check_open()
        t = self._topics.get(name)
        if t is None and self.readonly:
            self._refresh_topics()
            t = self._topics.get(name)
        if t is None and name == "__consumer_offsets" and not self.readonly:
            _ = self.offsets  # creates __consumer_offsets on demand, with its config
            t = self._topics.get(name)
        if t is None:
            raise UnknownTopicError(f"unknown topic {name!r}")
        return t

    def create_topic(self, name: str, partitions: int = 1, config: Mapping[str, Any] | None = None) -> Topic:
        """Create a topic; raises TopicExistsError, ValueError, InvalidConfigError."""
        self._check_writable()
        validate_topic_name(name)
        if not isinstance(partitions, int) or isinstance(partitions, bool) or partitions < 1:
            raise ValueError(f"partitions must be a positive integer, not {partitions!r}")
        if partitions > 100_000:
            raise ValueError(f"partitions={partitions} is more than 100000")
        cfg = TopicConfig(config)
        with self._lock:
            if name in self._topics:
                raise TopicExistsError(f"topic {name!r} already exists")
            clash = _collides(name, self._topics)
            if clash:
                raise TopicExistsError(f"topic {name!r} collides with {clash!r} ('.' and '_' are equivalent in Kafka)")
            m = {"name": name, "id": str(uuid.uuid4()), "partitions": partitions, "config": _jsonable(cfg.overrides)}
            meta = self._meta(f"topic-{name}.json")
            atomic_write_json(meta, m)
            try:
                parts = self._open_partitions(name, range(partitions), cfg, True, new=True)
                self._sync_new_dirs()
            except BaseException:
                # Undone, so a restart does not try (and fail) again: a crash
                # here instead leaves the meta, and the restart creates the rest.
                os.unlink(meta)
                fsync_dir(self._meta())
                raise
            t = Topic(self, name, m["id"], cfg, parts)
            self._topics[name] = t
            return t

    def delete_topic(self, name: str) -> None:
        """Delete a topic and its data (renamed away first, so a crash midway is safe)."""
        self._check_writable()
        if name in INTERNAL_TOPICS:
            raise ValueError(f"topic {name!r} is internal (consumer-group offsets); delete groups instead")
        with self._lock:
            t = self.topic(name)
            del self._topics[name]
            for p in t.partitions:
                with p.lock:
                    for seg in p.segments:
                        seg.close()
                d = p.directory
                if os.path.isdir(d):
                    os.rename(d, d + "." + uuid.uuid4().hex[:8] + ".deleting")
            # The renames are durable before the meta goes: a power cut must not
            # bring back a partition folder whose topic is gone.
            fsync_dir(self.path)
            os.unlink(self._meta(f"topic-{name}.json"))
            fsync_dir(self._meta())
            for entry in os.listdir(self.path):
                if entry.endswith(".deleting"):
                    shutil.rmtree(os.path.join(self.path, entry), ignore_errors=True)
        # As Kafka: the topic's committed offsets go with it (a topic created
        # again under the name starts with none).
        if "__consumer_offsets" in self._topics:
            self.offsets.delete_topic(name)
        # And so does every share group's state for it.
        if "__share_group_state" in self._topics:
            self._share_groups().delete_topic(name)
        if self._tiering is not None:
            self._tiering.delete_topic(name)

    def alter_topic_config(
        self, name: str, set: Mapping[str, Any] | None = None, delete: Iterable[str] = ()
    ) -> TopicConfig:
        """Validate and apply config changes all at once; returns the new config."""
        self._check_writable()
        with self._lock:
            t = self.topic(name)
            new = t.config.updated(set, list(delete))
            m = {"name": name, "id": t.id, "partitions": t.num_partitions, "config": _jsonable(new.overrides)}
            atomic_write_json(self._meta(f"topic-{name}.json"), m)
            t.config = new
            t._set_append_path()
            for p in t.partitions:
                p.reconfigure(new)
            return new

    def add_partitions(self, name: str, total: int) -> Topic:
        """Grow a topic to ``total`` partitions (Kafka CreatePartitions)."""
        self._check_writable()
        with self._lock:
            t = self.topic(name)
            if not isinstance(total, int) or total <= t.num_partitions:
                raise ValueError(f"topic {name!r} has {t.num_partitions} partitions; {total!r} is not more")
            if total > 100_000:
                raise ValueError(f"partitions={total} is more than 100000")
            m = {"name": name, "id": t.id, "partitions": total, "config": _jsonable(t.config.overrides)}
            added = self._open_partitions(name, range(t.num_partitions, total), t.config, True, new=True)
            try:
                self._sync_new_dirs()
                atomic_write_json(self._meta(f"topic-{name}.json"), m)
            except BaseException:
                for p in added:
                    for seg in p.segments:
                        seg.close()
                    shutil.rmtree(p.directory, ignore_errors=True)
                raise
            t.partitions.extend(added)
            t._added_partitions()
            return t

    # -- consumer groups (umlog.groups sits above the engine: imported lazily) -------------

    @property
    def offsets(self):
        """Every group's committed offsets (``umlog.groups.offsets.OffsetStore``):
        ``__consumer_offsets`` is created if needed and replayed on first use."""
        self._check_open()
        store = self._offsets
        if store is None:
            with self._lock:
                if self._offsets is None:
                    from .groups.offsets import OffsetStore

                    self._offsets = OffsetStore(self)
                store = self._offsets
        return store

    def internal_topic(self, name: str, partitions: int, config: Mapping[str, Any]) -> Topic:
        """An internal topic (``__consumer_offsets``), created with ``partitions`` and
        ``config`` if it does not exist yet: the services above the engine keep
        their state in such topics."""
        self._check_writable()
        with self._lock:
            t = self._topics.get(name)
            return t if t is not None else self.create_topic(name, partitions, config)

    def group(self, name: str):
        """The committed offsets of consumer group ``name`` (``umlog.groups.Group``)."""
        from .groups.offsets import Group

        self._check_open()
        return Group(self, name)

    def groups(self) -> list[str]:
        """Groups with committed offsets, sorted."""
        return self.offsets.groups()

    def share_group(self, name: str, topics, **settings):
        """A handle on share group ``name`` over ``topics``: a queue that is a cursor
        over the log (``umlog.delivery.ShareGroup``; settings: ``max_attempts``,
        ``lock_ms``, ``backoff_ms``, ``dead_letter``, ``start``, ``max_in_flight``,
        ``expire``, ``clock``). Every handle of a group in this process shares its state."""
        self._check_writable()
        return self._share_groups().open(name, topics, **settings)

    def _share_groups(self):
        with self._lock:
            if self._share is None:
                from .delivery.group import ShareGroups

                self._share = ShareGroups(self)
            return self._share

    def consume(self, topic, group: str | None = None, *, from_beginning: bool = False, follow: bool = False,
                timeout: float | None = None, commit_every: int = 1000, max_records: int = 500):
        """Iterate the records of ``topic`` (a name or several) across all partitions, from
        ``group``'s committed offsets, committing as it goes (``umlog.groups.Consumer``)."""
        from .groups.consumer import Consumer

        self._check_open()
        return Consumer(self, topic, group, from_beginning=from_beginning, follow=follow, timeout=timeout,
                        commit_every=commit_every, max_records=max_records)

    # -- retention and compaction (umlog/log/cleaner.py) -----------------------------

    def run_retention(self, topic: str | None = None, *, now_ms: int | None = None) -> dict:
        """Apply ``retention.ms`` / ``retention.bytes`` now, to one topic or all
        (the cleaner thread does it every ``cleaner_interval_ms``).

        :return: {(topic, partition): RetentionResult(segments, bytes, start_offset)}
        """
        self._check_writable()
        topics = [self.topic(topic)] if topic is not None else list(self._topics.values())
        out = {}
        for t in topics:
            for p, r in zip(t.partitions, self._cleaner.run_retention(t.partitions, now_ms)):
                out[(t.name, p.index)] = r
        return out

    def compact(self, topic: str, *, now_ms: int | None = None) -> list:
        """Compact every partition of a ``cleanup.policy=compact`` topic now, all
        of its closed segments (the cleaner thread only compacts what is dirty
        enough). Returns a CompactionResult per partition.

        :raises UnknownTopicError: no such topic.
        :raises InvalidConfigError: the topic is not compacted.
        """
        self._check_writable()
        t = self.topic(topic)
        if not is_compacted(t.config):
            raise InvalidConfigError(
                f"topic {topic!r} has cleanup.policy={t.config['cleanup.policy']}; compaction needs compact"
            )
        return self._cleaner.compact(t.partitions, now_ms)

    # -- durability -------------------------------------------------------------------

    def add_append_listener(self, fn) -> None:
        """Call ``fn(partition)`` whenever records become readable in any partition,
        on the appending thread (see ``AppendHooks``: quick, never raising)."""
        self.hooks.listeners.append(fn)

    def remove_append_listener(self, fn) -> None:
        if fn in self.hooks.listeners:
            self.hooks.listeners.remove(fn)

    def defer_syncs_on(self, thread_id: int | None) -> None:
        """Under ``fsync="always"``, appends made on ``thread_id`` return before
        their fdatasync: that thread's owner must wait on
        ``Partition.sync_through`` before acknowledging them (the server's hub
        does). None: every append syncs before it returns."""
        self.hooks.defer_thread = thread_id

    def _partitions(self) -> list[Partition]:
        return [p for t in list(self._topics.values()) for p in t.partitions]

    def flush(self, durable: bool = True) -> None:
        """Make everything appended so far durable (all fsync modes).

        ``durable=False`` only writes the open per-record batches to the page
        cache (visible to tailing readers, safe from a crash of this process,
        not of the machine).
        """
        self._check_open()
        for p in self._partitions():
            p.flush(durable=durable)

    def _flush_loop(self) -> None:
        linger = self.linger_ms / 1000
        interval = self.interval_ms / 1000
        tick = min(linger, interval) if self.fsync == "interval" else linger
        last_sync = 0.0
        import time

        while not self._stop.wait(tick):
            try:
                for p in self._partitions():
                    p.maybe_linger(linger)
                if self.fsync == "interval" and time.monotonic() - last_sync >= interval:
                    last_sync = time.monotonic()
                    for p in self._partitions():
                        p.flush()
            except Exception:  # a failing disk must not kill the thread silently forever
                import logging

                logging.getLogger("umlog").exception("background flush failed")

    def close(self) -> None:
        """Seal, sync, trim indexes, write ``.clean``, release the lock. Idempotent."""
        if self._closed:
            return
        self._stop.set()
        if self._flusher is not None:
            self._flusher.join()
        if self.hooks.delay is not None:
            self.hooks.delay.close()  # the scheduler's round ends, its stream checkpoints
        if self._tiering is not None:
            self._tiering.close()  # uploads in flight finish; their local segments stay until the next open
        if self._cleaner is not None:
            self._cleaner.close()  # a compaction stops at its next chunk, before its commit
        with self._lock:
            self._closed = True
            for p in self._partitions():
                p.close()
            if not self.readonly:
                open(os.path.join(self.path, ".clean"), "wb").close()
                fsync_dir(self.path)
                self._release_lock()

    def __enter__(self) -> Broker:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        mode = "readonly" if self.readonly else f"fsync={self.fsync}"
        return f"<Broker {self.path!r} {mode} topics={len(self._topics)}>"


def _collides(name: str, existing: Iterable[str]) -> str | None:
    norm = name.replace(".", "_")
    for other in existing:
        if other != name and other.replace(".", "_") == norm:
            return other
    return None


def _jsonable(overrides: Mapping[str, Any]) -> dict:
    return {k: v for k, v in overrides.items()}
