# MQTT bytes on the MQTT door's message path. umlog/server/mqtt/codec.py is
# the reference codec and decodes every packet these functions leave alone:
# mqtt_scan only takes the well-formed PUBLISH and PUBACK packets a client
# sends by the thousand and stops at anything else (another packet type,
# MQTT 5 properties, a partial packet, anything the codec would refuse), so
# every error is still raised by one piece of code. mqtt_publish_frame
# encodes the PUBLISH the fan-out sends per message and subscriber.

from libc.stdio cimport snprintf

cdef extern from "Python.h":
    void PyObject_GC_UnTrack(object o)
from libc.string cimport memchr


def mqtt_scan(buf, Py_ssize_t pos, int version, Py_ssize_t max_packet_size, list out,
              object publish_cls, object puback_cls, object plain_headers=None):
    """Decode the run of plain PUBLISH and PUBACK packets at ``buf[pos:]``.

    Appends a ``publish_cls`` or ``puback_cls`` instance (their slots set as
    the codec's decoder would) to ``out`` per packet and returns the position
    after the last one taken. It stops, without raising, at the first packet
    that is partial, over ``max_packet_size``, of another type, an MQTT 5 one
    with properties or reason codes, or malformed in any way.

    With ``plain_headers`` (the record headers of a plain message, by QoS),
    consecutive plain QoS 0/1 PUBLISHes with a valid topic name and no RETAIN
    are appended as one MqttPublishRun, and consecutive PUBACKs as one
    MqttAckRun, instead of a packet each.
    """
    cdef Py_buffer view
    PyObject_GetBuffer(buf, &view, PyBUF_SIMPLE)
    try:
        return _mqtt_scan(<const unsigned char *>view.buf, view.len, pos, version, max_packet_size, out,
                          publish_cls, puback_cls, plain_headers)
    finally:
        PyBuffer_Release(&view)


