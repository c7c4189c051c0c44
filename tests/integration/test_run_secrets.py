"""RUN --mount=type=secret and type=ssh through the real `rootbuild` executable, run as the
unprivileged build user, on the busybox base of test_build_run.py.

- secret: content, mode and owner of the file (made inside the user namespace), the default
  target, ``env=``, ``required`` missing (plan-time error, store unchanged), not-required
  missing (the step runs without it), the value masked in the progress output, the target
  absent from the layer, a new value reusing the cached step (the key has the id only).
- THE secrets test: a build with a file secret and an env secret, exported with
  ``--cache-to type=local``; the value is found in no layer (decompressed), no config, no
  cache export file, no output line, and no file of the store, neither while the step runs
  (polled) nor after.
- ssh: an agent the test starts as the build user, forwarded with ``--ssh default``
  (``ssh-add -l`` inside RUN lists its key), and ``--ssh default=KEYFILE`` (rootbuild's own
  agent, gone after the build).

Docker's reference: https://docs.docker.com/reference/dockerfile/#run---mounttypesecret and
https://docs.docker.com/reference/dockerfile/#run---mounttypessh
"""

from __future__ import annotations

import gzip
import hashlib
import os
import re
import shutil
import signal
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import Harness, require_tool
from test_build_run import (
    Image,
    assert_nothing_left,
    build,
    build_to_layout,
    build_until_sleeping,
    busybox_context,
    error_lines,
    leftovers,
    unique_seconds,
)

pytestmark = pytest.mark.integration

EXTRA_APPLETS = ("sha256sum", "test", "[", "wc", "head")


def secret_context(rb: Harness, name: str, dockerfile: str,
                   extra: dict[str, str | bytes] | None = None) -> Path:
    files: dict[str, str | bytes] = {f"rootfs/bin/{a}": "symlink:busybox"
                                     for a in EXTRA_APPLETS}
    files.update(extra or {})
    return busybox_context(rb, name, dockerfile, files)


def secret_file(rb: Harness, value: bytes, name: str = "tok.txt") -> Path:
    path = rb.workdir / name
    path.write_bytes(value)
    os.chmod(path, 0o600)
    if os.getuid() == 0:
        os.chown(path, rb.user.uid, rb.user.gid)
    return path


def sha(value: bytes) -> str:
    return hashlib.sha256(value).hexdigest()


def new_value() -> bytes:
    return f"s3cr3t-{uuid.uuid4().hex}".encode()


# -- the file, its place, mode and owner -----------------------------------------------------


def test_secret_file_default_target_mode_owner_and_not_in_the_layer(rb: Harness) -> None:
    """Docker: "id: ID of the secret. Defaults to basename of the target path." "target:
    Mount the secret to the specified path. Defaults to /run/secrets/ + id if unset and if
    env is also unset." "mode: File mode for secret file in octal. Default 0400." "uid: User
    ID for secret file. Default 0." (reference, RUN --mount=type=secret)"""
    value = new_value()
    src = secret_file(rb, value)
    ctx = secret_context(rb, "secret-file", (
        "FROM scratch\n"
        "COPY rootfs/ /\n"
        "RUN mkdir /out && chmod 777 /out\n"
        "RUN --mount=type=secret,id=tok sha256sum /run/secrets/tok > /out/sum"
        " && stat -c '%a %u %g' /run/secrets/tok > /out/stat\n"
        "RUN --mount=type=secret,target=/etc/app/token,mode=0440,uid=1000,gid=2000"
        " sha256sum /etc/app/token > /out/sum2 && stat -c '%a %u %g' /etc/app/token"
        " > /out/stat2 && id -u > /out/me\n"
        "USER app\n"
        "RUN --mount=type=secret,id=tok,target=/home/app/tok,uid=1000"
        " cat /home/app/tok | sha256sum > /out/sum3\n"
    ))
    layout, _ = build_to_layout(rb, ctx, "--secret", f"id=tok,src={src}",
                                "--secret", f"id=token,src={src}")
    image = Image(rb, layout)
    assert image.text("out/sum").split()[0] == sha(value)
    assert image.text("out/stat") == "400 0 0\n"
    # id defaults to the target's base name ("token"), mode/uid/gid as given, really
    assert image.text("out/sum2").split()[0] == sha(value)
    assert image.text("out/stat2") == "440 1000 2000\n"
    assert image.text("out/sum3").split()[0] == sha(value)  # USER app reads its own 0400 file
    names = {name for layer in image.layers for name in layer}
    assert not {"run/secrets", "run/secrets/tok", "etc/app", "etc/app/token",
                "home/app/tok"} & names, names
    assert_nothing_left(rb, [])


