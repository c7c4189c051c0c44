"""Replaying an unchanged build: the image of a build whose every input is as it was when
the same invocation last built it entirely from the step cache, answered without planning,
trio, the registry client or the sandbox (issue 14, item 4: an unchanged rebuild).

Job: ``Invocation.of`` (what a ``build`` command line asks, the Dockerfile and ignore file
it names, and whether its answer may ever be replayed), ``context_fingerprint`` (the
build context as the step cache sees it), ``save`` (after a build that took every step
from the step cache) and ``load_valid`` (the stored image, only when everything the record
depends on still holds).

Rules:
- A record answers exactly one invocation: its file name is a digest of every ``build``
  flag except those that only say where the result goes (``-o``, ``-t``, ``--iidfile``,
  ``--progress``, ``-q``, ``--root``), the absolute context and Dockerfile paths, the
  Dockerfile's and ignore file's bytes, the build args with values taken from the
  environment, ``SOURCE_DATE_EPOCH``, the machine and rootbuild's version.
- It holds what the build's answer depended on beyond that: the context's fingerprint
  (every entry the ignore file keeps, by path, mode, size, mtime_ns, ctime_ns, inode,
  device and link target: the step cache's own identity of a context file, and ctime),
  the manifest
  every base name resolved to in the store, every step cache entry the build used (key
  and layer), the image, and the lines the build showed (warnings, notes, its steps).
- It is written after a build whose every step is now in the local step cache, taken
  from it or run and added: a rebuild of the same inputs takes every step from there and
  gives the same image (the cache keeps each step's time; test_build_cache's "unchanged
  rebuild ... gives the same layers"), and shows the steps that ran as CACHED. The
  context is fingerprinted before the build and again after it; a Dockerfile, ignore file
  or context that changed meanwhile leaves no record.
- It is used only when all of it still holds: the same fingerprint, every base name still
  naming the same manifest, every cache entry still in ``cache.db`` with its layer blob in
  the store (their ``last_used`` is then updated, as the build would), the image's blobs
  present. Anything else, and any error reading the record, means the full build, which
  may write a new record. A replay holds the store's shared lock, as a build does.
- Never recorded (the record could not check what they consult): ``--pull``,
  ``--no-cache``, ``--no-cache-filter``, ``--cache-from``, ``--cache-to``, ``--push``,
  ``--build-context``, ``--secret``, ``--ssh``, ``--check``/``--call``, ``--metadata-file``,
  ``--digestfile``, a Dockerfile or context on stdin, outputs other than ``oci:``,
  ``oci-archive:`` and ``docker-archive:``; builds that fetched an ``ADD`` URL or git
  repository, imported a base from an archive or layout, or ran a step the step cache does
  not keep (the engine says so: ``BuildResult.replay`` is None).
- ``prune`` removes every record (``Store.prune``), so a pruned store builds in full.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import platform
import stat
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from rootbuild.context import find_dockerfile, ignore_file_for
from rootbuild.dockerfile.dockerignore import IgnoreMatcher
from rootbuild.errors import RootbuildError
from rootbuild.image.oci import Descriptor, StoredImage
from rootbuild.image.store import Store
from rootbuild.progress import Progress

RECORD_VERSION = 1
# flags that say where the result goes, not what is built
OUTPUT_FLAGS = frozenset({"command", "outputs", "tags", "iidfile", "quiet", "progress", "root"})
# flags whose answer depends on something a record cannot check
VOLATILE_FLAGS = ("pull", "no_cache", "no_cache_filter", "cache_from", "cache_to", "push",
                  "build_contexts", "secrets", "ssh", "check", "metadata_file", "digestfile")
OUTPUT_TRANSPORTS = frozenset({"oci", "oci-archive", "docker-archive"})

Event = tuple[str, str, bool]  # ("warn" | "note" | "step", text, cached)


@dataclass(frozen=True)
class ReplayFacts:
    """What the engine reports of a build that may be replayed: the store manifest each
    base name resolved to, every step cache entry it used or added (key, layer digest),
    the progress handles of the steps it ran and added (a rebuild shows them CACHED) and
    the warnings its steps gave while they ran (a rebuild runs none: it gives none)."""

    bases: tuple[tuple[str, str], ...]
    cache: tuple[tuple[str, str | None], ...]
    recorded: frozenset[int] = frozenset()
    step_warnings: frozenset[str] = frozenset()


@dataclass(frozen=True)
class Invocation:
    """A ``build`` command line as a record sees it."""

    key: str
    context_dir: Path
    dockerfile_path: Path
    dockerfile: bytes
    ignore_path: Path | None
    ignore: bytes | None

    @classmethod
    def of(cls, flags: Mapping[str, object], build_args: Mapping[str, str],
           outputs: Sequence[str], version: str) -> Invocation | None:
        """The invocation, or None when its answer is never replayed (a volatile flag, stdin,
        an output written from anything but the store's blobs, an unreadable file)."""
        if any(flags.get(name) for name in VOLATILE_FLAGS) or flags.get("call") != "build":
            return None
        if flags.get("dockerfile") == "-" or any(
            o.strip().split(":", 1)[0] not in OUTPUT_TRANSPORTS for o in outputs
        ):
            return None
        context_dir = Path(str(flags["context"])).absolute()
        dockerfile = flags.get("dockerfile")
        try:
            path = find_dockerfile(context_dir, dockerfile if isinstance(dockerfile, str)
                                   else None)
            text = path.read_bytes()
            ignore_path = ignore_file_for(context_dir, path)
            if ignore_path is not None and ignore_path.is_symlink():
                return None  # the build resolves it inside the context: not worth repeating
            ignore = ignore_path.read_bytes() if ignore_path is not None else None
        except (OSError, RootbuildError):
            return None  # the build itself says what is wrong
        doc = {
            "v": RECORD_VERSION,
            "rootbuild": version,
            "machine": platform.machine(),
            "flags": {k: flags[k] for k in sorted(flags) if k not in OUTPUT_FLAGS},
            "context": str(context_dir),
            "dockerfile_path": str(path),
            "dockerfile": hashlib.sha256(text).hexdigest(),
            "ignore_path": str(ignore_path),
            "ignore": None if ignore is None else hashlib.sha256(ignore).hexdigest(),
            "build_args": sorted(build_args.items()),
            "epoch": os.environ.get("SOURCE_DATE_EPOCH"),
        }
        key = hashlib.sha256(json.dumps(doc, sort_keys=True, default=str).encode()).hexdigest()
        return cls(key, context_dir, path, text, ignore_path, ignore)

    def files_unchanged(self) -> bool:
        """The Dockerfile and ignore file still hold the bytes the key was made of."""
        try:
            return self.dockerfile_path.read_bytes() == self.dockerfile and (
                self.ignore_path.read_bytes() if self.ignore_path is not None else None
            ) == self.ignore
        except OSError:
            return False

    @functools.cached_property
    def ignore_matcher(self) -> IgnoreMatcher | None:
        """The ignore rules (None if the file does not parse: the build will say why)."""
        if self.ignore is None:
            return IgnoreMatcher()
        try:
            return IgnoreMatcher.parse(self.ignore.decode("utf-8", "surrogateescape"))
        except (ValueError, RootbuildError):
            return None


def context_fingerprint(root: Path, ignore: IgnoreMatcher) -> str | None:
    """A digest of every context entry ``ignore`` keeps (path, mode, size, mtime_ns,
    ctime_ns, inode, device, link target), walked without following symlinks; None when
    part of the context cannot be read (the build will say why). ctime, which no tool can
    set back, makes it stricter than the step cache's own file identity: a rewrite that
    restores size and mtime still means the full build."""
    digest = hashlib.sha256()

    def add(rel: str, st: os.stat_result, link: bytes) -> None:
        name = os.fsencode(rel)
        digest.update(len(name).to_bytes(4, "big") + name)
        digest.update(f"{st.st_mode} {st.st_size} {st.st_mtime_ns} {st.st_ctime_ns} "
                      f"{st.st_ino} {st.st_dev} {len(link)}:".encode() + link)

    def listing(path: str) -> Iterator[os.DirEntry[str]]:
        with os.scandir(path) as it:
            return iter(sorted(it, key=lambda e: os.fsencode(e.name)))

    try:
        add(".", os.stat(root), b"")
        # depth first, entries in bytewise order; a stack, not recursion: any depth
        stack: list[tuple[str, Iterator[os.DirEntry[str]]]] = [(".", listing(str(root)))]
        while stack:
            rel, entries = stack[-1]
            entry = next(entries, None)
            if entry is None:
                stack.pop()
                continue
            child = entry.name if rel == "." else f"{rel}/{entry.name}"
            st = entry.stat(follow_symlinks=False)
            is_dir = stat.S_ISDIR(st.st_mode)
            if ignore.ignored(child) and not (is_dir and ignore.may_include_below(child)):
                continue
            link = os.readlink(os.fsencode(entry.path)) if stat.S_ISLNK(st.st_mode) else b""
            add(child, st, link)
            if is_dir:
                stack.append((child, listing(entry.path)))
    except (OSError, ValueError):
        return None
    return digest.hexdigest()


class Recorder:
    """The build's ``Progress``, passed through, keeping the lines a replay shows again:
    warnings, notes and steps (labels ``[...]``) with whether they were cached. Pulls and
    exports are not kept: a replay pulls nothing and exports anew."""

    def __init__(self, inner: Progress) -> None:
        self.inner = inner
        self.events: list[Event] = []
        self._handles: list[int | None] = []  # the progress handle of each event's step
        self._labels: dict[int, str] = {}

    def start(self, label: str) -> int:
        step = self.inner.start(label)
        self._labels[step] = label
        return step

    def done(self, step: int, *, cached: bool = False) -> None:
        self.inner.done(step, cached=cached)
        label = self._labels.pop(step, "")
        if label.startswith("["):
            self.events.append(("step", label, cached))
            self._handles.append(step)

    def failed(self, step: int, error: str) -> None:
        self.inner.failed(step, error)

    def output(self, step: int, line: str) -> None:
        self.inner.output(step, line)

    def warn(self, message: str) -> None:
        self.inner.warn(message)
        self.events.append(("warn", message, False))
        self._handles.append(None)

    def note(self, message: str) -> None:
        self.inner.note(message)
        self.events.append(("note", message, False))
        self._handles.append(None)

    def close(self) -> None:
        self.inner.close()

    def rebuild_events(self, facts: ReplayFacts) -> list[Event]:
        """The lines a rebuild shows: the steps this build ran and added to the step cache
        CACHED, without the warnings those steps gave while running, the rest as it was."""
        return [(kind, text, cached or handle in facts.recorded)
                for (kind, text, cached), handle in zip(self.events, self._handles,
                                                         strict=True)
                if not (kind == "warn" and text in facts.step_warnings)]


def show(events: Iterable[Event], progress: Progress) -> None:
    """Show a record's lines again, in their order."""
    for kind, text, cached in events:
        if kind == "warn":
            progress.warn(text)
        elif kind == "note":
            progress.note(text)
        else:
            progress.done(progress.start(text), cached=cached)


def save_if_unchanged(store: Store, invocation: Invocation, ignore: IgnoreMatcher,
                      before: str, facts: ReplayFacts, image: StoredImage,
                      events: Iterable[Event], summary: str) -> None:
    """``save``, when the Dockerfile, ignore file and context are as they were before the
    build (``before`` is the fingerprint taken then): one that changed during the build
    may have been read either way."""
    if not invocation.files_unchanged() \
            or context_fingerprint(invocation.context_dir, ignore) != before:
        return
    save(store, invocation, before, facts, image, events, summary)


def has_record(store_root: Path, invocation: Invocation) -> bool:
    """A record for ``invocation`` exists in the store at ``store_root`` (not opened)."""
    return (Store(store_root.absolute()).replay_dir / invocation.key).is_file()


def _records_dir(store: Store) -> Path:
    return store.replay_dir


def save(store: Store, invocation: Invocation, fingerprint: str, facts: ReplayFacts,
         image: StoredImage, events: Iterable[Event], summary: str) -> None:
    """Write the record (atomically; a record that cannot be written is only a slower next
    build, never an error)."""
    manifest = image.manifest
    doc = {
        "v": RECORD_VERSION,
        "context": fingerprint,
        "bases": [list(b) for b in facts.bases],
        "cache": [list(c) for c in facts.cache],
        "manifest": {"digest": manifest.digest, "size": manifest.size,
                     "mediaType": manifest.media_type},
        "events": [list(e) for e in events],
        "summary": summary,
    }
    folder = _records_dir(store)
    tmp = folder / f".{invocation.key}.{os.getpid()}.tmp"
    try:
        folder.mkdir(mode=0o700, exist_ok=True)
        tmp.write_text(json.dumps(doc))
        os.replace(tmp, folder / invocation.key)
    except OSError:
        tmp.unlink(missing_ok=True)


@dataclass(frozen=True)
class Replay:
    image: StoredImage
    events: tuple[Event, ...]
    summary: str


def load_valid(store: Store, invocation: Invocation,
               fingerprint: Callable[[], str | None]) -> Replay | None:
    """The recorded answer if everything it depends on still holds, else None. Call with
    the store's shared lock held."""
    try:
        doc = json.loads((_records_dir(store) / invocation.key).read_bytes())
    except (OSError, ValueError):
        return None
    try:
        if doc["v"] != RECORD_VERSION or doc["context"] != fingerprint():
            return None
        for name, digest in doc["bases"]:
            base = store.resolve(name)
            if base is None or base.manifest.digest != digest:
                return None
        m = doc["manifest"]
        image = store.load(Descriptor(media_type=m["mediaType"], digest=m["digest"],
                                      size=m["size"]))
        if not all(store.has_blob(layer.digest) for layer in image.layers):
            return None
        if not _cache_holds(store, [(str(k), v) for k, v in doc["cache"]]):
            return None
        events = tuple((str(kind), str(text), bool(cached))
                       for kind, text, cached in doc["events"])
        return Replay(image, events, str(doc["summary"]))
    except (KeyError, TypeError, ValueError, RootbuildError):
        return None


def _cache_holds(store: Store, entries: Sequence[tuple[str, str | None]]) -> bool:
    """Every entry still in the step cache with its layer blob (a hit, as the build's
    lookup would find it); their ``last_used`` updated as the build would."""
    from rootbuild.cache.index import CacheIndex

    index = CacheIndex(store.root)
    try:
        for key, layer in entries:
            entry = index.lookup(key)
            found = entry.layer.digest if entry is not None and entry.layer else None
            if entry is None or found != layer or (layer and not store.has_blob(layer)):
                return False
        index.record((), [key for key, _ in entries], time.time(), ())
    finally:
        index.close()
    return True
