"""Front-end features through the real `rootbuild` executable, as the unprivileged user:
``RUN <<EOF`` with a ``#!`` interpreter line, named build contexts
(``--build-context``) and build checks (``--check``, ``# check=`` directive).

Expectations come from Docker's documentation, cited per test.
"""

from __future__ import annotations

import json

import pytest
from conftest import Harness
from test_build_run import (
    Image,
    assert_nothing_left,
    build,
    build_to_layout,
    busybox_context,
    error_lines,
)

pytestmark = pytest.mark.integration


# -- RUN <<EOF with a #! line --------------------------------------------------------------------


def test_shebang_heredoc_runs_its_interpreter_and_leaves_no_file(rb: Harness) -> None:
    """Docker's Dockerfile reference, "Here-documents", example "Running a multi-line
    script": "If the command only contains a here-document, its contents is evaluated with
    the default shell. [...] Alternatively, shebang header can be used to define an
    interpreter." (https://docs.docker.com/reference/dockerfile/#example-running-a-multi-line-script).
    BuildKit writes the body to a file of mode 0755 in a read-only mount at /dev/pipes/ and
    runs that file: $0 is /dev/pipes/<name>, and nothing of it stays in the layer."""
    ctx = busybox_context(rb, "shebang", (
        "FROM scratch\n"
        "COPY rootfs/ /\n"
        "RUN mkdir /out\n"
        "RUN <<EOF\n"
        "#!/bin/sh\n"
        'echo "$0" > /out/argv0\n'
        "stat -c %a \"$0\" > /out/mode\n"
        'if echo x >> "$0"; then echo writable; else echo read-only; fi > /out/write\n'
        "if touch /dev/pipes/new; then echo writable; else echo read-only; fi > /out/dir\n"
        "ls /dev/pipes > /out/pipes\n"
        "EOF\n"
        "RUN <<-SCRIPT\n"
        "\t#!/bin/sh -e\n"
        '\techo "flags=$-" > /out/flags\n'
        "\tSCRIPT\n"
        'RUN <<"BB"\n'
        "#!/bin/busybox sh\n"
        'echo "busybox ${0##*/}" > /out/busybox\n'
        "BB\n"
    ))
    layout, proc = build_to_layout(rb, ctx)
    image = Image(rb, layout)
    assert image.text("out/argv0") == "/dev/pipes/EOF\n"
    assert image.text("out/mode") == "755\n"
    assert image.text("out/write") == "read-only\n"
    assert image.text("out/dir") == "read-only\n"  # a read-only mount, as BuildKit's
    assert image.text("out/pipes") == "EOF\n"  # holding the script alone
    assert "e" in image.text("out/flags").removeprefix("flags=")  # the #! argument applied
    assert image.text("out/busybox") == "busybox BB\n"
    for members in image.layers:
        assert not [name for name in members if name == "dev" or name.startswith("dev/")], \
            "the script or its mount point reached a layer"
    created = [c for c, _ in image.history if "/dev/pipes/" in c]
    assert created == ["RUN /bin/sh -c /dev/pipes/EOF # buildkit",
                       "RUN /bin/sh -c /dev/pipes/SCRIPT # buildkit",
                       "RUN /bin/sh -c /dev/pipes/BB # buildkit"], image.history
    assert_nothing_left(rb, [])
    del proc


def test_shebang_heredoc_failure_is_the_steps_exit_code(rb: Harness) -> None:
    """The interpreter's `-e` stops the script at `false`; the step fails as any RUN does,
    with BuildKit's wording, and the store is left as it was."""
    ctx = busybox_context(rb, "shebang-fails", (
        "FROM scratch\n"
        "COPY rootfs/ /\n"
        "RUN <<EOF\n"
        "#!/bin/sh -e\n"
        "false\n"
        "echo survived > /survived\n"
        "EOF\n"
    ))
    build(rb, busybox_context(rb, "ok", "FROM scratch\nCOPY rootfs/ /\n"))
    before = rb.store_snapshot()
    proc = build(rb, ctx, check=False)
    assert proc.returncode != 0
    assert error_lines(proc.stderr) == [
        'rootbuild: Dockerfile:3: RUN: process "/bin/sh -c /dev/pipes/EOF" did not complete '
        "successfully: exit code: 1"
    ], proc.stderr
    assert "Traceback" not in proc.stderr
    assert rb.store_snapshot() == before
    assert_nothing_left(rb, [])


# -- named build contexts ------------------------------------------------------------------------

