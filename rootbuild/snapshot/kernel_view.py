"""What a lower layer needs so that the kernel's overlayfs presents it as its meta says.

Job: ``plan_layer(meta, below)``: for one extracted layer (``image/layermeta.py``: a tree
owned by the invoking user, the image's ownership, modes, devices and xattrs kept in the
meta), the few entries the kernel must be shown differently from the disk, in two small
trees stacked around the layer (``kernel.py`` writes them, inside the build's user
namespace, in the step's work directory):

- ``under`` (directly BELOW the layer): the layer's OCI whiteouts as overlayfs whiteouts
  (character devices 0/0) and its opaque directories as empty directories with
  ``user.overlay.opaque=y``. Below the layer, they hide the lower layers only, never the
  layer's own entries: exactly the OCI rule (layer.md "Whiteouts").
- ``over`` (directly ABOVE the layer): every entry whose disk shape differs from its meta
  (owner other than root, setuid/setgid/sticky, a mode the extractor widened, xattrs,
  FIFOs) with its real attributes; regular files are copied, their other names in the
  layer hard-linked. A merged directory takes its attributes from its topmost layer, so a
  directory in ``over`` fixes the layer's directory and keeps its content visible.

Rules:
- Pure: no os. The disk shape is what ``layer_extract`` writes (owner = the user, which
  is root in the build's user namespace; files mode | 0o600, directories mode | 0o700,
  no special bits, no xattrs, devices and FIFOs as empty files, implicit parents 0o755).
- Whiteouts and opaque markers are planned only where they hide something below (a
  whiteout in a directory that is not merged would be listed as a device).
- What no user namespace can present is ``unrepresentable`` (with the path): character
  and block devices (mknod needs CAP_MKNOD in the initial namespace), xattrs outside
  ``user.*``/``security.capability``, and any ``*.overlay.*`` xattr (overlayfs would obey
  it). The kernel snapshotter refuses such lowers; the FUSE overlay presents them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from rootbuild.image.layermeta import EntryMeta, LayerMeta, resolve_entry

SPECIAL_BITS = 0o7000


@dataclass(frozen=True)
class ViewPlan:
    """``whiteouts``/``opaque``: paths for ``under``; ``fixes``: entries (parents first)
    for ``over``, each with the attributes the merged view must show; ``links``: extra
    names (path, the fixed file's path) for ``over``; ``unrepresentable``: why not."""

    whiteouts: tuple[str, ...] = ()
    opaque: tuple[str, ...] = ()
    under_dirs: tuple[EntryMeta, ...] = ()  # parents of ``under``'s entries, as merged
    fixes: tuple[EntryMeta, ...] = ()
    links: tuple[tuple[str, str], ...] = ()
    unrepresentable: tuple[str, ...] = ()

    @property
    def empty(self) -> bool:
        return not (self.whiteouts or self.opaque or self.fixes)

    @property
    def under_empty(self) -> bool:
        return not (self.whiteouts or self.opaque)


def xattr_problem(name: str) -> str | None:
    """Why ``name`` cannot be set from inside the build's user namespace, or None."""
    if ".overlay." in name or name.startswith("trusted.overlay"):
        return "an overlayfs control xattr"
    if name.startswith("user.") or name == "security.capability":
        return None
    return "an xattr only the initial namespace can set"


def disk_mode(e: EntryMeta) -> int:
    """The permission bits ``layer_extract`` leaves on disk for ``e``."""
    if e.kind == "dir":
        return 0o755 if e.implicit else (e.mode & 0o777) | 0o700
    return (e.mode & 0o777) | 0o600


def needs_fix(e: EntryMeta) -> bool:
    """Does the disk show ``e`` differently from its meta (ownership, mode, kind, xattrs)?
    Hard links are judged by their file; mtimes are not compared (see the module rules)."""
    if e.kind == "fifo":
        return True  # an empty regular file on disk
    if e.uid or e.gid or e.xattrs:
        return True
    if e.kind == "symlink":
        return False
    return bool(e.mode & SPECIAL_BITS) or (e.mode & 0o777) != disk_mode(e)


def _visible_below(below: Sequence[LayerMeta], path: str) -> EntryMeta | None:
    found = resolve_entry(below, path, range(len(below) - 1, -1, -1))
    return None if found is None else found[1]


def _effective(meta: LayerMeta, below: Sequence[LayerMeta], e: EntryMeta) -> EntryMeta:
    """The attributes the merged view shows for ``e``: an implicit directory shows the
    explicit directory below it, as the FUSE overlay does (``layermeta`` rules)."""
    if e.kind == "dir" and e.implicit:
        lower = _visible_below(below, e.path)
        if lower is not None and lower.kind == "dir" and not lower.implicit:
            return EntryMeta(e.path, "dir", lower.mode, lower.uid, lower.gid, lower.mtime,
                             lower.mtime_ns, xattrs=lower.xattrs)
    return e


def _dir_entry(meta: LayerMeta, below: Sequence[LayerMeta], path: str) -> EntryMeta:
    e = meta.get(path)
    if e is None:
        return EntryMeta(path, "dir", 0o755, implicit=True)
    return _effective(meta, below, e)


def plan_layer(meta: LayerMeta, below: Sequence[LayerMeta]) -> ViewPlan:
    """The ``under``/``over`` plan of the layer ``meta`` over the layers ``below``
    (lowest first)."""
    problems: list[str] = []
    wanted: dict[str, EntryMeta] = {}
    links: list[tuple[str, str]] = []
    by_file: dict[str, list[str]] = {}
    for e in meta.entries.values():
        if e.kind == "hardlink":
            by_file.setdefault(e.linkname, []).append(e.path)
    for e in meta.entries.values():
        if e.kind in ("char", "block"):
            problems.append(f"/{e.path}: a {e.kind} device, which a user namespace cannot "
                            "create")
            continue
        for name, _ in e.xattrs:
            why = xattr_problem(name)
            if why is not None:
                problems.append(f"/{e.path}: xattr {name}: {why}")
        if e.kind == "hardlink":
            continue
        shown = _effective(meta, below, e)
        if needs_fix(shown):
            wanted[e.path] = shown
            links += [(other, e.path) for other in by_file.get(e.path, ())]
    # a fixed entry's parents go in ``over`` too, with the layer's own attributes (the
    # topmost directory's attributes are the merged directory's)
    for path in [*wanted, *(name for name, _ in links)]:
        parent = path.rpartition("/")[0]
        while parent and parent not in wanted:
            wanted[parent] = _dir_entry(meta, below, parent)
            parent = parent.rpartition("/")[0]
    wanted.pop("", None)  # the root: ``kernel.py`` gives the upper (or view) its attributes
    fixes = tuple(sorted(wanted.values(), key=lambda e: _depth_key(e.path)))
    whiteouts = tuple(sorted(w for w in meta.whiteouts if _visible_below(below, w)))
    opaque = tuple(sorted(
        o for o in meta.opaque_dirs
        if (lower := _visible_below(below, o)) is not None and lower.kind == "dir"
    ))
    under: dict[str, EntryMeta] = {}
    for path in (*whiteouts, *opaque):
        parent = path if path in opaque else path.rpartition("/")[0]
        while parent and parent not in under:
            mine = meta.get(parent)
            if mine is None or mine.implicit:
                mine = _visible_below(below, parent) or EntryMeta(parent, "dir", 0o755)
            under[parent] = mine
            parent = parent.rpartition("/")[0]
    under_dirs = tuple(sorted(under.values(), key=lambda e: _depth_key(e.path)))
    return ViewPlan(whiteouts, opaque, under_dirs, fixes, tuple(sorted(links)),
                    tuple(problems))


def root_entry(metas: Sequence[LayerMeta]) -> EntryMeta:
    """What the merged root shows (the topmost explicit root entry)."""
    for meta in reversed(metas):
        e = meta.get("")
        if e is not None and not e.implicit:
            return e
    return EntryMeta("", "dir", 0o755)


def _depth_key(path: str) -> tuple[int, bytes]:
    return path.count("/"), path.encode("utf-8", "surrogateescape")
