"""``rootbuild worker``: claim jobs from the queue and run each one as an in-process build.

Job: the claim loop (``Worker.run``: N slots, a reaper, SIGTERM handling) and one job's
life (``Worker.run_job``): fetch and verify the context blob, unpack it, build it untrusted in the
tenant's own store with a ``Progress`` that writes to the job's log stream, push with the
job's own credentials, and complete the job with its outcome, all under a lease kept
alive beside the build (``TrioQueue.keep_lease``).

Rules:
- A job's ``BuildOptions`` come from one function, ``job_options`` (spec + worker config):
  new build options (limits, network) are one line there. Jobs are always ``untrusted``,
  so their RUN network is the untrusted default (``isolated``: public egress only, or
  ``none`` with a warning where slirp4netns cannot run), and their limits (pids, memory,
  disk, log bytes) are the worker's flags or else the untrusted defaults.
- The lease decides: when ``keep_lease`` returns (cancelled, lost, or Redis unreachable for
  the reclaim time) the build's cancel scope is cancelled, which kills the running step's
  pid namespace; only a cancel completes the job (CANCELLED); a lost or unreachable lease
  completes nothing (the job belongs to another attempt now).
- Outcomes: a build error is FAILURE with ``failure_info {reason, message, step}`` (step:
  the Dockerfile line); a step's or the job's time limit is TIMEOUT; anything unexpected
  is INTERNAL_ERROR (its traceback goes to the worker's stderr, not the tenant's log).
- Per-tenant stores ``STORE/tenants/<tenant>/store``: no RUN result, layer tree or cache
  mount is shared across tenants. (Verified base blobs could be shared read-only by
  digest later; today each tenant pulls its own.)
- Credentials: ``credentials_ref`` names ``CREDENTIALS_DIR/<ref>.json`` (docker
  config.json format), read at push time only and only for the push; the build itself
  (base pulls) runs with an empty credentials file, never the worker user's own.
- Secrets (``tenant_secrets.py``): a spec names secret ids only; the worker reads each
  from ``SECRETS_DIR/<tenant>/<id>`` before the build (a missing one: FAILURE
  ``secret_not_found`` at the RUN that mounts it) and gives the values to the build in
  memory (``job_options``); they never reach the job hash, the log (masked as on the CLI)
  or the worker's stderr, and a step that mounts one is never cached (untrusted).
- The worker opens no port; it only connects to Redis and registries.
- Slots (``slots.py``): slot task i builds with ``--slot`` ``slot_base + i``, so each
  concurrent build's RUN root is its own subordinate uid range (RLIMIT_NPROC per slot, no
  signals across slots). A job directory is held by a lock while its job runs
  (``jobdirs.py``); at start the worker sweeps the ones no live worker holds.
- An INTERNAL_ERROR gets an incident id: the worker's stderr line carries it with the
  traceback, the tenant's log one line with the id alone.
- SIGTERM/SIGINT: stop claiming, let running builds finish for ``grace`` seconds, then
  cancel them without completing (their leases lapse and another worker reruns them).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import os
import signal
import socket
import sys
import threading
import traceback
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio

from rootbuild.engine.build import build
from rootbuild.engine.options import BuildOptions
from rootbuild.errors import (
    RegistryError,
    RootbuildError,
    StepTimeout,
)
from rootbuild.image.store import Store
from rootbuild.registry.client import TransportOptions
from rootbuild.registry.push import push
from rootbuild.service import jobdirs
from rootbuild.service.context_blob import (
    DEFAULT_MAX_CONTEXT,
    ContextBlobError,
    fetch_context,
    unpack_context,
)
from rootbuild.service.jobs import FailureInfo, JobState, Lease, QueueError
from rootbuild.service.slots import worker_slots
from rootbuild.service.tenant_secrets import SecretError, check_secret_ids, job_secrets
from rootbuild.service.trio_queue import LeaseEnd, TrioQueue

EMPTY_AUTH = '{"auths": {}}\n'


class SpecError(RootbuildError):
    """The job's spec is not one this worker can build."""


