"""RUN steps through the real `rootbuild` executable, run as the unprivileged build user,
on a busybox base (Debian's static busybox and its applet links, ``COPY rootfs/ /``).

- What a step sees: uid 0, only its own processes in /proc, its command as pid 1, none of
  the builder's environment; shell and exec forms, SHELL, WORKDIR, USER (name, uid:gid),
  ENV and build args; ``--network none``.
- What a step leaves: its changes as a layer (created, modified, deleted files and dirs as
  whiteouts, owners, setuid bits, FIFOs), checked in the exported layer tars and through
  ``umoci unpack --rootless``; an unchanged step adds no layer (BuildKit's exporter drops
  empty diffs and records ``empty_layer``).
- Failures: exit codes reach the user as one line naming the step (BuildKit's wording:
  ``process "/bin/sh -c exit 42" did not complete successfully: exit code: 42``) and the
  store is left as it was; timeout and Ctrl-C tear everything down.
- A masked /proc (mount_too_revealing, as in a default `docker run`): the explanatory
  error, the ``--proc=host-bind`` fallback with its warning, and its refusal with
  ``--untrusted``.
- After every build: no process of the build user tied to the test, no mount, no FUSE
  server (``assert_nothing_left`` and the ``rb`` fixture).
"""

from __future__ import annotations

import gzip
import io
import json
import os
import re
import signal
import subprocess
import tarfile
import time
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
from conftest import ROOTBUILD, Harness, require_tool

pytestmark = pytest.mark.integration

BUSYBOX = Path("/bin/busybox")
APPLETS = (
    "sh", "ls", "id", "cat", "env", "sleep", "mkfifo", "mknod", "chown", "chmod", "rm",
    "mkdir", "touch", "stat", "true", "echo", "pwd", "tr", "grep", "mv", "ln", "printf",
    "mount",
)
PASSWD = (
    "root:x:0:0:root:/root:/bin/sh\n"
    "app:x:1000:1000:app:/home/app:/bin/sh\n"
    "nobody:x:65534:65534:nobody:/nonexistent:/bin/false\n"
)
GROUP = "root:x:0:\napp:x:1000:\nextra:x:2000:app\nnogroup:x:65534:\n"
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

# As root: a private mount namespace whose /proc has a read-only sub-mount, as Docker's and
# Kubernetes' default masking does (same as test_doctor.py); the builder then runs inside.
MASKED_PROC = [
    "unshare", "--mount", "--propagation", "private", "sh", "-c",
    'mount --bind -o ro /proc/sys /proc/sys && exec "$@"', "sh",
]

Proc = subprocess.CompletedProcess[str]


# -- helpers -------------------------------------------------------------------------------------


def busybox_context(rb: Harness, name: str, dockerfile: str,
                    extra: Mapping[str, str | bytes] | None = None) -> Path:
    """A context whose ``rootfs/`` is a minimal busybox system with users and groups."""
    if not BUSYBOX.is_file():
        pytest.fail("integration prerequisite missing: /bin/busybox (busybox-static)")
    files: dict[str, str | bytes] = {
        "Dockerfile": dockerfile,
        "rootfs/bin/busybox": BUSYBOX.read_bytes(),
        "rootfs/etc/passwd": PASSWD,
        "rootfs/etc/group": GROUP,
    }
    for applet in APPLETS:
        files[f"rootfs/bin/{applet}"] = "symlink:busybox"
    files.update(extra or {})
    ctx = rb.make_context(name, files)
    os.chmod(ctx / "rootfs/bin/busybox", 0o755)
    return ctx


def build(rb: Harness, ctx: Path, *args: str, check: bool = True,
          env: Mapping[str, str] | None = None, timeout: float = 300) -> Proc:
    return rb.run("build", "--progress=plain", *args, str(ctx), check=check, env=env,
                  timeout=timeout)


def build_to_layout(rb: Harness, ctx: Path, *args: str,
                    env: Mapping[str, str] | None = None) -> tuple[Path, Proc]:
    layout = rb.workdir / f"{ctx.name}.oci"
    proc = build(rb, ctx, "--output", f"oci:{layout}:v1", *args, env=env)
    return layout, proc


def skopeo_json(rb: Harness, *args: str) -> Any:
    out = rb.as_user([require_tool("skopeo"), "--insecure-policy", "inspect", *args]).stdout
    return json.loads(out)


