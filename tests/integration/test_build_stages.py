"""Multi-stage builds and base images through the real `rootbuild` executable, as an
unprivileged user: ``COPY --from`` (stage name, stage index, stored image), ``FROM <stage>``,
``--target`` building only what the target needs, base images read from ``oci:``,
``oci-archive:`` and ``docker-archive:`` outputs of earlier builds, ONBUILD triggers, and
independent stages running concurrently under ``--jobs``.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import tarfile
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.integration


# -- reading the built image (independently of rootbuild) -------------------------------------


def _blob(layout: Path, digest: str) -> Path:
    alg, _, hex_ = digest.partition(":")
    return layout / "blobs" / alg / hex_


def read_image(layout: Path, tag: str) -> tuple[dict[str, Any], dict[str, Any]]:
    index = json.loads((layout / "index.json").read_text())
    for desc in index["manifests"]:
        if desc.get("annotations", {}).get("org.opencontainers.image.ref.name") == tag:
            manifest = json.loads(_blob(layout, desc["digest"]).read_bytes())
            config = json.loads(_blob(layout, manifest["config"]["digest"]).read_bytes())
            return manifest, config
    raise AssertionError(f"{tag!r} not in {layout}/index.json: {index}")


def files_of(layout: Path, tag: str) -> dict[str, bytes | str]:
    """Path -> content (files) or "symlink:T" / "dir", all layers applied (no whiteouts are
    produced by these builds)."""
    manifest, _ = read_image(layout, tag)
    out: dict[str, bytes | str] = {}
    for layer in manifest["layers"]:
        with tarfile.open(_blob(layout, layer["digest"]), mode="r:*") as tar:
            for info in tar:
                name = info.name.removeprefix("./").strip("/")
                assert ".wh." not in name, name
                if info.isdir():
                    out[name] = "dir"
                elif info.issym():
                    out[name] = f"symlink:{info.linkname}"
                else:
                    f = tar.extractfile(info)
                    assert f is not None
                    out[name] = f.read()
    return out


def plain_files(layout: Path, tag: str) -> dict[str, bytes | str]:
    return {k: v for k, v in files_of(layout, tag).items() if v != "dir"}


def build(rb: Any, ctx: Path, tag: str, *extra: str, check: bool = True) -> Any:
    return rb.run(
        "build",
        "--progress=plain",
        "--output",
        f"oci:{rb.workdir}/{tag}.oci:{tag}",
        *extra,
        str(ctx),
        check=check,
    )


def layout(rb: Any, tag: str) -> Path:
    return Path(rb.workdir / f"{tag}.oci")


# -- stages ------------------------------------------------------------------------------------

MULTI_DOCKERFILE = """\
FROM scratch AS base
COPY base.txt /base.txt
ENV FROM_BASE=1

FROM scratch AS builder
COPY src/ /out/
COPY <<EOF /out/generated.txt
generated
EOF

FROM scratch AS unused
COPY unused.txt /unused.txt
RUN this-stage-must-never-run

