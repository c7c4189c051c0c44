"""The container profiles in contrib/, checked with the real kernel.

``contrib/seccomp.json`` is Docker's default seccomp profile plus the rules marked
``"comment": "rootbuild: ..."``. Removing those rules gives back Docker's default (the control).
Each profile is loaded as a real seccomp filter (``seccomp_loader.py``, as root, without
no_new_privs) and then the unprivileged builder runs under it: with Docker's default,
user namespaces are refused, ``doctor`` says so and a real RUN step (rootbuild.sandbox on the
FUSE overlay) fails; with contrib's, ``doctor`` passes, the RUN step works, and a probe makes
every namespace, mount and pivot_root call the sandbox makes; without any one of the added
syscalls, the probe fails at the call it allows. The AppArmor profile is parsed when
``apparmor_parser`` is installed (this machine has no AppArmor kernel to enforce it).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import REPO, ROOTBUILD, Harness

pytestmark = pytest.mark.integration

SECCOMP = REPO / "contrib" / "seccomp.json"
APPARMOR = REPO / "contrib" / "apparmor" / "rootbuild"
LOADER = Path(__file__).with_name("seccomp_loader.py")
SANDBOX_DRIVER = Path(__file__).with_name("sandbox_driver.py")
SYSTEM_PYTHON = "/usr/bin/python3"  # Debian's, with python3-seccomp

# The rules contrib/seccomp.json adds to Docker's default (documented in the README).
ADDED = {("mount", "mount_setattr", "pivot_root", "sethostname", "umount2", "unshare")}

ACTIONS = {
    "SCMP_ACT_ALLOW", "SCMP_ACT_ERRNO", "SCMP_ACT_KILL", "SCMP_ACT_KILL_PROCESS",
    "SCMP_ACT_KILL_THREAD", "SCMP_ACT_TRAP", "SCMP_ACT_TRACE", "SCMP_ACT_LOG",
    "SCMP_ACT_NOTIFY",
}
OPS = {
    "SCMP_CMP_NE", "SCMP_CMP_LT", "SCMP_CMP_LE", "SCMP_CMP_EQ", "SCMP_CMP_GE",
    "SCMP_CMP_GT", "SCMP_CMP_MASKED_EQ",
}

# What a RUN step's sandbox does, as the unprivileged user: a user namespace mapped by the
# setuid newuidmap/newgidmap over the subordinate ranges, then mount/uts/ipc/net namespaces,
# a hostname, private propagation, tmpfs, bind mounts made read-only by remount and by
# mount_setattr (rootbuild/sandbox/mounts.py), a FUSE mount and its unmount, a pid namespace
# with fresh proc/sysfs/devpts, and pivot_root. One word per stage reached.
PROBE = r"""
import ctypes, os, platform, subprocess, sys
libc = ctypes.CDLL(None, use_errno=True)
NEWNS, NEWUTS, NEWIPC, NEWUSER, NEWPID, NEWNET = (
    0x20000, 0x4000000, 0x8000000, 0x10000000, 0x20000000, 0x40000000)
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = (
    0x1, 0x2, 0x4, 0x8, 0x20, 0x1000, 0x4000, 0x40000)
MNT_DETACH, AT_EMPTY_PATH, AT_RECURSIVE, MOUNT_ATTR_RDONLY = 2, 0x1000, 0x8000, 0x1
SYS_MOUNT_SETATTR = 442
SYS_PIVOT_ROOT = {"x86_64": 155, "aarch64": 41}[platform.machine()]

def step(name, ok):
    if not ok:
        print(f"{name}-failed {os.strerror(ctypes.get_errno())}", flush=True)
        os._exit(1)
    print(name, flush=True)

def mount(src, dst, fstype, flags, data=None):
    return libc.mount(src.encode(), dst.encode(), fstype.encode() if fstype else None,
                      flags, data.encode() if data else None) == 0

def subid(path):
    for line in open(path):
        name, start, count = line.strip().split(":")
        if name == os.environ["USER"]:
            return start, count
    sys.exit(f"no range for {os.environ['USER']} in {path}")

