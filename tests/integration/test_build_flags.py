"""`docker buildx build` flags for RUN's sandbox and the build's result, through the real
`rootbuild` executable as the unprivileged build user (busybox base, as test_build_run.py):
``--add-host``, ``--shm-size``, ``--ulimit``, the ``BUILDKIT_SANDBOX_HOSTNAME`` build arg,
``--metadata-file`` and ``--pull`` (against the test registry).

Each flag: what a RUN step sees (read back from the exported image), and its bad values:
a usage error (exit 2, one ``rootbuild:`` line, no traceback) with the store untouched.
Reference: https://docs.docker.com/reference/cli/docker/buildx/build/
"""

from __future__ import annotations

import base64
import json
import resource
import uuid
from pathlib import Path

import pytest
from conftest import Harness
from registry_fixtures import (  # noqa: F401 (pytest fixtures)
    Registry,
    registry_base_fixture,
    registry_fixture,
)
from test_build_run import Image, assert_nothing_left, build, build_to_layout, busybox_context
from test_registry import push_tiny, skopeo_raw

pytestmark = pytest.mark.integration

DOCS = "https://docs.docker.com/reference/cli/docker/buildx/build/"


def usage_error(rb: Harness, ctx: Path, *args: str) -> str:
    """A build refused before it starts: exit 2, one line, the store as it was."""
    before = rb.store_snapshot()
    proc = build(rb, ctx, *args, check=False)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2, proc.stderr
    assert len(lines) == 1 and lines[0].startswith("rootbuild: "), proc.stderr
    assert "Traceback" not in proc.stderr
    assert rb.store_snapshot() == before
    return lines[0]


def run_and_read(rb: Harness, name: str, script: str, *args: str) -> Image:
    ctx = busybox_context(rb, f"{name}-{uuid.uuid4().hex[:8]}",
                          f"FROM scratch\nCOPY rootfs/ /\nRUN {script}\n")
    layout, _ = build_to_layout(rb, ctx, *args)
    return Image(rb, layout)


def layer_names(image: Image) -> set[str]:
    return {name for members in image.layers for name in members}


# -- --add-host ----------------------------------------------------------------------------------


def test_add_host_entries_reach_runs_etc_hosts_and_never_the_layer(rb: Harness) -> None:
    """Docs (--add-host): "You can add other hosts into a build container's /etc/hosts
    file by using one or more --add-host flags." ... "--add-host my_hostname=8.8.8.8
    --add-host my_hostname_v6=2001:4860:4860::8888" ... "IPv6 addresses ... can be
    enclosed in square brackets" (docker/cli ValidateExtraHost keeps the address as given).
    """
    image = run_and_read(
        rb, "hosts", "cat /etc/hosts > /hosts.txt",
        "--add-host", "one.example:10.1.2.3", "--add-host", "two.example=192.0.2.7",
        "--add-host", "v6.example=[2001:db8::1]", "--add-host", "c.example:10.0.0.1,d:10.0.0.2",
    )
    lines = image.text("hosts.txt").splitlines()
    assert lines[0] == "127.0.0.1\tlocalhost buildkitsandbox"
    assert lines[-5:] == ["10.1.2.3\tone.example", "192.0.2.7\ttwo.example",
                          "2001:db8::1\tv6.example", "10.0.0.1\tc.example", "10.0.0.2\td"]
    assert "etc/hosts" not in layer_names(image)
    # the entries are part of the step's cache key: without them the step runs again
    again = run_and_read(rb, "hosts", "cat /etc/hosts > /hosts.txt")
    assert "10.1.2.3" not in again.text("hosts.txt")
    assert_nothing_left(rb, [])


@pytest.mark.parametrize(("value", "needle"), [
    ("nohost", "bad format for --add-host"),
    (":10.0.0.1", "bad format for --add-host"),
    ("h:not-an-ip", "invalid IP address in --add-host"),
    ("h=999.1.1.1", "invalid IP address in --add-host"),
    ("h:host-gateway", "no gateway to the host"),
])
def test_add_host_bad_values_are_usage_errors(rb: Harness, value: str, needle: str) -> None:
    """Docs (--add-host): the format is ``host:ip`` (or ``host=ip``); the special
    ``host-gateway`` value "resolves to the host's gateway IP", which a rootless sandbox
    does not have (RUN shares the builder's network): refused, saying so."""
    ctx = busybox_context(rb, "badhost", "FROM scratch\nCOPY rootfs/ /\nRUN true\n")
    assert needle in usage_error(rb, ctx, "--add-host", value)


