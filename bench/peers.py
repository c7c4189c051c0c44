"""Peers benchmark: rootbuild against rootless buildah (vfs, kernel overlay, fuse-overlayfs)
on a fixed set of Dockerfiles, in one run; prints medians and ratios rootbuild/peer.
Run by hand (``sudo bash scripts/bench-peers.sh``); not part of CI.

Usage, as an ordinary user with /etc/subuid and /etc/subgid ranges and a usable /dev/fuse
(scripts/bench-peers.sh sets that up and runs this as the user ``rbbench``):

    /opt/rootbuild/venv/bin/python bench/peers.py --debian-tar TAR [--runs 3]
        [--cases 1,2,3,4,6,7,8,9] [--builders rootbuild,buildah-vfs,buildah-overlay,buildah-fuse]
        [--work DIR] [--json FILE] [--keep-logs]

``--builders`` also takes ``rootbuild-spread``: rootbuild with ``ROOTBUILD_CPU_PLACEMENT=off``
(RUN steps and their FUSE servers free to use every CPU), to measure CPU placement in the
same run; it is shown with its ratio but is not one of the peers the targets name. And
``rootbuild-overlay``: rootbuild with ``--snapshotter overlay`` (the kernel's overlayfs),
shown the same way.
    /opt/rootbuild/venv/bin/python bench/peers.py --report FILE.json   # tables of a --json

The rootbuild measured is the ``rootbuild`` executable next to this interpreter.

Rules:
- Bases come from a local registry this script starts (Debian's ``docker-registry`` on a
  loopback port, temp config and storage) and stops at the end, also on errors and Ctrl-C.
  The busybox base is built here by rootbuild (``FROM scratch`` + Debian's busybox-static
  + applet symlinks) and pushed; the Debian base is the debootstrap minbase tar given by
  ``--debian-tar`` (made as root by the wrapper), wrapped as an oci-archive and pushed with
  skopeo (which gzips its layer, as a registry image would be).
- Every build starts from an empty store for its builder ("cold": the base is pulled from
  the registry) and is followed, in the same store, by a rebuild with no change ("warm"),
  a rebuild with ``--no-cache`` ("nocache": every step again, the base already pulled,
  as issue 14 measured BuildKit) and one after one context file's content changed
  ("changed"); cases 6, 7 and 8 have no context file, so no "changed" build.
- Cases 7, 8 and 9 are the workloads of issue 14's table that cases 1-4 do not cover (30
  one-line RUNs; a node_modules-like tree; three stages that mostly sleep). Each table has
  a row with issue 14's rootless BuildKit figure (``BUILDKIT_NOCACHE``, ``BUILDKIT_WARM``:
  measured on this machine class, BuildKit is not in Debian) and a column with every
  builder's ratio to it; the "nocache" phase is the one comparable with those figures.
- Every build ends with an oci-archive export, timed as part of the build: rootbuild with
  ``--output oci-archive:FILE``; buildah (1.28 has no oci-archive ``--output``) with
  ``buildah build`` then ``buildah push IMAGE oci-archive:FILE``.
- buildah runs rootless with ``--isolation chroot --layers --jobs 0`` (``--layers`` is
  what makes it cache steps, as BuildKit does by default; ``--jobs 0`` builds every ready
  stage at once, as rootbuild's default does and BuildKit does), with its own
  ``--root``/``--runroot`` and XDG directories per build series, so that nothing (blob-info
  cache included) carries over from one cold build to the next.
- Builders alternate within each repetition, in an order rotated run by run.
- A failed build stops the benchmark with its log tail and exit status 1: no time is ever
  recorded for a build that did not produce its archive. A builder configuration that
  cannot build at all (its probe fails) is reported with its error and skipped, and the
  exit status is 2 once the other results are printed.
- Teardown: ``buildah rm --all``, stores removed (``buildah unshare rm -rf`` for files
  owned by sub-ids), the registry stopped, and /proc/mounts and the process table checked
  for anything left under the work directory.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import io
import json
import os
import platform
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tarfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

ROOTBUILD = Path(sys.executable).parent / "rootbuild"
REGISTRY_BIN = "/usr/bin/docker-registry"
BUSYBOX = "/bin/busybox"
FUSE_OVERLAYFS = "/usr/bin/fuse-overlayfs"
DEBIAN_MIRROR = "http://deb.debian.org/debian/dists/bookworm/Release"
BUILD_TIMEOUT = 3600.0
NCPU = os.cpu_count() or 1
BUILDERS = ("rootbuild", "buildah-vfs", "buildah-overlay", "buildah-fuse")
# rootbuild with ROOTBUILD_CPU_PLACEMENT=off (steps on every CPU): what placement is worth in
# these cases; on request only, and never counted among the peers the targets name.
# rootbuild-overlay: rootbuild with --snapshotter overlay (the kernel overlay, opt-in)
EXTRA_BUILDERS = ("rootbuild-spread", "rootbuild-overlay")
ALL_CASES = (1, 2, 3, 4, 6, 7, 8, 9)
PHASES = ("cold", "warm", "nocache", "changed")
PHASE_TITLES = {"cold": "cold", "warm": "warm (no change)", "nocache": "no-cache (base pulled)",
                "changed": "warm (1 file changed)"}
# Rootless BuildKit on this machine class, from issue 14 (medians, one run): cold builds
# with --no-cache, bases already pulled, oci-archive export; compared with the "nocache"
# phase. Case 4 is not in issue 14's table: its figure is the earlier issue's (cold, base
# pulled in the build), compared with the "cold" phase.
BUILDKIT_NOCACHE = {1: 5.0, 2: 0.97, 3: 6.1, 7: 1.76, 8: 1.1, 9: 5.0}
BUILDKIT_COLD = {4: 4.8}
BUILDKIT_WARM = 0.13  # issue 14: unchanged rebuild (step cache), oci-archive export


class BenchError(Exception):
    """A build or set-up step failed: the benchmark stops and says why."""


def _tail(path: Path, lines: int = 25) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def run_logged(argv: list[str], log: Path, env: dict[str, str] | None = None,
               cwd: Path | None = None, timeout: float = BUILD_TIMEOUT) -> float:
    """Run ``argv``, appending its output to ``log``; return its wall time. Raise on failure."""
    with open(log, "ab") as out:
        out.write(f"\n$ {' '.join(argv)}\n".encode())
        out.flush()
        start = time.monotonic()
        try:
            proc = subprocess.run(argv, stdout=out, stderr=subprocess.STDOUT,
                                  stdin=subprocess.DEVNULL, env=env, cwd=cwd, timeout=timeout)
        except subprocess.TimeoutExpired as exc:
            raise BenchError(f"{argv[0]} timed out after {timeout:.0f} s; log {log}:\n"
                             f"{_tail(log)}") from exc
        elapsed = time.monotonic() - start
    if proc.returncode != 0:
        raise BenchError(f"{' '.join(argv[:4])} ... failed (exit {proc.returncode}); "
                         f"log {log}:\n{_tail(log)}")
    return elapsed


def rootbuild_stamp() -> str:
    """Which rootbuild install runs: a digest of its package files' names, sizes and mtimes
    (a reinstall in the middle of a run, e.g. by scripts/test.sh, shows as a new stamp)."""
    proc = subprocess.run([sys.executable, "-c", "import rootbuild; print(rootbuild.__file__)"],
                          capture_output=True, text=True, check=False)
    pkg = Path(proc.stdout.strip()).parent
    h = hashlib.sha256()
    for path in sorted(pkg.rglob("*.py")):
        st = path.stat()
        h.update(f"{path.relative_to(pkg)} {st.st_size} {st.st_mtime_ns}\n".encode())
    return f"{pkg} {h.hexdigest()[:12]}"


def check_archive(path: Path) -> None:
    """The export really is an oci-archive: a tar holding ``index.json`` and ``oci-layout``."""
    try:
        with tarfile.open(path) as tar:
            names = {n.lstrip("./") for n in tar.getnames()}
    except (OSError, tarfile.TarError) as exc:
        raise BenchError(f"check export {path}: {exc}") from exc
    if not {"index.json", "oci-layout"} <= names:
        raise BenchError(f"check export {path}: not an oci-archive (entries {sorted(names)[:5]})")


def remove_tree(path: Path) -> None:
    """Remove ``path``; files owned by sub-ids (RUN as non-root users) via buildah unshare."""
    if not os.path.lexists(path):
        return
    shutil.rmtree(path, ignore_errors=True)
    if os.path.lexists(path):
        subprocess.run(["buildah", "unshare", "rm", "-rf", "--", str(path)],
                       stdin=subprocess.DEVNULL, capture_output=True, check=False)
    if os.path.lexists(path):
        raise BenchError(f"remove {path}: still there (see /proc/mounts)")


# ---------------------------------------------------------------------------- the registry


@dataclass
class Registry:
    host: str
    proc: subprocess.Popen[bytes]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_registry(base: Path) -> Registry:
    """docker-registry (distribution 2.8) with filesystem storage in ``base``, on loopback."""
    if not os.access(REGISTRY_BIN, os.X_OK):
        raise BenchError(f"start registry: {REGISTRY_BIN} missing (apt-get docker-registry)")
    (base / "storage").mkdir(parents=True)
    port = _free_port()
    config = base / "config.yml"
    config.write_text(
        "version: 0.1\nlog:\n  level: warn\n  accesslog:\n    disabled: true\n"
        f"storage:\n  filesystem:\n    rootdirectory: {base / 'storage'}\n"
        "  maintenance:\n    uploadpurging:\n      enabled: false\n"
        f"http:\n  addr: 127.0.0.1:{port}\n  secret: {os.urandom(16).hex()}\n"
    )
    log = base / "registry.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([REGISTRY_BIN, "serve", str(config)], stdout=out,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    reg = Registry(f"127.0.0.1:{port}", proc)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            with urllib.request.urlopen(f"http://{reg.host}/v2/", timeout=2) as resp:
                if resp.status == 200:
                    return reg
        except (OSError, urllib.error.URLError):
            time.sleep(0.1)
    reg.stop()
    raise BenchError(f"start registry: no answer on {reg.host}:\n{_tail(log)}")


# ---------------------------------------------------------------------------- bases


def _blob(blobs: Path, data: bytes) -> dict[str, object]:
    digest = hashlib.sha256(data).hexdigest()
    (blobs / digest).write_bytes(data)
    return {"digest": f"sha256:{digest}", "size": len(data)}


def debian_oci_archive(rootfs_tar: Path, dest: Path) -> None:
    """An oci-archive of one image whose only (uncompressed) layer is ``rootfs_tar``, as
    tests/integration/test_build_run_debian.py makes it."""
    arch = {"x86_64": "amd64", "aarch64": "arm64"}.get(platform.machine(), platform.machine())
    layout = dest.parent / "debian-layout"
    blobs = layout / "blobs/sha256"
    blobs.mkdir(parents=True)
    layer_desc = _blob(blobs, rootfs_tar.read_bytes())
    config = {
        "architecture": arch, "os": "linux",
        "config": {"Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
                   "Cmd": ["bash"]},
        "rootfs": {"type": "layers", "diff_ids": [layer_desc["digest"]]},
        "history": [{"created_by": "debootstrap --variant=minbase bookworm"}],
    }
    config_desc = _blob(blobs, json.dumps(config, sort_keys=True).encode())
    manifest = {
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", **config_desc},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", **layer_desc}],
    }
    manifest_desc = _blob(blobs, json.dumps(manifest, sort_keys=True).encode())
    index = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
             "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json",
                            **manifest_desc}]}
    (layout / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    (layout / "index.json").write_text(json.dumps(index))
    with tarfile.open(dest, "w") as tar:
        for name in ("oci-layout", "index.json", "blobs"):
            tar.add(layout / name, arcname=name)
    shutil.rmtree(layout)


def push_bases(work: Path, reg: Registry, debian_tar: Path | None, env: dict[str, str]) -> None:
    """busybox (built by rootbuild) and, with ``debian_tar``, Debian minbase into ``reg``."""
    log = work / "logs" / "bases.log"
    ctx = work / "bases" / "busybox"
    (ctx / "rootfs/bin").mkdir(parents=True)
    for d in ("tmp", "etc", "root"):
        (ctx / "rootfs" / d).mkdir()
    os.chmod(ctx / "rootfs/tmp", 0o1777)
    (ctx / "rootfs/etc/passwd").write_text("root:x:0:0:root:/root:/bin/sh\n")
    (ctx / "rootfs/etc/group").write_text("root:x:0:\n")
    shutil.copy(BUSYBOX, ctx / "rootfs/bin/busybox")
    applets = subprocess.run([BUSYBOX, "--list"], capture_output=True, text=True, check=True)
    for name in applets.stdout.split():
        if name != "busybox":
            os.symlink("busybox", ctx / "rootfs/bin" / name)
    (ctx / "Dockerfile").write_text("FROM scratch\nCOPY rootfs/ /\nENV PATH=/bin\n")
    store = work / "bases" / "store"
    run_logged([str(ROOTBUILD), "build", "--progress", "plain", "--root", str(store),
                "-t", f"{reg.host}/busybox:latest", "--push", str(ctx)], log, env)
    remove_tree(store)
    if debian_tar is not None:
        archive = work / "bases" / "debian.oci.tar"
        debian_oci_archive(debian_tar, archive)
        run_logged(["skopeo", "copy", "--quiet", "--dest-tls-verify=false",
                    f"oci-archive:{archive}", f"docker://{reg.host}/debian:bookworm"], log, env)
        archive.unlink()


# ---------------------------------------------------------------------------- cases


@dataclass(frozen=True)
class Case:
    number: int
    title: str
    dockerfile: Callable[[str], str]  # registry host -> Dockerfile text
    make_context: Callable[[Path], None]
    changed_file: str | None  # the context file whose content "changed" rewrites
    base: str  # "busybox" or "debian"


def _small_tree_tar(dest: Path, dirs: int, per_dir: int) -> None:
    """A tar of dirs x per_dir files of 1 KiB (half random), as bench/layer_io.py's files."""
    rnd = random.Random(1)
    block = rnd.randbytes(1024)
    with tarfile.open(dest, "w", format=tarfile.GNU_FORMAT) as tar:
        for d in range(dirs):
            info = tarfile.TarInfo(f"d{d:03}")
            info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, 1_700_000_000
            tar.addfile(info)
            for f in range(per_dir):
                i = d * per_dir + f
                data = block[i % 512: i % 512 + 512] + b"a" * 512
                info = tarfile.TarInfo(f"d{d:03}/f{f:03}")
                info.size, info.mode, info.mtime = len(data), 0o644, 1_700_000_000
                tar.addfile(info, io.BytesIO(data))


