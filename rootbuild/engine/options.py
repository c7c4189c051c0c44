"""What one build is asked to do (``BuildOptions``) and what it gives back (``BuildResult``).

Rules:
- Options are a frozen value made once (by the CLI, the worker or a test) and never
  changed; ``validate()`` refuses combinations no build may run with, whoever made them,
  so the checks do not live only in the command line.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from rootbuild.cache.spec import CacheSpec
from rootbuild.engine.layers import Compression
from rootbuild.engine.named_contexts import NamedContext, check_contexts
from rootbuild.engine.replay import ReplayFacts
from rootbuild.engine.run_flags import RunFlags, check_run_flags, sandbox_hostname
from rootbuild.engine.secrets import SshSource
from rootbuild.errors import UsageError
from rootbuild.image.oci import StoredImage
from rootbuild.image.refs import OutputRef
from rootbuild.platform import Platform, host_platform
from rootbuild.registry.transport import TransportOptions
from rootbuild.sandbox.limits import (
    UNTRUSTED_LOG_BYTES,
    UNTRUSTED_MEMORY,
    UNTRUSTED_PIDS,
    StepLimits,
)
from rootbuild.sandbox.rlimits import Ulimit
from rootbuild.sandbox.spec import NETWORK_MODES, PROC_MODES
from rootbuild.stages.checks import CheckWarning

# --snapshotter; snapshot/registry.py CHOICES (a unit test holds them equal; not imported
# here, so that parsing options loads no snapshotter)
SNAPSHOTTER_CHOICES = ("auto", "fuse", "overlay")


@dataclass(frozen=True)
class BuildOptions:
    context_dir: Path
    dockerfile: str | None = None
    dockerfile_text: str | None = None  # `-f -`: the Dockerfile read from stdin
    tags: tuple[str, ...] = ()
    build_args: Mapping[str, str] = field(default_factory=dict)
    target: str | None = None
    labels: Mapping[str, str] = field(default_factory=dict)
    no_cache: bool = False  # no cache lookups (steps still recorded), as BuildKit
    no_cache_filter: tuple[str, ...] = ()  # stages whose steps are never looked up
    cache_from: tuple[CacheSpec, ...] = ()
    cache_to: tuple[CacheSpec, ...] = ()
    outputs: tuple[OutputRef, ...] = ()
    jobs: int | None = None  # stages at once; None: every ready stage (BuildKit's default)
    compression: Compression = "gzip"
    target_platform: Platform = field(default_factory=host_platform)
    source_date_epoch: int | None = None
    # RUN's network unless RUN --network says otherwise; "": host, or for untrusted builds
    # isolated (none where slirp4netns cannot run): engine/network.py
    network: str = ""
    proc: str = "fresh"  # "host-bind": the explicit, weaker /proc fallback
    untrusted: bool = False  # refuse every weakening (host-bind /proc, ...)
    step_timeout: float | None = None  # seconds a RUN step may take
    transport: TransportOptions = field(default_factory=TransportOptions)  # registries
    push: bool = False  # push every -t name after the build
    docker_format: bool = False  # push with Docker schema 2 media types
    build_contexts: tuple[NamedContext, ...] = ()  # --build-context NAME=VALUE
    # RUN --mount=type=secret values by id (in memory only), --ssh sources, --allow
    secrets: Mapping[str, bytes] = field(default_factory=dict, repr=False)
    ssh: tuple[SshSource, ...] = ()
    allow: frozenset[str] = frozenset()
    # RUN's sandbox (engine/run_flags.py): --add-host, --shm-size bytes, --ulimit;
    # --pull: look every registry base up again instead of using the stored copy
    add_hosts: tuple[tuple[str, str], ...] = ()
    shm_size: int | None = None
    ulimits: tuple[Ulimit, ...] = ()
    pull: bool = False
    # --disk-limit bytes, --inode-limit files the RUN steps may write (engine/disk_limit.py)
    disk_limit: int | None = None
    inode_limit: int | None = None
    # per-step limits (sandbox/limits.py; None: unlimited, or the default with --untrusted)
    # and the build slot whose subordinate ids RUN's root maps to (idmap.slot_plan)
    pids_limit: int | None = None
    memory_limit: int | None = None
    log_limit: int | None = None
    slot: int | None = None
    snapshotter: str = "auto"  # --snapshotter: auto, fuse, overlay (snapshot/registry.py)

    def step_limits(self) -> StepLimits:
        """The limits each RUN step gets: the flags', else --untrusted's defaults."""
        def pick(value: int | None, default: int) -> int | None:
            return value if value is not None or not self.untrusted else default

        return StepLimits(pick(self.pids_limit, UNTRUSTED_PIDS),
                          pick(self.memory_limit, UNTRUSTED_MEMORY),
                          pick(self.log_limit, UNTRUSTED_LOG_BYTES))

    def run_flags(self) -> RunFlags:
        return RunFlags(sandbox_hostname(self.build_args), self.add_hosts, self.shm_size,
                        self.ulimits)

    def validate(self) -> None:
        """Refuse what no build may run with (``UsageError``, exit code 2)."""
        if self.jobs is not None and self.jobs < 1:
            raise UsageError(f"build: --jobs must be at least 1, not {self.jobs}")
        if self.network not in ("", *NETWORK_MODES):
            raise UsageError(f"build: unknown --network {self.network!r}")
        if self.network == "host" and self.untrusted:
            raise UsageError(
                "build: --network=host is refused with --untrusted: RUN would reach the "
                "host's loopback, its other addresses and the cloud metadata service; "
                "use --network=isolated (public egress only) or none"
            )
        if self.proc not in PROC_MODES:
            raise UsageError(f"build: unknown --proc {self.proc!r}")
        if self.snapshotter not in SNAPSHOTTER_CHOICES:
            raise UsageError(f"build: unknown --snapshotter {self.snapshotter!r}")
        if self.push and not self.tags:
            raise UsageError("build: --push needs at least one -t NAME to push to")
        if self.proc == "host-bind" and self.untrusted:
            raise UsageError(
                "build: --proc=host-bind is refused with --untrusted: it lets RUN see and "
                "signal the builder's processes"
            )
        if self.step_timeout is not None and self.step_timeout <= 0:
            raise UsageError(f"build: --timeout must be positive, not {self.step_timeout:g}")
        for flag, value in (("--pids-limit", self.pids_limit), ("--memory", self.memory_limit),
                            ("--log-limit", self.log_limit)):
            if value is not None and value <= 0:
                raise UsageError(f"build: {flag} must be positive, not {value}")
        if self.slot is not None and self.slot < 0:
            raise UsageError(f"build: --slot must be 0 or more, not {self.slot}")
        check_contexts(self.build_contexts)
        check_run_flags(self.run_flags())


@dataclass(frozen=True)
class BuildResult:
    image_id: str  # the config digest, as `docker build` reports it
    image: StoredImage
    pushed: tuple[tuple[str, str], ...] = ()  # (reference, manifest digest) per push
    checks: tuple[CheckWarning, ...] = ()  # build checks that fired (engine/lint.py)
    replay: ReplayFacts | None = None  # set when the build may be replayed (engine/replay.py)
