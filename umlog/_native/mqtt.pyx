# MQTT bytes on the MQTT door's message path. umlog/server/mqtt/codec.py is
# the reference codec and decodes every packet these functions leave alone:
# mqtt_scan only takes the well-formed PUBLISH and PUBACK packets a client
# sends by the thousand and stops at anything else (another packet type,
# MQTT 5 properties, a partial packet, anything the codec would refuse), so
# every error is still raised by one piece of code. mqtt_publish_frame
# encodes the PUBLISH the fan-out sends per message and subscriber.

from libc.string cimport memchr


def mqtt_scan(buf, Py_ssize_t pos, int version, Py_ssize_t max_packet_size, list out,
              object publish_cls, object puback_cls):
    """Decode the run of plain PUBLISH and PUBACK packets at ``buf[pos:]``.

    Appends a ``publish_cls`` or ``puback_cls`` instance (their slots set as
    the codec's decoder would) to ``out`` per packet and returns the position
    after the last one taken. It stops, without raising, at the first packet
    that is partial, over ``max_packet_size``, of another type, an MQTT 5 one
    with properties or reason codes, or malformed in any way.
    """
    cdef Py_buffer view
    PyObject_GetBuffer(buf, &view, PyBUF_SIMPLE)
    try:
        return _mqtt_scan(<const unsigned char *>view.buf, view.len, pos, version, max_packet_size, out,
                          publish_cls, puback_cls)
    finally:
        PyBuffer_Release(&view)


cdef Py_ssize_t _mqtt_scan(const unsigned char *p, Py_ssize_t end, Py_ssize_t pos, int version,
                           Py_ssize_t max_packet_size, list out, object publish_cls,
                           object puback_cls) except -1:
    cdef Py_ssize_t i, length, total, body, bend, q, tlen
    cdef unsigned int first, b, shift, qos, pid
    cdef bint whole
    cdef object topic, obj
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
        if first >> 4 == 3:
            qos = (first >> 1) & 3
            if qos == 3 or (first & 0x08 and qos == 0) or length < 2:
                break
            tlen = (<Py_ssize_t>p[body] << 8) | p[body + 1]
            q = body + 2 + tlen
            if q > bend or memchr(p + body + 2, 0, <size_t>tlen) != NULL:
                break
            try:
                topic = PyUnicode_DecodeUTF8(<const char *>p + body + 2, tlen, "strict")
            except UnicodeDecodeError:
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
            obj = puback_cls.__new__(puback_cls)
            obj.packet_id = pid
            obj.reason = 0
            obj.properties = {}
        else:
            break
        out.append(obj)
        pos += total
    return pos


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
        o[0] = <unsigned char>(0x30 | (flags & 0x0F))
        k = 1
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
        k += 2 + tlen
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
