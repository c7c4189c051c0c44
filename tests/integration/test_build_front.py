"""Front-end features through the real `rootbuild` executable, as the unprivileged user:
``RUN <<EOF`` with a ``#!`` interpreter line, named build contexts
(``--build-context``) and build checks (``--check``, ``# check=`` directive).

Expectations come from Docker's documentation, cited per test.
"""

from __future__ import annotations

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
