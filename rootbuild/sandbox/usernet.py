"""``--network=isolated``: a user-mode network stack (slirp4netns) giving public egress only.

Job: ``unavailable()`` says why isolated networking cannot run here (None when it can);
``UserNet`` runs one step's slirp4netns: ``fork_helper()`` in the sandbox init after its
user namespace is mapped and before it unshares its network namespace (the helper must stay
in the host's network namespace, where its sockets are opened), ``attach(pid)`` once the
init is in its new network namespace (the helper execs slirp4netns against it, which
creates and configures ``tap0``; then the deny routes of ``netdeny`` are added), and
``close()`` at teardown.

Rules:
- slirp4netns runs with ``--disable-host-loopback`` (its gateway 10.0.2.2 would otherwise
  be the host's 127.0.0.1), ``--disable-dns`` (its DNS address forwards to the host's
  resolver on *any* port), ``--enable-sandbox`` (its own mount namespace on an empty root,
  capabilities dropped) and ``--enable-seccomp``. It has no destination filter of its own:
  the step's namespace holds ``prohibit`` routes for private, link-local and the host's
  addresses (``netdeny``), added before the step exists, and the step has neither
  CAP_NET_ADMIN nor CAP_NET_RAW to get around them.
- No process outlives the step: the helper keeps only stdin (/dev/null), its log, the
  exit fd and the ready fd; it dies with the init (``PR_SET_PDEATHSIG``; and slirp4netns
  exits when the init's end of ``--exit-fd`` closes, which the kernel does when the init
  dies by any means); the builder, told its pid with the FUSE servers', kills it too if
  the init vanishes. ``close()`` ends and reaps it before the init reports its exit.
- The step's DNS is its own forwarder on 127.0.0.11 (``dns_relay.DnsRelay``, given the
  step's ``dns_upstreams``): its helper is forked with slirp4netns's, and its sockets are
  bound in the new network namespace once the deny routes are in place.
- Never silent: a missing slirp4netns, an unusable /dev/net/tun or a slirp4netns that does
  not come up is an error naming the cause; the choice of ``none`` instead is the
  engine's, with a warning (``engine/network.py``).
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import os
import select
import shutil
import signal
import socket
from collections.abc import Iterator
from pathlib import Path

from rootbuild.errors import SandboxError
from rootbuild.sandbox import caps, netdeny
from rootbuild.sandbox.dns_proxy import Upstream
from rootbuild.sandbox.dns_relay import DnsRelay
from rootbuild.sandbox.reap import stop_child

#: where slirp4netns is looked for (the init's PATH is the builder's; Debian's is /usr/bin)
SEARCH_PATH = "/usr/local/bin:/usr/bin:/bin"
TUN = "/dev/net/tun"
TAP = "tap0"
CIDR = "10.0.2.0/24"
ADDRESS = "10.0.2.100"  # slirp4netns --configure gives the namespace this address
MTU = 65520
READY_SECONDS = 10.0
STOP_SECONDS = 2.0
PR_SET_PDEATHSIG = 1


def find_slirp4netns() -> str | None:
    return shutil.which("slirp4netns", path=SEARCH_PATH)


def unavailable() -> str | None:
    """Why ``--network=isolated`` cannot run for this user here, or None."""
    if find_slirp4netns() is None:
        return "slirp4netns is not installed (Debian: apt-get install slirp4netns)"
    try:
        os.close(os.open(TUN, os.O_RDWR | os.O_CLOEXEC))
    except OSError as exc:
        return (f"{TUN} cannot be opened ({exc.strerror}); it must be mode 0666, as udev "
                f"makes it (fix: chmod 0666 {TUN})")
    return None


def slirp_argv(binary: str, netns_fd: int, exit_fd: int, ready_fd: int) -> list[str]:
    """slirp4netns's command line for the network namespace open as ``netns_fd``."""
    return [
        binary, "--configure", f"--mtu={MTU}", f"--cidr={CIDR}", "--disable-host-loopback",
        "--disable-dns", "--enable-sandbox", "--enable-seccomp",
        f"--exit-fd={exit_fd}", f"--ready-fd={ready_fd}",
        # by path (an fd of the helper's, opened while it still has its capabilities):
        # slirp4netns then joins only the network namespace; given a pid it would also
        # join the pid's user namespace, which it is in already (EINVAL under --slot)
        "--netns-type=path", f"/proc/self/fd/{netns_fd}", TAP,
    ]


