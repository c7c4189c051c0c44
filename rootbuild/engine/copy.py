"""COPY and ADD: the entries of the one layer a ``CopyStep`` produces.

Rules (Docker's Dockerfile reference for COPY/ADD; BuildKit's file-op copy):
- A source directory copies its *contents*; a source file lands at ``dest`` itself, or at
  ``dest/<name>`` when ``dest`` ends in ``/`` or already is a directory in the image.
  Several sources (named, or matched by a wildcard) need a directory destination.
- Owners are 0:0 for context sources and kept for ``COPY --from`` sources (BuildKit and
  buildah both keep them; xattrs and device nodes too), unless ``--chown`` (names looked
  up in the image's /etc/passwd and /etc/group, parsed as data with a size cap). Without
  a group, a numeric user takes its uid as gid and a user name takes its primary gid from
  /etc/passwd, as BuildKit's
  ``readUser`` does (solver/llbsolver/file/user_linux.go). ``--chmod`` applies to every
  copied file and directory; otherwise modes and mtimes come from the source.
- Missing parent directories are created (0755, owned like the copied files); existing ones
  are recorded with their image attributes, as an overlay diff shows them.
- The destination is resolved inside the image: in-image symlinks on the way are followed
  with chroot semantics (``RootfsView.realpath``), never against the host.
- A named (or matched) source that is a symlink is followed inside its own root (the
  context's or the ``--from`` image's) and keeps the name it was asked for
  (``COPY --from=busybox /bin/paste /t/`` gives ``/t/paste``, as BuildKit).
- Symlinks inside a copied directory stay symlinks. Context access goes through
  ``BuildContext`` (dir fds, no-follow); nothing here opens a host path by name.
- ``--exclude`` patterns ("the same format as <src>") drop a matched source by its own
  path and an entry below a copied directory by its path relative to it; an excluded
  directory takes everything below it along. ``--chmod`` (``chmod.py``) is applied to
  each entry's own mode. ``--parents`` (``parents.py``) copies the pivot directory with
  only what its pattern selects. ``--link`` resolves the destination in an empty tree.
"""

from __future__ import annotations

import functools
import io
import itertools
import posixpath
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import BinaryIO

from rootbuild.context import BuildContext, ContextEntry
from rootbuild.dockerfile.dockerignore import BadPatternError, glob_match, has_wildcards
from rootbuild.engine.chmod import Chmod
from rootbuild.engine.parents import literal_prefix, outside, selected, split_pivot
from rootbuild.errors import ContextError, DockerfileError, ImageError, Location
from rootbuild.image.layer_write import TarEntry
from rootbuild.image.rootfs import RootfsView, ViewEntry
from rootbuild.sandbox.users import parse_group, parse_passwd

ID_FILE_CAP = 4 << 20  # /etc/passwd and /etc/group are read as data, at most 4 MiB


@dataclass(frozen=True)
class SourceItem:
    """One entry below a source: ``rel`` is "" for the source itself."""

    rel: str
    kind: str  # file, dir, symlink
    mode: int
    mtime: int
    size: int = 0
    linkname: str = ""
    uid: int = 0
    gid: int = 0
    devmajor: int = 0
    devminor: int = 0
    xattrs: tuple[tuple[str, bytes], ...] = ()
    opener: Callable[[], BinaryIO] | None = None
    # context files: (host path, dev, ino, size, mtime_ns), the step cache's file identity
    identity: tuple[str, int, int, int, int] | None = None


@dataclass(frozen=True)
class Source:
    name: str  # the name a file keeps when copied into a directory
    is_dir: bool
    items: Callable[[], Iterator[SourceItem]]


# -- sources ----------------------------------------------------------------------------


def _kind(mode_kind: str) -> str:
    return {"file": "file", "dir": "dir", "symlink": "symlink"}.get(mode_kind, "other")


def context_sources(
    ctx: BuildContext, patterns: Sequence[str], excludes: Sequence[str], where: Location
) -> list[Source]:
    """The context entries named by ``patterns`` (expanded), minus ``--exclude`` globs."""
    sources: list[Source] = []
    for pattern in patterns:
        for entry in ctx.resolve_sources(pattern, location=where):
            if _excluded(entry.relpath, excludes, where):
                continue  # a matched source itself can be excluded ("--exclude=*.txt hom*")
            sources.append(_context_source(ctx, entry, excludes, where))
    return sources


