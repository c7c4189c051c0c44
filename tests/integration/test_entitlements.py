"""Entitlements through the real `rootbuild` executable, as the unprivileged build user:
``RUN --network=host``, ``RUN --security=insecure`` and ``RUN --device`` are refused at plan
time (one line naming the Dockerfile line, store unchanged) unless ``--allow`` grants them,
work when granted, and are refused with ``--untrusted`` whatever ``--allow`` says.

Docker's reference: https://docs.docker.com/reference/dockerfile/#run---network and
https://docs.docker.com/reference/dockerfile/#run---security; `docker buildx build --allow`:
https://docs.docker.com/reference/cli/docker/buildx/build/#allow
"""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import Harness
from test_build_run import Image, build, build_to_layout, busybox_context, error_lines

pytestmark = pytest.mark.integration

#: Docker's default capability set (what every RUN keeps), as /proc/self/status shows it
DEFAULT_CAPS = "00000000a80425fb"
CAP_SYS_ADMIN = 21
CAP_NET_RAW = 13


def context(rb: Harness, name: str, run_line: str) -> Path:
    return busybox_context(rb, name, (
        "FROM scratch\n"
        "COPY rootfs/ /\n"
        "RUN echo first-step-ran\n"
        f"{run_line}\n"
    ), {"rootfs/bin/test": "symlink:busybox", "rootfs/bin/awk": "symlink:busybox",
        "rootfs/bin/umount": "symlink:busybox"})


def refused(rb: Harness, ctx: Path, *args: str) -> list[str]:
    """Build ``ctx`` expecting a plan-time refusal: the error lines; nothing ran, the store
    is as it was."""
    if not (rb.workdir / "warm").exists():
        build(rb, busybox_context(rb, "warm", "FROM scratch\nCOPY rootfs/ /\n"))
    before = rb.store_snapshot()
    proc = build(rb, ctx, *args, check=False)
    assert proc.returncode != 0
    assert "first-step-ran" not in proc.stderr and "Traceback" not in proc.stderr
    assert rb.store_snapshot() == before
    return error_lines(proc.stderr)


def host_interfaces() -> set[str]:
    lines = Path("/proc/net/dev").read_text().splitlines()[2:]
    return {line.split(":")[0].strip() for line in lines}


# -- network.host -----------------------------------------------------------------------------


def test_network_host_needs_the_entitlement(rb: Harness) -> None:
    """Docker: "The use of --network=host is protected by the network.host entitlement,
    which needs to be enabled ... for a build request with --allow network.host flag."
    (reference, RUN --network=host). rootbuild asks for it even though its default RUN
    network is the host's: the Dockerfile asking explicitly is what BuildKit guards."""
    line = "RUN --network=host awk 'NR>2{print $1}' /proc/net/dev > /ifaces"
    ctx = context(rb, "net-host", line)
    assert refused(rb, ctx) == [
        "rootbuild: Dockerfile:4: RUN --network=host: entitlement network.host is not "
        "allowed; fix: build with --allow network.host"
    ]
    # granted: the step is in the host's network namespace even in a --network=none build
    layout, _ = build_to_layout(rb, ctx, "--allow", "network.host", "--network", "none")
    seen = {name.rstrip(":") for name in Image(rb, layout).text("ifaces").split()}
    assert seen == host_interfaces()
    assert refused(rb, ctx, "--allow", "network.host", "--untrusted") == [
        "rootbuild: Dockerfile:4: RUN --network=host: entitlement network.host is not "
        "allowed in an untrusted build (--untrusted refuses it even with --allow)"
    ]


def test_network_none_and_default_need_nothing(rb: Harness) -> None:
    ctx = context(rb, "net-none", "RUN --network=none awk 'NR>2{print $1}' /proc/net/dev"
                                  " > /ifaces")
    layout, _ = build_to_layout(rb, ctx, "--untrusted")
    assert Image(rb, layout).text("ifaces").split() == ["lo:"]


# -- security.insecure ----------------------------------------------------------------------