cdef Py_ssize_t _mqtt_scan(const unsigned char *p, Py_ssize_t end, Py_ssize_t pos, int version,
                           Py_ssize_t max_packet_size, list out, object publish_cls,
                           object puback_cls, object plain_headers) except -1:
    cdef Py_ssize_t i, length, total, body, bend, q, tlen, run_start = pos, prev_t = 0, prev_tlen = -1
    cdef unsigned int first, b, shift, qos, pid
    cdef bint whole, runs = plain_headers is not None
    cdef object topic, obj, key = None
    cdef MqttPublishRun pubs = None
    cdef MqttAckRun acks = None
    cdef bytearray ackbuf = None
    cdef int kind  # of the open run: 0 none, 1 PUBLISH, 2 PUBACK
    kind = 0
    while end - pos >= 2:
        # the fixed header's remaining length, in its shortest form
        length = 0
        shift = 0
        i = pos + 1
        whole = False
        while i < end and i - pos <= 4:
            b = p[i]
            length |= <Py_ssize_t>(b & 0x7F) << shift
            i += 1
            if not b & 0x80:
                whole = not (i - pos > 2 and b == 0)
                break
            shift += 7
        if not whole:
            break
        total = i - pos + length
        if total > max_packet_size or end - pos < total:
            break
        first = p[pos]
        body = i
        bend = i + length
        obj = None
        if first >> 4 == 3:
            qos = (first >> 1) & 3
            if qos == 3 or (first & 0x08 and qos == 0) or length < 2:
                break
            tlen = (<Py_ssize_t>p[body] << 8) | p[body + 1]
            q = body + 2 + tlen
            if q > bend or memchr(p + body + 2, 0, <size_t>tlen) != NULL:
                break
            pid = 0
            if qos:
                if q + 2 > bend:
                    break
                pid = (<unsigned int>p[q] << 8) | p[q + 1]
                if pid == 0:
                    break
                q += 2
            if version == 5:
                if q >= bend or p[q] != 0:
                    break  # properties: the codec reads them
                q += 1
            if runs and qos < 2 and not first & 0x01 and _topic_name_ok(p + body + 2, tlen):
                if tlen != prev_tlen or memcmp(p + prev_t, p + body + 2, <size_t>tlen) != 0:
                    try:
                        PyUnicode_DecodeUTF8(<const char *>p + body + 2, tlen, "strict")
                    except UnicodeDecodeError:
                        break
                    key = PyBytes_FromStringAndSize(<const char *>p + body + 2, tlen)
                    prev_t = body + 2
                    prev_tlen = tlen
                if kind != 1:
                    _close_run(p, kind, run_start, pos, pubs, acks, out)
                    pubs = MqttPublishRun.__new__(MqttPublishRun)
                    pubs.keys, pubs.values, pubs.headers = [], [], []
                    pubs._acks = bytearray()
                    pubs._version = version
                    kind, run_start = 1, pos
                pubs.keys.append(key)
                pubs.values.append(PyBytes_FromStringAndSize(<const char *>p + q, bend - q))
                pubs.headers.append(plain_headers[qos])
                if qos:
                    ackbuf = pubs._acks
                    ackbuf.append(0x40)
                    ackbuf.append(2)
                    ackbuf.append(pid >> 8)
                    ackbuf.append(pid & 0xFF)
                pos += total
                continue
            try:
                topic = PyUnicode_DecodeUTF8(<const char *>p + body + 2, tlen, "strict")
            except UnicodeDecodeError:
                break
            obj = publish_cls.__new__(publish_cls)
            obj.topic = topic
            obj.payload = PyBytes_FromStringAndSize(<const char *>p + q, bend - q)
            obj.qos = qos
            obj.retain = bool(first & 0x01)
            obj.dup = bool(first & 0x08)
            obj.packet_id = pid if qos else None
            obj.properties = {}
        elif first == 0x40 and length == 2:
            pid = (<unsigned int>p[body] << 8) | p[body + 1]
            if pid == 0:
                break
            if runs:
                if kind != 2:
                    _close_run(p, kind, run_start, pos, pubs, acks, out)
                    acks = MqttAckRun.__new__(MqttAckRun)
                    kind, run_start = 2, pos
                pos += total
                continue
            obj = puback_cls.__new__(puback_cls)
            obj.packet_id = pid
            obj.reason = 0
            obj.properties = {}
        else:
            break
        _close_run(p, kind, run_start, pos, pubs, acks, out)
        kind = 0
        out.append(obj)
        pos += total
    _close_run(p, kind, run_start, pos, pubs, acks, out)
    return pos


cdef int _close_run(const unsigned char *p, int kind, Py_ssize_t start, Py_ssize_t stop, MqttPublishRun pubs,
                    MqttAckRun acks, list out) except -1:
    """The open run of ``_mqtt_scan`` (``kind`` 1: PUBLISHes, 2: PUBACKs) is
    whole: its packets' bytes are ``p[start:stop]``."""
    if kind == 1:
        pubs.raw = PyBytes_FromStringAndSize(<const char *>p + start, stop - start)
        out.append(pubs)
    elif kind == 2:
        acks.raw = PyBytes_FromStringAndSize(<const char *>p + start, stop - start)
        out.append(acks)
    return 0


cdef inline Py_ssize_t _write_head(unsigned char *o, unsigned char first, Py_ssize_t n, const char *t,
                                   Py_ssize_t tlen) noexcept:
    """A PUBLISH's fixed header (``first``, remaining length ``n``) and topic
    name at ``o``; the bytes written."""
    cdef Py_ssize_t k = 1
    o[0] = first
    while True:
        o[k] = <unsigned char>(n & 0x7F)
        n >>= 7
        if not n:
            k += 1
            break
        o[k] |= 0x80
        k += 1
    o[k] = <unsigned char>(tlen >> 8)
    o[k + 1] = <unsigned char>(tlen & 0xFF)
    memcpy(o + k + 2, t, <size_t>tlen)
    return k + 2 + tlen


