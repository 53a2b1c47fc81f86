# Compaction (umlog/log/cleaner.py): the keys of records as 128-bit hashes,
# and batches rewritten to keep a subset of their records, offsets unchanged.
#
# A kept record's bytes are copied as they are: a record stores its timestamp
# and offset as deltas from its batch's baseTimestamp and baseOffset, and a
# rewritten batch keeps both (and lastOffsetDelta, the producer fields and the
# codec), so only recordsCount, maxTimestamp, the length and the CRC change:
#
#   in   [base 100, last 104 | r100 r101 r102 r103 r104]    keep 101, 104
#   out  [base 100, last 104 | r101 r104]                   count 2, CRC new
#
# A batch left with no record joins a run of such batches, written as ONE
# empty batch (recordsCount 0, timestamps -1, producer -1) spanning the run's
# offsets, as Kafka keeps empty batches to preserve offsets. So a cleaned
# segment stays offset-contiguous batch to batch, exactly like a segment that
# was never cleaned: recovery's contiguity check, the index and every reader
# work unchanged.

from libc.stdlib cimport calloc

import numpy as _cnp

cdef uint64_t HASH_M1 = 0x9E3779B97F4A7C15ULL
cdef uint64_t HASH_M2 = 0xC2B2AE3D27D4EB4FULL
cdef uint64_t HASH_M3 = 0x165667B19E3779F9ULL
cdef uint64_t HASH_M4 = 0xD6E8FEB86659FD93ULL


cdef inline uint64_t rotl64(uint64_t x, int r) noexcept nogil:
    return (x << r) | (x >> (64 - r))


cdef inline uint64_t fmix64(uint64_t k) noexcept nogil:
    k ^= k >> 33
    k *= 0xFF51AFD7ED558CCDULL
    k ^= k >> 33
    k *= 0xC4CEB9FE1A85EC53ULL
    k ^= k >> 33
    return k


cdef inline void key_hash128(const char *p, Py_ssize_t n, uint64_t *h1,
                             uint64_t *h2) noexcept nogil:
    """Two 64-bit lanes over the key's 8-byte words, seeded with its length.

    Each step is a bijection of a lane for a fixed word and of the word for a
    fixed lane, so keys of equal length that differ in one word (every key of
    at most 8 bytes) never collide in either lane. Not cryptographic: the
    cleaner treats equal h1 with different h2 as a collision and keeps both
    keys' records (see cleaner.py).
    """
    cdef uint64_t a = HASH_M1 ^ (<uint64_t>n * HASH_M3)
    cdef uint64_t b = HASH_M2 ^ (<uint64_t>n * HASH_M4)
    cdef uint64_t w
    cdef Py_ssize_t i = 0
    while i + 8 <= n:
        memcpy(&w, p + i, 8)
        a = rotl64(a ^ (w * HASH_M2), 31) * HASH_M1
        b = rotl64(b ^ (w * HASH_M4), 27) * HASH_M3
        i += 8
    if i < n:
        w = 0
        memcpy(&w, p + i, <size_t>(n - i))
        a = rotl64(a ^ (w * HASH_M2), 31) * HASH_M1
        b = rotl64(b ^ (w * HASH_M4), 27) * HASH_M3
    h1[0] = fmix64(a)
    h2[0] = fmix64(b ^ rotl64(a, 23))


def key_hash(key):
    """(h1, h2): the 128-bit hash the cleaner uses for ``key`` (for tests)."""
    cdef Py_buffer view
    cdef uint64_t h1, h2
    get_buffer(key, &view, False)
    try:
        key_hash128(<const char *>view.buf, view.len, &h1, &h2)
    finally:
        PyBuffer_Release(&view)
    return h1, h2


cdef object records_section(const char *base, Py_ssize_t pos, BatchHeader *h,
                            const char **p, const char **e):
    """Point p/e at the batch's (decompressed) records; returns the owner of
    the decompressed bytes (None when the batch is not compressed)."""
    cdef int codec = h.attributes & C_CODEC_MASK
    p[0] = base + pos + C_BATCH_HEADER_SIZE
    e[0] = base + pos + C_LOG_OVERHEAD + h.batch_length
    if codec == C_CODEC_NONE:
        return None
    data = decompress_records(codec, p[0], e[0] - p[0], pos)
    if not isinstance(data, bytes):
        data = bytes(data)
    p[0] = PyBytes_AS_STRING(data)
    e[0] = p[0] + PyBytes_GET_SIZE(data)
    return data


