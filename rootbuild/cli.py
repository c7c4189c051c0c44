"""The `rootbuild` command line: argument parsing and reporting only.

Rules:
- Every subcommand turns its arguments into typed options and calls one function of the
  library; no build logic lives here.
- A ``RootbuildError`` becomes one line on stderr (``rootbuild: <message>``) and its exit
  code; no traceback. Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import re
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from rootbuild.errors import RootbuildError, StoreError, UsageError
from rootbuild.platform import Platform, host_platform
from rootbuild.progress import make_progress

if TYPE_CHECKING:  # trio, httpx, the registry client: imported by the commands that run them
    from rootbuild.engine.options import BuildOptions
    from rootbuild.engine.replay import Invocation
    from rootbuild.image.store import Store
    from rootbuild.progress import Progress
    from rootbuild.registry.transport import TransportOptions
    from rootbuild.sandbox.zygote import EarlyZygote

COMPRESSIONS = ("gzip", "zstd", "none")
VERSION = "rootbuild 0.1.0"


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(f"{self.prog}: {message}")


def _key_value(text: str) -> tuple[str, str | None]:
    key, sep, value = text.partition("=")
    if not key:
        raise UsageError(f"parse {text!r}: expected KEY[=VALUE]")
    return key, value if sep else None


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1: {text!r}")
    return value


def _add_root(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--root", type=Path, default=None,
        help="image store (default: $ROOTBUILD_ROOT, else $XDG_DATA_HOME/rootbuild)",
    )


def _add_transport(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--tls-verify", choices=("true", "false"), default="true",
                        help="verify registry TLS certificates (false: plain HTTP allowed)")
    parser.add_argument("--cert-dir", type=Path, default=None,
                        help="extra CA certificates (*.crt) for registries")


def _transport(args: argparse.Namespace) -> TransportOptions:
    from rootbuild.registry.transport import TransportOptions

    return TransportOptions(tls_verify=args.tls_verify == "true", cert_dir=args.cert_dir)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="rootbuild", description="Rootless container image builder.")
    parser.add_argument("--version", action="version", version=VERSION)
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    b = sub.add_parser("build", help="build an image from a Dockerfile")
    _add_root(b)
    b.add_argument("context", help="build context directory")
    b.add_argument("-f", "--file", dest="dockerfile", help="Dockerfile (- for stdin)")
    b.add_argument("-t", "--tag", dest="tags", action="append", default=[], help="name[:tag]")
    b.add_argument("--build-arg", dest="build_args", action="append", default=[],
                   metavar="K[=V]")
    b.add_argument("--target", help="build only up to this stage")
    b.add_argument("--check", action="store_true",
                   help="run the build checks (BuildKit's Dockerfile lint rules) and build "
                        "nothing; exit 1 only when # check=error=true and a check fired")
    b.add_argument("--call", default="build", metavar="build|check",
                   help="buildx's --call: build (default) or check (= --check)")
    b.add_argument("--build-context", dest="build_contexts", action="append", default=[],
                   metavar="NAME=VALUE",
                   help="named context for FROM/COPY --from/RUN --mount from=NAME: a "
                        "directory, docker-image://REF or oci-layout://PATH[:TAG][@DIGEST]")
    b.add_argument("--label", dest="labels", action="append", default=[], metavar="K=V")
    b.add_argument("--no-cache", action="store_true", help="do not use the step cache")
    b.add_argument("--no-cache-filter", action="append", default=[], metavar="STAGE",
                   help="do not use the step cache for these stages (repeat or comma-separate)")
    b.add_argument("--cache-from", action="append", default=[], metavar="SPEC",
                   help="import step cache: type=registry,ref=REF | type=local,src=DIR | REF")
    b.add_argument("--cache-to", action="append", default=[], metavar="SPEC",
                   help="export step cache: type=registry,ref=REF[,mode=min|max] | "
                        "type=local,dest=DIR[,mode=min|max]")
    b.add_argument("--output", "-o", dest="outputs", action="append", default=[],
                   metavar="DEST",
                   help="oci:DIR[:TAG], oci-archive:FILE[:TAG], "
                        "docker-archive:FILE[:NAME:TAG], dir:PATH")
    b.add_argument("--jobs", type=_positive_int, default=None, metavar="N",
                   help="build at most N stages at once (default: every stage whose "
                        "dependencies are built, as BuildKit)")
    b.add_argument("--compression", choices=COMPRESSIONS, default="gzip")
    b.add_argument("--platform", help="target platform (default: the host's)")
    b.add_argument("--iidfile", type=Path, help="write the image ID to this file")
    b.add_argument("--network", choices=("host", "none", "isolated"), default="",
                   help="RUN's network (default: host, as docker build; with --untrusted: "
                        "isolated, public egress only, or none where slirp4netns cannot "
                        "run; host is refused with --untrusted)")
    b.add_argument("--proc", choices=("fresh", "host-bind"), default="fresh",
                   help="RUN's /proc: fresh (default), or host-bind, the explicit weaker "
                        "fallback where a fresh /proc cannot be mounted (RUN can then see "
                        "the builder's processes; refused with --untrusted)")
    b.add_argument("--snapshotter", choices=("auto", "fuse", "overlay"), default="auto",
                   help="RUN's root filesystem: fuse (rootbuild's FUSE overlay), overlay "
                        "(the kernel's overlayfs in the build's user namespace), or auto "
                        "(default; `rootbuild doctor` says which and why)")
    b.add_argument("--untrusted", action="store_true",
                   help="treat the Dockerfile as hostile: refuse every weakening")
    b.add_argument("--timeout", type=float, default=None, metavar="SECONDS",
                   help="time limit for each RUN step")
    b.add_argument("--disk-limit", metavar="SIZE",
                   help="bytes the build's RUN steps may write in all, their cache "
                        "mounts included (e.g. 100MB; default with --untrusted: 10GB)")
    b.add_argument("--inode-limit", metavar="N",
                   help="files the build's RUN steps may create in all (default with "
                        "--untrusted: 1000000)")
    b.add_argument("--pids-limit", type=_positive_int, default=None, metavar="N",
                   help="processes a RUN step may have at once (--untrusted: 512)")
    b.add_argument("--memory", default=None, metavar="SIZE",
                   help="resident memory of a RUN step's processes, e.g. 512m "
                        "(--untrusted: 2g)")
    b.add_argument("--log-limit", default=None, metavar="SIZE",
                   help="output kept per RUN step; the rest is dropped (--untrusted: 2m)")
    b.add_argument("--slot", type=int, default=None, metavar="N",
                   help="map RUN's root to the N-th block of 65536 of your subordinate ids "
                        "(one slot per concurrent build: per-slot process counts, no "
                        "signals across slots)")
    b.add_argument("--secret", dest="secrets", action="append", default=[],
                   metavar="id=ID[,src=FILE|,env=VAR]",
                   help="a secret for RUN --mount=type=secret (never stored)")
    b.add_argument("--ssh", action="append", default=[], metavar="default|ID=SOCKET|ID=KEY",
                   help="an SSH agent socket or key files for RUN --mount=type=ssh")
    b.add_argument("--allow", action="append", default=[], metavar="ENTITLEMENT",
                   help="allow network.host, security.insecure or device (refused with "
                        "--untrusted)")
    b.add_argument("--push", action="store_true", help="push every -t name when built")
    b.add_argument("--format", choices=("oci", "docker"), default="oci",
                   help="media types of pushed images (docker: Docker schema 2)")
    b.add_argument("--digestfile", type=Path,
                   help="write the pushed manifest digest to this file")
    b.add_argument("--metadata-file", type=Path,
                   help="write the build result's metadata (digests, names) as JSON")
    b.add_argument("--pull", action="store_true",
                   help="always look base images up in their registry again")
    b.add_argument("--add-host", dest="add_hosts", action="append", default=[],
                   metavar="HOST:IP", help="an /etc/hosts entry for RUN (or HOST=IP)")
    b.add_argument("--shm-size", metavar="SIZE", help="size of RUN's /dev/shm (default 64m)")
    b.add_argument("--ulimit", dest="ulimits", action="append", default=[],
                   metavar="TYPE=SOFT[:HARD]", help="a resource limit for RUN")
    _add_transport(b)

    pl = sub.add_parser("pull", help="pull an image from a registry into the store")
    _add_root(pl)
    pl.add_argument("name")
    pl.add_argument("--platform", help="platform to pick from an index (default: the host's)")
    pl.add_argument("-q", "--quiet", action="store_true")
    _add_transport(pl)

    ps = sub.add_parser("push", help="push an image from the store to a registry")
    _add_root(ps)
    ps.add_argument("name")
    ps.add_argument("dest", nargs="?", help="destination reference (default: NAME)")
    ps.add_argument("--format", choices=("oci", "docker"), default="oci")
    ps.add_argument("--digestfile", type=Path)
    ps.add_argument("-q", "--quiet", action="store_true")
    _add_transport(ps)

    li = sub.add_parser("login", help="store credentials for a registry")
    li.add_argument("registry")
    li.add_argument("-u", "--username", required=True)
    li.add_argument("--password-stdin", action="store_true", required=True,
                    help="read the password from stdin (the only way: no secrets in argv)")
    _add_transport(li)

    lo = sub.add_parser("logout", help="remove stored credentials for a registry")
    lo.add_argument("registry")
    b.add_argument("--progress", choices=("auto", "plain", "tty"), default="auto")
    b.add_argument("-q", "--quiet", action="store_true",
                   help="no progress; print the image ID on success")

    i = sub.add_parser("images", help="list images in the store")
    _add_root(i)
    i.add_argument("-q", "--quiet", action="store_true", help="names only")
    i.add_argument("-a", "--all", action="store_true",
                   help="also list the step cache's entries")

    ins = sub.add_parser("inspect", help="print an image's manifest and config as JSON")
    _add_root(ins)
    ins.add_argument("name")

    r = sub.add_parser("rmi", help="remove image names from the store")
    _add_root(r)
    r.add_argument("names", nargs="+")

    p = sub.add_parser("prune", help="remove the step cache and blobs and layers no image uses")
    _add_root(p)
    p.add_argument("--keep-storage", metavar="SIZE",
                   help="keep the most recently used step cache and cache mounts up to "
                        "SIZE (e.g. 2GB)")

    sub.add_parser("doctor", help="check that RUN steps can work here, and say how to fix it")

    sy = sub.add_parser("system", help="manage the store as a whole")
    sys_sub = sy.add_subparsers(dest="system_command", required=True, metavar="COMMAND")
    rs = sys_sub.add_parser("reset", help="delete the whole store: images, layers, step "
                                          "cache, cache mounts, scratch")
    _add_root(rs)
    rs.add_argument("--force", action="store_true", help="do not ask for confirmation")

    from rootbuild.service.commands import add_parsers  # worker, submit, ..., tenant-cap

    add_parsers(sub, _add_transport)
    return parser


def _build_args(args: argparse.Namespace) -> dict[str, str]:
    build_args: dict[str, str] = {}
    for item in args.build_args:
        key, value = _key_value(item)
        if value is None:  # `--build-arg K` takes K from the environment, as docker does
            if key not in os.environ:
                continue
            value = os.environ[key]
        build_args[key] = value
    return build_args


def _replayed(args: argparse.Namespace, invocation: Invocation,
              fingerprint: Callable[[], str | None]) -> int | None:
    """An unchanged rebuild answered from its record (engine/replay.py): the steps shown
    as the build would show them, then tags and outputs; None when the record does not
    hold (the full build runs)."""
    from rootbuild.engine import replay
    from rootbuild.image.archives import export_image
    from rootbuild.image.refs import parse_output
    from rootbuild.image.store import Store, default_root

    if not replay.has_record(args.root or default_root(), invocation):
        return None  # (a store that does not exist is not made: bad flags leave none)
    outputs = [parse_output(o) for o in args.outputs]
    store = Store.open(args.root)
    with store.shared_lock():
        found = replay.load_valid(store, invocation, fingerprint)
        if found is None:
            return None
        progress = make_progress(args.progress, quiet=args.quiet)
        try:
            replay.show(found.events, progress)
            for tag in args.tags:
                store.tag(tag, found.image.manifest)
            for output in outputs:
                handle = progress.start(f"exporting to {output.text}")
                export_image(store, found.image, output)
                progress.done(handle)
        finally:
            progress.close()
    _report(args, found.summary, found.image.config.digest)
    return 0


def _report(args: argparse.Namespace, summary: str, image_id: str) -> None:
    """The end of a build's output: the checks' summary, --iidfile, the image id."""
    sys.stderr.write(summary)
    if args.iidfile:
        _write_file(args.iidfile, image_id, "iidfile")
    if args.quiet:
        print(image_id)
    else:
        names = ", ".join(args.tags) or "(untagged)"
        sys.stderr.write(f"built {image_id} {names}\n")


def _cmd_build(args: argparse.Namespace) -> int:
    from rootbuild.engine.replay import Invocation, context_fingerprint

    build_args = _build_args(args)
    invocation = Invocation.of(vars(args), build_args, args.outputs, VERSION)
    ignore = invocation.ignore_matcher if invocation is not None else None
    fingerprint: Callable[[], str | None] | None = None
    if invocation is not None and ignore is not None:  # an unchanged rebuild: none of below
        fingerprint = functools.cache(
            functools.partial(context_fingerprint, invocation.context_dir, ignore)
        )  # the context as it is before the build, taken once
        replayed = _replayed(args, invocation, fingerprint)
        if replayed is not None:
            return replayed
    dockerfile_text = sys.stdin.read() if args.dockerfile == "-" else None
    zygote = _early_zygote(args, invocation, dockerfile_text)
    try:
        return _full_build(args, build_args, dockerfile_text, invocation, fingerprint, zygote)
    finally:
        if zygote is not None:
            zygote.close()


_RUN_LINE = re.compile(rb"^[ \t]*run\b", re.IGNORECASE | re.MULTILINE)


def _early_zygote(args: argparse.Namespace, invocation: Invocation | None,
                  dockerfile_text: str | None) -> EarlyZygote | None:
    """The RUN steps' zygote (sandbox/zygote.py), launched before this process imports
    trio and the engine when the Dockerfile has a RUN line: the two interpreters start
    at once, on two CPUs. None when there is none (or it cannot start: the build then
    starts its own and says what is wrong)."""
    if args.check or args.call != "build":
        return None
    if dockerfile_text is not None:
        text = dockerfile_text.encode("utf-8", "surrogateescape")
    elif invocation is not None:
        text = invocation.dockerfile
    else:
        from rootbuild.context import find_dockerfile

        try:
            text = find_dockerfile(Path(args.context), args.dockerfile).read_bytes()
        except (OSError, RootbuildError):
            return None
    if not _RUN_LINE.search(text):
        return None
    from rootbuild.image.store import default_root
    from rootbuild.sandbox.zygote import EarlyZygote, zygote_env

    try:
        return EarlyZygote.launch(zygote_env(), str((args.root or default_root()).absolute()))
    except OSError:
        return None


def _full_build(args: argparse.Namespace, build_args: dict[str, str],
                dockerfile_text: str | None, invocation: Invocation | None,
                fingerprint: Callable[[], str | None] | None,
                zygote: EarlyZygote | None) -> int:
    import trio

    from rootbuild.cache.spec import parse_cache_from, parse_cache_to
    from rootbuild.engine import replay
    from rootbuild.engine.build import BuildOptions, build
    from rootbuild.engine.lint import render_summary
    from rootbuild.engine.named_contexts import parse_build_context
    from rootbuild.image.refs import parse_output
    from rootbuild.image.store import Store

    labels: dict[str, str] = {}
    for item in args.labels:
        key, value = _key_value(item)
        labels[key] = value or ""
    sde = os.environ.get("SOURCE_DATE_EPOCH") or build_args.get("SOURCE_DATE_EPOCH")
    try:
        epoch = int(sde) if sde else None
    except ValueError:
        raise UsageError(f"parse SOURCE_DATE_EPOCH {sde!r}: not an integer") from None
    options = BuildOptions(
        context_dir=Path(args.context),
        dockerfile=None if args.dockerfile == "-" else args.dockerfile,
        dockerfile_text=dockerfile_text,
        tags=tuple(args.tags),
        build_args=build_args,
        target=args.target,
        labels=labels,
        no_cache=args.no_cache,
        no_cache_filter=tuple(
            name.strip() for item in args.no_cache_filter for name in item.split(",")
            if name.strip()
        ),
        cache_from=tuple(parse_cache_from(text) for text in args.cache_from),
        cache_to=tuple(parse_cache_to(text) for text in args.cache_to),
        outputs=tuple(parse_output(o) for o in args.outputs),
        jobs=args.jobs,
        compression=args.compression,
        target_platform=Platform.parse(args.platform) if args.platform else host_platform(),
        source_date_epoch=epoch,
        network=args.network,
        proc=args.proc,
        snapshotter=args.snapshotter,
        untrusted=args.untrusted,
        step_timeout=args.timeout,
        transport=_transport(args),
        push=args.push,
        docker_format=args.format == "docker",
        build_contexts=tuple(parse_build_context(text) for text in args.build_contexts),
    )
    options = _with_secrets(options, args)
    options = _with_run_flags(options, args)
    options.validate()  # before the store is opened; build() checks again
    if args.call not in ("build", "check"):
        raise UsageError(f"build: --call={args.call}: only build and check are supported "
                         "(outline and targets are not implemented)")
    progress = make_progress(args.progress, quiet=args.quiet)
    store = Store.open(args.root)
    if args.check or args.call == "check":
        return _check(options, store, progress)
    recorder = replay.Recorder(progress)
    before = fingerprint() if fingerprint is not None else None
    try:
        result = trio.run(functools.partial(build, zygote=zygote), options, store, recorder)
    finally:
        progress.close()
    summary = render_summary(result.checks)
    ignore = invocation.ignore_matcher if invocation is not None else None  # parsed once
    if invocation is not None and ignore is not None and before is not None \
            and result.replay is not None:
        replay.save_if_unchanged(store, invocation, ignore, before, result.replay,
                                 result.image,
                                 recorder.rebuild_events(result.replay), summary)
    if args.digestfile:
        if not result.pushed:
            raise UsageError("build: --digestfile needs --push or a docker:// output")
        _write_file(args.digestfile, result.pushed[-1][1], "digestfile")
    if args.metadata_file:
        from rootbuild.engine.metadata import build_metadata

        doc = build_metadata(result, options.tags)
        _write_file(args.metadata_file, json.dumps(doc, indent=2) + "\n", "metadata-file")
    _report(args, summary, result.image_id)
    return 0


def _check(options: BuildOptions, store: Store, progress: Progress) -> int:
    """``build --check``: the warnings on stdout; the lint error (if asked for) raised."""
    import trio

    from rootbuild.engine.checking import check_build
    from rootbuild.engine.lint import render_check, violation

    try:
        report = trio.run(check_build, options, store, progress)
    finally:
        progress.close()
    sys.stdout.write(render_check(report))
    failure = violation(report)
    if failure is not None:
        raise failure
    return 0


def _with_secrets(options: BuildOptions, args: argparse.Namespace) -> BuildOptions:
    """``--secret`` values (read now, kept in memory), ``--ssh`` sources, ``--allow``."""
    import dataclasses

    from rootbuild.engine.entitlements import parse_allow
    from rootbuild.engine.secrets import load_secrets, parse_secret, parse_ssh

    sources = tuple(parse_secret(text, os.environ) for text in args.secrets)
    return dataclasses.replace(
        options, secrets=load_secrets(sources, os.environ),
        ssh=tuple(parse_ssh(text, os.environ) for text in args.ssh),
        allow=parse_allow(args.allow),
    )


def _with_run_flags(options: BuildOptions, args: argparse.Namespace) -> BuildOptions:
    """``--add-host``, ``--shm-size``, ``--ulimit`` (engine/run_flags.py) and ``--pull``."""
    import dataclasses

    from rootbuild.engine.run_flags import (
        merge_ulimits,
        parse_add_host,
        parse_shm_size,
        parse_ulimit,
    )

    return dataclasses.replace(
        options, add_hosts=tuple(h for text in args.add_hosts for h in parse_add_host(text)),
        shm_size=None if args.shm_size is None else parse_shm_size(args.shm_size),
        ulimits=merge_ulimits(parse_ulimit(text) for text in args.ulimits), pull=args.pull,
        disk_limit=_disk_limit(args), inode_limit=_inode_limit(args),
        pids_limit=args.pids_limit, memory_limit=_limit_size("--memory", args.memory),
        log_limit=_limit_size("--log-limit", args.log_limit), slot=args.slot,
    )


def _disk_limit(args: argparse.Namespace) -> int | None:
    from rootbuild.engine.disk_limit import parse_disk_limit

    return None if args.disk_limit is None else parse_disk_limit(args.disk_limit)


def _inode_limit(args: argparse.Namespace) -> int | None:
    from rootbuild.engine.disk_limit import parse_inode_limit

    return None if args.inode_limit is None else parse_inode_limit(args.inode_limit)


def _limit_size(flag: str, text: str | None) -> int | None:
    from rootbuild.engine.run_flags import positive_size

    return None if text is None else positive_size(flag, text, "512m, 2g")


def _write_file(path: Path, text: str, what: str) -> None:
    try:
        path.write_text(text)
    except OSError as exc:
        raise RootbuildError(f"write {what} {path}: {exc.strerror}") from exc


def _note(line: str) -> None:
    sys.stderr.write(line + "\n")


def _cmd_pull(args: argparse.Namespace) -> int:
    import trio

    from rootbuild.image.store import Store
    from rootbuild.registry.pull import pull

    store = Store.open(args.root)
    platform = Platform.parse(args.platform) if args.platform else host_platform()
    note = None if args.quiet else _note
    with store.shared_lock():
        image = trio.run(lambda: pull(store, args.name, platform, transport=_transport(args),
                                      progress=note))
    print(image.manifest.digest)
    return 0


def _cmd_push(args: argparse.Namespace) -> int:
    import trio

    from rootbuild.image.store import Store
    from rootbuild.registry.push import push

    store = Store.open(args.root)
    image = store.resolve(args.name)
    if image is None:
        raise RootbuildError(f"push {args.name}: no such image in the store")
    dest = args.dest or args.name
    note = None if args.quiet else _note
    with store.shared_lock():
        digest = trio.run(lambda: push(store, image, dest, transport=_transport(args),
                                       docker_format=args.format == "docker", progress=note))
    if args.digestfile:
        _write_file(args.digestfile, digest, "digestfile")
    print(digest)
    return 0


def _cmd_login(args: argparse.Namespace) -> int:
    import trio

    from rootbuild.registry.auth import Credentials, login

    password = sys.stdin.read().rstrip("\n")
    if not password:
        raise UsageError("login: empty password on stdin")
    creds = Credentials(args.username, password)
    trio.run(_check_login, args.registry, creds, _transport(args))
    path = login(args.registry, creds)
    print(f"login succeeded: credentials for {args.registry} in {path}")
    return 0


async def _check_login(registry: str, creds: object, transport: TransportOptions) -> None:
    """What `docker login` does before saving anything: GET /v2/ with the credentials; a
    401 refuses them."""
    from rootbuild.registry.auth import Credentials
    from rootbuild.registry.client import RegistryClient

    assert isinstance(creds, Credentials)
    async with (
        RegistryClient(registry, transport, credentials=creds) as client,
        client.request("GET", "/v2/", scope="", what=f"log in to {registry}"),
    ):
        pass


def _cmd_logout(args: argparse.Namespace) -> int:
    from rootbuild.registry.auth import logout

    if not logout(args.registry):
        raise RootbuildError(f"logout {args.registry}: not logged in")
    print(f"removed credentials for {args.registry}")
    return 0


def _cmd_images(args: argparse.Namespace) -> int:
    from rootbuild.image.store import Store

    store = Store.open(args.root)
    rows = store.images()
    if args.quiet:
        for name, _digest, _created in rows:
            print(name)
        return 0
    print(f"{'NAME':<40} {'MANIFEST':<20} CREATED")
    for name, digest, created in rows:
        print(f"{name:<40} {digest.removeprefix('sha256:')[:12]:<20} {created}")
    if args.all:
        _print_cache(store)
    return 0


def _print_cache(store: Store) -> None:
    """The step cache, most recently used first (``docker buildx du --verbose`` in brief)."""
    from rootbuild.cache.index import CacheIndex

    index = CacheIndex(store.root)
    try:
        entries = index.entries()
    finally:
        index.close()
    total = sum(e.size for e in entries)
    print(f"\nSTEP CACHE: {len(entries)} entries, {_human(total)} of layers")
    print(f"{'KEY':<14} {'SIZE':>9}  {'LAST USED':<20} STEP")
    for e in entries:
        used = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(e.last_used))
        step = e.description if len(e.description) <= 60 else e.description[:57] + "..."
        size = _human(e.size) if e.layer is not None else "-"
        print(f"{e.key.removeprefix('sha256:')[:12]:<14} {size:>9}  {used:<20} {step}")
    _print_cache_mounts(store)


def _print_cache_mounts(store: Store) -> None:
    """RUN --mount=type=cache contents, most recently used first (``buildx du``'s
    "exec.cachemount" records)."""
    from rootbuild.cache.mounts import CacheMounts

    infos = CacheMounts(store.root).list()
    print(f"\nCACHE MOUNTS: {len(infos)}, {_human(sum(i.size for i in infos))}")
    print(f"{'ID':<40} {'SIZE':>9}  {'LAST USED':<20} INSTANCE")
    for i in infos:
        used = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(i.last_used))
        print(f"{i.id:<40} {_human(i.size):>9}  {used:<20} {i.instance}")


def _human(size: int) -> str:
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f}{unit}" if unit == "B" else f"{value:.1f}{unit}"
        value /= 1024
    raise AssertionError("unreachable")


def _cmd_inspect(args: argparse.Namespace) -> int:
    from rootbuild.image.store import Store

    store = Store.open(args.root)
    image = store.resolve(args.name)
    if image is None:
        raise RootbuildError(f"inspect {args.name}: no such image in the store")
    doc = {
        "Name": args.name,
        "ManifestDigest": image.manifest.digest,
        "Id": image.config.digest,
        "Manifest": image.manifest_json,
        "Config": image.config_json,
    }
    print(json.dumps(doc, indent=2, sort_keys=True))
    return 0


def _cmd_rmi(args: argparse.Namespace) -> int:
    from rootbuild.image.store import Store

    store = Store.open(args.root)
    missing: list[str] = []
    for name in args.names:
        if store.untag(name):
            print(f"untagged: {name}")
        else:  # `docker rmi` reports "No such image" and exits 1, after the other names
            missing.append(name)
    if missing:
        raise StoreError(f"rmi {', '.join(missing)}: no such image in the store")
    return 0


def _cmd_prune(args: argparse.Namespace) -> int:
    from rootbuild.cache.prune import parse_size, prune
    from rootbuild.image.store import Store

    keep: int | None = None
    if args.keep_storage is not None:
        try:
            keep = parse_size(args.keep_storage)
        except ValueError as exc:
            raise UsageError(f"prune --keep-storage: {exc}") from None
    result = prune(Store.open(args.root), keep)
    print(f"removed {result.removed} step cache entries, kept {result.kept}")
    if result.mounts_removed or result.mounts_kept:  # a store that never had one: no line
        print(f"removed {result.mounts_removed} cache mounts, kept {result.mounts_kept}")
    print(f"reclaimed {result.freed} bytes")
    return 0


def _cmd_system(args: argparse.Namespace) -> int:
    from rootbuild.cache.reset import NO_STORE, reset
    from rootbuild.image.store import default_root

    root = (args.root or default_root()).absolute()

    def confirm(summary: str) -> bool:
        if args.force:
            return True
        if not sys.stdin.isatty():
            raise UsageError(f"system reset: refusing to delete {root} without confirmation: "
                             "stdin is not a terminal (add --force)")
        sys.stderr.write(f"{summary}\nAre you sure you want to continue? [y/N] ")
        sys.stderr.flush()
        answer = sys.stdin.readline()
        if not sys.stderr.isatty():  # the terminal echoed the answer's newline; a log did not
            sys.stderr.write("\n")
        return answer.strip().lower() in ("y", "yes")

    freed = reset(root, confirm)
    if freed is None:
        raise UsageError(f"system reset: cancelled; nothing removed from {root}")
    if freed == NO_STORE:
        print(f"no store at {root}; nothing to remove")
        return 0
    print(f"removed store {root}")
    print(f"reclaimed {freed} bytes")
    return 0


def _cmd_doctor(args: argparse.Namespace) -> int:
    from rootbuild.doctor import run_doctor

    return run_doctor()


_COMMANDS = {
    "doctor": _cmd_doctor,
    "pull": _cmd_pull,
    "push": _cmd_push,
    "login": _cmd_login,
    "logout": _cmd_logout,
    "build": _cmd_build,
    "images": _cmd_images,
    "inspect": _cmd_inspect,
    "rmi": _cmd_rmi,
    "prune": _cmd_prune,
    "system": _cmd_system,
}


def main(argv: Sequence[str] | None = None) -> int:
    if list(sys.argv[1:] if argv is None else argv) == ["--version"]:
        print(VERSION)  # before the parsers of every subcommand are built (issue 14: 50 ms)
        return 0
    from rootbuild.service.commands import COMMANDS as SERVICE_COMMANDS

    try:
        args = build_parser().parse_args(argv)
        return {**_COMMANDS, **SERVICE_COMMANDS}[args.command](args)
    except RootbuildError as exc:
        sys.stderr.write(f"rootbuild: {exc}\n")
        return exc.exit_code
    except KeyboardInterrupt:
        return _interrupted()
    except BaseExceptionGroup as group:
        # A Ctrl-C that arrives while trio runs a nursery (the stage scheduler, a RUN step)
        # comes out wrapped in an exception group; it is still only an interruption.
        interrupts, rest = group.split(KeyboardInterrupt)
        if interrupts is None or rest is not None:
            raise
        return _interrupted()


def _interrupted() -> int:
    sys.stderr.write("rootbuild: interrupted\n")
    return 130


if __name__ == "__main__":
    sys.exit(main())