go_r, go_w = os.pipe()
ready_r, ready_w = os.pipe()
pid = os.fork()
if pid == 0:
    os.close(go_w); os.close(ready_r)
    step("unshare-user", libc.unshare(NEWUSER) == 0)
    os.write(ready_w, b"x"); os.close(ready_w)
    if os.read(go_r, 1) != b"x":
        os._exit(1)
    step("idmap", os.getuid() == 0 and len(open("/proc/self/uid_map").readlines()) == 2)
    step("namespaces", libc.unshare(NEWNS | NEWUTS | NEWIPC | NEWNET) == 0)
    step("sethostname", libc.sethostname(b"rootbuild", 9) == 0)
    step("make-private", mount("none", "/", None, MS_REC | MS_PRIVATE))
    step("tmpfs", mount("tmpfs", "/tmp", "tmpfs", MS_NOSUID | MS_NODEV))
    root = "/tmp/root"
    for d in ("proc", "sys", "dev/pts", "ro", "fuse", "old"):
        os.makedirs(f"{root}/{d}")
    step("bind", mount(root, root, None, MS_BIND | MS_REC))
    step("bind-ro", mount(f"{root}/ro", f"{root}/ro", None, MS_BIND)
         and mount("none", f"{root}/ro", None, MS_REMOUNT | MS_BIND | MS_RDONLY))
    ro = os.open(f"{root}/ro", os.O_PATH | os.O_DIRECTORY)
    attr = (ctypes.c_uint64 * 4)(MOUNT_ATTR_RDONLY, 0, 0, 0)
    step("mount_setattr", libc.syscall(SYS_MOUNT_SETATTR, ro, b"", AT_EMPTY_PATH | AT_RECURSIVE,
                                       ctypes.byref(attr), ctypes.sizeof(attr)) == 0)
    os.close(ro)
    fd = os.open("/dev/fuse", os.O_RDWR)
    step("fuse", mount("rbprobe", f"{root}/fuse", "fuse.rbprobe", MS_NOSUID | MS_NODEV,
                       f"fd={fd},rootmode=40000,user_id=0,group_id=0"))
    step("umount2", libc.umount2(f"{root}/fuse".encode(), MNT_DETACH) == 0)
    os.close(fd)
    step("unshare-pid", libc.unshare(NEWPID) == 0)
    child = os.fork()
    if child == 0:
        step("proc", mount("proc", f"{root}/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC))
        step("sysfs", mount("sysfs", f"{root}/sys", "sysfs", MS_NOSUID | MS_NODEV | MS_NOEXEC))
        step("devpts", mount("devpts", f"{root}/dev/pts", "devpts", MS_NOSUID | MS_NOEXEC,
                             "newinstance,ptmxmode=0666,mode=0620"))
        os.chdir(root)
        step("pivot_root", libc.syscall(SYS_PIVOT_ROOT, b".", b"old") == 0)
        os.chdir("/")
        step("umount-old", libc.umount2(b"/old", MNT_DETACH) == 0)
        step("fresh-proc", [p for p in os.listdir("/proc") if p.isdigit()] == ["1"])
        os._exit(0)
    os._exit(os.waitstatus_to_exitcode(os.waitpid(child, 0)[1]))
os.close(go_r); os.close(ready_w)
if os.read(ready_r, 1) != b"x":
    sys.exit(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]))
for tool, path, own in (("newuidmap", "/etc/subuid", os.getuid()),
                        ("newgidmap", "/etc/subgid", os.getgid())):
    start, count = subid(path)
    proc = subprocess.run([tool, str(pid), "0", str(own), "1", "1", start, count],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        print(f"{tool}-failed {proc.stderr.strip()}", flush=True)
os.write(go_w, b"x"); os.close(go_w)
sys.exit(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]))
"""

ALL_STAGES = [
    "unshare-user", "idmap", "namespaces", "sethostname", "make-private", "tmpfs", "bind",
    "bind-ro", "mount_setattr", "fuse", "umount2", "unshare-pid", "proc", "sysfs", "devpts",
    "pivot_root", "umount-old", "fresh-proc",
]

# Without this added syscall, the probe stops at this stage.
NEEDED_AT = {
    "unshare": "unshare-user", "sethostname": "sethostname", "mount": "make-private",
    "mount_setattr": "mount_setattr", "umount2": "umount2", "pivot_root": "pivot_root",
}


def _profile() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(SECCOMP.read_text())
    return data


def _docker_default(profile: dict[str, Any]) -> dict[str, Any]:
    """The inverse of the README's list of changes: drop the rules rootbuild added."""
    return {**profile, "syscalls": [
        r for r in profile["syscalls"] if not r.get("comment", "").startswith("rootbuild:")
    ]}


