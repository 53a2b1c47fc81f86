# AMQP 0-9-1 bytes on the AMQP door's message path (umlog/server/amqp/codec.py
# documents the mapping of content properties to record headers): the frames
# of basic.publish read in runs, the frames of basic.deliver written in runs,
# content properties both ways. One call per run of messages instead of a few
# Python calls and struct packs per frame.

cdef enum:
    AMQP_FRAME_METHOD = 1
    AMQP_FRAME_HEADER = 2
    AMQP_FRAME_BODY = 3
    AMQP_FRAME_END = 0xCE
    AMQP_NPROPS = 14

# property kinds in flag order (bit 15 first): s shortstr, t table, o octet, q timestamp
cdef tuple AMQP_PROP_NAMES = (
    "content-type", "amqp-content-encoding", "amqp-headers", "amqp-delivery-mode", "amqp-priority",
    "amqp-correlation-id", "amqp-reply-to", "amqp-expiration", "amqp-message-id", "amqp-timestamp",
    "amqp-type", "amqp-user-id", "amqp-app-id", "amqp-cluster-id")
cdef bytes AMQP_PROP_KINDS = b"sstoossssqssss"
cdef dict AMQP_PROP_INDEX = {n: i for i, n in enumerate(AMQP_PROP_NAMES)}
# record headers that say how a record was stored, never shown as table entries
cdef frozenset AMQP_HIDDEN = frozenset(("umlog-ttl-ms",))


cdef struct AmqpOut:
    char *buf
    Py_ssize_t len
    Py_ssize_t cap


cdef int amqp_reserve(AmqpOut *o, Py_ssize_t more) except -1:
    cdef Py_ssize_t cap = o.cap
    cdef char *p
    if o.len + more <= cap:
        return 0
    if cap < 256:
        cap = 256
    while cap < o.len + more:
        cap *= 2
    p = <char *>realloc(o.buf, <size_t>cap)
    if p == NULL:
        raise MemoryError()
    o.buf, o.cap = p, cap
    return 0


cdef inline int amqp_u8(AmqpOut *o, unsigned int v) except -1:
    amqp_reserve(o, 1)
    o.buf[o.len] = <char>(v & 0xFF)
    o.len += 1
    return 0


cdef inline void amqp_put16(char *p, uint32_t v) noexcept:
    p[0] = <char>((v >> 8) & 0xFF)
    p[1] = <char>(v & 0xFF)


cdef inline void amqp_put32(char *p, uint32_t v) noexcept:
    p[0] = <char>((v >> 24) & 0xFF)
    p[1] = <char>((v >> 16) & 0xFF)
    p[2] = <char>((v >> 8) & 0xFF)
    p[3] = <char>(v & 0xFF)


cdef inline int amqp_u16(AmqpOut *o, uint32_t v) except -1:
    amqp_reserve(o, 2)
    amqp_put16(o.buf + o.len, v)
    o.len += 2
    return 0


cdef inline int amqp_u32(AmqpOut *o, uint32_t v) except -1:
    amqp_reserve(o, 4)
    amqp_put32(o.buf + o.len, v)
    o.len += 4
    return 0


cdef inline int amqp_u64(AmqpOut *o, uint64_t v) except -1:
    amqp_u32(o, <uint32_t>(v >> 32))
    amqp_u32(o, <uint32_t>(v & 0xFFFFFFFFU))
    return 0


cdef inline int amqp_mem(AmqpOut *o, const char *p, Py_ssize_t n) except -1:
    if n > 0:
        amqp_reserve(o, n)
        memcpy(o.buf + o.len, p, <size_t>n)
        o.len += n
    return 0


cdef int amqp_obj(AmqpOut *o, object v, Py_ssize_t limit) except -1:
    """The bytes of a bytes-like ``v`` (None: nothing), at most ``limit`` (-1: all)."""
    cdef Py_buffer view
    if v is None:
        return 0
    if PyBytes_CheckExact(v):
        n = PyBytes_GET_SIZE(v)
        amqp_mem(o, PyBytes_AS_STRING(v), n if limit < 0 or n <= limit else limit)
        return 0
    get_buffer(v, &view, False)
    try:
        amqp_mem(o, <const char *>view.buf, view.len if limit < 0 or view.len <= limit else limit)
    finally:
        PyBuffer_Release(&view)
    return 0


