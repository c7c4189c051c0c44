"""`rootbuild build` outputs and the store commands, through the real executable as an
unprivileged user, checked with real validators (skopeo, umoci) run as that user.

- One build FROM scratch using every metadata instruction is exported to all four output
  forms at once; its config and history must be exactly what ``docker build`` (BuildKit's
  Dockerfile frontend, moby/buildkit ``dockerfile2llb``) records for that Dockerfile.
- ``images``, ``inspect``, ``rmi``, ``prune``, ``--iidfile``, ``-q`` and reproducibility
  under ``SOURCE_DATE_EPOCH``.
- The README's example (``scripts/build-example.sh``).
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
ROOTBUILD = Path(sys.executable).parent / "rootbuild"

EPOCH = 1700000000
EPOCH_RFC3339 = "2023-11-14T22:13:20Z"
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
_ARCH = {
    "x86_64": "amd64",
    "aarch64": "arm64",
    "armv7l": "arm",
    "ppc64le": "ppc64le",
    "s390x": "s390x",
    "riscv64": "riscv64",
}


def require_tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"integration prerequisite missing: the {name} command")
    return path


def skopeo(rb: Any, *args: str) -> str:
    """Run skopeo as the build user (no policy file needed for local transports)."""
    return str(rb.as_user([require_tool("skopeo"), "--insecure-policy", *args]).stdout)


def skopeo_json(rb: Any, *args: str) -> Any:
    return json.loads(skopeo(rb, "inspect", *args))


# -- 1. every metadata instruction, four outputs ------------------------------------------------

META_DOCKERFILE = """\
FROM scratch
ARG VERSION=1.0
ARG FLAVOR
LABEL org.example.version="$VERSION" "com.example.vendor"="ACME Inc"
MAINTAINER Jane Doe <jane@example.com>
ENV APP_HOME=/srv/app MODE=prod
ENV LEGACY legacy value
COPY --chmod=0755 bin/tool /usr/local/bin/tool
COPY etc/ /etc/
ADD data.tar.gz /srv/
WORKDIR $APP_HOME
COPY config.json ./
EXPOSE 80 443/udp 8000-8001
USER 1000:1000
VOLUME ["/data", "/var/log/app"]
SHELL ["/bin/sh", "-ec"]
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --start-interval=2s --retries=3 \\
    CMD /usr/local/bin/tool --check
