# encode_batch_arrow: RecordBatch v2 straight from Arrow arrays (later).


def encode_batch_arrow(values, keys=None, timestamps=None, *, int64_t base_offset=0,
                       int64_t now_ms=-1, int codec=0):
    """Same as encode_batch from Arrow arrays (reads their buffers directly)."""
    vals = values.to_pylist()
    ks = keys.to_pylist() if keys is not None else None
    ts = timestamps.to_pylist() if timestamps is not None else None
    if vals and isinstance(vals[0], str):
        vals = [v.encode() if v is not None else None for v in vals]
    return encode_batch(vals, ks, None, ts, base_offset=base_offset, now_ms=now_ms,
                        codec=codec)