def _ctx1(ctx: Path) -> None:
    _small_tree_tar(ctx / "files.tar", 200, 100)
    (ctx / "patch.txt").write_text("patched\n")


def _df1(reg: str) -> str:
    return (
        f"FROM {reg}/busybox:latest\n"
        "COPY files.tar /src/files.tar\n"
        "RUN mkdir -p /data && tar -xf /src/files.tar -C /data\n"
        "COPY patch.txt /src/patch.txt\n"
        "RUN rm -rf /data/d000 && p=$(cat /src/patch.txt) && "
        "for d in 001 002 003 004 005; do for f in /data/d$d/*; do "
        'echo "$p" >> "$f"; done; done\n'
    )


def _ctx2(ctx: Path) -> None:
    (ctx / "app.conf").write_text("".join(f"#option{i} = {i}\n" for i in range(50)))


def _df2(reg: str) -> str:
    return (
        f"FROM {reg}/debian:bookworm\n"
        "RUN useradd --create-home --uid 1000 app\n"
        "RUN mkdir -p /app/bin /app/data && chown -R app:app /app\n"
        "RUN printf '#!/bin/sh\\necho hello\\n' > /app/bin/hello && chmod +x /app/bin/hello\n"
        "RUN ln -s /app/bin/hello /usr/local/bin/hello\n"
        "COPY app.conf /app/app.conf\n"
        "RUN grep -c . /app/app.conf > /app/lines\n"
        "RUN sed -i 's/^#//' /app/app.conf\n"
        "RUN dpkg-query -W > /app/packages.txt\n"
        "RUN hello > /app/data/out && rm -rf /usr/share/doc/debconf\n"
    )


