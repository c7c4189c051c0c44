"""The service queue's pure half (``rootbuild/service/jobs.py``): states, records, checks."""

from __future__ import annotations

import json
import re

import pytest

from rootbuild.service.jobs import (
    TERMINAL,
    WORKER_OUTCOMES,
    FailureInfo,
    JobRecord,
    JobState,
    QueueConfig,
    QueueError,
    check_credentials_ref,
    check_job_id,
    check_outcome,
    check_tenant,
    encode_spec,
)


def test_states_are_cloud_builds_and_exactly_two_are_live() -> None:
    assert [s.value for s in JobState] == [
        "QUEUED", "WORKING", "SUCCESS", "FAILURE", "INTERNAL_ERROR", "TIMEOUT", "CANCELLED",
        "EXPIRED",
    ]
    assert set(JobState) - TERMINAL == {JobState.QUEUED, JobState.WORKING}
    assert JobState.EXPIRED not in WORKER_OUTCOMES  # only the queue expires a job
    assert WORKER_OUTCOMES < TERMINAL


def test_reclaim_is_three_missed_heartbeats() -> None:
    assert QueueConfig(heartbeat=2.0).reclaim_ms == 6000
    assert QueueConfig(heartbeat=0.1, missed_heartbeats=5).reclaim_ms == 500
    with pytest.raises(ValueError):
        QueueConfig(heartbeat=0)
    with pytest.raises(ValueError):
        QueueConfig(tenant_cap=0)


def test_record_from_hash_round_trips_to_json() -> None:
    raw = {
        b"tenant": b"acme", b"state": b"FAILURE", b"spec": b'{"context":"sha256:1"}',
        b"credentials_ref": b"acme-push", b"queued_at": b"1000", b"started_at": b"1500",
        b"finished_at": b"9000", b"attempt": b"2", b"worker": b"w2", b"entry": b"1000-0",
        b"failure_reason": b"step_failed", b"failure_message": b"exit code 2",
        b"failure_step": b"Dockerfile:3: RUN make", b"result": b'{"digest":"sha256:ab"}',
        b"log_dropped": b"7",
    }
    record = JobRecord.from_hash("a" * 32, raw)
    assert record.terminal
    assert record.failure_info == FailureInfo("step_failed", "exit code 2",
                                              "Dockerfile:3: RUN make")
    doc = record.to_json()
    assert json.loads(json.dumps(doc)) == doc
    assert doc["state"] == "FAILURE" and doc["attempt"] == 2 and doc["worker"] == "w2"
    assert doc["failure_info"] == {"reason": "step_failed", "message": "exit code 2",
                                   "step": "Dockerfile:3: RUN make"}
    assert doc["result"] == {"digest": "sha256:ab"} and doc["log_dropped"] == 7


def test_a_queued_record_has_no_start_worker_or_failure() -> None:
    record = JobRecord.from_hash("b" * 32, {
        b"tenant": b"acme", b"state": b"QUEUED", b"spec": b"{}", b"credentials_ref": b"",
        b"queued_at": b"1000", b"attempt": b"0",
    })
    assert not record.terminal
    assert (record.started_at, record.worker, record.failure_info) == (None, None, None)
    assert record.credentials_ref is None and record.cancel_requested is False


@pytest.mark.parametrize("tenant", ["acme", "a", "team-1.prod_x", "0" * 63])
def test_tenant_names(tenant: str) -> None:
    assert check_tenant(tenant) == tenant


@pytest.mark.parametrize("tenant", ["", "Acme", "-a", "a:b", "a/b", "a b", "0" * 64])
def test_tenant_names_refused(tenant: str) -> None:
    # ':' would break the key layout (rb:q:<tenant>), '/' and spaces are never names
    with pytest.raises(QueueError, match=r"^submit: tenant .* is not a name"):
        check_tenant(tenant)


def test_job_ids_are_32_hex_digits() -> None:
    assert check_job_id("0123456789abcdef" * 2)
    with pytest.raises(QueueError, match=r"^job .*: not a job id"):
        check_job_id("rb:job:*")


def test_spec_is_canonical_json() -> None:
    assert encode_spec({"b": 1, "a": [1, 2]}) == '{"a":[1,2],"b":1}'


@pytest.mark.parametrize("spec, where", [
    ({"password": "hunter2"}, "password"),
    ({"push": {"auth": "dXNlcjpwYXNz"}}, "push.auth"),
    ({"registries": [{"host": "r", "IdentityToken": "x"}]}, "registries[0].IdentityToken"),
])
def test_spec_with_a_credential_value_is_refused(spec: dict[str, object], where: str) -> None:
    pattern = rf"^submit: spec key '{re.escape(where)}' .*credentials_ref"
    with pytest.raises(QueueError, match=pattern):
        encode_spec(spec)


def test_spec_must_be_json_and_small() -> None:
    with pytest.raises(QueueError, match=r"^submit: spec is not JSON data"):
        encode_spec({"x": object()})
    with pytest.raises(QueueError, match=r"^submit: spec is larger than"):
        encode_spec({"x": "y" * 70_000})


def test_credentials_ref_is_a_name_not_a_value() -> None:
    assert check_credentials_ref(None) == ""
    assert check_credentials_ref("registry.example/acme-push") == "registry.example/acme-push"
    with pytest.raises(QueueError, match=r"^submit: credentials_ref .* is not a name"):
        check_credentials_ref("user:pass word")


def test_outcomes_a_worker_may_report() -> None:
    check_outcome(JobState.SUCCESS, None)
    check_outcome(JobState.CANCELLED, None)
    check_outcome(JobState.TIMEOUT, FailureInfo("timeout", "ran longer than 1h", None))
    with pytest.raises(QueueError, match=r"^complete: EXPIRED is not a state"):
        check_outcome(JobState.EXPIRED, FailureInfo("expired", "x"))
    with pytest.raises(QueueError, match=r"^complete: FAILURE needs failure_info"):
        check_outcome(JobState.FAILURE, None)
    with pytest.raises(QueueError, match=r"^complete: SUCCESS with failure_info"):
        check_outcome(JobState.SUCCESS, FailureInfo("x", "y"))
