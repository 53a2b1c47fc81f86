"""New files and folders are durable before anything in them is acknowledged:
the directory fsyncs, seen through a spy (the power-loss tests check the result
on a file system that drops what was not synced)."""

from __future__ import annotations

import os

import pytest

import umlog
from umlog.log import files, partition


@pytest.fixture
def synced_dirs(monkeypatch):
    calls: list[str] = []
    real = files.fsync_dir

    def spy(path):
        calls.append(os.path.abspath(path))
        return real(path)

    monkeypatch.setattr(files, "fsync_dir", spy)
    monkeypatch.setattr(partition, "fsync_dir", spy)
    import umlog.broker as broker_mod

    monkeypatch.setattr(broker_mod, "fsync_dir", spy)
    return calls


@pytest.mark.parametrize("how", ["append", "append_many", "append_batches"])
def test_a_record_in_a_rolled_segment_is_acknowledged_after_its_directory_fsync(tmp_path, synced_dirs, how):
    with umlog.open(str(tmp_path / "d"), fsync="always") as b:
        t = b.create_topic("t", config={"segment.bytes": 1024})
        p = t.partition(0)
        pdir = os.path.abspath(p.directory)
        for i in range(40):
            before = len(p.segments)
            synced_dirs.clear()
            if how == "append":
                t.append(b"x" * 100, partition=0)
            elif how == "append_many":
                t.append_many([b"x" * 100] * 3, partition=0)
            else:
                p.append_batches(umlog._native.core.encode_batch([b"x" * 100] * 3))
            if len(p.segments) > before:  # this append rolled: its new file's entry was synced
                assert pdir in synced_dirs, (i, synced_dirs)
        assert len(p.segments) > 3


def test_new_partitions_and_topics_are_durable_when_created(tmp_path, synced_dirs):
    data = os.path.abspath(str(tmp_path / "d"))
    with umlog.open(data, fsync="always") as b:
        synced_dirs.clear()
        b.create_topic("t", partitions=2)
        assert data in synced_dirs  # the partition folders' entries
        assert os.path.join(data, "meta") in synced_dirs  # the topic's meta file
        synced_dirs.clear()
        b.add_partitions("t", 3)
        assert data in synced_dirs
        synced_dirs.clear()
        b.topic("t").append(b"first", partition=2)  # the new partition's first segment file
        assert os.path.abspath(b.topic("t").partition(2).directory) in synced_dirs
        synced_dirs.clear()
        b.delete_topic("t")
        assert synced_dirs.index(data) < synced_dirs.index(os.path.join(data, "meta"))  # renames, then the meta


def test_fsync_never_fsyncs_no_directory_on_appends(tmp_path, synced_dirs):
    with umlog.open(str(tmp_path / "d"), fsync="never") as b:
        t = b.create_topic("t", config={"segment.bytes": 1024})
        synced_dirs.clear()
        for _ in range(40):
            t.append_many([b"x" * 100] * 3, partition=0)
        assert len(t.partition(0).segments) > 3
        assert synced_dirs == []
