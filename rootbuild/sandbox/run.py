"""The builder's side of one RUN step's sandbox: start the init, map its ids, stream the
step's output, enforce the timeout, and make sure nothing outlives the step.

Job: ``run_init(request, on_output)`` -> ``StepResult``, for ``executor.SandboxExecutor``
(which owns the build's state and prepares the request). The init is forked by the build's
zygote (``zygote.py``: ``init.main`` in a process with its code already imported) in a
session of its own, so the terminal's Ctrl-C reaches only the builder, which then tears the
step down through the init. The request
crosses as ``spec.json`` in the step's scratch (``InitRequest.to_json``).

Rules:
- The init gets a minimal environment and the step gets exactly its own (SECURITY.md
  rule 6).
- A ``RootbuildError`` raised while the step runs (a failing newuidmap, say) comes out
  bare, never wrapped in the nursery's exception group, so that the engine's handler adds
  the Dockerfile line; cancellation and KeyboardInterrupt are left as trio raises them.
- On timeout, cancellation or Ctrl-C: ``kill`` to the init (which kills the step's pid
  namespace and aborts the root), then SIGKILL to the init and the FUSE server if the init
  does not finish within ``TEARDOWN_SECONDS``.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import trio

from rootbuild.errors import RootbuildError, SandboxError, StepError
from rootbuild.image.layermeta import LayerMeta
from rootbuild.runtrace import mark
from rootbuild.sandbox.idmap import IdMapPlan, apply_helpers
from rootbuild.sandbox.limits import OutputCap
from rootbuild.sandbox.secrets import payload_fd
from rootbuild.sandbox.spec import InitRequest, OverlayRoot, StepResult, StepSpec
from rootbuild.sandbox.zygote import InitProcess, Zygote, fd_arg
from rootbuild.snapshot import StepChanges

TEARDOWN_SECONDS = 30.0
MAX_LINE = 64 * 1024


def _lower_metas(spec: StepSpec) -> list[str]:
    """The metadata files of the step's lower layers, for the zygote to load once."""
    root = spec.rootfs
    return [str(lo.meta_path) for lo in root.lowers] if isinstance(root, OverlayRoot) else []


def _write_request(request: InitRequest) -> Path:
    path = request.step.scratch / "spec.json"
    try:
        path.write_text(json.dumps(request.to_json()))
    except OSError as exc:
        raise SandboxError(
            f"prepare RUN sandbox in {request.step.scratch}: {exc.strerror}"
        ) from exc
    return path


class _Lines:
    """Split a byte stream into lines for ``on_output`` (long lines are cut)."""

    def __init__(self, on_output: Callable[[str], None]) -> None:
        self.on_output = on_output
        self.buf = b""

    def feed(self, data: bytes) -> None:
        self.buf += data
        while True:
            nl = self.buf.find(b"\n")
            if nl < 0:
                if len(self.buf) >= MAX_LINE:
                    self.emit(self.buf[:MAX_LINE])
                    self.buf = self.buf[MAX_LINE:]
                    continue
                return
            self.emit(self.buf[:nl])
            self.buf = self.buf[nl + 1:]

    def emit(self, raw: bytes) -> None:
        self.on_output(raw.decode("utf-8", errors="replace").rstrip("\r"))

    def close(self) -> None:
        if self.buf:
            self.emit(self.buf)
            self.buf = b""


async def _pump(stream: trio.lowlevel.FdStream, lines: _Lines,
                cap: OutputCap | None = None) -> None:
    """Feed the step's output to ``lines``; past ``cap``'s limit it is read and dropped,
    and one note line says so (sandbox/limits.py)."""
    cap = cap or OutputCap(None)
    async with stream:
        while True:
            data = await stream.receive_some(65536)
            if not data:
                break
            clipped = cap.note is not None
            lines.feed(cap.take(data))
            if cap.note is not None and not clipped:
                lines.close()
                lines.emit(cap.note.encode())
    lines.close()


def _init_log(scratch: Path) -> str:
    try:
        text = (scratch / "init.log").read_text(errors="replace").strip()
    except OSError:
        return ""
    return " | ".join(text.splitlines()[-5:])


@contextlib.contextmanager
def _bare_errors() -> Iterator[None]:
    """Let a RootbuildError out of a nursery as itself: a group holding just that one error
    says nothing more (the error keeps its own traceback), and the caller's handler
    catches RootbuildError. Anything else (Cancelled, KeyboardInterrupt, several errors,
    a bug) stays as trio raised it."""
    try:
        yield
    except BaseExceptionGroup as group:
        if len(group.exceptions) == 1 and isinstance(group.exceptions[0], RootbuildError):
            raise group.exceptions[0] from None
        raise


