"""``RUN --mount`` (bind and tmpfs) through the real `rootbuild` executable, as the
unprivileged build user, on a busybox base.

Expectations come from Docker's Dockerfile reference, "RUN --mount"
(https://docs.docker.com/reference/dockerfile/#run---mount), quoted in each test.
"""

from __future__ import annotations

import pytest
from conftest import Harness
from test_build_run import Image, assert_nothing_left, build_to_layout, busybox_context

pytestmark = pytest.mark.integration


def test_smoke(rb: Harness) -> None:
    ctx = busybox_context(rb, "smoke", (
        "FROM scratch\n"
        "COPY rootfs/ /\n"
        "WORKDIR /w\n"
        "RUN --mount=target=ctx cat ctx/a.txt > /a.out; ls ctx > /ls.out\n"
    ), {"a.txt": "hello\n"})
    layout, proc = build_to_layout(rb, ctx)
    print(proc.stderr)
    image = Image(rb, layout)
    assert image.text("a.out") == "hello\n"
    print(image.text("ls.out"))
    print(sorted(image.layers[-1]))
    assert_nothing_left(rb, [])
