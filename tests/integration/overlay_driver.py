"""Overlay conformance driver: runs INSIDE a user+mount namespace as its root (uid 0 maps to
the unprivileged test user, 1..65535 to its subuid range).

Usage: ``python overlay_driver.py SCENARIO WORKDIR [SNAPSHOTTER]`` (prints one JSON report,
exits 0 when everything matched, 1 on differences, 3 when the snapshotter's probe fails) or
``--list``. SNAPSHOTTER names an entry of ``rootbuild.snapshot.SNAPSHOTTERS`` (default
"fuse"); every mount goes through its ``Snapshotter`` Protocol, so a second implementation
meets the same scenarios.

For one scenario (containerd's fstest model):
1. build the lower layers in memory with rootbuild's layer writer, extract them with
   rootbuild's extractor (tree + LayerMeta, as the store does);
2. materialise their merged view in a plain directory with the real owners, modes, xattrs
   (we are root here); device nodes, which no userns can create, become placeholder files
   that ``fstest`` describes as the devices they stand for;
3. run the scenario's operations in a forked child on the plain directory, then on the
   mounted overlay (``Snapshotter.mount``); the children log errno outcomes, which must match;
4. compare the plain tree with the overlay tree, and the overlay just after mounting with
   the lowers;
5. round trip: the step's layer (``finish()``) is written as a tar, extracted, stacked on the
   lowers, and the merged view must equal the overlay as it was before unmounting;
6. layer checks: expected whiteouts/opaque dirs, and no entry for an unchanged lower path;
7. no mount is left in this mount namespace.

View scenarios (``Snapshotter.view``, the read-only merged tree) instead check: the view
equals the merged lowers; reads give the plain directory's outcomes; every write, create,
unlink, rename, link, chmod/chown/utime and xattr change fails with EROFS; the view is
unchanged by the attempts; the lower trees and their meta.json are byte-for-byte and
time-for-time as before; nothing is left mounted.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import hashlib
import io
import json
import mmap
import os
import platform
import random
import re
import secrets
import shutil
import signal
import stat
import struct
import subprocess
import sys
import tarfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import fstest

from rootbuild.errors import ImageError
from rootbuild.image.layer_extract import extract_layer
from rootbuild.image.layer_write import TarEntry, entries_from_extracted, write_layer
from rootbuild.image.layermeta import LayerMeta
from rootbuild.image.rootfs import RootfsView
from rootbuild.snapshot import LowerLayer, Snapshotter, StepChanges, snapshotter_named

MTIME = 1_700_000_000
SCENARIO_TIMEOUT = 150
# struct vfs_cap_data, revision 2, effective, permitted = CAP_NET_RAW (13)
CAP_NET_RAW = struct.pack("<IIIII", 0x02000001, 1 << 13, 0, 0, 0)
CAP_CHOWN = struct.pack("<IIIII", 0x02000001, 1 << 0, 0, 0, 0)
RENAME_NOREPLACE, RENAME_EXCHANGE = 1, 2
AT_FDCWD = -100
_libc = ctypes.CDLL(None, use_errno=True)

# -- lower layers, built in memory --------------------------------------------------------


def F(path: str, data: bytes = b"", mode: int = 0o644, uid: int = 0, gid: int = 0,
      xattrs: tuple[tuple[str, bytes], ...] = ()) -> TarEntry:
    return TarEntry(path, "file", mode, uid, gid, MTIME, len(data), xattrs=xattrs,
                    source=lambda: io.BytesIO(data))


def D(path: str, mode: int = 0o755, uid: int = 0, gid: int = 0,
      xattrs: tuple[tuple[str, bytes], ...] = ()) -> TarEntry:
    return TarEntry(path, "dir", mode, uid, gid, MTIME, xattrs=xattrs)


def L(path: str, target: str) -> TarEntry:
    return TarEntry(path, "symlink", 0o777, mtime=MTIME, linkname=target)


def H(path: str, target: str) -> TarEntry:
    return TarEntry(path, "hardlink", 0o644, mtime=MTIME, linkname=target)


def DEV(path: str, kind: str, major: int, minor: int, mode: int, gid: int = 0) -> TarEntry:
    return TarEntry(path, kind, mode, 0, gid, MTIME, devmajor=major, devminor=minor)


def W(path: str) -> TarEntry:
    return TarEntry(path, "whiteout", 0)


def O(path: str) -> TarEntry:  # noqa: E743
    return TarEntry(path, "opaque", 0)


def base_layer() -> list[TarEntry]:
    e = [
        D(""), D("etc"), F("etc/passwd", b"root:x:0:0:root:/root:/bin/sh\n"),
        F("etc/shadow", b"root:*:19000:0:99999:7:::\n", 0o640, 0, 42),
        D("etc/alternatives"), L("etc/alternatives/editor", "/usr/bin/vi"),
        L("bin", "usr/bin"), L("a", "/"),
        D("usr"), D("usr/bin"),
        F("usr/bin/su", b"\x7fELF su", 0o4755),
        F("usr/bin/ping", b"\x7fELF ping", 0o755, xattrs=(("security.capability", CAP_NET_RAW),)),
        F("usr/bin/wall", b"\x7fELF wall", 0o2755, 0, 5),
        F("usr/bin/vi", b"\x7fELF vi", 0o755),
        F("usr/bin/python3.11", b"python" * 1000, 0o755),
        H("usr/bin/python3", "usr/bin/python3.11"),
        D("usr/lib"), F("usr/lib/libfoo.so.1", b"libfoo" * 100),
        L("usr/lib/libfoo.so", "libfoo.so.1"), L("usr/lib/dangling", "missing.so"),
        D("usr/share"), D("usr/share/doc"), D("usr/share/hl"),
        F("usr/share/hl/one", b"hardlinked three times\n"),
        H("usr/share/hl/two", "usr/share/hl/one"), H("usr/share/hl/three", "usr/share/hl/one"),
        D("tmp", 0o1777), F("tmp/rootfile", b"root's\n", 0o666),
        D("var"), D("var/www", 0o755, 33, 33),
        F("var/www/index.html", b"<html></html>\n", 0o644, 33, 33,
          xattrs=(("user.mime_type", b"text/html"),)),
        D("var/lib"), D("var/lib/dpkg"), F("var/lib/dpkg/status", b"Package: base\n" * 50),
        D("var/lib/dpkg/info"),
        D("home"), D("home/user", 0o700, 1000, 1000),
        F("home/user/.profile", b"export X=1\n", 0o600, 1000, 1000),
        D("dev"), DEV("dev/null", "char", 1, 3, 0o666), DEV("dev/sda", "block", 8, 0, 0o660, 6),
        DEV("dev/initctl", "fifo", 0, 0, 0o600),
        D("opt"), D("opt/app"), D("opt/app/bin"), F("opt/app/bin/app", b"app", 0o755),
        D("opt/app/lib"), F("opt/app/lib/x.so", b"\x00" * 8192), D("opt/app/data"),
        D("srv"), D("srv/empty"), D("srv/full"), D("srv/dirs"), D("srv/dirs/d1"),
        F("srv/dirs/d1/a", b"a"), F("srv/dirs/d1/b", b"b"), D("srv/dirs/d2"), D("srv/dirs/d3"),
        D("srv/dirs/d3/sub"), F("srv/dirs/d3/sub/file", b"deep"), D("srv/wipe"),
        D("srv/suid"), F("srv/suid/open", b"#!/bin/sh\n", 0o4777),
        F("srv/suid/opengid", b"#!/bin/sh\n", 0o6777),
        F("srv/zero", b"no permissions", 0o000),
        D("srv/xattr-dir", xattrs=(("user.dir", b"d"),)),
        F("srv/xattr-file", b"x", xattrs=(("user.a", b"1"), ("user.b", b"2"))),
        D("srv/many"), D("srv/storm"), D("srv/dirs2"), D("srv/dirs2/x"), F("srv/dirs2/x/in", b"in"),
        D("root", 0o700), F("root/secret", b"secret\n", 0o600),
    ]
    e += [F(f"opt/app/data/{i}", f"data {i}\n".encode()) for i in range(10)]
    e += [F(f"srv/full/f{i}", f"full {i}\n".encode()) for i in range(1, 6)]
    e += [F(f"srv/wipe/w{i}", b"w") for i in range(3)]
    e += [F(f"var/lib/dpkg/info/p{i}.list", f"/usr/p{i}\n".encode()) for i in range(20)]
    for p in range(20):
        d = f"usr/share/doc/pkg{p:02d}"
        e += [D(d), D(f"{d}/examples"), F(f"{d}/README", f"pkg {p}\n".encode() * 20),
              F(f"{d}/copyright", b"GPL\n", 0o644), F(f"{d}/examples/ex1", b"ex1"),
              F(f"{d}/examples/ex2", b"ex2", 0o755)]
        e += [F(f"{d}/changelog{c}", f"{p}.{c}\n".encode()) for c in range(10)]
    e += [F(f"srv/many/f{i:03d}", f"m{i}".encode()) for i in range(200)]
    e += [F(f"srv/storm/s{i:03d}", f"storm {i}\n".encode()) for i in range(100)]
    for k in range(5):
        e += [D(f"srv/storm/sd{k}")]
        e += [F(f"srv/storm/sd{k}/in{j}", f"sd{k} {j}\n".encode()) for j in range(3)]
    return e


def second_layer() -> list[TarEntry]:
    return [
        D("etc"), F("etc/passwd", b"root:x:0:0:root:/root:/bin/sh\nwww-data:x:33:33::/:\n"),
        W("usr/share/doc/pkg19"),
        D("var/lib/dpkg/info"), O("var/lib/dpkg/info"),
        F("var/lib/dpkg/info/new.list", b"/usr/new\n"), F("var/lib/dpkg/info/new2.list", b"/n2\n"),
        D("usr/local"), D("usr/local/bin"),
        F("usr/local/bin/tool", b"tool", 0o755, xattrs=(("user.origin", b"layer1"),)),
        F("srv/full/f1", b"f1 from layer 1\n"), F("usr/share/doc/pkg00/NEWS", b"news\n"),
    ]


def standard_lowers() -> list[list[TarEntry]]:
    return [base_layer(), second_layer()]


def big_lowers() -> list[list[TarEntry]]:
    blob = hashlib.sha256(b"seed").digest() * (24 * 1024 * 1024 // 32)
    big = [D("srv"), F("srv/big.bin", blob), F("srv/big2.bin", blob[: 1 << 20])]
    return [*standard_lowers(), big]


def ten_thousand_lowers() -> list[list[TarEntry]]:
    e = [D(""), D("data")]
    for d in range(100):
        e.append(D(f"data/d{d:03d}"))
        e += [F(f"data/d{d:03d}/f{i:04d}", f"{d}/{i}".encode()) for i in range(100)]
    return [e]


def build_lower(entries: list[TarEntry], tree: Path, meta_path: Path) -> None:
    buf = io.BytesIO()
    write_layer(entries, buf, compression="none")
    buf.seek(0)
    extract_layer(buf, tree, media_type_or_compression="none").meta.save(meta_path)


def materialize(view: RootfsView, dest: Path) -> dict[int, tuple[str, int, int]]:
    """The merged view as a real tree with real attributes; returns device placeholders."""
    devices: dict[int, tuple[str, int, int]] = {}
    links: dict[tuple[int, str], Path] = {}
    dirs = []
    for e in view.walk(""):
        p = dest / e.path if e.path else dest
        if e.kind == "dir":
            if e.path:
                p.mkdir(mode=0o700)
            dirs.append((p, e))
            continue
        if e.kind == "file":
            key = (e.layer, e.hardlink_to or e.path)
            if key in links:
                os.link(links[key], p)
                continue
            with view.open_entry(e) as src, open(p, "xb") as dst:
                shutil.copyfileobj(src, dst)
            links[key] = p
        elif e.kind == "symlink":
            os.symlink(e.linkname, p)
        elif e.kind == "fifo":
            os.mkfifo(p)
        else:
            p.touch(exist_ok=False)
            devices[os.lstat(p).st_ino] = (e.kind, e.devmajor, e.devminor)
        _apply(p, e)
    for p, e in reversed(dirs):
        _apply(p, e)
    return devices


def _apply(p: Path, e: Any) -> None:
    os.chown(p, e.uid, e.gid, follow_symlinks=False)
    if e.kind != "symlink":
        os.chmod(p, e.mode & 0o7777)
    for k, v in e.xattrs:
        os.setxattr(p, k, v, follow_symlinks=False)
    ns = e.mtime_ns if e.mtime_ns is not None else e.mtime * 1_000_000_000
    os.utime(p, ns=(ns, ns), follow_symlinks=False)


# -- the operation context -----------------------------------------------------------------


class Ctx:
    """What a scenario's operations see: the tree root and a log of outcomes."""

    def __init__(self, root: str, side: str, token: str) -> None:
        self.root, self.side, self.token = root, side, token
        self.log: list[list[Any]] = []

    def p(self, rel: str) -> str:
        return os.path.join(self.root, rel)

    def rec(self, key: str, value: Any) -> None:
        self.log.append([key, value if isinstance(value, (bool, int, str)) else repr(value)])

    def try_(self, key: str, fn: Callable[..., Any], *args: Any, **kw: Any) -> Any:
        try:
            value = fn(*args, **kw)
        except OSError as exc:
            self.rec(key, errno.errorcode.get(exc.errno or 0, str(exc.errno)))
            return None
        self.rec(key, "ok")
        return value

    def try_open(self, key: str, rel: str, flags: int, mode: int = 0o644) -> None:
        fd = self.try_(key, os.open, self.p(rel), flags | os.O_CLOEXEC, mode)
        if fd is not None:
            os.close(fd)

    def write(self, rel: str, data: bytes, flags: int = os.O_WRONLY | os.O_CREAT | os.O_TRUNC,
              mode: int = 0o644) -> None:
        fd = os.open(self.p(rel), flags | os.O_CLOEXEC, mode)
        try:
            _write_all(fd, data)
        finally:
            os.close(fd)

    def read(self, rel: str) -> bytes:
        with open(self.p(rel), "rb") as f:
            return f.read()

    def as_user(self, uid: int, gid: int, fn: Callable[[Ctx], None]) -> None:
        """Run ``fn`` in a child that dropped to ``uid``:``gid`` (no supplementary groups)."""

        def child(c: Ctx) -> None:
            os.setgroups([])
            os.setresgid(gid, gid, gid)
            os.setresuid(uid, uid, uid)
            fn(c)

        out = _in_child(child, self.root, self.side, self.token, chroot=False)
        self.log.extend(out["log"])
        if "error" in out:
            raise RuntimeError(f"child as {uid}:{gid} failed:\n{out['error']}")


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _in_child(fn: Callable[[Ctx], None], root: str, side: str, token: str,
              chroot: bool) -> dict[str, Any]:
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns
        code = 0
        os.close(r)
        ctx = Ctx(root, side, token)
        out: dict[str, Any]
        try:
            if chroot:
                os.chroot(root)
                ctx.root = "/"
            os.chdir(ctx.root)
            fn(ctx)
            out = {"log": ctx.log}
        except BaseException:
            out = {"log": ctx.log, "error": traceback.format_exc()}
            code = 1
        try:
            _write_all(w, json.dumps(out).encode())
        finally:
            os._exit(code)
    os.close(w)
    chunks = []
    with os.fdopen(r, "rb") as f:
        chunks.append(f.read())
    os.waitpid(pid, 0)
    data = b"".join(chunks)
    if not data:
        return {"log": [], "error": "operations child died without a report"}
    result: dict[str, Any] = json.loads(data)
    return result