def test_secret_as_env_only_for_its_step(rb: Harness) -> None:
    """Docker: "env: Mount the secret to an environment variable instead of a file, or
    both." (reference, RUN --mount=type=secret; with env and no target, no file)"""
    value = new_value()
    ctx = secret_context(rb, "secret-env", (
        "FROM scratch\n"
        "COPY rootfs/ /\n"
        "RUN mkdir /out\n"
        "RUN --mount=type=secret,id=api,env=API_TOKEN printf %s \"$API_TOKEN\" | sha256sum"
        " > /out/sum && ls /run/secrets > /out/ls 2>&1; true\n"
        "RUN --mount=type=secret,id=api,env=BOTH,target=/s/api cmp /s/api /s/api"
        " && printf %s \"$BOTH\" | sha256sum > /out/both && sha256sum /s/api > /out/bothfile\n"
        "RUN env > /out/env\n"
    ), {"rootfs/bin/cmp": "symlink:busybox"})
    layout, _ = build_to_layout(rb, ctx, "--secret", "id=api,env=MY_API_TOKEN",
                                env={"MY_API_TOKEN": value.decode()})
    image = Image(rb, layout)
    assert image.text("out/sum").split()[0] == sha(value)
    assert "No such file" in image.text("out/ls")  # env only: no /run/secrets at all
    assert image.text("out/both").split()[0] == sha(value)
    assert image.text("out/bothfile").split()[0] == sha(value)
    env = image.text("out/env")
    assert "API_TOKEN" not in env and "BOTH" not in env and value.decode() not in env


def test_required_secret_missing_fails_at_plan_time(rb: Harness) -> None:
    """Docker: "required: If set to true, the instruction errors out when the secret is
    unavailable. Defaults to false." (reference, RUN --mount=type=secret). rootbuild fails
    before any step runs, with BuildKit's "secret ID: not found"."""
    ctx = secret_context(rb, "secret-required", (
        "FROM scratch\n"
        "COPY rootfs/ /\n"
        "RUN echo first-step-ran\n"
        "RUN --mount=type=secret,id=npmrc,required true\n"
    ))
    build(rb, secret_context(rb, "warm", "FROM scratch\nCOPY rootfs/ /\n"))
    before = rb.store_snapshot()
    proc = build(rb, ctx, check=False)
    assert proc.returncode != 0
    assert error_lines(proc.stderr) == [
        "rootbuild: Dockerfile:4: RUN --mount=type=secret: secret npmrc: not found"
    ], proc.stderr
    assert "first-step-ran" not in proc.stderr and "Traceback" not in proc.stderr
    assert rb.store_snapshot() == before


def test_missing_optional_secret_skips_the_mount(rb: Harness) -> None:
    """Docker: required "Defaults to false" (reference): a secret the build was not given
    is simply not mounted."""
    ctx = secret_context(rb, "secret-optional", (
        "FROM scratch\n"
        "COPY rootfs/ /\n"
        "RUN --mount=type=secret,id=absent test ! -e /run/secrets/absent && echo ran > /ran\n"
    ))
    layout, _ = build_to_layout(rb, ctx)
    assert Image(rb, layout).text("ran") == "ran\n"


def test_secret_printed_by_the_step_is_masked(rb: Harness) -> None:
    value = new_value()
    src = secret_file(rb, value)
    ctx = secret_context(rb, "secret-mask", (
        "FROM scratch\n"
        "COPY rootfs/ /\n"
        "RUN --mount=type=secret,id=tok echo \"token is $(cat /run/secrets/tok).\"\n"
    ))
    proc = build(rb, ctx, "--secret", f"id=tok,src={src}")
    assert value.decode() not in proc.stderr + proc.stdout
    assert "token is ****." in proc.stderr