def test_directory_context_for_copy_from_and_from_replacing_a_stage(rb: Harness) -> None:
    """docker buildx build reference, --build-context: "Define additional build context
    with specified contents. In Dockerfile the context can be accessed when FROM name or
    --from=name is used. When Dockerfile defines a stage with the same name it is
    overwritten." A local directory is read as the main context is, with its own
    .dockerignore."""
    ctx = busybox_context(rb, "named-dir", (
        "FROM scratch AS src\n"
        "COPY does-not-exist /\n"  # the stage is replaced: this never runs
        "FROM rootfs\n"
        "COPY --from=src a.txt /from-src/\n"
        "COPY --from=src . /all/\n"
        "RUN ls /all > /listing && cat /from-src/a.txt > /seen\n"
    ))
    src = rb.make_context("src-dir", {"a.txt": "from the named context\n", "ignored.txt": "x",
                                      "sub/b.txt": "b\n", ".dockerignore": "ignored.txt\n"})
    layout, _ = build_to_layout(rb, ctx, "--build-context", f"src={src}",
                                "--build-context", f"rootfs={ctx / 'rootfs'}",
                                "--build-context", f"unused={src}")
    image = Image(rb, layout)
    assert image.text("seen") == "from the named context\n"
    assert image.text("listing").split() == ["a.txt", "sub"]  # ignored.txt is not there
    assert image.text("all/.dockerignore") == "ignored.txt\n"
    assert image.text("all/sub/b.txt") == "b\n"
    # FROM a directory: its files are the first layer, the config is empty (no Env)
    assert "bin/busybox" in image.layers[0] and "Dockerfile" not in image.layers[0]
    assert image.config["config"].get("Env") in (None, ["PATH=/usr/local/sbin:/usr/local/bin:"
                                                        "/usr/sbin:/usr/bin:/sbin:/bin"])
    # a change in the named context is a cache miss; none is a hit
    again = build(rb, ctx, "--build-context", f"src={src}",
                  "--build-context", f"rootfs={ctx / 'rootfs'}")
    assert "CACHED" in again.stderr
    (src / "a.txt").write_text("changed\n")
    layout2 = rb.workdir / "named-dir2.oci"
    build(rb, ctx, "--output", f"oci:{layout2}:v1", "--build-context", f"src={src}",
          "--build-context", f"rootfs={ctx / 'rootfs'}")
    assert Image(rb, layout2).text("seen") == "changed\n"
    assert_nothing_left(rb, [])


def test_directory_context_as_a_run_mount_source(rb: Harness) -> None:
    """docker buildx build reference, --build-context: "In Dockerfile the context can be
    accessed when FROM name or --from=name is used"; Dockerfile reference, RUN
    --mount=type=bind: "from: Build stage, context, or image name for the root of the
    source. Defaults to the build context." A directory context mounts its files as its
    .dockerignore admits them, read-only, and a change in the bound file reruns the step."""
    ctx = busybox_context(rb, "named-mount", (
        "FROM scratch\n"
        "COPY rootfs/ /\n"
        "RUN --mount=from=src,target=/src cat /src/a.txt > /seen && ls -A /src > /listing"
        " && if touch /src/new; then echo writable; else echo read-only; fi > /write\n"
    ))
    src = rb.make_context("mount-src-dir", {"a.txt": "mounted\n", "ignored.txt": "x",
                                            ".dockerignore": "ignored.txt\n"})
    layout, _ = build_to_layout(rb, ctx, "--build-context", f"src={src}")
    image = Image(rb, layout)
    assert image.text("seen") == "mounted\n"
    assert image.text("listing").split() == [".dockerignore", "a.txt"]
    assert image.text("write") == "read-only\n"
    assert not any(name.startswith("src") for layer in image.layers for name in layer)
    (src / "a.txt").write_text("changed\n")
    layout2 = rb.workdir / "named-mount2.oci"
    build(rb, ctx, "--output", f"oci:{layout2}:v1", "--build-context", f"src={src}")
    assert Image(rb, layout2).text("seen") == "changed\n"
    assert_nothing_left(rb, [])