class Image:
    """An exported ``oci:`` layout read back: config (via skopeo) and each layer's members."""

    def __init__(self, rb: Harness, layout: Path, tag: str = "v1") -> None:
        ref = f"oci:{layout}:{tag}"
        self.config: dict[str, Any] = skopeo_json(rb, "--config", "--raw", ref)
        manifest = skopeo_json(rb, "--raw", ref)
        self.layers: list[dict[str, tuple[tarfile.TarInfo, bytes | None]]] = []
        for desc in manifest["layers"]:
            blob = (layout / "blobs/sha256" / desc["digest"].removeprefix("sha256:")).read_bytes()
            members: dict[str, tuple[tarfile.TarInfo, bytes | None]] = {}
            with tarfile.open(fileobj=io.BytesIO(gzip.decompress(blob))) as tar:
                for info in tar:
                    f = tar.extractfile(info) if info.isreg() else None
                    members[info.name.rstrip("/")] = (info, f.read() if f else None)
            self.layers.append(members)
        assert len(self.layers) == len(self.config["rootfs"]["diff_ids"])

    @property
    def history(self) -> list[tuple[str, bool]]:
        return [(h["created_by"], h.get("empty_layer", False)) for h in self.config["history"]]

    def file(self, name: str) -> bytes:
        """The content of ``name`` in the topmost layer that has it."""
        for members in reversed(self.layers):
            if name in members:
                data = members[name][1]
                assert data is not None, f"{name} is not a regular file"
                return data
        raise AssertionError(f"{name} is in no layer")

    def text(self, name: str) -> str:
        return self.file(name).decode()


def unpack(rb: Harness, layout: Path, tag: str = "v1") -> Path:
    """``umoci unpack --rootless``: the image's tree as an independent runtime sees it."""
    bundle = rb.workdir / f"{layout.name}.bundle"
    rb.as_user([require_tool("umoci"), "unpack", "--rootless", "--image", f"{layout}:{tag}",
                str(bundle)])
    return bundle / "rootfs"


def env_file(text: str) -> dict[str, str]:
    return dict(line.partition("=")[::2] for line in text.splitlines() if "=" in line)


def leftovers(rb: Harness, markers: list[str]) -> list[str]:
    """Processes of the build user that name one of ``markers`` or this test's directory
    (the sandbox init and the FUSE server name the store), and mounts under it. Other
    builds of the same user may run at the same time, so only marked ones count."""
    marks = [str(rb.workdir), *markers]
    # -ww: without it ps cuts command lines at 80 columns when not on a terminal
    out = subprocess.run(["ps", "-ww", "-o", "pid=,args=", "-u", str(rb.user.uid)],
                         capture_output=True, text=True).stdout
    found = [line for line in out.splitlines() if any(m in line for m in marks)]
    mounts = Path("/proc/mounts").read_text().splitlines()
    found += [f"mount: {line}" for line in mounts if str(rb.workdir) in line]
    return found


def assert_nothing_left(rb: Harness, markers: list[str]) -> None:
    assert leftovers(rb, markers) == []
    work = rb.store / "tmp"
    if work.exists():
        assert [p.name for p in work.iterdir()] == [], "the build's work directory remains"


def unique_seconds() -> str:
    """A sleep duration no other process on the machine uses: marks this test's steps."""
    return str(100000 + uuid.uuid4().int % 800000)


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("rootbuild:")]


# -- what a step sees ----------------------------------------------------------------------------