def test_a_new_secret_value_reuses_the_cached_step(rb: Harness) -> None:
    """BuildKit's cache key of a RUN holds the secret's id, not its value: a changed value
    does not rerun the step (its layer must then not depend on the value)."""
    ctx = secret_context(rb, "secret-cache", (
        "FROM scratch\n"
        "COPY rootfs/ /\n"
        "RUN --mount=type=secret,id=tok test -s /run/secrets/tok && echo had-it > /had\n"
    ))
    first = build(rb, ctx, "--secret", f"id=tok,src={secret_file(rb, new_value(), 'a')}")
    second = build(rb, ctx, "--secret", f"id=tok,src={secret_file(rb, new_value(), 'b')}")
    step = "RUN --mount=type=secret,id=tok test -s"
    assert re.search(r"^#\d+ \[stage-0 3/3\] " + re.escape(step), first.stderr, re.M)
    number = re.search(r"^#(\d+) \[stage-0 3/3\]", second.stderr, re.M)
    assert number is not None
    assert re.search(rf"^#{number.group(1)} CACHED$", second.stderr, re.M), second.stderr


def test_an_untrusted_build_never_caches_a_secret_step(rb: Harness) -> None:
    """../shared/docs/SERVICE.md: "a step that mounts a secret is never cached across
    jobs" (its key cannot tell one value from another: docker/buildx#551). In an
    --untrusted build the step runs again with every build; the COPY before it is still
    cached."""
    ctx = secret_context(rb, "secret-untrusted", (
        "FROM scratch\n"
        "COPY rootfs/ /\n"
        "RUN --mount=type=secret,id=tok test -s /run/secrets/tok && echo had-it > /had\n"
    ))
    for name in ("a", "b"):
        proc = build(rb, ctx, "--untrusted", "--network=none",
                     "--secret", f"id=tok,src={secret_file(rb, new_value(), name)}")
    copy = re.search(r"^#(\d+) \[stage-0 2/3\]", proc.stderr, re.M)
    step = re.search(r"^#(\d+) \[stage-0 3/3\]", proc.stderr, re.M)
    assert copy is not None and step is not None
    assert re.search(rf"^#{copy.group(1)} CACHED$", proc.stderr, re.M), proc.stderr
    assert not re.search(rf"^#{step.group(1)} CACHED$", proc.stderr, re.M), proc.stderr
    assert re.search(rf"^#{step.group(1)} DONE", proc.stderr, re.M), proc.stderr


# -- THE secrets test -------------------------------------------------------------------------


def _contents(path: Path) -> Iterator[bytes]:
    """A file's bytes, and again decompressed when it is gzip or zstd."""
    try:
        data = path.read_bytes()
    except OSError:
        return
    yield data
    if data[:2] == b"\x1f\x8b":
        try:
            plain = gzip.decompress(data)
        except (OSError, EOFError):
            plain = b""  # a gzip blob still being written: its final state is read later
        yield plain
    elif data[:4] == b"\x28\xb5\x2f\xfd":
        import zstandard

        yield zstandard.ZstdDecompressor().decompressobj().decompress(data)


def _files_holding(root: Path, needles: list[bytes]) -> list[str]:
    found = []
    for dirpath, _, files in os.walk(root):
        for name in files:
            path = Path(dirpath) / name
            if path.is_symlink() or not path.is_file():
                continue
            for data in _contents(path):
                if any(n in data for n in needles):
                    found.append(str(path))
                    break
    return found


