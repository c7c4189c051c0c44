"""Load a Docker-format seccomp profile into this process, then exec a command under it.

Usage (as root, with Debian's python3-seccomp): ``/usr/bin/python3 seccomp_loader.py
PROFILE.json CMD [ARG...]``. The filter is inherited by CMD and everything it starts.

Rules (those of moby/profiles ``seccomp/seccomp_linux.go`` and runc's
``libcontainer/seccomp``, for a process that holds NO capabilities, as an unprivileged
builder does):
- ``defaultAction`` with ``defaultErrnoRet``; the native architecture plus the
  ``subArchitectures`` its ``archMap`` entry names.
- A rule is skipped when its ``includes`` name an architecture other than this one, a
  capability (we have none) or a newer ``minKernel``, or its ``excludes`` name this
  architecture. ``excludes.caps`` never match.
- ``SCMP_ACT_ERRNO`` returns ``errnoRet``, else EPERM. ``args``: one rule with all
  conditions (AND), unless two conditions test the same argument: then one rule per
  condition (OR), as runc does. ``SCMP_CMP_MASKED_EQ`` is ``(arg & value) == valueTwo``.
- Names libseccomp does not know are skipped (runc does the same).
- no_new_privs is NOT set: it would disable setuid newuidmap/newgidmap, which the builder
  needs. Loading without it needs CAP_SYS_ADMIN, hence root; the command then drops to the
  build user itself (setpriv).
"""

from __future__ import annotations

import errno
import json
import os
import platform
import sys
from typing import Any

import seccomp  # Debian's python3-seccomp, for /usr/bin/python3

# Go's GOARCH names (what Docker's includes/excludes use) for platform.machine().
GOARCH = {
    "x86_64": "amd64", "i686": "386", "aarch64": "arm64", "armv7l": "arm", "s390x": "s390x",
    "ppc64le": "ppc64le", "riscv64": "riscv64", "loongarch64": "loong64",
}
OPS = {
    "SCMP_CMP_NE": seccomp.NE, "SCMP_CMP_LT": seccomp.LT, "SCMP_CMP_LE": seccomp.LE,
    "SCMP_CMP_EQ": seccomp.EQ, "SCMP_CMP_GE": seccomp.GE, "SCMP_CMP_GT": seccomp.GT,
    "SCMP_CMP_MASKED_EQ": seccomp.MASKED_EQ,
}


def action(name: str, errno_ret: int | None) -> int:
    if name == "SCMP_ACT_ALLOW":
        return int(seccomp.ALLOW)
    if name == "SCMP_ACT_ERRNO":
        return int(seccomp.ERRNO(errno_ret if errno_ret is not None else errno.EPERM))
    if name in ("SCMP_ACT_KILL", "SCMP_ACT_KILL_THREAD"):
        return int(seccomp.KILL)
    if name == "SCMP_ACT_KILL_PROCESS":
        return int(seccomp.KILL_PROCESS)
    if name == "SCMP_ACT_TRAP":
        return int(seccomp.TRAP)
    if name == "SCMP_ACT_LOG":
        return int(seccomp.LOG)
    raise SystemExit(f"seccomp_loader: unsupported action {name}")


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(p) for p in text.split("-")[0].split(".")[:2])


def applies(rule: dict[str, Any], arch: str) -> bool:
    inc = rule.get("includes") or {}
    exc = rule.get("excludes") or {}
    if inc.get("caps"):
        return False  # the builder holds no capabilities
    if inc.get("arches") and arch not in inc["arches"]:
        return False
    if inc.get("minKernel") and _version(platform.release()) < _version(inc["minKernel"]):
        return False
    return not (exc.get("arches") and arch in exc["arches"])


def _arch(name: str) -> Any:
    """libseccomp's token for SCMP_ARCH_<NAME>; None if this libseccomp predates it."""
    return getattr(seccomp.Arch, name.removeprefix("SCMP_ARCH_"), None)


def build(profile: dict[str, Any]) -> Any:
    default = action(profile["defaultAction"], profile.get("defaultErrnoRet"))
    filt = seccomp.SyscallFilter(defaction=default)
    filt.set_attr(seccomp.Attr.CTL_NNP, 0)
    native = seccomp.system_arch() & 0xFFFFFFFF
    for entry in profile.get("archMap") or []:
        token = _arch(entry["architecture"])
        if token is not None and int(token) & 0xFFFFFFFF == native:
            for sub in entry.get("subArchitectures") or []:
                if _arch(sub) is not None:
                    filt.add_arch(_arch(sub))
    arch = GOARCH.get(platform.machine(), platform.machine())
    for rule in profile["syscalls"]:
        if not applies(rule, arch):
            continue
        act = action(rule["action"], rule.get("errnoRet"))
        if act == default:
            continue  # libseccomp refuses rules that repeat the default action
        conds = [
            seccomp.Arg(a["index"], OPS[a["op"]], a["value"], a.get("valueTwo", 0))
            for a in rule.get("args") or []
        ]
        indexes = [a["index"] for a in rule.get("args") or []]
        groups = [[c] for c in conds] if len(set(indexes)) < len(indexes) else [conds]
        for name in rule["names"]:
            if seccomp.resolve_syscall(seccomp.Arch.NATIVE, name) == -1:
                continue  # unknown to this libseccomp (__NR_SCMP_ERROR)
            for group in groups:
                filt.add_rule(act, name, *group)
    return filt


def main() -> None:
    with open(sys.argv[1], encoding="utf-8") as f:
        profile = json.load(f)
    build(profile).load()
    os.execvp(sys.argv[2], sys.argv[2:])


if __name__ == "__main__":
    main()
