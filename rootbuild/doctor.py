"""``rootbuild doctor``: can a build with RUN work here, and if not, what to change.

Rules:
- Every check *tries* the capability where it can (unshare, mount, open /dev/fuse) in a
  throw-away child process, rather than guessing from settings; settings are read to
  explain a failure, not to decide it.
- One line per check: ``ok``/``warn``/``FAIL``, what was found, and the fix.
- Exit status 0 only when every check a RUN step needs passed (warnings allowed).
- Nothing here changes the system; the probes run in new namespaces that die with them.
"""

from __future__ import annotations

import contextlib
import os
import platform
import pwd
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

# The probe child: unshare what a step needs, then try the mounts a step makes.
# It prints one word per stage reached, so the parent can tell which stage failed.
_PROBE = r"""
import ctypes, os, sys
libc = ctypes.CDLL(None, use_errno=True)
CLONE_NEWNS, CLONE_NEWUSER, CLONE_NEWPID = 0x20000, 0x10000000, 0x20000000
def fail(stage):
    print(f"{stage}-failed {os.strerror(ctypes.get_errno())}", flush=True)
    os._exit(1)
uid, gid = os.getuid(), os.getgid()
if libc.unshare(CLONE_NEWUSER | CLONE_NEWNS) != 0:
    fail("unshare")
print("unshare", flush=True)
with open("/proc/self/setgroups", "w") as f: f.write("deny")
with open("/proc/self/uid_map", "w") as f: f.write(f"0 {uid} 1")
with open("/proc/self/gid_map", "w") as f: f.write(f"0 {gid} 1")
if libc.mount(b"none", b"/", None, 0x4000 | 0x40000, None) != 0:  # MS_REC|MS_PRIVATE
    fail("mount")
if libc.mount(b"tmpfs", b"/tmp", b"tmpfs", 0, None) != 0:
    fail("mount")
print("mount", flush=True)
if libc.unshare(CLONE_NEWPID) != 0:
    fail("pidns")
pid = os.fork()
if pid == 0:
    os.makedirs("/tmp/proc")
    if libc.mount(b"proc", b"/tmp/proc", b"proc", 0x2 | 0x4 | 0x8, None) != 0:
        fail("proc")
    print("proc", flush=True)
    os._exit(0)
_, status = os.waitpid(pid, 0)
sys.exit(os.waitstatus_to_exitcode(status))
"""


@dataclass(frozen=True)
class Check:
    name: str
    status: str  # "ok", "warn", "FAIL"
    detail: str
    fix: str = ""

    def line(self) -> str:
        text = f"{self.status:<4} {self.name}: {self.detail}"
        return f"{text} — fix: {self.fix}" if self.fix and self.status != "ok" else text


def _read(path: str) -> str | None:
    try:
        return Path(path).read_text().strip()
    except OSError:
        return None


def _userns_settings() -> str:
    notes = []
    for path, bad in (
        ("/proc/sys/kernel/unprivileged_userns_clone", "0"),
        ("/proc/sys/user/max_user_namespaces", "0"),
        ("/proc/sys/kernel/apparmor_restrict_unprivileged_userns", "1"),
    ):
        value = _read(path)
        if value is not None and value == bad:
            notes.append(f"{path} = {value}")
    return ", ".join(notes)


def _probe() -> tuple[list[str], str]:
    proc = subprocess.run(
        [sys.executable, "-c", _PROBE], capture_output=True, text=True, timeout=30,
        env={"PATH": "/usr/bin:/bin"},
    )
    lines = proc.stdout.split()
    return lines, proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else proc.stderr