STOPSIGNAL SIGTERM
ONBUILD COPY hooks/ /hooks/
ENTRYPOINT ["/usr/local/bin/tool"]
CMD ["--serve", "$MODE"]
"""

# What BuildKit writes for META_DOCKERFILE with --build-arg VERSION=2.0 --build-arg
# FLAVOR=lite --label built.by=test and SOURCE_DATE_EPOCH=1700000000: ``emptyImage`` gives
# WorkingDir "/" and the default PATH; ARGs never reach Env; CMD sets ArgsEscaped; EXPOSE
# keeps its sorted words (instructions.parseExpose sorts them); ONBUILD is stored, not run.
EXPECTED_CONFIG = {
    "User": "1000:1000",
    "ExposedPorts": {"80/tcp": {}, "443/udp": {}, "8000/tcp": {}, "8001/tcp": {}},
    "Env": [f"PATH={DEFAULT_PATH}", "APP_HOME=/srv/app", "MODE=prod", "LEGACY=legacy value"],
    "Entrypoint": ["/usr/local/bin/tool"],
    "Cmd": ["--serve", "$MODE"],
    "Volumes": {"/data": {}, "/var/log/app": {}},
    "WorkingDir": "/srv/app",
    "Labels": {
        "org.example.version": "2.0",
        "com.example.vendor": "ACME Inc",
        "built.by": "test",
    },
    "StopSignal": "SIGTERM",
    "ArgsEscaped": True,
    "Healthcheck": {
        "Test": ["CMD-SHELL", "/usr/local/bin/tool --check"],
        "Interval": 30_000_000_000,
        "Timeout": 5_000_000_000,
        "StartPeriod": 10_000_000_000,
        "StartInterval": 2_000_000_000,
        "Retries": 3,
    },
    "OnBuild": ["COPY hooks/ /hooks/"],
    "Shell": ["/bin/sh", "-ec"],
}

# (created_by, empty_layer) per BuildKit's commitToHistory calls: layer-making steps get
# " # buildkit" except WORKDIR; ONBUILD records no history; EXPOSE/VOLUME/SHELL use Go's
# %v of a string slice; HEALTHCHECK is %+v of the HealthcheckConfig struct.
EXPECTED_HISTORY = [
    ("ARG VERSION=2.0", True),
    ("ARG FLAVOR=lite", True),
    ("LABEL org.example.version=2.0 com.example.vendor=ACME Inc", True),
    ("MAINTAINER Jane Doe <jane@example.com>", True),
    ("ENV APP_HOME=/srv/app MODE=prod", True),
    ("ENV LEGACY=legacy value", True),
    ("COPY --chmod=0755 bin/tool /usr/local/bin/tool # buildkit", False),
    ("COPY etc/ /etc/ # buildkit", False),
    ("ADD data.tar.gz /srv/ # buildkit", False),
    ("WORKDIR /srv/app", False),
    ("COPY config.json ./ # buildkit", False),
    ("EXPOSE [443/udp 80/tcp 8000/tcp 8001/tcp]", True),
    ("USER 1000:1000", True),
    ("VOLUME [/data /var/log/app]", True),
    ("SHELL [/bin/sh -ec]", True),
    (
        "HEALTHCHECK {Test:[CMD-SHELL /usr/local/bin/tool --check] Interval:30s Timeout:5s "
        "StartPeriod:10s StartInterval:2s Retries:3}",
        True,
    ),
    ("STOPSIGNAL SIGTERM", True),
    ('ENTRYPOINT ["/usr/local/bin/tool"]', True),
    ('CMD ["--serve" "$MODE"]', True),
]

TOOL = b"#!/bin/sh\necho tool\n"


def _data_tar_gz() -> bytes:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        d = tarfile.TarInfo("data")
        d.type, d.mode = tarfile.DIRTYPE, 0o755
        tar.addfile(d)
        body = b"payload\n"
        f = tarfile.TarInfo("data/file.txt")
        f.size, f.mode = len(body), 0o600
        tar.addfile(f, io.BytesIO(body))
    return gzip.compress(raw.getvalue())


def _check_rootfs(root: Path) -> None:
    """The image's files as any runtime unpacks them."""
    tool = root / "usr/local/bin/tool"
    assert tool.read_bytes() == TOOL
    assert tool.stat().st_mode & 0o7777 == 0o755
    assert (root / "etc/motd").read_text() == "hello\n"
    assert os.readlink(root / "etc/motd.link") == "motd"
    assert (root / "srv/data/file.txt").read_text() == "payload\n"
    assert (root / "srv/data/file.txt").stat().st_mode & 0o777 == 0o600
    assert (root / "srv/app/config.json").read_text() == '{"a": 1}\n'
    assert not (root / "srv/data.tar.gz").exists()
    assert not (root / "hooks").exists()  # ONBUILD does not run in the image itself


