"""powerloss_fs: a FUSE file system that forgets everything not fsync'd when told to cut the power.

A test (or a person) mounts it over a backing folder, runs a writer on the
mount, and at any moment says "cut": from then on every call on the mount
fails with EIO, and the backing folder holds exactly what a disk would hold
after a power cut at that moment. Unmount, mount again, and the writer's
recovery sees the durable state. A SIGKILL keeps the page cache, so it cannot
tell an fdatasync from none; this can.

The rule it keeps, the strict reading of POSIX (stricter than ext4 or xfs,
whose journals often make one fsync carry other files' changes along):

* a file's data and size are durable only once that file is fsync'd or
  fdatasync'd (msync(MS_SYNC) of a map is an fsync through FUSE);
* a directory's entries (created, renamed in or out, unlinked, replaced) are
  durable only once that directory is fsync'd. A file whose data was fsync'd
  but whose directory never was is gone after the cut; a directory whose
  parent was never fsync'd is gone with everything in it.

Theory of operation
-------------------
The backing folder *is* the durable image, always: a plain tree that a reader
can open directly (after a cut, or while the FS is not mounted). Beside the
tree, ``<backing>/.powerloss/`` holds one file per live inode of the mount
(``.powerloss/<ino>``), the inode's durable content; the durable names in the
tree are hard links to it, so an fsync of the file writes once and every
durable name sees it, wherever the volatile names have moved. A directory
whose entry in its parent is not durable yet lives at ``.powerloss/<ino>/``
and is moved into the tree when its parent is fsync'd.

The volatile state, what the mount serves, is in this process's memory:

* per file: its volatile size, the pages written since its last fsync (4 KiB
  copies, read-modify-write over the durable content) and ``low``, the
  smallest size it had since then (durable bytes past it were truncated away
  and read as zeros);
* per directory: its volatile entries and its durable entries (name ->
  inode); fsync of the directory makes the backing tree's entries equal the
  volatile ones (hard links made or removed, directories moved).

Reads are the durable bytes below ``low`` with the dirty pages on top. Every
operation runs under one lock, so a cut is never in the middle of an fsync's
application: an fsync is atomic, as a journalled metadata update would be.
``cut`` drops the volatile state, answers with what it dropped (each file's
unsynced bytes, each directory entry not made durable), and fails every later
call with EIO. Mounting again throws away ``.powerloss/`` (inodes unlinked
or never linked durably: what fsck would free) and rebuilds the model from the
tree.

Limits
------
* Shared writable mmap works (the mount uses the page cache, no direct_io):
  the kernel writes dirty mapped pages back as writes, msync(MS_SYNC) and
  fsync send them and then the fsync; pages dirtied in a map and never synced
  are lost at the cut, as on a disk. What the kernel has not written back yet
  is not seen by this process, so "written through a map" becomes visible to
  the model only at writeback, msync or fsync.
* Metadata other than size (mode, times) is kept in memory and copied to the
  backing file at its fsync; directories' own metadata is not modelled.
  Hard links, symlinks, device nodes, xattrs and byte-range locks (the kernel
  keeps flock and POSIX locks locally) are not offered.
* ``fallocate`` only extends the size (mode 0) or does nothing (KEEP_SIZE);
  nothing else is offered. No free-space accounting: statfs is the backing
  file system's.
* The durable image is written with ordinary writes and, unless
  ``real_fsync``, never fsync'd itself: the machine is not expected to lose
  power during a test.
* Everything runs under one lock in Python: a few thousand operations per
  second, plenty for crash tests, not a benchmark platform.

Usage
-----
By hand (``fuse3`` and ``libfuse2`` from Debian, ``mfusepy`` from PyPI, as root)::

    python tools/powerloss_fs.py BACKING MOUNTPOINT
    # ... write under MOUNTPOINT; then type "cut" (and Enter) on stdin:
    # a JSON line lists what was dropped. EOF on stdin (Ctrl-D) unmounts.

From Python (what tests/hardening/test_powerloss.py does)::

    with PowerLossMount(backing, mountpoint) as fs:   # mounted in a child process
        ...                                            # write under mountpoint
        report = fs.cut()                              # {"files": [...], "entries": [...]}
        ...                                            # kill the writer
        fs.remount()                                   # the durable state, mounted again
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import stat
import subprocess
import sys
import threading
import time

PAGE = 4096
STORE = ".powerloss"
ROOT = 1
_FALLOC_FL_KEEP_SIZE = 1


def fusermount() -> str | None:
    return shutil.which("fusermount3") or shutil.which("fusermount")


def fuse_unavailable() -> str | None:
    """Why a FUSE mount cannot be made here (None: it can)."""
    if not os.path.exists("/dev/fuse"):
        return "no /dev/fuse"
    try:
        os.close(os.open("/dev/fuse", os.O_RDWR))
    except OSError as e:
        return f"/dev/fuse: {e.strerror}"
    if fusermount() is None:
        return "no fusermount (Debian package fuse3)"
    probe = "import mfusepy"
    r = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    if r.returncode != 0:
        last = (r.stderr.strip().splitlines() or ["?"])[-1]
        return f"mfusepy over libfuse cannot be loaded (pip mfusepy, Debian libfuse2): {last}"
    return None


class _Node:
    __slots__ = ("ino", "is_dir", "mode", "atime", "mtime", "ctime",
                 "nlink", "opens", "fd", "dsize", "vsize", "low", "pages",
                 "entries", "dentries", "dparent", "dname")

    def __init__(self, ino: int, is_dir: bool, mode: int) -> None:
        now = time.time_ns()
        self.ino, self.is_dir, self.mode = ino, is_dir, mode
        self.atime = self.mtime = self.ctime = now
        self.nlink = 0  # volatile entries naming it
        self.opens = 0
        # file
        self.fd = -1
        self.dsize = self.vsize = self.low = 0
        self.pages: dict[int, bytearray] = {}
        # directory
        self.entries: dict[str, int] = {}
        self.dentries: dict[str, int] = {}
        self.dparent: int | None = None  # durable location; None: .powerloss/<ino>
        self.dname = ""


def _fail(code: int):
    import mfusepy

    raise mfusepy.FuseOSError(code)


class PowerLossOps:
    """The mfusepy operations: the model described in the module docstring."""

    use_ns = True

    def __init__(self, backing: str, real_fsync: bool = False, on_ready=None) -> None:
        self.backing = os.path.abspath(backing)
        self.store = os.path.join(self.backing, STORE)
        self.real_fsync = real_fsync
        self.on_ready = on_ready
        self.mutex = threading.Lock()
        self.dead = False
        self.nodes: dict[int, _Node] = {}
        self.handles: dict[int, int] = {}  # fh -> ino
        self.next_ino = ROOT
        self.next_fh = 1
        self.stats = {"writes": 0, "fsyncs": 0, "dir_fsyncs": 0}
        self._load()

    # -- the durable image ---------------------------------------------------

    def _new(self, is_dir: bool, mode: int) -> _Node:
        n = _Node(self.next_ino, is_dir, mode)
        self.next_ino += 1
        self.nodes[n.ino] = n
        return n

    def _spath(self, ino: int) -> str:
        return os.path.join(self.store, str(ino))

    def _dpath(self, d: _Node) -> str:
        """Where a directory's durable entries are in the backing folder."""
        if d.ino == ROOT:
            return self.backing
        if d.dparent is None:
            return self._spath(d.ino)
        return os.path.join(self._dpath(self.nodes[d.dparent]), d.dname)

    def _load(self) -> None:
        # What is in the store is an inode no durable entry names (unlinked,
        # or created and never linked durably): what fsck would free.
        shutil.rmtree(self.store, ignore_errors=True)
        os.makedirs(self.store)
        root = self._new(True, stat.S_IFDIR | 0o755)
        root.nlink = 1
        by_real_ino: dict[tuple[int, int], _Node] = {}

        def walk(d: _Node, path: str) -> None:
            for e in sorted(os.scandir(path), key=lambda e: e.name):
                if d.ino == ROOT and e.name == STORE:
                    continue
                st = e.stat(follow_symlinks=False)
                if stat.S_ISDIR(st.st_mode):
                    n = self._new(True, st.st_mode)
                    n.dparent, n.dname = d.ino, e.name
                    walk(n, e.path)
                elif stat.S_ISREG(st.st_mode):
                    key = (st.st_dev, st.st_ino)
                    n = by_real_ino.get(key)
                    if n is None:
                        n = by_real_ino[key] = self._new(False, st.st_mode)
                        os.link(e.path, self._spath(n.ino))
                        n.fd = os.open(self._spath(n.ino), os.O_RDWR | os.O_CLOEXEC)
                        n.dsize = n.vsize = n.low = st.st_size
                        n.mtime, n.ctime, n.atime = st.st_mtime_ns, st.st_ctime_ns, st.st_atime_ns
                else:
                    continue  # symlinks, fifos: not offered
                n.nlink += 1
                d.entries[e.name] = d.dentries[e.name] = n.ino

        walk(root, self.backing)

    def _sync_file(self, n: _Node) -> None:
        if n.low < n.dsize:
            os.ftruncate(n.fd, n.low)
        for p in sorted(n.pages):
            start = p * PAGE
            end = min(start + PAGE, n.vsize)
            if end > start:
                os.pwrite(n.fd, n.pages[p][: end - start], start)
        if os.fstat(n.fd).st_size != n.vsize:
            os.ftruncate(n.fd, n.vsize)
        n.pages.clear()
        n.dsize = n.low = n.vsize
        os.utime(n.fd, ns=(n.atime, n.mtime))
        if self.real_fsync:
            os.fsync(n.fd)

    def _drop_durable(self, d: _Node, name: str) -> None:
        ino = d.dentries.pop(name)
        path = os.path.join(self._dpath(d), name)
        n = self.nodes.get(ino)
        if n is not None and n.is_dir:
            if n.nlink:  # alive elsewhere in the volatile tree: park it
                os.rename(path, self._spath(ino))
                n.dparent = None
            else:
                shutil.rmtree(path)
                del self.nodes[ino]
        else:
            os.unlink(path)

    def _sync_dir(self, d: _Node) -> None:
        for name, ino in list(d.dentries.items()):
            if d.entries.get(name) != ino:
                self._drop_durable(d, name)
        base = self._dpath(d)
        for name, ino in d.entries.items():
            if d.dentries.get(name) == ino:
                continue
            n = self.nodes[ino]
            if n.is_dir:
                src = self._dpath(n)
                if n.dparent is not None:  # renamed here from a durable place
                    self.nodes[n.dparent].dentries.pop(n.dname, None)
                os.rename(src, os.path.join(base, name))
                n.dparent, n.dname = d.ino, name
            else:
                os.link(self._spath(ino), os.path.join(base, name))
            d.dentries[name] = ino
        if self.real_fsync:
            fd = os.open(base, os.O_RDONLY | os.O_DIRECTORY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)

    def _forget(self, n: _Node) -> None:
        """A file no volatile entry names and no one has open: its volatile
        state can go (durable names, hard links in the tree, keep the data)."""
        if n.is_dir or n.nlink or n.opens:
            return
        os.close(n.fd)
        os.unlink(self._spath(n.ino))
        n.pages.clear()
        del self.nodes[n.ino]

    def _forget_dir(self, n: _Node) -> None:
        """A removed directory that was never durable anywhere; a durable one
        goes when the directory naming it durably is fsync'd."""
        if n.dparent is None:
            shutil.rmtree(self._spath(n.ino), ignore_errors=True)
            del self.nodes[n.ino]

    # -- power ----------------------------------------------------------------

    def paths(self) -> dict[int, str]:
        out = {ROOT: "/"}

        def walk(d: _Node, prefix: str) -> None:
            for name, ino in d.entries.items():
                out[ino] = prefix + name
                n = self.nodes[ino]
                if n.is_dir:
                    walk(n, prefix + name + "/")

        walk(self.nodes[ROOT], "/")
        return out

    def pending(self) -> dict:
        """What a cut now would drop."""
        paths = self.paths()
        files, entries = [], []
        for n in self.nodes.values():
            if n.is_dir:
                where = paths.get(n.ino)
                if where is None:
                    continue
                for name in sorted(set(n.entries) | set(n.dentries)):
                    v, dur = n.entries.get(name), n.dentries.get(name)
                    if v == dur:
                        continue
                    what = "created" if dur is None else "removed" if v is None else "replaced"
                    entries.append({"dir": where, "name": name, "lost": what,
                                    "is_dir": v is not None and self.nodes[v].is_dir})
            elif n.pages or n.vsize != n.dsize or n.low != n.dsize:
                files.append({"path": paths.get(n.ino, f"(unlinked inode {n.ino})"), "dirty_pages": len(n.pages),
                              "size": n.vsize, "durable_size": n.low if n.low < n.dsize else n.dsize})
        files.sort(key=lambda f: f["path"])
        return {"files": files, "entries": entries}

    def cut(self) -> dict:
        with self.mutex:
            if self.dead:
                return {"files": [], "entries": [], "already": True}
            report = self.pending()
            self.dead = True
            for n in self.nodes.values():
                n.pages.clear()
            return report

    def sync_all(self) -> None:
        """Make everything durable (a clean shutdown's `sync`)."""
        with self.mutex:
            for n in list(self.nodes.values()):
                if not n.is_dir and n.fd >= 0:
                    self._sync_file(n)
            pending = True
            while pending:  # parents before children do not matter: repeat until stable
                pending = False
                for d in list(self.nodes.values()):
                    if d.is_dir and d.ino in self.nodes and d.entries != d.dentries:
                        self._sync_dir(d)
                        pending = True

    # -- helpers --------------------------------------------------------------

    def _alive(self) -> None:
        if self.dead:
            _fail(errno.EIO)

    def _resolve(self, path: str) -> _Node:
        n = self.nodes[ROOT]
        for part in path.split("/"):
            if not part:
                continue
            if not n.is_dir:
                _fail(errno.ENOTDIR)
            ino = n.entries.get(part)
            if ino is None:
                _fail(errno.ENOENT)
            n = self.nodes[ino]
        return n

    def _parent(self, path: str) -> tuple[_Node, str]:
        head, name = path.rstrip("/").rsplit("/", 1)
        d = self._resolve(head or "/")
        if not d.is_dir:
            _fail(errno.ENOTDIR)
        return d, name

    def _node(self, path: str | None, fh) -> _Node:
        if fh:
            ino = self.handles.get(fh)
            if ino is not None and ino in self.nodes:
                return self.nodes[ino]
        if path is None:
            _fail(errno.EBADF)
        return self._resolve(path)

    def _handle(self, n: _Node) -> int:
        fh = self.next_fh
        self.next_fh += 1
        self.handles[fh] = n.ino
        n.opens += 1
        return fh

    def _durable_bytes(self, n: _Node, off: int, size: int) -> bytes:
        visible = min(n.low, n.dsize)
        if off >= visible or size <= 0:
            return b""
        return os.pread(n.fd, min(size, visible - off), off)

    def _page(self, n: _Node, p: int) -> bytearray:
        page = n.pages.get(p)
        if page is None:
            base = self._durable_bytes(n, p * PAGE, PAGE)
            page = n.pages[p] = bytearray(base) + bytearray(PAGE - len(base))
        return page

    def _set_size(self, n: _Node, length: int) -> None:
        if length < n.vsize:
            for p in [p for p in n.pages if p * PAGE >= length]:
                del n.pages[p]
            tail = n.pages.get(length // PAGE)
            if tail is not None:
                cut = length % PAGE
                tail[cut:] = bytes(PAGE - cut)
            n.low = min(n.low, length)
        n.vsize = length
        n.mtime = n.ctime = time.time_ns()

    # -- operations -----------------------------------------------------------

    def init(self, path):
        if self.on_ready is not None:
            self.on_ready()

    def getattr(self, path, fh=None):
        with self.mutex:
            self._alive()
            n = self._node(path, fh)
            size = 4096 if n.is_dir else n.vsize
            return {"st_mode": n.mode, "st_nlink": max(1, n.nlink) + (1 if n.is_dir else 0), "st_size": size,
                    "st_uid": os.getuid(), "st_gid": os.getgid(), "st_blksize": PAGE,
                    "st_blocks": (size + 511) // 512,
                    "st_atime": n.atime, "st_mtime": n.mtime, "st_ctime": n.ctime}

    def access(self, path, amode):
        with self.mutex:
            self._alive()
            self._resolve(path)
            return 0

    def statfs(self, path):
        self._alive()
        st = os.statvfs(self.backing)
        return {k: getattr(st, k) for k in ("f_bsize", "f_frsize", "f_blocks", "f_bfree", "f_bavail",
                                             "f_files", "f_ffree", "f_favail", "f_namemax")}

    def chmod(self, path, mode):
        with self.mutex:
            self._alive()
            n = self._resolve(path)
            n.mode = (n.mode & ~0o7777) | (mode & 0o7777)
            n.ctime = time.time_ns()
            return 0

    def chown(self, path, uid, gid):
        with self.mutex:
            self._alive()
            self._resolve(path)
            return 0

    def utimens(self, path, times=None):
        with self.mutex:
            self._alive()
            n = self._resolve(path)
            now = time.time_ns()
            n.atime, n.mtime = times if times else (now, now)
            n.ctime = now
            return 0

    def mkdir(self, path, mode):
        with self.mutex:
            self._alive()
            d, name = self._parent(path)
            if name in d.entries:
                _fail(errno.EEXIST)
            n = self._new(True, stat.S_IFDIR | (mode & 0o7777))
            os.mkdir(self._spath(n.ino))
            n.nlink = 1
            d.entries[name] = n.ino
            d.mtime = d.ctime = n.mtime
            return 0

    def rmdir(self, path):
        with self.mutex:
            self._alive()
            d, name = self._parent(path)
            n = self._resolve(path)
            if not n.is_dir:
                _fail(errno.ENOTDIR)
            if n.entries:
                _fail(errno.ENOTEMPTY)
            del d.entries[name]
            n.nlink = 0
            self._forget_dir(n)
            return 0

    def create(self, path, mode, flags=0):
        with self.mutex:
            self._alive()
            d, name = self._parent(path)
            if name in d.entries:
                n = self.nodes[d.entries[name]]
                if flags & os.O_EXCL:
                    _fail(errno.EEXIST)
                if flags & os.O_TRUNC:
                    self._set_size(n, 0)
                return self._handle(n)
            n = self._new(False, stat.S_IFREG | (mode & 0o7777))
            n.fd = os.open(self._spath(n.ino), os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
            n.nlink = 1
            d.entries[name] = n.ino
            d.mtime = d.ctime = n.mtime
            return self._handle(n)

    def open(self, path, flags):
        with self.mutex:
            self._alive()
            n = self._resolve(path)
            if n.is_dir:
                _fail(errno.EISDIR)
            if flags & os.O_TRUNC:
                self._set_size(n, 0)
            return self._handle(n)

    def opendir(self, path):
        with self.mutex:
            self._alive()
            n = self._resolve(path)
            if not n.is_dir:
                _fail(errno.ENOTDIR)
            return self._handle(n)

    def readdir(self, path, fh):
        with self.mutex:
            self._alive()
            n = self._node(path, fh)
            return [".", ".."] + list(n.entries)

    def _release(self, fh) -> int:
        with self.mutex:
            ino = self.handles.pop(fh, None)
            n = self.nodes.get(ino) if ino is not None else None
            if n is not None:
                n.opens -= 1
                if not self.dead:
                    self._forget(n)
            return 0

    def release(self, path, fh):
        return self._release(fh)

    def releasedir(self, path, fh):
        return self._release(fh)

    def flush(self, path, fh):
        return 0

    def read(self, path, size, offset, fh):
        with self.mutex:
            self._alive()
            n = self._node(path, fh)
            end = min(offset + size, n.vsize)
            if offset >= end:
                return b""
            base = self._durable_bytes(n, offset, end - offset)
            out = bytearray(base) + bytearray(end - offset - len(base))
            for p in range(offset // PAGE, (end - 1) // PAGE + 1):
                page = n.pages.get(p)
                if page is None:
                    continue
                lo, hi = max(offset, p * PAGE), min(end, (p + 1) * PAGE)
                out[lo - offset:hi - offset] = page[lo - p * PAGE:hi - p * PAGE]
            n.atime = time.time_ns()
            return bytes(out)

    def write(self, path, data, offset, fh):
        with self.mutex:
            self._alive()
            n = self._node(path, fh)
            pos, view = offset, memoryview(data)
            while view:
                p, at = divmod(pos, PAGE)
                take = min(PAGE - at, len(view))
                self._page(n, p)[at:at + take] = view[:take]
                pos += take
                view = view[take:]
            if pos > n.vsize:
                n.vsize = pos
            n.mtime = n.ctime = time.time_ns()
            self.stats["writes"] += 1
            return len(data)

    def truncate(self, path, length, fh=None):
        with self.mutex:
            self._alive()
            n = self._node(path, fh)
            if n.is_dir:
                _fail(errno.EISDIR)
            self._set_size(n, length)
            return 0

    def fallocate(self, path, mode, offset, size, fh):
        with self.mutex:
            self._alive()
            n = self._node(path, fh)
            if mode & ~_FALLOC_FL_KEEP_SIZE:
                _fail(errno.EOPNOTSUPP)
            if not mode & _FALLOC_FL_KEEP_SIZE and offset + size > n.vsize:
                self._set_size(n, offset + size)
            return 0

    def fsync(self, path, datasync, fh):
        with self.mutex:
            self._alive()
            n = self._node(path, fh)
            if n.is_dir:
                self._sync_dir(n)
            else:
                self._sync_file(n)
            self.stats["fsyncs"] += 1
            return 0

    def fsyncdir(self, path, datasync, fh):
        with self.mutex:
            self._alive()
            n = self._node(path, fh)
            self._sync_dir(n)
            self.stats["dir_fsyncs"] += 1
            return 0

    def unlink(self, path):
        with self.mutex:
            self._alive()
            d, name = self._parent(path)
            n = self._resolve(path)
            if n.is_dir:
                _fail(errno.EISDIR)
            del d.entries[name]
            d.mtime = d.ctime = time.time_ns()
            n.nlink -= 1
            self._forget(n)
            return 0

    def rename(self, old, new):
        with self.mutex:
            self._alive()
            sd, sname = self._parent(old)
            n = self._resolve(old)
            dd, dname = self._parent(new)
            if sd is dd and sname == dname:
                return 0
            if n.is_dir:  # not into itself
                paths = self.paths()
                if dd is n or paths.get(dd.ino, "/").startswith(paths[n.ino] + "/"):
                    _fail(errno.EINVAL)
            victim_ino = dd.entries.get(dname)
            if victim_ino is not None:
                victim = self.nodes[victim_ino]
                if victim.is_dir and not n.is_dir:
                    _fail(errno.EISDIR)
                if n.is_dir and not victim.is_dir:
                    _fail(errno.ENOTDIR)
                if victim.is_dir and victim.entries:
                    _fail(errno.ENOTEMPTY)
                victim.nlink -= 1
            del sd.entries[sname]
            dd.entries[dname] = n.ino
            now = time.time_ns()
            sd.mtime = sd.ctime = dd.mtime = dd.ctime = n.ctime = now
            if victim_ino is not None:
                victim = self.nodes[victim_ino]
                if victim.is_dir:
                    self._forget_dir(victim)
                else:
                    self._forget(victim)
            return 0

    def destroy(self, path):
        return None


# -- running it -----------------------------------------------------------------


def serve(backing: str, mountpoint: str, real_fsync: bool = False, debug: bool = False) -> None:
    """Mount in the foreground; control lines on stdin, answers on stdout.

    ``cut`` -> one JSON line: what was dropped; ``pending`` -> what a cut would
    drop; ``sync`` -> make everything durable; ``stats``. EOF on stdin (the
    controlling process is gone) unmounts, so a dead test leaves no mount.
    """
    import mfusepy

    out_lock = threading.Lock()

    def say(obj) -> None:
        with out_lock:
            sys.stdout.write(json.dumps(obj) + "\n")
            sys.stdout.flush()

    ops = PowerLossOps(backing, real_fsync=real_fsync, on_ready=lambda: say({"ready": True}))

    def control() -> None:
        for line in sys.stdin:
            cmd = line.strip()
            if cmd == "cut":
                report = ops.cut()
                for e in report["entries"]:
                    print(f"powerloss_fs: dropped entry {e['dir']} {e['name']} ({e['lost']})", file=sys.stderr)
                for f in report["files"]:
                    print(f"powerloss_fs: dropped data {f['path']} {f['durable_size']} -> {f['size']} bytes "
                          f"({f['dirty_pages']} dirty pages)", file=sys.stderr)
                say({"cut": report})
            elif cmd == "pending":
                with ops.mutex:
                    say({"pending": ops.pending()})
            elif cmd == "sync":
                ops.sync_all()
                say({"synced": True})
            elif cmd == "stats":
                with ops.mutex:
                    say({"stats": dict(ops.stats, inodes=len(ops.nodes))})
            elif cmd:
                say({"error": f"unknown command {cmd!r}"})
        subprocess.run([fusermount() or "fusermount", "-u", "-z", mountpoint], capture_output=True)

    threading.Thread(target=control, name="control", daemon=True).start()
    mfusepy.FUSE(ops, mountpoint, foreground=True, debug=debug, fsname="powerloss", subtype="powerloss",
                 big_writes=True, hard_remove=True)


def unmount(mountpoint: str) -> None:
    """Unmount; lazily if something still holds it (never leave a mount behind)."""
    tool = fusermount() or "fusermount"
    if subprocess.run([tool, "-u", mountpoint], capture_output=True).returncode == 0:
        return
    if os.path.ismount(mountpoint):
        if subprocess.run([tool, "-u", "-z", mountpoint], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", mountpoint], capture_output=True)


class PowerLossMount:
    """The FS in a child process (a process writing through the mount must not
    be the one serving it), controlled over its stdin/stdout."""

    def __init__(self, backing: str, mountpoint: str, timeout: float = 30.0, real_fsync: bool = False,
                 log_path: str | None = None) -> None:
        self.backing, self.mountpoint = os.path.abspath(backing), os.path.abspath(mountpoint)
        self.timeout = timeout
        self.real_fsync = real_fsync
        self.log_path = log_path or self.backing.rstrip("/") + ".powerloss.log"
        self.proc: subprocess.Popen | None = None
        self.cuts: list[dict] = []
        os.makedirs(self.backing, exist_ok=True)
        os.makedirs(self.mountpoint, exist_ok=True)

    def __enter__(self) -> PowerLossMount:
        self.mount()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _read_line(self) -> dict:
        # The answer comes on stdout, one JSON line; a reader thread bounds the
        # wait so a wedged FS fails the test instead of hanging it.
        box: list = []
        t = threading.Thread(target=lambda: box.append(self.proc.stdout.readline()), daemon=True)
        t.start()
        t.join(self.timeout)
        if not box or not box[0]:
            raise RuntimeError(f"powerloss_fs did not answer (see {self.log_path})")
        return json.loads(box[0])

    def mount(self) -> None:
        log = open(self.log_path, "ab")
        args = [sys.executable, os.path.abspath(__file__), self.backing, self.mountpoint]
        if self.real_fsync:
            args.append("--real-fsync")
        self.proc = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log)
        log.close()
        try:
            msg = self._read_line()
            if not msg.get("ready"):
                raise RuntimeError(f"powerloss_fs: {msg}")
            deadline = time.monotonic() + self.timeout
            while not os.path.ismount(self.mountpoint):  # init runs as the mount completes
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{self.mountpoint} not mounted")
                time.sleep(0.01)
        except BaseException:
            self.close()
            raise

    def command(self, cmd: str) -> dict:
        self.proc.stdin.write(cmd.encode() + b"\n")
        self.proc.stdin.flush()
        return self._read_line()

    def cut(self) -> dict:
        """Power off: drop everything not synced; every later call on the mount fails (EIO)."""
        report = self.command("cut")["cut"]
        self.cuts.append(report)
        return report

    def pending(self) -> dict:
        return self.command("pending")["pending"]

    def sync(self) -> None:
        self.command("sync")

    def stats(self) -> dict:
        return self.command("stats")["stats"]

    def unmount(self) -> None:
        """Unmount and wait for the FS process; kill it if it does not go."""
        try:
            unmount(self.mountpoint)
        finally:
            if self.proc is not None:
                try:
                    self.proc.stdin.close()  # EOF: the FS unmounts itself too
                except OSError:
                    pass
                try:
                    self.proc.wait(self.timeout)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait()
                    unmount(self.mountpoint)
                self.proc.stdout.close()
                self.proc = None

    def remount(self) -> None:
        """After a cut: the durable state, mounted again."""
        self.unmount()
        self.mount()

    def close(self) -> None:
        self.unmount()


def main(argv=None) -> int:
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("backing", help="folder holding the durable image")
    ap.add_argument("mountpoint")
    ap.add_argument("--real-fsync", action="store_true", help="fsync the backing files too")
    ap.add_argument("--debug", action="store_true", help="libfuse's debug output on stderr")
    a = ap.parse_args(argv)
    os.makedirs(a.backing, exist_ok=True)
    serve(a.backing, a.mountpoint, real_fsync=a.real_fsync, debug=a.debug)
    return 0


if __name__ == "__main__":
    sys.exit(main())
