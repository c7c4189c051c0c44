"""The engine's side-effect seams: where a build meets the kernel, the network and the disk.

Rules (STYLE.md: a small Protocol at each side-effect seam, the implementation chosen once):
- ``Executor`` runs a RUN step (``rootbuild.sandbox``'s ``SandboxExecutor`` in a real
  build); ``BaseImages`` turns a ``FROM``/``--from`` reference into an image in the store
  (registry pull, archive or layout import); ``Exporter`` writes a finished image to one
  output (layout, archive, directory, registry push); ``snapshotter`` names the
  ``rootbuild.snapshot`` implementation RUN steps mount their root with.
- ``Seams`` bundles them for one build; ``engine.build`` makes the real ones unless the
  caller passes its own (``rootbuild.testing`` ships fakes that need no kernel, FUSE or
  network), so the stage engine is tested through the same code a build runs.
- Implementations hold per-build state only (no module globals): two builds in one
  process (the worker) never share or lose it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from rootbuild.engine.remote_source import RemoteSources
from rootbuild.image.oci import StoredImage
from rootbuild.image.refs import OutputRef
from rootbuild.image.rootfs import RootfsView
from rootbuild.platform import Platform
from rootbuild.sandbox.spec import StepResult, StepSpec
from rootbuild.snapshot import choose_snapshotter


class Executor(Protocol):
    async def run(self, spec: StepSpec, on_output: Callable[[str], None]) -> StepResult:
        """Run one RUN step; its output lines go to ``on_output``. A nonzero exit is
        returned; ``SandboxError``/``StepError`` are raised (without a location)."""
        ...

    async def aclose(self) -> None:
        """Release what the executor keeps between steps (the build is over)."""
        ...

    async def prestart(self) -> None:
        """A hint: RUN steps will run in this build; start what they need in the
        background now (the sandbox's zygote). Idempotent, and never required."""
        ...


class BaseImages(Protocol):
    async def get(self, ref: str, platform: Platform) -> StoredImage:
        """The image ``ref`` (as written after expansion: a store name, a registry
        reference, ``oci:DIR``...) for ``platform``, in the store; fetched at most once
        per build, concurrently for different references. Errors carry no location."""
        ...


class Exporter(Protocol):
    async def export(
        self, image: StoredImage, output: OutputRef, rootfs: Callable[[], RootfsView],
        say: Callable[[str], None],
    ) -> str | None:
        """Write ``image`` to ``output``; ``rootfs`` gives its merged root filesystem (it
        blocks: call it in a worker thread) for outputs that need the files. Returns the
        manifest digest when the image was pushed to a registry, else None."""
        ...


class ChosenSnapshotter:
    """The snapshotter's name, chosen (and probed) at the build's first RUN step: a build
    without RUN never needs FUSE. ``wanted``: ``--snapshotter`` (auto, fuse, overlay)."""

    def __init__(self, wanted: str = "auto") -> None:
        self.name: str | None = None
        self.wanted = wanted

    def __call__(self) -> str:
        if self.name is None:
            self.name = choose_snapshotter(self.wanted).name
        return self.name


@dataclass(frozen=True)
class Seams:
    executor: Executor
    base_images: BaseImages
    exporter: Exporter
    snapshotter: Callable[[], str] = field(default_factory=ChosenSnapshotter)
    # ADD's URLs and Git repositories (``engine.remote_source``); tests pass fake fetchers
    remote: RemoteSources = field(default_factory=RemoteSources)