def _context_source(
    ctx: BuildContext, top: ContextEntry, excludes: Sequence[str], where: Location
) -> Source:
    prefix = top.real if top.kind == "dir" else ""

    def items() -> Iterator[SourceItem]:
        for entry in ctx.walk(top):
            rel = _below(prefix, entry.real)
            if rel and _excluded(rel, excludes, where):
                continue
            yield _context_item(ctx, entry, rel, where)

    name = posixpath.basename(top.relpath.rstrip("/")) or "."
    return Source(name=name, is_dir=top.kind == "dir", items=items)


def _context_item(
    ctx: BuildContext, entry: ContextEntry, rel: str, where: Location
) -> SourceItem:
    kind = _kind(entry.kind)
    if kind == "other":
        raise ContextError(
            f'COPY: source "{entry.relpath}" is not a file, directory or symlink', where,
        )
    return SourceItem(
        rel=rel,
        kind=kind,
        mode=entry.mode & 0o7777,
        mtime=entry.mtime_ns // 1_000_000_000,
        size=entry.size if kind == "file" else 0,
        linkname=entry.linkname,
        opener=functools.partial(ctx.open_file, entry) if kind == "file" else None,
        identity=(
            f"{ctx.host_root}/{entry.real}", entry.dev, entry.ino, entry.size,
            entry.mtime_ns,
        ) if kind == "file" else None,
    )


# -- COPY --parents ---------------------------------------------------------------------


def _parents_items(
    walk: Iterator[tuple[str, bool, Callable[[], SourceItem | None]]], pattern: str,
    excludes: Sequence[str], where: Location,
) -> list[SourceItem]:
    """The items a ``--parents`` pattern selects below its pivot, pre-order, each one
    preceded by the directories on its way (``parents`` module rules); ``walk`` yields
    (path relative to the pivot, is a directory, its item) for the pivot ("") and
    everything below it. Only selected entries and their directories are looked at."""
    out: list[SourceItem] = []
    dirs: dict[str, SourceItem] = {}
    emitted: set[str] = set()
    try:
        for rel, is_dir, make in walk:
            if rel and _excluded(rel, excludes, where):
                continue
            if not rel or not selected(pattern, rel):
                if is_dir and (found := make()) is not None:
                    dirs[rel] = found
                continue
            item = make()
            if item is None:
                continue
            parts = rel.split("/")
            for i in range(len(parts)):
                parent = "/".join(parts[:i])
                if parent not in emitted and parent in dirs:
                    emitted.add(parent)
                    out.append(dirs[parent])
            emitted.add(rel)
            out.append(item)
    except BadPatternError as exc:
        raise DockerfileError(f"COPY --parents: {exc}", where) from exc
    return out


def _parents_source(items: list[SourceItem]) -> Source:
    return Source(name=".", is_dir=True, items=lambda: iter(items))


def context_parents_sources(
    ctx: BuildContext, patterns: Sequence[str], excludes: Sequence[str], where: Location
) -> list[Source]:
    """``COPY --parents`` from the context: each source's matches below its pivot."""
    sources: list[Source] = []
    for src in patterns:
        pivot, pattern = split_pivot(src)
        if outside(pivot) or outside(pattern):
            raise ContextError(f'source "{src}" is outside the build context', where)
        found = False
        for top in ctx.resolve_sources(pivot, location=where):
            if top.kind != "dir":
                raise ContextError(f'source "{src}": "{pivot}" is not a directory', where)
            prefix = top.real
            chain = _literal_chain(ctx, top, pattern)

            def walk(top: ContextEntry = top, prefix: str = prefix,
                     chain: list[ContextEntry] | None = chain,
                     ) -> Iterator[tuple[str, bool, Callable[[], SourceItem | None]]]:
                if chain is None:  # walk the whole pivot
                    entries: Iterator[ContextEntry] = ctx.walk(top)
                elif not chain:  # the pattern's fixed part is not there: no match
                    entries = iter([top])
                else:  # only below the fixed part, its directories first
                    entries = itertools.chain([top], chain[:-1], ctx.walk(chain[-1]))
                for entry in entries:
                    rel = _below(prefix, entry.real)
                    yield rel, entry.kind == "dir", functools.partial(
                        _context_item, ctx, entry, rel, where)

            items = _parents_items(walk(), pattern, excludes, where)
            found = found or len(items) > 1
            sources.append(_parents_source(items))
        if not found:
            raise ContextError(f'source "{src}" not found in build context', where)
    return sources


