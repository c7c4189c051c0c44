"""The worker's job limits (``WorkerConfig`` -> ``job_options`` -> the step limits, and the
``worker`` flags that set them) and the pure part of the exit stop that counts a step's
processes at its pid 1's exit (sandbox/exit_stop.py ``classify_stop``)."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from rootbuild.cli import build_parser
from rootbuild.engine.disk_limit import UNTRUSTED_DISK_LIMIT, step_limits
from rootbuild.engine.options import BuildOptions
from rootbuild.errors import UsageError
from rootbuild.sandbox.exit_stop import PTRACE_EVENT_EXIT, PTRACE_EVENT_STOP, classify_stop
from rootbuild.sandbox.limits import (
    UNTRUSTED_LOG_BYTES,
    UNTRUSTED_MEMORY,
    UNTRUSTED_PIDS,
    StepLimits,
)
from rootbuild.service import commands
from rootbuild.service.worker import JobSpec, WorkerConfig, job_options

DIGEST = "sha256:" + "a" * 64


def _options(tmp_path: Path, config: WorkerConfig) -> BuildOptions:
    spec = JobSpec(DIGEST, "FROM scratch\n")
    return job_options(spec, tmp_path / "ctx", tmp_path / "Dockerfile", config,
                       tmp_path / "anon.json")


def test_a_job_gets_the_untrusted_default_limits(tmp_path: Path) -> None:
    options = _options(tmp_path, WorkerConfig(store=tmp_path))
    assert options.step_limits() == StepLimits(UNTRUSTED_PIDS, UNTRUSTED_MEMORY,
                                               UNTRUSTED_LOG_BYTES)
    assert step_limits(options.disk_limit, options.inode_limit, options.untrusted)[0] == \
        UNTRUSTED_DISK_LIMIT


def test_a_job_gets_the_workers_limits(tmp_path: Path) -> None:
    config = WorkerConfig(store=tmp_path, pids_limit=30, memory_limit=64 << 20,
                          disk_limit=8 << 20, log_limit=4096)
    options = _options(tmp_path, config)
    options.validate()
    assert options.step_limits() == StepLimits(30, 64 << 20, 4096)
    assert step_limits(options.disk_limit, options.inode_limit, True)[0] == 8 << 20


def test_worker_flags_parse_sizes_and_refuse_bad_ones() -> None:
    args = build_parser().parse_args(["worker", "--pids-limit", "30", "--memory", "64m",
                                      "--disk-limit", "8MB", "--log-limit", "4k"])
    assert (args.pids_limit, args.memory, args.disk_limit, args.log_limit) == (
        30, "64m", "8MB", "4k")
    assert commands._worker_size("--memory", "64m") == 64 << 20
    assert commands._worker_size("--disk-limit", "8MB") == 8 << 20
    assert commands._worker_size("--log-limit", None) is None
    with pytest.raises(UsageError, match=r"^worker: invalid --memory '0'"):
        commands._worker_size("--memory", "0")
    with pytest.raises(UsageError, match="worker: --pids-limit must be positive"):
        commands._cmd_worker(build_parser().parse_args(
            ["worker", "--redis", "unix:///nowhere", "--pids-limit", "0"]))


def test_exit_stop_reads_the_stops_of_pid_1() -> None:
    # waitid's si_status of a ptrace stop: the stop signal, the ptrace event in bits 8-15
    assert classify_stop(signal.SIGTRAP | PTRACE_EVENT_EXIT << 8) == ("exit", 0)
    assert classify_stop(signal.SIGSTOP | PTRACE_EVENT_STOP << 8) == ("event", 0)
    assert classify_stop(signal.SIGTRAP | PTRACE_EVENT_STOP << 8) == ("event", 0)
    # signal-delivery stops resume with their own signal (the kernel then drops what
    # pid 1 of a namespace does not handle, as untraced)
    assert classify_stop(signal.SIGCHLD) == ("signal", signal.SIGCHLD)
    assert classify_stop(signal.SIGTERM) == ("signal", signal.SIGTERM)
    assert classify_stop(signal.SIGTRAP) == ("signal", signal.SIGTRAP)
