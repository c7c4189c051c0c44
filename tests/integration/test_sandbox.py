"""The RUN sandbox (rootbuild.sandbox) with the real kernel, as the unprivileged build user.

Each test runs ``sandbox_driver.py`` (copied into the test's directory) as the build user on
a busybox base layer built in the test, and checks what the step saw, what its layer holds,
and the host afterwards (the harness also asserts no process or mount is left).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import Harness

pytestmark = pytest.mark.integration
DRIVER = Path(__file__).with_name("sandbox_driver.py")
CANARY = "ROOTBUILD_SANDBOX_CANARY"


class Sandbox:
    def __init__(self, rb: Harness) -> None:
        self.rb = rb
        self.driver = rb.workdir / "sandbox_driver.py"
        shutil.copy(DRIVER, self.driver)
        os.chmod(self.driver, 0o644)
        self.count = 0

    def _write(self, name: str, data: dict[str, Any]) -> Path:
        path = self.rb.workdir / name
        path.write_text(json.dumps(data))
        self.rb._own(path)
        return path

    def layer(self, extra: list[list[object]] | None = None) -> tuple[str, str]:
        self.count += 1
        dest = self.rb.workdir / f"base{self.count}"
        req = self._write(f"layer{self.count}.json", {"build_layer": str(dest),
                                                       "extra": extra or []})
        self.rb.as_user([sys.executable, str(self.driver), str(req)])
        return str(dest / "tree"), str(dest / "meta.json")

    def dir_root(self) -> Path:
        tree, _ = self.layer()
        os.chmod(tree, 0o755)
        return Path(tree)

    def request(self, argv: list[str], *, lowers: list[tuple[str, str]] | None = None,
                **opts: Any) -> Path:
        self.count += 1
        req: dict[str, Any] = {"argv": argv, "scratch": str(self.rb.workdir / f"s{self.count}")}
        if "root" not in opts:
            req["lowers"] = [list(lo) for lo in (lowers or [self.layer()])]
            req["work"] = str(self.rb.workdir / f"w{self.count}")
        req.update({k: (str(v) if isinstance(v, Path) else v) for k, v in opts.items()})
        return self._write(f"req{self.count}.json", req)

    def run(self, argv: list[str], *, host_env: dict[str, str] | None = None,
            lowers: list[tuple[str, str]] | None = None, **opts: Any) -> dict[str, Any]:
        req = self.request(argv, lowers=lowers, **opts)
        prefix = ["env", *(f"{k}={v}" for k, v in (host_env or {}).items())]
        proc = self.rb.as_user([*prefix, sys.executable, str(self.driver), str(req)])
        out: dict[str, Any] = json.loads(proc.stdout)
        return out


@pytest.fixture
def sbx(rb: Harness) -> Sandbox:
    return Sandbox(rb)


def _user_processes(pattern: str) -> list[str]:
    out = subprocess.run(["ps", "-eo", "pid=,args="], capture_output=True, text=True).stdout
    return [line for line in out.splitlines() if pattern in line and "ps -eo" not in line]


def test_root_inside_and_only_own_processes(sbx: Sandbox) -> None:
    assert sbx.run(["id", "-u"])["lines"] == ["0"]
    res = sbx.run(["ls", "/proc"])
    assert [e for e in res["lines"] if e.isdigit()] == ["1"], res
    res = sbx.run(["cat", "/proc/1/cmdline"])
    assert res["lines"] == ["cat\x00/proc/1/cmdline\x00"], res


def test_environment_is_exactly_the_steps(sbx: Sandbox) -> None:
    res = sbx.run(["env"], host_env={CANARY: "leak-me"}, env={"FOO": "bar"})
    assert not any(CANARY in line or "leak-me" in line for line in res["lines"]), res
    assert "FOO=bar" in res["lines"]
    assert any(line.startswith("PATH=/usr/local/sbin:") for line in res["lines"])
    assert "HOME=/root" in res["lines"]


def test_exit_code_propagates_and_failed_step_has_no_layer(sbx: Sandbox) -> None:
    res = sbx.run(["sh", "-c", "touch /new; exit 42"])
    assert res["exit_code"] == 42 and res["layer"] is None


def test_layer_records_changes_and_chown_with_subuid_range(sbx: Sandbox) -> None:
    res = sbx.run(["sh", "-c", "mkdir /d && touch /d/f && chown 33:33 /d/f && "
                   "chown 123:456 /d && rm /etc/group"])
    assert res["exit_code"] == 0, res
    entries = res["layer"]["entries"]
    assert (entries["d/f"]["uid"], entries["d/f"]["gid"]) == (33, 33)
    assert (entries["d"]["uid"], entries["d"]["gid"]) == (123, 456)
    assert res["layer"]["whiteouts"] == ["etc/group"]


def test_workdir_created_and_escape_refused(sbx: Sandbox) -> None:
    res = sbx.run(["pwd"], workdir="/a/b/c")
    assert res["lines"] == ["/a/b/c"]
    assert {"a", "a/b", "a/b/c"} <= set(res["layer"]["entries"])
    for bad in ("/proc/self/fd/1", "/proc/1/cwd/x", "/proc/self/root"):
        res = sbx.run(["pwd"], workdir=bad)
        assert res.get("error_type") == "StepError", res
        assert "resolves outside the root" in res["error"]


def test_user_by_name_and_by_ids(sbx: Sandbox) -> None:
    root = sbx.dir_root()
    res = sbx.run(["sh", "-c", "id -u; id -g; touch /root/x || echo denied"], root=root,
                  user="nobody")
    assert res["lines"][:2] == ["65534", "65534"]
    assert res["lines"][2:] and res["lines"][-1] == "denied", res
    assert not (root / "root" / "x").exists()
    res = sbx.run(["sh", "-c", "id -u; id -g"], root=root, user="1234:5678")
    assert res["lines"] == ["1234", "5678"]
    res = sbx.run(["true"], root=root, user="ghost")
    assert "unable to find user ghost" in res["error"]


def test_background_process_dies_with_the_step(sbx: Sandbox) -> None:
    res = sbx.run(["sh", "-c", "(sleep 987601 &); echo started"])
    assert res["lines"] == ["started"] and res["exit_code"] == 0
    assert _user_processes("sleep 987601") == []


def test_timeout_kills_the_step_and_tears_down(sbx: Sandbox) -> None:
    start = time.monotonic()
    res = sbx.run(["sh", "-c", "sleep 987602 & sleep 987603"], timeout=2)
    assert res["timed_out"] is True and res["layer"] is None, res
    assert time.monotonic() - start < 30
    assert _user_processes("sleep 98760") == []
    assert str(sbx.rb.workdir) not in Path("/proc/mounts").read_text()


def test_ctrl_c_tears_down(sbx: Sandbox) -> None:
    root = sbx.dir_root()
    req = sbx.request(["sh", "-c", "touch /tmp/started; sleep 987604"], root=root)
    proc = subprocess.Popen(sbx.rb.command([sys.executable, str(sbx.driver), str(req)]),
                            cwd=sbx.rb.workdir, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 30
    while not (root / "tmp" / "started").exists():
        assert time.monotonic() < deadline and proc.poll() is None, proc.communicate()
        time.sleep(0.1)
    proc.send_signal(signal.SIGINT)
    proc.communicate(timeout=60)
    assert proc.returncode != 0
    assert _user_processes("sleep 987604") == []
    assert _user_processes(str(sbx.rb.workdir)) == []
    assert str(sbx.rb.workdir) not in Path("/proc/mounts").read_text()


def test_network_none_has_only_loopback(sbx: Sandbox) -> None:
    res = sbx.run(["sh", "-c", "ls /sys/class/net; ip link show lo"], network="none")
    assert res["lines"][0] == "lo" and "UP" in res["lines"][1], res
    assert len([ln for ln in res["lines"] if ": " in ln and "mtu" in ln]) == 1


def test_dev_nodes_usable(sbx: Sandbox) -> None:
    res = sbx.run(["sh", "-c", "echo x > /dev/null && head -c 8 /dev/urandom | wc -c && "
                   "ls /dev/pts/ptmx /dev/shm && readlink /dev/fd"])
    assert res["exit_code"] == 0, res
    assert res["lines"][0].strip() == "8" and res["lines"][-1] == "/proc/self/fd"


@pytest.mark.parametrize("name", ["proc", "dev", "sys"])
def test_image_symlinked_system_dirs_refused(sbx: Sandbox, name: str) -> None:
    lowers = [sbx.layer([[name, "symlink", "/"]])]
    res = sbx.run(["true"], lowers=lowers)
    assert res.get("error_type") == "SandboxError", res
    assert f"the image's /{name} is a symlink" in res["error"]


def test_etc_hosts_provided_and_absent_from_layer(sbx: Sandbox) -> None:
    res = sbx.run(["sh", "-c", "cat /etc/hosts /etc/hostname; echo x >> /etc/hosts || echo ro"])
    assert "127.0.0.1\tlocalhost buildkitsandbox" in res["lines"]
    assert res["lines"][-1] == "ro"
    assert res["layer"]["entries"] == {} and res["layer"]["whiteouts"] == [], res


def test_etc_hosts_symlink_in_image_is_not_followed(sbx: Sandbox) -> None:
    lowers = [sbx.layer([["etc/hosts", "symlink", "/etc/passwd"]])]
    res = sbx.run(["cat", "/etc/passwd"], lowers=lowers)
    assert res["lines"][0].startswith("root:x:0:0:"), res
    assert any("no /etc/hosts" in w for w in res["warnings"])


def _masked_proc(rb: Harness, argv: list[str]) -> subprocess.CompletedProcess[str]:
    """Run ``argv`` as the build user in a private mount namespace whose /proc has a
    read-only bind over /proc/sys, as /proc looks in a default Docker container."""
    if os.getuid() != 0:
        pytest.fail("the masked-/proc scenario needs pytest to run as root")
    inner = "mount --bind -o ro /proc/sys /proc/sys && exec " + shlex.join(rb.command(argv))
    return subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c", inner],
        cwd=rb.workdir, capture_output=True, text=True, timeout=120,
    )


def test_masked_proc_fails_with_explanation_and_host_bind_works(sbx: Sandbox) -> None:
    root = sbx.dir_root()
    req = sbx.request(["ls", "/proc"], root=root)
    res = json.loads(_masked_proc(sbx.rb, [sys.executable, str(sbx.driver), str(req)]).stdout)
    assert res["error_type"] == "SandboxError"
    assert "mount_too_revealing" in res["error"] and "/proc/sys" in res["error"]
    for remedy in ("systempaths=unconfined", "procMount: Unmasked", "--proc=host-bind"):
        assert remedy in res["error"]

    req = sbx.request(["sh", "-c", "ls /proc | grep -c '^[0-9]'"], root=root, proc="host-bind")
    res = json.loads(_masked_proc(sbx.rb, [sys.executable, str(sbx.driver), str(req)]).stdout)
    assert res["exit_code"] == 0, res
    assert int(res["lines"][0]) > 1  # the builder's processes are visible: the warned cost
    assert any("can see and signal the builder's processes" in w for w in res["warnings"])

    req = sbx.request(["true"], root=root, proc="host-bind", untrusted=True)
    res = json.loads(_masked_proc(sbx.rb, [sys.executable, str(sbx.driver), str(req)]).stdout)
    assert res["error_type"] == "SandboxError" and "refused for untrusted" in res["error"]


def test_dir_binds_appear_at_their_targets_and_not_in_the_layer(sbx: Sandbox) -> None:
    ro = sbx.rb.make_context("bind-ro", {"hello": "from the host\n", "sub/deep": "deep\n"})
    rw = sbx.rb.make_context("bind-rw", {"keep": "kept\n"})
    conf = sbx.rb.make_context("bind-file", {"app.conf": "setting=1\n"}) / "app.conf"
    binds = [
        {"source": str(ro), "target": "/mnt/ro", "readonly": True, "kind": "dir"},
        {"source": str(rw), "target": "/root/cache", "readonly": False, "kind": "dir"},
        {"source": str(conf), "target": "/etc/app/app.conf", "readonly": True, "kind": "file"},
    ]
    script = (
        "cat /mnt/ro/hello /mnt/ro/sub/deep; "
        "(echo x > /mnt/ro/new) 2>/dev/null || echo ro-refused; "
        "(rm /mnt/ro/hello) 2>/dev/null || echo ro-unlink-refused; "
        "cat /root/cache/keep; echo written > /root/cache/out; mkdir /root/cache/d; "
        "cat /etc/app/app.conf; (echo y >> /etc/app/app.conf) 2>/dev/null || echo conf-ro; "
        "echo layer > /layer-file"
    )
    res = sbx.run(["sh", "-c", script], binds=binds)
    assert res["exit_code"] == 0, res
    assert res["lines"] == ["from the host", "deep", "ro-refused", "ro-unlink-refused", "kept",
                            "setting=1", "conf-ro"], res
    entries = set(res["layer"]["entries"])
    assert "layer-file" in entries, res
    assert not {e for e in entries if e.split("/")[0] in ("mnt", "root", "etc")}, res
    assert res["layer"]["whiteouts"] == [], res
    # writes through the read-write bind reached the host directory, nothing else did
    assert (rw / "out").read_text() == "written\n" and (rw / "d").is_dir()
    assert sorted(p.name for p in ro.iterdir()) == ["hello", "sub"]
    assert (ro / "hello").read_text() == "from the host\n"
    assert conf.read_text() == "setting=1\n"
    assert str(sbx.rb.workdir) not in Path("/proc/mounts").read_text()


def test_bind_target_through_an_image_symlink_is_refused(sbx: Sandbox) -> None:
    src = sbx.rb.make_context("bind-src", {"f": "x"})
    canary = sbx.rb.make_context("outside", {"canary": "untouched\n"})
    lowers = [sbx.layer([["srv", "symlink", str(canary)]])]
    binds = [{"source": str(src), "target": "/srv/data", "readonly": False, "kind": "dir"}]
    res = sbx.run(["true"], lowers=lowers, binds=binds)
    assert res.get("error_type") == "StepError", res
    assert re.match(r"^mount /srv/data for RUN: in the image it is a symlink, lies under one, "
                    r"or is not a directory; refusing to mount over it", res["error"]), res
    assert sorted(p.name for p in canary.iterdir()) == ["canary"]


def test_refused_id_mapping_raises_a_bare_sandbox_error(sbx: Sandbox) -> None:
    """newuidmap refuses a subordinate range the user does not own: the executor raises
    the SandboxError itself (not an exception group), and tears everything down."""
    user = sbx.rb.user
    foreign = 3_000_000_000  # nobody's range in /etc/subuid
    plan = {
        "mode": "subid", "warning": "",
        "uids": [[0, user.uid, 1], [1, foreign, 65535]],
        "gids": [[0, user.gid, 1], [1, foreign, 65535]],
    }
    res = sbx.run(["sh", "-c", "echo never"], idmap=plan)
    assert res.get("error_type") == "SandboxError", res
    assert re.match(r"^map ids with newuidmap: newuidmap: uid range \[1-65536\) -> "
                    r"\[3000000000-3000065535\) not allowed$", res["error"]), res
    assert res["lines"] == []
    assert _user_processes(str(sbx.rb.workdir)) == []
    assert str(sbx.rb.workdir) not in Path("/proc/mounts").read_text()
