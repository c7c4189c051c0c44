"""The sandbox init: ``python -I -m rootbuild.sandbox.init SPEC OUT_FD CTL_FD STATUS_FD
[SECRETS_FD]`` (SECRETS_FD: a memfd with the step's secret values, ``secrets.py``).

Job: one RUN step's life (SPEC: an ``InitRequest`` as JSON), in a fresh interpreter started
by ``run.run_init`` (never a fork of the multithreaded builder): new user namespace (mapped
by the builder through newuidmap/newgidmap, or by itself with the single mapping), new
mount, uts, ipc (and, for ``network="none"`` or ``"isolated"``, net) namespaces, for
``isolated`` slirp4netns (``usernet.py``); the root filesystem mounted by its provider
(the FUSE server starts here, inside the user namespace); then a new pid namespace whose
pid 1 is the step (``child.py``). The init and the FUSE server stay outside that pid
namespace.

Protocol: JSON lines on STATUS_FD (init -> builder): ``{"event": "unshared"}`` (map my ids,
then write ``mapped`` on CTL_FD), ``{"event": "started"}``, and last one of
``{"event": "exit", ...}`` / ``{"event": "error", ...}``. A line ``kill`` on CTL_FD, EOF on
CTL_FD (the builder died), SIGTERM or SIGINT kill the step's pid namespace and tear down.

Rules:
- Nothing from the image runs here: /etc/passwd and /etc/group are read as data
  (``users.py``), through ``openat2(RESOLVE_IN_ROOT)``, with a size cap.
- CPU placement (``affinity.py``): the FUSE server and the step start on the one CPU the
  builder chose (``cpu`` in SPEC) and get every CPU once the step wants more than one.
- Every mount target (/proc, /dev, /sys, each bind's target, each ``RUN --mount``'s:
  ``step_mounts.py``) is checked, or created when missing, through the root's fd before
  the step exists (``mounts.ensure_target``: no symlink followed, the wrong type refused).
  A bind the image makes impossible fails the step, or, when not ``required`` (the
  sandbox's /etc files), is left out with a warning.
- Teardown on every path: the step's pid namespace dies with its pid 1, mount targets the
  sandbox created are removed, the root is finished (layer) or aborted, and every mount of
  this namespace dies with it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import json
import os
import select
import signal
import stat
import sys
import time
import traceback
from pathlib import Path
from typing import Any, NoReturn

from rootbuild.errors import RootbuildError, SandboxError, StepError
from rootbuild.image import meta_cache
from rootbuild.image.layermeta import LayerMeta
from rootbuild.runtrace import mark
from rootbuild.sandbox import caps, mounts, secrets, step_mounts, usernet
from rootbuild.sandbox.affinity import StepCpu, children
from rootbuild.sandbox.child import ChildPlan, child_main
from rootbuild.sandbox.exit_stop import ExitStop
from rootbuild.sandbox.idmap import IdMapPlan, write_own_maps
from rootbuild.sandbox.limits import Watchdog, nproc_ulimits, nproc_value
from rootbuild.sandbox.rootfs import provider_for
from rootbuild.sandbox.spec import Bind, InitRequest, OverlayRoot, StepSpec
from rootbuild.sandbox.users import MAX_FILE_BYTES, Identity, resolve_user
from rootbuild.snapshot import DiskBudget, StepChanges, budget_usage, create_budget

PR_SET_CHILD_SUBREAPER = 36
NO_DISK_LIMIT = 1 << 62  # --inode-limit without --disk-limit


class Terminated(Exception):
    """SIGTERM/SIGINT reached the init: tear down."""


def _on_signal(signum: int, frame: object) -> None:
    raise Terminated(signum)


class Status:
    def __init__(self, fd: int) -> None:
        self.fd = fd

    def send(self, **event: Any) -> None:
        with contextlib.suppress(BrokenPipeError):
            os.write(self.fd, json.dumps(event).encode() + b"\n")


def _read_line(fd: int) -> str:
    data = b""
    while not data.endswith(b"\n"):
        chunk = os.read(fd, 1)
        if not chunk:
            break
        data += chunk
    return data.decode(errors="replace").strip()


def _read_image_file(rootfd: int, path: str) -> bytes | None:
    """An image file as data: resolved inside the root, a regular file, size-capped."""
    try:
        fd = mounts.openat2(rootfd, path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY,
                            mounts.RESOLVE_IN_ROOT | mounts.RESOLVE_NO_MAGICLINKS)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise SandboxError(f"read /{path} of the image: {exc.strerror}") from exc
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        return os.read(fd, MAX_FILE_BYTES)
    finally:
        os.close(fd)


USERNS_REFUSED = (
    "create the RUN sandbox: unshare(CLONE_NEWUSER) was refused ({cause}): unprivileged "
    "user namespaces are disabled here (sysctl kernel.unprivileged_userns_clone, "
    "user.max_user_namespaces, AppArmor's kernel.apparmor_restrict_unprivileged_userns) or "
    "a seccomp filter denies unshare, as Docker's default profile does; in a container, run "
    "with rootbuild's contrib/seccomp.json (see the README); `rootbuild doctor` tells which"
)


def _enter_namespaces(spec: StepSpec, plan: IdMapPlan, status: Status, ctl: int,
                      net: usernet.UserNet | None = None) -> None:
    mark("i.enter")
    try:
        mounts.unshare(mounts.CLONE_NEWUSER)
    except OSError as exc:
        if exc.errno in (errno.EPERM, errno.ENOSPC, errno.EINVAL, errno.ENOSYS):
            raise SandboxError(USERNS_REFUSED.format(cause=os.strerror(exc.errno))) from exc
        raise
    if plan.mode == "subid":
        status.send(event="unshared")
        if _read_line(ctl) != "mapped":
            raise SandboxError("map ids of the step's user namespace: the builder gave up")
    else:
        write_own_maps(plan)
    mark("i.mapped")
    flags = mounts.CLONE_NEWNS | mounts.CLONE_NEWUTS | mounts.CLONE_NEWIPC
    if spec.network != "host":
        flags |= mounts.CLONE_NEWNET
    # isolated: the host's addresses are read, and slirp4netns's helper forked, while
    # still in the host's network namespace (sandbox/usernet.py)
    denied = usernet.denied_for_host() if net is not None else ()
    if net is not None:
        net.fork_helper()
    mounts.unshare(flags)
    mounts.mount("none", "/", None, mounts.MS_REC | mounts.MS_PRIVATE)
    if spec.network != "host":
        mounts.loopback_up()
    if net is not None:
        net.attach(denied)
    mounts.sethostname(spec.hostname)
    mark("i.namespaces")


def _prepare_targets(rootfd: int, binds: tuple[Bind, ...], created: list[mounts.Created]
                     ) -> tuple[list[Bind], list[str]]:
    """Check (and create when missing) every mount target before the step exists. Returns
    the binds to mount and warnings for the optional ones the image makes impossible."""
    for name in ("proc", "dev", "sys"):
        try:
            os.close(mounts.ensure_target(rootfd, name, "dir", created))
        except OSError as exc:
            raise SandboxError(
                f"prepare /{name} for RUN: the image's /{name} is a symlink or not a "
                f"directory; refusing to mount over it ({exc.strerror})"
            ) from exc
    provide: list[Bind] = []
    warnings: list[str] = []
    for bind in binds:
        if mounts.in_step_dev(bind.target):  # made in the step's /dev tmpfs (child.py)
            provide.append(bind)
            continue
        try:
            os.close(mounts.ensure_target(rootfd, bind.target, bind.kind, created))
            provide.append(bind)
        except OSError as exc:
            what = "regular file" if bind.kind == "file" else "directory"
            if bind.required:
                raise StepError(
                    f"mount {bind.target} for RUN: in the image it is a symlink, lies under "
                    f"one, or is not a {what}; refusing to mount over it ({exc.strerror})"
                ) from exc
            warnings.append(
                f"warning: RUN gets no {bind.target}: in the image it is a symlink, lies "
                f"under one, or is not a {what} ({exc.strerror})"
            )
    return provide, warnings


def _kill_descendants(keep: set[int]) -> None:
    """As a child subreaper (host-bind mode, no pid namespace): kill and reap every
    process that was reparented to the init, except ``keep`` (the FUSE server)."""
    me = str(os.getpid())
    for _ in range(100):
        found = False
        for entry in os.listdir("/proc"):
            if not entry.isdigit() or int(entry) in keep:
                continue
            try:
                with open(f"/proc/{entry}/stat", "rb") as f:
                    fields = f.read().rsplit(b")", 1)[1].split()
            except OSError:
                continue
            if fields[1].decode() == me:
                found = True
                with contextlib.suppress(ProcessLookupError):
                    os.kill(int(entry), signal.SIGKILL)
                with contextlib.suppress(ChildProcessError):
                    os.waitpid(int(entry), 0)
        if not found:
            return


def _wait_step(pid: int, ctl: int, cpu: StepCpu, watch: Watchdog | None = None,
               stop: ExitStop | None = None) -> tuple[int, bool, str]:
    """Wait for the step's pid 1 (or a kill request), watching its CPU placement and its
    limits (``limits.Watchdog``) meanwhile, and once more at pid 1's exit stop (``stop``,
    exit_stop.py). Returns (status, killed, the limit it broke)."""
    pidfd = os.pidfd_open(pid)
    killed = False
    broke = ""
    wake = _StopWake() if stop is not None else None

    def check_limits() -> None:
        nonlocal killed, broke
        if watch is not None and not killed and (broke := watch.tick() or ""):
            killed = True  # the whole pid namespace dies with its pid 1
            os.kill(pid, signal.SIGKILL)

    try:
        poller = select.poll()
        poller.register(pidfd, select.POLLIN)
        poller.register(ctl, select.POLLIN)
        if wake is not None:
            poller.register(wake.fd, select.POLLIN)
        due = 0.0  # the next poll of CPU placement and limits
        while True:
            waits = [t for t in (cpu.interval, watch.interval if watch else None)
                     if t is not None]
            events = dict(poller.poll(min(waits) * 1000 if waits else None))
            woke = wake is not None and events.pop(wake.fd, None) is not None
            if wake is not None and stop is not None and (woke or not events):
                wake.drain()  # a stop before the wake was set up is found at the next poll
                if stop.handle():  # pid 1 is leaving: its processes all still live
                    check_limits()
                    stop.release()
            # a poll's time (a stream of stops must not starve the polls)
            if not events and (not woke or time.monotonic() >= due):
                due = time.monotonic() + (min(waits) if waits else 0.0)
                cpu.tick()
                check_limits()
            if not events:
                continue
            if pidfd in events:
                break
            if ctl in events:
                if not killed:  # "kill" or EOF: the builder wants it gone
                    os.kill(pid, signal.SIGKILL)
                killed = True
                poller.unregister(ctl)
    except BaseException:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        raise
    finally:
        os.close(pidfd)
        if wake is not None:
            wake.close()
    _, status = os.waitpid(pid, 0)
    return status, killed, broke


class _StopWake:
    """SIGCHLD (a traced step's stops, among others) wakes ``_wait_step``'s poll."""

    def __init__(self) -> None:
        self.fd, self._w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._old = signal.signal(signal.SIGCHLD, lambda signum, frame: None)
        self._old_fd = signal.set_wakeup_fd(self._w, warn_on_full_buffer=False)

    def drain(self) -> None:
        with contextlib.suppress(BlockingIOError):
            while os.read(self.fd, 4096):
                pass

    def close(self) -> None:
        signal.set_wakeup_fd(self._old_fd)
        signal.signal(signal.SIGCHLD, self._old)
        os.close(self.fd)
        os.close(self._w)


def _exit_code(status: int) -> int:
    if os.WIFSIGNALED(status):
        return 128 + os.WTERMSIG(status)
    return os.WEXITSTATUS(status)


def _start_child(plan: ChildPlan) -> tuple[int, str]:
    """Fork the step; returns its pid and the error it reported before exec ("" = ok)."""
    err_r, err_w = os.pipe2(os.O_CLOEXEC)
    pid = os.fork()
    if pid == 0:
        os.close(err_r)
        child_main(plan, err_w)
    os.close(err_w)
    with os.fdopen(err_r, "rb") as f:
        message = f.read(65536).decode(errors="replace")
    return pid, message


def run(request: InitRequest, out_fd: int, ctl: int, status: Status,
        net: usernet.UserNet | None = None) -> None:
    spec = request.step
    plan = request.idmap
    host_bind = spec.proc == "host-bind"
    warnings: list[str] = list(request.warnings)
    cpu = StepCpu(request.cpu)
    cpu.pin()  # the FUSE server and the step inherit it (sandbox/placement.py)
    _enter_namespaces(spec, plan, status, ctl, net)
    mountpoint = spec.scratch / "root"
    mountpoint.mkdir(mode=0o700)
    budget = step_budget(spec)  # --disk-limit: shared by every writable overlay of the step
    slot = os.getuid() != 0  # not root here: --slot left the user's own uid unmapped
    if slot:
        caps.helpers_keep_admin()  # the FUSE servers exec and must still mount (caps.py)
    with provider_for(spec.rootfs, budget)(mountpoint) as mounted, \
            contextlib.ExitStack() as trees:
        # RUN --mount trees first: their FUSE servers are among the processes reported
        kept_trees: step_mounts.Kept = []  # RUN --mount=type=cache: kept after the step
        run_mounts = step_mounts.mount_trees(spec, trees, kept_trees, budget)
        if slot:
            caps.step_gets_none()
        mark("i.mounted")
        keep = children(os.getpid())  # the FUSE server: the builder kills it if the init dies
        status.send(event="mounted", pids=sorted(keep))
        rootfd = os.open(mountpoint, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        created: list[mounts.Created] = []
        try:
            identity = resolve_user(spec.user, _read_image_file(rootfd, "etc/passwd"),
                                    _read_image_file(rootfd, "etc/group"))
            _check_mapped(identity, plan, spec.user)
            binds, notes = _prepare_targets(rootfd, spec.binds, created)
            warnings += notes
            step_mounts.prepare_targets(rootfd, run_mounts, created)
            child = ChildPlan(
                argv=list(spec.argv),
                # RUN --mount=type=secret,env=NAME: for this step alone (secrets.py)
                env=_env(spec, request.default_path, identity) | secrets.env_of(spec),
                workdir=spec.workdir, identity=identity, setgroups=plan.mode == "subid",
                mountpoint=str(mountpoint), out_fd=out_fd, binds=tuple(binds),
                own_netns=spec.network != "host", host_bind=host_bind,
                no_net_raw=spec.network == "isolated",
                tty_gid_mapped=plan.maps_gid(5), mounts=tuple(run_mounts),
                insecure=spec.insecure, devices=spec.devices,
                shm_size=spec.shm_size, ulimits=spec.ulimits + nproc_ulimits(spec.limits),
                nest=slot, nproc=nproc_value(spec.limits),
            )
            if host_bind:
                import ctypes

                ctypes.CDLL(None).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
            else:
                mounts.unshare(mounts.CLONE_NEWPID)
            mark("i.targets")
            pid, message = _start_child(child)
            mark("i.child_exec")
            # the pids limit is counted once more at pid 1's exit (exit_stop.py)
            stop = ExitStop.attach(pid) if spec.limits.pids is not None and not message \
                and not host_bind else None
            if message:
                os.waitpid(pid, 0)
                kind, _, text = message.partition(":")
                raise (StepError if kind == "step" else SandboxError)(text)
            cpu.unpin_self()
            status.send(event="started")
            try:
                watch = Watchdog(spec.limits, pid) if spec.limits.watched else None
                wait_status, killed, broke = _wait_step(pid, ctl, cpu, watch, stop)
            finally:
                if host_bind:
                    _kill_descendants(keep)
            code = _exit_code(wait_status)
            mark("i.step_exited")
            # a write the budget refused may have been the kernel's writeback of data the
            # step believes written: the step fails whatever its status, keeps nothing
            limit = exceeded(budget, [mountpoint, *(m.mountpoint for _, m in kept_trees)])
            if not killed and not limit:  # a failed step's cache-mount writes are kept,
                step_mounts.keep_changes(kept_trees)  # as BuildKit's
        finally:
            # on every path, so that a failed set-up leaves no stubs in a DirRoot either
            kept = mounts.remove_created(rootfd, created)
            os.close(rootfd)
        if kept:
            warnings.append(f"warning: RUN left mount targets in the layer: {kept}")
        if killed or code != 0 or limit:
            # limit: the watchdog's (pids, memory); disk: the overlay budget's (disk, inodes)
            status.send(event="exit", code=code, killed=killed, warnings=warnings,
                        limit=broke, disk=limit)
            return  # leaving the context aborts the root: no layer
        result = mounted.finish()
        mark("i.finished")
    tree = meta = None
    if result is not None:
        result = _drop_stub_parents(result, spec, created)
        tree, meta = str(result.tree), str(spec.scratch / "layer.meta.json")
        result.meta.save(Path(meta), durable=False)  # the builder saves the layer's copy
    mark("i.meta_saved")
    status.send(event="exit", code=code, killed=False, warnings=warnings, tree=tree, meta=meta)


def step_budget(spec: StepSpec) -> DiskBudget | None:
    """The step's disk budget file in its scratch, when it has a disk or inode limit."""
    if spec.disk_limit is None and spec.inode_limit is None:
        return None
    limit = spec.disk_limit if spec.disk_limit is not None else NO_DISK_LIMIT
    return create_budget(spec.scratch / "disk-budget", limit, spec.inode_limit)


def exceeded(budget: DiskBudget | None, roots: list[Path]) -> str:
    """The limit a server of the step refused a request for ("disk", "inodes"), or "".
    The kernel writes a file's cached pages back when it is closed (FUSE's writeback
    cache), and the step's processes are gone; ``syncfs`` on the overlays that keep
    anything (``roots``) writes back what a shared mapping may still hold first."""
    if budget is None:
        return ""
    for root in roots:
        # best effort: what is not written back now is at unmount, into the same budget
        with contextlib.suppress(OSError):
            fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            try:
                mounts.syncfs(fd)
            finally:
                os.close(fd)
    usage = budget_usage(budget)
    if usage.refusals:
        return "disk"
    return "inodes" if usage.inode_refusals else ""


def _drop_stub_parents(result: StepChanges, spec: StepSpec,
                       created: list[mounts.Created]) -> StepChanges:
    """Creating and removing a mount target (/etc/hosts) made its parent directory look
    modified; drop that directory from the layer when nothing under it changed and its
    mode and owner equal the lower layer's (BuildKit's layers carry no such entry)."""
    root = spec.rootfs
    lowers = [meta_cache.load(lo.meta_path) for lo in root.lowers] \
        if isinstance(root, OverlayRoot) else []
    meta = result.meta
    drop = set()
    for item in created:
        parent = item.path.strip("/").rpartition("/")[0]
        entry = meta.get(parent)
        if not parent or entry is None or entry.kind != "dir":
            continue
        below = parent + "/"
        if any(p.startswith(below) for p in (*meta.entries, *meta.whiteouts, *meta.opaque_dirs)):
            continue
        if parent in meta.opaque_dirs:
            continue
        lower = next((lo.get(parent) for lo in reversed(lowers) if lo.get(parent)), None)
        if lower and (lower.kind, lower.mode, lower.uid, lower.gid) == (
            entry.kind, entry.mode, entry.uid, entry.gid
        ):
            drop.add(parent)
    if not drop:
        return result
    for parent in drop:
        with contextlib.suppress(OSError):
            os.rmdir(result.tree / parent)
    kept = [e for p, e in meta.entries.items() if p not in drop]
    return StepChanges(result.tree, LayerMeta.build(kept, meta.whiteouts, meta.opaque_dirs))


def _check_mapped(identity: Identity, plan: IdMapPlan, user: str) -> None:
    bad = [i for i in (identity.uid,) if not plan.maps_uid(i)]
    bad += [g for g in (identity.gid, *identity.groups) if not plan.maps_gid(g)]
    if bad:
        raise StepError(
            f"switch to USER {user!r}: id {bad[0]} is not mapped in the build's user "
            f"namespace; fix: give your user a subordinate id range in /etc/subuid and "
            f"/etc/subgid (and install newuidmap/newgidmap)"
        )


def _env(spec: StepSpec, default_path: str, identity: Identity) -> dict[str, str]:
    env = dict(spec.env)
    env.setdefault("PATH", default_path)
    env.setdefault("HOME", identity.home or "/")
    return env


def main(argv: list[str]) -> NoReturn:
    spec_path, out_fd, ctl, status_fd = argv[0], int(argv[1]), int(argv[2]), int(argv[3])
    status = Status(status_fd)
    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    code = 0
    mark("i.main")
    try:
        request = InitRequest.from_json(json.loads(Path(spec_path).read_text()))
        # the fifth argument: a memfd with the step's secret values (sandbox/secrets.py)
        values = secrets.read_payload(int(argv[4])) if len(argv) > 4 else secrets.Payload()
        request = dataclasses.replace(request, step=secrets.with_values(request.step, values))
        # isolated: slirp4netns ends and is reaped before the init exits (usernet.py)
        with usernet.for_step(request.step.network, request.step.scratch,
                              request.step.dns_upstreams) as net:
            run(request, out_fd, ctl, status, net)
    except Terminated:
        status.send(event="error", kind="sandbox", message="run step: interrupted")
        code = 3
    except RootbuildError as exc:
        kind = "step" if isinstance(exc, StepError) else "sandbox"
        status.send(event="error", kind=kind, message=str(exc))
        code = 2
    except OSError as exc:
        status.send(event="error", kind="sandbox", message=f"set up RUN sandbox: {exc}")
        code = 2
    except BaseException:
        status.send(event="error", kind="sandbox",
                    message="sandbox init failed: " + traceback.format_exc(limit=-3))
        code = 4
    sys.stdout.flush()
    os._exit(code)


if __name__ == "__main__":
    main(sys.argv[1:])