cdef int amqp_shortstr(AmqpOut *o, object v) except -1:
    """A short string: its length (at most 255: longer ones are cut) and bytes."""
    cdef Py_ssize_t at = o.len
    amqp_u8(o, 0)
    amqp_obj(o, v, 255)
    o.buf[at] = <char>(o.len - at - 1)
    return 0


cdef int amqp_properties_into(AmqpOut *o, object headers, object extra_table) except -1:
    """Record headers -> a content header's property flags and list (see codec.py)."""
    cdef list slots = [None] * AMQP_NPROPS
    cdef list extra = None
    cdef Py_ssize_t i, at, tat
    cdef uint32_t flags = 0
    cdef object idx, k, v
    cdef char kind
    for k, v in headers:
        idx = AMQP_PROP_INDEX.get(k)
        if idx is not None:
            slots[<Py_ssize_t>idx] = b"" if v is None else v
        elif k not in AMQP_HIDDEN:
            if extra is None:
                extra = []
            extra.append((k, v))
    if extra is not None or extra_table:
        if slots[2] is None:
            slots[2] = b""
    at = o.len
    amqp_u16(o, 0)
    for i in range(AMQP_NPROPS):
        v = slots[i]
        if v is None:
            continue
        kind = AMQP_PROP_KINDS[i]
        if kind == c's':
            amqp_shortstr(o, v)
        elif kind == c't':
            tat = o.len
            amqp_u32(o, 0)
            amqp_obj(o, v, -1)
            if extra_table:
                amqp_obj(o, extra_table, -1)
            if extra is not None:
                for k, v in extra:
                    amqp_shortstr(o, (<str>k).encode("utf-8", "replace"))
                    amqp_u8(o, ord("S"))
                    amqp_u32(o, <uint32_t>(0 if v is None else value_len(v)))
                    amqp_obj(o, v, -1)
            amqp_put32(o.buf + tat, <uint32_t>(o.len - tat - 4))
        elif kind == c'o':
            try:
                amqp_u8(o, <unsigned int>(int(v if PyBytes_CheckExact(v) else bytes(v)) & 0xFF))
            except ValueError:
                continue
        else:
            try:
                amqp_u64(o, <uint64_t>(int(v if PyBytes_CheckExact(v) else bytes(v)) & 0xFFFFFFFFFFFFFFFF))
            except ValueError:
                continue
        flags |= 1U << (15 - i)
    amqp_put16(o.buf + at, flags)
    return 0


cdef int amqp_content_into(AmqpOut *o, int channel, object headers, object extra_table, object body,
                           Py_ssize_t frame_max) except -1:
    """The content header frame and the body frames (split to ``frame_max``) of one message."""
    cdef Py_buffer view
    cdef Py_ssize_t at, n, i, m, step = frame_max - 8
    cdef const char *p
    amqp_u8(o, AMQP_FRAME_HEADER)
    amqp_u16(o, <uint32_t>channel)
    at = o.len
    amqp_u32(o, 0)
    amqp_u32(o, 0x003C0000)  # class 60, weight 0
    n = 0 if body is None else value_len(body)
    amqp_u64(o, <uint64_t>n)
    amqp_properties_into(o, headers, extra_table)
    amqp_put32(o.buf + at, <uint32_t>(o.len - at - 4))
    amqp_u8(o, AMQP_FRAME_END)
    if n <= 0:
        return 0
    get_buffer(body, &view, False)
    try:
        p = <const char *>view.buf
        i = 0
        while i < n:
            m = step if n - i > step else n - i
            amqp_u8(o, AMQP_FRAME_BODY)
            amqp_u16(o, <uint32_t>channel)
            amqp_u32(o, <uint32_t>m)
            amqp_mem(o, p + i, m)
            amqp_u8(o, AMQP_FRAME_END)
            i += m
    finally:
        PyBuffer_Release(&view)
    return 0


cdef bytes amqp_take(AmqpOut *o):
    try:
        return PyBytes_FromStringAndSize(o.buf, o.len)
    finally:
        free(o.buf)
        o.buf = NULL


