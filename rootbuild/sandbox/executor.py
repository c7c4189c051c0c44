"""One build's RUN executor: the state its steps share, and each step's preparation.

Job: ``SandboxExecutor(idmap, placement=...)``, made once per build with the id mapping the
build read once; ``await executor.run(spec, on_output)`` prepares the step's scratch (the
sandbox's /etc files, as binds), runs it (``run.run_init``, an init forked by the build's
zygote) and returns its ``StepResult``; ``await executor.aclose()`` when the build ends.

Rules:
- No process-wide state: the CPU slots of the steps running at once and the once-only
  id-mapping warning belong to the executor, so two builds in one process neither share nor
  lose them. The warning goes with the first step's result; a step that ends in an
  exception instead hands it on to the next step.
- The sandbox's own /etc files (hosts, resolv.conf, hostname) are written in the step's
  scratch and come first in the step's binds: read-only, and not required (an image that
  makes one impossible gets a warning and the step runs without it).
- Steps running at the same time start on different CPUs where there are several
  (``placement.CpuSlots``; the init pins the step and its FUSE server there), unless
  placement is off: ``ROOTBUILD_CPU_PLACEMENT=off`` in the builder's environment when the
  executor is made, or ``placement=False``.
- A nonzero exit status is returned, not raised: the caller names the step and its line.
  ``SandboxError`` means the sandbox could not be set up; ``StepError`` means the step's
  own request was impossible. Either comes out bare, never inside an exception group.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Iterable

from rootbuild.errors import SandboxError
from rootbuild.runtrace import mark
from rootbuild.sandbox import dns_proxy
from rootbuild.sandbox.idmap import IdMapPlan
from rootbuild.sandbox.placement import CpuSlots
from rootbuild.sandbox.run import run_init
from rootbuild.sandbox.spec import Bind, InitRequest, StepResult, StepSpec
from rootbuild.sandbox.zygote import EarlyZygote, Zygote, zygote_env

PLACEMENT_ENV = "ROOTBUILD_CPU_PLACEMENT"  # "off": steps start on every CPU
#: the files the sandbox provides in /etc, bound read-only over the image's
ETC_FILES = ("hosts", "resolv.conf", "hostname")
HOST_WARNING = (
    "warning: --proc=host-bind: RUN sees the builder's /proc (read-only) and runs in the "
    "builder's pid namespace: it can see and signal the builder's processes"
)


def placement_from_env() -> bool:
    return os.environ.get(PLACEMENT_ENV, "") != "off"


def _hosts(hostname: str, extra: tuple[tuple[str, str], ...] = ()) -> str:
    """BuildKit's hosts file; ``--add-host`` entries after it, one ``IP<TAB>HOST`` line
    each (as Docker writes them), in the builder's scratch only: never in a layer."""
    return (
        f"127.0.0.1\tlocalhost {hostname}\n"
        "::1\tlocalhost ip6-localhost ip6-loopback\n"
    ) + "".join(f"{ip}\t{host}\n" for host, ip in extra)


def _host_resolv_conf() -> str:
    try:
        with open("/etc/resolv.conf", encoding="utf-8", errors="replace") as f:
            return f.read(64 * 1024)
    except OSError:
        return ""


def dns_upstreams(network: str) -> tuple[dns_proxy.Upstream, ...]:
    """The resolvers an isolated step's DNS forwarder relays to: the host's, or, for the
    integration tests only, those ``ROOTBUILD_TEST_DNS_UPSTREAMS`` names (dns_proxy.py)."""
    if network != "isolated":
        return ()
    override = os.environ.get(dns_proxy.TEST_UPSTREAMS_ENV, "")
    if override:
        parsed = dns_proxy.parse_upstreams(override)
        if isinstance(parsed, str):
            raise SandboxError(parsed)
        return parsed
    return dns_proxy.upstreams_of(_host_resolv_conf())


def _resolv_conf(network: str, upstreams: tuple[dns_proxy.Upstream, ...] = ()) -> str:
    if network == "none":
        return ""
    text = _host_resolv_conf()
    if network == "isolated":  # the step's own forwarder on 127.0.0.11 (sandbox/dns_relay.py)
        return dns_proxy.step_resolv_conf(text) if upstreams else ""
    return text


def prepare_scratch(spec: StepSpec) -> StepSpec:
    """Create the step's scratch with the /etc files it gets; returns the spec with their
    binds put first."""
    upstreams = dns_upstreams(spec.network)
    try:
        spec.scratch.mkdir(mode=0o700)
        etc = spec.scratch / "etc"
        etc.mkdir()
        contents = {"hosts": _hosts(spec.hostname, spec.extra_hosts),
                    "resolv.conf": _resolv_conf(spec.network, upstreams),
                    "hostname": spec.hostname + "\n"}
        for name in ETC_FILES:
            (etc / name).write_text(contents[name])
            os.chmod(etc / name, 0o644)
        os.chmod(spec.scratch, 0o711)  # the step's users must reach the bound files
    except OSError as exc:
        raise SandboxError(f"prepare RUN sandbox in {spec.scratch}: {exc.strerror}") from exc
    etc_binds = tuple(
        Bind(etc / name, f"/etc/{name}", readonly=True, kind="file", required=False)
        for name in ETC_FILES
    )
    return dataclasses.replace(spec, binds=(*etc_binds, *spec.binds), dns_upstreams=upstreams)


class SandboxExecutor:
    """Runs the RUN steps of one build (see the module docstring). ``placement``: None
    reads ``ROOTBUILD_CPU_PLACEMENT`` now; ``cpus``: the CPUs steps may start on (default:
    this process's affinity, read now); ``label``: what the zygote's command line shows
    (the store); ``early``: a zygote the CLI launched for this build (adopted or killed)."""

    def __init__(self, idmap: IdMapPlan, *, placement: bool | None = None,
                 cpus: Iterable[int] | None = None, label: str = "",
                 early: EarlyZygote | None = None) -> None:
        self.idmap = idmap
        self.placement = placement_from_env() if placement is None else placement
        self._slots = CpuSlots(os.sched_getaffinity(0) if cpus is None else cpus)
        self._idmap_warned = False
        # forks each step's init (sandbox/zygote.py); started by the first RUN step
        self._zygote = Zygote(zygote_env(), label, early)

    async def prestart(self) -> None:
        """Start the build's zygote now, in the background (``zygote.Zygote.prestart``):
        the build has RUN steps that will run."""
        await self._zygote.prestart()

    async def aclose(self) -> None:
        """Stop the build's zygote (the steps' inits never depend on it)."""
        await self._zygote.aclose()

    def _warnings(self, spec: StepSpec) -> list[str]:
        warnings: list[str] = []
        if self.idmap.warning and not self._idmap_warned:
            self._idmap_warned = True
            warnings.append(self.idmap.warning)
        if spec.proc == "host-bind":
            warnings.append(HOST_WARNING)
        return warnings

    async def run(self, spec: StepSpec, on_output: Callable[[str], None]) -> StepResult:
        """Run one RUN step in a fresh sandbox; ``on_output`` gets its output line by line."""
        spec.validate()
        warnings = self._warnings(spec)
        cpu = self._slots.take() if self.placement else None
        delivered = False
        try:
            step = prepare_scratch(spec)
            mark("b.scratch")
            request = InitRequest(step, self.idmap, tuple(warnings), cpu)
            result = await run_init(request, on_output, self._zygote)
            delivered = True
            return result
        finally:
            self._slots.give(cpu)
            if not delivered and self.idmap.warning in warnings:
                self._idmap_warned = False  # no result carried it: the next step does
