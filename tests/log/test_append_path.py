"""The per-record append path: native routing, the open batch, its lock."""

import threading

import pytest
from helpers import scaled, wait_until

import umlog
from umlog._native.core import OpenBatch, RecordMetadata, partition_for_key


def test_record_metadata_is_a_triple():
    md = RecordMetadata(2, 10, 1234)
    assert md == (2, 10, 1234) and tuple(md) == (2, 10, 1234)
    p, o, ts = md
    assert (p, o, ts) == (md.partition, md.offset, md.timestamp) == (2, 10, 1234)
    assert md[1] == 10 and len(md) == 3
    assert repr(md) == "RecordMetadata(partition=2, offset=10, timestamp=1234)"
    assert hash(md) == hash((2, 10, 1234))


@pytest.mark.parametrize("fsync", ["never", "always"])
def test_threads_appending_get_dense_unique_offsets(data_dir, fsync):
    n_threads, per_thread = 4, 3000 if fsync == "never" else 150
    with umlog.open(data_dir, fsync=fsync) as b:
        t = b.create_topic("t", partitions=2, config={"segment.bytes": 50_000})
        got = [[] for _ in range(n_threads)]

        def work(k):
            for i in range(per_thread):
                if i % 50 == 49:
                    offs = t.append_many([b"m%d-%d" % (k, i)] * 3, partition=k % 2)
                    got[k].extend((k % 2, o, b"m%d-%d" % (k, i)) for o in offs)
                else:
                    md = t.append(b"%d-%d" % (k, i), partition=k % 2)
                    got[k].append((md.partition, md.offset, b"%d-%d" % (k, i)))

        threads = [threading.Thread(target=work, args=(k,)) for k in range(n_threads)]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        expect = {}
        for rows in got:
            for p, o, v in rows:
                assert (p, o) not in expect
                expect[(p, o)] = v
        for p in (0, 1):
            part = t.partition(p)
            recs = list(part.read(0))
            assert [r.offset for r in recs] == list(range(part.end_offset))
            assert {(p, r.offset): r.value for r in recs} == {k: v for k, v in expect.items() if k[0] == p}


def test_keyed_and_sticky_routing(data_dir):
    with umlog.open(data_dir) as b:
        t = b.create_topic("t", partitions=5)
        for k in [b"a", b"bb", b"customer-7", bytearray(b"x"), memoryview(b"yz")]:
            assert t.append(b"v", key=k).partition == partition_for_key(bytes(k), 5)
        # keyless records stick to one partition while its open batch fills
        parts = {t.append(b"v").partition for _ in range(20)}
        assert len(parts) == 1
        with pytest.raises(IndexError):
            t.append(b"v", partition=5)
        with pytest.raises(TypeError):
            t.append(b"v", key="str key")
        headers_gen = ((f"h{i}", b"x") for i in range(2))
        md = t.append(b"v", headers=headers_gen, partition=0)
        assert next(iter(t.partition(0).read(md.offset))).headers == (("h0", b"x"), ("h1", b"x"))


def test_open_batch_is_sealed_by_linger_and_size(data_dir):
    # A linger a stall between the append and the next line cannot outlast (a
    # busy machine deschedules this thread for tens of milliseconds).
    with umlog.open(data_dir, linger_ms=int(scaled(0.5) * 1000)) as b:
        t = b.create_topic("t")
        p = t.partition(0)
        t.append(b"x", partition=0)
        assert p.lock.count == 1 and p.active.size == 0
        wait_until(lambda: p.active.size > 0, 10, "the flusher to seal the batch")
        assert p.lock.count == 0  # the flusher thread wrote it
        for _ in range(2000):
            t.append(b"y" * 100, partition=0)
        assert p.active.size > 65536  # sealed at 64 KiB without waiting


def test_open_batch_lock_is_a_plain_lock():
    ob = OpenBatch()
    assert not ob.locked()
    with ob:
        assert ob.locked()
        off, ts = ob.add(b"v")
        assert off == 0 and ob.count == 1 and ob.base_offset == 0
    assert not ob.locked()


@pytest.mark.parametrize("stored,codec", [("producer", None), ("zstd", 4), ("uncompressed", 0), ("gzip", 1)])
def test_compression_type_decides_the_stored_codec_of_producer_batches(tmp_path, stored, codec):
    from umlog._native.core import batch_info, encode_batch

    with umlog.open(str(tmp_path / "d")) as b:
        p = b.create_topic("t", config={"compression.type": stored}).partition(0)
        sent = [0, 2, 3]  # none, snappy, lz4 from the producer
        for i, c in enumerate(sent):
            p.append_batches(encode_batch([b"v%d-%d" % (i, j) * 20 for j in range(50)], keys=[b"k"] * 50,
                                          codec=c))
        (data,) = p.read_batches(0, 1 << 20)
        data = bytes(data)
        got, pos = [], 0
        while pos < len(data):
            info = batch_info(data, pos)
            got.append(info.codec)
            pos += info.size
        assert got == (sent if codec is None else [codec] * 3)
        assert [r.value for r in p.read(0)] == [b"v%d-%d" % (i, j) * 20 for i in range(3) for j in range(50)]
        assert [r.offset for r in p.read(0)] == list(range(150))
