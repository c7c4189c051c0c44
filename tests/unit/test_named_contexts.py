"""Named build contexts: parsing ``--build-context`` and how the plan resolves names
(``stages/contexts.py``, ``stages/graph.py``, ``engine/named_contexts.py``)."""

from __future__ import annotations

import functools
import time
from pathlib import Path

import pytest

from rootbuild.dockerfile.parser import parse_dockerfile
from rootbuild.engine.named_contexts import NamedContext, parse_build_context, plan_contexts
from rootbuild.errors import UsageError
from rootbuild.platform import Platform
from rootbuild.stages.contexts import context_key
from rootbuild.stages.graph import StageBase
from rootbuild.stages.plan import BuildPlan, plan

AMD64 = Platform("linux", "amd64")


@pytest.mark.parametrize(("word", "key"), [
    ("alpine", "alpine"),
    ("alpine:latest", "alpine"),
    ("docker.io/library/alpine:latest", "alpine"),
    ("docker.io/foo/bar", "foo/bar"),
    ("alpine:3.20", "alpine:3.20"),
    ("localhost:5000/x:latest", "localhost:5000/x"),
    ("a@sha256:" + "0" * 64, "a@sha256:" + "0" * 64),
    ("Build", None),
    ("", None),
])
def test_context_key_is_buildkits_familiar_name(word: str, key: str | None) -> None:
    assert context_key(word) == key


def _plan(text: str, **contexts: StageBase) -> BuildPlan:
    return plan(parse_dockerfile(text), target=None, build_args={}, target_platform=AMD64,
                build_platform=AMD64, contexts=contexts)


def test_from_and_copy_from_resolve_a_named_context_before_an_image() -> None:
    built = _plan(
        "FROM alpine:latest AS a\nCOPY --from=tools /bin/x /x\nCOPY --from=other / /o\n",
        alpine=StageBase(context="alpine"), tools=StageBase(image="oci:/l:v1"),
    )
    stage = built.target_stage
    assert stage.base == StageBase(context="alpine")
    assert dict(stage.refs) == {"tools": StageBase(image="oci:/l:v1"),
                                "other": StageBase(image="other")}
    assert stage.images == ("oci:/l:v1", "other")


def test_a_named_context_replaces_a_stage_of_the_same_name() -> None:
    """docker buildx build --build-context: "When Dockerfile defines a stage with the same
    name it is overwritten." The stage's own instructions never run."""
    built = _plan(
        "FROM busybox AS base\nRUN make\n"
        "FROM base\nCOPY --from=base /x /x\n",
        base=StageBase(image="alpine"),
    )
    assert built.order == (0, 1)
    replaced = built.stage(0)
    assert replaced.base == StageBase(image="alpine")
    assert replaced.instructions == ()
    assert built.stage(1).base == StageBase(stage=0)
    assert dict(built.stage(1).refs) == {"base": StageBase(stage=0)}


def test_unknown_context_names_are_unused() -> None:
    built = _plan("FROM scratch\nCOPY --from=stage0 / /\n", nothing=StageBase(context="nothing"))
    assert dict(built.target_stage.refs) == {"stage0": StageBase(image="stage0")}


def test_parse_build_context_values(tmp_path: Path) -> None:
    assert parse_build_context(f"src={tmp_path}") == NamedContext("src", directory=tmp_path)
    assert parse_build_context("alpine=docker-image://busybox:1") == NamedContext(
        "alpine", image="busybox:1")
    (tmp_path / "index.json").write_text("{}")
    assert parse_build_context(f"base=oci-layout://{tmp_path}:v1") == NamedContext(
        "base", image=f"oci:{tmp_path}:v1")
    assert parse_build_context(f"base=oci-layout://{tmp_path}").image == f"oci:{tmp_path}"
    digest = "sha256:" + "ab" * 32
    assert parse_build_context(f"base=oci-layout://{tmp_path}:v1@{digest}").image == \
        f"oci:{tmp_path}:{digest}"
    contexts = plan_contexts([parse_build_context(f"docker.io/library/alpine={tmp_path}")])
    assert contexts == {"alpine": StageBase(context="alpine")}