# -- scenarios -----------------------------------------------------------------------------

RW_CREATE = os.O_WRONLY | os.O_CREAT
EXCL = os.O_WRONLY | os.O_CREAT | os.O_EXCL


def op_baseline(c: Ctx) -> None:
    c.rec("passwd", c.read("etc/passwd"))
    c.rec("listing", sorted(os.listdir(c.p("var/lib/dpkg/info"))))
    c.rec("pkg19-gone", os.path.exists(c.p("usr/share/doc/pkg19")))


def op_create_write(c: Ctx) -> None:
    c.write("srv/new.txt", b"hello", EXCL, 0o640)
    c.try_open("excl-upper", "srv/new.txt", EXCL)
    c.try_open("excl-lower-file", "etc/passwd", EXCL)
    c.try_open("excl-lower-dir", "srv/empty", EXCL)
    c.try_open("excl-dangling-symlink", "usr/lib/dangling", EXCL)
    c.try_open("creat-through-dangling", "usr/lib/dangling", RW_CREATE, 0o600)
    c.try_open("wronly-dir", "srv/full", os.O_WRONLY)
    c.try_open("directory-on-file", "etc/passwd", os.O_RDONLY | os.O_DIRECTORY)
    c.try_open("missing", "srv/missing", os.O_RDONLY)
    c.try_open("under-file", "etc/passwd/x", os.O_RDONLY)
    c.write("srv/full/f2", b"truncated and rewritten", os.O_WRONLY | os.O_TRUNC)
    fd = os.open(c.p("srv/full/f3"), os.O_WRONLY | os.O_APPEND)
    _write_all(fd, b"+appended")
    os.pwrite(fd, b"+pwrite-appends-too", 0)  # Linux: O_APPEND wins over the offset
    os.close(fd)
    fd = os.open(c.p("srv/full/f4"), os.O_RDWR)
    c.rec("rdwr-read", os.read(fd, 4))
    os.lseek(fd, 2, os.SEEK_SET)
    _write_all(fd, b"XY")
    os.lseek(fd, 0, os.SEEK_SET)
    c.rec("rdwr-reread", os.read(fd, 100))
    os.fsync(fd)
    os.fdatasync(fd)
    os.close(fd)
    os.truncate(c.p("srv/full/f5"), 10000)
    os.truncate(c.p("opt/app/data/1"), 3)
    fd = os.open(c.p("srv/sparse"), RW_CREATE, 0o600)
    os.pwrite(fd, b"end", 1 << 20)
    os.ftruncate(fd, (1 << 20) + 10)
    c.rec("sparse-size", os.fstat(fd).st_size)
    os.close(fd)
    fd = os.open(c.p("srv/falloc"), os.O_RDWR | os.O_CREAT, 0o644)
    c.try_("posix_fallocate", os.posix_fallocate, fd, 0, 65536)
    rc = _libc.fallocate(fd, 0, ctypes.c_long(0), ctypes.c_long(131072))
    # fallocate(2) itself has no pyfuse3 handler: a note, and emulated as glibc does
    c.rec("note:fallocate", "ok" if rc == 0 else errno.errorcode.get(ctypes.get_errno(), "?"))
    if rc != 0:
        os.posix_fallocate(fd, 0, 131072)
    c.rec("falloc-size", os.fstat(fd).st_size)
    c.try_("flock", fcntl.flock, fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    c.try_("lockf", fcntl.lockf, fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    fcntl.flock(fd, fcntl.LOCK_UN)
    os.close(fd)
    c.write("srv/suid-new", b"s", EXCL, 0o4755)
    dfd = os.open(c.p("srv"), os.O_RDONLY | os.O_DIRECTORY)
    c.try_("fsync-dir", os.fsync, dfd)
    os.close(dfd)
    for i in range(50):
        c.write(f"srv/empty/n{i}", f"n{i}".encode() * i, EXCL)
    c.rec("read-back", c.read("srv/full/f3"))


def op_mmap_shared(c: Ctx) -> None:
    fd = os.open(c.p("opt/app/lib/x.so"), os.O_RDWR)
    m = mmap.mmap(fd, 0, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
    m[0:4] = b"MMAP"
    m[8000:8004] = b"TAIL"
    m.flush()
    m.close()
    os.close(fd)
    fd = os.open(c.p("srv/mapped-new"), os.O_RDWR | os.O_CREAT, 0o644)
    os.ftruncate(fd, 3 * 4096)
    m = mmap.mmap(fd, 0, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
    m[100:105] = b"hello"
    m[5000:5005] = b"world"
    m.flush()
    c.rec("read-after-mmap", os.pread(fd, 5, 5000))
    m.close()
    os.close(fd)
    # Dirty pages of a mapping that outlives its fd: they must still reach the layer.
    fd = os.open(c.p("usr/lib/libfoo.so.1"), os.O_RDWR)
    m = mmap.mmap(fd, 0, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
    os.close(fd)
    m[10:20] = b"0123456789"
    m.close()
    c.rec("via-read", c.read("usr/lib/libfoo.so.1")[:24])


def op_delete_lower(c: Ctx) -> None:
    os.unlink(c.p("etc/passwd"))
    c.try_("unlink-again", os.unlink, c.p("etc/passwd"))
    os.unlink(c.p("usr/bin/python3"))
    c.rec("other-name-nlink", os.stat(c.p("usr/bin/python3.11")).st_nlink)
    os.unlink(c.p("usr/lib/libfoo.so"))
    os.rmdir(c.p("srv/empty"))
    c.try_("rmdir-nonempty-lower", os.rmdir, c.p("srv/full"))
    c.try_("unlink-dir", os.unlink, c.p("srv/full"))
    c.try_("rmdir-file", os.rmdir, c.p("etc/shadow"))
    os.unlink(c.p("dev/initctl"))
    os.unlink(c.p("dev/sda"))
    shutil.rmtree(c.p("home/user"))
    for name in ("w0", "w1", "w2"):
        os.unlink(c.p(f"srv/wipe/{name}"))
    c.rec("merged-empty-listing", os.listdir(c.p("srv/wipe")))
    os.rmdir(c.p("srv/wipe"))  # only lower children, all deleted: empty, so rmdir works
    c.rec("exists-after", [os.path.lexists(c.p(p)) for p in ("etc/passwd", "srv/wipe", "dev/sda")])


def op_replace_dir(c: Ctx) -> None:
    shutil.rmtree(c.p("opt/app"))
    c.write("opt/app", b"now a file", EXCL)
    c.rec("is-file", os.path.isfile(c.p("opt/app")))
    os.unlink(c.p("opt/app"))
    os.mkdir(c.p("opt/app"), 0o750)
    c.write("opt/app/fresh", b"fresh", EXCL)
    c.rec("listing", sorted(os.listdir(c.p("opt/app"))))
    shutil.rmtree(c.p("srv/full"))
    c.write("srv/full", b"file replacing a lower directory", EXCL)
    os.unlink(c.p("usr/lib/libfoo.so.1"))
    os.mkdir(c.p("usr/lib/libfoo.so.1"))
    c.write("usr/lib/libfoo.so.1/inside", b"dir replacing a lower file", EXCL)


def op_rmdir_mkdir(c: Ctx) -> None:
    for name in os.listdir(c.p("var/lib/dpkg/info")):
        os.unlink(c.p(f"var/lib/dpkg/info/{name}"))
    os.rmdir(c.p("var/lib/dpkg/info"))
    os.mkdir(c.p("var/lib/dpkg/info"))
    c.write("var/lib/dpkg/info/only.list", b"only", EXCL)
    shutil.rmtree(c.p("usr/share/doc/pkg05"))
    os.mkdir(c.p("usr/share/doc/pkg05"), 0o700)
    os.rmdir(c.p("srv/empty"))
    os.mkdir(c.p("srv/empty"), 0o711)
    c.rec("listings", [sorted(os.listdir(c.p(d))) for d in
                       ("var/lib/dpkg/info", "usr/share/doc/pkg05", "srv/empty")])


def op_rename_lower_dir(c: Ctx) -> None:
    ino = os.stat(c.p("usr/share/doc/pkg03")).st_ino
    os.rename(c.p("usr/share/doc/pkg03"), c.p("srv/pkg03-moved"))
    c.rec("ino-stable-over-rename", os.stat(c.p("srv/pkg03-moved")).st_ino == ino)
    c.write("srv/pkg03-moved/README", b"changed after the move", os.O_WRONLY | os.O_APPEND)
    os.rename(c.p("usr/share/hl"), c.p("usr/share/hl2"))
    c.rec("hl-nlink", os.stat(c.p("usr/share/hl2/two")).st_nlink)
    os.rename(c.p("opt/app"), c.p("opt/app-old"))
    os.mkdir(c.p("opt/app"))
    c.write("opt/app/new", b"new", EXCL)
    c.try_("rename-over-nonempty", os.rename, c.p("usr/share/doc/pkg04"),
           c.p("usr/share/doc/pkg05"))
    c.try_("rename-into-self", os.rename, c.p("usr/share/doc/pkg06"),
           c.p("usr/share/doc/pkg06/examples/x"))
    os.rename(c.p("srv/dirs/d3"), c.p("srv/dirs/d3-renamed"))
    os.rename(c.p("srv/dirs/d3-renamed/sub"), c.p("srv/sub-out"))
    os.rename(c.p("srv/sub-out"), c.p("srv/dirs/d3-renamed/sub"))  # and back again
    os.rename(c.p("var/lib/dpkg/info"), c.p("var/lib/dpkg/info.old"))  # opaque in layer 1
    c.rec("listing", sorted(os.listdir(c.p("var/lib/dpkg/info.old"))))


def _renameat2(c: Ctx, key: str, src: str, dst: str, flags: int) -> None:
    rc = _libc.renameat2(AT_FDCWD, os.fsencode(c.p(src)), AT_FDCWD, os.fsencode(c.p(dst)), flags)
    err = ctypes.get_errno() if rc != 0 else 0
    c.rec(key, "ok" if rc == 0 else errno.errorcode.get(err, str(err)))


def op_rename_over(c: Ctx) -> None:
    os.rename(c.p("srv/full/f1"), c.p("srv/full/f2"))  # lower over lower
    c.write("srv/full/u1", b"u1", EXCL)
    os.rename(c.p("srv/full/u1"), c.p("srv/full/f3"))  # upper over lower
    c.write("srv/full/u2", b"u2", EXCL)
    os.rename(c.p("srv/full/f4"), c.p("srv/full/u2"))  # lower over upper
    c.write("srv/full/u3", b"u3", EXCL)
    c.write("srv/full/u4", b"u4", EXCL)
    os.rename(c.p("srv/full/u3"), c.p("srv/full/u4"))  # upper over upper
    os.rename(c.p("srv/dirs/d1"), c.p("srv/empty"))  # lower dir over empty lower dir
    os.mkdir(c.p("srv/u-empty"))
    os.rename(c.p("srv/dirs/d3"), c.p("srv/u-empty"))  # lower dir over empty upper dir
    os.mkdir(c.p("srv/u-dir"))
    c.write("srv/u-dir/x", b"x", EXCL)
    os.mkdir(c.p("srv/u-empty2"))
    os.rename(c.p("srv/u-dir"), c.p("srv/u-empty2"))  # upper dir over empty upper dir
    c.try_("file-over-dir", os.rename, c.p("srv/full/f5"), c.p("srv/dirs/d2"))
    c.try_("dir-over-file", os.rename, c.p("srv/dirs/d2"), c.p("srv/full/f2"))
    c.try_("dir-over-nonempty", os.rename, c.p("srv/dirs2"), c.p("srv/full"))
    c.try_("same-inode", os.rename, c.p("usr/bin/python3"), c.p("usr/bin/python3.11"))
    c.rec("both-names", [os.path.exists(c.p("usr/bin/python3")),
                         os.path.exists(c.p("usr/bin/python3.11"))])
    _renameat2(c, "noreplace", "srv/full/f2", "srv/full/f3", RENAME_NOREPLACE)
    _renameat2(c, "noreplace-free", "srv/full/f2", "srv/full/f2b", RENAME_NOREPLACE)
    for name in ("w0", "w1", "w2"):
        os.unlink(c.p(f"srv/wipe/{name}"))
    os.rename(c.p("srv/dirs2/x"), c.p("srv/wipe"))  # over a dir emptied of lower children
    c.rec("wipe-listing", sorted(os.listdir(c.p("srv/wipe"))))
    os.rename(c.p("usr/lib/libfoo.so"), c.p("usr/lib/dangling"))  # symlink over symlink
    os.rename(c.p("usr/bin/su"), c.p("usr/bin/vi"))  # setuid file over another


def op_rename_exchange(c: Ctx) -> None:
    c.write("srv/full/up", b"upper", EXCL)
    _renameat2(c, "exchange-lower-upper", "srv/full/f1", "srv/full/up", RENAME_EXCHANGE)
    _renameat2(c, "exchange-dir-file", "srv/dirs/d1", "srv/full/f2", RENAME_EXCHANGE)
    _renameat2(c, "exchange-missing", "srv/full/f3", "srv/full/nope", RENAME_EXCHANGE)


def op_rename_storm(c: Ctx) -> None:
    rng = random.Random(20240611)
    files = {f"srv/storm/s{i:03d}" for i in range(100)}
    files |= {f"srv/storm/sd{k}/in{j}" for k in range(5) for j in range(3)}
    dirs = [f"srv/storm/sd{k}" for k in range(5)]
    os.mkdir(c.p("srv/storm2"))
    dirs.append("srv/storm2")
    for i in range(50):
        c.write(f"srv/storm/u{i:03d}", f"upper {i}\n".encode(), EXCL)
        files.add(f"srv/storm/u{i:03d}")
    for i in range(1000):
        if i % 100 == 99:  # rename a directory with what is in it
            k = rng.randrange(len(dirs))
            old, new = dirs[k], f"srv/storm/dir{i}"
            os.rename(c.p(old), c.p(new))
            dirs[k] = new
            files = {new + f[len(old):] if f.startswith(old + "/") else f for f in files}
            continue
        src = rng.choice(sorted(files))
        r = rng.random()
        if r < 0.45:
            dst = f"srv/storm/r{i:04d}"
        elif r < 0.75:
            dst = rng.choice(sorted(files - {src})) if len(files) > 80 else f"srv/storm/o{i:04d}"
        else:
            dst = f"{rng.choice(dirs)}/m{i:04d}"
        os.rename(c.p(src), c.p(dst))
        files.discard(src)
        files.add(dst)
        if i % 50 == 0:
            c.write(dst, f" touched at {i}".encode(), os.O_WRONLY | os.O_APPEND)
    c.rec("count", len(files))
    c.rec("visible", sum(1 for f in files if os.path.isfile(c.p(f))))


def op_hardlink_copyup(c: Ctx) -> None:
    a, b = c.p("usr/bin/python3"), c.p("usr/bin/python3.11")
    c.rec("same-inode-before", os.stat(a).st_ino == os.stat(b).st_ino)
    c.write("usr/bin/python3", b"#changed through one name", os.O_WRONLY | os.O_APPEND)
    c.rec("other-name-sees-write", c.read("usr/bin/python3.11")[-25:])
    c.rec("same-inode-after", os.stat(a).st_ino == os.stat(b).st_ino)
    c.rec("nlinks", [os.stat(a).st_nlink, os.stat(b).st_nlink])
    ino = os.stat(c.p("usr/lib/libfoo.so.1")).st_ino
    os.link(c.p("usr/lib/libfoo.so.1"), c.p("usr/lib/libfoo-link"))
    c.rec("new-link-nlink", os.stat(c.p("usr/lib/libfoo.so.1")).st_nlink)
    c.write("usr/lib/libfoo-link", b"written via new link", os.O_WRONLY | os.O_TRUNC)
    c.rec("original-sees-it", c.read("usr/lib/libfoo.so.1"))
    c.rec("ino-stable-over-copy-up", os.stat(c.p("usr/lib/libfoo.so.1")).st_ino == ino)
    os.chmod(c.p("usr/share/hl/two"), 0o600)
    c.rec("mode-shared", oct(os.stat(c.p("usr/share/hl/one")).st_mode))
    os.unlink(c.p("usr/share/hl/three"))
    c.rec("after-unlink-nlink", os.stat(c.p("usr/share/hl/one")).st_nlink)
    os.link(c.p("opt/app/data/2"), c.p("srv/data2-link"))
    os.unlink(c.p("opt/app/data/2"))  # only the new name remains
    os.link(c.p("etc/shadow"), c.p("srv/shadow-link"))  # keeps owner/mode of the inode
    os.link(c.p("usr/bin/su"), c.p("srv/su-link"))  # setuid survives linking
    os.link(c.p("srv/xattr-file"), c.p("srv/xattr-link"))
    os.setxattr(c.p("srv/xattr-link"), "user.via", b"link")
    c.rec("xattr-shared", os.getxattr(c.p("srv/xattr-file"), "user.via"))
    c.write("srv/new", b"upper file", EXCL)
    os.link(c.p("srv/new"), c.p("srv/new-link"))
    os.link(c.p("srv/new"), c.p("usr/new-link2"))
    c.try_("link-dir", os.link, c.p("srv/full"), c.p("srv/full-link"))
    c.try_("link-existing", os.link, c.p("srv/new"), c.p("etc/passwd"))


def op_link_counts(c: Ctx) -> None:
    def n(rel: str) -> int:
        return os.lstat(c.p(rel)).st_nlink

    c.rec("dir-nlinks-initial", [n(d) for d in ("", "srv", "usr/share/doc", "srv/empty")])
    os.mkdir(c.p("srv/empty/a"))
    os.mkdir(c.p("srv/empty/b"))
    c.rec("after-mkdir", [n("srv/empty"), n("srv")])
    os.rmdir(c.p("srv/empty/a"))
    os.rename(c.p("srv/dirs/d1"), c.p("srv/empty/d1"))
    c.rec("after-move", [n("srv/empty"), n("srv/dirs")])
    shutil.rmtree(c.p("usr/share/doc/pkg07"))
    c.rec("doc-after-rmtree", n("usr/share/doc"))
    c.write("srv/f", b"f", EXCL)
    for i in range(5):
        os.link(c.p("srv/f"), c.p(f"srv/f{i}"))
    c.rec("file-links", n("srv/f"))
    for i in range(3):
        os.unlink(c.p(f"srv/f{i}"))
    c.rec("file-links-after", n("srv/f4"))


def op_chown_chmod(c: Ctx) -> None:
    os.chown(c.p("etc/passwd"), 33, 33)
    os.chown(c.p("var/www/index.html"), 0, 0)
    os.chown(c.p("var/www"), 0, 0)
    os.chown(c.p("usr/lib/libfoo.so"), 33, 33, follow_symlinks=False)
    os.chown(c.p("srv/full/f1"), -1, 33)
    os.chown(c.p("usr/bin/su"), 33, 33)  # the kernel clears setuid on chown
    os.chown(c.p("usr/bin/wall"), 0, 0)  # and setgid (group-executable)
    os.chown(c.p("usr/bin/ping"), 0, 0)  # and security.capability
    c.rec("su-mode-after-chown", oct(os.stat(c.p("usr/bin/su")).st_mode))
    c.rec("ping-xattrs", sorted(x for x in os.listxattr(c.p("usr/bin/ping")) if "cap" in x))
    os.chmod(c.p("usr/bin/vi"), 0o4755)
    os.chmod(c.p("opt/app/bin/app"), 0o2755)
    os.chmod(c.p("srv/full"), 0o1777)
    os.chmod(c.p("srv/full/f2"), 0)
    os.chmod(c.p("usr/share/doc"), 0o700)
    c.write("srv/mine", b"m", EXCL, 0o644)
    os.chown(c.p("srv/mine"), 1234, 5678)
    os.chmod(c.p("srv/mine"), 0o6750)
    os.chmod(c.p("dev/null"), 0o600)
    # setgid directory: new entries take its group, subdirectories inherit the bit
    os.mkdir(c.p("srv/shared"))
    os.chown(c.p("srv/shared"), 0, 50)
    os.chmod(c.p("srv/shared"), 0o2775)
    c.write("srv/shared/file", b"g", EXCL)
    os.mkdir(c.p("srv/shared/sub"))
    c.rec("inherit", [(os.stat(c.p(p)).st_gid, oct(os.stat(c.p(p)).st_mode))
                      for p in ("srv/shared/file", "srv/shared/sub")])
    c.try_("chown-unmapped", os.chown, c.p("srv/mine"), 70000, 70000)


def op_mknod_fifo(c: Ctx) -> None:
    os.mkfifo(c.p("srv/fifo1"), 0o640)
    c.try_("mkfifo-existing", os.mkfifo, c.p("srv/fifo1"))
    os.mknod(c.p("srv/fifo2"), stat.S_IFIFO | 0o600)
    c.try_("mknod-char", os.mknod, c.p("srv/null"), stat.S_IFCHR | 0o666, os.makedev(1, 3))
    c.try_("mknod-block", os.mknod, c.p("srv/sdb"), stat.S_IFBLK | 0o660, os.makedev(8, 16))
    c.try_("mknod-char-0-0", os.mknod, c.p("srv/c00"), stat.S_IFCHR | 0o600, os.makedev(0, 0))
    c.try_("mknod-reg", os.mknod, c.p("srv/regnod"), stat.S_IFREG | 0o640)
    os.chown(c.p("dev/null"), 0, 5)
    os.chmod(c.p("dev/null"), 0o620)
    os.chmod(c.p("dev/initctl"), 0o644)
    os.rename(c.p("dev/sda"), c.p("dev/sda-moved"))
    os.rename(c.p("srv/fifo2"), c.p("dev/fifo2-moved"))
    os.link(c.p("dev/initctl"), c.p("srv/fifo-link"))
    c.rec("fifo-kind", stat.S_ISFIFO(os.lstat(c.p("srv/fifo1")).st_mode))


def op_xattrs(c: Ctx) -> None:
    f, d = c.p("srv/xattr-file"), c.p("srv/xattr-dir")
    os.setxattr(f, "user.new", b"n")
    os.setxattr(f, "user.a", b"replaced")
    os.removexattr(f, "user.b")
    os.setxattr(d, "user.dir2", b"x" * 4000)
    os.setxattr(d, "user.empty", b"")
    c.try_("create-existing", os.setxattr, f, "user.a", b"z", os.XATTR_CREATE)
    c.try_("replace-missing", os.setxattr, f, "user.nope", b"z", os.XATTR_REPLACE)
    c.try_("get-missing", os.getxattr, f, "user.nope")
    c.try_("remove-missing", os.removexattr, f, "user.nope")
    c.rec("list", sorted(os.listxattr(f)))
    c.rec("get", os.getxattr(f, "user.a"))
    c.write("srv/capfile", b"cap", EXCL, 0o755)
    os.setxattr(c.p("srv/capfile"), "security.capability", CAP_CHOWN)
    os.setxattr(c.p("usr/bin/vi"), "security.capability", CAP_NET_RAW)
    os.removexattr(c.p("usr/bin/ping"), "security.capability")
    c.try_("cap-invalid", os.setxattr, c.p("srv/capfile"), "security.capability", b"bad")
    c.rec("cap-read", os.getxattr(c.p("srv/capfile"), "security.capability").hex())
    os.mkdir(c.p("srv/xdir"))
    os.setxattr(c.p("srv/xdir"), "user.k", b"v")
    c.try_("user-on-symlink", os.setxattr, c.p("usr/lib/libfoo.so"), "user.x", b"1",
           follow_symlinks=False)
    c.try_("user-on-fifo", os.setxattr, c.p("dev/initctl"), "user.x", b"1",
           follow_symlinks=False)
    c.try_("trusted", os.setxattr, f, "trusted.x", b"1")
    c.try_("unknown-namespace", os.setxattr, f, "bogus.x", b"1")
    os.setxattr(c.p("var/www/index.html"), "user.mime_type", b"text/plain")
    os.removexattr(c.p("usr/local/bin/tool"), "user.origin")
    c.try_("list-size-probe", os.listxattr, c.p("srv/xattr-dir"))


UTIME_PATHS = ("srv/full/f1", "srv/utime-new", "srv/dirs/d1", "usr/lib/libfoo.so", "etc/shadow")


def op_utimens(c: Ctx) -> None:
    c.write("srv/utime-new", b"new", EXCL)
    times = [(1_000_000_000_123_456_789, 1_100_000_000_987_654_321), (5 * 10**17, 6 * 10**17)]
    for i, rel in enumerate(UTIME_PATHS):
        atime, mtime = times[i % 2]
        os.utime(c.p(rel), ns=(atime, mtime + i), follow_symlinks=False)
    c.try_("utime-missing", os.utime, c.p("srv/nope"), ns=(1, 1))
    c.rec("mtimes", [os.lstat(c.p(p)).st_mtime_ns for p in UTIME_PATHS])


def _untar_archive() -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:

        def add(info: tarfile.TarInfo, data: bytes = b"") -> None:
            info.mtime = MTIME
            info.size = len(data) if info.type == tarfile.REGTYPE else 0
            tf.addfile(info, io.BytesIO(data) if data else None)

        for d in range(40):
            di = tarfile.TarInfo(f"pkg{d:02d}")
            di.type, di.mode = tarfile.DIRTYPE, 0o750 if d % 7 == 0 else 0o755
            di.uid = di.gid = 33 if d % 5 == 0 else 0
            add(di)
            for i in range(50):
                fi = tarfile.TarInfo(f"pkg{d:02d}/file{i:02d}")
                fi.mode = (0o755, 0o644, 0o600, 0o4755 if d == 3 else 0o640)[i % 4]
                fi.uid, fi.gid = (0, 0) if i % 3 else (1000, 100)
                add(fi, f"{d}/{i}\n".encode() * (i % 9 + 1))
            for i in range(3):
                li = tarfile.TarInfo(f"pkg{d:02d}/link{i}")
                li.type, li.linkname = tarfile.SYMTYPE, f"file{i:02d}"
                add(li)
            hi = tarfile.TarInfo(f"pkg{d:02d}/hard")
            hi.type, hi.linkname = tarfile.LNKTYPE, f"pkg{d:02d}/file10"
            add(hi)
    return buf.getvalue()


def op_untar(c: Ctx) -> None:
    data = _untar_archive()
    os.mkdir(c.p("srv/untar"))
    with tarfile.open(fileobj=io.BytesIO(data)) as tf:
        tf.extractall(c.p("srv/untar"), numeric_owner=True)
    # a second archive over existing lower files and directories, like a package upgrade
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        for rel in ("usr/share/doc/pkg01/README", "usr/share/doc/pkg02/changelog3", "etc/passwd"):
            body = f"upgraded {rel}\n".encode()
            info = tarfile.TarInfo(rel)
            info.size, info.mode, info.mtime = len(body), 0o644, MTIME
            tf.addfile(info, io.BytesIO(body))
    buf.seek(0)
    with tarfile.open(fileobj=buf) as tf:
        tf.extractall(c.root, numeric_owner=True)
    c.rec("count", sum(len(fs) for _, _, fs in os.walk(c.p("srv/untar"))))


def _run(c: Ctx, key: str, argv: list[str]) -> None:
    proc = subprocess.run(argv, cwd=c.root, capture_output=True, text=True)
    c.rec(key, proc.returncode)
    c.rec(key + "-stderr", proc.stderr.replace(c.root, "ROOT"))


def op_cp_a(c: Ctx) -> None:
    _run(c, "cp-doc", ["/bin/cp", "-a", "usr/share/doc", "srv/doc-copy"])
    _run(c, "cp-bin", ["/bin/cp", "-a", "usr/bin", "srv/bin-copy"])
    _run(c, "cp-www", ["/bin/cp", "-a", "var/www", "srv/www-copy"])
    _run(c, "cp-fifo", ["/bin/cp", "-a", "dev/initctl", "srv/fifo-copy"])
    _run(c, "cp-over", ["/bin/cp", "-a", "etc/.", "srv/full"])


def op_rm_rf(c: Ctx) -> None:
    _run(c, "rm", ["/bin/rm", "-rf", "usr/share/doc", "opt/app", "var", "home/user",
                   "srv/storm", "usr/bin/python3"])
    c.rec("gone", [os.path.lexists(c.p(p)) for p in ("usr/share/doc", "var", "srv/storm")])


def _getdents(fd: int, size: int = 1024) -> list[str]:
    nr = {"x86_64": 217, "aarch64": 61}[platform.machine()]
    buf = ctypes.create_string_buffer(size)
    n = _libc.syscall(nr, fd, buf, size)
    if n < 0:
        raise OSError(ctypes.get_errno(), "getdents64")
    names, pos, raw = [], 0, buf.raw
    while pos < n:
        reclen = struct.unpack_from("<H", raw, pos + 16)[0]
        name = raw[pos + 19:pos + reclen].split(b"\0", 1)[0]
        names.append(os.fsdecode(name))
        pos += reclen
    return names


def op_readdir(c: Ctx) -> None:
    """POSIX readdir: entries neither added nor removed while the directory is read are
    returned exactly once; a rewind sees the directory as it is now."""
    for i in range(100):
        c.write(f"srv/many/u{i:03d}", b"u", EXCL)
    for i in range(0, 200, 10):
        os.unlink(c.p(f"srv/many/f{i:03d}"))
    dots = {".", ".."}
    initial = set(os.listdir(c.p("srv/many")))
    removed = set(sorted(initial - {"f001"})[3::7])
    added = {f"n{i:03d}" for i in range(60)}
    moved = "f001"
    fd = os.open(c.p("srv/many"), os.O_RDONLY | os.O_DIRECTORY)
    seen = _getdents(fd)
    c.rec("first-batch-partial", 0 < len(seen) < len(initial) / 2)
    for name in sorted(removed):
        os.unlink(c.p(f"srv/many/{name}"))
    for name in sorted(added):
        c.write(f"srv/many/{name}", b"n", EXCL)
    os.rename(c.p(f"srv/many/{moved}"), c.p("srv/many/moved"))
    while batch := _getdents(fd):
        seen += batch
    stable = initial - removed - {moved}
    c.rec("no-duplicates", len(seen) == len(set(seen)))
    c.rec("stable-missed", sorted(n for n in stable if n not in seen)[:10])
    c.rec("invented", sorted(set(seen) - initial - added - dots - {"moved"})[:10])
    c.rec("note:dot-entries", sorted(set(seen) & dots))
    os.lseek(fd, 0, os.SEEK_SET)
    again: list[str] = []
    while batch := _getdents(fd):
        again += batch
    now = set(os.listdir(c.p("srv/many")))
    c.rec("rewind-duplicates", len(again) != len(set(again)))
    c.rec("rewind-missing", sorted(now - set(again))[:10])
    c.rec("rewind-extra", sorted(set(again) - now - dots)[:10])
    os.close(fd)
    fd = os.open(c.p("srv/wipe"), os.O_RDONLY | os.O_DIRECTORY)  # emptied while open
    for name in ("w0", "w1", "w2"):
        os.unlink(c.p(f"srv/wipe/{name}"))
    c.rec("emptied", sorted(set(_getdents(fd, 4096)) - dots))
    os.close(fd)


def op_statfs(c: Ctx) -> None:
    for rel in ("", "usr/bin/su", "srv/empty"):
        st = os.statvfs(c.p(rel))
        c.rec(f"statfs:{rel}", [st.f_bsize > 0, st.f_namemax >= 255, st.f_blocks > 0,
                                st.f_bavail <= st.f_bfree <= st.f_blocks, st.f_files >= st.f_ffree])
    c.write("srv/after-statfs", b"x", EXCL)


def op_symlinks(c: Ctx) -> None:
    os.symlink("target-rel", c.p("srv/ln-rel"))
    os.symlink("/etc/passwd", c.p("srv/ln-abs"))
    os.symlink("../../nowhere", c.p("srv/ln-dangling"))
    os.symlink("x" * 1000, c.p("srv/ln-long"))
    os.symlink(b"\xff\xfe-bytes", os.fsencode(c.p("srv/ln-bytes")))
    c.try_("symlink-existing", os.symlink, "t", c.p("etc/passwd"))
    c.rec("readlinks", [os.readlink(c.p(p)) for p in
                        ("a", "bin", "etc/alternatives/editor", "srv/ln-long", "srv/ln-bytes")])
    c.try_("readlink-file", os.readlink, c.p("etc/passwd"))
    c.try_("stat-dangling", os.stat, c.p("srv/ln-rel"))
    os.chown(c.p("srv/ln-abs"), 33, 33, follow_symlinks=False)
    os.unlink(c.p("usr/lib/libfoo.so"))
    c.write("usr/lib/libfoo.so", b"a file now", EXCL)
    os.rename(c.p("usr/lib/dangling"), c.p("usr/lib/dangling2"))
    c.rec("through-relative", c.read("bin/vi"))  # bin -> usr/bin
    c.write("bin/through-link", b"written via bin/", EXCL)
    os.symlink("../usr/share", c.p("srv/share"))
    c.rec("listing-through", len(os.listdir(c.p("srv/share/doc/pkg01"))))


def op_abs_symlink(c: Ctx) -> None:
    """Chrooted: absolute links resolve against the image root, on both sides."""
    t = c.token
    c.write(f"a/tmp/x-{t}", b"inside the image", EXCL)
    c.rec("read-through-a", c.read("a/etc/passwd"))
    os.symlink("/tmp", f"/b-{t}")
    c.write(f"b-{t}/y-{t}", b"through a new link", EXCL)
    c.write(f"usr/../../../tmp/z-{t}", b"dot-dot clamps at the root", EXCL)
    os.makedirs(f"/a/srv/made-{t}/deep")
    c.write("etc/alternatives/editor", b"+edited", os.O_WRONLY | os.O_APPEND)
    os.symlink("../../..", "/srv/up")
    c.write(f"srv/up/tmp/w-{t}", b"relative climb", EXCL)
    c.rec("tmp", sorted(os.listdir("/tmp")))


def op_odd_names(c: Ctx) -> None:
    names = ["...", "..a", "-rf", "a b", "tab\tname", "nl\nname", "\u00e9t\u00e9", "back\\slash",
             "*", ":colon", ".hidden", "x" * 255, "wh.not", ".w"]
    os.mkdir(c.p("srv/odd"))
    for name in names:
        c.write(f"srv/odd/{name}", name.encode(), EXCL)
    os.mkdir(c.p("srv/odd/dir..."))
    fd = os.open(os.fsencode(c.p("srv/odd")) + b"/\xff\xfe-latin1", EXCL, 0o644)
    os.close(fd)
    c.try_open("too-long", "srv/odd/" + "y" * 256, EXCL)
    c.try_open("empty-component", "srv/odd//ok", EXCL)
    c.rec("listing", sorted(os.listdir(os.fsencode(c.p("srv/odd")))))


def op_whiteout_names(c: Ctx) -> None:
    """A name an OCI layer would read as a whiteout cannot be carried by a layer: the
    overlay refuses it when it is made (EINVAL), so the step learns at once instead of the
    export failing later. A plain directory accepts it; there we record what the overlay
    must answer."""
    attempts = [
        ("file-wh", lambda: os.close(os.open(c.p("etc/.wh.passwd"), EXCL, 0o644))),
        ("file-opq", lambda: os.close(
            os.open(c.p("usr/share/doc/pkg01/.wh..wh..opq"), EXCL, 0o644))),
        ("mkdir-wh", lambda: os.mkdir(c.p("srv/.wh.dir"))),
        ("symlink-wh", lambda: os.symlink("x", c.p("srv/.wh.link"))),
        ("rename-to-wh", lambda: os.rename(c.p("srv/zero"), c.p("srv/.wh.zero"))),
    ]
    for key, attempt in attempts:
        if c.side == "plain":
            c.rec(key, "EINVAL")
        else:
            c.try_(key, attempt)
    c.rec("passwd-visible", os.path.exists(c.p("etc/passwd")))
    c.rec("pkg01", sorted(os.listdir(c.p("usr/share/doc/pkg01"))))


def op_permissions(c: Ctx) -> None:
    def nobody(u: Ctx) -> None:
        u.try_open("create-in-root-dir", "etc/new", EXCL)
        u.try_open("create-in-tmp", "tmp/mine", EXCL)
        u.try_("unlink-sticky", os.unlink, u.p("tmp/rootfile"))
        u.try_open("write-root-file", "etc/passwd", os.O_WRONLY)
        u.try_open("read-shadow", "etc/shadow", os.O_RDONLY)
        u.try_open("read-0700-home", "home/user/.profile", os.O_RDONLY)
        u.try_("list-0700", os.listdir, u.p("root"))
        u.try_open("open-mode-0", "srv/zero", os.O_RDONLY)
        u.try_("chmod-not-owner", os.chmod, u.p("etc/passwd"), 0o777)
        u.try_("chown", os.chown, u.p("tmp/mine"), 0, 0)
        u.try_("mkdir-www", os.mkdir, u.p("var/www/x"))
        u.try_("rename-in-etc", os.rename, u.p("etc/passwd"), u.p("etc/passwd2"))
        u.try_("touch-now", os.utime, u.p("etc/passwd"))
        u.try_("utime-explicit", os.utime, u.p("tmp/rootfile"), ns=(1, 1))
        u.try_("touch-now-writable", os.utime, u.p("tmp/rootfile"))
        u.try_("setxattr-not-writable", os.setxattr, u.p("etc/passwd"), "user.x", b"1")
        u.try_("setxattr-writable", os.setxattr, u.p("tmp/rootfile"), "user.x", b"1")
        u.write("tmp/rootfile", b"nobody was here", os.O_WRONLY | os.O_APPEND)
        u.write("srv/suid/open", b"# appended", os.O_WRONLY | os.O_APPEND)  # kills setuid
        u.write("srv/suid/opengid", b"# appended", os.O_WRONLY | os.O_APPEND)
        u.try_("mkdir-tmp", os.mkdir, u.p("tmp/nobody-dir"))
        u.try_("truncate-root-file", os.truncate, u.p("usr/bin/vi"), 0)

    os.chmod(c.p("srv/suid"), 0o777)
    c.as_user(65534, 65534, nobody)
    c.as_user(33, 33, lambda u: u.try_open("www-data-create", "var/www/new.html", EXCL))
    c.rec("suid-modes", [oct(os.stat(c.p(p)).st_mode) for p in ("srv/suid/open",
                                                              "srv/suid/opengid")])


def op_copyup_big(c: Ctx) -> None:
    fd = os.open(c.p("srv/big.bin"), os.O_RDWR)
    os.pwrite(fd, b"MIDDLE", 12 * 1024 * 1024)
    c.rec("read-back", os.pread(fd, 6, 12 * 1024 * 1024))
    os.close(fd)
    os.truncate(c.p("srv/big2.bin"), 1)
    c.rec("sizes", [os.stat(c.p(p)).st_size for p in ("srv/big.bin", "srv/big2.bin")])


def op_one_file_change(c: Ctx) -> None:
    c.write("data/d050/f0050", b" changed", os.O_WRONLY | os.O_APPEND)


# -- view scenarios (read-only) ------------------------------------------------------------


def op_view_reads(c: Ctx) -> None:
    """Everything a step reads through a bind of another stage's tree."""
    c.rec("passwd", c.read("etc/passwd"))
    c.rec("python3", hashlib.sha256(c.read("usr/bin/python3")).hexdigest())
    c.rec("listing", sorted(os.listdir(c.p("var/lib/dpkg/info"))))
    c.rec("doc", sorted(os.listdir(c.p("usr/share/doc"))))
    c.rec("readlinks", [os.readlink(c.p(p)) for p in
                        ("a", "bin", "etc/alternatives/editor", "usr/lib/dangling")])
    c.rec("through-link", c.read("bin/vi"))
    c.try_("stat-dangling", os.stat, c.p("usr/lib/dangling"))
    c.try_("whited-out", os.stat, c.p("usr/share/doc/pkg19"))
    c.rec("xattrs", sorted(os.listxattr(c.p("srv/xattr-file"))))
    c.rec("xattr", os.getxattr(c.p("var/www/index.html"), "user.mime_type"))
    c.rec("nlink", os.stat(c.p("usr/share/hl/one")).st_nlink)
    st = os.lstat(c.p("etc/shadow"))
    c.rec("shadow", [oct(st.st_mode), st.st_uid, st.st_gid])
    fd = os.open(c.p("opt/app/lib/x.so"), os.O_RDONLY)
    try:
        m = mmap.mmap(fd, 0, mmap.MAP_SHARED, mmap.PROT_READ)
        c.rec("mmap", m[8000:8004].hex())
        m.close()
    finally:
        os.close(fd)
    c.rec("read-zero-perm", c.read("srv/zero"))  # root reads a mode-000 file


def op_view_writes(c: Ctx) -> None:
    """Every kind of change: all must fail with EROFS (logged, checked by the driver)."""
    f = c.p("etc/passwd")
    c.try_open("open-wronly", "etc/passwd", os.O_WRONLY)
    c.try_open("open-rdwr", "etc/passwd", os.O_RDWR)
    c.try_open("open-trunc", "etc/passwd", os.O_WRONLY | os.O_TRUNC)
    c.try_open("open-append", "etc/passwd", os.O_WRONLY | os.O_APPEND)
    c.try_open("create", "srv/new", EXCL)
    c.try_open("create-in-lower-dir", "usr/bin/new", RW_CREATE)
    c.try_("truncate", os.truncate, f, 0)
    c.try_("unlink", os.unlink, f)
    c.try_("unlink-hardlink", os.unlink, c.p("usr/share/hl/two"))
    c.try_("rmdir-empty", os.rmdir, c.p("srv/empty"))
    c.try_("mkdir", os.mkdir, c.p("srv/newdir"))
    c.try_("rename", os.rename, f, c.p("etc/passwd2"))
    c.try_("rename-dir", os.rename, c.p("srv/dirs"), c.p("srv/dirs-moved"))
    c.try_("symlink", os.symlink, "target", c.p("srv/ln"))
    c.try_("link", os.link, c.p("usr/bin/vi"), c.p("usr/bin/vi2"))
    c.try_("mkfifo", os.mkfifo, c.p("srv/fifo"))
    c.try_("chmod", os.chmod, f, 0o600)
    c.try_("chown", os.chown, f, 33, 33)
    c.try_("lchown-symlink", os.chown, c.p("bin"), 33, 33, follow_symlinks=False)
    c.try_("utime", os.utime, f, ns=(1, 1))
    c.try_("setxattr", os.setxattr, c.p("srv/xattr-file"), "user.new", b"n")
    c.try_("removexattr", os.removexattr, c.p("srv/xattr-file"), "user.a")
    fd = os.open(c.p("opt/app/lib/x.so"), os.O_RDONLY)
    try:
        c.try_("mmap-shared-write", mmap.mmap, fd, 0, mmap.MAP_SHARED,
               mmap.PROT_READ | mmap.PROT_WRITE)
    finally:
        os.close(fd)


#: outcomes of op_view_writes that are not EROFS by design (mmap: EACCES, the fd is O_RDONLY)
VIEW_WRITE_EXCEPTIONS = {"mmap-shared-write": "EACCES"}


@dataclass(frozen=True)
class Scenario:
    name: str
    ops: Callable[[Ctx], None]
    lowers: Callable[[], list[list[TarEntry]]] = standard_lowers
    chroot: bool = False
    whiteouts: frozenset[str] = frozenset()  # must be in the layer's whiteouts
    opaque: frozenset[str] = frozenset()  # must be opaque in the layer
    kinds: dict[str, str] = field(default_factory=dict)  # layer entries and their kinds
    only_entries: frozenset[str] | None = None  # the layer's entries must be among these
    mtime_paths: tuple[str, ...] = ()
    export_refused: str = ""  # the layer cannot be exported: ImageError matching this
    finish_limit: float = 0.0
    view: str = ""  # a read-only view scenario: "reads" or "writes"


S = Scenario
SCENARIOS = {s.name: s for s in [
    S("baseline", op_baseline, only_entries=frozenset({""})),
    S("create_write", op_create_write,
      kinds={"srv/new.txt": "file", "usr/lib/missing.so": "file", "srv/sparse": "file"}),
    S("mmap_shared", op_mmap_shared),
    S("delete_lower", op_delete_lower,
      whiteouts=frozenset({"etc/passwd", "usr/bin/python3", "usr/lib/libfoo.so", "srv/empty",
                           "dev/initctl", "dev/sda", "home/user", "srv/wipe"})),
    S("replace_dir", op_replace_dir, opaque=frozenset({"opt/app"}),
      kinds={"srv/full": "file", "usr/lib/libfoo.so.1": "dir", "opt/app": "dir"}),
    S("rmdir_mkdir", op_rmdir_mkdir,
      opaque=frozenset({"var/lib/dpkg/info", "usr/share/doc/pkg05"})),
    S("rename_lower_dir", op_rename_lower_dir,
      whiteouts=frozenset({"usr/share/doc/pkg03", "usr/share/hl", "srv/dirs/d3",
                           "var/lib/dpkg/info"}),
      opaque=frozenset({"opt/app"}),
      kinds={"srv/pkg03-moved/README": "file"}),
    S("rename_over", op_rename_over, whiteouts=frozenset({"srv/full/f1", "srv/dirs/d1"})),
    S("rename_exchange", op_rename_exchange),
    S("rename_storm", op_rename_storm),
    S("hardlink_copyup", op_hardlink_copyup,
      whiteouts=frozenset({"usr/share/hl/three", "opt/app/data/2"})),
    S("link_counts", op_link_counts, whiteouts=frozenset({"usr/share/doc/pkg07", "srv/dirs/d1"})),
    S("chown_chmod", op_chown_chmod),
    S("mknod_fifo", op_mknod_fifo, kinds={"srv/fifo1": "fifo", "dev/null": "char"}),
    S("xattrs", op_xattrs),
    S("utimens", op_utimens, mtime_paths=UTIME_PATHS),
    S("untar", op_untar),
    S("cp_a", op_cp_a),
    S("rm_rf", op_rm_rf, whiteouts=frozenset({"usr/share/doc", "opt/app", "var", "home/user",
                                              "srv/storm", "usr/bin/python3"})),
    S("readdir", op_readdir),
    S("statfs", op_statfs),
    S("symlinks", op_symlinks),
    S("abs_symlink", op_abs_symlink, chroot=True),
    S("odd_names", op_odd_names),
    S("whiteout_names", op_whiteout_names, only_entries=frozenset({""})),
    S("permissions", op_permissions, chroot=True),
    S("copyup_big", op_copyup_big, lowers=big_lowers),
    S("one_file_change_10k", op_one_file_change, lowers=ten_thousand_lowers,
      only_entries=frozenset({"", "data", "data/d050", "data/d050/f0050"}),
      kinds={"data/d050/f0050": "file"}, finish_limit=1.0),
    S("view_reads", op_view_reads, view="reads"),
    S("view_reads_chroot", op_view_reads, chroot=True, view="reads"),
    S("view_writes", op_view_writes, view="writes"),
]}


# -- running a scenario --------------------------------------------------------------------


def _mounts_under(path: Path) -> list[str]:
    with open("/proc/self/mountinfo", encoding="utf-8", errors="replace") as f:
        return [line.strip() for line in f if str(path) in line]


def _log_diffs(plain: list[list[Any]], ovl: list[list[Any]]) -> tuple[list[str], list[str]]:
    """Differences of outcomes; keys starting with "note:" are reported, not failed."""
    out: list[str] = []
    notes: list[str] = []
    for i in range(max(len(plain), len(ovl))):
        a = plain[i] if i < len(plain) else None
        b = ovl[i] if i < len(ovl) else None
        if a != b:
            note = a is not None and b is not None and str(a[0]).startswith("note:")
            (notes if note else out).append(f"outcome #{i}: plain {a!r} != overlay {b!r}")
    return out, notes


def _roundtrip(lowers: list[LowerLayer], result: StepChanges, work: Path) -> RootfsView:
    buf = io.BytesIO()
    write_layer(entries_from_extracted(result.tree, result.meta), buf, compression="none")
    buf.seek(0)
    extracted = extract_layer(buf, work / "roundtrip", media_type_or_compression="none")
    stack = [(lo.tree, LayerMeta.load(lo.meta_path)) for lo in lowers]
    return RootfsView([*stack, (work / "roundtrip", extracted.meta)])


def check_layer(sc: Scenario, meta: LayerMeta, before: fstest.Snapshot,
                after: fstest.Snapshot) -> tuple[list[str], list[str]]:
    """The journal's layer: what the scenario expects, and nothing unchanged."""
    diffs: list[str] = []
    notes: list[str] = []
    entries = {p for p, e in meta.entries.items() if not e.implicit}
    for w in sorted(sc.whiteouts - meta.whiteouts):
        diffs.append(f"layer: no whiteout for deleted lower path /{w}")
    for o in sorted(sc.opaque - meta.opaque_dirs):
        diffs.append(f"layer: /{o} is not an opaque directory")
    for path, kind in sc.kinds.items():
        e = meta.entries.get(path)
        if e is None or e.kind != kind:
            diffs.append(f"layer: /{path} should be a {kind} entry, is {e.kind if e else None}")
    changed = fstest.changed_paths(before, after) | set(sc.mtime_paths)
    allowed = set(changed)
    for path in changed:
        allowed.update(fstest.ancestors(path))
        node = after.get(path)
        if node is not None:
            allowed.update(node.links)
    for o in meta.opaque_dirs:
        allowed.update(p for p in after if p.startswith(o + "/"))
        # An opaque marker costs every child of the directory in the layer: it is needless
        # on a lower directory that kept all its lower children (nothing was replaced).
        lower_children = [p for p in before if p.startswith(o + "/")]
        if lower_children and all(p in after for p in lower_children) and o not in sc.opaque:
            diffs.append(f"layer: needless opaque marker on lower dir /{o}")
    extra = sorted(entries - allowed)
    if extra:
        diffs.append(f"layer: {len(extra)} unchanged lower paths carried, e.g. "
                     + ", ".join("/" + p for p in extra[:8]))
    if sc.only_entries is not None and not entries <= sc.only_entries:
        diffs.append(f"layer: entries beyond {sorted(sc.only_entries)}: "
                     f"{sorted(entries - sc.only_entries)[:10]}")
    for w in sorted(meta.whiteouts):
        if w in after or w not in before:
            diffs.append(f"layer: whiteout /{w} hides nothing deleted "
                         f"(in lowers: {w in before}, still present: {w in after})")
        elif any(a in meta.whiteouts for a in fstest.ancestors(w)[1:]):
            notes.append(f"layer: redundant whiteout /{w} beneath a whited-out directory")
    return diffs, notes


@dataclass
class Setup:
    """The scenario's lower layers, their materialised plain copy and its snapshot."""

    lowers: list[LowerLayer]
    plain: Path
    devices: dict[int, tuple[str, int, int]]
    before: fstest.Snapshot


def _setup(sc: Scenario, work: Path, times: dict[str, float],
           devices_ok: bool = True) -> Setup:
    """``devices_ok`` False: the snapshotter refuses lowers with device nodes (the kernel
    overlay: no user namespace can create them); they are left out of the lowers so that
    the rest of the scenario still tests it (``kernel_view`` tests the refusal)."""
    t0 = time.monotonic()
    lowers = []
    for i, entries in enumerate(sc.lowers()):
        if not devices_ok:
            entries = [e for e in entries if e.kind not in ("char", "block")]
        tree, meta_path = work / "lowers" / str(i), work / "lowers" / f"{i}.meta.json"
        tree.parent.mkdir(parents=True, exist_ok=True)
        build_lower(entries, tree, meta_path)
        lowers.append(LowerLayer(tree, meta_path))
    lower_view = RootfsView([(lo.tree, LayerMeta.load(lo.meta_path)) for lo in lowers])
    plain = work / "plain"
    plain.mkdir()
    devices = materialize(lower_view, plain)
    before = fstest.snapshot_dir(plain, devices)
    diffs = fstest.compare(fstest.snapshot_view(lower_view), before, names=("lowers", "plain"))
    if diffs:  # the harness itself is wrong: say so rather than blame the overlay
        raise RuntimeError("materialised lowers differ from their view:\n" + "\n".join(diffs))
    times["setup"] = time.monotonic() - t0
    return Setup(lowers, plain, devices, before)


def run_scenario(sc: Scenario, work: Path, snapshotter: Snapshotter) -> dict[str, Any]:
    report: dict[str, Any] = {"scenario": sc.name, "diffs": [], "notes": [], "times": {},
                              "snapshotter": snapshotter.name}
    diffs: list[str] = report["diffs"]
    times: dict[str, float] = report["times"]
    token = secrets.token_hex(8)
    devices_ok = getattr(snapshotter, "presents_devices", True)
    if not devices_ok:
        report["notes"].append("device nodes left out of the lowers: "
                               f"{snapshotter.name} refuses them")
    setup = _setup(sc, work, times, devices_ok)
    # overlayfs reports st_nlink 1 for a merged directory ("unknown", as btrfs does; find
    # and fts treat it so): compared for snapshotters that promise exact counts only
    dir_nlink = getattr(snapshotter, "exact_dir_nlink", True)
    if sc.view:
        return run_view(sc, work, snapshotter, setup, token, report)
    lowers, plain, devices, before = setup.lowers, setup.plain, setup.devices, setup.before

    t0 = time.monotonic()
    plain_out = _in_child(sc.ops, str(plain), "plain", token, sc.chroot)
    if "error" in plain_out:
        raise RuntimeError(f"operations failed on the PLAIN directory:\n{plain_out['error']}")
    plain_after = fstest.snapshot_dir(plain, devices)
    times["plain_ops"] = time.monotonic() - t0

    mnt = work / "mnt"
    mnt.mkdir()
    ovl_work = work / "ovl"
    t0 = time.monotonic()
    with snapshotter.mount(lowers, ovl_work, mnt) as m:
        times["mount"] = time.monotonic() - t0
        report["server_log"] = str(ovl_work / "server.log")
        initial = fstest.snapshot_dir(mnt)
        diffs += [f"initial: {d}" for d in fstest.compare(before, initial,
                                                          names=("lowers", "overlay"),
                                                          dir_nlink=dir_nlink)]
        t0 = time.monotonic()
        ovl_out = _in_child(sc.ops, str(mnt), "overlay", token, sc.chroot)
        times["overlay_ops"] = time.monotonic() - t0
        merged = fstest.snapshot_dir(mnt)
        t0 = time.monotonic()
        result = m.finish()
        times["finish"] = time.monotonic() - t0
    left = _mounts_under(work)
    if left:
        diffs.append(f"mount left behind after finish(): {left}")
    if "error" in ovl_out:
        diffs.append(f"operations failed on the OVERLAY:\n{ovl_out['error']}")
    log_diffs, log_notes = _log_diffs(plain_out["log"], ovl_out["log"])
    diffs += log_diffs
    report["notes"] += log_notes
    report["log"] = ovl_out["log"][:60]
    diffs += fstest.compare(plain_after, merged, dir_nlink=dir_nlink)
    for rel in sc.mtime_paths:
        a, b = plain_after.get(rel), merged.get(rel)
        if a is None or b is None or a.mtime_ns != b.mtime_ns:
            diffs.append(f"/{rel}: mtime_ns {a and a.mtime_ns} (plain) != "
                         f"{b and b.mtime_ns} (overlay)")
    for host_tmp in os.listdir("/tmp"):
        if token in host_tmp:
            diffs.append(f"ESCAPE: /tmp/{host_tmp} was created on the host")
    if sc.finish_limit and times["finish"] > sc.finish_limit:
        diffs.append(f"finish() took {times['finish']:.3f}s (limit {sc.finish_limit}s)")

    meta = result.meta
    report["layer"] = {"entries": len([e for e in meta.entries.values() if not e.implicit]),
                       "whiteouts": sorted(meta.whiteouts)[:40],
                       "opaque": sorted(meta.opaque_dirs)}
    layer_diffs, notes = check_layer(sc, meta, before, merged)
    diffs += layer_diffs
    report["notes"] += notes

    t0 = time.monotonic()
    try:
        view = _roundtrip(lowers, result, work)
    except ImageError as exc:
        if not sc.export_refused or not re.search(sc.export_refused, str(exc)):
            diffs.append(f"round trip: export failed: {exc}")
        else:
            report["notes"].append(f"round trip: export refused as expected: {exc}")
    else:
        if sc.export_refused:
            diffs.append(f"round trip: export should have failed ({sc.export_refused})")
        rt = fstest.snapshot_view(view)
        diffs += [f"round trip: {d}" for d in fstest.compare(merged, rt,
                                                             names=("overlay", "layers"),
                                                             dir_nlink=dir_nlink)]
        for rel in sc.mtime_paths:  # a tar keeps whole seconds
            if rel in rt and rel in merged and (
                    rt[rel].mtime_ns // 10**9 != merged[rel].mtime_ns // 10**9):
                diffs.append(f"round trip: /{rel}: mtime {rt[rel].mtime_ns} (layers) != "
                             f"{merged[rel].mtime_ns} (overlay)")
    times["roundtrip"] = time.monotonic() - t0
    return report


def _lower_state(lowers: list[LowerLayer]) -> dict[str, Any]:
    """Each lower tree as fstest describes it, times included, and its meta.json's digest."""
    state: dict[str, Any] = {}
    for i, lo in enumerate(lowers):
        snap = fstest.snapshot_dir(lo.tree)
        state[f"tree{i}"] = {p: n.to_json() for p, n in snap.items()}
        state[f"meta{i}"] = hashlib.sha256(lo.meta_path.read_bytes()).hexdigest()
        state[f"meta{i}-mtime"] = lo.meta_path.stat().st_mtime_ns
    return state


def run_view(sc: Scenario, work: Path, snapshotter: Snapshotter, setup: Setup, token: str,
             report: dict[str, Any]) -> dict[str, Any]:
    """A read-only view: the merged lowers, reads as on the plain copy, every change EROFS,
    lowers untouched, nothing left mounted."""
    diffs: list[str] = report["diffs"]
    times: dict[str, float] = report["times"]
    plain_log: list[list[Any]] = []
    if sc.view == "reads":
        plain_out = _in_child(sc.ops, str(setup.plain), "plain", token, sc.chroot)
        if "error" in plain_out:
            raise RuntimeError(f"reads failed on the PLAIN directory:\n{plain_out['error']}")
        plain_log = plain_out["log"]
    lowers_before = _lower_state(setup.lowers)
    mnt = work / "mnt"
    mnt.mkdir()
    t0 = time.monotonic()
    with snapshotter.view(setup.lowers, work / "ovl", mnt) as where:
        times["mount"] = time.monotonic() - t0
        if where != mnt:
            diffs.append(f"view() yielded {where}, not the mountpoint {mnt}")
        report["server_log"] = str(work / "ovl" / "server.log")
        initial = fstest.snapshot_dir(mnt)
        diffs += [f"view: {d}" for d in fstest.compare(
            setup.before, initial, names=("lowers", "view"),
            dir_nlink=getattr(snapshotter, "exact_dir_nlink", True))]
        t0 = time.monotonic()
        out = _in_child(sc.ops, str(mnt), "view", token, sc.chroot)
        times["view_ops"] = time.monotonic() - t0
        after = fstest.snapshot_dir(mnt)
        diffs += [f"view after the operations: {d}" for d in fstest.compare(
            initial, after, names=("before", "after"),
            fields=(*fstest.DEFAULT_FIELDS, "mtime_ns"))]
        t0 = time.monotonic()
    times["unmount"] = time.monotonic() - t0
    if "error" in out:
        diffs.append(f"operations failed on the VIEW:\n{out['error']}")
    report["log"] = out["log"][:60]
    if sc.view == "reads":
        log_diffs, notes = _log_diffs(plain_log, out["log"])
        diffs += log_diffs
        report["notes"] += notes
    else:
        for key, outcome in out["log"]:
            want = VIEW_WRITE_EXCEPTIONS.get(key, "EROFS")
            if outcome != want:
                diffs.append(f"view: {key}: {outcome} (want {want})")
        if len(out["log"]) < 20:
            diffs.append(f"view: only {len(out['log'])} write attempts were logged")
    lowers_after = _lower_state(setup.lowers)
    for key, was in lowers_before.items():
        now = lowers_after[key]
        if was == now:
            continue
        if isinstance(was, dict):
            changed = sorted(p for p in set(was) | set(now) if was.get(p) != now.get(p))
            diffs.append(f"view: lower {key} changed at {changed[:10]}: "
                         f"{[(was.get(p), now.get(p)) for p in changed[:3]]}")
        else:
            diffs.append(f"view: lower {key} changed: {was} -> {now}")
    left = _mounts_under(work)
    if left:
        diffs.append(f"mount left behind after the view: {left}")
    elif os.listdir(mnt):
        diffs.append(f"the view's mountpoint is not empty after unmounting: {os.listdir(mnt)}")
    return report


def _timeout(signum: int, frame: Any) -> None:
    raise TimeoutError(f"scenario did not finish in {SCENARIO_TIMEOUT}s")


def main(argv: list[str]) -> int:
    if argv[1:2] == ["--list"]:
        print("\n".join(SCENARIOS))
        return 0
    name, work = argv[1], Path(argv[2])
    sc = SCENARIOS.get(name)
    if sc is None:
        print(json.dumps({"scenario": name, "error": "unknown scenario"}))
        return 2
    snapshotter = snapshotter_named(argv[3] if len(argv) > 3 else "fuse")
    reason = snapshotter.probe()
    if reason is not None:
        print(json.dumps({"scenario": name, "error": f"{snapshotter.name}: {reason}"}))
        return 3
    os.umask(0o022)
    work.mkdir(mode=0o755)
    signal.signal(signal.SIGALRM, _timeout)
    signal.alarm(SCENARIO_TIMEOUT)
    t0 = time.monotonic()
    try:
        report = run_scenario(sc, work, snapshotter)
    except BaseException:
        report = {"scenario": name, "error": traceback.format_exc(), "diffs": []}
        log = work / "ovl" / "server.log"
        if log.exists():
            report["server_log_tail"] = log.read_text(errors="replace").splitlines()[-30:]
    finally:
        signal.alarm(0)
    left = _mounts_under(work)
    if left:
        report.setdefault("diffs", []).append(f"mount left behind: {left}")
    report["times"] = {k: round(v, 3) for k, v in report.get("times", {}).items()}
    report["times"]["total"] = round(time.monotonic() - t0, 3)
    report["ok"] = not report.get("diffs") and "error" not in report
    if not report["ok"] and (work / "ovl" / "server.log").exists():
        report.setdefault("server_log_tail", (work / "ovl" / "server.log").read_text(
            errors="replace").splitlines()[-30:])
    print(json.dumps(report, indent=1, default=repr))
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