def mqtt_publish_frame(str topic, payload, unsigned int flags, unsigned int packet_id, bytes props):
    """The bytes of one PUBLISH: ``flags`` are the fixed header's low bits (DUP
    << 3 | QoS << 1 | RETAIN), ``packet_id`` is left out at QoS 0, ``props``
    are MQTT 5 properties already encoded (their length first), or b"" in
    3.1.1."""
    cdef Py_ssize_t tlen, n, size, k
    cdef const char *t = PyUnicode_AsUTF8AndSize(topic, &tlen)
    cdef unsigned int qos = (flags >> 1) & 3
    cdef Py_buffer view
    cdef bytes out
    cdef unsigned char *o
    if tlen > 0xFFFF:
        raise ValueError(f"string of {tlen} bytes is longer than MQTT's 65,535")
    if qos and packet_id == 0:
        raise ValueError("a QoS 1 or 2 PUBLISH needs a packet id")
    if packet_id > 0xFFFF:
        raise ValueError(f"packet id {packet_id} is over 65,535")
    PyObject_GetBuffer(payload, &view, PyBUF_SIMPLE)
    try:
        n = 2 + tlen + (2 if qos else 0) + len(props) + view.len
        if n > 268_435_455:
            raise ValueError(f"variable byte integer out of range: {n}")
        size = 2 if n < 0x80 else 3 if n < 0x4000 else 4 if n < 0x200000 else 5
        out = PyBytes_FromStringAndSize(NULL, size + n)
        o = <unsigned char *>PyBytes_AS_STRING(out)
        k = _write_head(o, <unsigned char>(0x30 | (flags & 0x0F)), n, t, tlen)
        if qos:
            o[k] = <unsigned char>((packet_id >> 8) & 0xFF)
            o[k + 1] = <unsigned char>(packet_id & 0xFF)
            k += 2
        memcpy(o + k, PyBytes_AS_STRING(props), <size_t>len(props))
        k += len(props)
        memcpy(o + k, view.buf, <size_t>view.len)
        return out
    finally:
        PyBuffer_Release(&view)


# --- the door's message path in runs -------------------------------------------------------------
#
# A client that publishes fast sends hundreds of PUBLISHes per read, and a
# subscriber answers with as many PUBACKs. Made into one Python object each,
# they cost the door more than everything else it does; the functions below
# keep a run of them as one object (MqttPublishRun, MqttAckRun) from the
# receive buffer to the log and back out as frames (mqtt_encode_run), so
# Python runs once per run, not once per message. Anything unusual (QoS 2,
# RETAIN, MQTT 5 properties, a topic name the codec would refuse) is left to
# the per-packet path, which raises every error.


@cython.final
cdef class MqttOutgoing:
    """A QoS 1/2 message sent to a client and not settled yet."""

    cdef public object topic, payload, props, loc, share
    cdef public int qos, state
    cdef public bint retain

    def __init__(self, topic, payload, props, int qos, retain, loc, share=None):
        self.topic = topic
        self.payload = payload
        self.props = props
        self.qos = qos
        self.retain = retain
        self.loc = loc  # (log topic, partition, offset) of its record
        self.state = qos  # 1, 2, or 3 once PUBREC'd
        self.share = share  # (SharedSub, member handle, ShareRecord) until settled

    def __repr__(self):
        return f"MqttOutgoing(qos={self.qos}, state={self.state}, loc={self.loc!r})"


@cython.final
cdef class MqttPublishRun:
    """Consecutive plain PUBLISHes (QoS 0 or 1, no RETAIN, no properties, a
    valid topic name) as the lists ``append_many`` takes, and the PUBACKs of
    the QoS 1 ones, in order, ready to write. ``raw`` holds the packets'
    bytes, for the per-packet path (``packets``)."""

    cdef public list keys, values, headers
    cdef public bytes raw
    cdef bytearray _acks
    cdef int _version

    @property
    def acks(self):
        return bytes(self._acks)

    @property
    def count(self):
        return len(self.keys)

    def absorb(self, MqttPublishRun other):
        """Take ``other``'s messages (they came right after this run's)."""
        self.keys += other.keys
        self.values += other.values
        self.headers += other.headers
        self.raw += other.raw
        self._acks += other._acks

    def packets(self, publish_cls, puback_cls):
        """The run as the codec's ``Publish`` packets."""
        out = []
        _mqtt_scan(<const unsigned char *>PyBytes_AS_STRING(self.raw), len(self.raw), 0, self._version,
                   len(self.raw), out, publish_cls, puback_cls, None)
        return out