# -- --shm-size ----------------------------------------------------------------------------------


def _shm_line(image: Image) -> str:
    return next(line for line in image.text("mounts").splitlines() if " /dev/shm " in line)


def test_shm_size_sets_runs_dev_shm(rb: Harness) -> None:
    """Docs (--shm-size): "Sets the size of the shared memory allocated for build
    containers when using RUN instructions. The format is <number><unit>. number must be
    greater than 0. Unit is optional and can be b (bytes), k (kilobytes), m (megabytes), or
    g (gigabytes)." Without it: Docker's 64 MiB."""
    script = "grep ' /dev/shm ' /proc/mounts > /mounts"
    assert "size=131072k" in _shm_line(run_and_read(rb, "shm", script, "--shm-size", "128m"))
    assert "size=65536k" in _shm_line(run_and_read(rb, "shm", script))
    assert_nothing_left(rb, [])


@pytest.mark.parametrize("value", ["0", "abc", "-1", "12q", ""])
def test_shm_size_bad_values_are_usage_errors(rb: Harness, value: str) -> None:
    """Docs (--shm-size): "number must be greater than 0"."""
    ctx = busybox_context(rb, "badshm", "FROM scratch\nCOPY rootfs/ /\nRUN true\n")
    assert "--shm-size" in usage_error(rb, ctx, f"--shm-size={value}")


# -- --ulimit ------------------------------------------------------------------------------------


def _limits(image: Image) -> dict[str, list[str]]:
    """/proc/self/limits as the step saw it: {"Max open files": [soft, hard], ...}."""
    out: dict[str, list[str]] = {}
    for line in image.text("limits").splitlines()[1:]:
        name, soft, hard = line[:26].strip(), *line[26:].split()[:2]
        out[name] = [soft, hard]
    return out


def test_ulimit_sets_runs_resource_limits(rb: Harness) -> None:
    """Docs (--ulimit): "--ulimit overrides the default resource limits for build's
    containers when using RUN instructions and are specified with both a soft and hard
    limit as such: <type>=<soft limit>[:<hard limit>]" ... "If you don't provide a hard
    limit, the soft limit is used for both values." """
    limits = _limits(run_and_read(
        rb, "ulimit", "cat /proc/self/limits > /limits",
        "--ulimit", "nofile=512:1024", "--ulimit", "core=0", "--ulimit", "fsize=1000000",
        "--ulimit", "stack=-1:-1",
    ))
    assert limits["Max open files"] == ["512", "1024"]
    assert limits["Max core file size"] == ["0", "0"]
    assert limits["Max file size"] == ["1000000", "1000000"]
    assert limits["Max stack size"] == ["unlimited", "unlimited"]
    # "If no ulimits are set, they're inherited" (the builder's own)
    plain = _limits(run_and_read(rb, "ulimit", "cat /proc/self/limits > /limits"))
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    assert plain["Max open files"] == [str(soft), str(hard)]
    assert_nothing_left(rb, [])


def test_ulimit_step_reaches_the_limit(rb: Harness) -> None:
    """The limit binds the step's processes: a file larger than fsize fails (SIGXFSZ)."""
    ctx = busybox_context(rb, "fsize", (
        "FROM scratch\nCOPY rootfs/ /\nRUN printf 0123456789 > /big\n"
    ))
    proc = build(rb, ctx, "--ulimit", "fsize=4", check=False)
    assert proc.returncode == 1, proc.stderr
    assert "did not complete successfully" in proc.stderr
    assert_nothing_left(rb, [])


@pytest.mark.parametrize(("value", "needle"), [
    ("nofile", "invalid --ulimit argument"),
    ("bogus=1", "invalid --ulimit type"),
    ("nofile=2:1", "soft limit must be less than or equal to the hard limit"),
    ("nofile=1:2:3", "too many limit values"),
    ("nofile=x", "must be integers"),
    ("nofile=-1:10", "soft limit must be less than or equal"),
])
def test_ulimit_bad_values_are_usage_errors(rb: Harness, value: str, needle: str) -> None:
    """Docs (--ulimit): the format is <type>=<soft limit>[:<hard limit>] (go-units
    ParseUlimit's errors)."""
    ctx = busybox_context(rb, "badulimit", "FROM scratch\nCOPY rootfs/ /\nRUN true\n")
    assert needle in usage_error(rb, ctx, "--ulimit", value)