cdef Py_ssize_t walk_batch(const char *base, Py_ssize_t pos, Py_ssize_t end,
                           BatchHeader *h) except -2:
    """Size of the whole batch at pos (header checked, no CRC), -1 if cut off."""
    cdef Py_ssize_t avail = end - pos, size
    cdef int32_t blen
    if avail < C_LOG_OVERHEAD:
        return -1
    blen = <int32_t>umlog_load_be32(base + pos + LENGTH_OFFSET)
    if blen < C_MIN_BATCH_LENGTH:
        raise CorruptBatchError(
            f"bad batchLength {blen} < {C_MIN_BATCH_LENGTH} at position {pos}", pos)
    size = <Py_ssize_t>blen + C_LOG_OVERHEAD
    if size > avail:
        return -1
    check_batch(base, pos, end, False, h)
    if h.records_count < 0 or h.records_count > size:
        raise CorruptBatchError(
            f"bad record count {h.records_count} in batch at position {pos}", pos)
    return size


def record_keys(buf, Py_ssize_t pos=0, Py_ssize_t end=-1):
    """The records of the whole batches in [pos, end), control batches skipped.

    :return: ``(next_pos, offsets, h1, h2, flags)``: numpy arrays, one entry
        per record in log order (int64, uint64, uint64, uint8). flags bit 0:
        the key is null (h1 = h2 = 0); bit 1: the value is null (a tombstone).
        ``filter_batches`` numbers records the same way.
    :raises CorruptBatchError: a malformed batch or record
    """
    cdef Py_buffer view
    cdef BatchHeader h
    cdef const char *base
    cdef const char *p
    cdef const char *e
    cdef Py_ssize_t start = pos, size, total = 0, k = 0
    cdef int32_t i
    cdef RecView r
    cdef int err = 0
    cdef uint64_t a, b
    cdef uint8_t f
    cdef int64_t[::1] offs
    cdef uint64_t[::1] h1
    cdef uint64_t[::1] h2
    cdef uint8_t[::1] flags
    get_buffer(buf, &view, False)
    try:
        end = resolve_end(view.len, pos, end)
        base = <const char *>view.buf
        while True:
            size = walk_batch(base, pos, end, &h)
            if size < 0:
                break
            if not h.attributes & C_ATTR_CONTROL:
                total += h.records_count
            pos += size
        next_pos = pos
        o_arr = _cnp.empty(total, dtype=_cnp.int64)
        h1_arr = _cnp.empty(total, dtype=_cnp.uint64)
        h2_arr = _cnp.empty(total, dtype=_cnp.uint64)
        f_arr = _cnp.empty(total, dtype=_cnp.uint8)
        offs, h1, h2, flags = o_arr, h1_arr, h2_arr, f_arr
        pos = start
        while pos < next_pos:
            size = walk_batch(base, pos, end, &h)
            if h.attributes & C_ATTR_CONTROL:
                pos += size
                continue
            owner = records_section(base, pos, &h, &p, &e)
            for i in range(h.records_count):
                p = parse_record(p, e, &r, &err)
                if p == NULL:
                    raise record_error(err, i, pos)
                offs[k] = h.base_offset + r.offset_delta
                f = 0
                if r.key_len >= 0:
                    key_hash128(r.key, r.key_len, &a, &b)
                else:
                    a = b = 0
                    f = 1
                if r.value_len < 0:
                    f |= 2
                h1[k] = a
                h2[k] = b
                flags[k] = f
                k += 1
            if p != e:
                raise CorruptBatchError(
                    f"{e - p} bytes left over after {h.records_count} records "
                    f"in batch at position {pos}", pos)
            pos += size
        return next_pos, o_arr, h1_arr, h2_arr, f_arr
    finally:
        PyBuffer_Release(&view)