def _literal_chain(
    ctx: BuildContext, top: ContextEntry, pattern: str
) -> list[ContextEntry] | None:
    """The context entries of the pattern's leading components without wildcards
    (``packages/app`` of ``packages/app/*/package.json``), so a walk can start there
    instead of at the pivot; [] when they do not exist, None when there are none or a
    symlink lies on the way (the whole walk then decides, never following it)."""
    fixed = literal_prefix(pattern)
    if not fixed or top.realpath:
        return None
    chain: list[ContextEntry] = []
    parts = fixed.split("/")
    for i in range(1, len(parts) + 1):
        try:
            found = ctx.resolve_sources(posixpath.join(top.relpath, *parts[:i]))
        except ContextError:
            return []
        if len(found) != 1 or found[0].realpath:
            return None
        chain.append(found[0])
    return chain


def image_parents_sources(
    view: RootfsView, patterns: Sequence[str], excludes: Sequence[str], where: Location,
    what: str,
) -> list[Source]:
    """``COPY --from=... --parents``: the same, inside the image's own root."""
    sources: list[Source] = []
    for src in patterns:
        pivot, pattern = split_pivot(src)
        pivot = posixpath.normpath("/" + pivot).lstrip("/")  # ".." stops at the root
        top = view.lookup(pivot, follow=True)
        if outside(pattern) or top is None or not top.is_dir:
            raise ContextError(f'COPY --from={what}: source "{src}" not found', where)

        def walk(top: ViewEntry = top
                 ) -> Iterator[tuple[str, bool, Callable[[], SourceItem | None]]]:
            for entry in view.walk(top.path):
                rel = entry.path[len(top.path):].lstrip("/")
                yield rel, entry.is_dir, functools.partial(_image_item, view, entry, rel)

        items = _parents_items(walk(), pattern, excludes, where)
        if len(items) <= 1:
            raise ContextError(f'COPY --from={what}: source "{src}" not found', where)
        sources.append(_parents_source(items))
    return sources


def _below(prefix: str, real: str) -> str:
    """``real`` relative to the copied directory ``prefix`` ("." is the context root,
    whose descendants' real paths carry no "./"); "" for the source itself."""
    if not prefix or real == prefix:
        return ""
    if prefix == ".":
        return real
    return real.removeprefix(prefix + "/")


def _excluded(rel: str, excludes: Sequence[str], where: Location) -> bool:
    """Whether ``--exclude`` patterns leave ``rel`` out: it, or a directory above it,
    matches one (``filepath.Match`` per component, ``**`` any number of them)."""
    rel = posixpath.normpath(rel).lstrip("/")
    if rel in ("", "."):
        return False
    try:
        return any(selected(posixpath.normpath(p.strip("/")), rel) for p in excludes)
    except BadPatternError as exc:
        raise DockerfileError(f"--exclude: {exc}", where) from exc


def image_sources(
    view: RootfsView, patterns: Sequence[str], excludes: Sequence[str], where: Location,
    what: str,
) -> list[Source]:
    """Sources from another stage or image (``COPY --from``): paths inside its root."""
    sources: list[Source] = []
    for pattern in patterns:
        matches = _image_glob(view, pattern)
        if not matches:
            raise ContextError(f'COPY --from={what}: source "{pattern}" not found', where)
        for shown, entry in matches:
            if _excluded(shown, excludes, where):
                continue
            sources.append(_image_source(view, entry, excludes, where, shown))
    return sources


