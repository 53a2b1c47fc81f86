# The per-record append path: a partition's open batch, its offset counter and
# the lock that guards both, plus a topic-level router, native end to end.
#
# Why native: an embedded `Topic.append(value)` must cost a few hundred ns to
# beat sqlite's executemany 6x per record (bench/embedded.py). A Python
# Partition.append (method call + threading.Lock + builder call + namedtuple)
# measured ~1.0 us; this path is one Python call into TopicAppender.append.

from cpython.pythread cimport (PyThread_type_lock, PyThread_allocate_lock,
                               PyThread_free_lock, PyThread_acquire_lock,
                               PyThread_release_lock, WAIT_LOCK, NOWAIT_LOCK)
from posix.time cimport CLOCK_MONOTONIC
from cpython.list cimport PyList_CheckExact
from cpython.tuple cimport PyTuple_CheckExact


cdef inline double monotonic_s() noexcept nogil:
    cdef timespec ts
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return <double>ts.tv_sec + <double>ts.tv_nsec * 1e-9


@cython.freelist(256)
@cython.final
@cython.no_gc
cdef class RecordMetadata:
    """Where an appended record went: ``(partition, offset, timestamp)``.

    Behaves like a 3-tuple (indexing, unpacking, equality with tuples).
    """

    cdef readonly int partition
    cdef readonly int64_t offset
    cdef readonly int64_t timestamp

    def __init__(self, int partition, int64_t offset, int64_t timestamp):
        self.partition = partition
        self.offset = offset
        self.timestamp = timestamp

    cdef tuple _tuple(self):
        return (self.partition, self.offset, self.timestamp)

    def __len__(self):
        return 3

    def __getitem__(self, i):
        return self._tuple()[i]

    def __iter__(self):
        return iter(self._tuple())

    def __eq__(self, other):
        if isinstance(other, RecordMetadata):
            return self._tuple() == (<RecordMetadata>other)._tuple()
        if isinstance(other, tuple):
            return self._tuple() == other
        return NotImplemented

    def __hash__(self):
        return hash(self._tuple())

    def __reduce__(self):
        return (RecordMetadata, self._tuple())

    def __repr__(self):
        return (f"RecordMetadata(partition={self.partition}, offset={self.offset}, "
                f"timestamp={self.timestamp})")


cdef inline RecordMetadata make_metadata(int partition, int64_t offset, int64_t ts):
    cdef RecordMetadata md = RecordMetadata.__new__(RecordMetadata)
    md.partition = partition
    md.offset = offset
    md.timestamp = ts
    return md


@cython.final
cdef class OpenBatch:
    """A partition's open per-record batch, its next offset, and its lock.

    The lock guards the builder, ``next_offset`` and everything the owning
    Partition does to its segments: the Partition uses this object as its
    lock (``with open_batch: ...``). It is a plain non-reentrant lock; a
    contended acquire releases the GIL while it waits.

    ``next_offset`` is the next offset to give out; the builder's records
    hold the offsets ``[next_offset - count, next_offset)``.
    """

    cdef PyThread_type_lock _lock
    cdef readonly BatchBuilder builder
    cdef public int64_t next_offset
    cdef public Py_ssize_t seal_bytes
    cdef double _since

    def __cinit__(self, int codec=0, int64_t next_offset=0, Py_ssize_t seal_bytes=65536):
        self._lock = PyThread_allocate_lock()
        if self._lock == NULL:
            raise MemoryError()
        self.builder = BatchBuilder(codec)
        self.next_offset = next_offset
        self.seal_bytes = seal_bytes
        self._since = 0.0

    def __dealloc__(self):
        if self._lock != NULL:
            PyThread_free_lock(self._lock)
            self._lock = NULL

    cdef inline void acquire(self) noexcept:
        if not PyThread_acquire_lock(self._lock, NOWAIT_LOCK):
            with nogil:
                PyThread_acquire_lock(self._lock, WAIT_LOCK)

    cdef inline void release(self) noexcept:
        PyThread_release_lock(self._lock)

    def __enter__(self):
        self.acquire()
        return self

    def __exit__(self, *exc):
        self.release()
        return False

    def locked(self):
        """True if some thread holds the lock (for assertions and tests)."""
        if PyThread_acquire_lock(self._lock, NOWAIT_LOCK):
            PyThread_release_lock(self._lock)
            return False
        return True

    @property
    def count(self):
        return self.builder._count

    @property
    def base_offset(self):
        """Offset of the open batch's first record."""
        return self.next_offset - self.builder._count

    @property
    def since(self):
        """time.monotonic() of the open batch's first record (0.0 when empty)."""
        return self._since if self.builder._count else 0.0

    def set_codec(self, int codec):
        """Change the codec of batches opened from now on (lock held, empty batch)."""
        if self.builder._count:
            raise ValueError("set_codec needs an empty open batch")
        self.builder = BatchBuilder(codec)

    cdef inline tuple _add(self, value, key, headers, timestamp):
        if self.builder._count == 0:
            self._since = monotonic_s()
        ts = self.builder._add(value, key, headers, timestamp)
        cdef int64_t offset = self.next_offset
        self.next_offset = offset + 1
        return (offset, ts)

    def add(self, value, key=None, headers=None, timestamp=None):
        """Append one record to the open batch (the caller holds the lock).

        :return: (offset, timestamp)
        """
        return self._add(value, key, headers, timestamp)

    @property
    def full(self):
        return self.builder._count > 0 and self.builder.length + C_BATCH_HEADER_SIZE >= self.seal_bytes


