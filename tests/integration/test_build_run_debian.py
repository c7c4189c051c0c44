"""A real-world RUN step on a real base: ``apt-get install`` on Debian bookworm, built by the
real `rootbuild` executable as the unprivileged build user, with host networking.

The base is made in the test set-up (as root): ``debootstrap --variant=minbase bookworm``
from Debian's mirror, cached as a plain tar of the tree (numeric owners, sorted entries)
under ``/var/cache/rootbuild-tests/`` so that reruns skip debootstrap, then wrapped in an
``oci-archive`` (one uncompressed layer, an OCI config and manifest) that the build user can
read. Without network the set-up FAILS with debootstrap's message; it never skips.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import platform
import shutil
import subprocess
import tarfile
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import Harness, require_tool

pytestmark = pytest.mark.integration

CACHE = Path("/var/cache/rootbuild-tests")
ROOTFS_TAR = CACHE / "debian-bookworm-minbase.tar"
MIRROR = "http://deb.debian.org/debian"
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
_ARCH = {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm", "ppc64le": "ppc64le",
         "s390x": "s390x", "riscv64": "riscv64"}
# Emptied in the image, as in Debian's official images: device nodes an unprivileged user
# cannot create, and what debootstrap leaves of the host's run time.
_EMPTY_DIRS = ("dev", "proc", "sys", "run", "tmp")


def _tar_tree(tree: Path, dest: Path) -> None:
    """``tree`` as a layer tar: sorted entries, numeric owners only, hard links kept."""

    def numeric(info: tarfile.TarInfo) -> tarfile.TarInfo:
        info.uname = info.gname = ""
        return info

    with tarfile.open(dest, "w", format=tarfile.PAX_FORMAT) as tar:
        for root, dirs, files in os.walk(tree):
            dirs.sort()
            rel_root = os.path.relpath(root, tree)
            for name in sorted([*dirs, *files]):
                rel = name if rel_root == "." else f"{rel_root}/{name}"
                tar.add(tree / rel, arcname=rel, recursive=False, filter=numeric)
            if rel_root == ".":
                dirs[:] = [d for d in dirs if d not in _EMPTY_DIRS]


def _debootstrap_rootfs() -> None:
    """Create the cached rootfs tar with debootstrap (as root)."""
    debootstrap = shutil.which("debootstrap") or "/usr/sbin/debootstrap"
    if not os.path.exists(debootstrap):
        pytest.fail("integration prerequisite missing: debootstrap (scripts/setup-debian.sh)")
    CACHE.mkdir(mode=0o755, parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="debootstrap-", dir=CACHE))
    try:
        proc = subprocess.run(
            [debootstrap, "--variant=minbase", "bookworm", str(work / "tree"), MIRROR],
            capture_output=True, text=True, timeout=1800,
        )
        if proc.returncode != 0:
            tail = "\n".join((proc.stdout + proc.stderr).splitlines()[-15:])
            pytest.fail(f"debootstrap bookworm from {MIRROR} failed (no network?):\n{tail}")
        partial = work / "rootfs.tar"
        _tar_tree(work / "tree", partial)
        os.rename(partial, ROOTFS_TAR)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _blob(blobs: Path, data: bytes) -> dict[str, Any]:
    digest = hashlib.sha256(data).hexdigest()
    (blobs / digest).write_bytes(data)
    return {"digest": f"sha256:{digest}", "size": len(data)}


def _oci_archive(rootfs_tar: Path, dest: Path) -> None:
    """An oci-archive holding one image: the rootfs tar as its only (uncompressed) layer."""
    layout = dest.parent / "layout"
    blobs = layout / "blobs/sha256"
    blobs.mkdir(parents=True)
    layer = rootfs_tar.read_bytes()
    layer_desc = _blob(blobs, layer)
    config = {
        "architecture": _ARCH.get(platform.machine(), platform.machine()),
        "os": "linux",
        "config": {"Env": [f"PATH={DEFAULT_PATH}"], "Cmd": ["bash"]},
        "rootfs": {"type": "layers", "diff_ids": [layer_desc["digest"]]},
        "history": [{"created_by": "debootstrap --variant=minbase bookworm"}],
    }
    config_desc = _blob(blobs, json.dumps(config, sort_keys=True).encode())
    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", **config_desc},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", **layer_desc}],
    }
    manifest_desc = _blob(blobs, json.dumps(manifest, sort_keys=True).encode())
    index = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json", **manifest_desc,
            "annotations": {"org.opencontainers.image.ref.name": "bookworm"},
        }],
    }
    (layout / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    (layout / "index.json").write_text(json.dumps(index))
    with tarfile.open(dest, "w") as tar:
        for name in ("oci-layout", "index.json", "blobs"):
            tar.add(layout / name, arcname=name)
    shutil.rmtree(layout)
    os.chmod(dest, 0o644)


@pytest.fixture(scope="session")
def debian_base() -> Iterator[Path]:
    """``oci-archive`` path of a Debian bookworm minbase image, readable by every user."""
    if os.getuid() != 0:
        pytest.fail("integration prerequisite missing: root for the debootstrap set-up "
                    "(run scripts/test.sh as root)")
    if not ROOTFS_TAR.is_file():
        _debootstrap_rootfs()
    base = Path(tempfile.mkdtemp(prefix="rootbuild-debian-"))
    os.chmod(base, 0o755)
    archive = base / "bookworm.oci.tar"
    try:
        _oci_archive(ROOTFS_TAR, archive)
        yield archive
    finally:
        shutil.rmtree(base, ignore_errors=True)


def _layers(layout: Path) -> list[dict[str, tuple[tarfile.TarInfo, bytes | None]]]:
    index = json.loads((layout / "index.json").read_text())
    blobs = layout / "blobs/sha256"
    manifest = json.loads((blobs / index["manifests"][0]["digest"][7:]).read_bytes())
    out = []
    for desc in manifest["layers"]:
        data = (blobs / desc["digest"][7:]).read_bytes()
        if data[:2] == b"\x1f\x8b":
            data = gzip.decompress(data)
        members: dict[str, tuple[tarfile.TarInfo, bytes | None]] = {}
        with tarfile.open(fileobj=io.BytesIO(data)) as tar:
            for info in tar:
                f = tar.extractfile(info) if info.isreg() else None
                members[info.name.rstrip("/")] = (info, f.read() if f else None)
        out.append(members)
    return out


def _dpkg_status(text: str, package: str) -> str:
    for para in text.split("\n\n"):
        if f"Package: {package}\n" in para + "\n":
            for line in para.splitlines():
                if line.startswith("Status: "):
                    return line.removeprefix("Status: ")
    return ""


def test_apt_get_install_on_a_debian_base(rb: Harness, debian_base: Path) -> None:
    ctx = rb.make_context("debian", {"Dockerfile": (
        f"FROM oci-archive:{debian_base}\n"
        "RUN apt-get update && apt-get install -y --no-install-recommends hello\n"
        "RUN hello > /hello.out && id -u _apt > /apt-uid\n"
    )})
    layout = rb.workdir / "out"
    rb.run("build", "--progress=plain", "--network", "host", "-t", "debian-hello:1",
           "--output", f"oci:{layout}:v1", str(ctx), timeout=900)

    layers = _layers(layout)
    assert len(layers) == 3  # the base, the apt-get step, the check step
    base, apt, check = layers
    hello = apt["usr/bin/hello"][0]
    assert hello.isreg() and hello.mode & 0o111
    assert (hello.uid, hello.gid) == (0, 0)
    for name, (info, _) in apt.items():
        if name.startswith(("usr/bin/", "usr/share/doc/hello")):
            assert (info.uid, info.gid) == (0, 0), name
    status = apt["var/lib/dpkg/status"][1]
    assert status is not None
    assert _dpkg_status(status.decode(), "hello") == "install ok installed"
    assert "var/lib/dpkg/info/hello.list" in apt
    assert "usr/bin/hello" not in base
    # apt drops to its sandbox user _apt to download: the directory it owns keeps that id
    apt_uid = int((check["apt-uid"][1] or b"").decode())
    assert apt_uid != 0
    partial = apt["var/lib/apt/lists/partial"][0]
    assert partial.isdir() and partial.uid == apt_uid
    assert check["hello.out"][1] == b"Hello, world!\n"
    # the sandbox's /etc files are not in the layers
    for name in ("etc/hosts", "etc/hostname"):
        assert name not in apt and name not in check, name

    # an independent runtime's view
    rb.as_user([require_tool("umoci"), "unpack", "--rootless", "--image", f"{layout}:v1",
                str(rb.workdir / "bundle")])
    root = rb.workdir / "bundle/rootfs"
    assert (root / "usr/bin/hello").is_file()
    assert "hello" in (root / "var/lib/dpkg/status").read_text()