FROM base AS final
COPY --from=builder /out/ /app/
COPY --from=0 /base.txt /from-index-0.txt
COPY --from=lib:1 /lib/lib.txt /lib.txt
COPY --from=builder /out/main.c /out/gen*.txt /picked/
"""


def test_multi_stage_copy_from_and_target(rb: Any) -> None:
    lib = rb.make_context(
        "lib",
        {
            "Dockerfile": "FROM scratch\nCOPY lib.txt /lib/lib.txt\n",
            "lib.txt": "lib\n",
        },
    )
    rb.run("build", "-q", "-t", "lib:1", str(lib))
    ctx = rb.make_context(
        "ctx",
        {
            "Dockerfile": MULTI_DOCKERFILE,
            "base.txt": "base\n",
            "unused.txt": "unused\n",
            "src/main.c": "int main;\n",
            "src/inc/x.h": "#define X\n",
        },
    )
    proc = build(rb, ctx, "final")
    files = plain_files(layout(rb, "final"), "final")
    assert files == {
        "base.txt": b"base\n",  # FROM base
        "app/main.c": b"int main;\n",
        "app/inc/x.h": b"#define X\n",
        "app/generated.txt": b"generated\n",
        "from-index-0.txt": b"base\n",
        "lib.txt": b"lib\n",
        "picked/main.c": b"int main;\n",
        "picked/generated.txt": b"generated\n",
    }
    _, config = read_image(layout(rb, "final"), "final")
    assert "FROM_BASE=1" in config["config"]["Env"]  # FROM <stage> inherits its config
    assert [h["created_by"] for h in config["history"]] == [
        "COPY base.txt /base.txt # buildkit",
        "ENV FROM_BASE=1",
        "COPY /out/ /app/ # buildkit",
        "COPY /base.txt /from-index-0.txt # buildkit",
        "COPY /lib/lib.txt /lib.txt # buildkit",
        "COPY /out/main.c /out/gen*.txt /picked/ # buildkit",
    ]
    # The stage nobody needs was never started (its RUN would have failed the build).
    assert "[unused" not in proc.stderr
    assert re.search(r"^#\d+ \[builder 2/3\] COPY src/ /out/$", proc.stderr, re.M), proc.stderr

    # --target builds the target and what it needs, nothing else.
    proc = build(rb, ctx, "builder", "--target", "builder")
    assert plain_files(layout(rb, "builder"), "builder") == {
        "out/main.c": b"int main;\n",
        "out/inc/x.h": b"#define X\n",
        "out/generated.txt": b"generated\n",
    }
    stages = set(re.findall(r"^#\d+ \[(\S+) \d+/\d+\]", proc.stderr, re.M))
    assert stages == {"builder"}, proc.stderr

    # And the unused stage really would fail: proof that skipping it was what passed.
    failed = build(rb, ctx, "unused", "--target", "unused", check=False)
    assert failed.returncode != 0
    assert re.search(r"rootbuild: Dockerfile:13: RUN: ", failed.stderr), (
        failed.stderr
    )
    assert not layout(rb, "unused").exists()


def test_base_images_from_every_archive_form(rb: Any) -> None:
    w = rb.workdir
    lib = rb.make_context(
        "lib",
        {
            "Dockerfile": (
                'FROM scratch\nCOPY lib/ /lib/\nENV LIB=1\nWORKDIR /lib\nCMD ["/lib/run"]\n'
            ),
            "lib/run": "#!/bin/sh\n",
            "lib/link": "symlink:run",
        },
    )
    rb.run(
        "build",
        "-q",
        "-t",
        "lib:1",
        "--output",
        f"oci:{w}/lib-layout:v1",
        "--output",
        f"oci-archive:{w}/lib.oci.tar:v1",
        "--output",
        f"docker-archive:{w}/lib.docker.tar:lib:v1",
        str(lib),
    )
    _, lib_config = read_image(w / "lib-layout", "v1")
    bases = {
        "layout": f"oci:{w}/lib-layout:v1",
        "ociarchive": f"oci-archive:{w}/lib.oci.tar",
        "dockerarchive": f"docker-archive:{w}/lib.docker.tar",
        "stored": "lib:1",
    }
    for name, ref in bases.items():
        ctx = rb.make_context(
            f"ctx-{name}",
            {
                "Dockerfile": f"FROM {ref}\nCOPY app.txt ./app.txt\n",
                "app.txt": f"{name}\n",
            },
        )
        build(rb, ctx, name)
        files = files_of(layout(rb, name), name)
        assert files["lib/run"] == b"#!/bin/sh\n", name
        assert files["lib/link"] == "symlink:run", name
        assert files["lib/app.txt"] == f"{name}\n".encode(), name  # WORKDIR of the base
        manifest, config = read_image(layout(rb, name), name)
        assert config["config"]["Env"] == lib_config["config"]["Env"], name
        assert config["config"]["Cmd"] == ["/lib/run"], name
        assert config["rootfs"]["diff_ids"][:-1] == lib_config["rootfs"]["diff_ids"], name
        assert len(manifest["layers"]) == len(lib_config["rootfs"]["diff_ids"]) + 1
        assert config["history"][:-1] == lib_config["history"], name
        assert config["history"][-1]["created_by"] == "COPY app.txt ./app.txt # buildkit"


def test_onbuild_triggers_run_in_the_child_and_are_cleared(rb: Any) -> None:
    base = rb.make_context(
        "base",
        {
            "Dockerfile": (
                "FROM scratch\n"
                "COPY base.txt /base.txt\n"
                "ONBUILD COPY trigger.txt /triggered.txt\n"
                "ONBUILD LABEL from.onbuild=yes\n"
                "ONBUILD ENV ONB=1\n"
            ),
            "base.txt": "base\n",
        },
    )
    build(rb, base, "onb", "-t", "onb:1")
    _, base_config = read_image(layout(rb, "onb"), "onb")
    assert base_config["config"]["OnBuild"] == [
        "COPY trigger.txt /triggered.txt",
        "LABEL from.onbuild=yes",
        "ENV ONB=1",
    ]
    assert not (rb.workdir / "trigger.txt").exists()

    child = rb.make_context(
        "child",
        {
            "Dockerfile": "FROM onb:1\nCOPY child.txt /child.txt\n",
            "trigger.txt": "from the child's context\n",
            "child.txt": "child\n",
        },
    )
    build(rb, child, "child", "-t", "child:1")
    assert plain_files(layout(rb, "child"), "child") == {
        "base.txt": b"base\n",
        "triggered.txt": b"from the child's context\n",
        "child.txt": b"child\n",
    }
    _, config = read_image(layout(rb, "child"), "child")
    assert "OnBuild" not in config["config"]
    assert config["config"]["Labels"] == {"from.onbuild": "yes"}
    assert "ONB=1" in config["config"]["Env"]
    assert [h["created_by"] for h in config["history"]] == [
        "COPY base.txt /base.txt # buildkit",
        "COPY trigger.txt /triggered.txt # buildkit",
        "LABEL from.onbuild=yes",
        "ENV ONB=1",
        "COPY child.txt /child.txt # buildkit",
    ]

    # The triggers ran once: a grandchild (whose context lacks trigger.txt) does not rerun them.
    grandchild = rb.make_context(
        "grandchild",
        {
            "Dockerfile": "FROM child:1\nCOPY g.txt /g.txt\n",
            "g.txt": "g\n",
        },
    )
    build(rb, grandchild, "grandchild")
    assert plain_files(layout(rb, "grandchild"), "grandchild")["g.txt"] == b"g\n"


# -- concurrency -------------------------------------------------------------------------------

PARALLEL_DOCKERFILE = """\
FROM scratch AS a
COPY big-a.bin /a.bin
COPY mark-a /mark

