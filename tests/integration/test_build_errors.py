"""Bad input gets a clear error and loses nothing: the real `rootbuild build`, run as the
unprivileged build user, on broken Dockerfiles, contexts, base images and flags.

Every case asserts: a non-zero exit; stderr (with ``-q``, so no progress lines) is exactly
one ``rootbuild: ...`` line, no traceback, naming the Dockerfile line where there is one;
nothing on stdout; and the store — populated by one good build first, so the comparison
means something — is exactly as it was (errors.py: "a failed build leaves the store as it
was"). Base images are written in the test (layers made in memory with tarfile).
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import re
import tarfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from rootbuild.image.oci import ANNOTATION_REF_NAME, OCI_CONFIG, OCI_INDEX, OCI_LAYER, OCI_MANIFEST
from rootbuild.platform import host_platform

if TYPE_CHECKING:
    from conftest import Harness

pytestmark = pytest.mark.integration

GOOD_DOCKERFILE = "FROM scratch\nCOPY a.txt /a.txt\n"


# -- helpers -----------------------------------------------------------------------------------


def _sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def make_tar(files: Mapping[str, bytes]) -> bytes:
    """A plain layer tar: parents as directories, then the files (root-owned, mtime 0)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        dirs = sorted({str(Path(n).parent) for n in files} - {"."})
        for d in dirs:
            info = tarfile.TarInfo(d)
            info.type, info.mode = tarfile.DIRTYPE, 0o755
            tar.addfile(info)
        for name, data in sorted(files.items()):
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), 0o644
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _tar_of(members: Mapping[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o644
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def oci_archive(
    path: Path, layers: list[bytes], *, mutate_blob: Callable[[bytes], bytes] | None = None
) -> Path:
    """Write an ``oci-archive:`` (tar of an OCI layout, ref name ``latest``) whose layers
    are the given plain tars; ``mutate_blob`` tampers with each layer blob *after* its
    digest went into the manifest."""
    blobs: dict[str, bytes] = {}
    descs, diff_ids = [], []
    for plain in layers:
        digest = _sha(plain)
        diff_ids.append(digest)
        descs.append({"mediaType": OCI_LAYER, "digest": digest, "size": len(plain)})
        blobs[digest] = mutate_blob(plain) if mutate_blob else plain
    config = json.dumps({
        **host_platform().to_oci(),
        "config": {},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
        "history": [{"created_by": f"layer {n}"} for n in range(len(layers))],
    }).encode()
    blobs[_sha(config)] = config
    manifest = json.dumps({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": _sha(config), "size": len(config)},
        "layers": descs,
    }).encode()
    blobs[_sha(manifest)] = manifest
    index = json.dumps({
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [{
            "mediaType": OCI_MANIFEST, "digest": _sha(manifest), "size": len(manifest),
            "annotations": {ANNOTATION_REF_NAME: "latest"},
        }],
    }).encode()
    members = {"oci-layout": b'{"imageLayoutVersion":"1.0.0"}', "index.json": index}
    members.update({f"blobs/sha256/{d.removeprefix('sha256:')}": b for d, b in blobs.items()})
    path.write_bytes(_tar_of(members))
    return path


def docker_archive(path: Path, layer: bytes, diff_id: str) -> Path:
    """A ``docker save`` archive with one layer whose config claims ``diff_id``."""
    config = json.dumps({
        **host_platform().to_oci(),
        "config": {},
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
    }).encode()
    manifest = json.dumps(
        [{"Config": "config.json", "RepoTags": ["base:latest"], "Layers": ["l0/layer.tar"]}]
    ).encode()
    path.write_bytes(
        _tar_of({"config.json": config, "l0/layer.tar": layer, "manifest.json": manifest})
    )
    return path


@pytest.fixture
def ctx(rb: Harness) -> Path:
    """A context with one file, and a store holding one good build (tag ``good``)."""
    context = rb.make_context("ctx", {"a.txt": "hello\n", "Dockerfile": GOOD_DOCKERFILE})
    rb.run("build", "-q", "-t", "good", str(context))
    assert rb.store_snapshot(), "the good build stored nothing"
    return context


def set_dockerfile(rb: Harness, ctx: Path, text: str) -> None:
    path = ctx / "Dockerfile"
    path.write_text(text)
    if os.getuid() == 0:
        os.lchown(path, rb.user.uid, rb.user.gid)


def expect_error(
    rb: Harness, ctx: Path | str, pattern: str, *args: str, exit_code: int | None = None
) -> str:
    """Run a build that must fail: one clear stderr line matching ``pattern``, store kept."""
    before = rb.store_snapshot()
    proc = rb.run("build", "-q", *args, str(ctx), check=False)
    assert proc.returncode != 0, f"build succeeded:\n{proc.stdout}\n{proc.stderr}"
    if exit_code is not None:
        assert proc.returncode == exit_code, proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, f"expected one stderr line, got:\n{proc.stderr}"
    assert re.fullmatch(pattern, lines[0]), f"{lines[0]!r} does not match {pattern!r}"
    assert proc.stdout == "", proc.stdout
    after = rb.store_snapshot()
    assert after == before, _store_diff(before, after)
    return lines[0]


def _store_diff(before: dict[str, tuple[int, int]], after: dict[str, tuple[int, int]]) -> str:
    added = sorted(set(after) - set(before))
    removed = sorted(set(before) - set(after))
    changed = sorted(k for k in set(before) & set(after) if before[k] != after[k])
    return f"store changed: added={added} removed={removed} changed={changed}"


def expect_dockerfile_error(rb: Harness, ctx: Path, dockerfile: str, pattern: str,
                            *args: str) -> str:
    set_dockerfile(rb, ctx, dockerfile)
    return expect_error(rb, ctx, pattern, *args)


# -- Dockerfile syntax ---------------------------------------------------------------------------


def test_unknown_instruction(rb: Harness, ctx: Path) -> None:
    expect_dockerfile_error(
        rb, ctx, "FROM scratch\nCOPY a.txt /a\nCOPPY a.txt /b\n",
        r"rootbuild: Dockerfile:3: unknown instruction: COPPY \(did you mean COPY\?\)",
    )


def test_copy_with_one_argument(rb: Harness, ctx: Path) -> None:
    expect_dockerfile_error(
        rb, ctx, "FROM scratch\nCOPY a.txt\n",
        r"rootbuild: Dockerfile:2: COPY requires at least two arguments.*",
    )


def test_dockerfile_with_only_arg(rb: Harness, ctx: Path) -> None:
    expect_dockerfile_error(
        rb, ctx, "ARG VERSION=1\n",
        r"rootbuild: Dockerfile(:1)?: .*no (stages|FROM).*",
    )


def test_required_variable_unset(rb: Harness, ctx: Path) -> None:
    expect_dockerfile_error(
        rb, ctx, 'FROM scratch\nARG v\nENV x="${v:?must be set}"\n',
        r"rootbuild: Dockerfile:3: .*v: must be set",
    )


def test_required_variable_empty_message(rb: Harness, ctx: Path) -> None:
    expect_dockerfile_error(
        rb, ctx, "FROM scratch\nARG v\nCOPY a.txt /${v:?}\n",
        r"rootbuild: Dockerfile:3: .*\bv: .*(unset|not set|required).*",
    )


def test_unterminated_variable(rb: Harness, ctx: Path) -> None:
    expect_dockerfile_error(
        rb, ctx, "FROM scratch\nARG v\nENV x=${v:-a\n",
        r"rootbuild: Dockerfile:3: .*missing '}'.*",
    )


@pytest.mark.parametrize("mode", ["abc", "u+q", "17777", "-1"])
def test_malformed_chmod(rb: Harness, ctx: Path, mode: str) -> None:
    expect_dockerfile_error(
        rb, ctx, f"FROM scratch\nCOPY --chmod={mode} a.txt /x\n",
        rf"rootbuild: Dockerfile:2: .*chmod.*{re.escape(mode)}.*",
    )


def test_chown_to_unknown_user(rb: Harness, ctx: Path) -> None:
    # `good` has no /etc/passwd at all; a base with one that lacks the name fails the same.
    passwd = b"root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000::/home/app:/bin/sh\n"
    base = oci_archive(rb.workdir / "base.tar", [make_tar({"etc/passwd": passwd})])
    # The COPY makes this good build extract the base layer too: a failed build may add
    # the extracted tree of a base layer whose blob is already stored (a cache, like a pull).
    rb.run("build", "-q", "-t", "withpasswd", "-f", "-", str(ctx),
           input=f"FROM oci-archive:{base}\nCOPY a.txt /a\n".encode())
    expect_dockerfile_error(
        rb, ctx, "FROM withpasswd\nCOPY --chown=app a.txt /ok\nCOPY --chown=nobody a.txt /x\n",
        r"rootbuild: Dockerfile:3: --chown=nobody: unable to find user 'nobody' .*etc/passwd",
    )
    expect_dockerfile_error(
        rb, ctx, "FROM good\nCOPY --chown=0:nogroup a.txt /x\n",
        r"rootbuild: Dockerfile:2: --chown=0:nogroup: unable to find group 'nogroup' .*",
    )


# -- stages ------------------------------------------------------------------------------------


def test_stage_cycle(rb: Harness, ctx: Path) -> None:
    expect_dockerfile_error(
        rb, ctx,
        "FROM scratch AS a\nCOPY --from=b /x /x\nFROM scratch AS b\nCOPY --from=a /x /x\n",
        r"rootbuild: Dockerfile:\d: .*cycle.*\ba\b.*\bb\b.*",
    )


def test_stage_copying_from_itself(rb: Harness, ctx: Path) -> None:
    expect_dockerfile_error(
        rb, ctx, "FROM scratch AS a\nCOPY a.txt /a\nCOPY --from=a /a /b\n",
        r"rootbuild: Dockerfile:3: .*cycle.*",
    )


def test_target_naming_no_stage(rb: Harness, ctx: Path) -> None:
    set_dockerfile(rb, ctx, "FROM scratch AS build\nCOPY a.txt /a\n")
    expect_error(rb, ctx, r'rootbuild: target stage "nope" could not be found.*',
                 "--target", "nope")


def test_run_without_a_shell_in_the_image(rb: Harness, ctx: Path) -> None:
    """An image with no /bin/sh: RUN's shell form fails clearly, naming the line."""
    expect_dockerfile_error(
        rb, ctx, "FROM good\nCOPY a.txt /b\nRUN echo hi\n",
        r'rootbuild: Dockerfile:3: RUN: .*"/bin/sh".*',
    )


def test_run_in_an_unused_stage_is_skipped(rb: Harness, ctx: Path) -> None:
    """BuildKit builds only the stages the target needs; an unused RUN is never reached."""
    set_dockerfile(rb, ctx, "FROM scratch AS unused\nRUN false\nFROM good\nCOPY a.txt /b\n")
    rb.run("build", "-q", str(ctx))


# -- build context -------------------------------------------------------------------------------


def test_missing_source_after_a_successful_copy(rb: Harness, ctx: Path) -> None:
    # The first COPY wrote a layer into staging: it must not reach the store.
    expect_dockerfile_error(
        rb, ctx, "FROM good\nCOPY a.txt /first\nCOPY nope.txt /second\n",
        r'rootbuild: Dockerfile:3: COPY: source "nope.txt" not found in build context',
    )


@pytest.mark.parametrize(
    ("link", "source"),
    [("/etc", "link/passwd"), ("../outside", "link/secret"), ("../outside", "link")],
)
def test_context_symlink_escaping(rb: Harness, ctx: Path, link: str, source: str) -> None:
    outside = rb.make_context("outside", {"secret": "s3cr3t\n"})
    assert outside.exists()
    (ctx / "link").symlink_to(link)
    if os.getuid() == 0:
        os.lchown(ctx / "link", rb.user.uid, rb.user.gid)
    expect_dockerfile_error(
        rb, ctx, f"FROM scratch\nCOPY {source} /x\n",
        rf'rootbuild: Dockerfile:2: (COPY: )?source "{re.escape(source)}" '
        r"(is outside the build context|not found in build context)",
    )


def test_dotdot_source(rb: Harness, ctx: Path) -> None:
    rb.make_context("outside", {"secret": "s3cr3t\n"})
    expect_dockerfile_error(
        rb, ctx, "FROM scratch\nCOPY ../outside/secret /x\n",
        r'rootbuild: Dockerfile:2: (COPY: )?source "\.\./outside/secret" '
        r"(is outside the build context|not found in build context)",
    )


def test_nonexistent_context_dir(rb: Harness, ctx: Path) -> None:
    expect_error(rb, rb.workdir / "no-such-dir",
                 r"rootbuild: .*no-such-dir.*([Nn]o such file or directory|not found).*")


# -- command line --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "output", ["foo", "type=tar,dest=x", "oci-archive:", "type=oci", "dir:"]
)
def test_bad_output_syntax(rb: Harness, ctx: Path, output: str) -> None:
    expect_error(rb, ctx, rf"rootbuild: parse (output|image reference) '{re.escape(output)}': .+",
                 "--output", output, exit_code=2)


# -- base images ---------------------------------------------------------------------------------


# Not in the store: rootbuild pulls, as docker build does. These machines have no route to
# public registries, so the pull fails; with one it would be refused (no such repository).
PULL_FAILED = r"(reach registry [\w.-]+: .*|.*(unauthorized|denied|unknown|not found).*)"


def test_missing_base_image(rb: Harness, ctx: Path) -> None:
    expect_dockerfile_error(
        rb, ctx, "FROM nosuch\nCOPY a.txt /a\n",
        r"rootbuild: Dockerfile:1: pull nosuch for linux/\w+ \(not in the store\): "
        + PULL_FAILED,
    )


def test_registry_base_image(rb: Harness, ctx: Path) -> None:
    expect_dockerfile_error(
        rb, ctx, "FROM docker.io/library/alpine:3.20\n",
        r"rootbuild: Dockerfile:1: pull docker\.io/library/alpine:3\.20 for linux/\w+ "
        r"\(not in the store\): " + PULL_FAILED,
    )


def test_registry_image_in_copy_from(rb: Harness, ctx: Path) -> None:
    expect_dockerfile_error(
        rb, ctx, "FROM scratch\nCOPY --from=ghcr.io/acme/tools:1 /bin/x /x\n",
        r"rootbuild: Dockerfile:2: pull ghcr\.io/acme/tools:1 for linux/\w+ "
        r"\(not in the store\): " + PULL_FAILED,
    )


def test_truncated_oci_archive_base(rb: Harness, ctx: Path) -> None:
    good = oci_archive(rb.workdir / "full.tar", [make_tar({"f": os.urandom(64 << 10)})])
    data = good.read_bytes()
    cut = rb.workdir / "cut.tar"
    cut.write_bytes(data[: len(data) // 2])
    expect_dockerfile_error(
        rb, ctx, f"FROM oci-archive:{cut}\nCOPY a.txt /a\n",
        r"rootbuild: Dockerfile:1: .*(truncat|corrupt|unexpected end|missing|not found).*",
    )


def test_base_blob_with_wrong_digest(rb: Harness, ctx: Path) -> None:
    def flip(blob: bytes) -> bytes:
        at = 512 + 10  # inside the first file's data
        return blob[:at] + bytes([blob[at] ^ 0xFF]) + blob[at + 1:]

    bad = oci_archive(rb.workdir / "bad.tar", [make_tar({"f": b"x" * 4096})], mutate_blob=flip)
    expect_dockerfile_error(
        rb, ctx, f"FROM oci-archive:{bad}\nCOPY a.txt /a\n",
        r"rootbuild: Dockerfile:1: .*(digest|sha256).*",
    )


def test_base_blob_with_lying_size(rb: Harness, ctx: Path) -> None:
    def grow(blob: bytes) -> bytes:
        return blob + b"\0" * 1024

    bad = oci_archive(rb.workdir / "bad.tar", [make_tar({"f": b"x"})], mutate_blob=grow)
    expect_dockerfile_error(
        rb, ctx, f"FROM oci-archive:{bad}\n",
        r"rootbuild: Dockerfile:1: .*(size|digest|bytes its descriptor).*",
    )


def test_docker_archive_layer_not_matching_diff_ids(rb: Harness, ctx: Path) -> None:
    claimed = make_tar({"etc/os-release": b"ID=good\n"})
    actual = make_tar({"etc/os-release": b"ID=evil\n"})
    bad = docker_archive(rb.workdir / "bad-docker.tar", gzip.compress(actual), _sha(claimed))
    expect_dockerfile_error(
        rb, ctx, f"FROM docker-archive:{bad}\nCOPY a.txt /a\n",
        r"rootbuild: Dockerfile:1: .*diff_?ID.*",
    )


def test_base_archive_missing_file(rb: Harness, ctx: Path) -> None:
    expect_dockerfile_error(
        rb, ctx, f"FROM oci-archive:{rb.workdir}/nope.tar\n",
        r"rootbuild: Dockerfile:1: .*nope\.tar.*",
    )


def test_context_symlink_loop(rb: Harness, ctx: Path) -> None:
    for name, target in (("loop1", "loop2"), ("loop2", "loop1")):
        (ctx / name).symlink_to(target)
        if os.getuid() == 0:
            os.lchown(ctx / name, rb.user.uid, rb.user.gid)
    expect_dockerfile_error(
        rb, ctx, "FROM scratch\nCOPY loop1 /x\n",
        r'rootbuild: Dockerfile:2: .*"loop1".*(?i:too many levels of symbolic links|loop).*',
    )


def test_in_image_symlink_loop_in_destination(rb: Harness, ctx: Path) -> None:
    layer = io.BytesIO()
    with tarfile.open(fileobj=layer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, target in (("a", "b"), ("b", "/a")):
            info = tarfile.TarInfo(name)
            info.type, info.linkname = tarfile.SYMTYPE, target
            tar.addfile(info)
    base = oci_archive(rb.workdir / "loop.tar", [layer.getvalue()])
    # A good build first, so the base is imported and extracted: the store stays unchanged.
    rb.run("build", "-q", "-t", "loopy", "-f", "-", str(ctx),
           input=f"FROM oci-archive:{base}\nCOPY a.txt /ok\n".encode())
    expect_dockerfile_error(
        rb, ctx, "FROM loopy\nCOPY a.txt /a/x\n",
        r"rootbuild: Dockerfile:2: .*too many levels of symbolic links.*",
    )


def test_forward_stage_reference(rb: Harness, ctx: Path) -> None:
    """BuildKit refuses ``--from`` naming a later stage when it dispatches the stage ("cannot
    copy from stage %q, it needs to be defined before current stage %q"); a stage that is
    not built is not checked."""
    expect_dockerfile_error(
        rb, ctx, "FROM scratch AS app\nCOPY --from=files /a.txt /app\nFROM scratch AS files\n"
        "COPY a.txt /a.txt\nFROM app\n",
        r'rootbuild: Dockerfile:2: .*stage "files".*defined before.*"app".*',
    )
    set_dockerfile(
        rb, ctx, "FROM scratch AS unused\nCOPY --from=files /a.txt /app\nFROM scratch AS files\n"
        "COPY a.txt /a.txt\n",
    )
    rb.run("build", "-q", str(ctx))