@cython.final
cdef class MqttAckRun:
    """Consecutive PUBACKs of MQTT 3.1.1 shape (``raw``: 4 bytes each)."""

    cdef public bytes raw

    @property
    def count(self):
        return len(self.raw) // 4

    def absorb(self, MqttAckRun other):
        self.raw += other.raw

    def packet_ids(self):
        cdef const unsigned char *p = <const unsigned char *>PyBytes_AS_STRING(self.raw)
        return [(<unsigned int>p[i + 2] << 8) | p[i + 3] for i in range(0, len(self.raw), 4)]


cdef inline bint _topic_name_ok(const unsigned char *t, Py_ssize_t n) noexcept:
    """Non-empty, no wildcard, no NUL: the codec's checks bar UTF-8 validity."""
    cdef Py_ssize_t i
    if n == 0:
        return False
    for i in range(n):
        if t[i] == 0x2B or t[i] == 0x23 or t[i] == 0:
            return False
    return True


def mqtt_settle(MqttAckRun run, dict inflight):
    """Settle the PUBACKs of ``run`` against ``inflight`` (packet id ->
    MqttOutgoing): each one awaiting a PUBACK and held by no share group is
    removed. Returns (how many were removed, the packet ids left for the
    per-packet path: unknown ones, and ones a share group holds)."""
    cdef const unsigned char *p = <const unsigned char *>PyBytes_AS_STRING(run.raw)
    cdef Py_ssize_t i, n = len(run.raw)
    cdef int done = 0
    cdef list rest = []
    cdef object pid, out
    for i in range(0, n, 4):
        pid = (<unsigned int>p[i + 2] << 8) | p[i + 3]
        out = inflight.get(pid)
        if (type(out) is MqttOutgoing and (<MqttOutgoing>out).state == 1
                and (<MqttOutgoing>out).share is None):
            del inflight[pid]
            done += 1
        else:
            rest.append(pid)
    return done, rest


def mqtt_runs(list records, str qos_header):
    """The records of a read (``Record``) in runs of one key: (key, start,
    stop, plain) each, ``plain`` when every record of the run has exactly one
    header, ``qos_header`` with value b"0", b"1" or b"2" (a message stored by
    the door's plain path; anything else needs ``publish_fields``)."""
    cdef list out = []
    cdef Py_ssize_t i, start = 0, n = len(records)
    cdef Record r
    cdef object key = None
    cdef bint plain = True, this
    cdef tuple h
    for i in range(n):
        r = <Record>records[i]
        if i == 0 or not (r.key is key or r.key == key):
            if i:
                out.append((key, start, i, plain))
            key = r.key
            start = i
            plain = True
        if plain:
            this = False
            if len(r.headers) == 1:
                h = <tuple>r.headers[0]
                if h[0] == qos_header and type(h[1]) is bytes and len(<bytes>h[1]) == 1:
                    this = 0x30 <= (<unsigned char *>PyBytes_AS_STRING(h[1]))[0] <= 0x32
            plain = this
    if n:
        out.append((key, start, n, plain))
    return out


cdef inline Py_ssize_t _vbi_size(Py_ssize_t n) noexcept:
    return 1 if n < 0x80 else 2 if n < 0x4000 else 3 if n < 0x200000 else 4


