"""Tiered storage (KIP-405's model): closed segments copied to an object store,
served from there once local retention has deleted the local copy.

Theory of operation
-------------------
A topic with ``remote.storage.enable=true`` keeps its log in two tiers. Every
closed segment is uploaded, with its ``.index``, ``.timeindex`` and the
producer-state snapshot taken when it was rolled, to::

    <prefix>/<topic>-<partition>/<base offset:020d>.{log,index,timeindex,snapshot}

through ``pyarrow.fs`` (S3 and any S3-compatible store through an endpoint
override, a local folder, GCS). Which segments are remote is recorded in the
compacted internal topic ``__remote_log_metadata``: one record per segment,
key ``topic/partition/base``, a JSON value whose ``state`` is
``copy_started``, ``copy_finished`` or ``delete_started``; a tombstone once the
objects are gone. The topic is the truth; ``TieredStorage`` keeps a map that
is its replay.

Crash-safe order of an upload: ``copy_started`` recorded -> the four objects
written -> ``copy_finished`` recorded and fdatasync'd (whatever the broker's
fsync policy) -> only then may local retention delete the local copy. A crash
between the first and the third step leaves a ``copy_started`` entry: at the
next start it is resumed (the objects written again from the local segment,
still there) or, when retention removed the local segment meanwhile, its
objects are deleted and the entry tombstoned. Readers never see anything but
``copy_finished`` segments.

Retention of a tiered partition is over the whole log (remote-only segments
then local ones, from the front, so the log never gets a hole):
``retention.ms``/``retention.bytes`` delete remote objects (``delete_started``
-> objects deleted -> tombstone) and local segments alike. Local retention
(``local.retention.ms``/``.bytes``, -2: the same as ``retention.*``) deletes
only local copies of segments already uploaded; a segment not uploaded stays
local whatever its age, so an object store that is down loses nothing: uploads
retry with an exponential backoff and the backlog (closed segments not yet
uploaded) is visible in ``status()`` / ``umlog tier status``.

Reads: ``Partition`` serves offsets below its first local segment from
``RemoteSegment`` objects (``remote_segments``), which look like closed
``LogSegment`` s to ``read``, ``read_table``, ``read_batches`` (Kafka Fetch)
and ``offset_for_time``: the remote ``.index`` (fetched once per segment) puts
a read within ``index.interval.bytes`` of its batch, and bytes are fetched as
ranged reads of ``CHUNK`` bytes kept in a bounded in-memory LRU cache
(``cache_bytes``). A read the store cannot serve raises ``RemoteStorageError``
(an ``OSError``: Kafka Fetch answers KAFKA_STORAGE_ERROR, retriable); bytes are
CRC-checked as local ones are, and a short object is an error, never data.

The writer persists its store settings (never credentials: those come from
the environment, as the AWS and GCS SDKs read them) to ``meta/tiered.json`` so
that read-only openers (``umlog consume``, ``umlog export``) read remote
segments too.
"""

from __future__ import annotations

import json
import logging
import os
import random
import threading
import time
from bisect import bisect_right
from collections import OrderedDict
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from .._native.core import BATCH_HEADER_SIZE, batch_info
from ..errors import CorruptBatchError, InvalidConfigError, RemoteStorageError
from .files import INDEX_SUFFIX, LOG_SUFFIX, TIMEINDEX_SUFFIX, atomic_write_json, read_json, segment_name
from .producer_state import SNAPSHOT_SUFFIX
from .retention import RetentionResult, _delete_files, _largest_timestamp
from .segment import LogSegment
from .tailing import premap, retire

__all__ = ["TieredStorage", "RemoteStore", "RemoteSegment", "TIERED_DEFAULTS", "METADATA_TOPIC"]

log = logging.getLogger("umlog.tiered")

METADATA_TOPIC = "__remote_log_metadata"
SUFFIXES = (LOG_SUFFIX, INDEX_SUFFIX, TIMEINDEX_SUFFIX, SNAPSHOT_SUFFIX)
CHUNK = 1 << 20  # bytes per ranged read of a remote .log (and per cache entry)
COPY_CHUNK = 4 << 20  # bytes per write of an upload