@dataclass(frozen=True)
class WorkerConfig:
    store: Path  # tenants' stores below STORE/tenants/
    name: str = field(default_factory=lambda: f"{socket.gethostname()}-{os.getpid()}")
    concurrency: int = 1
    credentials_dir: Path | None = None  # <ref>.json per credentials_ref
    max_context: int = DEFAULT_MAX_CONTEXT
    step_timeout: float = 3600.0  # each RUN step, at most (a spec may ask for less)
    job_timeout: float = 4 * 3600.0  # the whole job's wall clock, at most
    grace: float = 30.0  # after SIGTERM, running builds get this long
    transport: TransportOptions = field(default_factory=TransportOptions)
    log_line_max: int = 8192  # longer lines are cut (the queue caps the whole log)
    poll: float = 0.2  # seconds between claims when the queue is empty
    slot_base: int = 0  # slot task i builds with --slot slot_base + i (slots.py)
    # each job's limits (None: the --untrusted default, engine/options.py, disk_limit.py)
    pids_limit: int | None = None
    memory_limit: int | None = None
    disk_limit: int | None = None
    log_limit: int | None = None
    secrets_dir: Path | None = None  # <tenant>/<id> per secret a job names


@dataclass(frozen=True)
class JobSpec:
    """What ``submit`` puts in a job's spec (``jobs.encode_spec`` stores it)."""

    context: str  # sha256 digest of the context blob
    dockerfile: str  # the Dockerfile's text
    tags: tuple[str, ...] = ()
    push: bool = False
    build_args: Mapping[str, str] = field(default_factory=dict)
    target: str | None = None
    timeout: float | None = None  # the job's wall clock, seconds (capped by the worker)
    dockerignore: str = ""  # the ignore file's text the client applied
    secrets: tuple[str, ...] = ()  # secret ids (tenant_secrets.py), never values

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {"context": self.context, "dockerfile": self.dockerfile,
                "tags": list(self.tags), "push": self.push,
                "build_args": dict(self.build_args), "target": self.target,
                "timeout": self.timeout, "dockerignore": self.dockerignore}
        if self.secrets:
            data["secrets"] = list(self.secrets)
        return data

    @classmethod
    def parse(cls, spec: Mapping[str, Any]) -> JobSpec:
        def need(ok: bool, what: str) -> None:
            if not ok:
                raise SpecError(f"job spec: {what}")

        context, dockerfile = spec.get("context"), spec.get("dockerfile")
        need(isinstance(context, str), "'context' must be a digest")
        need(isinstance(dockerfile, str), "'dockerfile' must be text")
        tags = spec.get("tags") or []
        need(isinstance(tags, list) and all(isinstance(t, str) for t in tags),
             "'tags' must be a list of names")
        args = spec.get("build_args") or {}
        need(isinstance(args, dict) and all(isinstance(k, str) and isinstance(v, str)
                                            for k, v in args.items()),
             "'build_args' must map names to strings")
        target = spec.get("target")
        need(target is None or isinstance(target, str), "'target' must be a stage name")
        timeout = spec.get("timeout")
        need(timeout is None or (isinstance(timeout, int | float) and timeout > 0),
             "'timeout' must be a positive number of seconds")
        ignore = spec.get("dockerignore") or ""
        need(isinstance(ignore, str), "'dockerignore' must be text")
        push_ = bool(spec.get("push", False))
        need(not push_ or bool(tags), "'push' needs at least one tag")
        secret_ids = spec.get("secrets") or []
        need(isinstance(secret_ids, list) and all(isinstance(i, str) for i in secret_ids),
             "'secrets' must be a list of secret ids")
        why = check_secret_ids(secret_ids)
        need(why is None, f"'secrets': {why}")
        assert isinstance(context, str) and isinstance(dockerfile, str)
        return cls(context, dockerfile, tuple(tags), push_, dict(args), target,
                   None if timeout is None else float(timeout), ignore, tuple(secret_ids))