def mqtt_encode_run(list records, Py_ssize_t start, Py_ssize_t stop, str topic, int max_qos, int version,
                    session, dict inflight, str log_topic, int partition, Py_ssize_t max_packet,
                    Py_ssize_t room=-1, bint skip_qos0=False, dict aliases=None, int alias_max=0):
    """The PUBLISH frames of ``records[start:stop]`` (a ``mqtt_runs`` plain
    run on MQTT topic ``topic``) for one subscriber, each at the lower of
    ``max_qos`` and the record's QoS, as one bytes object. Each QoS 1/2 one
    gets the session's next free packet id (``session.next_id`` is read and
    written back) and an MqttOutgoing in ``inflight`` holding its place in the
    log. It stops before the QoS 1/2 message that would be one more than
    ``room`` (-1: no limit); ``skip_qos0`` leaves out the ones that would go
    at QoS 0 (a session catching up from the log). Returns (frames, how many
    went at QoS 1/2, the index after the last record taken), or None, with
    nothing taken, when a frame would be over ``max_packet`` (the caller goes
    message by message). With ``aliases`` (MQTT 5: topic name -> the topic
    alias this connection gave it, at most ``alias_max`` of them) the topic
    goes by its alias (``_topic_alias``)."""
    cdef Py_ssize_t tlen, i, total = 0, k = 0, size, end = start
    cdef const char *t = PyUnicode_AsUTF8AndSize(topic, &tlen)
    cdef Record r
    cdef int qos, kept = 0
    cdef unsigned int pid = 0
    cdef bytes out
    cdef unsigned char *o
    cdef bint known = False
    cdef unsigned int alias = _topic_alias(topic, aliases, alias_max, &known) if version == 5 else 0
    cdef bint named = known  # the client knows the alias once a frame naming it went
    for i in range(start, stop):
        r = <Record>records[i]
        qos = min(max_qos, _record_qos(r))
        if qos:
            if kept == room:
                break
            kept += 1
        end = i + 1
        if qos == 0 and skip_qos0:
            continue
        size = _frame_size(0 if named else tlen, qos, version, 0 if r.value is None else len(r.value), alias)
        if size > max_packet:
            return None
        total += size
        named = alias != 0
    kept = 0
    named = known
    out = PyBytes_FromStringAndSize(NULL, total)
    o = <unsigned char *>PyBytes_AS_STRING(out)
    pid = session.next_id
    for i in range(start, end):
        r = <Record>records[i]
        qos = min(max_qos, _record_qos(r))
        if qos == 0 and skip_qos0:
            continue
        if qos:
            pid = _take_pid(pid, inflight, topic, b"" if r.value is None else r.value, {}, qos,
                            (log_topic, partition, r.offset))
            kept += 1
        k += _write_frame(o + k, t, 0 if named else tlen, qos, pid, version, r.value, alias)
        named = alias != 0
    session.next_id = pid
    if alias and not known and named:
        aliases[topic] = alias
    return out, kept, end


cdef unsigned int _topic_alias(object topic, dict aliases, int alias_max, bint *known) except? 0:
    """The topic alias for ``topic`` towards a client that takes ``alias_max``
    (MQTT 5 3.3.2.3.4): the one it was given (``known[0]`` set: the frame may
    leave the name out), else a new one while there are fewer than
    ``alias_max`` (the caller adds it to ``aliases`` once a frame carrying
    both went), else 0 (the name in full, no alias)."""
    known[0] = False
    if aliases is None or alias_max <= 0:
        return 0
    a = aliases.get(topic)
    if a is not None:
        known[0] = True
        return <unsigned int>a
    if len(aliases) < alias_max:
        return <unsigned int>(len(aliases) + 1)
    return 0


cdef inline int _record_qos(Record r):
    """The QoS of a plain record (``mqtt_runs``): its one header's value."""
    return (<unsigned char *>PyBytes_AS_STRING((<tuple>r.headers[0])[1]))[0] - 0x30


cdef inline Py_ssize_t _frame_size(Py_ssize_t tlen, int qos, int version, Py_ssize_t vlen,
                                   unsigned int alias) noexcept:
    cdef Py_ssize_t n = 2 + tlen + (2 if qos else 0) + ((4 if alias else 1) if version == 5 else 0) + vlen
    return 1 + _vbi_size(n) + n