def amqp_content_frames(int channel, headers, body, Py_ssize_t frame_max, extra_table=b""):
    """The content header frame and body frames of one message, as one bytes."""
    cdef AmqpOut o = AmqpOut(NULL, 0, 0)
    if frame_max < 9:
        raise ValueError(f"frame_max {frame_max} is too small")
    try:
        amqp_content_into(&o, channel, headers, extra_table, body, frame_max)
    except BaseException:
        free(o.buf)
        raise
    return amqp_take(&o)


def amqp_deliver_frames(list records, int channel, bytes consumer_tag, uint64_t first_tag,
                        Py_ssize_t frame_max, dict exchange_names):
    """basic.deliver, content header and body frames of share-group records, with
    delivery tags from ``first_tag`` on, as one bytes. ``exchange_names`` maps a
    record's topic to its exchange name (bytes); names not in it are the topic's."""
    cdef AmqpOut o = AmqpOut(NULL, 0, 0)
    cdef Py_ssize_t at
    cdef uint64_t tag = first_tag
    cdef object exchange
    if frame_max < 9:
        raise ValueError(f"frame_max {frame_max} is too small")
    try:
        for rec in records:
            topic = rec.topic
            exchange = exchange_names.get(topic)
            if exchange is None:
                exchange = exchange_names[topic] = (<str>topic).encode("utf-8")
            amqp_u8(&o, AMQP_FRAME_METHOD)
            amqp_u16(&o, <uint32_t>channel)
            at = o.len
            amqp_u32(&o, 0)
            amqp_u32(&o, 0x003C003C)  # basic.deliver
            amqp_shortstr(&o, consumer_tag)
            amqp_u64(&o, tag)
            amqp_u8(&o, 1 if rec.delivery_count > 1 else 0)
            amqp_shortstr(&o, exchange)
            amqp_shortstr(&o, rec.key)
            amqp_put32(o.buf + at, <uint32_t>(o.len - at - 4))
            amqp_u8(&o, AMQP_FRAME_END)
            amqp_content_into(&o, channel, rec.headers, None, rec.value, frame_max)
            tag += 1
    except BaseException:
        free(o.buf)
        raise
    return amqp_take(&o)


cdef inline uint32_t amqp_get16(const unsigned char *p) noexcept:
    return (<uint32_t>p[0] << 8) | p[1]


cdef inline uint32_t amqp_get32(const unsigned char *p) noexcept:
    return (<uint32_t>p[0] << 24) | (<uint32_t>p[1] << 16) | (<uint32_t>p[2] << 8) | p[3]


cdef inline uint64_t amqp_get64(const unsigned char *p) noexcept:
    return (<uint64_t>amqp_get32(p) << 32) | amqp_get32(p + 4)


cdef object amqp_props_parse(const unsigned char *p, Py_ssize_t n, list headers):
    """A content header's payload (from its class id) -> body size; the properties
    go to ``headers``. Returns (size, table bytes or None), or a str saying what
    is wrong."""
    cdef Py_ssize_t pos = 14, ln
    cdef uint32_t flags
    cdef int bit, i
    cdef char kind
    cdef object v, table = None
    if n < 14:
        return "content header too short"
    if amqp_get16(p) != 60:
        return f"content header of class {amqp_get16(p)}"
    size = amqp_get64(p + 4)
    flags = amqp_get16(p + 12)
    if flags & 1:
        return "property flags continue past the defined properties"
    if flags & 0x3:
        return "an undefined property flag is set"
    for bit in range(15, 1, -1):
        if not flags & (1U << bit):
            continue
        i = 15 - bit
        kind = AMQP_PROP_KINDS[i]
        if kind == c's':
            if pos >= n:
                return "content properties run past the frame"
            ln = p[pos]
            if pos + 1 + ln > n:
                return "property runs past the frame"
            v = PyBytes_FromStringAndSize(<const char *>p + pos + 1, ln)
            pos += 1 + ln
        elif kind == c't':
            if pos + 4 > n:
                return "content properties run past the frame"
            ln = amqp_get32(p + pos)
            if pos + 4 + ln > n:
                return "headers table runs past the frame"
            v = table = PyBytes_FromStringAndSize(<const char *>p + pos + 4, ln)
            pos += 4 + ln
        elif kind == c'o':
            if pos >= n:
                return "content properties run past the frame"
            v = b"%d" % p[pos]
            pos += 1
        else:
            if pos + 8 > n:
                return "content properties run past the frame"
            v = b"%d" % amqp_get64(p + pos)
            pos += 8
        headers.append((AMQP_PROP_NAMES[i], v))
    return (size, table)