def _without(profile: dict[str, Any], name: str) -> dict[str, Any]:
    """contrib's profile with ``name`` taken out of the rules rootbuild added."""
    rules = []
    for rule in profile["syscalls"]:
        if rule.get("comment", "").startswith("rootbuild:") and name in rule["names"]:
            rule = {**rule, "names": [n for n in rule["names"] if n != name]}
            if not rule["names"]:
                continue
        rules.append(rule)
    return {**profile, "syscalls": rules}


def _require_loader() -> None:
    if os.getuid() != 0:
        pytest.fail("integration prerequisite missing: root, to load a seccomp filter "
                    "without no_new_privs (which would disable newuidmap)")
    check = subprocess.run([SYSTEM_PYTHON, "-c", "import seccomp"], capture_output=True)
    if check.returncode != 0:
        pytest.fail("integration prerequisite missing: python3-seccomp (scripts/setup-debian.sh)")


def _under(
    rb: Harness, profile: dict[str, Any], argv: list[str]
) -> subprocess.CompletedProcess[str]:
    """Run ``argv`` as the build user under ``profile`` loaded as a seccomp filter."""
    _require_loader()
    path = rb.workdir / "seccomp-profile.json"
    path.write_text(json.dumps(profile))
    return subprocess.run(
        [SYSTEM_PYTHON, str(LOADER), str(path), *rb.command(argv)],
        capture_output=True, text=True, timeout=120, cwd=rb.workdir,
    )


def _doctor_lines(proc: subprocess.CompletedProcess[str]) -> list[str]:
    return proc.stdout.splitlines()


def test_seccomp_profile_is_docker_shaped() -> None:
    profile = _profile()
    assert set(profile) == {"defaultAction", "defaultErrnoRet", "archMap", "syscalls"}
    assert profile["defaultAction"] == "SCMP_ACT_ERRNO"
    assert profile["defaultErrnoRet"] == 1
    for entry in profile["archMap"]:
        assert set(entry) == {"architecture", "subArchitectures"}
        assert entry["architecture"].startswith("SCMP_ARCH_")
        for sub in entry["subArchitectures"] or []:
            assert sub.startswith("SCMP_ARCH_")
    assert any(e["architecture"] == "SCMP_ARCH_X86_64" for e in profile["archMap"])
    for rule in profile["syscalls"]:
        assert set(rule) <= {"names", "action", "args", "errnoRet", "comment", "includes",
                             "excludes"}, rule
        assert rule["names"] and all(re.fullmatch(r"[a-z0-9_]+", n) for n in rule["names"])
        assert rule["action"] in ACTIONS
        for arg in rule.get("args") or []:
            assert set(arg) <= {"index", "value", "valueTwo", "op"}
            assert 0 <= arg["index"] <= 5 and arg["op"] in OPS
            assert isinstance(arg["value"], int) and arg["value"] >= 0
        for key in ("includes", "excludes"):
            assert set(rule.get(key) or {}) <= {"arches", "caps", "minKernel"}, rule


def test_seccomp_additions_are_exactly_the_documented_ones() -> None:
    profile = _profile()
    added = [r for r in profile["syscalls"] if r.get("comment", "").startswith("rootbuild:")]
    assert {tuple(r["names"]) for r in added} == ADDED
    for rule in added:  # unconditional: no args, no includes/excludes
        assert set(rule) == {"names", "action", "comment"} and rule["action"] == "SCMP_ACT_ALLOW"
    # In Docker's default, each is allowed only with CAP_SYS_ADMIN (pivot_root never);
    # clone keeps Docker's "no namespace flags" rule and clone3 stays ENOSYS (glibc falls
    # back to clone): rootbuild makes namespaces with unshare, then forks.
    docker = _docker_default(profile)
    names = {n for names in ADDED for n in names}
    for rule in docker["syscalls"]:
        hit = names & set(rule["names"])
        if hit and rule["action"] == "SCMP_ACT_ALLOW":
            assert (rule.get("includes") or {}).get("caps") == ["CAP_SYS_ADMIN"], rule
    assert {"pivot_root"} & {n for r in docker["syscalls"] for n in r["names"]} == set()
    clone = [r for r in profile["syscalls"] if {"clone", "clone3"} & set(r["names"])
             and not (r.get("includes") or {}).get("caps")]
    assert [(r["names"], r["action"], r.get("args", [{}])[0].get("value"), r.get("errnoRet"))
            for r in clone] == [
        (["clone"], "SCMP_ACT_ALLOW", 0x7E020000, None),  # CLONE_NEW* flags all clear
        (["clone"], "SCMP_ACT_ALLOW", 0x7E020000, None),  # the same, s390 argument order
        (["clone3"], "SCMP_ACT_ERRNO", None, 38),
    ]
    # The README lists every change.
    readme = (REPO / "README.md").read_text()
    section = readme.split("## Running inside Docker and Kubernetes", 1)[1].split("\n## ", 1)[0]
    for name in names:
        assert f"`{name}`" in section, name


