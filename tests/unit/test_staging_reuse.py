"""``Staging.put_bytes`` of bytes the store already holds (an unchanged rebuild's config and
manifest) writes and fsyncs nothing, and gives the same descriptor; new bytes are still
staged and reach ``blobs/`` only through ``commit()`` (issue 14: no work a build does not
need)."""

from __future__ import annotations

import os
from pathlib import Path

from rootbuild.image.digest import sha256_digest
from rootbuild.image.oci import OCI_CONFIG
from rootbuild.image.store import Store


def test_bytes_already_stored_are_not_written_again(tmp_path: Path) -> None:
    store = Store.open(tmp_path / "store")
    data = b'{"architecture": "amd64"}'
    with store.stage() as first:
        desc = first.put_bytes(data, OCI_CONFIG)
        assert not store.has_blob(desc.digest)  # staged only, until commit
        first.commit()
    before = store.blob_path(desc.digest).stat()
    with store.stage() as again:
        same = again.put_bytes(data, OCI_CONFIG)
        assert os.listdir(again.path) == []  # nothing written to the staging directory
        assert again.has_blob(same.digest)
        again.commit()
    assert same == desc
    assert (same.digest, same.size) == (sha256_digest(data), len(data))
    after = store.blob_path(desc.digest).stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    with store.open_blob(desc.digest) as f:
        assert f.read() == data


def test_new_bytes_are_staged_and_dropped_without_commit(tmp_path: Path) -> None:
    store = Store.open(tmp_path / "store")
    with store.stage() as staging:
        desc = staging.put_bytes(b"new", OCI_CONFIG)
        assert staging.has_blob(desc.digest) and not store.has_blob(desc.digest)
        assert len(os.listdir(staging.path)) == 1
    assert not store.has_blob(desc.digest)  # never committed: the store is as it was