def _ctx3(ctx: Path) -> None:
    """4 x 40 MiB files (half random, half text: gzip about 2:1) and 3,000 x 3 KiB files."""
    data = ctx / "data"
    (data / "big").mkdir(parents=True)
    rnd = random.Random(3)
    text = b"".join(f"line {i} of some text that compresses\n".encode() for i in range(20000))
    half = 512 * 1024
    for i in range(4):
        with open(data / "big" / f"blob{i}.bin", "wb") as out:
            for _ in range(40):
                out.write(rnd.randbytes(half))
                out.write(text[:half])
    for d in range(30):
        sub = data / "small" / f"s{d:02}"
        sub.mkdir(parents=True)
        for f in range(100):
            (sub / f"f{f:03}.txt").write_bytes(rnd.randbytes(1024) + text[:2048])


def _df3(reg: str) -> str:
    return (
        f"FROM {reg}/busybox:latest\n"
        "COPY data/ /ctx/\n"
        "RUN find /ctx -type f | xargs cat | md5sum > /ctx.md5 && du -s /ctx > /ctx.du\n"
    )


def _ctx4(ctx: Path) -> None:
    for s in "abc":
        (ctx / f"input-{s}.txt").write_text(f"input {s}\n")


def _stage4(reg: str, s: str) -> str:
    # ~4 s on this class of machine: 600 MiB through busybox sha256sum (CPU), a 32 MiB
    # random file and 2,000 small files (I/O).
    return (
        f"FROM {reg}/busybox:latest AS {s}\n"
        f"COPY input-{s}.txt /in/\n"
        "RUN mkdir /out && dd if=/dev/zero bs=1M count=600 2>/dev/null | sha256sum > /out/sum"
        f" && cat /in/input-{s}.txt >> /out/sum"
        " && dd if=/dev/urandom of=/out/blob bs=1M count=32 2>/dev/null"
        " && i=0 && while [ $i -lt 2000 ]; do echo $i > /out/f$i; i=$((i+1)); done\n"
    )