cdef Py_ssize_t _write_frame(unsigned char *o, const char *t, Py_ssize_t tlen, int qos, unsigned int pid,
                             int version, object value, unsigned int alias) except -1:
    """One plain PUBLISH (no DUP, no RETAIN; MQTT 5: no property but a topic
    ``alias`` when not 0) at ``o``; its size. ``tlen`` 0 leaves the name out."""
    cdef Py_ssize_t vlen = 0 if value is None else len(value)
    cdef Py_ssize_t n = 2 + tlen + (2 if qos else 0) + ((4 if alias else 1) if version == 5 else 0) + vlen
    cdef Py_ssize_t k = _write_head(o, <unsigned char>(0x30 | (qos << 1)), n, t, tlen)
    cdef Py_buffer view
    if qos:
        o[k] = <unsigned char>(pid >> 8)
        o[k + 1] = <unsigned char>(pid & 0xFF)
        k += 2
    if version == 5:
        if alias:
            o[k] = 3
            o[k + 1] = 0x23
            o[k + 2] = <unsigned char>(alias >> 8)
            o[k + 3] = <unsigned char>(alias & 0xFF)
            k += 4
        else:
            o[k] = 0
            k += 1
    if vlen:
        PyObject_GetBuffer(value, &view, PyBUF_SIMPLE)
        memcpy(o + k, view.buf, <size_t>vlen)
        PyBuffer_Release(&view)
        k += vlen
    return k


cdef unsigned int _take_pid(unsigned int pid, dict inflight, topic, payload, props, int qos, loc) except 0:
    """The next packet id after ``pid`` free in ``inflight``, now holding the
    in-flight entry of a plain message (no RETAIN, no share group) sent with it."""
    cdef int tries
    cdef MqttOutgoing entry
    for tries in range(65536):
        pid = pid % 65535 + 1
        if pid not in inflight:
            entry = MqttOutgoing.__new__(MqttOutgoing)
            entry.topic = topic
            entry.payload = payload
            entry.props = props
            entry.qos = entry.state = qos
            entry.retain = False
            entry.loc = loc
            entry.share = None
            inflight[pid] = entry
            return pid
    raise RuntimeError("every packet id is in flight")


def mqtt_wait_run(list records, Py_ssize_t start, Py_ssize_t stop, str topic, int max_qos, str log_topic,
                  int partition, waiting):
    """Append ``records[start:stop]`` (a plain run on ``topic``) to ``waiting``
    (the connection's messages held by the receive maximum) as its entries:
    (topic, payload, qos, retain, props, (log topic, partition, offset), share).

    The entries are taken out of the cyclic GC's sight, as the GC itself does
    with tuples of atomic values (str, bytes, ints, None, an empty dict: no
    cycle can run through them): a slow subscriber's queue may hold a million,
    and every full collection walked them all."""
    cdef Record r
    cdef int qos
    cdef Py_ssize_t i
    cdef list out = []
    cdef tuple loc, entry
    for i in range(start, stop):
        r = <Record>records[i]
        qos = min(max_qos, _record_qos(r))
        loc = (log_topic, partition, r.offset)
        PyObject_GC_UnTrack(loc)
        entry = (topic, b"" if r.value is None else r.value, qos, False, {}, loc, None)
        PyObject_GC_UnTrack(entry)
        out.append(entry)
    waiting.extend(out)