def job_options(spec: JobSpec, context_dir: Path, dockerfile: Path, config: WorkerConfig,
                anonymous_auth: Path, slot: int | None = None,
                secrets: Mapping[str, bytes] | None = None) -> BuildOptions:
    """A job's ``BuildOptions``: the one place a job's spec and the worker's configuration
    meet. Always untrusted (RUN gets the untrusted network), no credentials of the
    worker's user.
    ``dockerfile`` is the spec's Dockerfile written beside (not in) the context; ``slot``
    the build slot of the worker's slot task running the job (``slots.worker_slots``);
    ``secrets`` the values of the spec's secret ids (``tenant_secrets.job_secrets``)."""
    return BuildOptions(
        context_dir=context_dir,
        dockerfile=str(dockerfile),
        tags=spec.tags,
        build_args=dict(spec.build_args),
        target=spec.target,
        jobs=1,
        untrusted=True,  # and so the untrusted network default (engine/network.py)
        step_timeout=config.step_timeout,
        transport=dataclasses.replace(config.transport, auth_file=anonymous_auth),
        push=False,  # pushed by the worker with the job's own credentials
        slot=slot,
        pids_limit=config.pids_limit, memory_limit=config.memory_limit,
        disk_limit=config.disk_limit, log_limit=config.log_limit,
        secrets=dict(secrets or {}),
    )


class JobLog:
    """The build's ``Progress``: plain BuildKit-like lines, buffered and appended to the
    job's log stream by ``flush_loop`` (the build never waits on Redis). Lines are cut at
    ``line_max``; the queue's caps bound the whole log."""

    def __init__(self, line_max: int, buffer_max: int = 4 << 20) -> None:
        self.line_max = line_max
        self.buffer_max = buffer_max  # bytes held while Redis is slow; the rest dropped
        self.capped = False  # the queue refused a line: its log cap is reached
        self._lock = threading.Lock()
        self._lines: list[str] = []
        self._buffered = 0
        self._dropped = 0
        self._counter = 0
        self._labels: dict[int, str] = {}

    def _emit(self, text: str) -> None:
        if len(text) > self.line_max:
            text = text[: self.line_max] + " [line cut]"
        with self._lock:
            if self.capped or self._buffered + len(text) > self.buffer_max:
                self._dropped += 1
                return
            self._lines.append(text)
            self._buffered += len(text) + 1

    def take(self) -> bytes:
        with self._lock:
            lines, self._lines, self._buffered = self._lines, [], 0
            dropped, self._dropped = self._dropped, 0
        if dropped and not self.capped:
            lines.append(f"note: {dropped} lines of output dropped (written faster than "
                         "the log could take them)")
        return "".join(line + "\n" for line in lines).encode("utf-8", "replace")

    def start(self, label: str) -> int:
        with self._lock:
            self._counter += 1
            number = self._counter
            self._labels[number] = label
        self._emit(f"#{number} {label}")
        return number

    def done(self, step: int, *, cached: bool = False) -> None:
        self._emit(f"#{step} CACHED" if cached else f"#{step} DONE")

    def failed(self, step: int, error: str) -> None:
        self._emit(f"#{step} ERROR {error}")

    def output(self, step: int, line: str) -> None:
        self._emit(f"#{step} {line}")

    def warn(self, message: str) -> None:
        self._emit(f"WARNING: {message}")

    def note(self, message: str) -> None:
        self._emit(f"note: {message}")

    def close(self) -> None:
        pass

    async def flush(self, tq: TrioQueue, lease: Lease) -> None:
        data = self.take()
        if data and not self.capped:
            # an unreachable Redis: the lease watcher decides what that means
            with contextlib.suppress(QueueError):
                if not await tq.append_log(lease, data):
                    self.capped = True  # the queue noted it; send nothing more

    async def flush_loop(self, tq: TrioQueue, lease: Lease, every: float = 0.2) -> None:
        """Send the log every ``every`` seconds; cancelled only while it sleeps, never
        half way through a send (lines taken and then cancelled would reach the log after
        the job's final flush and its completion, which refuses them: lost)."""
        while True:
            await trio.sleep(every)
            with trio.CancelScope(shield=True):
                await self.flush(tq, lease)