TIERED_DEFAULTS: dict[str, Any] = {
    "uri": None,  # s3://bucket/path, gs://bucket/path, file:///path or a plain path
    "prefix": "",
    "endpoint": None,  # S3: an endpoint override (http://127.0.0.1:9000) for any S3-compatible store
    "region": None,
    "upload_concurrency": 2,
    "cache_bytes": 64 << 20,
    "interval_ms": 5000,  # how often closed segments are looked for (Kafka: remote.log.manager.task.interval.ms)
    "retry_backoff_ms": [500, 30_000],
    "request_timeout_ms": 10_000,
}
# What is written to meta/tiered.json for read-only openers (no credentials are ever part of the settings).
_PERSISTED = ("uri", "prefix", "endpoint", "region", "cache_bytes", "request_timeout_ms")


def tiered_settings(options: Mapping[str, Any]) -> dict[str, Any]:
    """The embedded ``tiered={...}`` option checked and completed with the defaults."""
    unknown = set(options) - set(TIERED_DEFAULTS)
    if unknown:
        raise InvalidConfigError(f"unknown tiered storage settings: {', '.join(sorted(unknown))}")
    out = dict(TIERED_DEFAULTS)
    out.update({k: v for k, v in options.items() if v is not None})
    if not out["uri"]:
        raise InvalidConfigError("tiered storage needs a uri (s3://bucket/path, gs://bucket/path or a folder)")
    if int(out["upload_concurrency"]) < 1:
        raise InvalidConfigError("tiered upload_concurrency must be at least 1")
    return out


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


# -- the object store ---------------------------------------------------------------


class RemoteStore:
    """The object store through ``pyarrow.fs``; every failure is a RemoteStorageError."""

    def __init__(self, settings: Mapping[str, Any]) -> None:
        import pyarrow.fs as pafs

        uri = settings["uri"]
        timeout = settings["request_timeout_ms"] / 1000
        if uri.startswith("s3://"):
            bucket_path = uri[len("s3://"):]
            kw: dict[str, Any] = dict(connect_timeout=timeout, request_timeout=timeout,
                                      retry_strategy=pafs.AwsStandardS3RetryStrategy(max_attempts=2))
            if settings.get("endpoint"):
                ep = settings["endpoint"]
                scheme, _, host = ep.partition("://") if "://" in ep else ("https", "", ep)
                kw.update(endpoint_override=host, scheme=scheme)
            if settings.get("region"):
                kw["region"] = settings["region"]
            # Credentials: the AWS SDK's chain (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY,
            # AWS_PROFILE, instance roles), never the settings.
            self.fs = pafs.S3FileSystem(**kw)
            self.root = bucket_path.strip("/")
        elif uri.startswith("gs://"):
            self.fs = pafs.GcsFileSystem(request_timeout=timeout)
            self.root = uri[len("gs://"):].strip("/")
        else:
            path = uri[len("file://"):] if uri.startswith("file://") else uri
            self.fs = pafs.LocalFileSystem()
            self.root = os.path.abspath(path)
            os.makedirs(self.root, exist_ok=True)
        self.local = isinstance(self.fs, pafs.LocalFileSystem)
        prefix = (settings.get("prefix") or "").strip("/")
        self.base = f"{self.root}/{prefix}" if prefix else self.root
        self.uri = uri

    def path(self, key: str) -> str:
        return f"{self.base}/{key}"

    def _fail(self, what: str, key: str, e: BaseException) -> RemoteStorageError:
        return RemoteStorageError(f"object store {self.uri}: {what} {key} failed: {e}")

    def put_file(self, local_path: str, key: str, size: int | None = None) -> None:
        """Copy ``size`` bytes (default: all) of a local file to ``key``."""
        with open(local_path, "rb") as src:  # FileNotFoundError: the local file is gone
            try:
                if self.local:
                    os.makedirs(os.path.dirname(self.path(key)), exist_ok=True)
                with self.fs.open_output_stream(self.path(key)) as out:
                    left = size if size is not None else -1
                    while left != 0:
                        buf = src.read(COPY_CHUNK if left < 0 else min(COPY_CHUNK, left))
                        if not buf:
                            break
                        out.write(buf)
                        if left > 0:
                            left -= len(buf)
            except Exception as e:
                raise self._fail("upload of", key, e) from None

    def read_range(self, key: str, position: int, size: int) -> bytes:
        try:
            with self.fs.open_input_file(self.path(key)) as f:
                return f.read_at(size, position)
        except Exception as e:
            raise self._fail("read of", key, e) from None

    def get(self, key: str) -> bytes:
        try:
            with self.fs.open_input_stream(self.path(key)) as f:
                return f.read()
        except Exception as e:
            raise self._fail("read of", key, e) from None

    def delete(self, key: str) -> None:
        try:
            self.fs.delete_file(self.path(key))
        except FileNotFoundError:
            pass
        except Exception as e:
            if "NoSuchKey" in str(e) or "not found" in str(e).lower() or "does not exist" in str(e):
                return
            raise self._fail("delete of", key, e) from None