def check_namespaces() -> list[Check]:
    reached, last = _probe()
    checks: list[Check] = []
    if "unshare" not in reached:
        settings = _userns_settings()
        checks.append(Check(
            "user namespaces", "FAIL", f"unshare(CLONE_NEWUSER) refused ({last})"
            + (f"; {settings}" if settings else "; a seccomp filter may deny unshare"),
            "allow unprivileged user namespaces (sysctl kernel.unprivileged_userns_clone=1, "
            "user.max_user_namespaces>0, kernel.apparmor_restrict_unprivileged_userns=0 or "
            "the AppArmor profile in contrib/), or a container seccomp profile that allows "
            "unshare (contrib/seccomp.json)",
        ))
        return checks
    checks.append(Check("user namespaces", "ok", "unshare(CLONE_NEWUSER|CLONE_NEWNS) works"))
    if "mount" not in reached:
        checks.append(Check(
            "mounts", "FAIL", f"mount in a user namespace refused ({last})",
            "a seccomp profile that allows mount (contrib/seccomp.json)",
        ))
        return checks
    checks.append(Check("mounts", "ok", "tmpfs mount inside the user namespace works"))
    if "proc" not in reached:
        checks.append(Check(
            "fresh /proc", "FAIL",
            f"mounting a new procfs was refused ({last}): the kernel's mount_too_revealing "
            "check (this /proc has masked or read-only sub-mounts, as in Docker or Kubernetes)",
            "Docker: --security-opt systempaths=unconfined; Kubernetes: procMount: Unmasked "
            "with hostUsers: false; or build with --proc=host-bind (weaker: RUN can then see "
            "the builder's processes; refused for untrusted builds)",
        ))
    else:
        checks.append(Check("fresh /proc", "ok", "a new procfs mounts in a new pid namespace"))
    return checks


def check_fuse() -> Check:
    try:
        fd = os.open("/dev/fuse", os.O_RDWR | os.O_CLOEXEC)
    except OSError as exc:
        mode = ""
        with contextlib.suppress(OSError):
            mode = f" (mode {os.stat('/dev/fuse').st_mode & 0o777:o})"
        return Check(
            "/dev/fuse", "FAIL", f"cannot open /dev/fuse{mode}: {exc.strerror}",
            "as root: chmod 0666 /dev/fuse (or apt-get install fuse3; in a container pass "
            "--device /dev/fuse)",
        )
    os.close(fd)
    return Check("/dev/fuse", "ok", "present and openable")


def _subid_range(path: str, user: str, uid: int) -> str | None:
    text = _read(path) or ""
    for line in text.splitlines():
        fields = line.strip().split(":")
        if len(fields) == 3 and fields[0] in (user, str(uid)) and fields[2].isdigit():
            return f"{fields[1]}+{fields[2]}"
    return None


def check_idmap() -> list[Check]:
    uid = os.getuid()
    try:
        user = pwd.getpwuid(uid).pw_name
    except KeyError:
        user = str(uid)
    helpers = [h for h in ("newuidmap", "newgidmap") if shutil.which(h) is None]
    ranges = {
        path: _subid_range(path, user, uid) for path in ("/etc/subuid", "/etc/subgid")
    }
    missing = [p for p, r in ranges.items() if r is None]
    if helpers or missing:
        why = []
        if helpers:
            why.append(f"{' and '.join(helpers)} not installed")
        if missing:
            why.append(f"no range for {user} in {' and '.join(missing)}")
        return [Check(
            "id mapping", "warn",
            "; ".join(why) + ": steps run with one id (root → you); chown to other ids fails",
            f"apt-get install uidmap; as root: usermod --add-subuids 100000-165535 "
            f"--add-subgids 100000-165535 {user}",
        )]
    return [Check(
        "id mapping", "ok",
        f"subuid {ranges['/etc/subuid']}, subgid {ranges['/etc/subgid']}, newuidmap present",
    )]


def check_cgroups() -> Check:
    if not Path("/sys/fs/cgroup/cgroup.controllers").exists():
        return Check("cgroups", "warn", "cgroup v2 is not mounted: limits fall back to "
                     "RLIMIT_NPROC and the RSS watchdog",
                     "boot with cgroup v2 (systemd.unified_cgroup_hierarchy=1)")
    own = (_read("/proc/self/cgroup") or "").split("::")[-1] or "/"
    path = Path("/sys/fs/cgroup") / own.lstrip("/")
    if os.access(path, os.W_OK):
        return Check("cgroups", "ok", f"cgroup v2, {path} delegated to you")
    return Check(
        "cgroups", "warn", f"cgroup v2, but {path} is not delegated: limits fall back to "
        "RLIMIT_NPROC and the RSS watchdog",
        "run builds in a delegated scope (systemd-run --user --scope) for limits",
    )


def check_limits() -> list[Check]:
    """Which mechanism enforces each per-step limit here (sandbox/limits.py)."""
    import pwd

    from rootbuild.sandbox.idmap import slot_blocks
    from rootbuild.sandbox.limits import enforcement

    uid = os.getuid()
    try:
        name = pwd.getpwuid(uid).pw_name
    except KeyError:
        name = str(uid)
    slots = slot_blocks(_read("/etc/subuid") or "", _read("/etc/subgid") or "", name, uid)
    return [Check(f"limit {what}", "ok", how) for what, how in enforcement(slots)]