def amqp_parse_properties(payload):
    """A content-header frame's payload -> (body size, record headers, headers
    table bytes or None: the caller checks that table). ValueError when it is
    not one."""
    cdef Py_buffer view
    cdef list headers = []
    get_buffer(payload, &view, False)
    try:
        got = amqp_props_parse(<const unsigned char *>view.buf, view.len, headers)
    finally:
        PyBuffer_Release(&view)
    if isinstance(got, str):
        raise ValueError(got)
    return got[0], headers, got[1]


def amqp_scan_publishes(buf, Py_ssize_t pos, Py_ssize_t end, uint32_t channel, Py_ssize_t frame_max,
                        Py_ssize_t max_size):
    """Whole basic.publish messages on ``channel`` (method, content header and
    body frames, all in ``buf[pos:end]``, each frame well formed and within
    ``frame_max``, the body at most ``max_size``) from ``pos`` on, up to the
    first frame that is anything else or not all there. Returns ([(exchange,
    routing key, publish bits, record headers, headers table or None, body)],
    position after them): the caller reads what follows frame by frame, so
    every error is reported by its one general path."""
    cdef Py_buffer view
    cdef const unsigned char *b
    cdef const unsigned char *m
    cdef Py_ssize_t at, size, q, ln, got, body_size
    cdef unsigned int bits
    cdef uint32_t ch
    cdef list out = []
    cdef list headers
    cdef list chunks
    get_buffer(buf, &view, False)
    try:
        b = <const unsigned char *>view.buf
        if end > view.len:
            end = view.len
        while True:
            at = pos
            # the method frame
            if end - at < 8 or b[at] != AMQP_FRAME_METHOD:
                break
            ch = amqp_get16(b + at + 1)
            if ch != channel:
                break
            size = amqp_get32(b + at + 3)
            if size + 8 > frame_max or end - at < size + 8 or b[at + 7 + size] != AMQP_FRAME_END:
                break
            m = b + at + 7
            if size < 9 or amqp_get32(m) != 0x003C0028:
                break
            q = 6
            ln = m[q]
            if q + 1 + ln >= size:
                break
            exchange = PyBytes_FromStringAndSize(<const char *>m + q + 1, ln)
            q += 1 + ln
            ln = m[q]
            if q + 1 + ln >= size:
                break
            key = PyBytes_FromStringAndSize(<const char *>m + q + 1, ln)
            q += 1 + ln
            bits = m[q]
            at += size + 8
            # the content header
            if end - at < 8 or b[at] != AMQP_FRAME_HEADER or amqp_get16(b + at + 1) != ch:
                break
            size = amqp_get32(b + at + 3)
            if size + 8 > frame_max or end - at < size + 8 or b[at + 7 + size] != AMQP_FRAME_END:
                break
            headers = []
            got_props = amqp_props_parse(b + at + 7, size, headers)
            if isinstance(got_props, str):
                break
            body_size = got_props[0]
            if body_size > max_size:
                break
            at += size + 8
            # the body frames
            got = 0
            chunks = None
            body = b""
            while got < body_size:
                if end - at < 8 or b[at] != AMQP_FRAME_BODY or amqp_get16(b + at + 1) != ch:
                    break
                size = amqp_get32(b + at + 3)
                if size + 8 > frame_max or end - at < size + 8 or b[at + 7 + size] != AMQP_FRAME_END \
                        or got + size > body_size:
                    break
                piece = PyBytes_FromStringAndSize(<const char *>b + at + 7, size)
                if got == 0 and size == body_size:
                    body = piece
                else:
                    if chunks is None:
                        chunks = []
                    chunks.append(piece)
                got += size
                at += size + 8
            if got < body_size:
                break
            if chunks is not None:
                body = b"".join(chunks)
            out.append((exchange, key, bits, headers, got_props[1], body))
            pos = at
    finally:
        PyBuffer_Release(&view)
    return out, pos