@cython.final
cdef class TopicAppender:
    """Routes one record to a partition and appends it, under that partition's lock.

    Routing: ``partition`` if given; else the murmur2 partition of the key
    (Kafka's Java default partitioner); else a sticky partition that moves on
    when its open batch was sealed (Kafka's sticky partitioner, KIP-480).
    ``on_full(partition)`` is called (without the lock) after an append
    filled that partition's open batch to ``seal_bytes``.
    """

    cdef list batches
    cdef Py_ssize_t n
    cdef Py_ssize_t sticky
    cdef object on_full
    cdef object delayed

    def set_delayed(self, fn):
        """``fn(value, key, headers, timestamp, partition)`` takes over a record
        whose headers hold a delay key (umlog/delivery/delay.py); None: no check."""
        self.delayed = fn

    def __init__(self, list batches, on_full):
        self.set_batches(batches)
        self.on_full = on_full
        self.sticky = 0

    def set_batches(self, list batches):
        for b in batches:
            if not isinstance(b, OpenBatch):
                raise TypeError("batches must be OpenBatch objects")
        if not batches:
            raise ValueError("a topic has at least one partition")
        self.batches = list(batches)
        self.n = len(batches)

    cdef Py_ssize_t _route(self, key) except -1:
        cdef Py_buffer view
        cdef int32_t h
        cdef Py_ssize_t p
        if key is not None:
            if PyBytes_CheckExact(key):
                h = murmur2_mem(<const unsigned char *>PyBytes_AS_STRING(key), PyBytes_GET_SIZE(key))
            else:
                PyObject_GetBuffer(key, &view, PyBUF_SIMPLE)
                try:
                    h = murmur2_mem(<const unsigned char *>view.buf, view.len)
                finally:
                    PyBuffer_Release(&view)
            return (h & 0x7fffffff) % self.n
        p = self.sticky
        if p >= self.n:
            p = 0
        if self.n > 1 and (<OpenBatch>self.batches[p]).builder._count == 0:
            p = (p + 1) % self.n
        self.sticky = p
        return p

    def append(self, value, key=None, headers=None, timestamp=None, partition=None):
        """Append one record; returns RecordMetadata(partition, offset, timestamp)."""
        cdef Py_ssize_t p
        cdef OpenBatch ob
        cdef int64_t offset
        cdef bint full
        if headers is not None:
            if not (PyList_CheckExact(headers) or PyTuple_CheckExact(headers)):
                headers = list(headers)  # run a generator's Python code before taking the lock
            if self.delayed is not None and record_has_delay(headers):
                return self.delayed(value, key, headers, timestamp, partition)
        if partition is None:
            p = self._route(key)
        else:
            p = partition
            if p < 0 or p >= self.n:
                raise IndexError(f"no partition {partition} (the topic has {self.n})")
        ob = <OpenBatch>self.batches[p]
        ob.acquire()
        try:
            if ob.builder._count == 0:
                ob._since = monotonic_s()
            ts = ob.builder._add(value, key, headers, timestamp)
            offset = ob.next_offset
            ob.next_offset = offset + 1
            full = ob.builder.length + C_BATCH_HEADER_SIZE >= ob.seal_bytes
        finally:
            ob.release()
        if full:
            self.on_full(p)
        return make_metadata(<int>p, offset, PyLong_AsLongLong(ts))