@pytest.mark.parametrize(("value", "message"), [
    ("nothing", "expected NAME=VALUE"),
    ("=dir", "expected NAME=VALUE"),
    ("name=", "expected NAME=VALUE"),
    ("Upper={tmp}", "invalid context name 'Upper'"),
    ("a={tmp}/missing", "is not a directory"),
    ("a=https://example.invalid/x.tar", "remote contexts (URL, git) are not supported"),
    ("a=docker-image://", "docker-image:// needs an image name"),
    ("a=docker-image://oci:/x", "docker-image:// needs an image name"),
    ("a=oci-layout://{tmp}/missing", "is not an OCI layout directory"),
    ("a=oci-layout://{tmp}@sha256:00", "'sha256:00' is not a sha256:<64 hex> digest"),
])
def test_bad_build_context_values_are_usage_errors(
    tmp_path: Path, value: str, message: str
) -> None:
    with pytest.raises(UsageError, match=r"^build: --build-context '.*': ") as info:
        parse_build_context(value.format(tmp=tmp_path))
    assert message in info.value.message


def test_a_replaced_stage_passes_on_none_of_its_triggers(tmp_path: Path) -> None:
    """The stage a named context replaces runs nothing, its ONBUILD triggers included."""
    import trio

    from rootbuild.engine.build import build
    from rootbuild.engine.options import BuildOptions
    from rootbuild.engine.seams import Seams
    from rootbuild.image.store import Store
    from rootbuild.testing.fakes import (
        FakeBaseImages,
        FakeExecutor,
        FakeExporter,
        RecordingProgress,
    )

    context, named = tmp_path / "ctx", tmp_path / "named"
    context.mkdir()
    named.mkdir()
    (named / "f.txt").write_text("f\n")
    (context / "Dockerfile").write_text(
        "FROM scratch AS base\nONBUILD RUN trigger\nRUN never\nFROM base\nRUN child\n")
    store = Store.open(tmp_path / "store")
    executor = FakeExecutor()
    options = BuildOptions(context_dir=context, target_platform=AMD64,
                           build_contexts=(parse_build_context(f"base={named}"),))
    seams = Seams(executor, FakeBaseImages(store), FakeExporter(), lambda: "fake")
    result = trio.run(lambda: build(options, store, RecordingProgress(), seams=seams))
    assert [spec.argv[-1] for spec in executor.specs] == ["child"]
    assert len(result.image.layers) == 1  # the directory's files; "child" changed nothing
    assert _plan("FROM scratch AS base\nFROM base\n",
                 base=StageBase(context="base")).stage(0).replaced


def test_mount_from_resolves_a_named_context_as_copy_from_does() -> None:
    """``RUN --mount from=NAME`` goes through the same resolution (the mount itself is
    carried out by the RUN --mount work of issue 12)."""
    built = _plan("FROM scratch\nRUN --mount=type=bind,from=tools,target=/t true\n"
                  "RUN --mount=type=cache,from=seed,target=/c true\n",
                  tools=StageBase(context="tools"), seed=StageBase(image="oci:/s"))
    assert dict(built.target_stage.refs) == {"tools": StageBase(context="tools"),
                                             "seed": StageBase(image="oci:/s")}


def test_a_directory_base_is_the_same_layer_every_build(tmp_path: Path) -> None:
    """FROM a directory context twice gives the same image (the layer is made the same
    way each time, so a rebuild changes no digest)."""
    import trio

    from rootbuild.engine.build import build
    from rootbuild.engine.options import BuildOptions
    from rootbuild.engine.seams import Seams
    from rootbuild.image.store import Store
    from rootbuild.testing.fakes import (
        FakeBaseImages,
        FakeExecutor,
        FakeExporter,
        RecordingProgress,
    )

    context, named = tmp_path / "ctx", tmp_path / "named"
    (named / "sub").mkdir(parents=True)
    context.mkdir()
    (named / "sub/f.txt").write_text("f\n")
    (context / "Dockerfile").write_text("FROM rootfs\nCOPY --from=rootfs sub /copy\n")
    store = Store.open(tmp_path / "store")
    options = BuildOptions(context_dir=context, target_platform=AMD64,
                           build_contexts=(parse_build_context(f"rootfs={named}"),))
    digests = []
    for _ in range(2):
        seams = Seams(FakeExecutor(), FakeBaseImages(store), FakeExporter(), lambda: "fake")
        run = functools.partial(build, options, store, RecordingProgress(), seams=seams)
        result = trio.run(run)
        digests.append(result.image.manifest.digest)
        time.sleep(1.1)  # another second: no time of the build may reach the image
    assert digests[0] == digests[1]
