"""RUN's network in untrusted builds (issue 13, "Isolation of strangers", Network), through
the real `rootbuild` executable as the unprivileged build user.

``--untrusted`` gives RUN ``--network=isolated`` (slirp4netns, public egress only): no route
to the host's loopback, its other addresses, link-local (the metadata address) or private
ranges, and no abstract unix socket of the host's network namespace. A static probe
(``netprobe/netprobe.c``, compiled here) tries each from inside a step, while canaries
listen on the host and count connections. No packet leaves the machine: public egress is
proved by the route the kernel picks (a UDP ``connect`` sends nothing), not by traffic.

Docker's reference (RUN --network): "none: The command is run with no network access (lo
is still available, but is isolated to this process)"; "host: The command is run in the
host's network environment (similar to docker build --network=host, but on a per-
instruction basis)" and "The use of --network=host is protected by the network.host
entitlement" (https://docs.docker.com/reference/dockerfile/#run---network).
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import re
import secrets
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from conftest import ROOTBUILD, Harness, require_tool
from test_build_run import build, busybox_context, error_lines
from test_entitlements import context as entitlement_context
from test_entitlements import refused

from rootbuild.sandbox import netdeny

pytestmark = pytest.mark.integration

PROBE_SOURCE = Path(__file__).parent / "netprobe" / "netprobe.c"


@pytest.fixture(scope="session")
def probe(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """The probe, compiled static (the step's root is busybox: no libc to link against)."""
    gcc = require_tool("gcc")
    out = tmp_path_factory.mktemp("netprobe") / "netprobe"
    subprocess.run([gcc, "-static", "-O1", "-o", str(out), str(PROBE_SOURCE)], check=True,
                   capture_output=True)
    return out.read_bytes()


class Canary:
    """Servers on the host that count every connection made to them."""

    def __init__(self) -> None:
        self.hits: list[str] = []
        self._socks: list[socket.socket] = []
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def listen(self, family: int, address: object) -> socket.socket:
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.bind(address)
        sock.listen(16)
        sock.settimeout(0.1)
        self._socks.append(sock)
        thread = threading.Thread(target=self._serve, args=(sock,), daemon=True)
        thread.start()
        self._threads.append(thread)
        return sock

    def _serve(self, sock: socket.socket) -> None:
        while not self._stop.is_set():
            try:
                conn, peer = sock.accept()
            except (TimeoutError, OSError):
                continue
            self.hits.append(f"{sock.getsockname()!r} from {peer!r}")
            conn.close()

    def close(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join()
        for sock in self._socks:
            sock.close()


@pytest.fixture
def canary() -> Iterator[Canary]:
    c = Canary()
    try:
        yield c
    finally:
        c.close()


def host_v4() -> str | None:
    """A non-loopback IPv4 address of this machine, if it has one."""
    return next((a for a in netdeny.host_addresses() if not a.startswith("127.")), None)


def host_v6() -> str | None:
    """A global (non-link-local) IPv6 address of this machine, if it has one."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/net/if_inet6").read_text().splitlines():
            raw = line.split()[0]
            ip = ipaddress.IPv6Address(bytes.fromhex(raw))
            if not ip.is_loopback and not ip.is_link_local:
                return str(ip)
    return None


def probe_context(rb: Harness, probe: bytes, name: str, run: str) -> Path:
    ctx = busybox_context(rb, name, (
        "FROM scratch\nCOPY rootfs/ /\n" + run + "\n"
    ), {"rootfs/netprobe": probe, "rootfs/bin/test": "symlink:busybox"})
    os.chmod(ctx / "rootfs/netprobe", 0o755)
    return ctx


def probe_lines(stderr: str) -> dict[str, str]:
    """``probe WHAT ARG: RESULT`` lines of the build output, by ``WHAT ARG``."""
    found = {}
    for line in stderr.splitlines():
        _, sep, rest = line.partition("probe ")
        if sep and ": " in rest:
            key, _, result = rest.partition(": ")
            found[key.strip()] = result.strip()
    return found


def slirp_processes(rb: Harness) -> list[str]:
    out = subprocess.run(["ps", "-o", "pid=,args=", "-u", str(rb.user.uid)],
                         capture_output=True, text=True).stdout
    return [line for line in out.splitlines() if "slirp4netns" in line or "pasta" in line]


@pytest.mark.parametrize("slot", [[], ["--slot", "0"]], ids=["own-ids", "slot"])
def test_untrusted_run_reaches_no_host_service(rb: Harness, probe: bytes,
                                                canary: Canary, slot: list[str]) -> None:
    """Canaries on the host's 127.0.0.1, on its other addresses and on an abstract unix
    socket of the host's network namespace: an untrusted RUN step connects to none of
    them, through any address (its gateway and DNS alias included), and gets no route to
    the metadata address or private ranges; it keeps a loopback of its own, and a route
    for public destinations. The same in a build slot (``--slot``, as every worker job
    runs), where slirp4netns is started by an init that is not root of its namespace."""
    port = canary.listen(socket.AF_INET, ("127.0.0.1", 0)).getsockname()[1]
    targets = [f"127.0.0.1 {port}", f"10.0.2.2 {port}", f"10.0.2.3 {port}", "10.0.2.3 53",
               "169.254.169.254 80", "10.1.2.3 80", "172.16.0.1 80", "192.168.1.1 80",
               "100.100.100.200 80", f"::1 {port}"]
    v4 = host_v4()
    if v4 is not None:
        p4 = canary.listen(socket.AF_INET, (v4, 0)).getsockname()[1]
        targets.append(f"{v4} {p4}")
    v6 = host_v6()
    if v6 is not None:
        p6 = canary.listen(socket.AF_INET6, (v6, 0)).getsockname()[1]
        targets += [f"{v6} {p6}", f"fd00::1 {p6}"]
    name = "rootbuild-canary-" + secrets.token_hex(6)
    canary.listen(socket.AF_UNIX, "\0" + name)
    os.chmod(rb.workdir, 0o755)
    checks = [f"/netprobe tcp {t}" for t in targets]
    # every probe is negated: the step fails if any of them connected
    run = "RUN set -e; " + " && ".join(
        [*(f"! {c}" for c in checks), f"! /netprobe abstract {name}", "! /netprobe packet",
         "! /netprobe route 169.254.169.254", "/netprobe loopback", "/netprobe route 1.1.1.1",
         "echo v6-beyond-lo: $(grep -v -c ' lo$' /proc/net/if_inet6 || true)",
         "echo all-denied"])
    ctx = probe_context(rb, probe, "untrusted", run)
    proc = build(rb, ctx, "--untrusted", *slot, check=False)
    lines = probe_lines(proc.stderr)
    assert proc.returncode == 0, proc.stderr
    assert "all-denied" in proc.stderr
    assert "v6-beyond-lo: 0" in proc.stderr  # IPv6: only ::1, no link-local on tap0
    assert canary.hits == [], canary.hits
    for target in targets:
        host, port_text = target.split()
        assert lines[f"tcp {host}:{port_text}"].startswith("failed:"), lines
    # the metadata address, private ranges, the user-mode stack's gateway and DNS alias
    # (both forward to the host): refused at once by the step's own prohibit routes
    denied = ("169.254.169.254", "10.1.2.3", "172.16.0.1", "192.168.1.1",
              "100.100.100.200", "10.0.2.2", "10.0.2.3")
    for target in targets:
        host, port_text = target.split()
        if host in denied:
            assert lines[f"tcp {host}:{port_text}"] == "failed: Permission denied", lines
    if v4 is not None:
        assert "Permission denied" in lines[f"tcp {v4}:{p4}"]
    assert lines[f"abstract {name}"].startswith("failed:")
    assert "Operation not permitted" in lines["packet socket"]
    assert lines["loopback 127.0.0.1"] == "connected"
    assert lines["route 1.1.1.1"] == "via 10.0.2.100"  # slirp4netns's tap: public egress
    assert lines["route 169.254.169.254"] == "failed: Permission denied"  # UDP as well
    assert slirp_processes(rb) == []  # after success too


def test_trusted_build_keeps_the_host_network(rb: Harness, probe: bytes,
                                              canary: Canary) -> None:
    """Without --untrusted, RUN shares the builder's network, as ``docker build`` does
    ("host" is the classic builder's default): the canary on 127.0.0.1 sees the step."""
    port = canary.listen(socket.AF_INET, ("127.0.0.1", 0)).getsockname()[1]
    ctx = probe_context(rb, probe, "trusted", f"RUN /netprobe tcp 127.0.0.1 {port}")
    proc = build(rb, ctx)
    assert probe_lines(proc.stderr)[f"tcp 127.0.0.1:{port}"] == "connected"
    for _ in range(50):
        if canary.hits:
            break
        time.sleep(0.05)
    assert len(canary.hits) == 1, canary.hits


def test_network_isolated_on_request(rb: Harness, probe: bytes, canary: Canary) -> None:
    """``--network=isolated`` gives a trusted build the same network as --untrusted."""
    port = canary.listen(socket.AF_INET, ("127.0.0.1", 0)).getsockname()[1]
    ctx = probe_context(rb, probe, "isolated",
                        f"RUN ! /netprobe tcp 10.0.2.2 {port} && /netprobe route 1.1.1.1")
    proc = build(rb, ctx, "--network=isolated")
    assert probe_lines(proc.stderr)["route 1.1.1.1"] == "via 10.0.2.100"
    assert canary.hits == []


def test_untrusted_refuses_the_host_network(rb: Harness, probe: bytes) -> None:
    """``--untrusted --network=host``: one line, exit 2, nothing built; ``RUN
    --network=host`` is refused at its line (network.host is never granted)."""
    ctx = probe_context(rb, probe, "hostnet", "RUN echo ran")
    before = rb.store_snapshot()
    proc = build(rb, ctx, "--untrusted", "--network=host", check=False)
    assert proc.returncode == 2
    assert error_lines(proc.stderr) == [
        "rootbuild: build: --network=host is refused with --untrusted: RUN would reach the "
        "host's loopback, its other addresses and the cloud metadata service; use "
        "--network=isolated (public egress only) or none"
    ]
    assert "Traceback" not in proc.stderr and "ran" not in proc.stdout
    assert rb.store_snapshot() == before  # refused before the store is opened
    ctx = entitlement_context(rb, "runhost", "RUN --network=host echo ran")
    assert refused(rb, ctx, "--untrusted", "--allow", "network.host") == [
        "rootbuild: Dockerfile:4: RUN --network=host: entitlement network.host is not "
        "allowed in an untrusted build (--untrusted refuses it even with --allow)"
    ]


def test_run_network_none_in_an_untrusted_build(rb: Harness, probe: bytes) -> None:
    """``RUN --network=none`` still means no network at all: only its own loopback."""
    ctx = probe_context(rb, probe, "none",
                        "RUN --network=none /netprobe loopback && ! /netprobe route 1.1.1.1")
    proc = build(rb, ctx, "--untrusted")
    lines = probe_lines(proc.stderr)
    assert lines["loopback 127.0.0.1"] == "connected"
    assert lines["route 1.1.1.1"] == "failed: Network is unreachable"


def test_no_slirp4netns_left_after_a_failed_step(rb: Harness, probe: bytes) -> None:
    ctx = probe_context(rb, probe, "fails", "RUN /netprobe loopback && exit 3")
    proc = build(rb, ctx, "--untrusted", check=False)
    assert proc.returncode != 0
    assert probe_lines(proc.stderr)["loopback 127.0.0.1"] == "connected"
    assert slirp_processes(rb) == []


def test_no_slirp4netns_left_after_a_step_timeout(rb: Harness, probe: bytes) -> None:
    ctx = probe_context(rb, probe, "timeout", "RUN /netprobe loopback && sleep 60")
    proc = build(rb, ctx, "--untrusted", "--timeout", "2", check=False)
    assert proc.returncode != 0
    assert probe_lines(proc.stderr)["loopback 127.0.0.1"] == "connected"
    assert slirp_processes(rb) == []


def test_no_slirp4netns_left_after_the_builder_is_killed(rb: Harness, probe: bytes) -> None:
    """SIGKILL to the builder mid-step: the init sees its control pipe close, kills the
    step, and slirp4netns goes with it (its exit fd closes)."""
    ctx = probe_context(rb, probe, "killed", "RUN /netprobe loopback && echo started && "
                        "sleep 60")
    def running() -> None:
        assert slirp_processes(rb), "slirp4netns was not running during the step"

    kill_builder_mid_step(rb, ctx, running)
    deadline = time.monotonic() + 15
    while slirp_processes(rb) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert slirp_processes(rb) == []


def kill_builder_mid_step(rb: Harness, ctx: Path, running: Callable[[], None],
                          env: dict[str, str] | None = None) -> None:
    """Build ``ctx`` --untrusted; once its step prints ``started``, call ``running`` (its
    checks while the step runs), then SIGKILL the builder alone: what it started must end
    by itself."""
    argv = rb.command([str(ROOTBUILD), "build", "--root", str(rb.store), "--progress=plain",
                       "--untrusted", str(ctx)], env)
    proc = subprocess.Popen(argv, cwd=rb.workdir, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    assert proc.stdout is not None
    try:
        for line in proc.stdout:
            if re.fullmatch(r"#\d+ [\d.]+s started", line.strip()):
                break
        running()
        builder = subprocess.run(["pgrep", "-u", str(rb.user.uid), "-f", "rootbuild build"],
                                 capture_output=True, text=True).stdout.split()
        for pid in builder:
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(pid), signal.SIGKILL)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
