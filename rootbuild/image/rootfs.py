"""A read-only merged view of a stack of extracted layers, and its safe materialisation.

Job: answer "what is at this path of the image?" over (layer dir, LayerMeta) pairs, lowest
first, with OCI whiteout/opaque semantics (image-spec layer.md "Whiteouts"), and read file
content from the layer that provides it. Used for COPY --from sources, resolving COPY
destinations through in-image symlinks, reading /etc/passwd as data, and ``dir:`` output.

Rules (SECURITY.md rules 1 and 3):
- Path resolution is a chroot's: absolute symlink targets and ".." resolve against the
  image root, never the host; more than 40 symlink hops is an error (Linux's MAXSYMLINKS).
- Symlinks are resolved from the recorded metadata, never by the kernel; layer content is
  opened through directory fds with O_NOFOLLOW on every component.
- Attributes come from LayerMeta (owners, setuid bits, devices exist only there). A hardlink
  is presented with its inode's attributes; an implicit parent directory with the
  attributes of a lower layer's explicit directory at the same path, if any.
- Paths given may be absolute or relative (both mean image-root relative); paths returned
  are relative, without leading "/", the root being "".
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from rootbuild.errors import ImageError
from rootbuild.image.layermeta import EntryMeta, LayerMeta, resolve_entry

MAX_SYMLINK_HOPS = 40
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_CHUNK = 1 << 20


def open_beneath(root: Path | int, rel: str, flags: int = os.O_RDONLY) -> int:
    """Open ``rel`` (a clean relative path) beneath ``root`` (a path or a directory fd),
    every component with O_NOFOLLOW; returns a new fd."""
    parts = rel.split("/")
    if any(p in ("", ".", "..") for p in parts):
        raise ValueError(f"open_beneath: not a clean relative path: {rel!r}")
    dfd = os.open(root, _DIR_FLAGS) if isinstance(root, Path) else os.dup(root)
    try:
        for comp in parts[:-1]:
            nfd = os.open(comp, _DIR_FLAGS, dir_fd=dfd)
            os.close(dfd)
            dfd = nfd
        return os.open(parts[-1], flags | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dfd)
    finally:
        os.close(dfd)


@dataclass(frozen=True)
class ViewEntry:
    """What the merged image shows at ``path``. ``layer`` indexes the view's layers (lowest
    is 0; -1 for a root no layer describes). ``hardlink_to`` is, for a hardlink, the path of
    its inode's first name inside that layer (else "")."""

    path: str
    kind: str
    mode: int
    uid: int
    gid: int
    mtime: int
    mtime_ns: int | None
    size: int
    linkname: str
    devmajor: int
    devminor: int
    xattrs: tuple[tuple[str, bytes], ...]
    layer: int
    hardlink_to: str = ""

    @property
    def is_dir(self) -> bool:
        return self.kind == "dir"


@dataclass(frozen=True)
class _Node:
    entry: ViewEntry
    layers: tuple[int, ...]  # for a directory: the layers that contribute to it, top first


def _components(path: str) -> list[str]:
    return [c for c in path.split("/") if c not in ("", ".")]


def _join(parent: str, name: str) -> str:
    return f"{parent}/{name}" if parent else name


