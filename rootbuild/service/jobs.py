"""A build job as the queue keeps it: states, failure info, the lease a worker holds.

Job: the pure half of the service queue. ``JobState`` (Cloud Build's names), which states
end a job, the ``JobRecord`` read back from a job's Redis hash, the ``Lease`` a claim gives
a worker, the ``QueueConfig`` times and caps, and the checks a submission passes before it
reaches Redis (tenant names, a spec that names credentials but never holds them).

Rules:
- Pure: no Redis, no I/O. ``queue.py`` is the adapter; ``JobQueue`` is the seam a second
  backend (a Kubernetes Job per build) would implement.
- A job's state only moves QUEUED -> WORKING -> one terminal state, or QUEUED -> CANCELLED /
  EXPIRED; terminal states never change again (``TERMINAL``).
- Credentials are a ``credentials_ref`` name the worker resolves from its own
  configuration at push time; a spec carrying a credential-like key is refused, so no
  secret value is ever written to the job hash or a log.
- Every write of a worker is fenced by the ``Lease.attempt`` it got: a worker whose lease
  was reclaimed (attempt moved on) cannot complete, heartbeat or log for the job.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Protocol

from rootbuild.errors import RootbuildError


class QueueError(RootbuildError):
    """The queue refused a request (unknown job, bad tenant, bad spec) or is unreachable."""


class JobState(StrEnum):
    """States as Google Cloud Build names them."""

    QUEUED = "QUEUED"
    WORKING = "WORKING"
    SUCCESS = "SUCCESS"
    FAILURE = "FAILURE"
    INTERNAL_ERROR = "INTERNAL_ERROR"
    TIMEOUT = "TIMEOUT"
    CANCELLED = "CANCELLED"
    EXPIRED = "EXPIRED"


TERMINAL = frozenset(JobState) - {JobState.QUEUED, JobState.WORKING}
# What a worker may end its own job with (EXPIRED is the queue's decision alone).
WORKER_OUTCOMES = frozenset(
    {JobState.SUCCESS, JobState.FAILURE, JobState.INTERNAL_ERROR, JobState.TIMEOUT,
     JobState.CANCELLED}
)

# failure_info.reason values the queue itself writes; workers add their own
# ("step_failed", "limit_exceeded", "push_failed", ...).
REASON_WORKER_LOST = "worker_lost"
REASON_EXPIRED = "expired"

_TENANT = re.compile(r"[a-z0-9][a-z0-9_.-]{0,62}")
_REF = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:/-]{0,127}")
_JOB_ID = re.compile(r"[0-9a-f]{32}")
# Keys that hold credential values in Docker's and registries' own formats.
_CREDENTIAL_KEYS = frozenset(
    {"password", "passwd", "token", "auth", "auths", "credentials", "identitytoken",
     "registrytoken", "access_token", "refresh_token", "secret_value"}
)
MAX_SPEC_BYTES = 64 * 1024


@dataclass(frozen=True)
class QueueConfig:
    """Times (seconds) and caps; the defaults suit builds of minutes to hours."""

    heartbeat: float = 2.0  # a worker renews each lease this often
    missed_heartbeats: int = 3  # a lease idle this many heartbeats is reclaimed
    max_deliveries: int = 3  # more deliveries than this -> INTERNAL_ERROR (worker lost)
    queue_ttl: float = 3600.0  # queued longer than this -> EXPIRED
    tenant_cap: int = 2  # concurrent jobs per tenant unless set_tenant_cap says otherwise
    log_max_entries: int = 100_000
    log_max_bytes: int = 16 * 1024 * 1024
    retention: float = 7 * 24 * 3600.0  # a finished job's hash and log live this long
    prefix: str = "rb"

    def __post_init__(self) -> None:
        if self.heartbeat <= 0 or self.missed_heartbeats < 1 or self.max_deliveries < 1:
            raise ValueError("queue config: heartbeat, missed_heartbeats, max_deliveries > 0")
        if self.queue_ttl <= 0 or self.tenant_cap < 1 or self.retention <= 0:
            raise ValueError("queue config: queue_ttl, tenant_cap and retention must be > 0")
        if self.log_max_entries < 1 or self.log_max_bytes < 1:
            raise ValueError("queue config: log caps must be > 0")

    @property
    def reclaim_ms(self) -> int:
        """Idle time after which a lease is lost: three missed heartbeats by default."""
        return int(self.heartbeat * self.missed_heartbeats * 1000)


@dataclass(frozen=True)
class FailureInfo:
    reason: str
    message: str
    step: str | None = None


@dataclass(frozen=True)
class Lease:
    """What a claim hands a worker. ``attempt`` is the fencing token of every later call."""

    job_id: str
    tenant: str
    attempt: int
    worker: str
    entry: str  # the job's entry id in its tenant's stream
    spec: dict[str, Any]
    credentials_ref: str | None


@dataclass(frozen=True)
class Heartbeat:
    """``alive`` False: the lease is gone (reclaimed or the job ended); stop the build.
    ``cancel_requested``: someone cancelled the running job; kill it, complete CANCELLED."""

    alive: bool
    cancel_requested: bool


@dataclass(frozen=True)
class LogEntry:
    id: str  # the stream entry id; pass it as ``after`` to resume
    kind: str  # "out" (build output) or "note" (the queue's own remarks)
    attempt: int
    data: bytes


@dataclass(frozen=True)
class JobRecord:
    """A job's hash, typed. Times are Unix milliseconds of the Redis server's clock."""

    id: str
    tenant: str
    state: JobState
    spec: dict[str, Any]
    credentials_ref: str | None
    attempt: int
    worker: str | None
    queued_at: int
    started_at: int | None
    finished_at: int | None
    failure_info: FailureInfo | None
    result: dict[str, Any] = field(default_factory=dict)
    cancel_requested: bool = False
    log_dropped: int = 0

    @property
    def terminal(self) -> bool:
        return self.state in TERMINAL

    @classmethod
    def from_hash(cls, job_id: str, raw: Mapping[bytes, bytes]) -> JobRecord:
        h = {k.decode(): v.decode() for k, v in raw.items()}

        def opt_int(name: str) -> int | None:
            return int(h[name]) if h.get(name) else None

        failure = None
        if h.get("failure_reason"):
            failure = FailureInfo(
                h["failure_reason"], h.get("failure_message", ""), h.get("failure_step") or None
            )
        return cls(
            id=job_id,
            tenant=h["tenant"],
            state=JobState(h["state"]),
            spec=json.loads(h["spec"]),
            credentials_ref=h.get("credentials_ref") or None,
            attempt=int(h.get("attempt", "0")),
            worker=h.get("worker") or None,
            queued_at=int(h["queued_at"]),
            started_at=opt_int("started_at"),
            finished_at=opt_int("finished_at"),
            failure_info=failure,
            result=json.loads(h["result"]) if h.get("result") else {},
            cancel_requested=h.get("cancel") == "1",
            log_dropped=int(h.get("log_dropped", "0")),
        )

    def to_json(self) -> dict[str, Any]:
        """``status --json``: the record as JSON-ready data."""
        return {
            "id": self.id,
            "tenant": self.tenant,
            "state": self.state.value,
            "attempt": self.attempt,
            "worker": self.worker,
            "queued_at": self.queued_at,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "failure_info": None if self.failure_info is None else {
                "reason": self.failure_info.reason,
                "message": self.failure_info.message,
                "step": self.failure_info.step,
            },
            "result": self.result,
            "cancel_requested": self.cancel_requested,
            "credentials_ref": self.credentials_ref,
            "log_dropped": self.log_dropped,
            "spec": self.spec,
        }


def check_tenant(tenant: str) -> str:
    if not _TENANT.fullmatch(tenant):
        raise QueueError(
            f"submit: tenant {tenant!r} is not a name (lowercase letters, digits, '_.-', "
            "at most 63 characters)"
        )
    return tenant


def check_job_id(job_id: str) -> str:
    if not _JOB_ID.fullmatch(job_id):
        raise QueueError(f"job {job_id!r}: not a job id (32 hex digits)")
    return job_id


def check_credentials_ref(ref: str | None) -> str:
    if ref is None:
        return ""
    if not _REF.fullmatch(ref):
        raise QueueError(f"submit: credentials_ref {ref!r} is not a name")
    return ref


def _credential_keys(value: Any, path: str) -> list[str]:
    found: list[str] = []
    if isinstance(value, dict):
        for key, item in value.items():
            where = f"{path}.{key}" if path else str(key)
            if str(key).lower() in _CREDENTIAL_KEYS:
                found.append(where)
            found.extend(_credential_keys(item, where))
    elif isinstance(value, list):
        for i, item in enumerate(value):
            found.extend(_credential_keys(item, f"{path}[{i}]"))
    return found


def encode_spec(spec: Mapping[str, Any]) -> str:
    """The spec as stored: canonical JSON, size-capped, with no credential values."""
    bad = _credential_keys(dict(spec), "")
    if bad:
        raise QueueError(
            f"submit: spec key {bad[0]!r} would store a credential; name the worker's "
            "credentials with credentials_ref instead"
        )
    try:
        text = json.dumps(spec, sort_keys=True, separators=(",", ":"))
    except (TypeError, ValueError) as exc:
        raise QueueError(f"submit: spec is not JSON data: {exc}") from exc
    if len(text.encode()) > MAX_SPEC_BYTES:
        raise QueueError(f"submit: spec is larger than {MAX_SPEC_BYTES} bytes")
    return text


def check_outcome(state: JobState, failure: FailureInfo | None) -> None:
    """What ``complete`` accepts: a worker outcome; failure info exactly when not SUCCESS
    (CANCELLED may go without)."""
    if state not in WORKER_OUTCOMES:
        raise QueueError(f"complete: {state.value} is not a state a worker ends a job with")
    if state is JobState.SUCCESS and failure is not None:
        raise QueueError("complete: SUCCESS with failure_info")
    if state not in (JobState.SUCCESS, JobState.CANCELLED) and failure is None:
        raise QueueError(f"complete: {state.value} needs failure_info")


class JobQueue(Protocol):
    """The seam the worker and the CLI use (``queue.RedisQueue`` implements it)."""

    def submit(self, tenant: str, spec: Mapping[str, Any],
               credentials_ref: str | None = None) -> str: ...
    def claim(self, worker: str) -> Lease | None: ...
    def heartbeat(self, lease: Lease) -> Heartbeat: ...
    def complete(self, lease: Lease, state: JobState, result: Mapping[str, Any] | None = None,
                 failure: FailureInfo | None = None) -> bool: ...
    def cancel(self, job_id: str) -> JobState: ...
    def status(self, job_id: str) -> JobRecord: ...
    def append_log(self, lease: Lease, data: bytes) -> bool: ...
    def read_log(self, job_id: str, after: str = "0-0", count: int = 1000,
                 block: float | None = None) -> list[LogEntry]: ...
    def reap(self) -> int: ...
