"""The build context: found once, opened once, read only through directory descriptors.

Rules (SECURITY.md rule 1, "never follow a path string on the host"):
- The context directory is opened once; every later access is ``openat``/``fstatat``/
  ``readlinkat`` relative to a directory fd, one component at a time, with ``O_NOFOLLOW``.
  The kernel never resolves a symlink inside the context on our behalf.
- Symlinks met while resolving a COPY/ADD source are resolved by this module, inside the
  context: relative targets against their directory, ``..`` never above the context root.
  A target that leaves the context (``../..``, an absolute path that is not under the
  context's own host path) is an error; the host path it names is never looked at.
- A named source that is itself a symlink is followed (Docker copies the target) and the
  entry keeps the name it was asked for (``relpath``) next to where it really is
  (``realpath``). Symlinks *inside* a copied directory are reported, never followed.
- .dockerignore applies to real context paths. An ignored path is not in the context: it
  cannot be a source, a symlink in it is not followed, and an ignored directory that no
  ``!`` pattern can re-include is never opened. An ignored directory that does contain
  re-included paths is reported just before its first included descendant (as BuildKit's
  fsutil does, so the copy can create it).
- Every file is opened ``O_NOFOLLOW`` relative to its parent fd and checked against the
  ``(st_dev, st_ino)`` seen when it was listed, so a swap between listing and reading fails.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Generator, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import BinaryIO, Literal

from rootbuild.dockerfile.dockerignore import (
    BadPatternError,
    IgnoreMatcher,
    clean,
    glob_match,
    has_wildcards,
)
from rootbuild.errors import ContextError, Location

__all__ = [
    "BuildContext",
    "ContextEntry",
    "find_dockerfile",
    "ignore_file_for",
    "load_ignore",
]

_PATH_DIR = os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_READ_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_READ_FILE = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
_MAX_SYMLINKS = 40  # Linux's MAXSYMLINKS
_MAX_IGNORE_FILE = 16 << 20

Kind = Literal["file", "dir", "symlink", "other"]


@dataclass(frozen=True)
class ContextEntry:
    """One file system object of the context, as lstat saw it.

    ``relpath`` is the path the caller asked for ("." for the root); ``realpath`` is where
    the object really is when a named symlink was followed ("" means the same as relpath).
    ``linkname`` is the target of a symlink entry."""

    relpath: str
    kind: Kind
    mode: int
    size: int
    mtime_ns: int
    linkname: str
    ino: int
    dev: int
    nlink: int
    realpath: str = ""

    @property
    def real(self) -> str:
        return self.realpath or self.relpath


def _kind(mode: int) -> Kind:
    if stat.S_ISREG(mode):
        return "file"
    if stat.S_ISDIR(mode):
        return "dir"
    if stat.S_ISLNK(mode):
        return "symlink"
    return "other"


def _entry(relpath: str, real: str, st: os.stat_result, linkname: str = "") -> ContextEntry:
    return ContextEntry(
        relpath=relpath,
        kind=_kind(st.st_mode),
        mode=st.st_mode,
        size=st.st_size,
        mtime_ns=st.st_mtime_ns,
        linkname=linkname,
        ino=st.st_ino,
        dev=st.st_dev,
        nlink=st.st_nlink,
        realpath="" if real == relpath else real,
    )


def _join(parts: list[str]) -> str:
    return "/".join(parts) or "."


def _child(base: str, name: str) -> str:
    return name if base == "." else f"{base}/{name}"


def _sorted_names(fd: int) -> list[str]:
    return sorted(os.listdir(fd), key=os.fsencode)  # bytewise, like Go's sort of names


class _Outside(Exception):
    """A path or symlink target leaves the context."""


@dataclass
class _Found:
    real: list[str]
    st: os.stat_result
    linkname: str


@dataclass
class _Lookup:
    found: _Found | None
    ignored: bool = False  # not found because .dockerignore hides part of the path


class _DirStack:
    """O_PATH fds for the directories from the context root down to the current one."""

    def __init__(self, root_fd: int) -> None:
        self.root_fd = root_fd
        self.fds: list[int] = []
        self.names: list[str] = []

    @property
    def fd(self) -> int:
        return self.fds[-1] if self.fds else self.root_fd

    def push(self, name: str) -> None:
        self.fds.append(os.open(name, _PATH_DIR, dir_fd=self.fd))
        self.names.append(name)

    def pop(self) -> None:
        os.close(self.fds.pop())
        self.names.pop()

    def close(self) -> None:
        while self.fds:
            self.pop()


class BuildContext:
    """The opened build context. Use as a context manager; ``close()`` releases the fd."""

    def __init__(self, root_fd: int, host_root: str, ignore: IgnoreMatcher) -> None:
        self._root_fd = root_fd
        self._host_root = host_root
        self.ignore = ignore

    @classmethod
    def open(cls, context_dir: Path, ignore: IgnoreMatcher) -> BuildContext:
        """Open ``context_dir`` (the user's own path, so following it is fine) once."""
        try:
            fd = os.open(context_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as exc:
            raise ContextError(f"open build context {context_dir}: {exc.strerror}") from exc
        try:
            host_root = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            host_root = os.path.realpath(context_dir)
        return cls(fd, host_root, ignore)

    @property
    def host_root(self) -> str:
        """The context directory's host path (for cache bookkeeping, never for opening)."""
        return self._host_root

    def close(self) -> None:
        if self._root_fd >= 0:
            os.close(self._root_fd)
            self._root_fd = -1

    def __enter__(self) -> BuildContext:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- resolution ------------------------------------------------------------------------

    def _host_relative(self, target: str) -> str | None:
        """An absolute symlink target as a context path, if it names the context's own
        host directory or something below it (string comparison only)."""
        target = clean(target)
        root = self._host_root.rstrip("/")
        if target == root or (root == "" and target == "/"):
            return "."
        if target.startswith(root + "/"):
            return target[len(root) + 1 :]
        return None

    def _lookup(self, parts: list[str], *, follow_last: bool) -> _Lookup:
        """Resolve context-relative components, chroot-like, without ever letting the
        kernel follow a symlink. Raises ``_Outside``; returns not-found as ``found=None``."""
        dirs = _DirStack(self._root_fd)
        try:
            todo = list(reversed(parts))
            hops = 0
            while todo:
                name = todo.pop()
                if name in ("", "."):
                    continue
                if name == "..":
                    if not dirs.names:
                        raise _Outside
                    dirs.pop()
                    continue
                try:
                    st = os.stat(name, dir_fd=dirs.fd, follow_symlinks=False)
                except (FileNotFoundError, NotADirectoryError):
                    return _Lookup(None)
                last = not todo
                if stat.S_ISLNK(st.st_mode) and (follow_last or not last):
                    if self.ignore.ignored(_join([*dirs.names, name])):
                        return _Lookup(None, ignored=True)  # the link is not in the context
                    hops += 1
                    if hops > _MAX_SYMLINKS:
                        raise OSError(errno.ELOOP, os.strerror(errno.ELOOP))
                    target = os.readlink(name, dir_fd=dirs.fd)
                    if target.startswith("/"):
                        inside = self._host_relative(target)
                        if inside is None:
                            raise _Outside
                        dirs.close()
                        target = inside
                    todo.extend(reversed(target.split("/")))
                    continue
                if last:
                    linkname = os.readlink(name, dir_fd=dirs.fd) if stat.S_ISLNK(st.st_mode) else ""
                    return _Lookup(_Found([*dirs.names, name], st, linkname))
                if not stat.S_ISDIR(st.st_mode):
                    return _Lookup(None)
                dirs.push(name)  # O_NOFOLLOW: a swap to a symlink since the stat fails here
            return _Lookup(_Found(list(dirs.names), os.fstat(dirs.fd), ""))
        finally:
            dirs.close()

    def _open_dir(self, real: str) -> int:
        """A readable fd for the real (symlink-free) context directory ``real``."""
        parts = [p for p in real.split("/") if p not in ("", ".")]
        if not parts:
            return os.open(".", _READ_DIR, dir_fd=self._root_fd)
        dirs = _DirStack(self._root_fd)
        try:
            for name in parts[:-1]:
                dirs.push(name)
            return os.open(parts[-1], _READ_DIR, dir_fd=dirs.fd)
        finally:
            dirs.close()

    def _present(self, entry: ContextEntry) -> bool:
        """Whether the entry is in the context: not ignored, or a directory holding
        something a ``!`` pattern re-includes."""
        if not self.ignore.ignored(entry.real):
            return True
        if entry.kind != "dir" or not self.ignore.may_include_below(entry.real):
            return False
        it = self.walk(entry)
        try:
            next(it)  # the entry itself
            return next(it, None) is not None
        finally:
            it.close()

    def resolve_sources(
        self, pattern: str, *, location: Location | None = None
    ) -> list[ContextEntry]:
        """Resolve one COPY/ADD source (already variable-expanded) to context entries.

        "/" and "./" mean the context root; any component may hold ``filepath.Match``
        wildcards. Named (and matched) symlinks are followed inside the context.
        Returns the matching entries that are in the context, sorted by ``relpath``."""
        comps: list[str] = []
        for comp in pattern.split("/"):
            if comp in ("", "."):
                continue
            if comp == "..":
                if not comps:
                    raise ContextError(f'source "{pattern}" is outside the build context', location)
                comps.pop()
                continue
            comps.append(comp)

        hidden = False
        # Candidates: (path as named, resolved real components, lstat of the real object).
        cands: list[tuple[list[str], _Found]] = []
        try:
            root = self._lookup([], follow_last=True).found
            assert root is not None
            cands.append(([], root))
            for comp in comps:
                nxt: list[tuple[list[str], _Found]] = []
                for shown, found in cands:
                    if has_wildcards(comp):
                        names = self._matching_names(found, comp, pattern, location)
                    else:
                        names = [comp]
                    for name in names:
                        res = self._lookup([*found.real, name], follow_last=True)
                        hidden = hidden or res.ignored
                        if res.found is not None:
                            nxt.append(([*shown, name], res.found))
                cands = nxt
        except _Outside:
            raise ContextError(
                f'source "{pattern}" is outside the build context', location
            ) from None
        except OSError as exc:
            raise ContextError(f'resolve source "{pattern}": {exc.strerror}', location) from exc

        out: list[ContextEntry] = []
        for shown, found in cands:
            entry = _entry(_join(shown), _join(found.real), found.st, found.linkname)
            if self._present(entry):
                out.append(entry)
            else:
                hidden = True
        if not out:
            why = f" (excluded by {self.ignore.source})" if hidden else ""
            raise ContextError(f'source "{pattern}" not found in build context{why}', location)
        out.sort(key=lambda e: os.fsencode(e.relpath))
        return out

    def _matching_names(
        self, found: _Found, comp: str, pattern: str, location: Location | None
    ) -> list[str]:
        if not stat.S_ISDIR(found.st.st_mode):
            return []
        real = _join(found.real)
        if self.ignore.ignored(real) and not self.ignore.may_include_below(real):
            return []  # never list a directory that is not in the context
        fd = self._open_dir(real)
        try:
            names = _sorted_names(fd)
        finally:
            os.close(fd)
        try:
            return [n for n in names if glob_match(comp, n)]
        except BadPatternError as exc:
            raise ContextError(f'resolve source "{pattern}": {exc}', location) from exc

    # -- reading ---------------------------------------------------------------------------

    def walk(self, entry: ContextEntry) -> Generator[ContextEntry, None, None]:
        """Yield ``entry``, then (for a directory) every descendant in the context, depth
        first in bytewise name order. Symlinks are yielded, never followed."""
        yield entry
        if entry.kind != "dir":
            return
        try:
            top = self._open_dir(entry.real)
        except OSError as exc:
            raise ContextError(f'read "{entry.relpath}": {exc.strerror}') from exc
        # Frames: (dir fd, remaining names, real path, shown path); pending holds ignored
        # directories not yet reported, reported only if something below them is included.
        frames: list[tuple[int, Iterator[str], str, str]] = [(top, iter(()), "", "")]
        pending: list[ContextEntry | None] = [None]
        try:
            self._check_same(top, entry)
            frames[0] = (top, iter(_sorted_names(top)), entry.real, entry.relpath)
            while frames:
                fd, names, real, shown = frames[-1]
                name = next(names, None)
                if name is None:
                    os.close(fd)
                    frames.pop()
                    pending.pop()
                    continue
                crel, cshown = _child(real, name), _child(shown, name)
                ignored = self.ignore.ignored(crel)
                if ignored and not self.ignore.may_include_below(crel):
                    continue  # not even stat'ed
                try:
                    st = os.stat(name, dir_fd=fd, follow_symlinks=False)
                except FileNotFoundError:
                    continue  # removed since listed
                is_dir = stat.S_ISDIR(st.st_mode)
                if ignored and not is_dir:
                    continue
                link = os.readlink(name, dir_fd=fd) if stat.S_ISLNK(st.st_mode) else ""
                child = _entry(cshown, crel, st, link)
                if not ignored:
                    for i, parent in enumerate(pending):
                        if parent is not None:
                            yield parent
                            pending[i] = None
                    yield child
                if is_dir:
                    cfd = os.open(name, _READ_DIR, dir_fd=fd)
                    try:
                        self._check_same(cfd, child)
                        children = _sorted_names(cfd)
                    except BaseException:
                        os.close(cfd)
                        raise
                    frames.append((cfd, iter(children), crel, cshown))
                    pending.append(child if ignored else None)
        except OSError as exc:
            where = frames[-1][3] if frames else entry.relpath
            raise ContextError(f'read "{where}": {exc.strerror}') from exc
        finally:
            for fd, *_ in frames:
                os.close(fd)

    @staticmethod
    def _check_same(fd: int, entry: ContextEntry) -> None:
        st = os.fstat(fd)
        if (st.st_dev, st.st_ino) != (entry.dev, entry.ino):
            raise ContextError(f'read "{entry.relpath}": changed while the build was reading it')

    def open_file(self, entry: ContextEntry) -> BinaryIO:
        """Open a regular-file entry for reading, ``O_NOFOLLOW`` relative to its parent,
        and check it is still the object that was listed."""
        if entry.kind != "file":
            raise ContextError(f'open "{entry.relpath}": not a regular file')
        parts = entry.real.split("/")
        dirs = _DirStack(self._root_fd)
        try:
            for name in parts[:-1]:
                dirs.push(name)
            fd = os.open(parts[-1], _READ_FILE, dir_fd=dirs.fd)
        except OSError as exc:
            raise ContextError(f'open "{entry.relpath}": {exc.strerror}') from exc
        finally:
            dirs.close()
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode) or (st.st_dev, st.st_ino) != (entry.dev, entry.ino):
                raise ContextError(
                    f'open "{entry.relpath}": changed while the build was reading it'
                )
            os.set_blocking(fd, True)
            return os.fdopen(fd, "rb")
        except BaseException:
            os.close(fd)
            raise


# -- finding the Dockerfile and the ignore file ------------------------------------------------


def _in_context_file(context_dir: Path, name: str) -> Path | None:
    """``context_dir/name`` when it is a regular file in the context, following a symlink
    only inside the context; None when absent. Raises when a symlink leaves the context."""
    with BuildContext.open(context_dir, IgnoreMatcher()) as ctx:
        try:
            res = ctx._lookup(name.split("/"), follow_last=True)
        except _Outside:
            raise ContextError(f'read "{name}": symlink points outside the build context') from None
        except OSError as exc:
            raise ContextError(f'read "{name}": {exc.strerror}') from exc
    if res.found is None or not stat.S_ISREG(res.found.st.st_mode):
        return None
    return context_dir.joinpath(*res.found.real)


def find_dockerfile(context_dir: Path, dockerfile: str | None) -> Path:
    """The Dockerfile to build.

    ``dockerfile`` (``-f``) is the invoking user's own path, relative to the current
    directory as with ``docker build -f``. Without it, ``CONTEXT/Dockerfile`` then
    ``CONTEXT/Containerfile``; those come from the (untrusted) context, so a symlink is
    resolved inside the context and the returned path has no symlink in it."""
    if dockerfile is not None:
        path = Path(dockerfile)
        if not path.is_file():
            raise ContextError(f'find Dockerfile: "{dockerfile}" not found')
        return path.absolute()
    for name in ("Dockerfile", "Containerfile"):
        found = _in_context_file(context_dir, name)
        if found is not None:
            return found
    raise ContextError(f"find Dockerfile: no Dockerfile or Containerfile in {context_dir}")


def ignore_file_for(context_dir: Path, dockerfile_path: Path) -> Path | None:
    """BuildKit's choice: ``<Dockerfile name>.dockerignore`` beside the Dockerfile, else
    ``CONTEXT/.dockerignore``, else None."""
    specific = dockerfile_path.with_name(dockerfile_path.name + ".dockerignore")
    for candidate in (specific, context_dir / ".dockerignore"):
        if os.path.lexists(candidate):
            return candidate
    return None


def load_ignore(context_dir: Path, dockerfile_path: Path) -> IgnoreMatcher:
    """Read and parse the ignore file ``ignore_file_for`` picks (an empty matcher if none).
    A file inside the context is read through the context's fds, never followed out."""
    return read_ignore_file(context_dir, ignore_file_for(context_dir, dockerfile_path))


def load_context_ignore(context_dir: Path) -> IgnoreMatcher:
    """The rules of ``CONTEXT/.dockerignore`` alone (a named build context: BuildKit reads
    that one file for it, whatever the Dockerfile is called)."""
    path = context_dir / ".dockerignore"
    return read_ignore_file(context_dir, path if os.path.lexists(path) else None)


def read_ignore_file(context_dir: Path, path: Path | None) -> IgnoreMatcher:
    """Read and parse the ignore file ``path`` (an empty matcher for None)."""
    if path is None:
        return IgnoreMatcher()
    display = str(path)
    try:
        rel = path.absolute().relative_to(context_dir.absolute())
    except ValueError:
        rel = None
    if rel is not None:
        with BuildContext.open(context_dir, IgnoreMatcher()) as ctx:
            entries = ctx.resolve_sources(rel.as_posix())
            if entries[0].kind != "file":
                raise ContextError(f"read {display}: not a regular file")
            with ctx.open_file(entries[0]) as f:
                data = f.read(_MAX_IGNORE_FILE + 1)
    else:
        try:
            with open(path, "rb") as f:
                data = f.read(_MAX_IGNORE_FILE + 1)
        except OSError as exc:
            raise ContextError(f"read {display}: {exc.strerror}") from exc
    if len(data) > _MAX_IGNORE_FILE:
        raise ContextError(f"read {display}: larger than {_MAX_IGNORE_FILE} bytes")
    return IgnoreMatcher.parse(data.decode("utf-8", "surrogateescape"), display)