def check_kernel() -> Check:
    release = platform.release()
    parts = release.split(".")
    try:
        major, minor = int(parts[0]), int(parts[1].split("-")[0])
    except (IndexError, ValueError):
        return Check("kernel", "warn", f"cannot parse version {release!r}")
    if (major, minor) < (4, 18):
        return Check("kernel", "FAIL", f"{release}: FUSE in user namespaces needs 4.18+",
                     "a newer kernel")
    return Check("kernel", "ok", release)


def check_network() -> Check:
    """What RUN of an untrusted build gets: tried for real (rootbuild.sandbox.usernet
    in a child: slirp4netns on a throw-away network namespace, the deny routes checked)."""
    try:
        proc = subprocess.run(
            [sys.executable, "-I", "-m", "rootbuild.sandbox.usernet"], capture_output=True,
            text=True, timeout=60, env={"PATH": "/usr/bin:/bin"},
        )
        found = (proc.stdout.strip().splitlines() or [proc.stderr.strip()])[-1]
    except (OSError, subprocess.TimeoutExpired) as exc:
        found = str(exc)
    if found == "ok":
        return Check("network isolation", "ok",
                     "--untrusted RUN gets --network=isolated: slirp4netns, public egress "
                     "only (no host loopback, host addresses, link-local or private ranges)")
    return Check(
        "network isolation", "warn",
        f"--untrusted RUN gets --network=none (no network at all): {found}",
        "apt-get install slirp4netns, and /dev/net/tun mode 0666, for public egress",
    )


def check_snapshotters() -> list[Check]:
    """Each snapshotter's probe, and the one ``--snapshotter auto`` picks (registry.py)."""
    from rootbuild.snapshot import explain_choice

    checks = []
    picked = None
    for name, reason, auto in explain_choice():
        usable = "usable" if reason is None else f"not usable: {reason}"
        note = "" if auto else " (auto skips it: it does not pass the whole overlay " \
            "conformance suite yet; --snapshotter " + name + " uses it)"
        if reason is None and auto and picked is None:
            picked = name
        checks.append(Check(f"snapshotter {name}", "ok" if reason is None else "warn",
                            usable + note))
    if picked is None:
        checks.append(Check("snapshotter auto", "FAIL", "no snapshotter auto may pick "
                            "can work here", "see the snapshotter lines above"))
    else:
        checks.append(Check("snapshotter auto", "ok",
                            f"picks {picked}: the first usable one in preference order"))
    return checks


def check_store_leftovers() -> list[Check]:
    """Files of other ids in the default store's scratch while no build runs there: a
    kernel-overlay build killed mid-step (snapshot/kernel.py). ``rm -rf`` cannot remove
    them; ``prune`` and ``system reset`` can (sandbox/userns_rm.py). No store, or a build
    running (its gc.lock held): no line."""
    import fcntl

    from rootbuild.image.store import default_root

    root = default_root()
    try:
        fd = os.open(root / "gc.lock", os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    except OSError:
        return []
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return []  # a build runs: its scratch is live
        foreign = 0
        for dirpath, dirnames, filenames in os.walk(root / "tmp"):
            for name in [*dirnames, *filenames]:
                with contextlib.suppress(OSError):
                    foreign += os.lstat(os.path.join(dirpath, name)).st_uid != os.getuid()
    finally:
        os.close(fd)
    if not foreign:
        return [Check("store", "ok", f"{root}: nothing of other ids left in its scratch")]
    return [Check("store", "warn", f"{root}/tmp holds {foreign} entries of other ids (a "
                  "kernel-overlay build killed mid-step); rm -rf cannot remove them",
                  "rootbuild prune (or rootbuild system reset) removes them in a user "
                  "namespace")]


def run_doctor(write: Callable[[str], object] = print) -> int:
    checks: list[Check] = [check_kernel(), *check_namespaces(), check_fuse(), *check_idmap(),
                           *check_snapshotters(), check_cgroups(), check_network(),
                           *check_limits(), *check_store_leftovers()]
    for check in checks:
        write(check.line())
    failed = [c for c in checks if c.status == "FAIL"]
    write("RUN steps can work here." if not failed else
          f"RUN steps cannot work here: {len(failed)} check(s) failed.")
    return 1 if failed else 0