def test_doctor_passes_under_the_contrib_profile(rb: Harness) -> None:
    proc = _under(rb, _profile(), [str(ROOTBUILD), "doctor"])
    lines = _doctor_lines(proc)
    for name in ("user namespaces", "mounts", "fresh /proc"):
        assert any(line.startswith(f"ok   {name}:") for line in lines), (name, proc.stdout,
                                                                        proc.stderr)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert lines[-1] == "RUN steps can work here."


def test_doctor_fails_under_dockers_default_profile(rb: Harness) -> None:
    proc = _under(rb, _docker_default(_profile()), [str(ROOTBUILD), "doctor"])
    assert proc.returncode == 1, proc.stdout + proc.stderr
    fail = [line for line in _doctor_lines(proc) if line.startswith("FAIL")]
    assert len(fail) == 1, proc.stdout
    assert fail[0].startswith("FAIL user namespaces: unshare(CLONE_NEWUSER) refused")
    assert "Operation not permitted" in fail[0]
    assert "a seccomp filter may deny unshare" in fail[0]
    assert "contrib/seccomp.json" in fail[0]


def test_every_sandbox_call_works_under_the_contrib_profile(rb: Harness) -> None:
    proc = _under(rb, _profile(), [SYSTEM_PYTHON, "-c", PROBE])
    assert proc.stdout.split() == ALL_STAGES, proc.stdout + proc.stderr
    assert proc.returncode == 0


def test_dockers_default_profile_stops_the_sandbox_at_the_user_namespace(rb: Harness) -> None:
    proc = _under(rb, _docker_default(_profile()), [SYSTEM_PYTHON, "-c", PROBE])
    assert proc.stdout.split() == ["unshare-user-failed", "Operation", "not", "permitted"], (
        proc.stdout + proc.stderr)
    assert proc.returncode == 1


@pytest.mark.parametrize("name", sorted(NEEDED_AT))
def test_each_added_syscall_is_needed(rb: Harness, name: str) -> None:
    proc = _under(rb, _without(_profile(), name), [SYSTEM_PYTHON, "-c", PROBE])
    stage = NEEDED_AT[name]
    reached = ALL_STAGES[: ALL_STAGES.index(stage)]
    assert proc.stdout.splitlines() == [*reached, f"{stage}-failed Operation not permitted"], (
        proc.stdout + proc.stderr)
    assert proc.returncode == 1


def _owned_json(rb: Harness, name: str, data: dict[str, Any]) -> Path:
    path = rb.workdir / name
    path.write_text(json.dumps(data))
    rb._own(path)
    return path


def _sandbox_step(rb: Harness, profile: dict[str, Any], script: str) -> dict[str, Any]:
    """One RUN step through the real sandbox (rootbuild.sandbox via sandbox_driver.py) on a
    busybox layer over the FUSE overlay, with its own network namespace, under ``profile``."""
    driver = rb.workdir / "sandbox_driver.py"
    shutil.copy(SANDBOX_DRIVER, driver)
    os.chmod(driver, 0o644)
    base = rb.workdir / "base"
    rb.as_user([sys.executable, str(driver),
                str(_owned_json(rb, "layer.json", {"build_layer": str(base)}))])
    req = _owned_json(rb, "step.json", {
        "argv": ["/bin/sh", "-c", script], "network": "none",
        "lowers": [[str(base / "tree"), str(base / "meta.json")]],
        "work": str(rb.workdir / "work"), "scratch": str(rb.workdir / "scratch"),
    })
    proc = _under(rb, profile, [sys.executable, str(driver), str(req)])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out: dict[str, Any] = json.loads(proc.stdout)
    return out