def _df4(reg: str) -> str:
    stages = "".join(_stage4(reg, s) for s in "abc")
    return (stages + f"FROM {reg}/busybox:latest\n"
            "COPY --from=a /out /a\nCOPY --from=b /out /b\nCOPY --from=c /out /c\n")


def _ctx6(ctx: Path) -> None:
    del ctx


def _df6(reg: str) -> str:
    return (
        f"FROM {reg}/debian:bookworm\n"
        "RUN apt-get update && apt-get install -y --no-install-recommends curl ca-certificates"
        " && rm -rf /var/lib/apt/lists/*\n"
    )


def _df7(reg: str) -> str:
    """Issue 14: busybox + 30 one-line RUN steps (the fixed cost of a RUN)."""
    return f"FROM {reg}/busybox:latest\n" + "".join(
        f"RUN echo {i} > /s{i} && mkdir -p /d/{i}\n" for i in range(30))


# 600 packages of 5 entries (package.json, index.js, lib/, lib/a.js, README.md) and a .bin
# symlink each, then every third package and its symlink removed, in one RUN.
NODE_MODULES_RUN = (
    "RUN mkdir -p /app/node_modules/.bin && cd /app/node_modules && i=0"
    " && while [ $i -lt 600 ]; do p=pkg$i && mkdir -p $p/lib"
    " && echo \"{\\\"name\\\": \\\"$p\\\"}\" > $p/package.json"
    " && echo \"module.exports = $i;\" > $p/index.js && echo a > $p/lib/a.js"
    " && echo \"# $p\" > $p/README.md && ln -s ../$p/index.js .bin/$p"
    " && i=$((i+1)); done"
    " && i=0 && while [ $i -lt 600 ]; do rm -rf pkg$i .bin/pkg$i && i=$((i+3)); done\n"
)


def _df8(reg: str) -> str:
    """Issue 14: a RUN making a node_modules-like tree, then removing a third of it."""
    return f"FROM {reg}/busybox:latest\n" + NODE_MODULES_RUN


def _stage9(reg: str, s: str) -> str:
    # ~1 s of CPU on this class of machine (200 MiB through busybox sha256sum), then a
    # stage that only waits: what a build gains by not capping stages at the CPU count.
    return (
        f"FROM {reg}/busybox:latest AS {s}\n"
        f"COPY input-{s}.txt /in/\n"
        "RUN dd if=/dev/zero bs=1M count=200 2>/dev/null | sha256sum > /sum"
        f" && cat /in/input-{s}.txt >> /sum && sleep 2\n"
    )


def _df9(reg: str) -> str:
    """Issue 14: three independent stages, each ~1 s of CPU then ``sleep 2``; the final
    stage copies from all."""
    stages = "".join(_stage9(reg, s) for s in "abc")
    return (stages + f"FROM {reg}/busybox:latest\n"
            "COPY --from=a /sum /a\nCOPY --from=b /sum /b\nCOPY --from=c /sum /c\n")


