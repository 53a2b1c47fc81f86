"""decode/encode must not leak references or memory."""

import sys
import tracemalloc

from umlog._native import core


def test_input_refcounts_unchanged():
    vals = [b"v%d" % i for i in range(100)]
    keys = [b"k%d" % i for i in range(100)]
    hdrs = [[("h", b"x")] for _ in range(100)]
    before = [sys.getrefcount(v) for v in vals] + [sys.getrefcount(vals), sys.getrefcount(keys)]
    batch = core.encode_batch(vals, keys, hdrs, codec=0)
    gz = core.encode_batch(vals, keys, hdrs, codec=1)
    after = [sys.getrefcount(v) for v in vals] + [sys.getrefcount(vals), sys.getrefcount(keys)]
    assert before == after
    rb, rg = sys.getrefcount(batch), sys.getrefcount(gz)
    for buf in (batch, gz):
        core.decode_records(buf)
        core.validate_batch(buf)
        core.scan_batches(buf)
    del buf
    assert (sys.getrefcount(batch), sys.getrefcount(gz)) == (rb, rg)
    b = core.BatchBuilder()
    v = b"value"
    rv = sys.getrefcount(v)
    for _ in range(10):
        b.append(v, v, [("a", v)])
    b.build(0)
    assert sys.getrefcount(v) == rv


def test_no_growth_over_many_iterations():
    vals = [b"x" * 50] * 200
    hdrs = [[("h", b"y")]] * 200
    def work():
        for codec in (0, 2):
            buf = core.encode_batch(vals, vals, hdrs, codec=codec)
            core.decode_records(buf, topic="t")
            core.validate_batch(buf)
        bb = core.BatchBuilder()
        for v in vals:
            bb.append(v)
        bb.build(0)
        try:
            core.decode_records(buf[:-1] + b"\x00", check_crc=True)
        except ValueError:
            pass
    for _ in range(20):
        work()
    tracemalloc.start()
    try:
        work()
        first = tracemalloc.get_traced_memory()[0]
        for _ in range(300):
            work()
        last = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    assert last - first < 64 * 1024, (first, last)