@cython.final
cdef class BatchFilter:
    """Rewrites batches keeping the records a mask selects (see the top of
    compact.pyx). One filter per output segment: a run of emptied batches may
    continue from one ``filter`` call to the next; ``finish`` ends it.

    Not thread-safe.
    """

    cdef GrowBuf out
    cdef bint in_run
    cdef int64_t run_base
    cdef int64_t run_last
    cdef int32_t run_epoch
    cdef readonly Py_ssize_t records_in
    cdef readonly Py_ssize_t records_kept
    cdef readonly Py_ssize_t batches_in
    cdef readonly Py_ssize_t batches_out

    def __dealloc__(self):
        free(self.out.data)

    cdef int put(self, const char *p, Py_ssize_t n) except -1:
        if grow_reserve(&self.out, n) < 0:
            raise MemoryError()
        memcpy(self.out.data + self.out.len, p, <size_t>n)
        self.out.len += n
        return 0

    cdef int end_run(self) except -1:
        cdef char hdr[C_BATCH_HEADER_SIZE]
        if not self.in_run:
            return 0
        memset(hdr, 0, C_BATCH_HEADER_SIZE)
        write_batch_header(hdr, C_BATCH_HEADER_SIZE, self.run_base, self.run_epoch, 0,
                           <int32_t>(self.run_last - self.run_base), -1, -1, -1, -1, -1, 0)
        self.put(hdr, C_BATCH_HEADER_SIZE)
        self.in_run = False
        self.batches_out += 1
        return 0

    cdef int add_to_run(self, BatchHeader *h) except -1:
        cdef int64_t last = h.base_offset + h.last_offset_delta
        if self.in_run and (h.base_offset != self.run_last + 1
                            or last - self.run_base > INT32_MAX):
            self.end_run()
        if not self.in_run:
            self.in_run = True
            self.run_base = h.base_offset
            self.run_epoch = h.partition_leader_epoch
        self.run_last = last
        return 0

    cdef int rewrite(self, const char *base, Py_ssize_t pos, BatchHeader *h,
                     const uint8_t *keep) except -1:
        """The batch at pos with only the records whose keep[i] is set."""
        cdef const char *p
        cdef const char *e
        cdef const char *rec
        cdef RecView r
        cdef int err = 0
        cdef int32_t i, kept = 0
        cdef int64_t max_ts = -1, ts
        cdef bint log_append = (h.attributes & C_ATTR_TIMESTAMP_TYPE) != 0
        cdef int codec = h.attributes & C_CODEC_MASK
        cdef GrowBuf raw
        cdef Py_ssize_t total, start
        cdef Py_buffer cview
        memset(&raw, 0, sizeof(GrowBuf))
        owner = records_section(base, pos, h, &p, &e)
        try:
            for i in range(h.records_count):
                rec = p
                p = parse_record(p, e, &r, &err)
                if p == NULL:
                    raise record_error(err, i, pos)
                if not keep[i]:
                    continue
                if grow_reserve(&raw, p - rec) < 0:
                    raise MemoryError()
                memcpy(raw.data + raw.len, rec, <size_t>(p - rec))
                raw.len += p - rec
                kept += 1
                ts = h.base_timestamp + r.timestamp_delta
                if ts > max_ts:
                    max_ts = ts
            if log_append:
                max_ts = h.max_timestamp
            start = self.out.len
            if codec == C_CODEC_NONE:
                total = C_BATCH_HEADER_SIZE + raw.len
                if grow_reserve(&self.out, total) < 0:
                    raise MemoryError()
                memcpy(self.out.data + start + C_BATCH_HEADER_SIZE, raw.data, <size_t>raw.len)
            else:
                compressed = compress_records(
                    codec, PyBytes_FromStringAndSize(raw.data, raw.len))
                get_buffer(compressed, &cview, False)
                try:
                    total = C_BATCH_HEADER_SIZE + cview.len
                    if grow_reserve(&self.out, total) < 0:
                        raise MemoryError()
                    memcpy(self.out.data + start + C_BATCH_HEADER_SIZE, cview.buf,
                           <size_t>cview.len)
                finally:
                    PyBuffer_Release(&cview)
            check_len(total - C_LOG_OVERHEAD, "a batch")
            write_batch_header(self.out.data + start, total, h.base_offset,
                               h.partition_leader_epoch, h.attributes, h.last_offset_delta,
                               h.base_timestamp, max_ts, h.producer_id, h.producer_epoch,
                               h.base_sequence, kept)
            self.out.len = start + total
            self.batches_out += 1
        finally:
            free(raw.data)
        return 0

    def filter(self, buf, Py_ssize_t pos, Py_ssize_t end, keep):
        """Filter the whole batches in [pos, end), numbered as record_keys
        numbers them; ``keep`` is a uint8 array with one entry per record.

        :return: ``(data, next_pos)``: the rewritten bytes (possibly empty,
            when a run of emptied batches is still open) and the position
            after the last whole batch.
        """
        cdef Py_buffer view
        cdef BatchHeader h
        cdef const char *base
        cdef Py_ssize_t size, k = 0, nkeep, i
        cdef int32_t kept
        cdef const uint8_t[::1] mask = keep
        nkeep = mask.shape[0]
        get_buffer(buf, &view, False)
        try:
            end = resolve_end(view.len, pos, end)
            base = <const char *>view.buf
            self.out.len = 0
            while True:
                size = walk_batch(base, pos, end, &h)
                if size < 0:
                    break
                self.batches_in += 1
                if h.attributes & C_ATTR_CONTROL:
                    self.end_run()
                    self.put(base + pos, size)
                    self.batches_out += 1
                    pos += size
                    continue
                if k + h.records_count > nkeep:
                    raise ValueError(f"the mask has {nkeep} entries; the batches hold more records")
                kept = 0
                for i in range(h.records_count):
                    if mask[k + i]:
                        kept += 1
                self.records_in += h.records_count
                self.records_kept += kept
                if kept == 0:
                    self.add_to_run(&h)
                elif kept == h.records_count:
                    self.end_run()
                    self.put(base + pos, size)
                    self.batches_out += 1
                else:
                    self.end_run()
                    self.rewrite(base, pos, &h, &mask[k])
                k += h.records_count
                pos += size
            if k != nkeep:
                raise ValueError(f"the mask has {nkeep} entries for {k} records")
            return PyBytes_FromStringAndSize(self.out.data, self.out.len), pos
        finally:
            self.out.len = 0
            PyBuffer_Release(&view)

    def finish(self):
        """End an open run of emptied batches; returns its bytes (maybe b"")."""
        self.out.len = 0
        self.end_run()
        data = PyBytes_FromStringAndSize(self.out.data, self.out.len)
        self.out.len = 0
        return data


