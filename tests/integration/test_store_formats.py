"""The image store and the OCI/Docker formats, checked against real skopeo and umoci.

Images are built in the test (layers made in memory with tarfile), put into a store,
exported to ``oci:``, ``oci-archive:`` and ``docker-archive:``, validated by skopeo and
umoci, copied between forms by skopeo and imported back. Broken inputs must raise
ImageError and leave the store tree exactly as it was. These tests need no namespaces and
run as the current user; missing validators FAIL the test.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import multiprocessing
import os
import shutil
import subprocess
import tarfile
from pathlib import Path
from typing import Any

import pytest
import zstandard

from rootbuild.errors import ImageError
from rootbuild.image.archives import export_image, import_image
from rootbuild.image.digest import sha256_digest
from rootbuild.image.oci import (
    OCI_CONFIG,
    OCI_INDEX,
    OCI_LAYER,
    OCI_LAYER_GZIP,
    OCI_LAYER_ZSTD,
    OCI_MANIFEST,
    Descriptor,
    Index,
    Manifest,
    StoredImage,
)
from rootbuild.image.refs import parse_base_ref, parse_output
from rootbuild.image.store import Store
from rootbuild.platform import Platform, host_platform

pytestmark = pytest.mark.integration

HELLO = b"hello from rootbuild\n"


def require(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        pytest.fail(f"integration prerequisite missing: the {tool} command (apt install {tool})")
    return path


def run(*argv: str) -> str:
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    if proc.returncode != 0:
        pytest.fail(f"{' '.join(argv)} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
    return proc.stdout


def skopeo_inspect(ref: str) -> dict[str, Any]:
    return json.loads(run(require("skopeo"), "inspect", ref))  # type: ignore[no-any-return]


def skopeo_copy(src: str, dest: str) -> None:
    run(require("skopeo"), "--insecure-policy", "copy", "--quiet", src, dest)


def make_tar(files: dict[str, bytes]) -> bytes:
    """A layer tar: directories for every parent, then the files, root-owned, mtime 0."""
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


def put_image(
    store: Store,
    layers: list[tuple[bytes, str]],
    tag: str | None = None,
    platform: Platform | None = None,
) -> StoredImage:
    """Store an image whose layers are (plain tar, compression) pairs."""
    descs, diff_ids = [], []
    for plain, compression in layers:
        diff_ids.append(sha256_digest(plain))
        if compression == "gzip":
            descs.append(store.put_bytes(gzip.compress(plain, mtime=0), OCI_LAYER_GZIP))
        elif compression == "zstd":
            descs.append(
                store.put_bytes(zstandard.ZstdCompressor().compress(plain), OCI_LAYER_ZSTD)
            )
        else:
            descs.append(store.put_bytes(plain, OCI_LAYER))
    plat = platform or host_platform()
    config = {
        **plat.to_oci(),
        "config": {"Env": ["PATH=/usr/bin:/bin"], "Cmd": ["/bin/sh"]},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
        "history": [{"created_by": f"layer {n}"} for n in range(len(layers))],
    }
    config_bytes = json.dumps(config, sort_keys=True).encode()
    config_desc = store.put_bytes(config_bytes, OCI_CONFIG)
    manifest_bytes = Manifest(OCI_MANIFEST, config_desc, tuple(descs)).to_bytes()
    manifest_desc = store.put_bytes(manifest_bytes, OCI_MANIFEST)
    if tag:
        store.tag(tag, manifest_desc)
    return StoredImage.from_documents(manifest_desc, manifest_bytes, config_bytes)


def tiny_image(store: Store, tag: str | None = "test/app:v1") -> StoredImage:
    base = make_tar({"etc/hello.txt": HELLO, "bin/tool": b"#!/bin/sh\necho hi\n"})
    top = make_tar({"app/data.txt": b"top layer\n"})
    return put_image(store, [(base, "gzip"), (top, "none")], tag)


def snapshot(root: Path) -> dict[str, tuple[str, int, int, str]]:
    """(type, mode, size, sha256) of every path under ``root``: equal snapshots mean an
    unchanged tree."""
    out: dict[str, tuple[str, int, int, str]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in [*dirnames, *filenames]:
            path = Path(dirpath, name)
            st = path.lstat()
            kind = "d" if path.is_dir() else "l" if path.is_symlink() else "f"
            digest = hashlib.sha256(path.read_bytes()).hexdigest() if kind == "f" else ""
            out[str(path.relative_to(root))] = (
                kind,
                st.st_mode,
                st.st_size if kind == "f" else 0,
                digest,
            )
    return out


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store.open(tmp_path / "store")


@pytest.fixture
def other(tmp_path: Path) -> Store:
    """A second, empty store to import into."""
    return Store.open(tmp_path / "other")


def assert_same_image(a: StoredImage, b: StoredImage) -> None:
    assert a.manifest.digest == b.manifest.digest
    assert a.config == b.config
    assert a.layers == b.layers
    assert a.diff_ids == b.diff_ids


# -- the store ----------------------------------------------------------------------------


def test_store_layout_tags_and_prune(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ROOTBUILD_ROOT", raising=False)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    store = Store.open(None)
    assert store.root == tmp_path / "xdg" / "rootbuild"
    assert (store.root.stat().st_mode & 0o777) == 0o700
    for sub in ("blobs/sha256", "tmp", "layers"):
        assert (store.root / sub).is_dir()
    monkeypatch.setenv("ROOTBUILD_ROOT", str(tmp_path / "explicit"))
    assert Store.open(None).root == tmp_path / "explicit"

    image = tiny_image(store, tag="app")
    assert [name for name, _, _ in store.images()] == ["app:latest"]
    resolved = store.resolve("docker.io/library/app:latest")
    assert resolved is not None
    assert_same_image(resolved, image)
    assert store.resolve("app@" + image.manifest.digest) is not None
    assert store.resolve("nope") is None
    path = store.blob_path(image.config.digest)
    assert path.read_bytes() == store.read_blob(image.config)

    # An existing blob wins; putting the same bytes again is a no-op.
    assert store.put_bytes(path.read_bytes(), OCI_CONFIG) == image.config
    # A wrong expected digest never lands in blobs/.
    with (
        pytest.raises(ImageError, match=r"^verify b: digest is "),
        store.ingest("sha256:" + "0" * 64, 3, OCI_LAYER, "b") as writer,
    ):
        writer.write(b"abc")
    assert not store.blob_path("sha256:" + "0" * 64).exists()
    assert list(store.tmp_dir.iterdir()) == []

    kept_layer = store.layer_dir(image.diff_ids[0])
    kept_layer.mkdir()
    (kept_layer / "f").write_text("x")
    stale_layer = store.layer_dir("sha256:" + "9" * 64)
    (stale_layer / "ro").mkdir(parents=True)
    (stale_layer / "ro" / "f").write_text("y")
    os.chmod(stale_layer / "ro", 0o555)
    orphan = store.put_bytes(b"orphan", "application/octet-stream")
    stale_tmp = store.staging_dir()
    (stale_tmp / "junk").write_bytes(b"j" * 100)

    freed = store.prune()
    assert freed >= len(b"orphan") + 100
    assert not store.has_blob(orphan.digest)
    assert kept_layer.is_dir() and not stale_layer.exists()
    assert list(store.tmp_dir.iterdir()) == []
    for desc in (image.manifest, image.config, *image.layers):
        assert store.has_blob(desc.digest)

    assert store.untag("app") is True
    assert store.untag("app") is False
    assert store.images() == []
    store.prune()
    assert list((store.root / "blobs" / "sha256").iterdir()) == []
    assert list(store.layers_dir.iterdir()) == []


def test_store_tmp_spreads_new_directories_on_ext4(tmp_path: Path) -> None:
    """``tmp/`` carries ext4's "top directory" flag (chattr +T), so that every build's and
    every extraction's directory is placed away from recent deletions (store.spread_subdirs;
    the effect is measured in docs/benchmarks.md). Elsewhere opening the store still works."""
    store = Store.open(tmp_path / "store")
    fs = subprocess.run(["stat", "-f", "-c", "%T", str(tmp_path)], capture_output=True,
                        text=True, check=True).stdout.strip()
    if not fs.startswith("ext"):  # tmpfs, xfs, btrfs...: no such flag, nothing to check
        assert store.tmp_dir.is_dir()
        return
    attrs = subprocess.run(["lsattr", "-d", str(store.tmp_dir)], capture_output=True,
                           text=True, check=True).stdout.split()[0]
    assert "T" in attrs
    assert "T" not in subprocess.run(["lsattr", "-d", str(store.layers_dir)],
                                     capture_output=True, text=True).stdout.split()[0]
    Store.open(tmp_path / "store")  # idempotent


def test_prune_refuses_inside_own_build_lock(store: Store) -> None:
    from rootbuild.errors import StoreError

    with store.shared_lock(), pytest.raises(StoreError, match="holds the build lock"):
        store.prune()


def _worker(root: str, worker: int, rounds: int) -> None:
    store = Store.open(Path(root))
    for n in range(rounds):
        with store.shared_lock():
            shared = make_tar({"shared.txt": b"same for everyone\n"})
            mine = make_tar({f"w{worker}.txt": f"worker {worker} round {n}\n".encode()})
            image = put_image(store, [(shared, "gzip"), (mine, "none")])
            store.tag("shared:latest", image.manifest)
            store.tag(f"w{worker}:r{n}", image.manifest)


def _pruner(root: str, rounds: int) -> None:
    store = Store.open(Path(root))
    for _ in range(rounds):
        store.prune()


def test_concurrent_builds_do_not_corrupt_the_store(store: Store) -> None:
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_worker, args=(str(store.root), w, 15)) for w in range(4)]
    procs.append(ctx.Process(target=_pruner, args=(str(store.root), 10)))
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    names = {name for name, _, _ in store.images()}
    assert names == {"shared:latest"} | {f"w{w}:r{n}" for w in range(4) for n in range(15)}
    for name in names:
        image = store.resolve(name)
        assert image is not None
        for desc in image.layers:
            with store.open_blob(desc.digest) as f:
                assert sha256_digest(f.read()) == desc.digest
    for blob in (store.root / "blobs" / "sha256").iterdir():
        assert hashlib.sha256(blob.read_bytes()).hexdigest() == blob.name
    store.prune()
    assert list(store.tmp_dir.iterdir()) == []


# -- export, validated by skopeo and umoci ------------------------------------------------


def test_export_oci_layout_validated_by_skopeo_and_umoci(store: Store, tmp_path: Path) -> None:
    umoci = require("umoci")
    image = tiny_image(store)
    layout = tmp_path / "layout"
    export_image(store, image, parse_output(f"oci:{layout}:v1"))
    assert json.loads((layout / "oci-layout").read_text()) == {"imageLayoutVersion": "1.0.0"}
    info = skopeo_inspect(f"oci:{layout}:v1")
    assert info["Digest"] == image.manifest.digest
    assert info["Layers"] == [d.digest for d in image.layers]
    assert info["Env"] == ["PATH=/usr/bin:/bin"]

    # Adding a second tag keeps the first; re-exporting a tag replaces its entry.
    other_image = put_image(store, [(make_tar({"x": b"x"}), "gzip")])
    export_image(store, other_image, parse_output(f"oci:{layout}:v2"))
    export_image(store, image, parse_output(f"oci:{layout}:v1"))
    index = Index.parse((layout / "index.json").read_bytes())
    names = [d.annotation("org.opencontainers.image.ref.name") for d in index.manifests]
    assert sorted(names) == ["v1", "v2"]  # type: ignore[type-var]
    assert skopeo_inspect(f"oci:{layout}:v2")["Digest"] == other_image.manifest.digest

    bundle = tmp_path / "bundle"
    run(umoci, "unpack", "--rootless", "--image", f"{layout}:v1", str(bundle))
    assert (bundle / "rootfs" / "etc" / "hello.txt").read_bytes() == HELLO
    assert (bundle / "rootfs" / "app" / "data.txt").read_bytes() == b"top layer\n"


def test_export_refuses_a_directory_that_is_not_a_layout(store: Store, tmp_path: Path) -> None:
    image = tiny_image(store)
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "keep.txt").write_text("mine")
    with pytest.raises(ImageError, match="no oci-layout file"):
        export_image(store, image, parse_output(f"oci:{victim}"))
    assert [p.name for p in victim.iterdir()] == ["keep.txt"]


def test_export_oci_archive_is_deterministic_and_valid(store: Store, tmp_path: Path) -> None:
    image = tiny_image(store)
    first, second = tmp_path / "a.tar", tmp_path / "b.tar"
    export_image(store, image, parse_output(f"oci-archive:{first}:v1"))
    export_image(store, image, parse_output(f"oci-archive:{second}:v1"))
    assert first.read_bytes() == second.read_bytes()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
    info = skopeo_inspect(f"oci-archive:{first}")
    assert info["Digest"] == image.manifest.digest
    assert skopeo_inspect(f"oci-archive:{first}:v1")["Layers"] == [d.digest for d in image.layers]


def test_export_docker_archive_has_plain_layers(store: Store, tmp_path: Path) -> None:
    zstd_layer = make_tar({"z/file": b"zstd content\n"})
    image = put_image(
        store,
        [
            (make_tar({"etc/hello.txt": HELLO}), "gzip"),
            (zstd_layer, "zstd"),
            (make_tar({"p": b"plain"}), "none"),
        ],
    )
    out = tmp_path / "d.tar"
    export_image(store, image, parse_output(f"docker-archive:{out}:example/app:7"))
    with tarfile.open(out) as tar:
        manifest = json.loads(tar.extractfile("manifest.json").read())  # type: ignore[union-attr]
        assert manifest[0]["RepoTags"] == ["example/app:7"]
        for layer_name, diff_id in zip(manifest[0]["Layers"], image.diff_ids, strict=True):
            data = tar.extractfile(layer_name).read()  # type: ignore[union-attr]
            assert sha256_digest(data) == diff_id
        config = tar.extractfile(manifest[0]["Config"]).read()  # type: ignore[union-attr]
        assert sha256_digest(config) == image.config.digest
    info = skopeo_inspect(f"docker-archive:{out}")
    assert info["Layers"] == list(image.diff_ids)
    assert info["Architecture"] == host_platform().architecture

    back = import_image(store, parse_base_ref(f"docker-archive:{out}"), host_platform())
    assert back.diff_ids == image.diff_ids
    assert back.config == Descriptor(OCI_CONFIG, image.config.digest, image.config.size)
    assert all(d.media_type == OCI_LAYER for d in back.layers)
    assert [d.digest for d in back.layers] == list(image.diff_ids)


# -- import round trips, and skopeo copies between the forms -------------------------------


def test_round_trips_through_every_form(store: Store, other: Store, tmp_path: Path) -> None:
    image = tiny_image(store)
    host = host_platform()
    layout, oci_tar, docker_tar = tmp_path / "l", tmp_path / "o.tar", tmp_path / "d.tar"
    export_image(store, image, parse_output(f"oci:{layout}:v1"))
    export_image(store, image, parse_output(f"oci-archive:{oci_tar}:v1"))
    export_image(store, image, parse_output(f"docker-archive:{docker_tar}:app:v1"))

    for ref in (
        f"oci:{layout}:v1",
        f"oci:{layout}",
        f"oci-archive:{oci_tar}:v1",
        f"oci-archive:{oci_tar}",
    ):
        assert_same_image(import_image(other, parse_base_ref(ref), host), image)
    from_docker = import_image(other, parse_base_ref(f"docker-archive:{docker_tar}:app:v1"), host)
    assert from_docker.diff_ids == image.diff_ids
    assert from_docker.config.digest == image.config.digest

    # skopeo-written forms import too, and skopeo reads what skopeo copied from ours.
    sk_docker, sk_layout, sk_oci_tar = tmp_path / "sd.tar", tmp_path / "sl", tmp_path / "so.tar"
    skopeo_copy(f"oci:{layout}:v1", f"docker-archive:{sk_docker}:skopeo/app:1")
    skopeo_copy(f"docker-archive:{docker_tar}", f"oci:{sk_layout}:fromdocker")
    skopeo_copy(f"oci-archive:{oci_tar}", f"oci-archive:{sk_oci_tar}:again")
    got = import_image(other, parse_base_ref(f"docker-archive:{sk_docker}:skopeo/app:1"), host)
    assert got.diff_ids == image.diff_ids
    got = import_image(other, parse_base_ref(f"oci:{sk_layout}:fromdocker"), host)
    assert got.diff_ids == image.diff_ids
    got = import_image(other, parse_base_ref(f"oci-archive:{sk_oci_tar}:again"), host)
    assert got.diff_ids == image.diff_ids
    assert skopeo_inspect(f"docker-archive:{sk_docker}")["Layers"] == list(image.diff_ids)

    other.tag("imported", got.manifest)
    assert_same_image(import_image(other, parse_base_ref("imported"), host), got)
    with pytest.raises(ImageError, match=r"^find image 'ghcr.io/x/y:latest': not in the local"):
        import_image(other, parse_base_ref("ghcr.io/x/y"), host)


def test_nested_index_selects_the_host_platform(store: Store, other: Store, tmp_path: Path) -> None:
    host = host_platform()
    foreign = Platform("linux", "s390x" if host.architecture != "s390x" else "ppc64le")
    mine = tiny_image(store, tag=None)
    theirs = put_image(store, [(make_tar({"f": b"foreign"}), "gzip")], platform=foreign)
    layout = tmp_path / "multi"
    export_image(store, mine, parse_output(f"oci:{layout}:mine"))
    export_image(store, theirs, parse_output(f"oci:{layout}:theirs"))
    nested = Index(
        (
            Descriptor(
                OCI_MANIFEST, theirs.manifest.digest, theirs.manifest.size, platform=foreign
            ),
            Descriptor(OCI_MANIFEST, mine.manifest.digest, mine.manifest.size, platform=host),
        )
    ).to_bytes()
    (layout / "blobs" / "sha256" / sha256_digest(nested).split(":")[1]).write_bytes(nested)
    top = Index(
        (
            Descriptor(
                OCI_INDEX,
                sha256_digest(nested),
                len(nested),
                (("org.opencontainers.image.ref.name", "multi"),),
            ),
        )
    )
    (layout / "index.json").write_bytes(top.to_bytes())
    assert_same_image(import_image(other, parse_base_ref(f"oci:{layout}:multi"), host), mine)
    got = import_image(other, parse_base_ref(f"oci:{layout}"), foreign)
    assert_same_image(got, theirs)
    with pytest.raises(ImageError, match="no image for platform windows/amd64"):
        import_image(other, parse_base_ref(f"oci:{layout}"), Platform("windows", "amd64"))
    assert skopeo_inspect(f"oci:{layout}:multi")["Digest"] == sha256_digest(nested)


# -- broken inputs leave the store exactly as it was ---------------------------------------


def assert_import_fails(store: Store, ref: str, match: str) -> None:
    before = snapshot(store.root)
    with pytest.raises(ImageError, match=match):
        import_image(store, parse_base_ref(ref), host_platform())
    assert snapshot(store.root) == before


def test_truncated_oci_archive(store: Store, other: Store, tmp_path: Path) -> None:
    image = tiny_image(store)
    archive = tmp_path / "o.tar"
    export_image(store, image, parse_output(f"oci-archive:{archive}:v1"))
    data = archive.read_bytes()
    other.put_bytes(b"already here", "application/octet-stream")
    with tarfile.open(archive) as tar:
        members = [m for m in tar.getmembers() if m.isreg()]
    # Inside every member's data, and inside the last member's header.
    cuts = [m.offset_data + m.size // 2 for m in members] + [members[-1].offset + 100]
    for cut in cuts:
        (tmp_path / "cut.tar").write_bytes(data[:cut])
        assert_import_fails(other, f"oci-archive:{tmp_path / 'cut.tar'}:v1", r"^(read|verify) ")


def test_blob_with_wrong_digest(store: Store, other: Store, tmp_path: Path) -> None:
    image = tiny_image(store)
    layout = tmp_path / "l"
    export_image(store, image, parse_output(f"oci:{layout}:v1"))
    blob = layout / "blobs" / "sha256" / image.layers[1].digest.split(":")[1]
    data = bytearray(blob.read_bytes())
    data[600] ^= 0xFF
    blob.chmod(0o644)
    blob.write_bytes(bytes(data))
    assert_import_fails(other, f"oci:{layout}:v1", r"^verify layer 1 .*: digest is sha256:")
    blob.write_bytes(bytes(data) + b"extra")
    assert_import_fails(other, f"oci:{layout}:v1", r"^verify layer 1 .*: more than the")
    blob.unlink()
    assert_import_fails(other, f"oci:{layout}:v1", r"^read layer 1 .*: blob missing")
    blob.symlink_to(store.blob_path(image.layers[1].digest))
    assert_import_fails(other, f"oci:{layout}:v1", r"^read blobs/sha256/.*: Too many levels")


def test_compressed_layer_with_wrong_diff_id(store: Store, other: Store, tmp_path: Path) -> None:
    good = make_tar({"a": b"a"})
    layer = store.put_bytes(gzip.compress(good), OCI_LAYER_GZIP)
    config = json.dumps(
        {"rootfs": {"type": "layers", "diff_ids": [sha256_digest(b"not the layer")]}}
    ).encode()
    config_desc = store.put_bytes(config, OCI_CONFIG)
    manifest = Manifest(OCI_MANIFEST, config_desc, (layer,)).to_bytes()
    manifest_desc = store.put_bytes(manifest, OCI_MANIFEST)
    image = StoredImage(manifest_desc, {}, config_desc, {}, (layer,), ())
    export_image(store, image, parse_output(f"oci:{tmp_path / 'l'}:v1"))
    assert_import_fails(other, f"oci:{tmp_path / 'l'}:v1", r"^verify layer 0 .*: diffID is ")


def _docker_archive(path: Path, layers: list[bytes], diff_ids: list[str]) -> None:
    config = json.dumps(
        {"os": "linux", "architecture": "amd64", "rootfs": {"type": "layers", "diff_ids": diff_ids}}
    ).encode()
    entries = {"cfg.json": config}
    for n, layer in enumerate(layers):
        entries[f"l{n}/layer.tar"] = layer
    entries["manifest.json"] = json.dumps(
        [
            {
                "Config": "cfg.json",
                "RepoTags": ["x:1"],
                "Layers": [f"l{n}/layer.tar" for n in range(len(layers))],
            }
        ]
    ).encode()
    path.write_bytes(make_tar(entries))


def test_docker_archive_layer_not_matching_diff_ids(other: Store, tmp_path: Path) -> None:
    one, two = make_tar({"one": b"1"}), make_tar({"two": b"2"})
    archive = tmp_path / "d.tar"
    _docker_archive(archive, [one, two], [sha256_digest(one), sha256_digest(b"other")])
    assert_import_fails(other, f"docker-archive:{archive}", r"^verify layer 'l1/layer.tar' .*: ")
    _docker_archive(archive, [one, gzip.compress(two)], [sha256_digest(one), sha256_digest(one)])
    assert_import_fails(other, f"docker-archive:{archive}", r"diffID is ")
    _docker_archive(archive, [one], [sha256_digest(one), sha256_digest(two)])
    assert_import_fails(other, f"docker-archive:{archive}", r"config lists 2 diff_ids for 1")
    assert_import_fails(other, f"docker-archive:{archive}:y", r"no image tagged 'y:latest'")
    # The same archive with matching diff_ids (one layer gzipped) imports fine.
    _docker_archive(archive, [one, gzip.compress(two)], [sha256_digest(one), sha256_digest(two)])
    image = import_image(other, parse_base_ref(f"docker-archive:{archive}:x:1"), host_platform())
    assert [d.media_type for d in image.layers] == [OCI_LAYER, OCI_LAYER_GZIP]
    assert image.diff_ids == (sha256_digest(one), sha256_digest(two))