class RootfsView:
    """Merged, read-only view of ``layers`` (lowest first)."""

    def __init__(self, layers: Sequence[tuple[Path, LayerMeta]]) -> None:
        self._dirs = [d for d, _ in layers]
        self._metas = [m for _, m in layers]
        self._children: list[dict[str, list[str]]] = []
        for meta in self._metas:
            index: dict[str, list[str]] = {}
            for path in meta.entries:
                if path:
                    parent, _, name = path.rpartition("/")
                    index.setdefault(parent, []).append(name)
            self._children.append(index)
        self._root = self._make_root()

    # -- resolution ------------------------------------------------------------------------

    def _make_root(self) -> _Node:
        layers: list[int] = []
        for li in reversed(range(len(self._metas))):
            layers.append(li)
            if "" in self._metas[li].opaque_dirs:
                break
        for li in layers:
            e = self._metas[li].entries.get("")
            if e is not None and e.kind == "dir" and not e.implicit:
                return _Node(self._present("", li, e, layers), tuple(layers))
        synthetic = EntryMeta("", "dir", 0o755)
        return _Node(self._present("", -1, synthetic, []), tuple(layers))

    def _present(self, path: str, li: int, e: EntryMeta, layers: Sequence[int]) -> ViewEntry:
        src, hardlink_to = e, ""
        if e.kind == "hardlink":
            target = self._metas[li].entries.get(e.linkname)
            if target is not None:
                src, hardlink_to = target, e.linkname
        elif e.kind == "dir" and e.implicit:
            for lj in layers:
                le = self._metas[lj].entries.get(path)
                if le is not None and le.kind == "dir" and not le.implicit:
                    src = le
                    break
        return ViewEntry(
            path=path,
            kind="file" if src.kind == "hardlink" else src.kind,
            mode=src.mode,
            uid=src.uid,
            gid=src.gid,
            mtime=src.mtime,
            mtime_ns=src.mtime_ns,
            size=src.size,
            linkname=src.linkname if src.kind == "symlink" else "",
            devmajor=src.devmajor,
            devminor=src.devminor,
            xattrs=src.xattrs,
            layer=li,
            hardlink_to=hardlink_to,
        )

    def _child(self, node: _Node, name: str) -> _Node | None:
        """OCI semantics: the topmost layer with an entry wins unless a higher layer whites
        the path out; a directory merges lower directories down to an opaque marker, a
        whiteout or a non-directory."""
        path = _join(node.entry.path, name)
        hit = resolve_entry(self._metas, path, node.layers)
        if hit is None:
            return None
        top, entry, layers = hit
        return _Node(self._present(path, top, entry, layers[1:]), layers)

    def _resolve(self, path: str, follow: bool, allow_missing: bool = False) -> _Node | None:
        todo = deque(_components(path))
        stack = [self._root]
        hops = 0
        while todo:
            name = todo.popleft()
            cur = stack[-1]
            if cur.entry.kind != "dir":
                if allow_missing:
                    raise ImageError(
                        f"resolve {path!r} in image: {cur.entry.path!r} is not a directory"
                    )
                return None
            if name == "..":
                if len(stack) > 1:
                    stack.pop()
                continue
            if name == ".":  # a link to "/" or "." resolves to where we are
                continue
            child = self._child(cur, name)
            if child is None:
                if not allow_missing:
                    return None
                missing = EntryMeta(_join(cur.entry.path, name), "dir", 0o755)
                child = _Node(self._present(missing.path, -1, missing, []), ())
            elif child.entry.kind == "symlink" and (todo or follow):
                hops += 1
                if hops > MAX_SYMLINK_HOPS:
                    raise ImageError(
                        f"resolve {path!r} in image: too many levels of symbolic links"
                    )
                target = child.entry.linkname
                if target.startswith("/"):
                    stack = [self._root]
                todo.extendleft(reversed(_components(target) or ["."]))
                continue
            stack.append(child)
        return stack[-1]

    # -- queries ---------------------------------------------------------------------------

    def lookup(self, path: str, follow: bool = True) -> ViewEntry | None:
        """The entry at ``path`` (following a final symlink if ``follow``), or None when it
        does not exist or a parent is not a directory."""
        node = self._resolve(path, follow)
        return node.entry if node is not None else None

    def realpath(self, path: str) -> str:
        """Resolve every existing symlink on ``path`` inside the image (missing components
        are kept as written), like containerd's fs.RootPath; for COPY destinations."""
        node = self._resolve(path, follow=True, allow_missing=True)
        assert node is not None
        return node.entry.path

    def _dir_node(self, path: str) -> _Node:
        node = self._resolve(path, follow=True)
        if node is None:
            raise ImageError(f"read directory {path!r} in image: no such file or directory")
        if node.entry.kind != "dir":
            raise ImageError(f"read directory {path!r} in image: not a directory")
        return node

    def _list(self, node: _Node) -> list[_Node]:
        names: set[str] = set()
        for li in node.layers:
            names.update(self._children[li].get(node.entry.path, ()))
        out = []
        for name in sorted(names, key=lambda n: n.encode("utf-8", "surrogateescape")):
            child = self._child(node, name)
            if child is not None:
                out.append(child)
        return out

    def listdir(self, path: str) -> list[str]:
        """Sorted (bytewise) names in the merged directory at ``path``."""
        return [c.entry.path.rpartition("/")[2] for c in self._list(self._dir_node(path))]

    def walk(self, path: str = "") -> Iterator[ViewEntry]:
        """``path`` (a final symlink followed) and everything beneath it, pre-order,
        children sorted; symlinks below are yielded, never followed."""
        start = self._resolve(path, follow=True)
        if start is None:
            raise ImageError(f"walk {path!r} in image: no such file or directory")
        stack = [start]
        while stack:
            node = stack.pop()
            yield node.entry
            if node.entry.kind == "dir":
                stack.extend(reversed(self._list(node)))

    def open_entry(self, entry: ViewEntry) -> BinaryIO:
        """Open a regular file entry's content from the layer that holds it."""
        if entry.kind != "file" or entry.layer < 0:
            raise ImageError(f"open {entry.path!r} in image: not a regular file")
        try:
            fd = open_beneath(self._dirs[entry.layer], entry.path)
        except OSError as exc:
            raise ImageError(f"open {entry.path!r} in image: {exc.strerror}") from exc
        return os.fdopen(fd, "rb")

    def open(self, path: str) -> BinaryIO:
        entry = self.lookup(path, follow=True)
        if entry is None:
            raise ImageError(f"open {path!r} in image: no such file or directory")
        return self.open_entry(entry)

    def read_small_file(self, path: str, cap: int) -> bytes:
        """Whole content of a (small) file such as /etc/passwd, refused above ``cap`` bytes."""
        with self.open(path) as f:
            data = f.read(cap + 1)
        if len(data) > cap:
            raise ImageError(f"read {path!r} in image: larger than {cap} bytes")
        return data