def test_step_runs_as_root_sees_only_itself_and_nothing_of_the_builder(rb: Harness) -> None:
    token = "canary-" + uuid.uuid4().hex
    run_line = "id -u > /out/uid; id -g > /out/gid; ls /proc > /out/proc; env > /out/env"
    ctx = busybox_context(rb, "basics", (
        "FROM scratch\n"
        "COPY rootfs/ /\n"
        "RUN mkdir /out && cat /proc/1/cmdline > /out/cmdline && true\n"
        f"RUN {run_line}\n"
        "RUN echo uid=$(id -u)\n"
    ))
    layout, proc = build_to_layout(rb, ctx, env={"CANARY_TOKEN": token, "BUILDER_ONLY": "1"})
    image = Image(rb, layout)

    assert image.text("out/uid") == "0\n"
    assert image.text("out/gid") == "0\n"
    assert re.search(r"^#\d+ [\d.]+s uid=0$", proc.stderr, re.M), proc.stderr  # streamed output
    # pid 1 is the step's own command, as the shell form wraps it (the trailing builtin
    # keeps busybox sh from exec'ing its last command)
    assert image.file("out/cmdline") == (
        b"/bin/sh\0-c\0mkdir /out && cat /proc/1/cmdline > /out/cmdline && true\0"
    )
    # a fresh procfs for a new pid namespace: only the step's few processes
    pids = sorted(int(n) for n in image.text("out/proc").split() if n.isdigit())
    assert 1 in pids and len(pids) <= 4 and max(pids) < 20, pids
    assert "self" in image.text("out/proc").split()

    env = env_file(image.text("out/env"))
    assert "CANARY_TOKEN" not in env and "BUILDER_ONLY" not in env
    assert "USER" not in env and "LANG" not in env  # set for the builder by the harness
    assert env["PATH"] == DEFAULT_PATH
    assert env["HOME"] == "/root"  # root's home from the image's /etc/passwd, not the builder's
    for path in [*layout.rglob("*"), *rb.store.rglob("*")]:
        if path.is_file() and not path.is_symlink():
            data = path.read_bytes()
            if data[:2] == b"\x1f\x8b":
                data = gzip.decompress(data)
            assert token.encode() not in data, f"the builder's environment leaked into {path}"
    assert token not in proc.stdout + proc.stderr
    assert_nothing_left(rb, [])


def test_shell_and_exec_forms_shell_workdir_user_env_and_build_args(rb: Harness) -> None:
    myshell = '#!/bin/sh\necho "myshell:$*" >> /out/shell-log\nexec /bin/sh "$@"\n'
    ctx = busybox_context(rb, "forms", (
        "FROM scratch\n"
        "COPY rootfs/ /\n"
        "ARG GREETING\n"
        "ENV APP=demo\n"
        "RUN mkdir -m 777 /out && echo \"shell $APP $GREETING\" > /out/shell-form"
        " && touch /out/shell-log && chmod 666 /out/shell-log\n"
        'RUN ["/bin/sh", "-c", "echo \\"exec $0 $1 $APP\\" > /out/exec-form", "zero", "one"]\n'
        'SHELL ["/bin/myshell", "-c"]\n'
        "RUN echo via-myshell > /out/via\n"
        'RUN ["/bin/sh", "-c", "echo exec-after-shell > /out/exec2"]\n'
        "WORKDIR /work/dir\n"
        "RUN pwd > here && env > /out/env-args\n"
        "USER app\n"
        "RUN id -u > /out/app-uid; id -g > /out/app-gid; id -G > /out/app-groups; "
        "echo $HOME > /out/app-home; touch /out/by-app\n"
        "USER 123:456\n"
        "RUN id -u > /out/num-uid; id -g > /out/num-gid; touch /out/by-num\n"
    ), {"rootfs/bin/myshell": myshell})
    os.chmod(ctx / "rootfs/bin/myshell", 0o755)
    layout, _ = build_to_layout(rb, ctx, "--build-arg", "GREETING=hello")
    image = Image(rb, layout)

    assert image.text("out/shell-form") == "shell demo hello\n"
    assert image.text("out/exec-form") == "exec zero one demo\n"
    assert image.text("out/via") == "via-myshell\n"
    assert image.text("out/exec2") == "exec-after-shell\n"
    # SHELL wraps only the shell form; the exec form after it runs as given
    assert image.text("out/shell-log") == "myshell:-c echo via-myshell > /out/via\n" \
        "myshell:-c pwd > here && env > /out/env-args\n" \
        "myshell:-c id -u > /out/app-uid; id -g > /out/app-gid; id -G > /out/app-groups; " \
        "echo $HOME > /out/app-home; touch /out/by-app\n" \
        "myshell:-c id -u > /out/num-uid; id -g > /out/num-gid; touch /out/by-num\n"
    assert image.text("work/dir/here") == "/work/dir\n"
    env = env_file(image.text("out/env-args"))
    assert env["APP"] == "demo" and env["GREETING"] == "hello"
    assert env["PWD"] == "/work/dir"
    assert image.text("out/app-uid") == "1000\n"
    assert image.text("out/app-gid") == "1000\n"
    assert sorted(image.text("out/app-groups").split()) == ["1000", "2000"]
    assert image.text("out/app-home") == "/home/app\n"
    assert image.text("out/num-uid") == "123\n"
    assert image.text("out/num-gid") == "456\n"
    top = image.layers[-1]
    assert (top["out/by-num"][0].uid, top["out/by-num"][0].gid) == (123, 456)
    by_app = image.layers[-2]["out/by-app"][0]
    assert (by_app.uid, by_app.gid) == (1000, 1000)
    # ARG values reach RUN's environment but never the image config
    assert "GREETING" not in "".join(image.config["config"]["Env"])
    # BuildKit's runCommandString: "|N K=V" for the stage's build args, then the argv
    assert image.history[4] == (
        'RUN |1 GREETING=hello /bin/sh -c echo "exec $0 $1 $APP" > /out/exec-form zero one'
        " # buildkit", False,
    )