CASES = {
    1: Case(1, "RUN unpacks 20,000 small files (busybox); RUN deletes a dir, modifies 500",
            _df1, _ctx1, "patch.txt", "busybox"),
    2: Case(2, "Debian minbase + 8 small RUN steps", _df2, _ctx2, "app.conf", "debian"),
    3: Case(3, "COPY 170 MB context (4 large + 3,000 small files), RUN reads it",
            _df3, _ctx3, "data/small/s00/f000.txt", "busybox"),
    4: Case(4, "3 independent stages of ~4 s CPU+I/O, final stage copies from all",
            _df4, _ctx4, "input-a.txt", "busybox"),
    6: Case(6, "apt-get install curl ca-certificates on Debian minbase (network)",
            _df6, _ctx6, None, "debian"),
    7: Case(7, "busybox + 30 one-line RUN steps", _df7, _ctx6, None, "busybox"),
    8: Case(8, "a RUN makes a node_modules-like tree (600 packages, 5 entries and a symlink "
               "each), then removes a third", _df8, _ctx6, None, "busybox"),
    9: Case(9, "3 independent stages of ~1 s CPU then sleep 2, final stage copies from all",
            _df9, _ctx4, "input-a.txt", "busybox"),
}


# ---------------------------------------------------------------------------- builders


@dataclass
class Builder:
    """One builder configuration; ``series`` is its store for one cold/warm/changed series."""

    name: str
    work: Path
    base_env: dict[str, str]
    series: Path | None = None

    @property
    def is_rootbuild(self) -> bool:
        return self.name.startswith("rootbuild")

    def storage_flags(self) -> list[str]:
        assert self.series is not None
        flags = ["--root", str(self.series / "root"), "--runroot", str(self.series / "runroot")]
        if self.name == "buildah-vfs":
            return [*flags, "--storage-driver", "vfs"]
        if self.name == "buildah-overlay":
            return [*flags, "--storage-driver", "overlay"]
        return [*flags, "--storage-driver", "overlay",
                "--storage-opt", f"overlay.mount_program={FUSE_OVERLAYFS}"]

    def env(self) -> dict[str, str]:
        assert self.series is not None
        env = dict(self.base_env)
        for var, sub in (("XDG_DATA_HOME", "data"), ("XDG_CONFIG_HOME", "config"),
                         ("XDG_CACHE_HOME", "cache")):
            env[var] = str(self.series / sub)
        if self.is_rootbuild:
            env["ROOTBUILD_ROOT"] = str(self.series / "root")
        if self.name == "rootbuild-spread":
            env["ROOTBUILD_CPU_PLACEMENT"] = "off"
        return env

    def reset(self, label: str) -> None:
        """A fresh, empty store for a new series."""
        self.clean()
        self.series = self.work / "stores" / f"{self.name}-{label}"
        for sub in ("data", "config", "cache"):
            (self.series / sub).mkdir(parents=True)

    def clean(self) -> None:
        if self.series is None:
            return
        if not self.is_rootbuild and (self.series / "root").exists():
            subprocess.run(["buildah", *self.storage_flags(), "rm", "--all"], env=self.env(),
                           stdin=subprocess.DEVNULL, capture_output=True, check=False)
        remove_tree(self.series)
        self.series = None

    def build(self, ctx: Path, tag: str, out: Path, log: Path,
              no_cache: bool = False) -> tuple[float, float]:
        """Build ``ctx`` and export it to the oci-archive ``out``: (total, export) seconds."""
        env = self.env()
        nocache = ["--no-cache"] if no_cache else []
        if self.is_rootbuild:
            snapshotter = ["--snapshotter", "overlay"] if self.name == "rootbuild-overlay" \
                else []
            total = run_logged([str(ROOTBUILD), "build", "--progress", "plain", *nocache,
                                *snapshotter, "-t", tag, "--output", f"oci-archive:{out}",
                                str(ctx)],
                               log, env)
            check_archive(out)
            return total, 0.0
        flags = self.storage_flags()
        build = run_logged(["buildah", *flags, "build", "--isolation", "chroot", "--layers",
                            *nocache, "--jobs", "0", "--tls-verify=false", "-t", tag,
                            str(ctx)],
                           log, env)
        export = run_logged(["buildah", *flags, "push", tag, f"oci-archive:{out}"], log, env)
        check_archive(out)
        return build + export, export


# ---------------------------------------------------------------------------- measurement


@dataclass
class Result:
    case: int
    builder: str
    run: int
    phase: str
    seconds: float
    export_seconds: float
    load: float  # 1-minute load average when the build started (the host is shared)
    stamp: str = ""  # rootbuild_stamp() at the build: which rootbuild install ran


@dataclass
class Bench:
    work: Path
    builders: list[Builder]
    cases: list[int]
    runs: int
    results: list[Result] = field(default_factory=list)
    unavailable: dict[str, str] = field(default_factory=dict)
    skipped: dict[int, str] = field(default_factory=dict)
    on_result: Callable[[], None] | None = None  # saves the results so far (--json)

    def series(self, b: Builder, case: Case, ctx: Path, run: int) -> None:
        """Cold build, unchanged rebuild, rebuild after one context file changed."""
        b.reset(f"c{case.number}-r{run}")
        logs = self.work / "logs"
        log = logs / f"case{case.number}-{b.name}-run{run}.log"
        log.write_text("")
        outdir = self.work / "out"
        for phase in PHASES:
            if phase == "changed":
                if case.changed_file is None:
                    continue
                target = ctx / case.changed_file
                original = target.read_bytes()
                target.write_bytes(original + f"changed run {run} {b.name}\n".encode())
            out = outdir / f"{b.name}-{phase}.tar"
            load = os.getloadavg()[0]
            try:
                with open(log, "a") as f:
                    f.write(f"\n===== {phase} =====\n")
                total, export = b.build(ctx, f"bench/case{case.number}:{phase}", out, log,
                                        no_cache=phase == "nocache")
            finally:
                if phase == "changed":
                    target.write_bytes(original)
                out.unlink(missing_ok=True)
            self.results.append(Result(case.number, b.name, run, phase, total, export, load,
                                       rootbuild_stamp() if b.is_rootbuild else ""))
            if self.on_result is not None:
                self.on_result()
            print(f"  run {run} case {case.number} {b.name:16} {phase:7} {total:8.2f} s"
                  + (f" (export {export:.2f} s)" if export else ""), flush=True)
        b.clean()

    def median(self, case: int, builder: str, phase: str) -> float | None:
        vals = [r.seconds for r in self.results
                if (r.case, r.builder, r.phase) == (case, builder, phase)]
        return statistics.median(vals) if vals else None