async def run_init(request: InitRequest, on_output: Callable[[str], None],
                   zygote: Zygote) -> StepResult:
    """Run the prepared step ``request`` (scratch made, binds final) in a fresh sandbox,
    an init forked by the build's ``zygote``."""
    spec = request.step
    plan = request.idmap
    warnings = list(request.warnings)
    spec_path = _write_request(request)
    mark("b.request")
    out_r, out_w = os.pipe2(os.O_CLOEXEC)
    ctl_r, ctl_w = os.pipe2(os.O_CLOEXEC)
    st_r, st_w = os.pipe2(os.O_CLOEXEC)
    # the step's secret values, in memory only: a memfd the init reads (sandbox/secrets.py)
    secrets = payload_fd(spec)
    extra = () if secrets is None else (secrets,)
    passed = (out_w, ctl_r, st_w, *extra)
    try:
        with open(spec.scratch / "init.log", "wb") as log:
            proc = await zygote.spawn(
                [str(spec_path), *(fd_arg(i) for i in range(len(passed)))],
                log.fileno(), passed, spec.scratch, _lower_metas(spec),
            )
    except BaseException:
        for fd in (out_r, out_w, ctl_r, ctl_w, st_r, st_w, *extra):
            os.close(fd)
        raise
    for fd in passed:
        os.close(fd)
    mark("b.spawned")
    session = _Session(proc, ctl_w, plan, spec)
    try:
        with _bare_errors():
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_pump, trio.lowlevel.FdStream(out_r), _Lines(on_output),
                                   OutputCap(spec.limits.log_bytes))
                final = await session.follow(trio.lowlevel.FdStream(st_r))
    finally:
        mark("b.final_event")
        with trio.CancelScope(shield=True):
            await session.teardown()
        mark("b.teardown")
    return _result(final, warnings, session.timed_out, spec.scratch)


def _result(final: dict[str, Any] | None, warnings: list[str], timed_out: bool,
            scratch: Path) -> StepResult:
    if final is None:
        raise SandboxError(f"run step: the sandbox init died: {_init_log(scratch)}".rstrip())
    if final["event"] == "error":
        if final.get("kind") == "step":
            raise StepError(final["message"])
        raise SandboxError(final["message"])
    layer = None
    if final.get("tree"):
        layer = StepChanges(Path(final["tree"]), LayerMeta.load(Path(final["meta"])))
    notes = tuple(warnings + [w for w in final.get("warnings", []) if w not in warnings])
    return StepResult(int(final["code"]), layer, notes, timed_out,
                      limit_exceeded=str(final.get("disk") or ""),
                      limit=str(final.get("limit") or ""))


class _Session:
    def __init__(self, proc: InitProcess, ctl: int, plan: IdMapPlan, spec: StepSpec) -> None:
        self.proc = proc
        self.ctl = ctl
        self.plan = plan
        self.spec = spec
        self.timed_out = False
        self.final: dict[str, Any] | None = None
        self.helpers: list[int] = []

    def tell(self, line: str) -> None:
        with contextlib.suppress(OSError):
            os.write(self.ctl, line.encode() + b"\n")

    async def follow(self, status: trio.lowlevel.FdStream) -> dict[str, Any] | None:
        """Read the init's events until its last one (or EOF)."""
        buf = b""
        deadline = trio.current_time() + self.spec.timeout if self.spec.timeout else None
        async with status:
            while True:
                with trio.move_on_at(deadline if deadline else float("inf")):
                    data = await status.receive_some(4096)
                    if not data:
                        return self.final
                    buf += data
                    while b"\n" in buf:
                        raw, buf = buf.split(b"\n", 1)
                        event = json.loads(raw)
                        if event["event"] == "unshared":
                            await self._map(self.proc.pid)
                        elif event["event"] == "mounted":
                            self.helpers = [int(p) for p in event["pids"]]
                        elif event["event"] in ("exit", "error"):
                            self.final = event
                    continue
                # the deadline passed: kill the step's pid namespace, keep reading
                self.timed_out = True
                deadline = None
                self.tell("kill")

    async def _map(self, pid: int) -> None:
        try:
            mark("b.unshared_seen")
            await trio.to_thread.run_sync(apply_helpers, pid, self.plan)
            mark("b.mapped")
        except SandboxError:
            self.tell("failed")
            raise
        self.tell("mapped")

    async def teardown(self) -> None:
        """Ask the init to tear down; force it after TEARDOWN_SECONDS. Closing the control
        pipe is itself a kill request, so a builder that dies also tears the step down."""
        if self.proc.alive():
            self.tell("kill")
        os.close(self.ctl)
        with trio.move_on_after(TEARDOWN_SECONDS):
            await self.proc.wait()
        if self.proc.alive():
            self.proc.kill_group()
            await self.proc.wait()
            for pid in self.helpers:  # the FUSE server, orphaned by the init's death
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        self.proc.close()