# -- what a step leaves --------------------------------------------------------------------------


def test_changes_become_a_layer_with_whiteouts_owners_setuid_and_fifos(rb: Harness) -> None:
    ctx = busybox_context(rb, "layers", (
        "FROM scratch\n"
        "COPY rootfs/ /\n"
        "COPY base/ /\n"
        "RUN echo new > /new.txt && mkdir -p /newdir/sub && echo deep > /newdir/sub/f"
        " && echo changed > /keep/mod.txt && rm /keep/del.txt && rm -r /deldir"
        " && rm -rf /opq && mkdir /opq && echo only > /opq/only"
        " && chown 123:456 /new.txt && chown -R 7:8 /newdir"
        " && cp /bin/busybox /suid && chmod 4755 /suid"
        " && mkfifo /fifo && mknod /fifo2 p\n"
        "RUN true\n"
        "RUN ls / > /dev/null\n"
    ), {
        "base/keep/mod.txt": "original\n",
        "base/keep/same.txt": "same\n",
        "base/keep/del.txt": "delete me\n",
        "base/deldir/sub/f": "gone\n",
        "base/opq/old1": "old\n",
        "base/opq/old2": "old\n",
    })
    # `cp` is one more applet
    os.symlink("busybox", ctx / "rootfs/bin/cp")
    layout, _ = build_to_layout(rb, ctx)
    image = Image(rb, layout)

    assert len(image.layers) == 3  # rootfs, base, one RUN layer; the two no-op RUNs add none
    assert image.history[-3][0].startswith("RUN /bin/sh -c echo new > /new.txt")
    assert image.history[-3][1] is False
    assert image.history[-2:] == [
        ("RUN /bin/sh -c true # buildkit", True),
        ("RUN /bin/sh -c ls / > /dev/null # buildkit", True),
    ]
    run = image.layers[-1]
    new = run["new.txt"][0]
    assert run["new.txt"][1] == b"new\n" and (new.uid, new.gid) == (123, 456)
    assert run["newdir"][0].isdir() and (run["newdir"][0].uid, run["newdir"][0].gid) == (7, 8)
    assert run["newdir/sub/f"][1] == b"deep\n"
    assert (run["newdir/sub/f"][0].uid, run["newdir/sub/f"][0].gid) == (7, 8)
    assert run["keep/mod.txt"][1] == b"changed\n"
    assert "keep/same.txt" not in run  # unchanged files stay in their own layer
    assert run["keep/.wh.del.txt"][0].isreg() and run["keep/.wh.del.txt"][0].size == 0
    assert "deldir" not in run and not any(n.startswith("deldir/") for n in run)
    whiteouts = {n for n in run if os.path.basename(n).startswith(".wh.")}
    assert "keep/.wh.del.txt" in whiteouts and ".wh.deldir" in whiteouts
    # a replaced dir hides the old children: an opaque marker or a whiteout for each
    assert "opq/.wh..wh..opq" in run or {"opq/.wh.old1", "opq/.wh.old2"} <= set(run)
    assert run["opq/only"][1] == b"only\n"
    suid = run["suid"][0]
    assert suid.mode & 0o7777 == 0o4755 and (suid.uid, suid.gid) == (0, 0)
    assert run["fifo"][0].isfifo() and run["fifo2"][0].isfifo()
    # what the sandbox provided (/etc/hosts ..., mount points) is not part of the layer
    for entry in ("etc", "etc/hosts", "etc/resolv.conf", "etc/hostname", "proc", "dev", "sys"):
        assert entry not in run, entry

    root = unpack(rb, layout)  # an independent runtime's view of the layers
    assert (root / "new.txt").read_text() == "new\n"
    assert (root / "newdir/sub/f").read_text() == "deep\n"
    assert (root / "keep/mod.txt").read_text() == "changed\n"
    assert (root / "keep/same.txt").read_text() == "same\n"
    assert not (root / "keep/del.txt").exists()
    assert not (root / "deldir").exists()
    assert sorted(os.listdir(root / "opq")) == ["only"]
    assert (root / "suid").stat().st_mode & 0o4000
    assert (root / "fifo").is_fifo()