def test_security_insecure_needs_the_entitlement_and_keeps_every_capability(
    rb: Harness
) -> None:
    """Docker: "With --security=insecure, the builder runs the command without sandbox in
    insecure mode ... In order to access this feature, entitlement security.insecure should
    be enabled ... for a build request with --allow security.insecure flag." (reference,
    RUN --security). Rootless, "insecure" keeps every capability of the step's user
    namespace (it can mount a tmpfs), never more than the invoking user has."""
    line = ("RUN --security=insecure grep CapBnd /proc/self/status > /caps"
            " && mkdir /m && mount -t tmpfs none /m && umount /m && echo mounted > /mounted")
    ctx = context(rb, "insecure", line)
    assert refused(rb, ctx) == [
        "rootbuild: Dockerfile:4: RUN --security=insecure: entitlement security.insecure is "
        "not allowed; fix: build with --allow security.insecure"
    ]
    layout, _ = build_to_layout(rb, ctx, "--allow", "security.insecure")
    image = Image(rb, layout)
    caps = int(image.text("caps").split()[1], 16)
    assert caps & (1 << CAP_SYS_ADMIN)
    # every capability the kernel knows, held in the step's user namespace: they act only
    # on what that namespace owns (its mounts, its processes), never on the host's
    last = int(Path("/proc/sys/kernel/cap_last_cap").read_text())
    assert caps == (1 << (last + 1)) - 1
    assert image.text("mounted") == "mounted\n"
    assert refused(rb, ctx, "--allow", "security.insecure", "--untrusted") == [
        "rootbuild: Dockerfile:4: RUN --security=insecure: entitlement security.insecure is "
        "not allowed in an untrusted build (--untrusted refuses it even with --allow)"
    ]


def test_default_and_sandbox_security_drop_to_dockers_capabilities(rb: Harness) -> None:
    ctx = context(rb, "sandbox", "RUN --security=sandbox grep CapBnd /proc/self/status"
                                 " > /caps && (mount -t tmpfs none /tmp || echo refused"
                                 " > /refused)")
    layout, _ = build_to_layout(rb, ctx)
    image = Image(rb, layout)
    assert image.text("caps").split()[1] == DEFAULT_CAPS
    assert image.text("refused") == "refused\n"
    # --untrusted (--network=isolated): CAP_NET_RAW goes too, a packet socket would write
    # frames to the user-mode stack past the step's deny routes (sandbox/netdeny.py)
    layout, _ = build_to_layout(rb, ctx, "--untrusted", "--no-cache")
    image = Image(rb, layout)
    assert int(image.text("caps").split()[1], 16) == int(DEFAULT_CAPS, 16) & ~(1 << CAP_NET_RAW)
    assert image.text("refused") == "refused\n"


# -- device -----------------------------------------------------------------------------------


def test_device_needs_the_entitlement_and_binds_the_host_node(rb: Harness) -> None:
    """BuildKit's `RUN --device=NAME[,required]` (Dockerfile labs) needs the `device`
    entitlement (`--allow device`). rootbuild takes host device node paths; the step can use
    the node only as far as the invoking user can."""
    assert Path("/dev/fuse").is_char_device()
    line = ("RUN --device=/dev/fuse --device=/dev/rootbuild-absent"
            " test -c /dev/fuse && echo fuse > /dev-ok && test ! -e /dev/rootbuild-absent"
            " && echo skipped > /absent-ok")
    ctx = context(rb, "device", line)
    assert refused(rb, ctx) == [
        "rootbuild: Dockerfile:4: RUN --device=/dev/fuse: entitlement device is not "
        "allowed; fix: build with --allow device"
    ]
    layout, _ = build_to_layout(rb, ctx, "--allow", "device")
    image = Image(rb, layout)
    assert image.text("dev-ok") == "fuse\n"
    assert image.text("absent-ok") == "skipped\n"
    names = {name for layer in image.layers for name in layer}
    assert not any(name.startswith("dev/") for name in names)
    assert refused(rb, ctx, "--allow", "device", "--untrusted") == [
        "rootbuild: Dockerfile:4: RUN --device=/dev/fuse: entitlement device is not allowed "
        "in an untrusted build (--untrusted refuses it even with --allow)"
    ]


@pytest.mark.parametrize(("device", "message"), [
    ("/dev/rootbuild-absent,required",
     "RUN --device=/dev/rootbuild-absent: required device not found on this host"),
    ("vendor.com/gpu=0",
     "RUN --device=vendor.com/gpu=0: CDI devices are not supported; name a host device node "
     "such as /dev/fuse"),
])
def test_bad_devices_fail_at_plan_time(rb: Harness, device: str, message: str) -> None:
    ctx = context(rb, "device-bad", f"RUN --device={device} true")
    assert refused(rb, ctx, "--allow", "device") == [f"rootbuild: Dockerfile:4: {message}"]


def test_unknown_entitlement_is_a_usage_error(rb: Harness) -> None:
    ctx = context(rb, "allow-bad", "RUN true")
    proc = build(rb, ctx, "--allow", "network.hots", check=False)
    assert proc.returncode == 2
    assert error_lines(proc.stderr) == [
        "rootbuild: --allow network.hots: unknown entitlement (known: network.host, "
        "security.insecure, device)"
    ]