class UserNet:
    """One step's slirp4netns (see the module docstring)."""

    def __init__(self, log: Path, dns_upstreams: tuple[Upstream, ...] = ()) -> None:
        binary = find_slirp4netns()
        if binary is None:
            raise SandboxError(f"RUN --network=isolated: {unavailable()}")
        self.binary = binary
        self.log = log
        self.pid: int | None = None
        self._go = self._ready = self._exit = -1
        # the step's DNS forwarder on 127.0.0.11 (dns_relay.py), when there is a resolver
        self.dns = DnsRelay(dns_upstreams, str(log.parent)) if dns_upstreams else None

    def fork_helper(self) -> None:
        """Fork the helper that will exec slirp4netns (still in the host's netns)."""
        go_r, self._go = os.pipe2(os.O_CLOEXEC)
        self._ready, ready_w = os.pipe2(os.O_CLOEXEC)
        exit_r, self._exit = os.pipe2(os.O_CLOEXEC)
        log = os.open(self.log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the helper: exec or die, never return
            try:
                self._helper(go_r, exit_r, ready_w, log)
            finally:
                os._exit(127)
        self.pid = pid
        for fd in (go_r, ready_w, exit_r, log):
            os.close(fd)
        if self.dns is not None:
            self.dns.fork_helper()

    def _helper(self, go_r: int, exit_r: int, ready_w: int, log: int) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGPIPE):
            signal.signal(sig, signal.SIG_DFL)
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        # keep only what slirp4netns needs, at fixed numbers, before waiting
        high = [fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 100) for fd in (go_r, exit_r, ready_w,
                                                                         log)]
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.dup2(high[3], 1)
        os.dup2(high[3], 2)
        for number, fd in zip((3, 4, 5), high[:3], strict=True):
            os.dup2(fd, number)  # inheritable
        os.closerange(6, 1 << 16)
        if os.getppid() == 1 or os.read(3, 1) != b"g":
            return  # the init gave up before its network namespace existed
        os.close(3)
        netns = os.open(f"/proc/{os.getppid()}/ns/net", os.O_RDONLY)
        if netns != 6:
            os.dup2(netns, 6)  # inheritable
            os.close(netns)
        if os.getuid() != 0:  # --slot: not root of the namespace, so exec would drop all
            caps.helpers_keep_admin(caps.CAP_NET_ADMIN, caps.CAP_SETUID, caps.CAP_SETGID,
                                    caps.CAP_SETPCAP, caps.CAP_NET_BIND_SERVICE)
        os.execv(self.binary, slirp_argv(self.binary, 6, 4, 5))

    def attach(self, denied: tuple[str, ...]) -> None:
        """In the init's new network namespace: start slirp4netns on it, wait until
        ``tap0`` is configured, then add the deny routes."""
        os.write(self._go, b"g")
        os.close(self._go)
        self._go = -1
        poller = select.poll()
        poller.register(self._ready, select.POLLIN)
        ready = b""
        if poller.poll(READY_SECONDS * 1000):
            ready = os.read(self._ready, 1)
        if ready != b"1":
            raise SandboxError(
                "RUN --network=isolated: slirp4netns did not come up"
                + (f" within {READY_SECONDS:g}s" if not ready else "") + f": {self._log_tail()}"
            )
        try:
            # tap0's automatic IPv6 link-local address: the step's only IPv6 then is ::1
            Path(f"/proc/sys/net/ipv6/conf/{TAP}/disable_ipv6").write_text("1\n")
            netdeny.install(denied)
        except OSError as exc:
            raise SandboxError(f"RUN --network=isolated: {exc.strerror or exc}") from exc
        if self.dns is not None:
            self.dns.attach()

    def _log_tail(self) -> str:
        try:
            lines = self.log.read_text(errors="replace").splitlines()
        except OSError:
            return "(no log)"
        lines = [ln for ln in lines if "experimental" not in ln]
        return "; ".join(lines[-3:]) or "(no output)"

    def close(self) -> None:
        """End slirp4netns (or the helper) and the DNS forwarder, and reap them."""
        if self.dns is not None:
            self.dns.close()
        for fd in (self._go, self._ready, self._exit):
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self._go = self._ready = self._exit = -1
        if self.pid is None:
            return
        pid, self.pid = self.pid, None
        stop_child(pid, STOP_SECONDS)


@contextlib.contextmanager
def for_step(network: str, scratch: Path, dns_upstreams: tuple[Upstream, ...] = ()
             ) -> Iterator[UserNet | None]:
    """A ``UserNet`` for an isolated step (None for any other mode), closed on exit; with
    a DNS forwarder when ``dns_upstreams`` names resolvers."""
    if network != "isolated":
        yield None
        return
    net = UserNet(scratch / "slirp4netns.log", dns_upstreams)
    try:
        yield net
    finally:
        net.close()


def denied_for_host() -> tuple[str, ...]:
    """The deny list for this host: read in the host's network namespace."""
    try:
        addresses = netdeny.host_addresses()
    except OSError as exc:
        raise SandboxError(f"RUN --network=isolated: read the host's addresses: {exc}") from exc
    return netdeny.denied_prefixes(addresses, CIDR)


def probe() -> str:
    """Try ``--network=isolated`` for real in a throw-away user and network namespace
    (``rootbuild doctor`` runs this in a child: ``python -I -m rootbuild.sandbox.usernet``).
    Returns "" when it works, else why not. Changes this process's namespaces."""
    import tempfile

    from rootbuild.sandbox import mounts

    reason = unavailable()
    if reason is not None:
        return reason
    uid, gid = os.getuid(), os.getgid()
    denied = denied_for_host()
    with tempfile.TemporaryDirectory(prefix="rootbuild-netprobe-") as tmp:
        mounts.unshare(mounts.CLONE_NEWUSER)
        for name, text in (("setgroups", "deny"), ("uid_map", f"0 {uid} 1"),
                           ("gid_map", f"0 {gid} 1")):
            Path(f"/proc/self/{name}").write_text(text)
        net = UserNet(Path(tmp) / "slirp4netns.log")
        try:
            net.fork_helper()
            mounts.unshare(mounts.CLONE_NEWNET)
            mounts.loopback_up()
            net.attach(denied)
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                s.connect(("1.1.1.1", 53))  # UDP: no packet is sent
                if s.getsockname()[0] != ADDRESS:
                    return f"public destinations are not routed through slirp4netns: {s}"
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                try:
                    s.connect(("169.254.169.254", 80))
                except PermissionError:
                    return ""
                return "the metadata address 169.254.169.254 is not denied"
        except (SandboxError, OSError) as exc:
            return str(exc)
        finally:
            net.close()


if __name__ == "__main__":
    problem = probe()
    print(problem or "ok", flush=True)
    os._exit(1 if problem else 0)