STEP = "id -u; ls /proc | grep -c '^[0-9]'; echo data > /x; chown 123:456 /x"


def test_a_run_step_works_under_the_contrib_profile(rb: Harness) -> None:
    out = _sandbox_step(rb, _profile(), STEP)
    assert out.get("exit_code") == 0, out
    assert out["lines"][0] == "0", out  # root inside its user namespace
    # a fresh /proc: only the step's few processes, not the host's
    host = sum(name.isdigit() for name in os.listdir("/proc"))
    assert int(out["lines"][1]) <= 5 < host, (out, host)
    assert out["layer"]["entries"]["x"] == {"kind": "file", "uid": 123, "gid": 456,
                                            "mode": 0o644}


def test_a_run_step_is_refused_under_dockers_default_profile(rb: Harness) -> None:
    out = _sandbox_step(rb, _docker_default(_profile()), STEP)
    assert out.get("error_type") == "SandboxError", out
    assert out["error"].startswith(
        "create the RUN sandbox: unshare(CLONE_NEWUSER) was refused (Operation not "
        "permitted): unprivileged user namespaces are disabled here"
    ), out
    assert "a seccomp filter denies unshare" in out["error"], out
    assert "contrib/seccomp.json" in out["error"] and "rootbuild doctor" in out["error"], out


def test_apparmor_profile(tmp_path: Path) -> None:
    text = APPARMOR.read_text()
    rules = [line.split("#")[0].strip() for line in text.splitlines()]
    assert "profile rootbuild flags=(attach_disconnected,mediate_deleted) {" in rules
    for rule in ("userns,", "pivot_root,", "umount,", "mount fstype=proc -> **,",
                 "mount fstype=fuse.* -> **,", "deny @{PROC}/sysrq-trigger rwklx,"):
        assert rule in rules, rule
    assert "deny mount," not in rules  # docker-default's; replaced by the mount rules
    parser = shutil.which("apparmor_parser")
    if parser is None:
        return  # not installed here: only the checks above (apt-get install apparmor)
    version = subprocess.run([parser, "--version"], capture_output=True, text=True).stdout
    match = re.search(r"version (\d+)", version)
    assert match, version
    profile = APPARMOR
    if int(match.group(1)) < 4:  # as the profile's header says: drop the AppArmor 4 lines
        profile = tmp_path / "rootbuild"
        profile.write_text("".join(
            line for line in text.splitlines(keepends=True) if "# AppArmor 4" not in line
            or line.startswith("#")
        ))
    proc = subprocess.run([parser, "--skip-kernel-load", "--skip-cache", str(profile)],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def _busybox_build(
    rb: Harness, profile: dict[str, Any], name: str
) -> subprocess.CompletedProcess[str]:
    files: dict[str, str | bytes] = {
        "Dockerfile": "FROM scratch\nCOPY rootfs/ /\nRUN id -u > /uid\n",
        "rootfs/bin/busybox": Path("/bin/busybox").read_bytes(),
        "rootfs/bin/sh": "symlink:busybox",
        "rootfs/bin/id": "symlink:busybox",
    }
    ctx = rb.make_context(name, files)
    os.chmod(ctx / "rootfs/bin/busybox", 0o755)
    # --no-cache: the second build must really run its RUN under the stricter profile
    argv = [str(ROOTBUILD), "build", "--root", str(rb.store), "-q", "--no-cache", str(ctx)]
    return _under(rb, profile, argv)


def test_a_build_explains_a_seccomp_filter_that_denies_unshare(rb: Harness) -> None:
    """The user's view of Docker's default profile: one clear line, nothing left behind."""
    ok = _busybox_build(rb, _profile(), "ok")
    assert ok.returncode == 0, ok.stderr
    before = rb.store_snapshot()
    proc = _busybox_build(rb, _docker_default(_profile()), "refused")
    assert proc.returncode != 0
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert lines[0].startswith(
        "rootbuild: Dockerfile:3: RUN: create the RUN sandbox: unshare(CLONE_NEWUSER) was "
        "refused (Operation not permitted)"
    ), lines[0]
    assert "seccomp" in lines[0] and "contrib/seccomp.json" in lines[0], lines[0]
    assert rb.store_snapshot() == before