def probe(b: Builder, work: Path, reg: Registry) -> str | None:
    """Try one tiny build with a RUN on the busybox base; the error text if it fails."""
    ctx = work / "probe"
    ctx.mkdir(exist_ok=True)
    (ctx / "Dockerfile").write_text(f"FROM {reg.host}/busybox:latest\nRUN echo ok > /ok\n")
    b.reset("probe")
    log = work / "logs" / f"probe-{b.name}.log"
    try:
        b.build(ctx, "bench/probe", work / "out" / f"probe-{b.name}.tar", log)
    except BenchError as exc:
        return str(exc)
    finally:
        (work / "out" / f"probe-{b.name}.tar").unlink(missing_ok=True)
        b.clean()
    return None


def network_reason() -> str | None:
    try:
        with urllib.request.urlopen(DEBIAN_MIRROR, timeout=10) as resp:
            resp.read(64)
    except (OSError, urllib.error.URLError) as exc:
        return f"deb.debian.org unreachable ({exc})"
    return None


# ---------------------------------------------------------------------------- reporting


def _version(argv: list[str], prefix: str = "") -> str:
    """The first output line of ``argv`` that starts with ``prefix``."""
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=20)
    except OSError as exc:
        return f"? ({exc})"
    lines = [ln.strip() for ln in (proc.stdout + proc.stderr).splitlines()
             if ln.strip().startswith(prefix)]
    return lines[0] if lines else "?"


def _fs_type(path: Path) -> str:
    """The filesystem type of the mount holding ``path`` (/proc/mounts, longest prefix)."""
    best, fstype = "", "?"
    for line in Path("/proc/mounts").read_text().splitlines():
        fields = line.split()
        mnt = fields[1].replace("\\040", " ")
        inside = str(path) == mnt or str(path).startswith(mnt.rstrip("/") + "/")
        if inside and len(mnt) >= len(best):
            best, fstype = mnt, f"{fields[2]} on {fields[0]}"
    return fstype


def machine_info(work: Path) -> dict[str, str]:
    fs = _fs_type(work)
    mem = next((ln.split()[1] for ln in Path("/proc/meminfo").read_text().splitlines()
                if ln.startswith("MemTotal:")), "0")
    return {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "cores": str(NCPU),
        "memory": f"{int(mem) // 1024 // 1024} GiB",
        "kernel": platform.release(),
        "python": platform.python_version(),
        "rootbuild": f"{_version([str(ROOTBUILD), '--version'], 'rootbuild')} ({ROOTBUILD})",
        "buildah": _version(["buildah", "--version"], "buildah"),
        "fuse-overlayfs": _version([FUSE_OVERLAYFS, "--version"], "fuse-overlayfs"),
        "docker-registry": _version([REGISTRY_BIN, "--version"]),
        "work dir": f"{work} ({fs}{', in memory, not the disk' if 'tmpfs' in fs else ''})",
    }


def buildkit_refs(case: int) -> dict[str, float]:
    """Phase -> BuildKit's seconds for ``case`` (issue 14): its no-cache figure (bases
    pulled), case 4's older cold figure, and the unchanged rebuild for every case."""
    refs: dict[str, float] = {}
    if case in BUILDKIT_COLD:
        refs["cold"] = BUILDKIT_COLD[case]
    refs["warm"] = BUILDKIT_WARM
    if case in BUILDKIT_NOCACHE:
        refs["nocache"] = BUILDKIT_NOCACHE[case]
    return refs


def _fmt(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f} s"


def _ratio(a: float | None, b: float | None) -> str:
    return "-" if a is None or b is None or b == 0 else f"{a / b:.2f}"