def test_ulimit_above_the_builders_hard_limit_is_refused(rb: Harness) -> None:
    """A user cannot raise a hard limit: asking for more than the builder has is refused
    before the build, naming the builder's limit."""
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    ctx = busybox_context(rb, "hardulimit", "FROM scratch\nCOPY rootfs/ /\nRUN true\n")
    line = usage_error(rb, ctx, "--ulimit", f"nofile=1024:{hard + 1}")
    assert f"hard limit {hard}" in line and "cannot raise" in line


# -- BUILDKIT_SANDBOX_HOSTNAME -------------------------------------------------------------------


def test_sandbox_hostname_build_arg_names_run(rb: Harness) -> None:
    """Dockerfile reference, "BuildKit built-in build args": "BUILDKIT_SANDBOX_HOSTNAME |
    String | Set the hostname (default buildkitsandbox)"
    (https://docs.docker.com/reference/dockerfile/#buildkit-built-in-build-args)."""
    script = ("cat /proc/sys/kernel/hostname /etc/hostname > /names "
              "&& grep localhost /etc/hosts >> /names")
    named = run_and_read(rb, "hostname", script,
                         "--build-arg", "BUILDKIT_SANDBOX_HOSTNAME=builder-7")
    assert named.text("names").splitlines() == [
        "builder-7", "builder-7", "127.0.0.1\tlocalhost builder-7",
        "::1\tlocalhost ip6-localhost ip6-loopback",
    ]
    plain = run_and_read(rb, "hostname", script)
    assert plain.text("names").splitlines()[:2] == ["buildkitsandbox", "buildkitsandbox"]
    assert_nothing_left(rb, [])


@pytest.mark.parametrize("value", ["two words", "x" * 65, "a/b"])
def test_sandbox_hostname_bad_values_are_usage_errors(rb: Harness, value: str) -> None:
    ctx = busybox_context(rb, "badname", "FROM scratch\nCOPY rootfs/ /\nRUN true\n")
    line = usage_error(rb, ctx, "--build-arg", f"BUILDKIT_SANDBOX_HOSTNAME={value}")
    assert "BUILDKIT_SANDBOX_HOSTNAME" in line and "not a valid hostname" in line


# -- --metadata-file -----------------------------------------------------------------------------


def test_metadata_file_holds_buildx_keys(rb: Harness) -> None:
    """Docs (--metadata-file): "To output build metadata such as the image digest, pass
    the --metadata-file flag. The metadata will be written as a JSON object to the
    specified file." Its example holds ``containerimage.config.digest``,
    ``containerimage.descriptor``, ``containerimage.digest`` and ``buildx.build.warnings``;
    BuildKit's image exporter adds ``image.name``."""
    ctx = busybox_context(rb, "meta", "FROM scratch as base\nCOPY rootfs/ /\nRUN true\n")
    meta = rb.workdir / "meta.json"
    build(rb, ctx, "-t", "meta:1", "-t", "meta:latest", "--metadata-file", str(meta))
    doc = json.loads(meta.read_text())
    stored = json.loads(rb.run("inspect", "meta:1").stdout)
    assert doc["containerimage.config.digest"] == stored["Id"]
    assert doc["containerimage.digest"] == stored["ManifestDigest"]
    assert doc["containerimage.descriptor"]["digest"] == stored["ManifestDigest"]
    assert doc["containerimage.descriptor"]["mediaType"] == stored["Manifest"]["mediaType"]
    assert doc["image.name"] == "meta:1,meta:latest"
    [warning] = doc["buildx.build.warnings"]
    assert base64.b64decode(warning["short"]).decode() == (
        "FromAsCasing: 'as' and 'FROM' keywords' casing do not match (line 1)"
    )
    assert warning["url"].endswith("/from-as-casing/")
    # untagged: no image.name, nor warnings when none fired
    clean = busybox_context(rb, "meta2", "FROM scratch\nCOPY rootfs/ /\n")
    build(rb, clean, "--metadata-file", str(meta))
    assert set(json.loads(meta.read_text())) == {
        "containerimage.config.digest", "containerimage.digest", "containerimage.descriptor",
    }


def test_metadata_file_in_a_missing_directory_fails_clearly(rb: Harness) -> None:
    """Docs (--metadata-file): "The directory of the specified file must already exist and
    be writable." """
    ctx = busybox_context(rb, "meta3", "FROM scratch\nCOPY rootfs/ /\n")
    proc = build(rb, ctx, "--metadata-file", str(rb.workdir / "nodir" / "m.json"),
                 check=False)
    lines = [line for line in proc.stderr.splitlines() if line.startswith("rootbuild:")]
    assert proc.returncode == 1 and len(lines) == 1 and "Traceback" not in proc.stderr
    assert "write metadata-file" in lines[0] and "No such file or directory" in lines[0]