def _image_glob(view: RootfsView, pattern: str) -> list[tuple[str, ViewEntry]]:
    """(path as named, entry with a final symlink followed) of each match: a named link
    is followed inside the image's own root, and the copy keeps the name it was asked
    for (``COPY --from=busybox /bin/paste /t/`` gives ``/t/paste``, as BuildKit)."""
    clean = posixpath.normpath("/" + pattern).lstrip("/")
    if not has_wildcards(clean):
        entry = view.lookup(clean, follow=True)
        return [(clean, entry)] if entry is not None else []
    parent, _, leaf = clean.rpartition("/")
    candidates = _image_glob(view, parent) if has_wildcards(parent) else (
        [(parent, e)] if (e := view.lookup(parent, follow=True)) is not None else []
    )
    out: list[tuple[str, ViewEntry]] = []
    for shown, dir_entry in candidates:
        if not dir_entry.is_dir:
            continue
        for name in view.listdir(dir_entry.path):
            if glob_match(leaf, name):
                child = view.lookup(posixpath.join(dir_entry.path, name), follow=True)
                if child is not None:
                    out.append((posixpath.join(shown, name), child))
    return out


def _image_source(
    view: RootfsView, top: ViewEntry, excludes: Sequence[str], where: Location,
    shown: str = "",
) -> Source:
    def items() -> Iterator[SourceItem]:
        for entry in view.walk(top.path) if top.is_dir else iter([top]):
            rel = entry.path[len(top.path):].lstrip("/") if top.is_dir else ""
            if rel and _excluded(rel, excludes, where):
                continue
            item = _image_item(view, entry, rel)
            if item is not None:
                yield item

    name = posixpath.basename(shown or top.path) or "."
    return Source(name=name, is_dir=top.is_dir, items=items)


def _image_item(view: RootfsView, entry: ViewEntry, rel: str) -> SourceItem | None:
    kind = "file" if entry.kind == "hardlink" else entry.kind
    if kind not in ("file", "dir", "symlink", "char", "block"):
        return None  # FIFOs are refused by BuildKit's copy ("unsupported mode")
    return SourceItem(
        rel=rel, kind=kind, mode=entry.mode & 0o7777, mtime=entry.mtime,
        size=entry.size if kind == "file" else 0, linkname=entry.linkname,
        uid=entry.uid, gid=entry.gid, devmajor=entry.devmajor,
        devminor=entry.devminor, xattrs=entry.xattrs,
        opener=functools.partial(_open_view, view, entry) if kind == "file" else None,
    )


def _open_view(view: RootfsView, entry: ViewEntry) -> BinaryIO:
    if entry.hardlink_to:
        return view.open(entry.hardlink_to)
    return view.open_entry(entry)


def heredoc_source(name: str, content: str, mtime: int) -> Source:
    data = content.encode()

    def items() -> Iterator[SourceItem]:
        yield SourceItem(
            rel="", kind="file", mode=0o644, mtime=mtime, size=len(data),
            opener=lambda: io.BytesIO(data),
        )

    return Source(name=name, is_dir=False, items=items)


# -- owners -----------------------------------------------------------------------------


def _id_table(view: RootfsView, path: str) -> dict[str, tuple[int, int | None]]:
    """name -> (id, primary gid) from the image's passwd or group file (gid None for
    groups), parsed as data by the same code that resolves RUN's USER."""
    entry = view.lookup(path, follow=True)
    if entry is None or entry.kind not in ("file", "hardlink"):
        return {}
    try:
        data = view.read_small_file(path, ID_FILE_CAP)
    except ImageError:
        return {}
    table: dict[str, tuple[int, int | None]] = {}
    if path.endswith("passwd"):
        for user in parse_passwd(data):
            table.setdefault(user.name, (user.uid, user.gid))
    else:
        for group in parse_group(data):
            table.setdefault(group.name, (group.gid, None))
    return table


def resolve_chown(spec: str, view: RootfsView, where: Location) -> tuple[int, int]:
    """``user[:group]``, numeric or by name in the image's own passwd/group files."""
    user, _, group = spec.partition(":")

    def lookup(name: str, path: str, what: str) -> tuple[int, int | None]:
        if name.isdigit():
            return int(name), None
        ids = _id_table(view, path)
        if name not in ids:
            raise DockerfileError(
                f"--chown={spec}: unable to find {what} {name!r} in the image's {path}", where
            )
        return ids[name]

    if not user:
        raise DockerfileError(f"--chown={spec}: no user given", where)
    uid, primary_gid = lookup(user, "etc/passwd", "user")
    if group:
        return uid, lookup(group, "etc/group", "group")[0]
    return uid, uid if primary_gid is None else primary_gid