def test_secrets_reach_no_layer_config_cache_export_output_or_store_file(rb: Harness) -> None:
    """SECURITY.md, attack class "Secrets": `--secret` values never in layers, history or
    cache keys. Docker: the secret mount lets the build "access secret values, such as
    tokens or private keys, without baking them into the image" (reference,
    RUN --mount=type=secret)."""
    file_value, env_value = new_value(), new_value()
    needles = [file_value, env_value, file_value.hex().encode(), env_value.hex().encode()]
    src = secret_file(rb, file_value)
    ctx = secret_context(rb, "secret-all", (
        "FROM scratch\n"
        "COPY rootfs/ /\n"
        "RUN --mount=type=secret,id=tok --mount=type=secret,id=env,env=ENVTOK"
        " sha256sum /run/secrets/tok > /sum && test -n \"$ENVTOK\" && sleep 2"
        " && cat /run/secrets/tok && echo \"$ENVTOK\"\n"
        "RUN --mount=type=secret,id=tok,target=/root/.npmrc,mode=0600 test -s /root/.npmrc"
        " && echo used > /used\n"
    ))
    cache_dir = rb.workdir / "cache-export"
    layout = rb.workdir / "all.oci"
    found_while_running: list[str] = []
    done = threading.Event()

    def poll() -> None:  # the store while the steps run: work dirs, spec.json, the overlay
        while not done.is_set():
            found_while_running.extend(_files_holding(rb.store, needles))
            time.sleep(0.05)

    poller = threading.Thread(target=poll)
    poller.start()
    try:
        proc = build(rb, ctx, "--secret", f"id=tok,src={src}", "--secret", "id=env,env=ENVV",
                     "--cache-to", f"type=local,dest={cache_dir},mode=max",
                     "--output", f"oci:{layout}:v1", env={"ENVV": env_value.decode()})
    finally:
        done.set()
        poller.join()
    image = Image(rb, layout)
    assert image.text("sum").split()[0] == sha(file_value)
    assert image.text("used") == "used\n"
    assert found_while_running == []
    for where in (rb.store, layout, cache_dir):
        assert where.is_dir() and any(where.iterdir())
        assert _files_holding(where, needles) == [], where
    assert not any(n.decode() in proc.stdout + proc.stderr for n in needles)
    assert "****" in proc.stderr
    history = [entry for entry, _ in image.history]
    assert any("secret,id=tok" in h or "sha256sum /run/secrets/tok" in h for h in history)
    assert not any(n.decode() in str(image.config) for n in needles)


# -- ssh ---------------------------------------------------------------------------------------


def ssh_context(rb: Harness, name: str, dockerfile: str) -> Path:
    """The busybox base plus the host's ssh-add and the shared libraries it loads."""
    ssh_add = Path(require_tool("ssh-add"))
    extra: dict[str, str | bytes] = {"rootfs/usr/bin/ssh-add": ssh_add.read_bytes()}
    out = subprocess.run(["ldd", str(ssh_add)], capture_output=True, text=True, check=True)
    for line in out.stdout.splitlines():
        match = re.search(r"(/\S+)", line.split("=>")[-1])
        if match:
            lib = Path(match.group(1))
            extra[f"rootfs{lib}"] = lib.resolve().read_bytes()
    ctx = secret_context(rb, name, dockerfile, extra)
    for path in ctx.rglob("*"):
        if path.is_file() and not path.is_symlink():
            os.chmod(path, 0o755)
    return ctx


