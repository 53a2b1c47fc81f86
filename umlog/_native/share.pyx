# Share groups' per-record paths (umlog/delivery/group.py and state.py): the
# window entry, the record handed out, the state bytes, and the loops that touch
# every record of an acquire or an ack. In Python each of them cost a frame per
# record; the group calls these once per batch, under its lock.

# Entry states as umlog/delivery/state.py numbers them; the sizes of its state
# value's head and of one entry.
cdef enum:
    _AVAILABLE = 0
    _ACQUIRED = 1
    _ACKED = 2
    _ARCHIVED = 3
    _HEAD_SIZE = 22
    _ENTRY_SIZE = 15


@cython.freelist(1024)
@cython.final
cdef class ShareEntry:
    """One fetched offset's state in a share-group window (``state.Entry``).

    ``state``, ``count`` (deliveries) and ``aux`` are durable; ``deadline``
    (monotonic seconds) and ``owner`` (the handle holding the lock) are the
    lock, in memory only."""

    cdef public int state
    cdef public int count
    cdef public int64_t aux
    cdef public double deadline
    cdef public object owner

    def __init__(self, int state, int count, int64_t aux=0):
        self.state = state
        self.count = count
        self.aux = aux
        self.deadline = 0.0
        self.owner = None

    def __repr__(self):
        names = ("available", "acquired", "acked", "archived", "dead_pending")
        name = names[self.state] if 0 <= self.state < len(names) else str(self.state)
        return f"Entry({name}, count={self.count}, aux={self.aux})"


@cython.freelist(1024)
@cython.final
cdef class ShareRecord:
    """A record handed out by a share group's ``acquire``: the log's record plus
    where it is from and how many times it has been handed out (1 the first time)."""

    cdef public int64_t offset
    cdef public int64_t timestamp
    cdef public object key
    cdef public object value
    cdef public object headers
    cdef public object topic
    cdef public int partition
    cdef public int delivery_count

    def __init__(self, r, topic, int partition, int delivery_count):
        self.offset = r.offset
        self.timestamp = r.timestamp
        self.key = r.key
        self.value = r.value
        self.headers = r.headers
        self.topic = topic
        self.partition = partition
        self.delivery_count = delivery_count

    def __repr__(self):
        return (f"<ShareRecord {self.topic}-{self.partition}@{self.offset} "
                f"delivery {self.delivery_count} value={self.value!r:.40}>")


cdef inline ShareRecord _share_record(Record r, object topic, int partition, int count):
    cdef ShareRecord s = ShareRecord.__new__(ShareRecord)
    s.offset = r.offset
    s.timestamp = r.timestamp
    s.key = r.key
    s.value = r.value
    s.headers = r.headers
    s.topic = topic
    s.partition = partition
    s.delivery_count = count
    return s


def share_take_fresh(list fresh, dict entries, handle, double deadline, topic, int partition,
                     int64_t limit, why_dead, int64_t now_w, list out, list dead, window):
    """Lock never-delivered records (``fresh``, in offset order) to ``handle``:
    a new ACQUIRED entry (delivery 1) for each offset below ``limit``, its
    ShareRecord appended to ``out``. A record with headers may be dead at once
    (``why_dead(record, 1, now_w)``, a TTL): its entry waits AVAILABLE with
    count 0 and ``(window, offset, record, why)`` goes to ``dead``.
    Returns the offset after the last one taken, or -1 if none."""
    cdef Record r
    cdef ShareEntry e
    cdef int64_t o, end = -1
    for x in fresh:
        r = <Record?>x
        o = r.offset
        if o >= limit:
            break
        end = o + 1
        e = ShareEntry.__new__(ShareEntry)
        e.state = _ACQUIRED
        e.count = 1
        entries[o] = e
        if r.headers:
            why = why_dead(r, 1, now_w)
            if why:
                e.state = _AVAILABLE
                e.count = 0
                dead.append((window, o, r, why))
                continue
        e.owner = handle
        e.deadline = deadline
        out.append(_share_record(r, topic, partition, 1))
    return end


