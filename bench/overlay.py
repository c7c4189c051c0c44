"""Overlay benchmark: the same filesystem workloads on a plain directory, the kernel's
overlayfs in a user namespace, fuse-overlayfs and rootbuild's FUSE overlay, in one run;
prints medians, ratios and issue 3's targets. Run by hand; not part of CI.

Usage, as an ordinary user (the script re-executes itself inside
``unshare --map-auto --map-root-user --mount --fork``, so its mounts live and die in a
private mount namespace; it also checks /proc/mounts afterwards):

    /opt/rootbuild-venv/bin/python bench/overlay.py [--runs 3] [--files 20000]
        [--io-mib 1024] [--dir DIR] [--only plain,kernel-ovl,fuse-ovl,rootbuild]
        [--profile DIR] [--cprofile DIR]

Each run goes through four mounts (M1-M4) per filesystem, all four filesystems mounted side
by side; every workload runs on each of them back to back (order reversed every other run),
so that a slow spell of the host hits them alike. Lowers are layers extracted once by
rootbuild's extractor and shared read-only; the plain directory keeps its one tree across
"mounts". Scratch space is /dev/shm by default (tmpfs: the overlays' own cost, not the
disk's); --dir /tmp measures on disk.

  M1 [base]        untar FILES files (GNU tar), cp -a of the tree, walk+stat, rm -rf of
                   the copy (new files), sequential write of IO MiB; the upper becomes the
                   lower L1 of M2 (rootbuild: finish(), timed as info).
  M2 [base, L1]    walk+stat cold (first walk after the mount) and warm, read every file,
                   sequential read of the big file, a dpkg-like upgrade of FILES/10 files,
                   rm -rf of the whole tree (lower files: whiteouts).
  M3 [base]        untar FILES/2 files (issue 3's 10,000-file target).
  M4 [base, TEN]   TEN is a FILES/2-file layer; overwrite one file, then time producing the
                   step's layer: rootbuild finish() + entries_from_extracted + write_layer;
                   kernel-ovl/fuse-ovl unmount + walk the upper dir + write_layer (buildah's
                   overlay driver diffs the upper dir the same way); plain a full tree walk +
                   stat diff against a snapshot + write_layer (a builder without an overlay).
                   All layers gzip (ISA-L), the same writer for all four.

walk, read, seq I/O and dpkg-like are Python loops, the same code everywhere. An unprivileged
user cannot drop caches, so the plain directory's "cold" walk is its first walk in M2.
The host's load shows in "pipe round trip" (one byte between two processes and back, the
context switches every FUSE request pays), printed with the results.

Profiling the rootbuild server (first run only): --profile DIR attaches py-spy
(``/opt/rootbuild-venv/bin/pip install py-spy``), writing DIR/<mount>.txt (collapsed stacks)
and DIR/<mount>.top (functions by samples). --cprofile DIR starts the server through this
file under cProfile (RB_BENCH_CPROFILE_OUT is how the server process learns the output):
DIR/<mount>.prof and DIR/<mount>.pstats.txt, whose call counts are the FUSE requests per
handler; cProfile slows the server several-fold, so read times from py-spy.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import ctypes
import ctypes.util
import errno
import mmap
import os
import re
import shutil
import signal
import stat
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from rootbuild.image.layer_extract import extract_layer
from rootbuild.image.layer_write import TarEntry, entries_from_extracted, write_layer

if TYPE_CHECKING:  # rootbuild's overlay is imported only when it is benchmarked
    from rootbuild.fuse_overlay.mount import OverlayMount, OverlayResult

NS_ENV = "RB_BENCH_OVERLAY_NS"
CPROFILE_ENV = "RB_BENCH_CPROFILE_OUT"  # set per mount by --cprofile; see serve_profiled
PREFIX = "rb-ovl-bench-"
FS_NAMES = ("plain", "kernel-ovl", "fuse-ovl", "rootbuild")
MNT_DETACH = 2
_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


# ---------------------------------------------------------------------------- layers, data


@dataclass(frozen=True)
class Layer:
    """A lower layer: a directory tree and, for rootbuild, its metadata file."""

    tree: Path
    meta: Path | None = None
    plain: bool = False  # the plain directory's own tree, reused as is by the next "mount"


def make_tree(root: Path, files: int) -> None:
    """``files`` files of 1 KiB (half random) in directories of 100, as bench/layer_io.py."""
    root.mkdir(parents=True)
    block = os.urandom(512)
    for i in range(files):
        d = root / f"d{i // 100:03}"
        if i % 100 == 0:
            d.mkdir()
        (d / f"f{i % 100:03}").write_bytes(block[i % 512 :] + block[: i % 512] + b"a" * 512)


def tree_entries(root: Path) -> Iterator[TarEntry]:
    for dirpath, _dirnames, filenames in os.walk(root):
        rel = os.path.relpath(dirpath, root)
        if rel != ".":
            yield TarEntry(rel, "dir", 0o755, 0, 0, 1_700_000_000)
        else:
            rel = ""
        for name in filenames:
            path = os.path.join(dirpath, name)
            yield TarEntry(
                os.path.join(rel, name),
                "file",
                0o644,
                0,
                0,
                1_700_000_000,
                os.lstat(path).st_size,
                source=lambda p=path: open(p, "rb"),  # type: ignore[misc]  # noqa: SIM115
            )


def base_entries() -> list[TarEntry]:
    """A tiny "distribution" base: the dirs and files the dpkg-like workload touches."""
    import io

    status = b"Package: base\nStatus: install ok installed\n\n" * 50

    def blob(data: bytes) -> Callable[[], io.BytesIO]:
        return lambda: io.BytesIO(data)

    dirs = [
        "etc",
        "tmp",
        "usr",
        "usr/bin",
        "var",
        "var/lib",
        "var/lib/dpkg",
        "var/lib/dpkg/info",
        "var/lib/dpkg/updates",
    ]
    out = [TarEntry(d, "dir", 0o1777 if d == "tmp" else 0o755, mtime=1_700_000_000) for d in dirs]
    for path, data in (
        ("etc/passwd", b"root:x:0:0:root:/root:/bin/sh\n"),
        ("var/lib/dpkg/status", status),
    ):
        out.append(
            TarEntry(path, "file", 0o644, mtime=1_700_000_000, size=len(data), source=blob(data))
        )
    return out


def make_layer(entries: list[TarEntry], where: Path) -> Layer:
    where.mkdir(parents=True)
    blob = where / "layer.tar"
    with open(blob, "wb") as out:
        write_layer(entries, out, compression="none")
    with open(blob, "rb") as f:
        result = extract_layer(f, where / "tree", media_type_or_compression="none")
    result.meta.save(where / "meta.json")
    blob.unlink()
    return Layer(where / "tree", where / "meta.json")


# ----------------------------------------------------------------------------- workloads


def warm_memory(mib: int) -> None:
    """Touch ``mib`` MiB of anonymous memory once and free it. On a fresh VM the first
    touch of a guest page is slow (the hypervisor backs it on demand: writing 1 GiB to
    tmpfs took 2.7 s the first time, 0.4 s after), which would bill whichever filesystem
    runs first; freed pages are handed out again first, so later allocations are fast."""
    block = b"w" * (1 << 20)
    with mmap.mmap(-1, mib << 20) as m:
        for _ in range(mib):
            m.write(block)


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def run(*argv: str | Path) -> None:
    subprocess.run([str(a) for a in argv], check=True, stdin=subprocess.DEVNULL)


def walk_stat(root: Path) -> int:
    """lstat every entry below ``root`` (scandir + DirEntry.stat, which is one lstat)."""
    count, stack = 0, [os.fsencode(root)]
    while stack:
        with os.scandir(stack.pop()) as it:
            for e in it:
                e.stat(follow_symlinks=False)
                count += 1
                if e.is_dir(follow_symlinks=False):
                    stack.append(e.path)
    return count


def read_all(root: Path) -> int:
    total, buf = 0, bytearray(1 << 16)
    stack = [os.fsencode(root)]
    while stack:
        with os.scandir(stack.pop()) as it:
            for e in it:
                if e.is_dir(follow_symlinks=False):
                    stack.append(e.path)
                elif e.is_file(follow_symlinks=False):
                    fd = os.open(e.path, os.O_RDONLY | os.O_CLOEXEC)
                    try:
                        while n := os.readv(fd, [buf]):
                            total += n
                    finally:
                        os.close(fd)
    return total


def seq_write(path: Path, mib: int) -> None:
    block = os.urandom(1 << 20)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
    try:
        for _ in range(mib):
            os.write(fd, block)
    finally:
        os.close(fd)


def seq_read(path: Path) -> int:
    total, buf = 0, bytearray(1 << 20)
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        while n := os.readv(fd, [buf]):
            total += n
    finally:
        os.close(fd)
    return total


def _write_file(path: bytes, data: bytes, *, sync: bool) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
    try:
        os.write(fd, data)
        if sync:
            os.fsync(fd)
    finally:
        os.close(fd)


def dpkg_like(root: Path, targets: list[bytes]) -> None:
    """Upgrade "packages" of 100 files the way dpkg unpacks them: every file written as
    NAME.dpkg-new and fsynced, the old file hardlinked to NAME.dpkg-tmp as a backup, the new
    one renamed over it, the backups unlinked; then the package's .list file and a status
    journal entry written tmp+fsync+rename; at the end the status file rewritten likewise."""
    payload = b"n" * 1024
    dpkg = os.path.join(os.fsencode(root), b"var/lib/dpkg")
    for p, start in enumerate(range(0, len(targets), 100)):
        pkg = targets[start : start + 100]
        for t in pkg:
            _write_file(t + b".dpkg-new", payload, sync=True)
        for t in pkg:
            os.link(t, t + b".dpkg-tmp")
            os.rename(t + b".dpkg-new", t)
        for t in pkg:
            os.unlink(t + b".dpkg-tmp")
        listing = os.path.join(dpkg, b"info/pkg%d.list" % p)
        _write_file(listing + b"-new", b"\n".join(pkg) + b"\n", sync=True)
        os.rename(listing + b"-new", listing)
        _write_file(os.path.join(dpkg, b"updates/%04d" % p), b"Package: pkg\n", sync=True)
    status = os.path.join(dpkg, b"status")
    with open(status, "rb") as f:
        old = f.read()
    _write_file(status + b"-new", old + b"Package: pkg\n\n", sync=True)
    os.rename(status, status + b"-old")
    os.rename(status + b"-new", status)
    for name in os.listdir(os.path.join(dpkg, b"updates")):
        os.unlink(os.path.join(dpkg, b"updates", name))


def change_one_file(root: Path, rel: str) -> None:
    fd = os.open(root / rel, os.O_WRONLY | os.O_TRUNC | os.O_CLOEXEC)
    try:
        os.write(fd, b"changed by the one-file step\n")
    finally:
        os.close(fd)


# ------------------------------------------------------------------- layers from a tree walk


def _opener(path: str) -> Callable[[], object]:
    return lambda: open(path, "rb")


def _entry(full: str, rel: str, st: os.stat_result) -> TarEntry | None:
    mode, common = st.st_mode, (stat.S_IMODE(st.st_mode), 0, 0, int(st.st_mtime))
    if stat.S_ISDIR(mode):
        return TarEntry(rel, "dir", *common)
    if stat.S_ISREG(mode):
        return TarEntry(rel, "file", *common, st.st_size, source=_opener(full))  # type: ignore[arg-type]
    if stat.S_ISLNK(mode):
        return TarEntry(rel, "symlink", *common, linkname=os.readlink(full))
    return None


OPAQUE_XATTRS = ("user.overlay.opaque", "trusted.overlay.opaque", "user.fuseoverlayfs.opaque")


def upper_entries(upper: Path) -> list[TarEntry]:
    """The layer entries of an overlayfs/fuse-overlayfs upper dir, found by walking it (as
    containers/storage's overlay driver does): char 0:0 devices and ``.wh.`` files are
    whiteouts, an opaque xattr or ``.wh..wh..opq`` file an opaque directory."""
    out: list[TarEntry] = []
    for dirpath, dirnames, filenames in os.walk(upper):
        rel_dir = os.path.relpath(dirpath, upper)
        rel_dir = "" if rel_dir == "." else rel_dir
        for name in dirnames + filenames:
            full = os.path.join(dirpath, name)
            rel = os.path.join(rel_dir, name)
            st = os.lstat(full)
            if name == ".wh..wh..opq":
                out.append(TarEntry(rel_dir, "opaque", 0))
            elif name.startswith(".wh."):
                out.append(TarEntry(os.path.join(rel_dir, name[4:]), "whiteout", 0))
            elif stat.S_ISCHR(st.st_mode) and st.st_rdev == 0:
                out.append(TarEntry(rel, "whiteout", 0))
            elif (entry := _entry(full, rel, st)) is not None:
                out.append(entry)
                if entry.kind == "dir":
                    for attr in OPAQUE_XATTRS:
                        with contextlib.suppress(OSError):
                            if os.getxattr(full, attr, follow_symlinks=False) == b"y":
                                out.append(TarEntry(rel, "opaque", 0))
                                break
    return out


Snapshot = dict[str, tuple[int, int, int, int]]


def snapshot(root: Path) -> Snapshot:
    snap: Snapshot = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            full = os.path.join(dirpath, name)
            st = os.lstat(full)
            snap[os.path.relpath(full, root)] = (st.st_mode, st.st_size, st.st_mtime_ns, st.st_ino)
    return snap


def diff_entries(root: Path, before: Snapshot) -> list[TarEntry]:
    """What a builder without an overlay does: walk the whole tree, stat everything and
    compare with the snapshot taken before the step."""
    out: list[TarEntry] = []
    seen: set[str] = set()
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            full = os.path.join(dirpath, name)
            rel = os.path.relpath(full, root)
            st = os.lstat(full)
            seen.add(rel)
            changed = before.get(rel) != (st.st_mode, st.st_size, st.st_mtime_ns, st.st_ino)
            if changed and (entry := _entry(full, rel, st)) is not None:
                out.append(entry)
    out.extend(TarEntry(rel, "whiteout", 0) for rel in before.keys() - seen)
    return out


def write_gzip_layer(entries: list[TarEntry], out: Path) -> None:
    with open(out, "wb") as f:
        write_layer(entries, f, compression="gzip")


# ---------------------------------------------------------------------------- filesystems


def is_mounted(path: Path) -> bool:
    target = os.fsencode(os.path.realpath(path))
    with open("/proc/self/mountinfo", "rb") as f:
        return any(line.split()[4] == target for line in f)


def umount(path: Path, flags: int = 0) -> None:
    if _libc.umount2(os.fsencode(path), flags) != 0:
        err = ctypes.get_errno()
        if err == errno.EINVAL and not is_mounted(path):
            return
        raise OSError(err, f"umount {path}: {os.strerror(err)}")


class Mounted:
    """A mounted step: ``path`` is the merged view; ``finish`` unmounts and returns the
    upper as a layer; ``layer_to`` unmounts and writes the step's changes as a layer blob."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def finish(self) -> Layer:
        raise NotImplementedError

    def layer_to(self, out: Path) -> float:
        """Returns when the entries were known (the rest is write_layer)."""
        raise NotImplementedError

    def abort(self) -> None:
        raise NotImplementedError


class PlainDir(Mounted):
    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.before: Snapshot = {}

    def finish(self) -> Layer:
        return Layer(self.path, plain=True)

    def layer_to(self, out: Path) -> float:
        entries = diff_entries(self.path, self.before)
        start = time.perf_counter()
        write_gzip_layer(entries, out)
        return start

    def abort(self) -> None:
        pass


class KernelOverlay(Mounted):
    def __init__(self, path: Path, upper: Path) -> None:
        super().__init__(path)
        self.upper = upper
        self.mounted = True

    def unmount(self) -> None:
        if self.mounted:
            self.mounted = False
            umount(self.path)

    def finish(self) -> Layer:
        self.unmount()
        return Layer(self.upper)

    def layer_to(self, out: Path) -> float:
        self.unmount()
        entries = upper_entries(self.upper)
        start = time.perf_counter()
        write_gzip_layer(entries, out)
        return start

    def abort(self) -> None:
        if self.mounted:
            self.mounted = False
            umount(self.path, MNT_DETACH)


class FuseOverlayfs(KernelOverlay):
    def __init__(self, path: Path, upper: Path, proc: subprocess.Popen[bytes]) -> None:
        super().__init__(path, upper)
        self.proc = proc

    def unmount(self) -> None:
        if self.mounted:
            super().unmount()
            self.proc.wait(timeout=60)

    def abort(self) -> None:
        try:
            super().abort()
        finally:
            if self.proc.poll() is None:
                self.proc.terminate()
                try:
                    self.proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait()


class RootbuildOverlay(Mounted):
    def __init__(
        self, path: Path, work: Path, handle: OverlayMount, profiler: Profiler | None
    ) -> None:
        super().__init__(path)
        self.work = work
        self.handle = handle
        self.profiler = profiler

    def _finish(self) -> OverlayResult:
        if self.profiler is not None:
            self.profiler.stop()
        return self.handle.finish()

    def finish(self) -> Layer:
        from rootbuild.fuse_overlay.server import RESULT_META

        result = self._finish()
        return Layer(result.tree, self.work / "overlay" / RESULT_META)

    def layer_to(self, out: Path) -> float:
        result = self._finish()
        entries = entries_from_extracted(result.tree, result.meta)
        start = time.perf_counter()
        write_gzip_layer(entries, out)
        return start

    def abort(self) -> None:
        if self.profiler is not None:
            self.profiler.stop()
        # mount_overlay's context exit aborts a handle that was not finished


class Profiler:
    """py-spy recording the rootbuild overlay's server (collapsed stacks)."""

    def __init__(self, pid: int, out: Path) -> None:
        self.out = out
        exe = Path(sys.executable).with_name("py-spy")
        argv = [str(exe), "record", "--pid", str(pid), "--output", str(out)]
        argv += ["--rate", "250", "--format", "raw", "--nonblocking"]
        self.proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(0.5)  # let py-spy attach before the workload starts

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            summarize_profile(self.out)


def summarize_profile(raw: Path) -> None:
    """Write RAW.top: functions (line numbers dropped) by own and by inclusive samples.
    py-spy samples only running threads, so the total is the server's busy time."""
    if not raw.exists():
        return
    own: collections.Counter[str] = collections.Counter()
    incl: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        n = int(count)
        total += n
        frames = [re.sub(r":\d+\)$", ")", f) for f in stack.split(";")]
        own[frames[-1]] += n
        for frame in set(frames):
            incl[frame] += n
    with open(raw.with_suffix(".top"), "w") as f:
        f.write(f"{total} samples\n\nown:\n")
        for frame, n in own.most_common(30):
            f.write(f"{n / total:6.1%}  {frame}\n")
        f.write("\ninclusive:\n")
        for frame, n in incl.most_common(40):
            f.write(f"{n / total:6.1%}  {frame}\n")


def serve_profiled(spec: Path, out: Path) -> int:
    """The overlay server under cProfile, run as ``python -m overlay SPEC`` (this file;
    mount() points rootbuild's mount module at it for --cprofile)."""
    import cProfile
    import pstats

    from rootbuild.fuse_overlay.server import serve

    profile = cProfile.Profile()
    try:
        return profile.runcall(serve, spec)
    finally:
        profile.dump_stats(out)
        with open(out.with_suffix(".pstats.txt"), "w") as f:
            stats = pstats.Stats(profile, stream=f)
            stats.sort_stats("tottime").print_stats(40)
            stats.sort_stats("cumulative").print_stats(40)


@contextlib.contextmanager
def mount(
    kind: str,
    lowers: list[Layer],
    where: Path,
    profile: Path | None = None,
    cprofile: Path | None = None,
) -> Iterator[Mounted]:
    """Mount ``lowers`` (lowest first) with a fresh upper below ``where`` (created)."""
    where.mkdir()
    merged = where / "merged"
    merged.mkdir()
    handle: Mounted
    if kind == "plain":
        if lowers[-1].plain:  # the previous step's tree, changed in place
            handle = PlainDir(lowers[-1].tree)
        else:
            for layer in lowers:
                run("cp", "-a", f"{layer.tree}/.", merged)
            handle = PlainDir(merged)
        yield handle
        return
    if kind == "rootbuild":
        from rootbuild.fuse_overlay import mount as rb_mount

        if cprofile is not None:  # run the server through serve_profiled (this file)
            os.environ[CPROFILE_ENV] = str(cprofile)
            os.environ["PYTHONPATH"] = os.pathsep.join(
                [str(Path(__file__).resolve().parent), os.environ.get("PYTHONPATH", "")]
            )
            rb_mount.SERVER_MODULE = Path(__file__).stem
        else:
            os.environ.pop(CPROFILE_ENV, None)
            rb_mount.SERVER_MODULE = "rootbuild.fuse_overlay.server"
        mount_overlay = rb_mount.mount_overlay
        rb_lowers = [(layer.tree, layer.meta) for layer in lowers if layer.meta is not None]
        if len(rb_lowers) != len(lowers):
            raise ValueError("rootbuild lowers need their metadata")
        with mount_overlay(rb_lowers, where / "work", merged) as m:
            profiler = Profiler(m.proc.pid, profile) if profile is not None else None
            handle = RootbuildOverlay(merged, where / "work", m, profiler)
            try:
                yield handle
            finally:
                handle.abort()
        return
    upper, work = where / "upper", where / "work"
    upper.mkdir()
    work.mkdir()
    lowerdir = ":".join(str(layer.tree) for layer in reversed(lowers))
    options = f"lowerdir={lowerdir},upperdir={upper},workdir={work}"
    if kind == "kernel-ovl":
        # userxattr: overlayfs keeps its xattrs in user.overlay.* (a user namespace cannot
        # set trusted.*), as rootless podman and buildah mount it
        opts = f"{options},userxattr".encode()
        if _libc.mount(b"overlay", os.fsencode(merged), b"overlay", 0, opts) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"mount overlay: {os.strerror(err)}")
        handle = KernelOverlay(merged, upper)
    elif kind == "fuse-ovl":
        proc = subprocess.Popen(
            ["fuse-overlayfs", "-f", "-o", options, str(merged)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        handle = FuseOverlayfs(merged, upper, proc)
        deadline = time.monotonic() + 30
        while not is_mounted(merged):
            if proc.poll() is not None or time.monotonic() > deadline:
                handle.abort()
                raise OSError(f"fuse-overlayfs did not mount (exit {proc.poll()})")
            time.sleep(0.005)
    else:
        raise ValueError(kind)
    try:
        yield handle
    finally:
        handle.abort()


# --------------------------------------------------------------------------- one run


@dataclass(frozen=True)
class Data:
    base: Layer
    ten: Layer
    tar_big: Path  # FILES files
    tar_ten: Path  # FILES/2 files
    files: int
    io_mib: int


ROWS = [
    # key, label (n: FILES, h: FILES/2, io: MiB, d: dpkg files), target for rootbuild
    ("untar", "untar {n} files", None),
    ("untar_ten", "untar {h} files", "≤ 2.5 s"),
    ("cp", "cp -a {n} files", None),
    ("rm_new", "rm -rf {n} new files", None),
    ("walk_cold", "walk+stat {n} cold (new mount)", None),
    ("walk_warm", "walk+stat {n} warm", "≤ 0.15 s"),
    ("read_all", "read {n} files (new mount)", None),
    ("seq_write", "seq write {io} MiB", "≤ 1.5x plain"),
    ("seq_read", "seq read {io} MiB (new mount)", "≤ 1.5x plain"),
    ("dpkg", "dpkg-like upgrade of {d} files", None),
    ("rm_lower", "rm -rf {n} lower files", None),
    ("layer_one", "layer after 1-file change on {h}", "< 50 ms"),
    ("layer_collect", "info: of which finding the changes", None),
    ("commit_m1", "info: finish() of the M1 step", None),
    ("mount_m2", "info: mount base+{n}-file lower", None),
]


Times = dict[str, float]


class Run:
    """One run: every workload runs on each filesystem back to back (in this run's order),
    all four mounted side by side, so that a slow spell of the host hits them alike. A
    filesystem that fails is reported and left out of the rest of the run."""

    def __init__(self, index: int, order: list[str], scratch: Path, args: argparse.Namespace):
        self.index, self.order, self.args = index, order, args
        self.where = {k: scratch / f"run{index}-{k}" for k in order}
        self.times: dict[str, Times] = {k: {} for k in order}
        self.state: dict[str, dict[str, Layer]] = {k: {} for k in order}
        self.failed: set[str] = set()

    def live(self) -> list[str]:
        return [k for k in self.order if k not in self.failed]

    def fail(self, kind: str, what: str) -> None:
        self.failed.add(kind)
        print(f"bench: run {self.index + 1} {kind}: {what} failed:", file=sys.stderr)
        traceback.print_exc()

    def each(self, key: str, fn: Callable[[str], object]) -> None:
        """Run ``fn(kind)`` on every live filesystem; time it as ``key`` unless empty."""
        for kind in self.live():
            start = time.perf_counter()
            try:
                fn(kind)
            except Exception:  # report, go on with the others
                self.fail(kind, key or "setup")
                continue
            if key:
                self.times[kind][key] = time.perf_counter() - start

    @contextlib.contextmanager
    def mounts(
        self, name: str, lowers: Callable[[str], list[Layer]]
    ) -> Iterator[dict[str, Mounted]]:
        with contextlib.ExitStack() as stack:
            mounted: dict[str, Mounted] = {}
            for kind in self.live():
                prof: dict[str, Path | None] = {}
                if kind == "rootbuild" and self.index == 0:  # profile the first run only
                    a = self.args
                    prof["profile"] = a.profile / f"{name}.txt" if a.profile else None
                    prof["cprofile"] = a.cprofile / f"{name}.prof" if a.cprofile else None
                self.where[kind].mkdir(exist_ok=True)
                start = time.perf_counter()
                try:
                    cm = mount(kind, lowers(kind), self.where[kind] / name, **prof)
                    mounted[kind] = stack.enter_context(cm)
                except Exception:
                    self.fail(kind, f"mount {name}")
                    continue
                self.times[kind][f"mount_{name}"] = time.perf_counter() - start
            yield mounted


def phase_m1(r: Run, data: Data) -> None:
    with r.mounts("m1", lambda k: [data.base]) as ms:
        expected = data.files + -(-data.files // 100)  # files and their directories

        def check(kind: str) -> None:
            if (found := walk_stat(ms[kind].path / "src")) != expected:
                raise RuntimeError(f"{found} entries after untar, not {expected}")

        def finish(kind: str) -> None:
            r.state[kind]["l1"] = ms[kind].finish()

        r.each("", lambda k: (ms[k].path / "src").mkdir())
        r.each("untar", lambda k: run("tar", "-C", ms[k].path / "src", "-xf", data.tar_big))
        r.each("cp", lambda k: run("cp", "-a", ms[k].path / "src", ms[k].path / "copy"))
        r.each("", check)
        r.each("walk_m1", lambda k: walk_stat(ms[k].path / "src"))
        r.each("rm_new", lambda k: run("rm", "-rf", ms[k].path / "copy"))
        r.each("seq_write", lambda k: seq_write(ms[k].path / "big", data.io_mib))
        r.each("commit_m1", finish)


def phase_m2(r: Run, data: Data) -> None:
    with r.mounts("m2", lambda k: [data.base, r.state[k]["l1"]]) as ms:
        rels = [f"src/d{i // 100:03}/f{i % 100:03}" for i in range(max(1, data.files // 10))]
        targets = {k: [os.fsencode(m.path / rel) for rel in rels] for k, m in ms.items()}
        r.each("walk_cold", lambda k: walk_stat(ms[k].path / "src"))
        r.each("walk_warm", lambda k: walk_stat(ms[k].path / "src"))
        r.each("read_all", lambda k: read_all(ms[k].path / "src"))
        r.each("seq_read", lambda k: seq_read(ms[k].path / "big"))
        r.each("dpkg", lambda k: dpkg_like(ms[k].path, targets[k]))
        r.each("rm_lower", lambda k: run("rm", "-rf", ms[k].path / "src"))
    for kind in r.live():  # free the big files before the next phase
        for name in ("m1", "m2"):
            shutil.rmtree(r.where[kind] / name, ignore_errors=True)


def phase_m3(r: Run, data: Data) -> None:
    with r.mounts("m3", lambda k: [data.base]) as ms:
        r.each("", lambda k: (ms[k].path / "ten").mkdir())
        r.each("untar_ten", lambda k: run("tar", "-C", ms[k].path / "ten", "-xf", data.tar_ten))


def phase_m4(r: Run, data: Data) -> None:
    changed = "d050/f050" if data.files // 2 > 5050 else "d000/f000"
    with r.mounts("m4", lambda k: [data.base, data.ten]) as ms:

        def change(kind: str) -> None:
            m = ms[kind]
            if isinstance(m, PlainDir):
                m.before = snapshot(m.path)
            change_one_file(m.path, changed)

        def layer(kind: str) -> None:
            start = time.perf_counter()
            known = ms[kind].layer_to(r.where[kind] / "layer.tar.gz")
            r.times[kind]["layer_collect"] = known - start

        r.each("", change)
        r.each("layer_one", layer)

    def check(kind: str) -> None:  # the layer must hold the change and nothing else
        with tarfile.open(r.where[kind] / "layer.tar.gz") as tf:
            files = [i.name for i in tf.getmembers() if i.isfile()]
        if files != [changed]:
            raise RuntimeError(f"the one-file layer holds {files[:5]}")

    r.each("", check)


PHASES = (phase_m1, phase_m2, phase_m3, phase_m4)


def pipe_round_trip_us(n: int = 5000) -> float:
    """Median-free calibration: one byte back and forth between two processes, the
    context-switch cost every FUSE request pays twice. It varies with the host's load."""
    r1, w1 = os.pipe()
    r2, w2 = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(w1)
        os.close(r2)
        while os.read(r1, 1):
            os.write(w2, b"x")
        os._exit(0)
    os.close(r1)
    os.close(w2)
    start = time.perf_counter()
    for _ in range(n):
        os.write(w1, b"x")
        os.read(r2, 1)
    elapsed = time.perf_counter() - start
    os.close(w1)
    os.waitpid(pid, 0)
    os.close(r2)
    return elapsed / n * 1e6


def probe_rootbuild(base: Layer, where: Path) -> str | None:
    """None if rootbuild's overlay mounts and works here, else why not."""
    try:
        import rootbuild.fuse_overlay.ops  # noqa: F401
    except Exception as exc:  # any import failure: "not available"
        return f"rootbuild.fuse_overlay.ops does not import ({type(exc).__name__}: {exc})"
    try:
        with mount("rootbuild", [base], where) as m:
            (m.path / "probe").write_bytes(b"x")
            layer = m.finish()
        if (layer.tree / "probe").read_bytes() != b"x":
            return "the probe file is missing from the finished layer"
    except Exception as exc:
        return f"probe mount failed: {type(exc).__name__}: {exc}"
    return None


def probe_peer(kind: str, base: Layer, where: Path) -> str | None:
    if kind == "fuse-ovl" and shutil.which("fuse-overlayfs") is None:
        return "fuse-overlayfs is not installed (apt-get install fuse-overlayfs)"
    try:
        with mount(kind, [base], where) as m:
            (m.path / "probe").write_bytes(b"x")
            layer = m.finish()
        if (layer.tree / "probe").read_bytes() != b"x":
            return "the probe file is missing from the upper dir"
    except Exception as exc:
        return f"probe mount failed: {type(exc).__name__}: {exc}"
    return None


# ----------------------------------------------------------------------------- reporting


def fmt(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    return f"{seconds * 1000:.0f} ms" if seconds < 1 else f"{seconds:.2f} s"


def ratio(a: float | None, b: float | None) -> str:
    return "-" if a is None or b is None or b == 0 else f"{a / b:.2f}"


def verdict(key: str, med: dict[str, Times], files: int) -> str:
    rb, plain = med["rootbuild"].get(key), med["plain"].get(key)
    if rb is None:
        return ""
    ok: bool | None = None
    if key == "untar_ten" and files == 20000:  # the target is for 10,000 files
        ok = rb <= 2.5
    elif key == "walk_warm":
        ok = rb <= 0.15
    elif key in ("seq_write", "seq_read") and plain:
        ok = rb / plain <= 1.5
    elif key == "layer_one":
        ok = rb < 0.05
    return "" if ok is None else (" met" if ok else " **missed**")


def report(
    results: dict[str, list[Times]], data: Data, rtts: list[float], unavailable: dict[str, str]
) -> None:
    med: dict[str, Times] = {}
    for kind in FS_NAMES:
        keys = {k for r in results.get(kind, []) for k in r}
        med[kind] = {k: statistics.median(r[k] for r in results[kind] if k in r) for k in keys}
    n, h = f"{data.files:,}", f"{data.files // 2:,}"
    print()
    print(
        f"machine: {os.uname().nodename}, {os.cpu_count()} cores, kernel "
        f"{os.uname().release}, Python {sys.version.split()[0]}; runs: {len(rtts)} (medians); "
        f"pipe round trip {min(rtts):.1f}-{max(rtts):.1f} us (host load)"
    )
    for kind, why in unavailable.items():
        name = "rootbuild overlay" if kind == "rootbuild" else kind
        print(f"{name}: not available: {why}")
    print()
    print(
        "| workload | plain | kernel-ovl | fuse-ovl | rootbuild | kovl/plain | fovl/plain "
        "| rb/plain | rb/fovl | target (rootbuild) |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for key, label, target in ROWS:
        text = label.format(n=n, h=h, io=data.io_mib, d=f"{max(1, data.files // 10):,}")
        v = {kind: med[kind].get(key) for kind in FS_NAMES}
        if all(x is None for x in v.values()):
            continue
        cells = [fmt(v[k]) for k in FS_NAMES]
        cells += [
            ratio(v["kernel-ovl"], v["plain"]),
            ratio(v["fuse-ovl"], v["plain"]),
            ratio(v["rootbuild"], v["plain"]),
            ratio(v["rootbuild"], v["fuse-ovl"]),
        ]
        tgt = f"{target}{verdict(key, med, data.files)}" if target else ""
        print(f"| {text} | " + " | ".join(cells) + f" | {tgt} |")


# ------------------------------------------------------------------------------ main


def check_mounts(prefix: str) -> list[str]:
    with open("/proc/self/mounts", encoding="utf-8", errors="replace") as f:
        return [line.strip() for line in f if prefix in line]


def reexec() -> int:
    """Run this script again as root of a new user namespace with a private mount ns."""
    env = dict(os.environ, **{NS_ENV: "1"})
    base = ["unshare", "--map-root-user", "--mount", "--fork"]
    probe = subprocess.run(
        ["unshare", "--map-auto", "--map-root-user", "true"], capture_output=True
    )
    if probe.returncode == 0:
        base.insert(1, "--map-auto")
    else:
        print("bench: no subuid range for --map-auto; mapping only this user", file=sys.stderr)
    code = subprocess.run(
        [*base, "--", sys.executable, os.path.abspath(__file__), *sys.argv[1:]], env=env
    ).returncode
    left = check_mounts(PREFIX)
    if left:
        print("bench: mounts left behind:\n  " + "\n  ".join(left), file=sys.stderr)
        return code or 1
    return code


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--files", type=int, default=20000)
    parser.add_argument("--io-mib", type=int, default=1024)
    parser.add_argument(
        "--dir",
        type=Path,
        default=Path("/dev/shm") if os.path.isdir("/dev/shm") else None,
        help="scratch parent (default /dev/shm: tmpfs shows the overlays' own cost)",
    )
    parser.add_argument(
        "--warm-mib",
        type=int,
        default=None,
        help="anonymous memory to touch first (default 4 x io-mib + 2048)",
    )
    parser.add_argument("--only", default=",".join(FS_NAMES))
    parser.add_argument(
        "--profile",
        type=Path,
        default=None,
        help="py-spy the rootbuild server in run 1; write stacks here",
    )
    parser.add_argument(
        "--cprofile",
        type=Path,
        default=None,
        help="run the rootbuild server under cProfile in run 1; dumps here",
    )
    args = parser.parse_args()
    args.profile = args.profile and args.profile.resolve()
    args.cprofile = args.cprofile and args.cprofile.resolve()
    if os.environ.get(NS_ENV) != "1":
        return reexec()
    for tool in ("tar", "cp", "rm"):
        if shutil.which(tool) is None:
            sys.exit(f"bench: {tool} missing")
    kinds = [k for k in FS_NAMES if k in args.only.split(",")]
    scratch = Path(tempfile.mkdtemp(prefix=PREFIX, dir=args.dir))
    code = 0
    try:
        started = time.perf_counter()
        print(f"bench: scratch {scratch}; preparing data", file=sys.stderr)
        warm = args.warm_mib if args.warm_mib is not None else 4 * args.io_mib + 2048
        warm_memory(warm)
        make_tree(scratch / "src-big", args.files)
        make_tree(scratch / "src-ten", args.files // 2)
        run("tar", "-C", scratch / "src-big", "-cf", scratch / "big.tar", ".")
        run("tar", "-C", scratch / "src-ten", "-cf", scratch / "ten.tar", ".")
        data = Data(
            base=make_layer(base_entries(), scratch / "layers/base"),
            ten=make_layer(list(tree_entries(scratch / "src-ten")), scratch / "layers/ten"),
            tar_big=scratch / "big.tar",
            tar_ten=scratch / "ten.tar",
            files=args.files,
            io_mib=args.io_mib,
        )
        shutil.rmtree(scratch / "src-big")
        shutil.rmtree(scratch / "src-ten")
        unavailable: dict[str, str] = {}
        for i, kind in enumerate(kinds):
            if kind == "plain":
                continue
            probe = scratch / f"probe-{i}"
            probe.mkdir()
            why = (
                probe_rootbuild if kind == "rootbuild" else lambda b, w, k=kind: probe_peer(k, b, w)
            )(data.base, probe / "p")
            shutil.rmtree(probe)
            if why is not None:
                unavailable[kind] = why
                print(f"bench: {kind}: not available: {why}", file=sys.stderr)
        active = [k for k in kinds if k not in unavailable]
        results: dict[str, list[dict[str, float]]] = {k: [] for k in FS_NAMES}
        for out in (args.profile, args.cprofile):
            if out is not None:
                out.mkdir(parents=True, exist_ok=True)
        rtts: list[float] = []
        for index in range(args.runs):
            r = Run(index, active if index % 2 == 0 else active[::-1], scratch, args)
            rtts.append(pipe_round_trip_us())
            for phase in PHASES:
                phase(r, data)
            for kind in r.order:
                shutil.rmtree(r.where[kind], ignore_errors=True)
                if kind in r.failed:
                    code = 1
                    continue
                results[kind].append(r.times[kind])
                line = ", ".join(f"{k} {v:.3f}" for k, v in r.times[kind].items())
                print(f"bench: run {index + 1} {kind}: {line}", file=sys.stderr)
        report(results, data, rtts, unavailable)
        print(f"\nbench: {time.perf_counter() - started:.0f} s in all", file=sys.stderr)
    finally:
        for line in check_mounts(PREFIX):
            code = 1
            print(f"bench: left mounted, detaching: {line}", file=sys.stderr)
            with contextlib.suppress(OSError):
                umount(Path(line.split()[1]), MNT_DETACH)
        shutil.rmtree(scratch, ignore_errors=True)
    return code


if __name__ == "__main__":
    if os.environ.get(CPROFILE_ENV) and len(sys.argv) == 2 and sys.argv[1].endswith(".json"):
        sys.exit(serve_profiled(Path(sys.argv[1]), Path(os.environ[CPROFILE_ENV])))
    sys.exit(main())
