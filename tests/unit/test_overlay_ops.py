"""The pyfuse3 adapter (fuse_overlay/ops.py) without a mount: FORGET has no reply, so a
failure while forgetting one inode is logged and the others are still forgotten (an
exception would end pyfuse3's session loop and the step's filesystem)."""

from __future__ import annotations

import errno
import logging
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from rootbuild.fuse_overlay.inodes import ROOT_INO
from rootbuild.fuse_overlay.model import OverlayModel
from rootbuild.fuse_overlay.ops import OverlayOperations

NOW = 5_000 * 10**9


class FailingForget(OverlayModel):
    """A model whose ``forget`` raises for chosen inodes."""

    def __init__(self) -> None:
        super().__init__([], NOW)
        self.fail: dict[int, Exception] = {}
        self.forgotten: list[int] = []

    def forget(self, ino: int, n: int) -> list[int]:
        self.forgotten.append(ino)
        exc = self.fail.get(ino)
        if exc is not None:
            raise exc
        return super().forget(ino, n)


@pytest.fixture
def work(tmp_path: Path) -> Path:
    path = tmp_path / "work"
    path.mkdir()
    return path


@pytest.fixture
def ops(work: Path) -> Iterator[OverlayOperations]:
    adapter = OverlayOperations([], work)
    adapter.model = FailingForget()
    try:
        yield adapter
    finally:
        adapter.backing.close()


def unlinked_file(ops: OverlayOperations, name: str) -> tuple[int, int]:
    """(ino, data number) of a file whose last name is gone while the kernel still holds
    one lookup reference on it: the next FORGET drops it and its backing file."""
    n = ops.model.alloc_data()
    os.close(ops.backing.create_data(n))
    node = ops.model.create(ROOT_INO, name, "file", 0o644, 0, 0, NOW, data=n)
    ops._attr(node)  # cached, as after the reply that handed the inode to the kernel
    assert ops.model.unlink(ROOT_INO, name, NOW) == []
    return node.ino, n


def test_forget_logs_failures_and_forgets_the_other_inodes(
    ops: OverlayOperations, work: Path, caplog: pytest.LogCaptureFixture
) -> None:
    model = ops.model
    assert isinstance(model, FailingForget)
    unexpected, _ = unlinked_file(ops, "unexpected")
    backing_fails, n_fails = unlinked_file(ops, "backing-fails")
    model_oserror, _ = unlinked_file(ops, "model-oserror")
    fine, n_fine = unlinked_file(ops, "fine")
    model.fail[unexpected] = KeyError(unexpected)
    model.fail[model_oserror] = OSError(errno.EIO, "injected")
    data = work / "data"
    # the backing store refuses to remove this one: unlink(2) of a directory is EISDIR
    (data / str(n_fails)).unlink()
    (data / str(n_fails)).mkdir()

    async def main() -> None:
        await ops.forget(
            [(unexpected, 1), (backing_fails, 1), (model_oserror, 1), (fine, 1)]
        )

    with caplog.at_level(logging.WARNING, logger="rootbuild.fuse_overlay.ops"):
        trio.run(main)  # returns normally

    assert model.forgotten == [unexpected, backing_fails, model_oserror, fine]
    # the inodes after each failure were still handled
    assert fine not in model.inodes and not (data / str(n_fine)).exists()
    assert fine not in ops._attrs
    assert backing_fails not in model.inodes and backing_fails not in ops._attrs
    assert unexpected in model.inodes and model_oserror in model.inodes  # never forgotten

    logged = {r.getMessage(): r for r in caplog.records}
    assert set(logged) == {
        f"fuse overlay: forget inode {unexpected} failed",
        f"fuse overlay: forget inode {backing_fails}: [Errno {errno.EISDIR}] "
        f"{os.strerror(errno.EISDIR)}: '{n_fails}'",
        f"fuse overlay: forget inode {model_oserror}: [Errno {errno.EIO}] injected",
    }
    assert all(r.levelno == logging.ERROR for r in caplog.records)
    # an unexpected error is a bug: its traceback goes to server.log too
    assert logged[f"fuse overlay: forget inode {unexpected} failed"].exc_info is not None