# -- materialisation ------------------------------------------------------------------------


def materialize(view: RootfsView, dest: Path) -> list[str]:
    """Write the merged tree to ``dest`` (created with its parents if missing, as BuildKit's
    local exporter does; must be empty, so nothing of the user's is overwritten) as an
    unprivileged user can: regular files with their content, permission bits (setuid and
    setgid dropped; sticky kept on directories) and mtimes; symlinks as they are (never
    followed); hardlinks within one layer as hardlinks. Owners and xattrs are not applied;
    devices, FIFOs are skipped. Returns the skipped paths."""
    try:
        dest.mkdir(mode=0o700, parents=True, exist_ok=True)
        root_fd = os.open(dest, _DIR_FLAGS)
    except OSError as exc:
        raise ImageError(f"write directory {dest}: {exc.strerror or exc}") from exc
    skipped: list[str] = []
    links: dict[tuple[int, str], str] = {}
    stack: list[tuple[int, Iterator[_Node], ViewEntry]] = []
    try:
        if os.listdir(root_fd):
            raise ImageError(f"write directory {dest}: not empty")
        stack.append((os.dup(root_fd), iter(view._list(view._root)), view._root.entry))
        while stack:
            dir_fd, children, dir_entry = stack[-1]
            node = next(children, None)
            if node is None:
                stack.pop()
                _finish(dir_fd, None, dir_entry, is_dir=True)
                os.close(dir_fd)
                continue
            e = node.entry
            name = e.path.rpartition("/")[2]
            if e.kind == "dir":
                os.mkdir(name, 0o700, dir_fd=dir_fd)
                stack.append((os.open(name, _DIR_FLAGS, dir_fd=dir_fd), iter(view._list(node)), e))
            elif e.kind == "symlink":
                os.symlink(e.linkname, name, dir_fd=dir_fd)
                _finish(dir_fd, name, e, is_dir=False)
            elif e.kind == "file":
                key = (e.layer, e.hardlink_to or e.path)
                first = links.get(key)
                if first is not None:
                    parent, _, src_name = first.rpartition("/")
                    src_fd = open_beneath(root_fd, parent) if parent else os.dup(root_fd)
                    try:
                        os.link(
                            src_name,
                            name,
                            src_dir_fd=src_fd,
                            dst_dir_fd=dir_fd,
                            follow_symlinks=False,
                        )
                    finally:
                        os.close(src_fd)
                    continue
                _copy_file(view, e, dir_fd, name)
                links[key] = e.path
            else:
                skipped.append(e.path)
    except OSError as exc:
        raise ImageError(f"write directory {dest}: {exc.strerror or exc}") from exc
    finally:
        for dir_fd, _, _ in stack:
            os.close(dir_fd)
        os.close(root_fd)
    return skipped


def _copy_file(view: RootfsView, e: ViewEntry, dir_fd: int, name: str) -> None:
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    fd = os.open(name, flags, 0o600, dir_fd=dir_fd)
    try:
        with view.open_entry(e) as src:
            while chunk := src.read(_CHUNK):
                view_ = memoryview(chunk)
                while view_:
                    view_ = view_[os.write(fd, view_) :]
        os.fchmod(fd, e.mode & 0o777)
        ns = e.mtime_ns if e.mtime_ns is not None else e.mtime * 1_000_000_000
        os.utime(fd, ns=(ns, ns))
    finally:
        os.close(fd)


def _finish(dir_fd: int, name: str | None, e: ViewEntry, *, is_dir: bool) -> None:
    """Apply mode (directories, after their children) and mtime without following links."""
    ns = e.mtime_ns if e.mtime_ns is not None else e.mtime * 1_000_000_000
    if is_dir:
        os.fchmod(dir_fd, e.mode & 0o1777)
        os.utime(dir_fd, ns=(ns, ns))
    else:
        assert name is not None
        os.utime(name, ns=(ns, ns), dir_fd=dir_fd, follow_symlinks=False)