def test_metadata_file_after_push_names_the_pushed_manifest(rb: Harness,
                                                            registry: Registry) -> None:
    """Docs (--metadata-file): ``containerimage.digest`` is the image's manifest digest;
    after ``--push`` it is the digest the registry holds, and ``image.name`` the name."""
    ref = registry.ref(f"metapush-{uuid.uuid4().hex[:8]}:1")
    ctx = rb.make_context("metapush", {"Dockerfile": "FROM scratch\nCOPY a /a\n", "a": "a\n"})
    meta = rb.workdir / "push.json"
    build(rb, ctx, "--tls-verify=false", "-t", ref, "--push", "--metadata-file", str(meta))
    doc = json.loads(meta.read_text())
    _manifest, digest = skopeo_raw(rb, ref, "--tls-verify=false")
    assert doc["containerimage.digest"] == digest
    assert doc["containerimage.descriptor"]["digest"] == digest
    assert doc["image.name"] == ref


# -- --pull --------------------------------------------------------------------------------------


def _base_layer(rb: Harness, name: str) -> str:
    return str(json.loads(rb.run("inspect", name).stdout)["Manifest"]["layers"][0]["digest"])


def test_pull_looks_the_base_up_again(rb: Harness, registry: Registry) -> None:
    """Docs (--pull): "Always attempt to pull all referenced images". Without it a stored
    base is used as it is (as ``docker build``); with it a newer digest under the same tag
    is pulled, and the same digest again reuses the store (no blob is fetched twice)."""
    repo = f"pullbase-{uuid.uuid4().hex[:8]}"
    ref = registry.ref(f"{repo}:v")
    v1 = push_tiny(rb, registry, f"{repo}:v")
    ctx = rb.make_context("pullctx", {"Dockerfile": f"FROM {ref}\nCOPY a /a\n", "a": "a\n"})
    tls = "--tls-verify=false"

    build(rb, ctx, tls, "-t", "out:1")
    assert _base_layer(rb, "out:1") == v1["layer"]
    v2 = push_tiny(rb, registry, f"{repo}:v")
    assert v2["manifest"] != v1["manifest"]

    build(rb, ctx, tls, "-t", "out:2")  # the stored copy
    assert _base_layer(rb, "out:2") == v1["layer"]

    meta = rb.workdir / "pull.json"
    build(rb, ctx, tls, "--pull", "-t", "out:3", "--metadata-file", str(meta))
    assert _base_layer(rb, "out:3") == v2["layer"]
    doc = json.loads(meta.read_text())
    assert doc["image.name"] == "out:3"
    assert doc["containerimage.config.digest"] == json.loads(
        rb.run("inspect", "out:3").stdout)["Id"]
    assert json.loads(rb.run("inspect", ref).stdout)["ManifestDigest"] == v2["manifest"]

    gets = registry.blob_gets(repo)
    build(rb, ctx, tls, "--pull", "-t", "out:4")  # same digest: nothing downloaded again
    assert _base_layer(rb, "out:4") == v2["layer"]
    assert registry.blob_gets(repo) == gets
    assert_nothing_left(rb, [])


def test_pull_of_a_base_only_in_the_store_fails_clearly(rb: Harness,
                                                        registry: Registry) -> None:
    """A registry name built locally and never pushed: without --pull the stored copy is
    used; with --pull the registry is asked and its answer (no such manifest) fails the
    build in one line naming the reference, with the store as it was."""
    ref = registry.ref(f"localonly-{uuid.uuid4().hex[:8]}:1")
    base = rb.make_context("localbase", {"Dockerfile": "FROM scratch\nCOPY a /a\n",
                                         "a": "a\n"})
    build(rb, base, "-t", ref)
    ctx = rb.make_context("pullctx2", {"Dockerfile": f"FROM {ref}\nCOPY b /b\n",
                                       "b": "b\n"})
    build(rb, ctx, "--tls-verify=false", "-t", "fromlocal:1")
    before = rb.store_snapshot()
    proc = build(rb, ctx, "--tls-verify=false", "--pull", "-t", "fromlocal:2", check=False)
    lines = [line for line in proc.stderr.splitlines() if line.startswith("rootbuild:")]
    assert proc.returncode != 0 and len(lines) == 1 and "Traceback" not in proc.stderr
    assert ref in lines[0] and "--pull" in lines[0], lines[0]
    assert rb.store_snapshot() == before
    assert_nothing_left(rb, [])