def report(bench: Bench, info: dict[str, str]) -> list[str]:
    lines = ["", "## Peers: rootbuild vs buildah", ""]
    lines += [f"- {k}: {v}" for k, v in info.items()]
    lines.append(f"- runs: {bench.runs} (medians)")
    if bench.results:
        loads = [r.load for r in bench.results]
        lines.append(f"- 1-min load average at build starts: {min(loads):.1f}-{max(loads):.1f}"
                     f" (median {statistics.median(loads):.1f}) on {NCPU} cores")
    for name, why in bench.unavailable.items():
        lines.append(f"- UNAVAILABLE {name}: {why.splitlines()[0]}")
    stamps = sorted({r.stamp for r in bench.results if r.stamp})
    if len(stamps) > 1:
        lines.append(f"- WARNING: the rootbuild install changed during the run ({stamps});"
                     " its medians mix installs (the --json file has a stamp per build)")
    names = [b.name for b in bench.builders if b.name not in bench.unavailable]
    verdicts: list[str] = []
    buildkit: list[str] = []
    for num in bench.cases:
        case = CASES[num]
        lines += ["", f"### Case {num}: {case.title}", ""]
        if num in bench.skipped:
            lines.append(f"skipped: {bench.skipped[num]}")
            continue
        lines.append("| builder | " + " | ".join(PHASE_TITLES[p] for p in PHASES) + " | "
                     + " | ".join(f"rb/peer {p}" for p in PHASES) + " | vs BuildKit |")
        lines.append("|---|" + "---|" * (2 * len(PHASES) + 1))
        rb = {p: bench.median(num, "rootbuild", p) for p in PHASES}
        refs = buildkit_refs(num)
        if refs:
            source = "the earlier issue" if num in BUILDKIT_COLD else "issue 14"
            lines.append(f"| BuildKit rootless (reference: {source}) | "
                         + " | ".join(_fmt(refs.get(p)) for p in PHASES) + " | "
                         + " | ".join("" for _ in PHASES) + " | 1.00 |")
        for name in names:
            m = {p: bench.median(num, name, p) for p in PHASES}
            ratios = ["" if name == "rootbuild" else _ratio(rb[p], m[p]) for p in PHASES]
            vs = ", ".join(f"{p} {_ratio(m[p], ref)}" for p, ref in refs.items()
                           if m[p] is not None)
            lines.append(f"| {name} | " + " | ".join(_fmt(m[p]) for p in PHASES) + " | "
                         + " | ".join(ratios) + f" | {vs or '-'} |")
        if "rootbuild" in names:
            for name in names:
                if name.startswith("rootbuild"):
                    continue
                for p in PHASES:
                    peer, mine = bench.median(num, name, p), rb[p]
                    if mine is not None and peer is not None and mine >= peer:
                        verdicts.append(f"case {num} {p}: rootbuild {mine:.2f} s >= "
                                        f"{name} {peer:.2f} s")
            if rb["warm"] is not None and rb["warm"] >= 1.0:
                verdicts.append(f"case {num}: unchanged rebuild {rb['warm']:.2f} s >= 1 s")
            for p, ref in refs.items():
                mine = rb[p]
                if mine is None:
                    continue
                over = "" if mine <= 0.8 * ref else (
                    " (over 0.8x)" if mine <= 1.3 * ref else " (over 0.8x and 1.3x)")
                buildkit.append(f"case {num} {p}: rootbuild {mine:.2f} s, BuildKit "
                                f"{ref:.2f} s: {mine / ref:.2f}x{over}")
    lines += ["", "### Targets: rootbuild ahead of every buildah configuration (ratio < 1.0), "
              "unchanged rebuild < 1 s", ""]
    lines += [f"- missed: {v}" for v in verdicts] or ["- all met"]
    lines += ["", "### Against rootless BuildKit (issue 14's figures): target <= 0.8x with the "
              "chosen snapshotter, <= 1.3x with the FUSE overlay; unchanged rebuild <= 0.10 s",
              ""]
    lines += [f"- {line}" for line in buildkit] or ["- no case with a BuildKit figure measured"]
    return lines


# ---------------------------------------------------------------------------- teardown checks


def leftovers(work: Path) -> list[str]:
    found = []
    for line in Path("/proc/mounts").read_text().splitlines():
        mnt = line.split()[1].replace("\\040", " ")
        if mnt.startswith(str(work)):
            found.append(f"mount {mnt}")
    me = os.getpid()
    for pid in os.listdir("/proc"):
        if not pid.isdigit() or int(pid) == me:
            continue
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if str(work) in cmd and Path(f"/proc/{pid}").stat().st_uid == os.getuid():
            found.append(f"process {pid}: {cmd[:120]}")
    return found


def _on_signal(signum: int, frame: FrameType | None) -> None:
    del frame
    raise KeyboardInterrupt(f"signal {signum}")


@dataclass
class Opts:
    runs: int
    cases: list[int]
    builders: list[str]
    work: Path
    json_out: Path | None
    debian_tar: Path | None
    keep_logs: bool
    report_from: Path | None


def parse_args(argv: list[str]) -> Opts:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--cases", default=",".join(map(str, ALL_CASES)),
                   help="comma-separated case numbers (1,2,3,4,6,7,8,9; 5 = the warm "
                        "columns)")
    p.add_argument("--builders", default=",".join(BUILDERS),
                   help=",".join(BUILDERS + EXTRA_BUILDERS))
    p.add_argument("--work", type=Path, default=Path.home() / "rb-peers",
                   help="work directory, on a real disk (default ~/rb-peers); removed after")
    p.add_argument("--json", type=Path, default=None, help="write every measurement here")
    p.add_argument("--debian-tar", type=Path, default=None,
                   help="debootstrap minbase tar (cases 2 and 6 need it)")
    p.add_argument("--keep-logs", action="store_true", help="keep WORK/logs after the run")
    p.add_argument("--report", type=Path, default=None, metavar="JSON",
                   help="build nothing: print the tables of an earlier --json file")
    a = p.parse_args(argv)
    cases = [int(c) for c in a.cases.split(",") if c and c != "5"]
    builders = [b for b in a.builders.split(",") if b]
    for c in cases:
        if c not in CASES:
            p.error(f"unknown case {c}")
    for b in builders:
        if b not in BUILDERS + EXTRA_BUILDERS:
            p.error(f"unknown builder {b} (known: {', '.join(BUILDERS + EXTRA_BUILDERS)})")
    return Opts(a.runs, cases, builders, a.work.absolute(), a.json, a.debian_tar, a.keep_logs,
                a.report)