def test_forget_without_failures_drops_inodes_and_their_data(
    ops: OverlayOperations, work: Path, caplog: pytest.LogCaptureFixture
) -> None:
    a, n_a = unlinked_file(ops, "a")
    b, n_b = unlinked_file(ops, "b")

    async def main() -> None:
        await ops.forget([(a, 1), (b, 1)])

    trio.run(main)
    assert a not in ops.model.inodes and b not in ops.model.inodes
    assert not (work / "data" / str(n_a)).exists() and not (work / "data" / str(n_b)).exists()
    assert not caplog.records


@pytest.mark.parametrize(
    ("xattrs", "name", "expected"),
    [
        ({}, b"security.capability", True),
        ({}, b"user.x", True),
        ({}, b"trusted.overlay.opaque", True),
        ({"user.x": b"1"}, b"security.capability", False),  # the model looks it up
        ({}, b"system.posix_acl_access", False),  # EOPNOTSUPP, from the model
        ({}, b"other.x", False),  # EOPNOTSUPP, from the model
    ],
)
def test_no_such_xattr_only_where_the_model_says_enodata(
    xattrs: dict[str, bytes], name: bytes, expected: bool
) -> None:
    from rootbuild.fuse_overlay.ops import no_such_xattr

    assert no_such_xattr(xattrs, name) is expected


def test_getxattr_answers_as_the_model(ops: OverlayOperations) -> None:
    """The fast ENODATA and the model's answers, for an inode with and without xattrs."""
    import pyfuse3

    ops.model = OverlayModel([], NOW)

    async def errno_of(ino: int, name: bytes) -> int | bytes:
        try:
            return await ops.getxattr(ino, name, None)  # type: ignore[arg-type]
        except pyfuse3.FUSEError as exc:
            return exc.errno

    async def main() -> None:
        assert await errno_of(ROOT_INO, b"security.capability") == errno.ENODATA
        assert await errno_of(ROOT_INO, b"system.posix_acl_access") == errno.EOPNOTSUPP
        assert await errno_of(ROOT_INO, b"foo.bar") == errno.EOPNOTSUPP
        assert await errno_of(999, b"user.x") == errno.ENOENT
        ops.model.setxattr(ROOT_INO, "user.x", b"v", NOW)
        assert await errno_of(ROOT_INO, b"user.x") == b"v"
        assert await errno_of(ROOT_INO, b"security.capability") == errno.ENODATA

    trio.run(main)


def test_lookup_answers_as_the_model(ops: OverlayOperations) -> None:
    """The inline LOOKUP (a loaded directory, a plain name) and the model's path agree:
    hits take one lookup reference, misses are negative entries, bad names and parents
    are errors."""
    import pyfuse3

    ops.model = OverlayModel([], NOW)
    m = ops.model
    sub = m.create(ROOT_INO, "sub", "dir", 0o755, 0, 0, NOW)
    f = m.create(ROOT_INO, "f", "file", 0o644, 0, 0, NOW, data=m.alloc_data())

    async def look(parent: int, name: bytes) -> int:
        try:
            attr = await ops.lookup(parent, name, None)  # type: ignore[arg-type]
        except pyfuse3.FUSEError as exc:
            return -exc.errno
        return attr.st_ino

    async def main() -> None:
        before = sub.lookups
        assert await look(ROOT_INO, b"sub") == sub.ino
        assert sub.lookups == before + 1
        assert await look(ROOT_INO, b"missing") == 0
        assert await look(ROOT_INO, b".") == ROOT_INO
        assert await look(sub.ino, b"..") == ROOT_INO
        assert await look(ROOT_INO, b"a/b") == -errno.EINVAL
        assert await look(ROOT_INO, b"x" * 256) == -errno.ENAMETOOLONG
        assert await look(f.ino, b"x") == -errno.ENOTDIR
        assert await look(12345, b"x") == -errno.ENOENT
        assert await look(ROOT_INO, "é".encode() + b"\xff") == 0  # surrogateescape

    trio.run(main)