FROM scratch AS b
COPY big-b.bin /b.bin
COPY mark-b /mark

FROM scratch AS c
COPY big-c.bin /c.bin
COPY mark-c /mark

FROM scratch
COPY --from=a /mark /a
COPY --from=b /mark /b
COPY --from=c /mark /c
"""

_STEP = re.compile(r"^#(\d+) \[(\S+) \d+/\d+\] ")
_DONE = re.compile(r"^#(\d+) DONE ")


def stage_spans(stderr: str) -> dict[str, tuple[int, int]]:
    """Stage name -> (line where its first step started, line where its last step ended),
    from the plain progress output (one writer, so line order is event order)."""
    owner: dict[str, str] = {}
    spans: dict[str, list[int]] = {}
    for number, line in enumerate(stderr.splitlines()):
        if m := _STEP.match(line):
            owner[m.group(1)] = m.group(2)
            spans.setdefault(m.group(2), [number, number])
        elif (m := _DONE.match(line)) and m.group(1) in owner:
            spans[owner[m.group(1)]][1] = number
    return {name: (first, last) for name, (first, last) in spans.items()}


def test_independent_stages_overlap_with_jobs_and_serialise_with_one(rb: Any) -> None:
    size = 6 << 20  # random, so gzip and hashing take measurable time on any machine
    files: dict[str, str | bytes] = {"Dockerfile": PARALLEL_DOCKERFILE}
    for name in "abc":
        files[f"big-{name}.bin"] = os.urandom(size)
        files[f"mark-{name}"] = f"{name}\n"
    ctx = rb.make_context("ctx", files)

    proc = build(rb, ctx, "par", "--jobs", "3")
    assert plain_files(layout(rb, "par"), "par") == {"a": b"a\n", "b": b"b\n", "c": b"c\n"}
    spans = stage_spans(proc.stderr)
    independent = [spans[name] for name in "abc"]
    # Some stage started before another one had finished: they ran overlapping in time.
    starts = sorted(first for first, _ in independent)
    first_end = min(last for _, last in independent)
    assert starts[1] < first_end, proc.stderr
    # The final stage waited for all three.
    assert spans["stage-3"][0] > max(last for _, last in independent), proc.stderr

    proc = build(rb, ctx, "ser", "--jobs", "1")
    spans = stage_spans(proc.stderr)
    ordered = sorted(spans.values())
    for (_, end), (next_start, _) in itertools.pairwise(ordered):
        assert end < next_start, proc.stderr  # one stage at a time
    assert len(ordered) == 4
    # Same inputs, same image either way.
    assert files_of(layout(rb, "ser"), "ser") == files_of(layout(rb, "par"), "par")