class ChunkCache:
    """A bounded LRU of remote byte ranges, shared by every remote segment."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max(int(max_bytes), CHUNK)
        self._lock = threading.Lock()
        self._items: OrderedDict = OrderedDict()
        self.bytes = 0

    def get(self, key):
        with self._lock:
            v = self._items.get(key)
            if v is not None:
                self._items.move_to_end(key)
            return v

    def put(self, key, value: bytes) -> None:
        with self._lock:
            if key in self._items:
                return
            self._items[key] = value
            self.bytes += len(value)
            while self.bytes > self.max_bytes and len(self._items) > 1:
                _, old = self._items.popitem(last=False)
                self.bytes -= len(old)

    def drop(self, prefix: str) -> None:
        with self._lock:
            for k in [k for k in self._items if k[0] == prefix]:
                self.bytes -= len(self._items.pop(k))


# -- metadata -------------------------------------------------------------------------


@dataclass
class SegmentMeta:
    """One ``__remote_log_metadata`` value."""

    topic: str
    topic_id: str
    partition: int
    base: int  # base offset (the file name)
    start: int  # the first batch's base offset
    next: int  # one past the last offset
    size: int
    max_timestamp: int
    state: str  # copy_started | copy_finished | delete_started
    snapshot: bool = False
    time_ms: int = 0

    @property
    def key(self) -> str:
        return f"{self.topic}/{self.partition}/{self.base:020d}"

    def object(self, suffix: str) -> str:
        return f"{self.topic}-{self.partition}/{segment_name(self.base, suffix)}"


class RemoteSegment:
    """A ``copy_finished`` segment read from the object store: what the readers
    of a closed ``LogSegment`` use (``read``, ``batch_info_at``,
    ``find_position``, ``batches_from``, ``timestamp_lookup``)."""

    remote = True
    active = False
    fd = -1

    def __init__(self, tier: TieredStorage, meta: SegmentMeta) -> None:
        self.tier = tier
        self.meta = meta
        self.base_offset = meta.base
        self.start = meta.start
        self.next_offset = meta.next
        self.size = meta.size
        self.max_timestamp = meta.max_timestamp
        self.key = meta.object(LOG_SUFFIX)
        self.log_path = tier.store.path(self.key)
        self._index: tuple | None = None
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"<RemoteSegment {self.log_path} size={self.size} offsets=[{self.start}, {self.next_offset})>"

    def read(self, position: int, size: int) -> bytes:
        size = min(size, self.size - position)
        if size <= 0:
            return b""
        cache, store = self.tier.cache, self.tier.store
        parts = []
        first, last = position // CHUNK, (position + size - 1) // CHUNK
        for i in range(first, last + 1):
            chunk = cache.get((self.key, i))
            if chunk is None:
                want = min(CHUNK, self.size - i * CHUNK)
                chunk = store.read_range(self.key, i * CHUNK, want)
                if len(chunk) != want:
                    raise RemoteStorageError(f"{self.log_path}: {len(chunk)} bytes at {i * CHUNK}, expected {want} "
                                             "(object shorter than its metadata)")
                cache.put((self.key, i), chunk)
            parts.append(chunk)
        buf = parts[0] if len(parts) == 1 else b"".join(parts)
        lo = position - first * CHUNK
        return buf[lo:lo + size]

    def batch_info_at(self, position: int):
        return batch_info(self.read(position, BATCH_HEADER_SIZE), 0)

    def corrupt(self, e: CorruptBatchError, base: int) -> CorruptBatchError:
        at = base + max(getattr(e, "position", 0) or 0, 0)
        return CorruptBatchError(f"{self.log_path}: corrupt batch at byte {at}: {e}", at)

    def _indexes(self) -> tuple:
        """(offsets, positions, timestamps, ts_offsets) of the remote indexes, fetched once."""
        with self._lock:
            if self._index is None:
                raw = self.tier.store.get(self.meta.object(INDEX_SUFFIX))
                arr = np.frombuffer(raw, dtype=">u4", count=len(raw) // 8 * 2).astype(np.int64).reshape(-1, 2)
                keep = arr[:, 0] > 0
                keep[:1] = True  # a zero relative offset is only valid as the first entry
                arr = arr[keep] if len(arr) else arr
                raw_t = self.tier.store.get(self.meta.object(TIMEINDEX_SUFFIX))
                n = len(raw_t) // 12
                t = np.frombuffer(raw_t, dtype=np.uint8, count=n * 12).reshape(-1, 12)
                ts = t[:, :8].copy().view(">i8").ravel().astype(np.int64)
                rel = t[:, 8:].copy().view(">u4").ravel().astype(np.int64)
                valid = ts > 0
                self._index = (arr[:, 0] + self.base_offset, arr[:, 1], ts[valid], rel[valid] + self.base_offset)
            return self._index

    def find_position(self, offset: int) -> tuple[int, int] | None:
        if offset >= self.next_offset or self.size == 0:
            return None
        offsets, positions, _, _ = self._indexes()
        i = int(np.searchsorted(offsets, offset, side="right")) - 1
        pos = int(positions[i]) if i >= 0 else 0
        return self._first_batch_from(pos, "last_offset", offset)

    _first_batch_from = LogSegment._first_batch_from  # the same scan over this segment's read()
    batches_from = LogSegment.batches_from

    def timestamp_lookup(self, timestamp: int) -> tuple[int, int] | None:
        if self.size == 0 or self.max_timestamp < timestamp:
            return None
        _, _, ts, ts_offsets = self._indexes()
        i = int(np.searchsorted(ts, timestamp, side="left")) - 1
        offset = int(ts_offsets[i]) if i >= 0 else self.base_offset
        found = self.find_position(max(offset, self.start))
        if found is None:
            return None
        return self._first_batch_from(found[0], "max_timestamp", timestamp)

    def close(self) -> None:
        pass


def _next_offset(seg) -> int:
    return seg.next_offset


# -- the manager -------------------------------------------------------------------------


class TieredStorage:
    """A broker's tiered storage: the metadata replay, the remote segments of each
    partition, and (writable) the upload thread. See the module docstring."""

    def __init__(self, broker, settings: Mapping[str, Any]) -> None:
        from .replay import InternalTopicReplay

        self.broker = broker  # type of `broker` is `Broker`
        self.settings = tiered_settings(settings)
        self.store = RemoteStore(self.settings)
        self.cache = ChunkCache(self.settings["cache_bytes"])
        self.writable = not broker.readonly
        self._lock = threading.RLock()
        # (topic, partition) -> {base: SegmentMeta}, every state
        self.entries: dict[tuple[str, int], dict[int, SegmentMeta]] = {}
        self._replay = InternalTopicReplay(broker, METADATA_TOPIC, 1, {
            "cleanup.policy": "compact", "segment.bytes": 16 << 20, "min.compaction.lag.ms": 0})
        self.last_error: str | None = None
        self.last_error_ms = 0
        self.uploaded = 0  # segments since open
        self._failures = 0
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._pool: ThreadPoolExecutor | None = None
        self._catch_up()
        if self.writable:
            atomic_write_json(os.path.join(broker.path, "meta", "tiered.json"),
                              {k: self.settings[k] for k in _PERSISTED})
            self._pool = ThreadPoolExecutor(int(self.settings["upload_concurrency"]),
                                            thread_name_prefix="umlog-tier-upload")
            self._thread = threading.Thread(target=self._loop, name="umlog-tiering", daemon=True)
            self._thread.start()

    @staticmethod
    def persisted(data_dir: str) -> dict[str, Any] | None:
        """The settings a writer left in ``meta/tiered.json`` (read-only openers)."""
        path = os.path.join(data_dir, "meta", "tiered.json")
        if not os.path.isfile(path):
            return None
        return read_json(path)

    # -- metadata ------------------------------------------------------------------------

    def _apply(self, r) -> None:
        topic, _, rest = r.key.decode().partition("/")
        part, _, base = rest.partition("/")
        tp, base_i = (topic, int(part)), int(base)
        if r.value is None:
            self.entries.get(tp, {}).pop(base_i, None)
            return
        self.entries.setdefault(tp, {})[base_i] = SegmentMeta(**json.loads(r.value))

    def _catch_up(self) -> None:
        with self._lock:
            self._replay.catch_up(self._apply)
            for t in list(self.broker._topics.values()):
                for p in t.partitions:
                    self.attach(t, p)

    def _record(self, meta: SegmentMeta | None, key: str, durable: bool) -> None:
        t = self._replay.topic
        value = None if meta is None else json.dumps(asdict(meta), separators=(",", ":")).encode()
        t.append(value, key=key.encode(), partition=0)
        p = t.partition(0)
        self._replay.wrote(p)
        if durable:
            p.sync_through(p.end_offset)  # whatever the broker's fsync: local deletion depends on it
        else:
            p.seal()

    def _set(self, meta: SegmentMeta, durable: bool = False) -> None:
        with self._lock:
            self._record(meta, meta.key, durable)
            self.entries.setdefault((meta.topic, meta.partition), {})[meta.base] = meta

    def _forget(self, meta: SegmentMeta) -> None:
        with self._lock:
            self._record(None, meta.key, False)
            self.entries.get((meta.topic, meta.partition), {}).pop(meta.base, None)

    def attach(self, t, p) -> None:
        """Give partition ``p`` of topic ``t`` its remote segments (copy_finished, of this topic id)."""
        with self._lock:
            p.tier = self
            metas = sorted((m for m in self.entries.get((t.name, p.index), {}).values()
                            if m.state == "copy_finished" and m.topic_id == t.id), key=lambda m: m.base)
            old = {s.base_offset: s for s in p.remote_segments}
            segs = []
            for m in metas:
                s = old.get(m.base)
                segs.append(s if s is not None and s.size == m.size and s.next_offset == m.next
                            else RemoteSegment(self, m))
            if [id(s) for s in segs] != [id(s) for s in p.remote_segments]:
                p.set_remote(segs)

    def before_read(self, p, offset: int | None) -> None:
        """A read-only opener catches up on uploads before reading below its local log."""
        if self.writable:
            return
        segs = p.segments
        if offset is None or not segs or offset < segs[0].base_offset:
            with self._lock:
                self._replay.catch_up(self._apply)
                self.attach(self.broker.topic(p.topic), p)

    # -- the loop -----------------------------------------------------------------------

    def _loop(self) -> None:
        interval = self.settings["interval_ms"] / 1000
        lo, hi = self.settings["retry_backoff_ms"]
        wait = 0.0
        while not self._stop.is_set():
            self._wake.wait(wait)
            self._wake.clear()
            if self._stop.is_set():
                return
            try:
                ok = self.run_once()
            except Exception as e:  # never let the thread die silently
                log.exception("tiered storage round failed")
                self._note_error(e)
                ok = False
            if ok:
                self._failures = 0
                wait = interval
            else:
                self._failures += 1
                wait = min(hi, lo * 2 ** min(self._failures - 1, 30)) / 1000 * random.uniform(0.8, 1.2)

    def kick(self) -> None:
        """Run a round now (tests; a topic turned tiered)."""
        self._wake.set()

    def _note_error(self, e: BaseException) -> None:
        self.last_error = str(e)
        self.last_error_ms = _now_ms()

    def _tiered_partitions(self) -> list:
        out = []
        for t in list(self.broker._topics.values()):
            if t.name in ("__remote_log_metadata",):
                continue
            for p in list(t.partitions):
                if p.tier is None:
                    self.attach(t, p)
                if t.config["remote.storage.enable"] and p.writable:
                    out.append((t, p))
        return out

    def run_once(self) -> bool:
        """One round: settle interrupted work, upload every partition's backlog,
        apply local retention. True when everything succeeded."""
        work = self._tiered_partitions()
        ok = self._settle_interrupted()
        futures = [self._pool.submit(self._tier_partition, t, p) for t, p in work]
        for f in futures:
            try:
                f.result()
            except Exception as e:
                if not isinstance(e, RemoteStorageError):
                    log.exception("tiering a partition failed")
                else:
                    log.warning("%s", e)
                self._note_error(e)
                ok = False
        return ok

    def _settle_interrupted(self) -> bool:
        """copy_started entries whose local segment is gone and delete_started
        entries: their objects deleted, the entries tombstoned. (A copy_started
        entry whose segment is still local is resumed by the upload.)"""
        ok = True
        with self._lock:
            todo = []
            for (topic, part), metas in self.entries.items():
                t = self.broker._topics.get(topic)
                for m in metas.values():
                    if m.state == "delete_started" or t is None or t.id != m.topic_id:
                        todo.append(m)
                    elif m.state == "copy_started":
                        p = t.partitions[part] if part < t.num_partitions else None
                        if p is None or not any(s.base_offset == m.base for s in p.segments[:-1]):
                            todo.append(m)
        for m in todo:
            try:
                self._delete_remote(m)
            except RemoteStorageError as e:
                self._note_error(e)
                ok = False
        return ok

    def _delete_remote(self, m: SegmentMeta) -> None:
        if m.state != "delete_started":
            m = SegmentMeta(**{**asdict(m), "state": "delete_started", "time_ms": _now_ms()})
            self._set(m)
        for suffix in SUFFIXES:
            self.store.delete(m.object(suffix))
        self.cache.drop(m.object(LOG_SUFFIX))
        self._forget(m)

    def _tier_partition(self, t, p) -> None:
        cleaner_lock = self.broker._cleaner.lock
        while not self._stop.is_set():
            done = self.entries.get((t.name, p.index), {})
            seg = next((s for s in p.segments[:-1] if s.size and not (
                (m := done.get(s.base_offset)) is not None and m.state == "copy_finished"
                and m.topic_id == t.id and m.next == s.next_offset)), None)
            if seg is None or not self._upload(t, p, seg):
                break
        with cleaner_lock:
            self._local_retention(t, p)

    def _upload(self, t, p, seg: LogSegment) -> bool:
        """Copy one closed segment; False when it went meanwhile (retention)."""
        info = seg.batch_info_at(0)
        m = SegmentMeta(t.name, t.id, p.index, seg.base_offset, info.base_offset, seg.next_offset, seg.size,
                        seg.max_timestamp, "copy_started", time_ms=_now_ms())
        self._set(m)
        # The files are opened by path now: if retention removes the segment
        # meanwhile, the open files stay readable and the entry is undone below.
        try:
            self.store.put_file(seg.log_path, m.object(LOG_SUFFIX), seg.size)
            self.store.put_file(seg.offset_index.path, m.object(INDEX_SUFFIX))
            self.store.put_file(seg.time_index.path, m.object(TIMEINDEX_SUFFIX))
            snap = os.path.join(p.directory, f"{seg.next_offset:020d}{SNAPSHOT_SUFFIX}")
            if os.path.exists(snap):
                try:
                    self.store.put_file(snap, m.object(SNAPSHOT_SUFFIX))
                    m.snapshot = True
                except FileNotFoundError:
                    pass
        except FileNotFoundError:
            self._delete_remote(m)  # the local segment went (retention): nothing to keep
            return False
        m = SegmentMeta(**{**asdict(m), "state": "copy_finished", "time_ms": _now_ms()})
        with self.broker._cleaner.lock:
            if seg not in p.segments:
                self._delete_remote(m)
                return False
            self._set(m, durable=True)
            self.attach(t, p)
        self.uploaded += 1
        log.info("%s-%d: uploaded segment %d [%d, %d), %d bytes", t.name, p.index, m.base, m.start, m.next, m.size)
        return True

    def _local_retention(self, t, p) -> None:
        """Delete local copies of uploaded segments past local.retention.* (cleaner lock held)."""
        cfg = p.config
        ms, max_bytes = cfg.local_retention("ms"), cfg.local_retention("bytes")
        if ms < 0 and max_bytes < 0:
            return
        done = self.entries.get((t.name, p.index), {})
        now = _now_ms()
        with p.lock:
            segs = p.segments
            uploaded = 0
            for s in segs[:-1]:
                m = done.get(s.base_offset)
                if m is None or m.state != "copy_finished" or m.next != s.next_offset or m.topic_id != t.id:
                    break
                uploaded += 1
            by_time = 0
            if ms >= 0:
                for s in segs[:uploaded]:
                    if now - _largest_timestamp(s) <= ms:
                        break
                    by_time += 1
            by_size = 0
            if max_bytes >= 0:
                diff = sum(s.size for s in segs) - max_bytes
                for s in segs[:uploaded]:
                    if diff - s.size < 0:
                        break
                    diff -= s.size
                    by_size += 1
            n = max(by_time, by_size)
            if n == 0:
                return
            doomed = segs[:n]
            premap(doomed)
            p.replace_segments(segs[n:])
        retire(doomed)
        _delete_files(p.directory, doomed)
        log.info("%s-%d: local retention deleted %d uploaded segment(s); local log now starts at %d",
                 t.name, p.index, n, p.segments[0].base_offset)

    # -- total retention (called by enforce_retention with the cleaner's lock held) --------

    def enforce_retention(self, p, now_ms: int | None = None) -> RetentionResult:
        """retention.ms / retention.bytes over the whole log of a tiered partition:
        remote-only segments, then local ones, from the front."""
        cfg = p.config
        out = RetentionResult(start_offset=p.start_offset)
        ms, max_bytes = cfg["retention.ms"], cfg["retention.bytes"]
        if ms < 0 and max_bytes < 0:
            return out
        now = _now_ms() if now_ms is None else now_ms
        local = p.segments
        local_base = local[0].base_offset
        remote = [s for s in p.remote_segments if s.base_offset < local_base]
        whole = remote + local[:-1]
        by_time = 0
        if ms >= 0:
            for s in whole:
                ts = _largest_timestamp(s) if isinstance(s, LogSegment) else s.max_timestamp
                if now - ts <= ms:
                    break
                by_time += 1
        by_size = 0
        if max_bytes >= 0:
            diff = sum(s.size for s in remote) + sum(s.size for s in local) - max_bytes
            for s in whole:
                if diff - s.size < 0:
                    break
                diff -= s.size
                by_size += 1
        n = max(by_time, by_size)
        if n == 0:
            return out
        gone = whole[:n]
        last = gone[-1].next_offset
        # Remote copies of everything below ``last`` go too (local segments uploaded).
        metas = [s.meta for s in p.remote_segments if s.next_offset <= last]
        doomed_local = [s for s in gone if isinstance(s, LogSegment)]
        with p.lock:
            if doomed_local:
                premap(doomed_local)
                p.replace_segments(local[len(doomed_local):])
            p.set_remote([s for s in p.remote_segments if s.next_offset > last])
        if doomed_local:
            retire(doomed_local)
            _delete_files(p.directory, doomed_local)
        failed = None
        for m in metas:
            try:
                self._delete_remote(m)
            except RemoteStorageError as e:  # retried by the next round's _settle_interrupted
                failed = e
        if failed is not None:
            self._note_error(failed)
        out.segments = n
        out.bytes = sum(s.size for s in gone)
        out.start_offset = p.start_offset
        log.info("%s-%d: retention deleted %d segment(s) (%d remote), %d bytes; start offset now %d",
                 p.topic, p.index, n, len(gone) - len(doomed_local), out.bytes, out.start_offset)
        return out

    def delete_topic(self, name: str) -> None:
        """A deleted topic's remote segments are deleted by the next round (their topic id is gone)."""
        self.kick()

    # -- status -------------------------------------------------------------------------

    def status(self, topic: str | None = None) -> list[dict]:
        """Per tiered partition: local and remote ranges and sizes, the backlog."""
        out = []
        for t in list(self.broker._topics.values()):
            if topic is not None and t.name != topic or t.name.startswith("__"):
                continue
            if not t.config["remote.storage.enable"] and not any(p.remote_segments for p in t.partitions):
                continue
            for p in t.partitions:
                out.append(partition_status(t, p, self.entries.get((t.name, p.index), {})))
        return out

    def close(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join()
        if self._pool is not None:
            self._pool.shutdown(wait=True)


def partition_status(t, p, entries: Mapping[int, SegmentMeta]) -> dict:
    remote = [m for m in entries.values() if m.state == "copy_finished" and m.topic_id == t.id]
    remote.sort(key=lambda m: m.base)
    local = p.segments
    backlog = [s for s in local[:-1] if s.size and not any(
        m.base == s.base_offset and m.next == s.next_offset for m in remote)]
    return {
        "topic": t.name, "partition": p.index,
        "start_offset": p.start_offset, "end_offset": p.end_offset,
        "local_start": local[0].base_offset if local else p.end_offset,
        "local_segments": len(local), "local_bytes": sum(s.size for s in local),
        "remote_start": remote[0].start if remote else None,
        "remote_end": remote[-1].next if remote else None,
        "remote_segments": len(remote), "remote_bytes": sum(m.size for m in remote),
        "backlog_segments": len(backlog), "backlog_bytes": sum(s.size for s in backlog),
        "pending": sum(1 for m in entries.values() if m.state != "copy_finished"),
    }


def find_remote(segs: list, offset: int):
    """The first remote segment ending after ``offset`` (index into ``segs``)."""
    return bisect_right(segs, offset, key=_next_offset)