def mqtt_encode_waiting(waiting, Py_ssize_t room, int version, session, dict inflight, Py_ssize_t max_packet,
                        dict aliases=None, int alias_max=0):
    """Take plain entries (``mqtt_wait_run``'s: no RETAIN, no properties, no
    share group) off the front of ``waiting`` while ``room`` QoS 1/2 ones fit,
    and give their PUBLISH frames as one bytes object, each QoS 1/2 one with a
    packet id and an MqttOutgoing in ``inflight``. Stops at the first entry
    that is not plain or whose frame is over ``max_packet``. Returns (frames,
    how many entries were taken, how many went at QoS 1/2). ``aliases`` and
    ``alias_max`` as for ``mqtt_encode_run``."""
    cdef Py_ssize_t tlen, total = 0, count = 0, k = 0, vlen
    cdef int qos, kept = 0
    cdef tuple e
    cdef const char *t
    cdef unsigned int pid
    cdef bytes out
    cdef unsigned char *o
    cdef Py_ssize_t n = len(waiting), i
    cdef bint known, with_name
    cdef unsigned int alias
    cdef dict given = {}  # aliases this call gives: topic -> alias
    cdef list plan = []  # per entry taken: (alias, whether the name goes too)
    cdef object a
    # first pass: how many, how many bytes, and which alias each one uses
    for i in range(n):
        e = <tuple>waiting[i]
        qos = e[2]
        if qos and kept >= room:
            break
        if e[3] or e[6] is not None or type(e[4]) is not dict or len(<dict>e[4]) or type(e[0]) is not str:
            break
        PyUnicode_AsUTF8AndSize(e[0], &tlen)
        vlen = len(e[1])
        known = False
        alias = 0
        if version == 5 and aliases is not None and alias_max > 0:
            a = given.get(e[0])
            if a is not None:
                alias, known = a, True
            else:
                alias = _topic_alias(e[0], aliases, alias_max - len(given), &known)
                if alias and not known:
                    alias += len(given)
        if _frame_size(0 if known else tlen, qos, version, vlen, alias) > max_packet:
            break
        if alias and not known:
            given[e[0]] = alias
        plan.append((alias, not known))
        total += _frame_size(0 if known else tlen, qos, version, vlen, alias)
        count += 1
        if qos:
            kept += 1
    if count == 0:
        return b"", 0, 0
    out = PyBytes_FromStringAndSize(NULL, total)
    o = <unsigned char *>PyBytes_AS_STRING(out)
    pid = session.next_id
    for i in range(count):
        e = <tuple>waiting.popleft()
        qos = e[2]
        t = PyUnicode_AsUTF8AndSize(e[0], &tlen)
        if qos:
            pid = _take_pid(pid, inflight, e[0], e[1], e[4], qos, e[5])
        alias, with_name = plan[i]
        k += _write_frame(o + k, t, tlen if with_name else 0, qos, pid, version, e[1], alias)
    session.next_id = pid
    if given:
        aliases.update(given)
    return out, count, kept


def mqtt_session_out(dict inflight, quote):
    """The ``out`` list of a session record (umlog/server/mqtt/session.py) as
    JSON bytes: ``[pid, log topic, partition, offset, qos, state, retain]`` for
    each entry of ``inflight`` with a place in the log and no share group, in
    the dict's order. ``quote`` gives a log topic name's JSON string (called
    once per run of entries on one topic). A persistent session with a
    thousand messages in flight writes its record after every round of
    PUBACKs; made by ``json.dumps`` from lists, the list made for it, that was
    the most of what such a subscriber cost."""
    cdef object loc, topic = None
    cdef bytes quoted = b""
    cdef MqttOutgoing e
    cdef Py_ssize_t cap = 256, k = 1, need
    cdef char *buf = <char *>malloc(cap)
    cdef char *grown
    cdef int n
    if buf == NULL:
        raise MemoryError()
    try:
        buf[0] = b"["
        for pid, entry in inflight.items():
            e = <MqttOutgoing?>entry
            loc = e.loc
            if loc is None or e.share is not None:
                continue
            if (<tuple>loc)[0] is not topic:
                topic = (<tuple>loc)[0]
                quoted = quote(topic).encode()
            need = k + len(quoted) + 128
            if need > cap:
                cap = max(need, cap * 2)
                grown = <char *>realloc(buf, cap)
                if grown == NULL:
                    raise MemoryError()
                buf = grown
            n = snprintf(buf + k, cap - k, "%s[%lld,%.*s,%lld,%lld,%d,%d,%s]", "," if k > 1 else "",
                         <long long>pid, <int>len(quoted), PyBytes_AS_STRING(quoted),
                         <long long>(<tuple>loc)[1], <long long>(<tuple>loc)[2], e.qos, e.state,
                         "true" if e.retain else "false")
            k += n
        buf[k] = b"]"
        return PyBytes_FromStringAndSize(buf, k + 1)
    finally:
        free(buf)
