"""Run one sandbox step from a JSON request and print what happened, as JSON.

Used by test_sandbox.py as the unprivileged build user (the harness copies it into the test's
directory). Request keys: argv, root (a directory) or lowers ([[tree, meta]...]) + work,
scratch, and optionally env, user, workdir, network, proc, untrusted, timeout, binds
([{source, target, readonly, kind, required?}...]), mounts (``RunMount``s as
``mount_to_json`` writes them) and idmap (an ``IdMapPlan.to_json()``;
default: the host's plan for this user). The step runs on a ``SandboxExecutor`` made for it.
Output (stdout): one JSON object: lines, exit_code, timed_out, warnings, layer (paths of the
layer's tree and its entries) or error/error_type (the type's name of whatever was raised,
``ExceptionGroup`` included: a RootbuildError must come out bare).
"""

from __future__ import annotations

import io
import json
import sys
import tarfile
from pathlib import Path

import trio

from rootbuild.image.layer_extract import extract_layer
from rootbuild.sandbox.executor import SandboxExecutor
from rootbuild.sandbox.idmap import IdMapPlan, read_host_plan
from rootbuild.sandbox.spec import Bind, DirRoot, OverlayRoot, StepSpec, mount_from_json
from rootbuild.snapshot import LowerLayer

APPLETS = ("sh", "ls", "cat", "id", "ps", "sleep", "echo", "head", "mkdir", "chown", "touch",
           "stat", "ip", "hostname", "env", "pwd", "true", "false", "rm", "wc", "tr", "grep",
           "kill", "mknod", "chmod", "ln")
PASSWD = "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/sh\n"
GROUP = "root:x:0:\nnogroup:x:65534:\n"


def build_layer(dest: Path, extra: list[list[object]]) -> None:
    """A busybox base layer (root-owned, from the host's static /bin/busybox), extracted
    to dest/tree with dest/meta.json. ``extra`` rows: [path, "symlink"|"dir"|"file", arg]."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        def add(name: str, kind: bytes, mode: int, data: bytes = b"", link: str = "") -> None:
            info = tarfile.TarInfo(name)
            info.type, info.mode, info.linkname = kind, mode, link
            info.size = len(data) if kind == tarfile.REGTYPE else 0
            tf.addfile(info, io.BytesIO(data) if kind == tarfile.REGTYPE else None)

        for d in ("bin", "etc", "tmp", "root", "usr", "usr/bin"):
            add(d, tarfile.DIRTYPE, 0o1777 if d == "tmp" else 0o755)
        add("bin/busybox", tarfile.REGTYPE, 0o755, Path("/bin/busybox").read_bytes())
        for applet in APPLETS:
            add(f"bin/{applet}", tarfile.SYMTYPE, 0o777, link="busybox")
        add("etc/passwd", tarfile.REGTYPE, 0o644, PASSWD.encode())
        add("etc/group", tarfile.REGTYPE, 0o644, GROUP.encode())
        for path, kind, arg in extra:
            if kind == "symlink":
                add(str(path), tarfile.SYMTYPE, 0o777, link=str(arg))
            elif kind == "dir":
                add(str(path), tarfile.DIRTYPE, int(str(arg or 0o755)))
            else:
                add(str(path), tarfile.REGTYPE, 0o644, str(arg).encode())
    buf.seek(0)
    dest.mkdir()
    extract_layer(buf, dest / "tree", media_type_or_compression="none").meta.save(
        dest / "meta.json"
    )


async def main(request: dict[str, object]) -> dict[str, object]:
    if request.get("root"):
        rootfs: DirRoot | OverlayRoot = DirRoot(Path(str(request["root"])))
    else:
        lowers = request["lowers"]
        assert isinstance(lowers, list)
        rootfs = OverlayRoot(
            tuple(LowerLayer(Path(t), Path(m)) for t, m in lowers), Path(str(request["work"]))
        )
    env = request.get("env", {})
    assert isinstance(env, dict)
    argv = request["argv"]
    assert isinstance(argv, list)
    timeout = request.get("timeout")
    binds = request.get("binds", [])
    assert isinstance(binds, list)
    mounts = request.get("mounts", [])
    assert isinstance(mounts, list)
    spec = StepSpec(
        argv=tuple(str(a) for a in argv), rootfs=rootfs, scratch=Path(str(request["scratch"])),
        env={str(k): str(v) for k, v in env.items()}, user=str(request.get("user", "")),
        workdir=str(request.get("workdir", "/")), network=str(request.get("network", "host")),
        proc=str(request.get("proc", "fresh")), untrusted=bool(request.get("untrusted")),
        timeout=float(str(timeout)) if timeout is not None else None,
        binds=tuple(Bind.from_json({"required": True} | b) for b in binds),
        mounts=tuple(mount_from_json(m) for m in mounts),
    )
    idmap = request.get("idmap")
    plan = IdMapPlan.from_json(idmap) if isinstance(idmap, dict) else read_host_plan()
    lines: list[str] = []
    try:
        result = await SandboxExecutor(plan).run(spec, lines.append)
    except Exception as exc:
        return {"lines": lines, "error": str(exc), "error_type": type(exc).__name__}
    layer = None
    if result.layer is not None:
        layer = {
            "tree": str(result.layer.tree),
            "entries": {
                path: {"kind": e.kind, "uid": e.uid, "gid": e.gid, "mode": e.mode}
                for path, e in result.layer.meta.entries.items()
            },
            "whiteouts": sorted(getattr(result.layer.meta, "whiteouts", ())),
        }
    return {
        "lines": lines, "exit_code": result.exit_code, "timed_out": result.timed_out,
        "warnings": list(result.warnings), "layer": layer,
    }


if __name__ == "__main__":
    req = json.loads(Path(sys.argv[1]).read_text())
    if "build_layer" in req:
        build_layer(Path(req["build_layer"]), req.get("extra", []))
        sys.exit(0)
    print(json.dumps(trio.run(main, req)))