@dataclass
class Outcome:
    state: JobState
    result: dict[str, Any] = field(default_factory=dict)
    failure: FailureInfo | None = None


def _leaf(exc: BaseException) -> BaseException:
    """The first real error inside (possibly nested) exception groups."""
    while isinstance(exc, BaseExceptionGroup):
        exc = exc.exceptions[0]
    return exc


def classify(exc: BaseException, pushing: bool) -> Outcome:
    """A build's exception as the job's outcome."""
    exc = _leaf(exc)
    if isinstance(exc, StepTimeout):
        step = str(exc.location) if exc.location else None
        return Outcome(JobState.TIMEOUT, failure=FailureInfo("step_timeout", exc.message, step))
    if isinstance(exc, ContextBlobError):
        return Outcome(JobState.FAILURE, failure=FailureInfo("bad_context", str(exc)))
    if isinstance(exc, SpecError):
        return Outcome(JobState.FAILURE, failure=FailureInfo("bad_spec", str(exc)))
    if isinstance(exc, SecretError):  # its id, never its value (tenant_secrets.py)
        step = str(exc.location) if exc.location else None
        return Outcome(JobState.FAILURE, failure=FailureInfo(exc.reason, exc.message, step))
    if isinstance(exc, RootbuildError):
        reason = "push_failed" if pushing and isinstance(exc, RegistryError) else "build_failed"
        step = str(exc.location) if exc.location else None
        return Outcome(JobState.FAILURE, failure=FailureInfo(reason, exc.message, step))
    return Outcome(JobState.INTERNAL_ERROR,
                   failure=FailureInfo("internal", f"{type(exc).__name__}: {exc}"))


def incident(outcome: Outcome, code: str) -> Outcome:
    """An INTERNAL_ERROR as the tenant sees it: one message naming an incident id (the
    worker's stderr line carries the same id and the traceback); the error's own text,
    which may name the worker's paths or state, stays in the worker's log."""
    message = f"internal error in the build service (incident {code})"
    return Outcome(outcome.state, outcome.result, FailureInfo("internal", message))


def credentials_file(config: WorkerConfig, ref: str | None) -> Path | None:
    """The auth file ``ref`` names in the worker's configuration (None: push anonymously)."""
    if ref is None:
        return None
    if config.credentials_dir is None:
        raise RegistryError(f"push: credentials_ref {ref!r}: this worker has no "
                            "--credentials-dir")
    if "/" in ref or ref.startswith("."):
        raise RegistryError(f"push: credentials_ref {ref!r} is not a file name")
    path = config.credentials_dir / f"{ref}.json"
    if not path.is_file():
        raise RegistryError(f"push: credentials_ref {ref!r} is unknown to this worker")
    return path


