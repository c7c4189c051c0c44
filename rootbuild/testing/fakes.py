"""Fakes of the engine's seams (``rootbuild.engine.seams``) and of progress.

Rules:
- Each fake does what the real seam promises, in memory or in the test's temp dir:
  ``FakeBaseImages`` puts real OCI images (layers made in memory, as go-containerregistry's
  ``mkLayer``) into the real store; ``FakeExecutor`` answers a RUN step with a real layer
  tree and ``LayerMeta``, as the sandbox does; ``FakeExporter`` records what it was asked.
- Every call is recorded, so tests assert on what the engine asked, not on timing.
- No kernel features, no FUSE, no network: these run anywhere pytest runs.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import tarfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import trio

from rootbuild.errors import ImageError, RootbuildError
from rootbuild.image.layermeta import EntryMeta, LayerMeta
from rootbuild.image.oci import OCI_CONFIG, OCI_MANIFEST, StoredImage, canonical_json
from rootbuild.image.refs import OutputRef
from rootbuild.image.rootfs import RootfsView
from rootbuild.image.store import Store
from rootbuild.platform import Platform
from rootbuild.sandbox.spec import OverlayRoot, StepResult, StepSpec
from rootbuild.snapshot import StepChanges

OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"


def layer_tar(files: Mapping[str, bytes]) -> bytes:
    """An uncompressed layer tar of regular files (parents implied), sorted by path."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for path, data in sorted(files.items()):
            info = tarfile.TarInfo(path)
            info.size = len(data)
            info.mode = 0o644
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def put_image(
    store: Store, files: Mapping[str, bytes], *, onbuild: tuple[str, ...] = (),
    env: tuple[str, ...] = (), platform: Platform | None = None,
) -> StoredImage:
    """A one-layer image (none when ``files`` is empty) written into ``store``."""
    platform = platform or Platform("linux", "amd64")
    layers, diff_ids = [], []
    if files:
        tar = layer_tar(files)
        blob = gzip.compress(tar, mtime=0)
        layers.append(store.put_bytes(blob, OCI_LAYER_GZIP).to_json())
        diff_ids.append("sha256:" + hashlib.sha256(tar).hexdigest())
    config: dict[str, object] = {
        "architecture": platform.architecture, "os": platform.os,
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
        "config": {"Env": list(env), "OnBuild": list(onbuild)},
    }
    config_desc = store.put_bytes(canonical_json(config), OCI_CONFIG)
    manifest = {"schemaVersion": 2, "mediaType": OCI_MANIFEST,
                "config": config_desc.to_json(), "layers": layers}
    return store.load(store.put_bytes(canonical_json(manifest), OCI_MANIFEST))


