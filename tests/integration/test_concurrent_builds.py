"""Two builds by the same user into one store at the same time leave a consistent store."""

from __future__ import annotations

import hashlib
import json
import subprocess

import pytest
from conftest import ROOTBUILD, Harness

pytestmark = pytest.mark.integration


def test_two_builds_at_once_share_the_store(rb: Harness) -> None:
    shared = b"shared layer content\n" * 50_000
    contexts = []
    for name in ("one", "two"):
        contexts.append(rb.make_context(name, {
            "Dockerfile": "FROM scratch\nCOPY shared /shared\nCOPY own /own\n",
            "shared": shared,
            "own": f"{name}\n".encode() * 100_000,
        }))
    procs = [
        subprocess.Popen(
            rb.command([str(ROOTBUILD), "build", "--root", str(rb.store), "--progress=plain",
                        "-t", f"app-{ctx.name}", str(ctx)],
                       {"SOURCE_DATE_EPOCH": "1700000000"}),
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        for ctx in contexts
    ]
    for proc in procs:
        _out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err

    first_layers = []
    for name in ("one", "two"):
        doc = json.loads(rb.run("inspect", f"app-{name}").stdout)
        layers = doc["Manifest"]["layers"]
        assert len(layers) == 2
        first_layers.append(layers[0]["digest"])
    # the same COPY of the same file at the same epoch is the same blob, stored once
    assert first_layers[0] == first_layers[1]

    blobs = rb.store / "blobs" / "sha256"
    for blob in blobs.iterdir():
        assert hashlib.sha256(blob.read_bytes()).hexdigest() == blob.name
    assert not [p for p in (rb.store / "tmp").iterdir()], "build leftovers in the store's tmp/"
