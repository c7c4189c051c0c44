"""Pull and push against real registries (Debian's ``docker-registry``, distribution v2),
through the real ``rootbuild`` executable as the unprivileged build user, with skopeo (run as
that user) as the independent client.

- Round trip: an image built by rootbuild is pushed to a loopback registry (plain HTTP, as
  Docker treats loopback), read back by ``skopeo inspect``/``skopeo copy`` with the same
  digests, then used by ``FROM``; a second build with the same ``FROM`` fetches no blob.
- ``build --push`` and ``--output docker://``; ``--format docker`` writes Docker schema 2.
- A two-platform index pushed by skopeo resolves to the requested platform; a platform not in
  it fails listing the ones there.
- TLS (test CA via ``--cert-dir``) and htpasswd Basic auth: login/logout and the auth file.
- Errors — missing tag, a blob whose digest does not match, a truncated blob, wrong
  credentials, an unreachable registry — each give one clear line on stderr, a non-zero exit
  and an unchanged store.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import io
import json
import os
import re
import stat
import tarfile
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from registry_fixtures import (  # noqa: F401 (pytest fixtures)
    MT_OCI_INDEX,
    MT_OCI_MANIFEST,
    PASSWORD,
    USERNAME,
    Registry,
    free_port,
    registry_base_fixture,
    registry_fixture,
    secure_registry_fixture,
    write_image,
    write_multiplatform_layout,
)

pytestmark = pytest.mark.integration

DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")
MT_DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
MT_DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
MT_DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar.gzip"


# -- helpers -------------------------------------------------------------------------------------


def skopeo(rb: Any, *args: str) -> str:
    """skopeo as the build user; ``--insecure-policy``: no policy.json needed."""
    return str(rb.as_user(["skopeo", "--insecure-policy", *args]).stdout)


def skopeo_raw(rb: Any, ref: str, *opts: str) -> tuple[dict[str, Any], str]:
    """The manifest as the registry serves it, and the sha256 of those exact bytes."""
    raw = skopeo(rb, "inspect", "--raw", *opts, f"docker://{ref}")
    doc = json.loads(raw)
    return doc, "sha256:" + hashlib.sha256(raw.encode()).hexdigest()


def unique() -> str:
    return uuid.uuid4().hex[:12]


def build_scratch(rb: Any, tag: str, content: str, *extra: str) -> str:
    """``FROM scratch`` + ``COPY hello.txt``; returns the image ID."""
    ctx = rb.make_context(
        f"ctx-{unique()}",
        {"Dockerfile": "FROM scratch\nCOPY hello.txt /hello.txt\n", "hello.txt": content},
    )
    proc = rb.run("build", "-q", "-t", tag, *extra, str(ctx))
    return str(proc.stdout.strip().splitlines()[-1])


def build_from(rb: Any, base: str, *args: str, root: Path | None = None) -> Any:
    """``FROM base`` + ``COPY extra.txt``, optionally into another store."""
    ctx = rb.make_context(
        f"ctx-{unique()}",
        {"Dockerfile": f"FROM {base}\nCOPY extra.txt /extra.txt\n", "extra.txt": unique()},
    )
    if root is None:
        return rb.run("build", "-q", *args, str(ctx))
    return rb.run("build", "--root", str(root), "-q", *args, str(ctx), store=False)


def inspect(rb: Any, name: str, root: Path | None = None) -> dict[str, Any]:
    if root is None:
        out = rb.run("inspect", name).stdout
    else:
        out = rb.run("inspect", "--root", str(root), name, store=False).stdout
    doc: dict[str, Any] = json.loads(out)
    return doc


def assert_one_clear_error(proc: Any, *needles: str) -> str:
    """Non-zero exit, exactly one non-empty stderr line, ``rootbuild: ...``, lowercase,
    no traceback; every needle (case-insensitive) in it. Returns the line."""
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode != 0, f"expected failure, got 0:\n{proc.stdout}\n{proc.stderr}"
    assert len(lines) == 1, f"expected one error line, got:\n{proc.stderr}"
    line = str(lines[0])
    assert line.startswith("rootbuild: "), line
    assert "Traceback" not in proc.stderr
    for needle in needles:
        assert needle.lower() in line.lower(), f"{needle!r} not in {line!r}"
    return line


def push_tiny(rb: Any, reg: Registry, repo_tag: str) -> dict[str, Any]:
    """Push a one-layer linux/amd64 image with unique content via skopeo (not rootbuild);
    returns {"manifest": digest, "layer": digest, "config": digest}."""
    layout = rb.workdir / f"tiny-{unique()}"
    desc = write_image(layout, "linux", "amd64", {"tiny.txt": unique().encode() * 50})
    (layout / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
    desc["annotations"] = {"org.opencontainers.image.ref.name": "t"}
    (layout / "index.json").write_text(
        json.dumps({"schemaVersion": 2, "mediaType": MT_OCI_INDEX, "manifests": [desc]})
    )
    for root, dirs, files in os.walk(layout):
        for name in [*dirs, *files]:
            os.chmod(os.path.join(root, name), 0o755 if name in dirs else 0o644)
    os.chmod(layout, 0o755)
    skopeo(rb, "copy", "--dest-tls-verify=false", f"oci:{layout}:t", f"docker://{reg.ref(repo_tag)}")
    manifest, digest = skopeo_raw(rb, reg.ref(repo_tag), "--tls-verify=false")
    assert digest == desc["digest"]
    return {
        "manifest": digest,
        "config": manifest["config"]["digest"],
        "layer": manifest["layers"][0]["digest"],
    }


def layer_files(blob: bytes) -> dict[str, bytes]:
    with tarfile.open(fileobj=io.BytesIO(gzip.decompress(blob))) as tar:
        out: dict[str, bytes] = {}
        for member in tar.getmembers():
            f = tar.extractfile(member)
            if f is not None:
                out[member.name.lstrip("./")] = f.read()
        return out


def settle(reg: Registry) -> None:
    """The registry writes its access-log line as it finishes a response; give the last one
    a moment to reach the file before counting."""
    time.sleep(0.3)


# -- 1. round trip -------------------------------------------------------------------------------


def test_push_skopeo_roundtrip_then_from(rb: Any, registry: Registry) -> None:
    image_id = build_scratch(rb, "app:1", "hello registry\n")
    ref = registry.ref("app:1")
    digestfile = rb.workdir / "digest.txt"
    pushed = rb.run("push", "-q", "--digestfile", str(digestfile), "app:1", ref)
    digest = pushed.stdout.strip()
    assert DIGEST.match(digest), pushed.stdout
    assert digestfile.read_text().strip() == digest

    # skopeo sees the same manifest, byte for byte, and rootbuild's config.
    manifest, raw_digest = skopeo_raw(rb, ref, "--tls-verify=false")
    assert raw_digest == digest
    assert manifest["mediaType"] == MT_OCI_MANIFEST
    local = inspect(rb, "app:1")
    assert local["ManifestDigest"] == digest
    assert manifest["config"]["digest"] == local["Id"]
    assert image_id == local["Id"]
    info = json.loads(skopeo(rb, "inspect", "--tls-verify=false", f"docker://{ref}"))
    assert info["Digest"] == digest

    # skopeo copy to an OCI layout: same digest, and the layer holds the file.
    copied = rb.workdir / "copied"
    skopeo(rb, "copy", "--src-tls-verify=false", f"docker://{ref}", f"oci:{copied}:1")
    index = json.loads((copied / "index.json").read_text())
    assert index["manifests"][0]["digest"] == digest
    layer_digest = manifest["layers"][0]["digest"]
    blob = (copied / "blobs/sha256" / layer_digest.removeprefix("sha256:")).read_bytes()
    assert layer_files(blob)["hello.txt"] == b"hello registry\n"

    # FROM the pushed image, in a fresh store: blobs are fetched once...
    store2 = rb.workdir / "store2"
    settle(registry)
    before = registry.blob_gets("app")
    build_from(rb, ref, "-t", "derived:1", root=store2)
    settle(registry)
    first = registry.blob_gets("app")
    assert first >= before + 2, "the first FROM must fetch the config and the layer"
    derived = inspect(rb, "derived:1", root=store2)
    assert [d["digest"] for d in derived["Manifest"]["layers"]][:1] == [layer_digest]
    assert len(derived["Manifest"]["layers"]) == 2
    assert derived["Config"]["rootfs"]["diff_ids"][0] == local["Config"]["rootfs"]["diff_ids"][0]

    # ...and never again: a second build with the same FROM makes no blob request.
    build_from(rb, ref, "--no-cache", "-t", "derived:2", root=store2)
    settle(registry)
    assert registry.blob_gets("app") == first
    assert len(inspect(rb, "derived:2", root=store2)["Manifest"]["layers"]) == 2


def test_build_push_and_output_docker(rb: Any, registry: Registry) -> None:
    ctx = rb.make_context(
        "ctx", {"Dockerfile": "FROM scratch\nCOPY a.txt /a.txt\n", "a.txt": "pushed\n"}
    )
    ref_a, ref_b = registry.ref("bp:a"), registry.ref("bp-other:b")
    digestfile = rb.workdir / "d.txt"
    sde = {"SOURCE_DATE_EPOCH": "1700000000"}  # both builds make the same image
    rb.run("build", "-q", "-t", ref_a, "-t", ref_b, "--push", "--digestfile", str(digestfile),
           str(ctx), env=sde)
    digest = digestfile.read_text().strip()
    assert DIGEST.match(digest)
    for ref in (ref_a, ref_b):
        _, raw_digest = skopeo_raw(rb, ref, "--tls-verify=false")
        assert raw_digest == digest, ref

    out_ref = registry.ref("out:1")
    out_file = rb.workdir / "out.txt"
    rb.run("build", "-q", "--output", f"docker://{out_ref}", "--digestfile", str(out_file),
           str(ctx), env=sde)
    manifest, raw_digest = skopeo_raw(rb, out_ref, "--tls-verify=false")
    assert raw_digest == out_file.read_text().strip() == digest
    assert manifest["mediaType"] == MT_OCI_MANIFEST


# -- 2. multi-platform index ---------------------------------------------------------------------


def test_multiplatform_index_resolves_platform(rb: Any, registry: Registry) -> None:
    layout = rb.workdir / "multi-layout"
    index_digest = write_multiplatform_layout(
        layout, "1", [("linux", "amd64"), ("linux", "arm64")]
    )
    ref = registry.ref("multi:1")
    skopeo(rb, "copy", "--all", "--dest-tls-verify=false", f"oci:{layout}:1", f"docker://{ref}")
    index, digest = skopeo_raw(rb, ref, "--tls-verify=false")
    assert digest == index_digest
    by_arch = {m["platform"]["architecture"]: m["digest"] for m in index["manifests"]}

    arm_layer = json.loads(
        skopeo(rb, "inspect", "--raw", "--tls-verify=false",
               f"docker://{registry.ref('multi')}@{by_arch['arm64']}")
    )["layers"][0]["digest"]

    # FROM with --platform picks the arm64 image as the base (a fresh store).
    store2 = rb.workdir / "store2"
    build_from(rb, ref, "--platform", "linux/arm64", "-t", "on-arm:1", root=store2)
    doc = inspect(rb, "on-arm:1", root=store2)
    assert doc["Config"]["architecture"] == "arm64"
    assert doc["Manifest"]["layers"][0]["digest"] == arm_layer

    build_scratch(rb, "keep:1", "keep\n")  # a non-empty store to compare against
    for arch in ("arm64", "amd64"):
        out = rb.run("pull", "-q", "--platform", f"linux/{arch}", ref).stdout.strip()
        assert out.splitlines()[-1] == by_arch[arch]
        doc = inspect(rb, ref)
        assert doc["ManifestDigest"] == by_arch[arch]
        assert (doc["Config"]["os"], doc["Config"]["architecture"]) == ("linux", arch)

    snap = rb.store_snapshot()
    proc = rb.run("pull", "-q", "--platform", "linux/s390x", ref, check=False)
    assert_one_clear_error(proc, "linux/s390x", "linux/amd64", "linux/arm64")
    assert rb.store_snapshot() == snap

    # The store now holds the amd64 image under that name: a build for linux/arm64 must
    # still get the arm64 base (BuildKit resolves FROM for the target platform), not reuse
    # a local image of another platform.
    build_from(rb, ref, "--platform", "linux/arm64", "-t", "on-arm:2")
    doc = inspect(rb, "on-arm:2")
    assert doc["Config"]["architecture"] == "arm64", "FROM reused a base of another platform"
    assert doc["Manifest"]["layers"][0]["digest"] == arm_layer


# -- 3. TLS and Basic auth -----------------------------------------------------------------------


def _auth_env(rb: Any) -> tuple[dict[str, str], Path]:
    path = rb.workdir / "auth" / "auth.json"
    return {"REGISTRY_AUTH_FILE": str(path)}, path


def test_tls_basic_auth_login_push_pull_logout(rb: Any, secure_registry: Registry) -> None:
    reg = secure_registry
    assert reg.tls is not None
    ca = str(reg.tls.ca_dir)
    env, authfile = _auth_env(rb)
    build_scratch(rb, "app:1", "over tls\n")
    ref = reg.ref("secure-app:1")

    # Not logged in: the push is refused with one clear line.
    proc = rb.run("push", "-q", "--cert-dir", ca, "app:1", ref, check=False, env=env)
    assert_one_clear_error(proc)

    proc = rb.run("login", reg.host, "-u", USERNAME, "--password-stdin", "--cert-dir", ca,
                  input=f"{PASSWORD}\n".encode(), env=env, store=False)
    assert proc.returncode == 0
    assert stat.S_IMODE(authfile.stat().st_mode) == 0o600
    entry = json.loads(authfile.read_text())["auths"][reg.host]
    assert base64.b64decode(entry["auth"]).decode() == f"{USERNAME}:{PASSWORD}"

    digest = rb.run("push", "-q", "--cert-dir", ca, "app:1", ref, env=env).stdout.strip()
    assert DIGEST.match(digest)
    # skopeo reads the same auth file and trusts the same cert dir.
    _, raw_digest = skopeo_raw(rb, ref, "--authfile", str(authfile), "--cert-dir", ca)
    assert raw_digest == digest

    # Without the CA the certificate is not trusted: one clear line, nothing stored.
    store2 = rb.workdir / "store2"
    proc = rb.run("pull", "--root", str(store2), "-q", ref, check=False, env=env, store=False)
    assert_one_clear_error(proc)

    out = rb.run("pull", "--root", str(store2), "-q", "--cert-dir", ca, ref, env=env,
                 store=False)
    assert out.stdout.strip().splitlines()[-1] == digest
    assert inspect(rb, ref, root=store2)["ManifestDigest"] == digest
    build_from(rb, ref, "--cert-dir", ca, "-t", "on-tls:1", root=store2)
    assert len(inspect(rb, "on-tls:1", root=store2)["Manifest"]["layers"]) == 2

    rb.run("logout", reg.host, env=env, store=False)
    assert reg.host not in json.loads(authfile.read_text()).get("auths", {})
    store3 = rb.workdir / "store3"
    proc = rb.run("pull", "--root", str(store3), "-q", "--cert-dir", ca, ref, check=False,
                  env=env, store=False)
    assert_one_clear_error(proc)


def test_login_rejects_wrong_password(rb: Any, secure_registry: Registry) -> None:
    reg = secure_registry
    assert reg.tls is not None
    env, authfile = _auth_env(rb)
    proc = rb.run("login", reg.host, "-u", USERNAME, "--password-stdin", "--cert-dir",
                  str(reg.tls.ca_dir), input=b"wrong-password\n", env=env, store=False,
                  check=False)
    assert_one_clear_error(proc)
    assert not authfile.exists() or reg.host not in json.loads(authfile.read_text()).get(
        "auths", {}
    )


def test_wrong_credentials_clear_error_store_unchanged(
    rb: Any, secure_registry: Registry
) -> None:
    reg = secure_registry
    assert reg.tls is not None
    ca = str(reg.tls.ca_dir)
    ref = reg.ref("wrongcreds:1")
    # Put an image there with skopeo and the right password.
    build_scratch(rb, "app:1", "creds\n")
    layout = rb.workdir / "oci"
    rb.run("build", "-q", "--output", f"oci:{layout}:1", str(rb.make_context(
        "c2", {"Dockerfile": "FROM scratch\nCOPY a /a\n", "a": "a"})))
    skopeo(rb, "copy", "--dest-cert-dir", ca, "--dest-creds", f"{USERNAME}:{PASSWORD}",
           f"oci:{layout}:1", f"docker://{ref}")

    env, authfile = _auth_env(rb)
    authfile.parent.mkdir()
    authfile.write_text(json.dumps({"auths": {reg.host: {
        "auth": base64.b64encode(f"{USERNAME}:not-the-password".encode()).decode()}}}))
    os.chmod(authfile, 0o600)
    os.chown(authfile.parent, rb.user.uid, rb.user.gid)
    os.chown(authfile, rb.user.uid, rb.user.gid)

    snap = rb.store_snapshot()
    proc = rb.run("pull", "-q", "--cert-dir", ca, ref, check=False, env=env)
    assert_one_clear_error(proc)
    assert rb.store_snapshot() == snap
    proc = rb.run("push", "-q", "--cert-dir", ca, "app:1", reg.ref("wrongcreds:2"),
                  check=False, env=env)
    assert_one_clear_error(proc)
    assert rb.store_snapshot() == snap


# -- 4. errors -----------------------------------------------------------------------------------


def _pull_fails(rb: Any, ref: str, *needles: str) -> str:
    snap = rb.store_snapshot()
    assert snap, "the store should hold an image before the failing pull"
    started = time.monotonic()
    proc = rb.run("pull", "-q", ref, check=False, timeout=120)
    elapsed = time.monotonic() - started
    line = assert_one_clear_error(proc, *needles)
    assert rb.store_snapshot() == snap, "a failed pull changed the store"
    assert elapsed < 60, f"failing pull took {elapsed:.0f}s"
    return line


def test_missing_tag(rb: Any, registry: Registry) -> None:
    build_scratch(rb, "keep:1", "keep\n")
    push_tiny(rb, registry, "present:1")
    _pull_fails(rb, registry.ref("present:nope"))
    _pull_fails(rb, registry.ref("no-such-repo:1"))
    # The same through FROM.
    snap = rb.store_snapshot()
    ctx = rb.make_context("ctx-missing", {"Dockerfile": f"FROM {registry.ref('present:nope')}\n"})
    proc = rb.run("build", "-q", str(ctx), check=False)
    assert proc.returncode != 0
    assert "present" in proc.stderr and "Traceback" not in proc.stderr
    assert rb.store_snapshot() == snap


def test_blob_digest_mismatch(rb: Any, registry: Registry) -> None:
    build_scratch(rb, "keep:1", "keep\n")
    tiny = push_tiny(rb, registry, "corrupt:1")
    data = registry.blob_data(tiny["layer"])
    blob = bytearray(data.read_bytes())
    blob[len(blob) // 2] ^= 0xFF
    data.write_bytes(bytes(blob))
    _pull_fails(rb, registry.ref("corrupt:1"), tiny["layer"].removeprefix("sha256:")[:12])


def test_config_digest_mismatch(rb: Any, registry: Registry) -> None:
    build_scratch(rb, "keep:1", "keep\n")
    tiny = push_tiny(rb, registry, "corrupt-config:1")
    data = registry.blob_data(tiny["config"])
    text = data.read_bytes().replace(b"amd64", b"AMD64")
    data.write_bytes(text)
    _pull_fails(rb, registry.ref("corrupt-config:1"))


def test_truncated_blob(rb: Any, registry: Registry) -> None:
    build_scratch(rb, "keep:1", "keep\n")
    tiny = push_tiny(rb, registry, "truncated:1")
    data = registry.blob_data(tiny["layer"])
    size = data.stat().st_size
    with open(data, "r+b") as f:
        f.truncate(size // 2)
    _pull_fails(rb, registry.ref("truncated:1"))


def test_unreachable_registry(rb: Any) -> None:
    build_scratch(rb, "keep:1", "keep\n")
    port = free_port()  # nobody listens there
    _pull_fails(rb, f"127.0.0.1:{port}/app:1", f"127.0.0.1:{port}")
    snap = rb.store_snapshot()
    proc = rb.run("push", "-q", "keep:1", f"127.0.0.1:{port}/app:1", check=False, timeout=120)
    assert_one_clear_error(proc, f"127.0.0.1:{port}")
    assert rb.store_snapshot() == snap


# -- 5. --format docker --------------------------------------------------------------------------


def test_push_format_docker(rb: Any, registry: Registry) -> None:
    build_scratch(rb, "app:1", "docker format\n")
    ref = registry.ref("docker-fmt:1")
    digest = rb.run("push", "-q", "--format", "docker", "app:1", ref).stdout.strip()
    manifest, raw_digest = skopeo_raw(rb, ref, "--tls-verify=false")
    assert raw_digest == digest
    assert manifest["mediaType"] == MT_DOCKER_MANIFEST
    assert manifest["config"]["mediaType"] == MT_DOCKER_CONFIG
    assert {layer["mediaType"] for layer in manifest["layers"]} == {MT_DOCKER_LAYER}
    # Still a valid image to an independent client, with rootbuild's config.
    copied = rb.workdir / "copied"
    skopeo(rb, "copy", "--src-tls-verify=false", f"docker://{ref}", f"oci:{copied}:1")
    assert manifest["config"]["digest"] == inspect(rb, "app:1")["Id"]


def test_pull_docker_schema2_manifest_and_manifest_list(rb: Any, registry: Registry) -> None:
    """Docker's media types on the way in: a schema 2 manifest list (written by skopeo with
    --format v2s2) resolves to the right platform, and its schema 2 manifest is pulled."""
    layout = rb.workdir / "multi-v2s2"
    write_multiplatform_layout(layout, "1", [("linux", "amd64"), ("linux", "arm64")])
    ref = registry.ref("multi-v2s2:1")
    skopeo(rb, "copy", "--all", "--format", "v2s2", "--dest-tls-verify=false",
           f"oci:{layout}:1", f"docker://{ref}")
    index, _ = skopeo_raw(rb, ref, "--tls-verify=false")
    assert index["mediaType"] == "application/vnd.docker.distribution.manifest.list.v2+json"

    store2 = rb.workdir / "store-v2s2"
    rb.run("pull", "--root", str(store2), "-q", "--platform", "linux/arm64", ref, store=False)
    doc = inspect(rb, ref, root=store2)
    assert doc["Config"]["architecture"] == "arm64"
    assert doc["Manifest"]["mediaType"] == MT_DOCKER_MANIFEST