def test_image_contexts_docker_image_and_oci_layout(rb: Harness) -> None:
    """docker buildx build reference, --build-context: "The value can be a local source
    directory, local OCI layout compliant directory, container image (with docker-image://
    prefix) [...]" and "Replace alpine:latest with a pinned one" (FROM alpine gets the
    context's image)."""
    base = busybox_context(rb, "named-base", "FROM scratch\nCOPY rootfs/ /\n"
                                            "RUN echo from-base > /marker\n")
    rb.run("build", "-q", "-t", "mybase:1", str(base))
    tools_layout = rb.workdir / "tools.oci"
    tools = rb.make_context("named-tools", {"Dockerfile": "FROM scratch\nCOPY t.txt /t.txt\n",
                                            "t.txt": "from the layout\n"})
    build(rb, tools, "--output", f"oci:{tools_layout}:v2")
    ctx = rb.make_context("named-images", {"Dockerfile": (
        "FROM alpine:latest\n"
        "COPY --from=tools /t.txt /t.txt\n"
        "RUN cat /marker /t.txt > /both\n"
    )})
    layout, _ = build_to_layout(rb, ctx, "--build-context", "alpine=docker-image://mybase:1",
                                "--build-context", f"tools=oci-layout://{tools_layout}:v2")
    assert Image(rb, layout).text("both") == "from-base\nfrom the layout\n"
    # "oci-layout:///path/to/layout@sha256:..." (the buildx example): pinned by digest
    digest = json.loads((tools_layout / "index.json").read_text())["manifests"][0]["digest"]
    pinned = rb.workdir / "pinned.oci"
    build(rb, ctx, "--output", f"oci:{pinned}:v1",
          "--build-context", "alpine=docker-image://mybase:1",
          "--build-context", f"tools=oci-layout://{tools_layout}@{digest}")
    assert Image(rb, pinned).text("both") == "from-base\nfrom the layout\n"
    missing = "sha256:" + "0" * 64
    proc = build(rb, ctx, "--build-context", "alpine=docker-image://mybase:1",
                 "--build-context", f"tools=oci-layout://{tools_layout}@{missing}", check=False)
    assert proc.returncode == 1
    assert error_lines(proc.stderr) == [
        f"rootbuild: Dockerfile:2: read OCI layout {tools_layout}: no image with digest "
        f"{missing}"], proc.stderr
    assert_nothing_left(rb, [])


@pytest.mark.parametrize(("value", "message"), [
    ("src", "--build-context 'src': expected NAME=VALUE"),
    ("src=/nonexistent/dir", "--build-context 'src=/nonexistent/dir': /nonexistent/dir is "
                             "not a directory"),
    ("src=oci-layout:///nonexistent", "is not an OCI layout directory (no index.json)"),
    ("src=https://example.invalid/ctx.tar", "remote contexts (URL, git) are not supported"),
])
def test_bad_build_context_is_a_usage_error(rb: Harness, value: str, message: str) -> None:
    """--build-context takes "a local source directory, local OCI layout compliant
    directory, container image (with docker-image:// prefix), Git or HTTP URL"
    (https://docs.docker.com/reference/cli/docker/buildx/build/#build-context); anything
    else, and the remote forms rootbuild does not fetch, fail before anything is built
    (a usage error: exit 2, one line, the store untouched)."""
    ctx = rb.make_context("named-bad", {"Dockerfile": "FROM scratch\nCOPY --from=src / /\n"})
    before = rb.store_snapshot()
    proc = build(rb, ctx, "--build-context", value, check=False)
    assert proc.returncode == 2, proc.stderr
    lines = error_lines(proc.stderr)
    assert len(lines) == 1 and message in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr
    assert rb.store_snapshot() == before


# -- build checks --------------------------------------------------------------------------------

LINTED = (
    "FROM scratch as base\n"
    "COPY rootfs/ /\n"
    "RUN exit 3\n"  # --check builds nothing: this never runs
    "CMD echo hi\n"
)


def test_check_prints_warnings_with_lines_and_builds_nothing(rb: Harness) -> None:
    """Docker's "Checking your build configuration": "With build checks, rather than
    executing the build steps, Docker checks the Dockerfile and options you provide and
    reports any issues it detects." (https://docs.docker.com/build/checks/), with the
    rules' own messages (https://docs.docker.com/reference/build-checks/)."""
    ctx = busybox_context(rb, "check", LINTED)
    proc = build(rb, ctx, "--check")
    assert proc.stdout.splitlines() == [
        "Dockerfile:1: FromAsCasing: 'as' and 'FROM' keywords' casing do not match",
        "  https://docs.docker.com/go/dockerfile/rule/from-as-casing/",
        "     1 | FROM scratch as base",
        "Dockerfile:4: JSONArgsRecommended: JSON arguments recommended for CMD to prevent "
        "unintended behavior related to OS signals",
        "  https://docs.docker.com/go/dockerfile/rule/json-args-recommended/",
        "     4 | CMD echo hi",
        "Check complete, 2 warnings have been found!",
    ], proc.stdout
    assert "RUN exit 3" not in proc.stderr and "#1" not in proc.stderr  # no step ran
    assert rb.run("images", "-q").stdout == ""
    assert build(rb, ctx, "--call=check").stdout == proc.stdout  # buildx's spelling
    skipped = busybox_context(rb, "check-skip", "# check=skip=all\n" + LINTED)
    assert build(rb, skipped, "--check").stdout == "Check complete, no warnings found.\n"
    outline = build(rb, ctx, "--call=outline", check=False)
    assert outline.returncode == 2
    assert error_lines(outline.stderr) == [
        "rootbuild: build: --call=outline: only build and check are supported (outline and "
        "targets are not implemented)"], outline.stderr
    assert_nothing_left(rb, [])