def report_from_json(path: Path) -> int:
    """The tables of an earlier (possibly partial) ``--json`` file."""
    doc = json.loads(path.read_text())
    bench = Bench(Path("."), [Builder(n, Path("."), {}) for n in doc["builders"]],
                  [int(c) for c in doc["cases"]], int(doc["runs"]))
    bench.unavailable = dict(doc["unavailable"])
    bench.skipped = {int(k): v for k, v in doc["skipped"].items()}
    bench.results = [Result(**{"load": 0.0, **r}) for r in doc["results"]]
    done = sorted({r.run for r in bench.results})
    print("\n".join(report(bench, dict(doc["machine"]))))
    print(f"\n(from {path}: runs {done} of {bench.runs} present)")
    return 0


def main(argv: list[str]) -> int:
    opts = parse_args(argv)
    if opts.report_from is not None:
        return report_from_json(opts.report_from)
    if os.getuid() == 0:
        print("peers: run as an unprivileged user (sudo bash scripts/bench-peers.sh)",
              file=sys.stderr)
        return 1
    if opts.work.exists():
        print(f"peers: {opts.work} exists; remove it or pass another --work", file=sys.stderr)
        return 1
    signal.signal(signal.SIGTERM, _on_signal)
    opts.work.mkdir(parents=True)
    for sub in ("logs", "out", "contexts", "bases"):
        (opts.work / sub).mkdir()
    base_env = {k: v for k, v in os.environ.items() if not k.startswith(("ROOTBUILD_", "XDG_"))}
    base_env["XDG_RUNTIME_DIR"] = os.environ.get("XDG_RUNTIME_DIR") or str(opts.work / "run")
    Path(base_env["XDG_RUNTIME_DIR"]).mkdir(mode=0o700, exist_ok=True)
    base_env["CONTAINERS_REGISTRIES_CONF"] = str(opts.work / "registries.conf")
    bench = Bench(opts.work, [Builder(n, opts.work, base_env) for n in opts.builders],
                  opts.cases, opts.runs)
    info = machine_info(opts.work)
    for k, v in info.items():
        print(f"{k}: {v}", flush=True)
    reg: Registry | None = None
    status = 0

    def save() -> None:
        if opts.json_out is not None:
            opts.json_out.write_text(json.dumps({
                "machine": info, "runs": opts.runs, "cases": opts.cases,
                "builders": opts.builders, "unavailable": bench.unavailable,
                "skipped": {str(k): v for k, v in bench.skipped.items()},
                "results": [r.__dict__ for r in bench.results],
            }, indent=1))

    bench.on_result = save
    try:
        reg = start_registry(opts.work / "registry")
        (opts.work / "registries.conf").write_text(
            f'[[registry]]\nlocation = "{reg.host}"\ninsecure = true\n')
        needs_debian = any(CASES[c].base == "debian" for c in opts.cases)
        if needs_debian and (opts.debian_tar is None or not opts.debian_tar.is_file()):
            for c in opts.cases:
                if CASES[c].base == "debian":
                    bench.skipped[c] = f"no Debian minbase tar (--debian-tar {opts.debian_tar})"
        if 6 in opts.cases and 6 not in bench.skipped:
            why = network_reason()
            if why:
                bench.skipped[6] = why
        print(f"registry {reg.host}; pushing bases", flush=True)
        push_bases(opts.work, reg, opts.debian_tar if needs_debian and not all(
            c in bench.skipped for c in opts.cases if CASES[c].base == "debian") else None,
            dict(base_env, ROOTBUILD_ROOT=str(opts.work / "bases" / "store"),
                 XDG_DATA_HOME=str(opts.work / "bases" / "data")))  # skopeo's blob-info cache
        for b in bench.builders:
            why = probe(b, opts.work, reg)
            if why:
                bench.unavailable[b.name] = why
                print(f"UNAVAILABLE {b.name}:\n{why}", flush=True)
        active = [b for b in bench.builders if b.name not in bench.unavailable]
        contexts: dict[int, Path] = {}
        for num in opts.cases:
            if num in bench.skipped:
                print(f"case {num} skipped: {bench.skipped[num]}", flush=True)
                continue
            ctx = opts.work / "contexts" / f"case{num}"
            ctx.mkdir()
            CASES[num].make_context(ctx)
            (ctx / "Dockerfile").write_text(CASES[num].dockerfile(reg.host))
            contexts[num] = ctx
        for run in range(opts.runs):
            order = active[run % len(active):] + active[: run % len(active)] if active else []
            for num, ctx in contexts.items():
                for b in order:
                    bench.series(b, CASES[num], ctx, run)
        lines = report(bench, info)
        print("\n".join(lines), flush=True)
        if bench.unavailable:
            status = 2
    except BenchError as exc:
        print(f"peers: {exc}", file=sys.stderr, flush=True)
        status = 1
    except KeyboardInterrupt as exc:
        print(f"peers: interrupted ({exc or 'Ctrl-C'}); cleaning up", file=sys.stderr)
        status = 130
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        for b in bench.builders:
            try:
                b.clean()
            except BenchError as exc:
                print(f"peers: cleanup: {exc}", file=sys.stderr)
                status = status or 1
        if reg is not None:
            reg.stop()
        save()
        left = leftovers(opts.work)
        if left:
            print("peers: LEFT BEHIND (not removed):\n  " + "\n  ".join(left), file=sys.stderr)
            status = status or 1
        else:
            logs = opts.work / "logs"
            if opts.keep_logs or status:
                kept = opts.work.parent / f"{opts.work.name}-logs"
                remove_tree(kept)
                shutil.move(logs, kept)
                print(f"logs kept in {kept}", file=sys.stderr)
            remove_tree(opts.work)
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
