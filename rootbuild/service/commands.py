"""The service's subcommands: ``worker``, ``submit``, ``status``, ``logs``, ``cancel``.

Job: their argument parsers (``add_parsers``, called by ``cli.build_parser``) and the
functions ``cli.main`` dispatches to (``COMMANDS``). Each turns its arguments into one call
of the queue or the worker.

Rules:
- Every command takes ``--redis URL`` (default ``$ROOTBUILD_REDIS``); errors are
  ``RootbuildError``s, so the CLI prints one line and exits non-zero.
- Importing this module imports no Redis client: the parsers are built for every
  ``rootbuild`` run; the queue is imported when a service command runs.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from rootbuild.errors import UsageError

if TYPE_CHECKING:
    from rootbuild.service.queue import RedisQueue


def _add_redis(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--redis", default=None, metavar="URL",
                        help="the queue: redis://HOST:PORT/DB or unix:///PATH "
                             "(default: $ROOTBUILD_REDIS)")


def _size(text: str) -> int:
    from rootbuild.cache.prune import parse_size

    try:
        return parse_size(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_parsers(sub: argparse._SubParsersAction,  # type: ignore[type-arg]
                add_transport: Callable[[argparse.ArgumentParser], None]) -> None:
    w = sub.add_parser("worker", help="run builds from the queue (the build service)")
    _add_redis(w)
    w.add_argument("--concurrency", type=int, default=1, help="builds at once (default 1)")
    w.add_argument("--store", type=Path, default=None,
                   help="the worker's storage; each tenant's store is STORE/tenants/NAME "
                        "(default: $ROOTBUILD_ROOT/service, else the default store's)")
    w.add_argument("--name", default=None, help="worker name (default: HOST-PID)")
    w.add_argument("--credentials-dir", type=Path, default=None,
                   help="push credentials: DIR/<credentials_ref>.json (docker config.json)")
    w.add_argument("--secrets-dir", type=Path, default=None, metavar="DIR",
                   help="build secrets: DIR/<tenant>/<id> is the value of secret ID of a job "
                        "of that tenant (submit --secret ID)")
    w.add_argument("--max-context", type=_size, default=None, metavar="SIZE",
                   help="largest context blob accepted (default 64MiB)")
    w.add_argument("--timeout", type=float, default=3600.0, metavar="SECONDS",
                   help="time limit of each RUN step (default 3600)")
    w.add_argument("--job-timeout", type=float, default=4 * 3600.0, metavar="SECONDS",
                   help="time limit of a whole job (default 14400)")
    w.add_argument("--grace", type=float, default=30.0, metavar="SECONDS",
                   help="after SIGTERM, running builds get this long (default 30)")
    w.add_argument("--tenant-cap", type=int, default=2, metavar="N",
                   help="builds a tenant without a cap of its own (rootbuild tenant-cap) may "
                        "run at once across all workers; give every worker the same "
                        "(default 2)")
    w.add_argument("--heartbeat", type=float, default=2.0, metavar="SECONDS",
                   help="lease renewal interval; a lease is lost after 3 missed (default 2)")
    w.add_argument("--slot-base", type=int, default=0, metavar="N",
                   help="build slot of the first concurrent build: build i (0..concurrency-1) "
                        "maps RUN's root to block N+i of 65536 ids of your /etc/subuid and "
                        "/etc/subgid ranges (its own host uids: processes counted per slot, "
                        "no signals across slots); two workers of one user on one machine "
                        "need disjoint slots, e.g. --slot-base 0 and --slot-base 4 with "
                        "--concurrency 4 (default 0)")
    w.add_argument("--pids-limit", type=int, default=None, metavar="N",
                   help="processes a job's RUN step may have at once (default 512)")
    w.add_argument("--memory", default=None, metavar="SIZE",
                   help="resident memory of a job's RUN step, e.g. 512m (default 2g)")
    w.add_argument("--disk-limit", default=None, metavar="SIZE",
                   help="bytes a job's new layers (RUN, COPY, ADD) may hold in all (default 10GB)")
    w.add_argument("--log-limit", default=None, metavar="SIZE",
                   help="output kept per RUN step; the rest is dropped (default 2m)")
    add_transport(w)

    s = sub.add_parser("submit", help="queue a build for the build service")
    _add_redis(s)
    s.add_argument("context", help="build context directory")
    s.add_argument("--tenant", required=True)
    s.add_argument("-f", "--file", dest="dockerfile", help="Dockerfile")
    s.add_argument("-t", "--tag", dest="tags", action="append", default=[], help="name[:tag]")
    s.add_argument("--push", action="store_true", help="push every -t name when built")
    s.add_argument("--build-arg", dest="build_args", action="append", default=[],
                   metavar="K=V")
    s.add_argument("--target", help="build only up to this stage")
    s.add_argument("--credentials-ref", default=None, metavar="NAME",
                   help="the worker's credentials to push with (a name, never a secret)")
    s.add_argument("--secret", dest="secrets", action="append", default=[], metavar="ID",
                   help="a secret for RUN --mount=type=secret,id=ID: only the id is sent; "
                        "the worker reads the value from its --secrets-dir (repeatable)")
    s.add_argument("--timeout", type=float, default=None, metavar="SECONDS",
                   help="the job's time limit (the worker's own limit still applies)")
    s.add_argument("--max-context", type=_size, default=None, metavar="SIZE",
                   help="refuse a context larger than SIZE compressed (default 64MiB)")

    st = sub.add_parser("status", help="a queued build's state")
    _add_redis(st)
    st.add_argument("id")
    st.add_argument("--json", action="store_true", help="the whole job record as JSON")

    lg = sub.add_parser("logs", help="a queued build's log")
    _add_redis(lg)
    lg.add_argument("id")
    lg.add_argument("--follow", action="store_true", help="until the job ends")
    lg.add_argument("--after", default="0-0", metavar="ENTRY", help="resume after ENTRY")

    c = sub.add_parser("cancel", help="cancel a queued or running build")
    _add_redis(c)
    c.add_argument("id")

    t = sub.add_parser("tenant-cap", help="how many of a tenant's builds run at once, "
                                          "across every worker")
    _add_redis(t)
    t.add_argument("tenant")
    t.add_argument("cap", nargs="?", type=int, default=None, metavar="N",
                   help="set it to N (without N: print it)")


def _queue(args: argparse.Namespace, heartbeat: float | None = None,
           tenant_cap: int | None = None) -> RedisQueue:
    from rootbuild.service.jobs import QueueConfig
    from rootbuild.service.queue import RedisQueue, connect

    url = args.redis or os.environ.get("ROOTBUILD_REDIS")
    if not url:
        raise UsageError(f"{args.command}: no queue: pass --redis URL or set $ROOTBUILD_REDIS")
    try:
        client = connect(url)
    except ValueError as exc:
        raise UsageError(f"{args.command}: --redis {url!r}: {exc}") from None
    config = QueueConfig()
    if heartbeat is not None:
        config = dataclasses.replace(config, heartbeat=heartbeat)
    if tenant_cap is not None:
        config = dataclasses.replace(config, tenant_cap=tenant_cap)
    return RedisQueue(client, config)


def _cmd_worker(args: argparse.Namespace) -> int:
    import trio

    from rootbuild.image.store import default_root
    from rootbuild.registry.client import TransportOptions
    from rootbuild.service.context_blob import DEFAULT_MAX_CONTEXT
    from rootbuild.service.trio_queue import TrioQueue
    from rootbuild.service.worker import Worker, WorkerConfig

    if args.concurrency < 1:
        raise UsageError(f"worker: --concurrency must be at least 1, not {args.concurrency}")
    for name in ("timeout", "job_timeout", "heartbeat"):
        if getattr(args, name) <= 0:
            raise UsageError(f"worker: --{name.replace('_', '-')} must be positive")
    if args.grace < 0:
        raise UsageError("worker: --grace must not be negative")
    if args.pids_limit is not None and args.pids_limit <= 0:
        raise UsageError(f"worker: --pids-limit must be positive, not {args.pids_limit}")
    from rootbuild.service.slots import check_worker_slots

    check_worker_slots(args.slot_base, args.concurrency)  # before connecting: one line
    if args.secrets_dir is not None and not args.secrets_dir.is_dir():
        raise UsageError(f"worker: --secrets-dir {args.secrets_dir}: not a directory")
    if args.tenant_cap < 1:
        raise UsageError(f"worker: --tenant-cap must be at least 1, not {args.tenant_cap}")
    queue = _queue(args, args.heartbeat, args.tenant_cap)
    store = args.store or default_root() / "service"
    fields = {"name": args.name} if args.name else {}
    config = WorkerConfig(
        store=store.absolute(), concurrency=args.concurrency,
        credentials_dir=args.credentials_dir,
        max_context=args.max_context or DEFAULT_MAX_CONTEXT,
        step_timeout=args.timeout, job_timeout=args.job_timeout, grace=args.grace,
        slot_base=args.slot_base,
        transport=TransportOptions(tls_verify=args.tls_verify == "true",
                                   cert_dir=args.cert_dir),
        pids_limit=args.pids_limit, memory_limit=_worker_size("--memory", args.memory),
        disk_limit=_worker_size("--disk-limit", args.disk_limit),
        log_limit=_worker_size("--log-limit", args.log_limit),
        secrets_dir=None if args.secrets_dir is None else args.secrets_dir.absolute(),
        **fields,
    )
    trio.run(Worker(TrioQueue(queue), config).run)
    return 0


def _worker_size(flag: str, text: str | None) -> int | None:
    from rootbuild.engine.run_flags import positive_size

    try:
        return None if text is None else positive_size(flag, text, "512m, 10GB")
    except UsageError as exc:
        raise UsageError("worker: " + str(exc).removeprefix("build: ")) from None


def _cmd_submit(args: argparse.Namespace) -> int:
    from rootbuild.service.context_blob import DEFAULT_MAX_CONTEXT, pack_context, upload_context
    from rootbuild.service.jobs import check_credentials_ref, check_tenant
    from rootbuild.service.tenant_secrets import (
        MAX_SECRETS,
        parse_submit_secret,
    )
    from rootbuild.service.worker import JobSpec

    check_tenant(args.tenant)  # before packing: a bad name fails fast
    secret_ids = tuple(dict.fromkeys(parse_submit_secret(text) for text in args.secrets))
    if len(secret_ids) > MAX_SECRETS:
        raise UsageError(f"submit: {len(secret_ids)} secrets named, at most {MAX_SECRETS}")
    check_credentials_ref(args.credentials_ref)
    if args.push and not args.tags:
        raise UsageError("submit: --push needs at least one -t NAME to push to")
    if args.timeout is not None and args.timeout <= 0:
        raise UsageError("submit: --timeout must be positive")
    build_args: dict[str, str] = {}
    for item in args.build_args:
        key, sep, value = item.partition("=")
        if not key or not sep:
            raise UsageError(f"submit: --build-arg {item!r}: expected K=V")
        build_args[key] = value
    packed = pack_context(Path(args.context), args.dockerfile,
                          args.max_context or DEFAULT_MAX_CONTEXT)
    queue = _queue(args)
    spec = JobSpec(packed.digest, packed.dockerfile, tuple(args.tags), args.push,
                   build_args, args.target, args.timeout, packed.dockerignore,
                   secret_ids)
    upload_context(queue.client, queue.prefix, packed, queue.config.queue_ttl)
    print(queue.submit(args.tenant, spec.to_json(), args.credentials_ref))
    return 0


def _cmd_status(args: argparse.Namespace) -> int:
    record = _queue(args).status(args.id)
    if args.json:
        print(json.dumps(record.to_json(), indent=2, sort_keys=True))
        return 0
    line = f"{record.id} {record.state.value} tenant={record.tenant} attempt={record.attempt}"
    if record.worker:
        line += f" worker={record.worker}"
    print(line)
    if record.failure_info is not None:
        info = record.failure_info
        where = f" at {info.step}" if info.step else ""
        print(f"{info.reason}{where}: {info.message}")
    for ref, digest in sorted(record.result.get("pushed", {}).items()):
        print(f"pushed {ref}@{digest}")
    return 0


def _cmd_logs(args: argparse.Namespace) -> int:
    import trio

    queue = _queue(args)
    queue.status(args.id)  # an unknown job is an error, not an empty log

    def show(data: bytes) -> None:
        sys.stdout.buffer.write(data)
        sys.stdout.flush()

    if not args.follow:
        after = args.after
        while True:
            entries = queue.read_log(args.id, after)
            if not entries:
                return 0
            for entry in entries:
                show(entry.data if entry.kind == "out" else b"# " + entry.data + b"\n")
                after = entry.id

    async def follow() -> None:
        from rootbuild.service.trio_queue import TrioQueue

        async for entry in TrioQueue(queue).follow_log(args.id, args.after):
            show(entry.data if entry.kind == "out" else b"# " + entry.data + b"\n")

    trio.run(follow)
    return 0


def _cmd_cancel(args: argparse.Namespace) -> int:
    state = _queue(args).cancel(args.id)
    print(f"{args.id} {state.value}" + (" (cancel requested)" if state.value == "WORKING"
                                         else ""))
    return 0


def _cmd_tenant_cap(args: argparse.Namespace) -> int:
    queue = _queue(args)
    if args.cap is None:
        cap = queue.tenant_cap(args.tenant)
        print(f"{args.tenant} {cap}" if cap is not None
              else f"{args.tenant} default (each worker's --tenant-cap)")
        return 0
    if args.cap < 1:
        raise UsageError(f"tenant-cap: N must be at least 1, not {args.cap}")
    queue.set_tenant_cap(args.tenant, args.cap)
    print(f"{args.tenant} {args.cap}")
    return 0


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "worker": _cmd_worker,
    "submit": _cmd_submit,
    "status": _cmd_status,
    "logs": _cmd_logs,
    "cancel": _cmd_cancel,
    "tenant-cap": _cmd_tenant_cap,
}