def test_check_error_true_fails_check_and_build_before_any_step(rb: Harness) -> None:
    """"To make the build fail when a check fires, use the `error=true` option in the
    check directive" (https://docs.docker.com/build/checks/#fail-build-on-check-violations).
    The build stops before any step and leaves the store as it was."""
    ctx = busybox_context(rb, "check-error", "# check=error=true\n" + LINTED.replace(
        "RUN exit 3", "RUN touch /ran"))
    build(rb, busybox_context(rb, "warm", "FROM scratch\nCOPY rootfs/ /\n"))
    before = rb.store_snapshot()
    for args in (("--check",), ()):
        proc = build(rb, ctx, *args, check=False)
        assert proc.returncode == 1, proc.stderr
        assert error_lines(proc.stderr) == [
            "rootbuild: Dockerfile:2: lint violation found for rules: FromAsCasing, "
            "JSONArgsRecommended"], proc.stderr
        assert "Traceback" not in proc.stderr and "RUN touch" not in proc.stderr
        assert rb.store_snapshot() == before
    assert_nothing_left(rb, [])


def test_build_lists_check_warnings_at_the_end(rb: Harness) -> None:
    """"Invoking a build runs the checks by default, and displays any violations in the
    build output." (https://docs.docker.com/build/checks/#build-with-checks)."""
    ctx = busybox_context(rb, "check-build", LINTED.replace("RUN exit 3", "RUN true"))
    proc = build(rb, ctx)
    tail = proc.stderr.splitlines()[-4:]
    assert tail[:3] == [
        "2 warnings found:",
        " - FromAsCasing: 'as' and 'FROM' keywords' casing do not match (line 1)",
        " - JSONArgsRecommended: JSON arguments recommended for CMD to prevent unintended "
        "behavior related to OS signals (line 4)",
    ], proc.stderr
    assert_nothing_left(rb, [])


def test_bad_check_directive_is_one_located_error(rb: Harness) -> None:
    """The check directive takes "# check=skip=<checks|all>" and "# check=error=<boolean>"
    (https://docs.docker.com/reference/dockerfile/#check); BuildKit refuses any other
    option ("invalid check option") before building, and so does rootbuild, at its line."""
    ctx = busybox_context(rb, "check-bad", "# check=colour=red\nFROM scratch\n")
    for args in (("--check",), ()):
        proc = build(rb, ctx, *args, check=False)
        assert proc.returncode == 1
        assert error_lines(proc.stderr) == [
            'rootbuild: Dockerfile:1: invalid check option "colour"'], proc.stderr
        assert "Traceback" not in proc.stderr


def test_missing_file_in_a_directory_context_names_the_line(rb: Harness) -> None:
    """A directory context is read as the main context is: a source it lacks (or its
    .dockerignore excludes) fails the COPY at its line, and the store is left as it was."""
    src = rb.make_context("named-missing-src", {"a.txt": "a\n", "secret.txt": "s\n",
                                                ".dockerignore": "secret.txt\n"})
    warm = rb.make_context("named-missing-warm", {
        "Dockerfile": "FROM scratch\nCOPY --from=src a.txt /a\n"})
    build(rb, warm, "--build-context", f"src={src}")  # the store exists, COPY a.txt cached
    for name in ("nothing.txt", "secret.txt"):
        ctx = rb.make_context(f"named-missing-{name}", {
            "Dockerfile": f"FROM scratch\nCOPY --from=src a.txt /a\nCOPY --from=src {name} /\n"})
        before = rb.store_snapshot()
        proc = build(rb, ctx, "--build-context", f"src={src}", check=False)
        assert proc.returncode == 1, proc.stderr
        lines = error_lines(proc.stderr)
        assert len(lines) == 1 and lines[0].startswith("rootbuild: Dockerfile:3: COPY"), lines
        assert name in lines[0]
        assert "Traceback" not in proc.stderr
        assert rb.store_snapshot() == before
    assert_nothing_left(rb, [])