def test_every_metadata_instruction_to_all_outputs(rb: Any) -> None:
    require_tool("umoci")
    ctx = rb.make_context(
        "ctx",
        {
            "Dockerfile": META_DOCKERFILE,
            "bin/tool": TOOL,
            "etc/motd": "hello\n",
            "etc/motd.link": "symlink:motd",
            "config.json": '{"a": 1}\n',
            "data.tar.gz": _data_tar_gz(),
            "hooks/hook.sh": "#!/bin/sh\n",
        },
    )
    w = rb.workdir
    rb.run(
        "build",
        "--progress=plain",
        "-t",
        "meta:1",
        "--build-arg",
        "VERSION=2.0",
        "--build-arg",
        "FLAVOR=lite",
        "--label",
        "built.by=test",
        "--output",
        f"oci:{w}/layout:v1",
        "--output",
        f"oci-archive:{w}/image.oci.tar:v1",
        "--output",
        f"docker-archive:{w}/image.docker.tar:meta:v1",
        "--output",
        f"dir:{w}/rootfs",
        str(ctx),
        env={"SOURCE_DATE_EPOCH": str(EPOCH)},
    )
    refs = {
        "oci": f"oci:{w}/layout:v1",
        "oci-archive": f"oci-archive:{w}/image.oci.tar:v1",
        "docker-archive": f"docker-archive:{w}/image.docker.tar",
    }
    configs = {name: skopeo_json(rb, "--config", "--raw", ref) for name, ref in refs.items()}
    config = configs["oci"]
    assert configs["oci-archive"] == config
    assert configs["docker-archive"] == config

    assert config["config"] == EXPECTED_CONFIG
    assert config["architecture"] == _ARCH.get(platform.machine(), platform.machine())
    assert config["os"] == "linux"
    assert config["created"] == EPOCH_RFC3339
    assert config["author"] == "Jane Doe <jane@example.com>"
    history = config["history"]
    assert [(h["created_by"], h.get("empty_layer", False)) for h in history] == EXPECTED_HISTORY
    assert all(h["created"] == EPOCH_RFC3339 for h in history)
    assert all(h["comment"] == "buildkit.dockerfile.v0" for h in history)
    assert config["rootfs"]["type"] == "layers"
    diff_ids = config["rootfs"]["diff_ids"]
    assert len(diff_ids) == sum(1 for _, empty in EXPECTED_HISTORY if not empty)

    # The manifest: same in the layout and the oci-archive; layer digests and sizes real.
    inspected = {name: skopeo_json(rb, ref) for name, ref in refs.items()}
    assert inspected["oci"]["Digest"] == inspected["oci-archive"]["Digest"]
    assert inspected["oci"]["Layers"] == inspected["oci-archive"]["Layers"]
    assert inspected["docker-archive"]["Layers"] == diff_ids  # docker-archive: plain tars
    for item in inspected.values():
        assert item["Labels"] == EXPECTED_CONFIG["Labels"]
        assert item["Env"] == EXPECTED_CONFIG["Env"]
        assert item["Created"] == EPOCH_RFC3339
    manifest = json.loads(skopeo(rb, "inspect", "--raw", refs["oci"]))
    assert manifest["mediaType"] == "application/vnd.oci.image.manifest.v1+json"
    assert manifest["config"]["mediaType"] == "application/vnd.oci.image.config.v1+json"
    for layer, diff_id in zip(manifest["layers"], diff_ids, strict=True):
        blob = (w / "layout/blobs/sha256" / layer["digest"].removeprefix("sha256:")).read_bytes()
        assert layer["mediaType"] == "application/vnd.oci.image.layer.v1.tar+gzip"
        assert layer["size"] == len(blob)
        assert "sha256:" + hashlib.sha256(blob).hexdigest() == layer["digest"]
        assert "sha256:" + hashlib.sha256(gzip.decompress(blob)).hexdigest() == diff_id

    # The docker-archive carries the requested name.
    with tarfile.open(w / "image.docker.tar") as tar:
        member = tar.extractfile("manifest.json")
        assert member is not None
        docker_manifest = json.loads(member.read())
    assert [entry["RepoTags"] for entry in docker_manifest] == [["meta:v1"]]

    # skopeo can copy each form into a fresh layout. From OCI the config blob is kept as
    # it is; from docker-archive skopeo converts it to an OCI config (which drops Docker's
    # extensions), so there the OCI view of the config must be the same.
    oci_view = skopeo_json(rb, "--config", refs["oci"])
    assert oci_view["config"]["Entrypoint"] == EXPECTED_CONFIG["Entrypoint"]
    for name, ref in refs.items():
        dest = f"oci:{w}/copy-{name}:v1"
        skopeo(rb, "copy", "--quiet", ref, dest)
        if name == "docker-archive":
            assert skopeo_json(rb, "--config", dest) == oci_view
        else:
            assert skopeo_json(rb, "--config", "--raw", dest) == config, name

    # umoci unpacks the layout rootless; the dir: output is the same tree.
    rb.as_user(
        [require_tool("umoci"), "unpack", "--rootless", "--image", f"{w}/layout:v1", f"{w}/bundle"]
    )
    _check_rootfs(w / "bundle/rootfs")
    _check_rootfs(w / "rootfs")


# -- 6. the store commands ---------------------------------------------------------------------


