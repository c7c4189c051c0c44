"""``RUN --mount`` inside the sandbox: the init prepares every mount of ``StepSpec.mounts``,
the step's process mounts them under its root.

Job: ``mount_trees`` (in the init, before it reports its processes): mount the tree of each
``LayerMount`` through its snapshotter in the step's scratch (one FUSE server process per
tree, read-only ``view`` or a writable ``mount`` whose upper is never collected, unless
the mount says where to ``keep`` it) and resolve its ``source`` inside that tree;
``keep_changes`` (in the init, after the step exited and was not killed): leave the
changes of every such mount in its ``keep`` directory, for the builder to take;
``prepare_targets`` (in the init, before the step exists): check or create every target
in the root, of the kind its source has;
``mount_one`` (in the step's process, after /proc and the sandbox's /etc binds): bind the
source (or mount the tmpfs) at its target, made first inside an earlier mount that covers
it (``ensure_nested_target``).

Rules (SECURITY.md rule 1; Docker's reference for ``RUN --mount``):
- A source is resolved from the tree's own root fd with ``openat2(RESOLVE_IN_ROOT |
  RESOLVE_NO_MAGICLINKS)``: absolute symlinks and '..' resolve against that tree, as in a
  chroot, never against the host. It is resolved again, the same way, by the step's process
  (a bind source must be a mount of the caller's own mount namespace).
- Targets are opened through the root's fd with no symlink followed, created when missing
  and removed after the step (the init's ``created`` list), so nothing of a mount (its
  mountpoint, a file written through a ``rw`` bind, a tmpfs's content) reaches the layer.
- Mounts go parents first: sorted by target depth, stable (BuildKit's LLB sorts exec mounts
  by target).
- A read-only bind is made read-only recursively after the bind, on top of the read-only
  tree itself.
- Changes are kept only through ``keep_changes``: a failed set-up or a killed step leaves
  the tree's context unfinished, which throws the upper away.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import os
import stat
from dataclasses import dataclass
from pathlib import Path

from rootbuild.errors import StepError
from rootbuild.sandbox import mounts
from rootbuild.sandbox.secrets import SecretFiles
from rootbuild.sandbox.spec import (
    KEPT_META,
    KEPT_TREE,
    Bind,
    BindKind,
    LayerMount,
    RunMount,
    SecretMount,
    StepSpec,
    TmpfsMount,
)
from rootbuild.snapshot import NO_INODE_LIMIT, DiskBudget, MountedStep, snapshotter_named

SOURCE_RESOLVE = mounts.RESOLVE_IN_ROOT | mounts.RESOLVE_NO_MAGICLINKS


@dataclass(frozen=True)
class TreeBind:
    """A ``LayerMount`` whose tree is mounted at ``tree`` (a path of the builder's scratch):
    its ``source`` (inside the tree) is bound at ``target``; ``kind`` is the source's."""

    tree: str
    source: str
    target: str
    kind: BindKind
    readonly: bool


#: a mount the step's process carries out
Prepared = Bind | TreeBind | TmpfsMount


def ordered(items: tuple[RunMount, ...]) -> list[RunMount]:
    """Parents before children: by the number of components of the target, stable."""
    return sorted(items, key=lambda m: len([p for p in m.target.split("/") if p]))


def _source_rel(source: str) -> str:
    return source.strip("/") or "."


def _open_source(tree: str, source: str) -> int:
    """An O_PATH fd of ``source`` resolved inside the tree mounted at ``tree``."""
    root = os.open(tree, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        return mounts.openat2(root, _source_rel(source), os.O_PATH, SOURCE_RESOLVE)
    finally:
        os.close(root)


def _kind_of(fd: int) -> BindKind | None:
    mode = os.fstat(fd).st_mode
    if stat.S_ISDIR(mode):
        return "dir"
    if stat.S_ISREG(mode):
        return "file"
    return None


def _resolve(tree: Path, item: LayerMount) -> TreeBind:
    try:
        fd = _open_source(str(tree), item.source)
    except OSError as exc:
        if exc.errno == errno.ENOENT:
            raise StepError(f'mount at {item.target}: source "{item.source}": not found'
                            ) from exc
        raise StepError(f'mount at {item.target}: source "{item.source}": {exc.strerror}'
                        ) from exc
    try:
        kind = _kind_of(fd)
    finally:
        os.close(fd)
    if kind is None:
        raise StepError(f'mount at {item.target}: source "{item.source}" is not a regular '
                        "file or directory")
    return TreeBind(str(tree), item.source, item.target, kind, item.readonly)


#: the writable trees whose changes are kept, with their mounts (``keep_changes``)
Kept = list[tuple[LayerMount, MountedStep]]


def mount_trees(spec: StepSpec, stack: contextlib.ExitStack, kept: Kept | None = None,
                budget: DiskBudget | None = None) -> list[Prepared]:
    """Mount the tree of every ``LayerMount`` of ``spec`` in its scratch (unmounted, and
    its server gone, when ``stack`` closes) and write every ``SecretMount``'s file on the
    init's tmpfs (``secrets.SecretFiles``: a read-only ``Bind`` of it); returns every mount
    of the step, in order. The mounts that ``keep`` their changes are added to ``kept``.
    ``budget``: the step's disk budget, charged by every writable tree's upper; a tmpfs
    gets at most its bytes and inodes (RAM, not the budget's disk: not charged to it)."""
    out: list[Prepared] = []
    files = SecretFiles(spec.scratch / "secrets")
    for number, item in enumerate(ordered(spec.mounts)):
        if isinstance(item, SecretMount):
            out.append(files.write(item))
            continue
        if isinstance(item, TmpfsMount) and budget is not None:
            out.append(capped_tmpfs(item, budget))
            continue
        if not isinstance(item, LayerMount):
            out.append(item)
            continue
        place = spec.scratch / "mounts" / str(number)
        place.mkdir(mode=0o700, parents=True)
        tree = place / "tree"
        tree.mkdir(mode=0o700)
        snapshotter = snapshotter_named(item.snapshotter)
        if item.readonly:
            stack.enter_context(snapshotter.view(item.lowers, place / "work", tree))
        else:  # writable; leaving the context without finish() keeps none of the writes
            mounted = stack.enter_context(
                snapshotter.mount(item.lowers, place / "work", tree, budget))
            if item.keep is not None and kept is not None:
                kept.append((item, mounted))
        out.append(_resolve(tree, item))
    return out


def capped_tmpfs(item: TmpfsMount, budget: DiskBudget) -> TmpfsMount:
    """A tmpfs under a disk budget: its size at most the budget's bytes (none asked: the
    budget's), its inodes at most the budget's."""
    size = budget.limit_bytes if item.size is None else min(item.size, budget.limit_bytes)
    inodes = None if budget.limit_inodes >= NO_INODE_LIMIT else budget.limit_inodes
    return dataclasses.replace(item, size=size, nr_inodes=inodes)


def target_kind(item: Prepared) -> BindKind:
    """What the target of ``item`` must be: a socket (an ssh agent's) is bound over a
    file, a tmpfs over a directory."""
    if isinstance(item, TmpfsMount):
        return "dir"
    return "file" if item.kind == "socket" else item.kind


def keep_changes(kept: Kept) -> None:
    """Unmount each kept tree and move its changes into its ``keep`` directory (the step's
    processes are gone; the tree's server has flushed everything)."""
    for item, mounted in kept:
        assert item.keep is not None
        changes = mounted.finish()
        try:
            os.rename(changes.tree, item.keep / KEPT_TREE)
        except OSError as exc:
            raise StepError(
                f"keep the changes of the mount at {item.target}: {exc.strerror}"
            ) from exc
        changes.meta.save(item.keep / KEPT_META)
    kept.clear()


def prepare_targets(rootfd: int, items: list[Prepared], created: list[mounts.Created]
                    ) -> None:
    """Check (and create when missing) the target of every mount before the step exists."""
    for item in items:
        kind = target_kind(item)
        try:
            os.close(mounts.ensure_target(rootfd, item.target, kind, created))
        except OSError as exc:
            what = "regular file" if kind == "file" else "directory"
            raise StepError(
                f"mount {item.target} for RUN: in the image it is a symlink, lies under "
                f"one, or is not a {what}; refusing to mount over it ({exc.strerror})"
            ) from exc


def ensure_nested_target(rootfd: int, item: Prepared) -> None:
    """In the step's process, before ``item`` is mounted: a target the init created in the
    root but that an earlier mount now covers (``/src/tmp`` under a mount at ``/src``) is
    created in that mount (a tmpfs, a ``rw`` tree: thrown away with it); under a
    read-only mount it cannot be, and the step fails saying so."""
    kind = target_kind(item)
    try:
        os.close(mounts.ensure_target(rootfd, item.target, kind, []))
    except OSError as exc:
        raise RuntimeError(
            f"mount at {item.target} for RUN: it lies in an earlier mount where it cannot be "
            f"made ({exc.strerror})"
        ) from exc


def mount_one(rootfd: int, item: TreeBind | TmpfsMount) -> None:
    """Mount ``item`` at its target under the root (an O_PATH fd of the root mount, in the
    step's own mount namespace). Failures are ``RuntimeError`` naming the mount."""
    try:
        if isinstance(item, TmpfsMount):
            _tmpfs(rootfd, item)
        else:
            _tree_bind(rootfd, item)
    except OSError as exc:
        raise RuntimeError(f"mount at {item.target} for RUN: {exc.strerror}") from exc


def _tmpfs(rootfd: int, item: TmpfsMount) -> None:
    target = mounts.open_in_root(rootfd, item.target)
    try:
        options = [f"size={item.size}"] if item.size else []
        options += [f"nr_inodes={item.nr_inodes}"] if item.nr_inodes else []
        data = ",".join(options) or None
        mounts.mount("tmpfs", mounts.fd_path(target), "tmpfs",
                     mounts.MS_NOSUID | mounts.MS_NODEV, data)
    finally:
        os.close(target)


def _tree_bind(rootfd: int, item: TreeBind) -> None:
    source = _open_source(item.tree, item.source)
    try:
        if _kind_of(source) != item.kind:
            raise OSError(errno.ESTALE, f"source {item.source} changed kind")
        mounts.bind_at(rootfd, source, item.target, item.kind == "dir", item.readonly)
    finally:
        os.close(source)