@pytest.fixture
def agent(rb: Harness) -> Iterator[tuple[Path, str, Path]]:
    """An ssh-agent of the build user holding a fresh ed25519 key: (socket, fingerprint,
    key file); killed after the test."""
    keygen = require_tool("ssh-keygen")
    key = rb.workdir / "id_test"
    rb.as_user([keygen, "-q", "-t", "ed25519", "-N", "", "-C", "rootbuild-test", "-f",
                str(key)])
    fingerprint = rb.as_user([keygen, "-lf", f"{key}.pub"]).stdout.split()[1]
    sock = rb.workdir / "agent.sock"
    proc = subprocess.Popen(rb.command([require_tool("ssh-agent"), "-D", "-a", str(sock)]),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(200):
            if sock.exists():
                break
            time.sleep(0.02)
        subprocess.run(rb.command([require_tool("ssh-add"), "-q", str(key)],
                                  {"SSH_AUTH_SOCK": str(sock)}), check=True,
                       capture_output=True)
        yield sock, fingerprint, key
    finally:
        proc.kill()
        proc.wait()


def _rootbuild_agents(rb: Harness) -> list[str]:
    out = subprocess.run(["ps", "-ww", "-o", "pid=,args=", "-u", str(rb.user.uid)],
                         capture_output=True, text=True).stdout
    return [line for line in out.splitlines() if "rootbuild-ssh-" in line]


def _agent_dirs(rb: Harness) -> set[Path]:
    return {p for p in Path("/tmp").glob("rootbuild-ssh-*") if p.owner() == rb.user.name}


def test_ssh_default_forwards_the_agent_of_the_builder(
    rb: Harness, agent: tuple[Path, str, Path]
) -> None:
    """Docker: "This mount type allows the build container to access SSH keys via SSH
    agents" "id: ID of SSH agent socket or key. Defaults to "default"." "target: SSH agent
    socket path. Defaults to /run/buildkit/ssh_agent.${N}." (reference,
    RUN --mount=type=ssh); `docker buildx build --ssh default` forwards $SSH_AUTH_SOCK."""
    sock, fingerprint, _ = agent
    ctx = ssh_context(rb, "ssh-default", (
        "FROM scratch\n"
        "COPY rootfs/ /\n"
        "RUN --mount=type=ssh ssh-add -l > /keys && echo \"$SSH_AUTH_SOCK\" > /sockpath\n"
        "RUN --mount=type=ssh,id=other true\n"
    ))
    layout, _ = build_to_layout(rb, ctx, "--ssh", "default", env={"SSH_AUTH_SOCK": str(sock)})
    image = Image(rb, layout)
    assert fingerprint in image.text("keys")
    assert image.text("sockpath") == "/run/buildkit/ssh_agent.0\n"
    names = {name for layer in image.layers for name in layer}
    assert not any(n.startswith("run/buildkit") for n in names), names


def test_secret_and_ssh_inside_a_tmpfs_mount_go_through_the_same_mounts(
    rb: Harness, agent: tuple[Path, str, Path]
) -> None:
    """Secret and ssh mounts are mounts like the others: targets inside an earlier
    ``type=tmpfs`` mount are made in it, parents first, and nothing reaches the layer.
    Docker: "target: Mount the secret to the specified path. Defaults to /run/secrets/ +
    id" (reference, RUN --mount=type=secret); "target: SSH agent socket path. Defaults to
    /run/buildkit/ssh_agent.${N}." (RUN --mount=type=ssh)
    https://docs.docker.com/reference/dockerfile/#run---mount"""
    sock, fingerprint, _ = agent
    value = new_value()
    src = secret_file(rb, value)
    ctx = ssh_context(rb, "ssh-secret-nested", (
        "FROM scratch\n"
        "COPY rootfs/ /\n"
        "RUN --mount=type=ssh --mount=type=secret,id=tok --mount=type=tmpfs,target=/run"
        " ssh-add -l > /keys && sha256sum /run/secrets/tok > /sum\n"
    ))
    layout, _ = build_to_layout(rb, ctx, "--ssh", "default", "--secret", f"id=tok,src={src}",
                                env={"SSH_AUTH_SOCK": str(sock)})
    image = Image(rb, layout)
    assert fingerprint in image.text("keys")
    assert image.text("sum").split()[0] == sha(value)
    names = {name for layer in image.layers for name in layer}
    assert not any(n == "run" or n.startswith("run/") for n in names), names


def test_ssh_key_file_runs_an_agent_for_the_build_only(
    rb: Harness, agent: tuple[Path, str, Path]
) -> None:
    """`docker buildx build --ssh default=KEYFILE`: the key is offered through an agent the
    builder runs for this build; nothing of it is left afterwards."""
    _, fingerprint, key = agent
    ctx = ssh_context(rb, "ssh-key", (
        "FROM scratch\n"
        "COPY rootfs/ /\n"
        "RUN --mount=type=ssh,id=deploy,target=/agent.sock,required"
        " SSH_AUTH_SOCK=/agent.sock ssh-add -l > /keys\n"
    ))
    before = _agent_dirs(rb)
    layout, _ = build_to_layout(rb, ctx, "--ssh", f"deploy={key}")
    assert fingerprint in Image(rb, layout).text("keys")
    assert _rootbuild_agents(rb) == []
    failing = ssh_context(rb, "ssh-key-fails", "FROM scratch\nCOPY rootfs/ /\n"
                                                "RUN --mount=type=ssh,id=deploy exit 3\n")
    assert build(rb, failing, "--ssh", f"deploy={key}", check=False).returncode != 0
    assert _rootbuild_agents(rb) == []
    assert _agent_dirs(rb) == before
    assert key.read_bytes() not in b"".join(
        data for p in rb.store.rglob("*") if p.is_file() for data in _contents(p)
    )


def test_required_ssh_missing_fails_at_plan_time(rb: Harness) -> None:
    ctx = secret_context(rb, "ssh-required", (
        "FROM scratch\n"
        "COPY rootfs/ /\n"
        "RUN --mount=type=ssh,required true\n"
    ))
    build(rb, secret_context(rb, "warm", "FROM scratch\nCOPY rootfs/ /\n"))
    before = rb.store_snapshot()
    proc = build(rb, ctx, check=False)
    assert proc.returncode != 0
    assert error_lines(proc.stderr) == [
        'rootbuild: Dockerfile:3: RUN --mount=type=ssh: no SSH key "default" forwarded '
        "from the client"
    ], proc.stderr
    assert rb.store_snapshot() == before


def test_bad_secret_flag_is_a_usage_error(rb: Harness) -> None:
    ctx = secret_context(rb, "secret-badflag", "FROM scratch\nCOPY rootfs/ /\n")
    proc = build(rb, ctx, "--secret", "id=x,src=/nonexistent/file", check=False)
    assert proc.returncode == 2
    assert error_lines(proc.stderr) == [
        "rootbuild: --secret id=x: read /nonexistent/file: No such file or directory"
    ], proc.stderr


def test_a_killed_builder_leaves_no_agent(rb: Harness, agent: tuple[Path, str, Path]) -> None:
    """SIGKILL to the builder mid-step: its ssh-agent (for ``--ssh ID=KEYFILE``) exits on
    its own (its command reads a pipe only the builder held), as do the step's sandbox and
    FUSE server."""
    sock, _, key = agent
    seconds = unique_seconds()
    dirs = _agent_dirs(rb)
    ctx = ssh_context(rb, "ssh-killed", f"FROM scratch\nCOPY rootfs/ /\n"
                                        f"RUN --mount=type=ssh sleep {seconds}\n")
    proc = build_until_sleeping(rb, ctx, seconds, "--ssh", f"default={key}")
    try:
        assert len(_rootbuild_agents(rb)) == 1
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    def left() -> list[str]:  # but the test's own agent, which the fixture stops
        return [line for line in leftovers(rb, [f"sleep {seconds}"]) if str(sock) not in line]

    deadline = time.monotonic() + 30  # ssh-agent looks for its command every 10 s
    while (_rootbuild_agents(rb) or left()) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert _rootbuild_agents(rb) == []
    assert left() == []
    for stale in _agent_dirs(rb) - dirs:  # a killed builder cannot remove its agent's dir
        shutil.rmtree(stale)


def test_secret_owner_outside_a_single_mapping_is_explained(rb_nosub: Harness) -> None:
    """Without a subordinate id range only root is mapped: a secret file owned by uid 1000
    cannot be made, and the error says so (uid 0 still works)."""
    rb = rb_nosub
    src = secret_file(rb, new_value())
    ok = secret_context(rb, "nosub-ok", (
        "FROM scratch\nCOPY rootfs/ /\n"
        "RUN --mount=type=secret,id=tok stat -c '%u %a' /run/secrets/tok > /stat\n"
    ))
    layout, _ = build_to_layout(rb, ok, "--secret", f"id=tok,src={src}")
    assert Image(rb, layout).text("stat") == "0 400\n"
    bad = secret_context(rb, "nosub-bad", (
        "FROM scratch\nCOPY rootfs/ /\n"
        "RUN --mount=type=secret,id=tok,uid=1000 true\n"
    ))
    proc = build(rb, bad, "--secret", f"id=tok,src={src}", check=False)
    assert proc.returncode != 0
    lines = error_lines(proc.stderr)
    assert len(lines) == 1 and lines[0].startswith(
        "rootbuild: Dockerfile:3: RUN: mount secret at /run/secrets/tok: uid 1000 / gid 0 is "
        "not mapped in the build's user namespace"
    ), proc.stderr
    assert "Traceback" not in proc.stderr