def drop_records(buf, Py_ssize_t pos, keep):
    """The batch at ``pos`` without the records whose ``keep`` entry (a uint8
    array, one per record) is 0, as new bytes: baseOffset, lastOffsetDelta, the
    producer fields (id, epoch, baseSequence), baseTimestamp and the codec kept,
    so the offsets of the dropped records become gaps, as after compaction, and
    an idempotent producer's sequence range is unchanged. A batch left with no
    record is written empty (recordsCount 0, no records section, codec none).
    Delayed delivery takes its delayed records out of a producer's batch this
    way (umlog/delivery/delay.py).
    """
    cdef Py_buffer view
    cdef BatchHeader h
    cdef BatchFilter f
    cdef const char *base
    cdef const uint8_t[::1] mask = keep
    cdef Py_ssize_t size, i, kept = 0
    cdef char hdr[C_BATCH_HEADER_SIZE]
    get_buffer(buf, &view, False)
    try:
        base = <const char *>view.buf
        size = walk_batch(base, pos, view.len, &h)
        if size < 0:
            raise CorruptBatchError(f"truncated batch at position {pos}", pos)
        if mask.shape[0] != h.records_count:
            raise ValueError(f"the mask has {mask.shape[0]} entries for {h.records_count} records")
        for i in range(h.records_count):
            if mask[i]:
                kept += 1
        if kept == h.records_count:
            return PyBytes_FromStringAndSize(base + pos, size)
        if kept == 0:
            memset(hdr, 0, C_BATCH_HEADER_SIZE)
            write_batch_header(hdr, C_BATCH_HEADER_SIZE, h.base_offset, h.partition_leader_epoch,
                               <int16_t>(h.attributes & ~C_CODEC_MASK), h.last_offset_delta,
                               h.base_timestamp, h.max_timestamp, h.producer_id,
                               h.producer_epoch, h.base_sequence, 0)
            return PyBytes_FromStringAndSize(hdr, C_BATCH_HEADER_SIZE)
        f = BatchFilter()
        f.rewrite(base, pos, &h, &mask[0])
        return PyBytes_FromStringAndSize(f.out.data, f.out.len)
    finally:
        PyBuffer_Release(&view)


# ---- the offset map ---------------------------------------------------------------

cdef struct KeySlot:
    uint64_t h1
    uint64_t h2
    int64_t offset
    uint64_t state          # 0 empty, 1 used, 3 used and collided