def test_user_nobody_cannot_write_a_root_owned_dir(rb: Harness) -> None:
    ctx = busybox_context(rb, "nobody", (
        "FROM scratch\n"
        "COPY rootfs/ /\n"
        "RUN mkdir -m 755 /rootonly\n"
        "USER nobody\n"
        "RUN touch /rootonly/f\n"
    ))
    proc = build(rb, ctx, check=False)
    assert proc.returncode == 1, proc.stderr
    assert "Permission denied" in proc.stderr  # touch's own message, streamed
    assert error_lines(proc.stderr) == [
        'rootbuild: Dockerfile:5: RUN: process "/bin/sh -c touch /rootonly/f" did not '
        "complete successfully: exit code: 1"
    ]
    assert_nothing_left(rb, [])


def test_exit_code_fails_the_build_naming_the_step_and_leaves_the_store(rb: Harness) -> None:
    ok = busybox_context(rb, "ok", "FROM scratch\nCOPY rootfs/ /\nRUN echo ok > /ok\n")
    rb.run("build", "-q", "-t", "ok:1", str(ok))
    before = rb.store_snapshot()
    assert before
    bad = busybox_context(rb, "bad", (
        "FROM scratch\nCOPY rootfs/ /\nRUN echo ok > /ok\nRUN echo more > /more\nRUN exit 42\n"
    ))
    proc = rb.run("build", "-q", "-t", "bad:1", str(bad), check=False)
    assert proc.returncode == 1
    assert proc.stdout == ""
    assert re.fullmatch(
        r'rootbuild: Dockerfile:5: RUN: process "/bin/sh -c exit 42" did not complete '
        r"successfully: exit code: 42\n",
        proc.stderr,
    ), proc.stderr
    assert rb.store_snapshot() == before
    assert rb.run("images", "-q").stdout.splitlines() == ["ok:1"]
    assert_nothing_left(rb, [])


# -- teardown ------------------------------------------------------------------------------------


def test_timeout_kills_the_step_and_names_the_limit(rb: Harness) -> None:
    seconds = unique_seconds()
    ctx = busybox_context(rb, "timeout", f"FROM scratch\nCOPY rootfs/ /\nRUN sleep {seconds}\n")
    started = time.monotonic()
    proc = rb.run("build", "-q", "--timeout", "2", str(ctx), check=False, timeout=60)
    elapsed = time.monotonic() - started
    assert proc.returncode == 1
    assert elapsed < 30, elapsed
    assert error_lines(proc.stderr) == [
        f'rootbuild: Dockerfile:3: RUN: process "/bin/sh -c sleep {seconds}" timed out '
        "after 2s"
    ], proc.stderr
    assert_nothing_left(rb, [f"sleep {seconds}"])


def test_background_processes_die_with_the_step(rb: Harness) -> None:
    seconds = unique_seconds()
    ctx = busybox_context(rb, "bg", (
        f"FROM scratch\nCOPY rootfs/ /\nRUN (sleep {seconds} &) ; (sleep {seconds} </dev/null "
        ">/dev/null 2>&1 &) ; echo started\n"
    ))
    build(rb, ctx)
    assert_nothing_left(rb, [f"sleep {seconds}"])