class Worker:
    def __init__(self, tq: TrioQueue, config: WorkerConfig) -> None:
        self.tq = tq
        self.config = config
        self.stopping = False
        self.running: dict[str, trio.CancelScope] = {}
        self.anonymous = config.store / "anonymous-auth.json"
        self._last_error = ""

    def say(self, text: str) -> None:
        sys.stderr.write(f"worker {self.config.name}: {text}\n")
        sys.stderr.flush()

    def prepare(self) -> None:
        self.config.store.mkdir(mode=0o700, parents=True, exist_ok=True)
        (self.config.store / "tenants").mkdir(mode=0o700, exist_ok=True)
        self.held = jobdirs.hold_store(self.config.store)  # `system reset` refuses meanwhile
        self.anonymous.write_text(EMPTY_AUTH)
        self.anonymous.chmod(0o600)
        left = jobdirs.said(*jobdirs.sweep(self.config.store))  # what dead workers left
        if left:
            self.say(left)

    async def run(self) -> None:
        self.prepare()
        self.say(f"claiming jobs (concurrency {self.config.concurrency})")
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._signals)
            nursery.start_soon(self._reaper)
            async with trio.open_nursery() as slots:
                for slot in worker_slots(self.config.slot_base, self.config.concurrency):
                    slots.start_soon(self._slot, slot)
            nursery.cancel_scope.cancel()  # every slot ended: stop the reaper and signals
        self.say("stopped")

    async def _slot(self, slot: int | None = None) -> None:
        while not self.stopping:
            try:
                # tq.claim, not claim_wait: a claim is never abandoned mid-call, so no job
                # is leased to this worker without being run
                lease = await self.tq.claim(self.config.name)
            except QueueError as exc:
                self._error(exc)
                lease = None
            if lease is None:
                await trio.sleep(self.config.poll)
                continue
            await self.run_job(lease, slot)

    def _error(self, exc: QueueError) -> None:
        """A queue error, said once until a different one comes (no line per poll)."""
        if str(exc) != self._last_error:
            self._last_error = str(exc)
            self.say(str(exc))

    async def _reaper(self) -> None:
        every = self.tq.queue.config.reclaim_ms / 1000
        while True:
            await trio.sleep(every)
            try:
                await self.tq.reap()
            except QueueError as exc:
                self._error(exc)

    async def _signals(self) -> None:
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async with trio.open_nursery() as nursery:
                async for _ in signals:
                    if self.stopping:
                        self.say("second signal: cancelling running builds now")
                        break
                    self.stopping = True
                    self.say(f"stopping: no new jobs; running builds get {self.config.grace:g}s")
                    nursery.start_soon(self._grace)
                nursery.cancel_scope.cancel()
        self._cancel_running()

    async def _grace(self) -> None:
        with trio.move_on_after(self.config.grace):
            while self.running:
                await trio.sleep(0.1)
        self._cancel_running()

    def _cancel_running(self) -> None:
        for scope in list(self.running.values()):
            scope.cancel()

    async def run_job(self, lease: Lease, slot: int | None = None) -> JobState | None:
        """Run one claimed job to its end; the state completed, or None (nothing recorded:
        the lease was lost, Redis gone, or the worker is shutting down)."""
        self.say(f"job {lease.job_id} of {lease.tenant}: attempt {lease.attempt}")
        log = JobLog(self.config.log_line_max)
        ended: list[LeaseEnd] = []
        outcome: Outcome | None = None
        job_scope = trio.CancelScope()
        self.running[lease.job_id] = job_scope
        try:
            async with trio.open_nursery() as nursery:

                async def watch() -> None:
                    ended.append(await self.tq.keep_lease(lease))
                    job_scope.cancel()

                nursery.start_soon(watch)
                nursery.start_soon(log.flush_loop, self.tq, lease)
                with job_scope:
                    outcome = await self._build(lease, log, slot)
                nursery.cancel_scope.cancel()
        finally:
            del self.running[lease.job_id]
        if outcome is None:  # the build was cancelled
            if ended and ended[0] is LeaseEnd.CANCELLED:
                log.note("build cancelled")
                outcome = Outcome(JobState.CANCELLED)
            else:
                why = ended[0].value if ended else "worker shutting down"
                self.say(f"job {lease.job_id}: build stopped ({why}); not completing it")
                with trio.CancelScope(shield=True):
                    await log.flush(self.tq, lease)
                return None
        if outcome.failure is not None:
            where = f" ({outcome.failure.step})" if outcome.failure.step else ""
            log.note(f"{outcome.state.value}: {outcome.failure.message}{where}")
        with trio.CancelScope(shield=True):
            await log.flush(self.tq, lease)
            try:
                accepted = await self.tq.complete(lease, outcome.state, outcome.result,
                                                  outcome.failure)
            except QueueError as exc:
                self.say(f"job {lease.job_id}: completing failed: {exc}")
                return None
        self.say(f"job {lease.job_id}: {outcome.state.value}"
                 + ("" if accepted else " (refused: the lease moved on)"))
        return outcome.state if accepted else None

    async def _build(self, lease: Lease, log: JobLog,
                     slot: int | None = None) -> Outcome | None:
        """Build (and push) the job; its outcome, or None when cancelled."""
        tenant_dir = self.config.store / "tenants" / lease.tenant
        work = tenant_dir / "jobs" / f"{lease.job_id}.{lease.attempt}"
        pushing = False
        held: int | None = None  # the job directory's lock (jobdirs.py)
        try:
            spec = JobSpec.parse(lease.spec)
            limit = self.config.job_timeout
            if spec.timeout is not None:
                limit = min(limit, spec.timeout)
            with trio.move_on_after(limit) as clock:
                secrets = await trio.to_thread.run_sync(
                    job_secrets, self.config.secrets_dir, lease.tenant, spec.secrets,
                    spec.dockerfile)
                held = await trio.to_thread.run_sync(jobdirs.claim, work)
                data = await trio.to_thread.run_sync(
                    fetch_context, self.tq.queue.client, self.tq.queue.prefix, spec.context,
                    self.config.max_context)
                context_dir = work / "context"
                await trio.to_thread.run_sync(unpack_context, data, context_dir)
                del data
                store = Store.open(tenant_dir / "store")
                dockerfile = work / "Dockerfile"  # beside the context, with its ignore file
                dockerfile.write_text(spec.dockerfile, errors="surrogateescape")
                if spec.dockerignore:
                    (work / "Dockerfile.dockerignore").write_text(
                        spec.dockerignore, errors="surrogateescape")
                options = job_options(spec, context_dir, dockerfile, self.config,
                                      self.anonymous, slot, secrets)
                del secrets  # the build's options hold them until the job ends
                result = await build(options, store, log)
                pushed: dict[str, str] = {}
                if spec.push:
                    pushing = True
                    auth = credentials_file(self.config, lease.credentials_ref)
                    transport = dataclasses.replace(
                        self.config.transport, auth_file=auth or self.anonymous)
                    for tag in spec.tags:
                        handle = log.start(f"pushing {tag}")
                        pushed[tag] = await push(
                            store, result.image, tag, transport=transport,
                            progress=functools.partial(log.output, handle))
                        log.done(handle)
            if clock.cancelled_caught:
                message = f"job ran longer than its time limit ({limit:g}s)"
                return Outcome(JobState.TIMEOUT, failure=FailureInfo("job_timeout", message))
            return Outcome(JobState.SUCCESS, {
                "image_id": result.image_id,
                "manifest_digest": result.image.manifest.digest,
                "pushed": pushed,
            })
        except trio.Cancelled:
            raise
        except BaseException as exc:  # every failure becomes an outcome
            cancelled, rest = _split_cancelled(exc)
            if rest is None and cancelled is not None:
                raise
            outcome = classify(rest if rest is not None else exc, pushing)
            if outcome.state is JobState.INTERNAL_ERROR:
                code = uuid.uuid4().hex[:12]
                outcome = incident(outcome, code)
                self.say(f"job {lease.job_id}: internal error (incident {code})\n"
                         + "".join(traceback.format_exception(exc)))
            return outcome
        finally:
            # claim cleans up after itself when it fails: only a held directory is ours
            with trio.CancelScope(shield=True):
                if held is not None:
                    try:
                        await trio.to_thread.run_sync(jobdirs.release, work, held)
                    except OSError as exc:  # the worker lives on; the next start sweeps it
                        self.say(f"job {lease.job_id}: remove {work}: {exc}")


def _split_cancelled(
        exc: BaseException) -> tuple[BaseException | None, BaseException | None]:
    if isinstance(exc, BaseExceptionGroup):
        return exc.split(trio.Cancelled)
    if isinstance(exc, trio.Cancelled | KeyboardInterrupt | SystemExit):
        return exc, None
    return None, exc