@cython.final
cdef class KeyMap:
    """The newest offset of each key, keyed by the 128-bit hash of record_keys.

    Open addressing with linear probing on h1 (already a mixed hash), at most
    2/3 full: 32 bytes a slot, so 48 to 96 bytes per distinct key. Two keys
    with equal h1 and different h2 are a collision: the slot is marked, and
    the cleaner keeps every record of such keys (a collision costs
    compaction, never data). Measured once, 1.5M records of 100k keys on a
    loaded 2-core machine: a numpy map (argsort by h1, reduceat) took
    ~0.3-0.45 s, this one ~0.1 s (~14M records/s); the numpy variant is not
    kept in the repository. Whole cleanings: ``python bench/compaction.py``. Not thread-safe.
    """

    cdef KeySlot *slots
    cdef Py_ssize_t cap
    cdef Py_ssize_t count
    cdef readonly Py_ssize_t collisions

    def __cinit__(self):
        self.cap = 1024
        self.slots = <KeySlot *>calloc(<size_t>self.cap, sizeof(KeySlot))
        if self.slots == NULL:
            raise MemoryError()

    def __dealloc__(self):
        free(self.slots)

    def __len__(self):
        return self.count

    cdef int grow(self) except -1:
        cdef Py_ssize_t ncap = self.cap * 2, i, j
        cdef KeySlot *ns = <KeySlot *>calloc(<size_t>ncap, sizeof(KeySlot))
        if ns == NULL:
            raise MemoryError(f"the compaction offset map of {self.count} keys does not fit in memory")
        for i in range(self.cap):
            if self.slots[i].state:
                j = <Py_ssize_t>(self.slots[i].h1 & <uint64_t>(ncap - 1))
                while ns[j].state:
                    j = (j + 1) & (ncap - 1)
                ns[j] = self.slots[i]
        free(self.slots)
        self.slots = ns
        self.cap = ncap
        return 0

    cdef inline Py_ssize_t find(self, uint64_t h1) noexcept nogil:
        """The slot of h1, or the empty slot where it would go."""
        cdef Py_ssize_t j = <Py_ssize_t>(h1 & <uint64_t>(self.cap - 1))
        while self.slots[j].state and self.slots[j].h1 != h1:
            j = (j + 1) & (self.cap - 1)
        return j

    def add(self, const int64_t[::1] offsets, const uint64_t[::1] h1, const uint64_t[::1] h2,
            const uint8_t[::1] flags):
        """Add records (arrays as record_keys returns them, in offset order);
        keyless records are skipped. A later offset replaces an earlier one."""
        cdef Py_ssize_t n = offsets.shape[0], i, j
        cdef KeySlot *s
        if h1.shape[0] != n or h2.shape[0] != n or flags.shape[0] != n:
            raise ValueError("offsets, h1, h2 and flags must have one length")
        for i in range(n):
            if flags[i] & 1:
                continue
            if (self.count + 1) * 3 > self.cap * 2:
                self.grow()
            j = self.find(h1[i])
            s = &self.slots[j]
            if not s.state:
                s.state = 1
                s.h1 = h1[i]
                s.h2 = h2[i]
                s.offset = offsets[i]
                self.count += 1
                continue
            if s.h2 != h2[i] and not (s.state & 2):
                s.state |= 2
                self.collisions += 1
            if offsets[i] > s.offset:
                s.offset = offsets[i]

    def winners(self):
        """Sorted int64 array: the newest offset of every key without a collision."""
        out = _cnp.empty(self.count, dtype=_cnp.int64)
        cdef int64_t[::1] o = out
        cdef Py_ssize_t i, k = 0
        for i in range(self.cap):
            if self.slots[i].state == 1:
                o[k] = self.slots[i].offset
                k += 1
        out = out[:k]
        out.sort()
        return out

    def collided(self):
        """uint64 array: h1 of the keys with a collision."""
        out = _cnp.empty(self.collisions, dtype=_cnp.uint64)
        cdef uint64_t[::1] o = out
        cdef Py_ssize_t i, k = 0
        for i in range(self.cap):
            if self.slots[i].state == 3 and k < self.collisions:
                o[k] = self.slots[i].h1
                k += 1
        return out[:k]

    def superseded(self, const int64_t[::1] offsets, const uint64_t[::1] h1):
        """uint8 array: 1 where a record's key is in the map, without a
        collision, with a newer offset than the record's."""
        cdef Py_ssize_t n = offsets.shape[0], i, j
        if h1.shape[0] != n:
            raise ValueError("offsets and h1 must have one length")
        out = _cnp.zeros(n, dtype=_cnp.uint8)
        cdef uint8_t[::1] o = out
        with nogil:
            for i in range(n):
                j = self.find(h1[i])
                if self.slots[j].state == 1 and self.slots[j].offset > offsets[i]:
                    o[i] = 1
        return out
