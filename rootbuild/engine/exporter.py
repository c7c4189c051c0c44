"""Outputs of a build, in one place keyed by the output's transport: the store's
``Exporter``.

Rules:
- ``docker://REF`` (and every ``--push`` name) is pushed to its registry; ``dir:PATH``
  gets the merged root filesystem; ``oci:``, ``oci-archive:`` and ``docker-archive:`` are
  written from the store's blobs. Nothing else decides how an output is written.
- Blocking work runs in a worker thread.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import trio

from rootbuild.image.archives import export_image
from rootbuild.image.oci import StoredImage
from rootbuild.image.refs import OutputRef
from rootbuild.image.rootfs import RootfsView, materialize
from rootbuild.image.store import Store
from rootbuild.registry.transport import TransportOptions


class StoreExporter:
    def __init__(self, store: Store, transport: TransportOptions, *,
                 docker_format: bool = False, warn: Callable[[str], None]) -> None:
        self.store = store
        self.transport = transport
        self.docker_format = docker_format
        self.warn = warn

    async def export(
        self, image: StoredImage, output: OutputRef, rootfs: Callable[[], RootfsView],
        say: Callable[[str], None],
    ) -> str | None:
        if output.transport == "docker":
            from rootbuild.registry.push import push  # the HTTP client: only for a push

            digest = await push(
                self.store, image, output.path, transport=self.transport,
                docker_format=self.docker_format, progress=say,
            )
            say(f"pushed {output.path}@{digest}")
            return digest
        if output.transport == "dir":
            skipped = await trio.to_thread.run_sync(
                lambda: materialize(rootfs(), Path(output.path))
            )
            if skipped:
                self.warn(
                    f"dir:{output.path}: {len(skipped)} device or FIFO entries not written "
                    "(an unprivileged user cannot create them)"
                )
            return None
        await trio.to_thread.run_sync(export_image, self.store, image, output)
        return None