class FakeBaseImages:
    """``BaseImages`` over images the test registered with ``add``; any other reference
    fails as an unknown image would."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.images: dict[str, StoredImage] = {}
        self.calls: list[tuple[str, str]] = []

    def add(self, ref: str, files: Mapping[str, bytes], **config: object) -> StoredImage:
        image = put_image(self.store, files, **config)  # type: ignore[arg-type]
        self.images[ref] = image
        return image

    async def get(self, ref: str, platform: Platform) -> StoredImage:
        self.calls.append((ref, str(platform)))
        await trio.lowlevel.checkpoint()
        if ref not in self.images:
            raise ImageError(f"pull {ref}: no such image (fake registry)")
        return self.images[ref]


@dataclass
class FakeRun:
    """What one faked RUN step does: print ``output``, write ``files`` (its layer), exit
    with ``exit_code``; ``block`` waits until cancelled; ``error`` is raised instead.
    ``started`` is set when the step starts; the step waits for ``after`` before it ends
    (to order steps of concurrent stages in a test)."""

    exit_code: int = 0
    output: tuple[str, ...] = ()
    files: Mapping[str, bytes] = field(default_factory=dict)
    block: bool = False
    error: RootbuildError | None = None
    started: trio.Event | None = None
    after: trio.Event | None = None
    limit_exceeded: str = ""  # the step hit this limit (StepResult.limit_exceeded)


class FakeExecutor:
    """``Executor`` whose steps do what ``script(spec)`` says (default: succeed, change
    nothing). Records every spec, and the steps that were cancelled."""

    def __init__(self, script: Callable[[StepSpec], FakeRun] | None = None) -> None:
        self.script = script or (lambda spec: FakeRun())
        self.specs: list[StepSpec] = []
        self.cancelled: list[StepSpec] = []
        self.closed = False
        self.prestarts = 0  # how often the engine said RUN steps will run

    async def run(self, spec: StepSpec, on_output: Callable[[str], None]) -> StepResult:
        self.specs.append(spec)
        plan = self.script(spec)
        if plan.started is not None:
            plan.started.set()
        if plan.after is not None:
            await plan.after.wait()
        await trio.lowlevel.checkpoint()
        if plan.error is not None:
            raise plan.error
        for line in plan.output:
            on_output(line)
        if plan.block:
            try:
                await trio.sleep_forever()
            except trio.Cancelled:
                self.cancelled.append(spec)
                raise
        if plan.exit_code != 0 or plan.limit_exceeded:
            return StepResult(plan.exit_code, limit_exceeded=plan.limit_exceeded)
        return StepResult(0, _changes(spec, plan.files))

    async def prestart(self) -> None:
        self.prestarts += 1

    async def aclose(self) -> None:
        self.closed = True


def _changes(spec: StepSpec, files: Mapping[str, bytes]) -> StepChanges:
    """The step's layer as the sandbox returns it: a tree and its metadata."""
    assert isinstance(spec.rootfs, OverlayRoot)
    tree = spec.rootfs.work / "tree"
    tree.mkdir(parents=True)
    entries: dict[str, EntryMeta] = {}
    for path, data in sorted(files.items()):
        parts = path.strip("/").split("/")
        for depth in range(1, len(parts)):
            parent = "/".join(parts[:depth])
            (tree / parent).mkdir(exist_ok=True)
            entries.setdefault(parent, EntryMeta(parent, "dir", mode=0o755))
        rel = "/".join(parts)
        (tree / rel).write_bytes(data)
        entries[rel] = EntryMeta(rel, "file", mode=0o644, size=len(data))
    return StepChanges(tree, LayerMeta.build(entries.values()))


@dataclass(frozen=True)
class Exported:
    image: StoredImage
    output: OutputRef
    paths: tuple[str, ...]  # what the merged root filesystem held, for ``dir:`` outputs


class FakeExporter:
    """``Exporter`` that records each export; ``docker`` outputs answer a fake digest."""

    def __init__(self) -> None:
        self.exports: list[Exported] = []

    async def export(
        self, image: StoredImage, output: OutputRef, rootfs: Callable[[], RootfsView],
        say: Callable[[str], None],
    ) -> str | None:
        paths: tuple[str, ...] = ()
        if output.transport == "dir":
            paths = tuple(sorted(await trio.to_thread.run_sync(lambda: _paths(rootfs()))))
        self.exports.append(Exported(image, output, paths))
        say(f"exported {output.text}")
        return image.manifest.digest if output.transport == "docker" else None


def _paths(view: RootfsView) -> list[str]:
    return [entry.path for entry in view.walk() if entry.path]


@dataclass
class RecordingProgress:
    """``Progress`` that keeps every event as a tuple, for assertions."""

    events: list[tuple[str, ...]] = field(default_factory=list)
    labels: dict[int, str] = field(default_factory=dict)

    def start(self, label: str) -> int:
        number = len(self.labels) + 1
        self.labels[number] = label
        self.events.append(("start", label))
        return number

    def done(self, step: int, *, cached: bool = False) -> None:
        self.events.append(("cached" if cached else "done", self.labels[step]))

    def failed(self, step: int, error: str) -> None:
        self.events.append(("failed", self.labels[step], error))

    def output(self, step: int, line: str) -> None:
        self.events.append(("output", self.labels[step], line))

    def warn(self, message: str) -> None:
        self.events.append(("warn", message))

    def note(self, message: str) -> None:
        self.events.append(("note", message))

    def close(self) -> None:
        self.events.append(("close",))

    def of(self, kind: str) -> list[tuple[str, ...]]:
        return [e for e in self.events if e[0] == kind]


__all__ = [
    "Exported", "FakeBaseImages", "FakeExecutor", "FakeExporter", "FakeRun",
    "RecordingProgress", "layer_tar", "put_image",
]
