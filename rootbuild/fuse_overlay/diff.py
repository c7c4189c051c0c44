"""The change journal's diff: the step's layer computed from the model's touched inodes.

Rules (an overlay diff, as containerd's and BuildKit's differs emit it, OCI layer.md):
- Visit only the touched inodes, their ancestors, and the subtrees of directories that
  moved or were re-created: the cost grows with the change, never with the image.
- Emit every created or modified path with its current attributes, the parent directories
  of changed paths, whiteouts for lower paths that are gone, and opaque markers for lower
  directories that were replaced. File content is named, not read: upper data numbers or
  lower (layer, path) pairs, for ``journal.write_tree`` to materialise.
- Pure: no os, no trio, no pyfuse3.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from rootbuild.fuse_overlay.inodes import ROOT_INO, Inode, join_path, sort_key
from rootbuild.fuse_overlay.model import OverlayModel
from rootbuild.image.layermeta import EntryMeta


@dataclass(frozen=True)
class Change:
    """One entry of the step's layer. File content comes from the upper data store
    (``data``) or from a lower layer's file (``lower`` = (layer, path))."""

    entry: EntryMeta
    data: int | None = None
    lower: tuple[int, str] | None = None


@dataclass(frozen=True)
class ChangeSet:
    changes: tuple[Change, ...]  # bytewise path order, as in the layer tar
    whiteouts: frozenset[str]
    opaque_dirs: frozenset[str]



class _Differ:
    def __init__(self, model: OverlayModel) -> None:
        self.m = model
        self.dirs: dict[str, Inode] = {}  # emitted directories by path
        self.files: dict[int, list[str]] = {}  # emitted non-directories: ino -> paths
        self.whiteouts: set[str] = set()
        self.opaque: set[str] = set()

    def _names_of(self, node: Inode) -> list[tuple[int, str]]:
        if node.is_dir:
            return [(node.parent, node.name)] if node.ino != ROOT_INO and node.parent else []
        return list(node.links)

    def run(self) -> ChangeSet:
        m = self.m
        visit: dict[int, set[str]] = {}
        for ino in list(m.touched):
            node = m.inodes.get(ino)
            if node is None:
                continue
            for pino, name in self._names_of(node):
                if m.dir_path(pino) is None:
                    continue
                visit.setdefault(pino, set()).add(name)
                d = m.inodes[pino]
                while d.ino != ROOT_INO:
                    visit.setdefault(d.parent, set()).add(d.name)
                    d = m.inodes[d.parent]
        root = m.inodes[ROOT_INO]
        if root.dirty:
            self.dirs[""] = root
        stack: list[tuple[Inode, str, bool]] = [(root, "", False)]
        while stack:
            d, path, full = stack.pop()
            if full:
                self._full(d, path, stack)
            else:
                self._partial(d, path, visit, stack)
        self._complete_hardlinks()
        return self._result()

    def _partial(
        self,
        d: Inode,
        path: str,
        visit: dict[int, set[str]],
        stack: list[tuple[Inode, str, bool]],
    ) -> None:
        m = self.m
        if path:
            self.dirs[path] = d
        table = m.load(d)
        if d.table_dirty:
            names: Iterable[str] = table
            for gone in d.lower_listing.difference(table):
                self.whiteouts.add(join_path(path, gone))
        else:
            names = [n for n in visit.get(d.ino, ()) if n in table]
        for name in names:
            child = m.inodes[table[name]]
            cpath = join_path(path, name)
            if child.is_dir:
                if child.origin == cpath:
                    if child.ino in visit or child.dirty or child.table_dirty:
                        stack.append((child, cpath, False))
                    continue
                if name in d.lower_listing:
                    lower = m.lower_lookup(cpath)
                    if lower is not None and lower[1].kind == "dir":
                        self.opaque.add(cpath)
                stack.append((child, cpath, True))
            elif child.dirty or cpath not in child.lower_names:
                self.files.setdefault(child.ino, []).append(cpath)

    def _full(self, d: Inode, path: str, stack: list[tuple[Inode, str, bool]]) -> None:
        self.dirs[path] = d
        for name, ino in self.m.load(d).items():
            child = self.m.inodes[ino]
            cpath = join_path(path, name)
            if child.is_dir:
                stack.append((child, cpath, True))
            else:
                self.files.setdefault(child.ino, []).append(cpath)

    def _complete_hardlinks(self) -> None:
        """Every name of an emitted multi-link inode must be in the layer too, with its
        parent directories (those are in place: a moved one was emitted whole)."""
        m = self.m
        for ino, paths in list(self.files.items()):
            node = m.inodes[ino]
            if node.kind == "socket" or len(node.links) <= len(paths):
                continue
            have = set(paths)
            for pino, name in node.links:
                parent_path = m.dir_path(pino)
                if parent_path is None:
                    continue
                path = join_path(parent_path, name)
                if path in have:
                    continue
                paths.append(path)
                d = m.inodes[pino]
                dpath: str | None = parent_path
                while d.ino != ROOT_INO and dpath and dpath not in self.dirs:
                    self.dirs[dpath] = d
                    d = m.inodes[d.parent]
                    dpath = dpath.rpartition("/")[0]

    def _result(self) -> ChangeSet:
        m = self.m
        out: list[Change] = [Change(m.entry_for(d, p)) for p, d in self.dirs.items()]
        for ino, paths in self.files.items():
            node = m.inodes[ino]
            if node.kind == "socket":  # tar cannot carry sockets; Docker skips them too
                continue
            paths.sort(key=sort_key)
            first = paths[0]
            data, lower = (node.data, node.lower) if node.kind == "file" else (None, None)
            out.append(Change(m.entry_for(node, first), data, lower))
            for other in paths[1:]:
                e = m.entry_for(node, other)
                if node.kind != "symlink":  # extract_layer turns a link to a symlink into a copy
                    e = EntryMeta(
                        path=other,
                        kind="hardlink",
                        mode=e.mode,
                        uid=e.uid,
                        gid=e.gid,
                        mtime=e.mtime,
                        linkname=first,
                        xattrs=e.xattrs,
                    )
                out.append(Change(e))
        out.sort(key=lambda c: sort_key(c.entry.path))
        return ChangeSet(tuple(out), frozenset(self.whiteouts), frozenset(self.opaque))


def changes(model: OverlayModel) -> ChangeSet:
    """The step's layer as an overlay diff (see the module rules)."""
    return _Differ(model).run()