def test_images_inspect_rmi_prune_iidfile_quiet(rb: Any) -> None:
    small = rb.make_context(
        "small",
        {
            "Dockerfile": 'FROM scratch\nCOPY a.txt /a.txt\nCMD ["/a"]\n',
            "a.txt": "a\n",
        },
    )
    big_payload = os.urandom(512 * 1024)  # incompressible: prune must free at least this
    big = rb.make_context(
        "big",
        {
            "Dockerfile": "FROM scratch\nCOPY big.bin /big.bin\n",
            "big.bin": big_payload,
        },
    )
    iidfile = rb.workdir / "iid.txt"
    proc = rb.run(
        "build", "-q", "--iidfile", str(iidfile), "-t", "app:1", "-t", "app:2", str(small)
    )
    assert re.fullmatch(r"sha256:[0-9a-f]{64}\n", proc.stdout), proc.stdout
    image_id = proc.stdout.strip()
    assert iidfile.read_text() == image_id
    assert proc.stderr == ""  # -q: no progress at all
    rb.run("build", "-q", "-t", "big:1", str(big))

    listing = rb.run("images").stdout.splitlines()
    assert listing[0].split() == ["NAME", "MANIFEST", "CREATED"]
    names = [line.split()[0] for line in listing[1:]]
    assert names == ["app:1", "app:2", "big:1"]
    assert rb.run("images", "-q").stdout.splitlines() == ["app:1", "app:2", "big:1"]

    doc = json.loads(rb.run("inspect", "app:1").stdout)
    assert doc["Id"] == image_id
    assert doc["Manifest"]["config"]["digest"] == image_id
    assert doc["Config"]["config"]["Cmd"] == ["/a"]
    assert doc["Config"]["history"][0]["created_by"] == "COPY a.txt /a.txt # buildkit"
    assert len(doc["Manifest"]["layers"]) == len(doc["Config"]["rootfs"]["diff_ids"]) == 1
    assert re.fullmatch(r"sha256:[0-9a-f]{64}", doc["ManifestDigest"])
    # Both names are one image; docker.io/library/ spelling is the same name.
    assert json.loads(rb.run("inspect", "app:2").stdout)["ManifestDigest"] == doc["ManifestDigest"]
    assert json.loads(rb.run("inspect", "docker.io/library/app:1").stdout)["Id"] == image_id

    # Nothing to reclaim while every image is tagged; the step cache entries go (buildx
    # prune), but their layers are the tagged images' layers.
    assert rb.run("prune").stdout.splitlines() == [
        "removed 2 step cache entries, kept 0", "reclaimed 0 bytes",
    ]

    assert rb.run("rmi", "big:1").stdout.strip() == "untagged: big:1"
    assert rb.run("images", "-q").stdout.splitlines() == ["app:1", "app:2"]
    missing = rb.run("inspect", "big:1", check=False)
    assert missing.returncode != 0
    assert re.fullmatch(r"rootbuild: inspect big:1: no such image in the store\n", missing.stderr)

    freed = rb.run("prune").stdout.splitlines()[-1]
    match = re.fullmatch(r"reclaimed (\d+) bytes", freed)
    assert match is not None, freed
    assert int(match.group(1)) >= len(big_payload)
    assert rb.run("prune").stdout.splitlines()[-1] == "reclaimed 0 bytes"
    # What is still tagged survives and still exports.
    rb.run("build", "-q", "-t", "app:3", "--output", f"oci:{rb.workdir}/after:v1", str(small))
    after = skopeo_json(rb, f"oci:{rb.workdir}/after:v1")
    assert after["Digest"] != ""
    assert json.loads(rb.run("inspect", "app:1").stdout)["Id"] == image_id

    # An --iidfile that cannot be written is an error message, not a traceback.
    bad = rb.run(
        "build", "-q", "--iidfile", f"{rb.workdir}/no/such/dir/iid", str(small), check=False
    )
    assert bad.returncode == 1
    assert re.fullmatch(
        r"rootbuild: write iidfile \S+/no/such/dir/iid: No such file or "
        r"directory\n",
        bad.stderr.splitlines(keepends=True)[-1],
    ), bad.stderr

    # rmi of a name that is not there fails, as `docker rmi` does.
    nosuch = rb.run("rmi", "nosuch:1", "app:3", check=False)
    assert nosuch.returncode == 1
    assert nosuch.stderr == "rootbuild: rmi nosuch:1: no such image in the store\n"
    assert nosuch.stdout == "untagged: app:3\n"  # the names that exist are still removed
    assert rb.run("images", "-q").stdout.splitlines() == ["app:1", "app:2"]