def share_ack(list records, handle, dict windows, double now_m):
    """Mark ACKED every record of ``records`` (ShareRecords of ``acquire``) if each
    is held by ``handle``: acquired through it, this delivery, its lock not
    expired. Returns the set of windows changed; None (nothing changed) if one
    is not held or not a ShareRecord (the caller says why)."""
    cdef ShareRecord s
    cdef ShareEntry e
    cdef list held = []
    cdef set dirty = set()
    cdef object last_topic = None
    cdef int last_partition = -1
    cdef object w = None
    cdef dict entries = None
    for x in records:
        if type(x) is not ShareRecord:
            return None
        s = <ShareRecord>x
        if w is None or s.partition != last_partition or s.topic != last_topic:
            w = windows.get((s.topic, s.partition))
            if w is None:
                return None
            entries = w.entries
            last_topic, last_partition = s.topic, s.partition
            dirty.add(w)
        y = entries.get(s.offset)
        if y is None:
            return None
        e = <ShareEntry>y
        if e.state != _ACQUIRED or e.owner is not handle or e.count != s.delivery_count or e.deadline <= now_m:
            return None
        held.append(e)
    for y in held:
        e = <ShareEntry>y
        e.state = _ACKED
        e.owner = None
    return dirty


def share_scan_window(dict entries, double now_m, int64_t now_w):
    """One pass over a window's entries: (offsets AVAILABLE now, in entry order;
    offsets ACQUIRED whose lock expired)."""
    cdef ShareEntry e
    cdef list ready = [], expired = []
    for o, y in entries.items():
        e = <ShareEntry?>y
        if e.state == _ACQUIRED:
            if e.deadline <= now_m:
                expired.append(o)
        elif e.state == _AVAILABLE and e.aux <= now_w:
            ready.append(o)
    return ready, expired


def share_advance(dict entries, int64_t start, int64_t end):
    """The new start of a window: past the done (ACKED, ARCHIVED) entries and the
    gaps at its head, which are removed from ``entries``."""
    cdef ShareEntry e
    cdef int64_t s = start
    while s < end:
        y = entries.get(s)
        if y is not None:
            e = <ShareEntry?>y
            if e.state != _ACKED and e.state != _ARCHIVED:
                break
            del entries[s]
        s += 1
    return s


def share_encode_window(int version, int64_t start, int64_t end, dict entries):
    """A window's state value (``state.encode_window``): the head, then each
    entry (sorted by offset) as delta uint32 | state int8 | count uint16 | aux int64."""
    cdef list offsets = sorted(entries)
    cdef Py_ssize_t n = len(offsets), i = 0
    cdef bytes out = PyBytes_FromStringAndSize(NULL, _HEAD_SIZE + n * _ENTRY_SIZE)
    cdef unsigned char *p = <unsigned char *>PyBytes_AS_STRING(out)
    cdef ShareEntry e
    cdef int64_t o
    cdef int count
    umlog_store_be16(p, <uint16_t>version)
    umlog_store_be64(p + 2, <uint64_t>start)
    umlog_store_be64(p + 10, <uint64_t>end)
    umlog_store_be32(p + 18, <uint32_t>n)
    p += _HEAD_SIZE
    for i in range(n):
        o = offsets[i]
        e = <ShareEntry?>entries[o]
        count = e.count
        if count > 0xFFFF:
            count = 0xFFFF
        umlog_store_be32(p, <uint32_t>(o - start))
        p[4] = <unsigned char><int8_t>e.state
        umlog_store_be16(p + 5, <uint16_t>count)
        umlog_store_be64(p + 7, <uint64_t>e.aux)
        p += _ENTRY_SIZE
    return out


def share_settle_check(list acks, dict entries, handle, double now_m, kinds):
    """The entries ``acks`` (``[(offset, kind)]`` of one partition) settle, if every
    kind is in ``kinds`` and every offset is held by ``handle`` (acquired through
    it, its lock not expired), but for a ``gap`` on an offset with no entry
    (skipped): ``[(offset, entry, kind)]``. None if one is not (nothing is
    changed; the caller says why)."""
    cdef ShareEntry e
    cdef list held = []
    for item in acks:
        o, kind = item
        if kind not in kinds:
            return None
        y = entries.get(o)
        if y is None:
            if kind == "gap":
                continue
            return None
        e = <ShareEntry?>y
        if e.state != _ACQUIRED or e.owner is not handle or e.deadline <= now_m:
            return None
        held.append((o, e, kind))
    return held


def share_accept(list held):
    """ACKED for the ``accept`` and ``gap`` entries of ``[(offset, entry, kind)]``;
    the others, in order, for the caller (release, reject, renew)."""
    cdef ShareEntry e
    cdef list rest = []
    for item in held:
        kind = item[2]
        if kind == "accept" or kind == "gap":
            e = <ShareEntry>item[1]
            e.state = _ACKED
            e.owner = None
        else:
            rest.append(item)
    return rest