def test_ctrl_c_tears_the_step_down(rb: Harness) -> None:
    seconds = unique_seconds()
    ctx = busybox_context(rb, "ctrlc", f"FROM scratch\nCOPY rootfs/ /\nRUN sleep {seconds}\n")
    argv = rb.command([str(ROOTBUILD), "build", "--root", str(rb.store), "--progress=plain",
                       str(ctx)])
    # setpriv and env exec: the child's pid is rootbuild's
    proc = subprocess.Popen(argv, cwd=rb.workdir, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while not any(f"sleep {seconds}" in line and "RUN" not in line
                      for line in leftovers(rb, [f"sleep {seconds}"])):
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "the RUN step never started"
            time.sleep(0.2)
        # the marks find the step's FUSE server too, so the check after teardown means it
        running = leftovers(rb, [])
        assert any("rootbuild.fuse_overlay.server" in line for line in running), running
        os.kill(proc.pid, signal.SIGINT)
        started = time.monotonic()
        stdout, stderr = proc.communicate(timeout=15)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert time.monotonic() - started < 15
    assert proc.returncode == 130
    assert f"RUN sleep {seconds}" in stderr  # the progress showed the step
    assert "Traceback" not in stderr, stderr
    assert error_lines(stderr) == ["rootbuild: interrupted"], stderr
    assert stdout == ""
    assert_nothing_left(rb, [f"sleep {seconds}"])


def build_until_sleeping(rb: Harness, ctx: Path, seconds: str,
                         *args: str) -> subprocess.Popen[bytes]:
    """Start a build of ``ctx`` whose RUN runs ``sleep SECONDS``; return once that sleep
    runs (the build still going)."""
    argv = rb.command([str(ROOTBUILD), "build", "--root", str(rb.store), "--progress=plain",
                       *args, str(ctx)])
    proc = subprocess.Popen(argv, cwd=rb.workdir, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while not any(f"sleep {seconds}" in line and "RUN" not in line
                      for line in leftovers(rb, [f"sleep {seconds}"])):
            assert proc.poll() is None, "the build ended before its step ran"
            assert time.monotonic() < deadline, "the RUN step never started"
            time.sleep(0.2)
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    return proc


def test_a_killed_builder_takes_its_zygote_and_steps_with_it(rb: Harness) -> None:
    """``kill -9`` of the builder mid-step: the step's init (forked by the build's zygote,
    sandbox/zygote.py) sees its control pipe close and tears the step down; the zygote
    dies with the builder (PR_SET_PDEATHSIG). Nothing naming the store, no mount remains."""
    seconds = unique_seconds()
    ctx = busybox_context(rb, "kill9", f"FROM scratch\nCOPY rootfs/ /\nRUN sleep {seconds}\n")
    proc = build_until_sleeping(rb, ctx, seconds)
    try:
        running = leftovers(rb, [])
        for helper in ("rootbuild.sandbox.zygote", "rootbuild.sandbox.init",
                       "rootbuild.fuse_overlay.server"):
            assert any(helper in line for line in running), (helper, running)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    deadline = time.monotonic() + 30
    while leftovers(rb, [f"sleep {seconds}"]) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert leftovers(rb, [f"sleep {seconds}"]) == []


# -- /proc, network, stages ----------------------------------------------------------------------


def _masked(rb: Harness, ctx: Path, *args: str) -> Proc:
    require_tool("unshare")
    argv = [*MASKED_PROC, *rb.command([
        str(ROOTBUILD), "build", "--root", str(rb.store), "--progress=plain", *args, str(ctx),
    ])]
    return subprocess.run(argv, cwd=rb.workdir, capture_output=True, text=True, timeout=300)


def test_masked_proc_explains_and_host_bind_is_the_explicit_fallback(rb: Harness) -> None:
    ctx = busybox_context(rb, "masked", (
        "FROM scratch\nCOPY rootfs/ /\nRUN ls /proc > /procs\n"
    ))
    fresh = _masked(rb, ctx)
    assert fresh.returncode == 1, fresh.stderr
    errors = error_lines(fresh.stderr)
    assert len(errors) == 1, fresh.stderr
    assert errors[0].startswith("rootbuild: Dockerfile:3: ")
    for needed in ("mount_too_revealing", "--security-opt systempaths=unconfined",
                   "procMount: Unmasked", "--proc=host-bind"):
        assert needed in errors[0], (needed, errors[0])
    assert_nothing_left(rb, [])

    out = rb.workdir / "host-bind"
    bound = _masked(rb, ctx, "--proc=host-bind", "--output", f"dir:{out}")
    assert bound.returncode == 0, bound.stderr
    warnings = [line for line in bound.stderr.splitlines() if "--proc=host-bind" in line]
    assert len(warnings) == 1 and "warning" in warnings[0].lower(), bound.stderr
    assert "see and signal the builder's processes" in warnings[0]
    # no pid namespace: the step sees the host's processes (that is what the warning says)
    pids = [n for n in (out / "procs").read_text().split() if n.isdigit()]
    assert len(pids) > 10
    assert_nothing_left(rb, [])

    refused = _masked(rb, ctx, "--proc=host-bind", "--untrusted")
    assert refused.returncode != 0
    errors = error_lines(refused.stderr)
    assert len(errors) == 1 and "--proc=host-bind" in errors[0] and "untrusted" in errors[0]
    assert "refused" in errors[0]


def test_network_none_has_only_loopback(rb: Harness) -> None:
    ctx = busybox_context(rb, "net", (
        "FROM scratch\nCOPY rootfs/ /\n"
        "RUN mkdir /out && cat /proc/net/dev > /out/dev && ls /sys/class/net > /out/sys\n"
    ))
    none = rb.workdir / "none"
    build(rb, ctx, "--network", "none", "--output", f"dir:{none}")
    rows = (none / "out/dev").read_text().splitlines()[2:]
    assert [row.split(":")[0].strip() for row in rows] == ["lo"]
    assert (none / "out/sys").read_text().split() == ["lo"]

    host = rb.workdir / "host"
    build(rb, ctx, "--output", f"dir:{host}")  # default: the host's network, as docker build
    host_ifaces = {line.split(":")[0].strip()
                   for line in Path("/proc/net/dev").read_text().splitlines()[2:]}
    rows = (host / "out/dev").read_text().splitlines()[2:]
    assert {row.split(":")[0].strip() for row in rows} == host_ifaces


def test_run_in_two_independent_stages_and_copy_from(rb: Harness) -> None:
    ctx = busybox_context(rb, "stages", (
        "FROM scratch AS base\n"
        "COPY rootfs/ /\n"
        "FROM base AS a\n"
        "RUN echo from-a > /a.txt\n"
        "FROM base AS b\n"
        "RUN mkdir /made && echo from-b > /made/x && echo b-only > /b.txt\n"
        "FROM base\n"
        "COPY --from=a /a.txt /a.txt\n"
        "COPY --from=b /made /made\n"
        "RUN cat /a.txt /made/x > /final.txt\n"
    ))
    layout, _ = build_to_layout(rb, ctx, "--jobs", "2")
    image = Image(rb, layout)
    assert image.text("final.txt") == "from-a\nfrom-b\n"
    root = unpack(rb, layout)
    assert (root / "a.txt").read_text() == "from-a\n"
    assert (root / "made/x").read_text() == "from-b\n"
    assert not (root / "b.txt").exists()
    assert (root / "final.txt").read_text() == "from-a\nfrom-b\n"
    assert_nothing_left(rb, [])


def test_step_has_dockers_default_capabilities_only(rb: Harness) -> None:
    """Root of the step's user namespace keeps Docker's default capability set; without
    CAP_SYS_ADMIN it cannot mount (as in a docker build). Nested user namespaces are still
    allowed (no seccomp filter yet): they only ever see the step's own mounts."""
    ctx = busybox_context(rb, "caps", (
        "FROM scratch\nCOPY rootfs/ /\n"
        "RUN mkdir /out /mnt && grep -E '^Cap(Eff|Bnd):' /proc/self/status > /out/caps && "
        "(mount -t tmpfs none /mnt 2>/dev/null; echo $? > /out/mount)\n"
    ))
    out = rb.workdir / "caps-out"
    build(rb, ctx, "--output", f"dir:{out}")
    caps = dict(line.split(":\t") for line in (out / "out/caps").read_text().splitlines())
    # CHOWN DAC_OVERRIDE FOWNER FSETID KILL SETGID SETUID SETPCAP NET_BIND_SERVICE NET_RAW
    # SYS_CHROOT MKNOD AUDIT_WRITE SETFCAP: Docker's default, 0x00000000a80425fb
    assert caps == {"CapEff": "00000000a80425fb", "CapBnd": "00000000a80425fb"}
    assert (out / "out/mount").read_text().strip() != "0"