# -- layer entries ----------------------------------------------------------------------


@dataclass(frozen=True)
class CopyPlan:
    sources: Sequence[Source]
    dest: str  # absolute, trailing "/" when written so
    owner: tuple[int, int] | None
    chmod: Chmod | None
    now: int  # mtime for directories this copy creates
    keep_owner: bool = False  # ADD of an archive keeps the archive's owners
    link: bool = False  # --link: computed on an empty tree, not the image below


def _entry_from_view(entry: ViewEntry) -> TarEntry:
    return TarEntry(
        path=entry.path, kind="dir", mode=entry.mode & 0o7777, uid=entry.uid, gid=entry.gid,
        mtime=entry.mtime, xattrs=entry.xattrs,
    )


def copy_entries(plan: CopyPlan, view: RootfsView, where: Location) -> list[TarEntry]:
    """The layer entries for one COPY/ADD: copied items, created and existing parents.

    With ``--link`` the destination is resolved in an empty tree (BuildKit copies onto
    ``scratch`` and links the result on top): nothing of ``view`` is read, so a symlink
    in the image is not followed and every directory on the way is created afresh."""
    if plan.link:
        view = RootfsView([])
    owner = plan.owner or (0, 0)
    dir_syntax = plan.dest.endswith("/")
    dest = view.realpath(plan.dest.rstrip("/") or "/").strip("/")
    existing = view.lookup(dest, follow=True) if dest else view.lookup("", follow=True)
    dest_is_dir = existing is not None and existing.is_dir
    if dest_is_dir and existing is not None:
        dest = existing.path
    if len(plan.sources) > 1 and not (dir_syntax or dest_is_dir):
        raise DockerfileError(
            "when using COPY with more than one source file, "
            "the destination must be a directory and end with a /", where,
        )
    out: dict[str, TarEntry] = {}

    def add_parents(path: str) -> None:
        parent = posixpath.dirname(path)
        chain: list[str] = []
        while parent:
            chain.append(parent)
            parent = posixpath.dirname(parent)
        for p in reversed(chain):
            if p in out:
                continue
            found = view.lookup(p, follow=False)
            if found is not None and found.is_dir:
                out[p] = _entry_from_view(found)
            elif found is None:
                out[p] = TarEntry(p, "dir", 0o755, owner[0], owner[1], plan.now)
            else:
                raise DockerfileError(
                    f"copy to /{path}: /{p} exists in the image and is not a directory", where
                )

    into_dir = dir_syntax or dest_is_dir or any(s.is_dir for s in plan.sources)
    for source in plan.sources:
        base = dest if (source.is_dir or not into_dir) else posixpath.join(dest, source.name)
        base = base.strip("/")
        for item in source.items():
            path = posixpath.join(base, item.rel) if item.rel else base
            if not path:
                continue  # the image root itself keeps its attributes
            if item.rel == "" and item.kind == "dir":
                if path not in out:
                    found = view.lookup(path, follow=True)
                    if found is not None and found.is_dir:
                        out[path] = _entry_from_view(found)
                    elif plan.link:  # "the existing mode is overridden with the new mode"
                        mode = item.mode if plan.chmod is None else plan.chmod.apply(
                            item.mode, True)
                        out[path] = TarEntry(path, "dir", mode, *owner, item.mtime)
                    else:
                        mode = 0o755 if plan.chmod is None else plan.chmod.apply(0o755, True)
                        out[path] = TarEntry(path, "dir", mode, *owner, plan.now)
                add_parents(path)
                continue
            uid, gid = (item.uid, item.gid) if plan.keep_owner and plan.owner is None else owner
            mode = item.mode if plan.chmod is None or item.kind == "symlink" else \
                plan.chmod.apply(item.mode, item.kind == "dir")
            out[path] = TarEntry(
                path=path, kind=item.kind, mode=mode, uid=uid, gid=gid, mtime=item.mtime,
                size=item.size, linkname=item.linkname, devmajor=item.devmajor,
                devminor=item.devminor, xattrs=item.xattrs, source=item.opener,
            )
            add_parents(path)
    return list(out.values())