def test_source_date_epoch_makes_builds_reproducible(rb: Any) -> None:
    ctx = rb.make_context(
        "ctx",
        {
            "Dockerfile": (
                "FROM scratch\nCOPY a.txt /a.txt\nWORKDIR /made/by/workdir\n"
                "COPY <<EOF /heredoc.txt\nmade now\nEOF\nCOPY a.txt /new/parent/a.txt\n"
            ),
            "a.txt": "a\n",
        },
    )
    digests = []
    for n in (1, 2):
        out = f"{rb.workdir}/repro{n}"
        rb.run(
            "build",
            "-q",
            "-t",
            f"repro:{n}",
            "--output",
            f"oci:{out}:r",
            str(ctx),
            env={"SOURCE_DATE_EPOCH": str(EPOCH + 5)},
        )
        digests.append(skopeo_json(rb, f"oci:{out}:r")["Digest"])
    assert digests[0] == digests[1]
    stores = {json.loads(rb.run("inspect", f"repro:{n}").stdout)["ManifestDigest"] for n in (1, 2)}
    assert stores == {digests[0]}
    # SOURCE_DATE_EPOCH as a build argument (how `docker buildx` passes it) is the same.
    out = f"{rb.workdir}/repro-arg"
    rb.run(
        "build",
        "-q",
        "--build-arg",
        f"SOURCE_DATE_EPOCH={EPOCH + 5}",
        "--output",
        f"oci:{out}:r",
        str(ctx),
    )
    assert skopeo_json(rb, f"oci:{out}:r")["Digest"] == digests[0]
    # Without the epoch the build time shows up: a different image.
    rb.run("build", "-q", "-t", "repro:3", "--output", f"oci:{rb.workdir}/repro3:r", str(ctx))
    assert skopeo_json(rb, f"oci:{rb.workdir}/repro3:r")["Digest"] != digests[0]


# -- 7. the README's example -------------------------------------------------------------------


def test_build_example_script(rb: Any) -> None:
    require_tool("umoci")
    busybox = Path("/bin/busybox")
    if not busybox.is_file():
        pytest.fail("integration prerequisite missing: /bin/busybox (apt install busybox-static)")
    repo = rb.workdir / "repo"
    rb.copy_fixture(REPO / "examples", "repo/examples")
    rb.copy_fixture(REPO / "scripts", "repo/scripts")
    out = rb.workdir / "busybox.oci.tar"
    env = {"PATH": f"{ROOTBUILD.parent}:/usr/bin:/bin", "ROOTBUILD_ROOT": str(rb.store)}
    proc = subprocess.run(
        rb.command(["bash", str(repo / "scripts/build-example.sh"), str(out)], env),
        cwd=rb.workdir,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"build-example: wrote {out}" in proc.stdout

    ref = f"oci-archive:{out}:latest"
    info = skopeo_json(rb, ref)
    assert info["Labels"] == {"org.opencontainers.image.title": "rootbuild busybox example"}
    config = skopeo_json(rb, "--config", "--raw", ref)
    assert config["config"]["Cmd"] == ["/bin/sh"]
    assert config["config"]["Env"] == ["PATH=/bin"]
    assert config["config"]["WorkingDir"] == "/home/app"

    layout = rb.workdir / "example-layout"
    skopeo(rb, "copy", "--quiet", ref, f"oci:{layout}:latest")
    rb.as_user(
        [
            require_tool("umoci"),
            "unpack",
            "--rootless",
            "--image",
            f"{layout}:latest",
            f"{rb.workdir}/example-bundle",
        ]
    )
    root = rb.workdir / "example-bundle/rootfs"
    binary = root / "bin/busybox"
    assert (
        hashlib.sha256(binary.read_bytes()).digest()
        == hashlib.sha256(busybox.read_bytes()).digest()
    )
    assert binary.stat().st_mode & 0o111
    assert os.readlink(root / "bin/sh") == "busybox"
    assert (root / "home/app").is_dir()
    # The binary in the image really is a working busybox.
    echoed = rb.as_user([str(binary), "echo", "hello from the image"]).stdout
    assert echoed == "hello from the image\n"
    # The store was the one given; nothing went to the user's default store.
    assert rb.run("images", "-q").stdout.splitlines() == ["rootbuild-example:latest"]


def test_unwritable_dir_output_is_a_clean_error(rb: Any) -> None:
    """A ``dir:`` destination that cannot be created is reported like every other output
    failure (``write directory PATH: cause``), never as a traceback."""
    ctx = rb.make_context("ctx", {"Dockerfile": "FROM scratch\nCOPY a /a\n", "a": "a\n"})
    blocker = rb.make_context("blocker", {"file": "not a directory\n"}) / "file"
    proc = rb.run("build", "-q", "--output", f"dir:{blocker}/out", str(ctx), check=False)
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr == f"rootbuild: write directory {blocker}/out: Not a directory\n"
