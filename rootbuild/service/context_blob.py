"""A job's build context as a blob in Redis: packed by ``submit``, verified and unpacked
by the worker.

Job: ``pack_context`` (the client: the context directory as a gzip tarball, ``.dockerignore``
applied), ``upload_context`` (the tarball under ``<prefix>:ctx:<sha256>``, size-capped,
expiring a day after the job's queue_ttl), ``fetch_context`` and ``unpack_context`` (the worker:
size checked before the read, digest checked before a single byte is used, extracted by
rootbuild's own layer extractor).

Rules:
- The blob is keyed by its digest and the job spec names the digest; the worker refuses a
  blob that is larger than its cap or whose sha256 differs (SECURITY.md rule 7).
- Extraction is ``image.layer_extract.extract_layer`` (SECURITY.md rule 2: tar headers
  parsed, every entry written by rootbuild through directory fds, ``..``/absolute names and
  links out refused, an uncompressed-size cap against bombs); never ``tarfile.extractall``.
  Owners and special bits in the tarball are dropped (the extractor records them as layer
  metadata, which a build context does not use).
- The client applies the ignore file (``<Dockerfile>.dockerignore`` or ``.dockerignore``)
  and sends its text in the spec with the Dockerfile's (so ``-f`` may name a file outside
  the context); the worker puts both beside, not in, the unpacked context, so the build
  applies the very same rules again (a no-op) and, as with ``docker build``, the ignore
  file is part of the context unless it excludes itself.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import stat
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import redis

from rootbuild.context import find_dockerfile, ignore_file_for, load_ignore
from rootbuild.errors import ContextError, ImageError, RootbuildError
from rootbuild.image.layer_extract import extract_layer
from rootbuild.service.jobs import QueueError

DEFAULT_MAX_CONTEXT = 64 << 20  # bytes of the compressed tarball
MAX_UNPACKED = 4 << 30  # bytes a context may inflate to (decompression bombs)


class ContextBlobError(RootbuildError):
    """The uploaded context is missing, too big, corrupt or not what the spec names."""


@dataclass(frozen=True)
class PackedContext:
    data: bytes
    digest: str  # "sha256:<hex>" of ``data``
    dockerfile: str  # the Dockerfile's text
    dockerignore: str = ""  # the text of the ignore file applied ("" for none)


def pack_context(context_dir: Path, dockerfile: str | None,
                 max_bytes: int = DEFAULT_MAX_CONTEXT) -> PackedContext:
    """The context as a deterministic gzip tarball (sorted names, owner 0, mtime kept)."""
    if not context_dir.is_dir():
        raise ContextError(f"submit: context {context_dir} is not a directory")
    path = find_dockerfile(context_dir, dockerfile)
    try:
        text = path.read_bytes().decode("utf-8", "surrogateescape")
    except OSError as exc:
        raise ContextError(f"read Dockerfile {path}: {exc.strerror}") from exc
    ignore = load_ignore(context_dir, path)  # parsed (and checked) first
    ignore_file = ignore_file_for(context_dir, path)
    ignore_text = ""
    if ignore_file is not None:
        try:
            ignore_text = ignore_file.read_bytes().decode("utf-8", "surrogateescape")
        except OSError as exc:
            raise ContextError(f"read {ignore_file}: {exc.strerror}") from exc
    buf = io.BytesIO()
    with gzip.GzipFile(fileobj=buf, mode="wb", mtime=0, compresslevel=6) as gz, \
            tarfile.open(fileobj=cast(io.BufferedIOBase, gz), mode="w",
                         format=tarfile.PAX_FORMAT) as tf:
        for rel in _walk(context_dir):
            if ignore.ignored(rel):
                continue
            info = tf.gettarinfo(str(context_dir / rel), arcname=rel)
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            if info.isreg():
                with open(context_dir / rel, "rb") as f:
                    tf.addfile(info, f)
            elif info.isdir() or info.issym():
                tf.addfile(info)
            # sockets, fifos and devices are not context content
            if buf.tell() > max_bytes:
                raise ContextError(
                    f"submit: context {context_dir} is larger than {max_bytes} bytes "
                    "compressed (add a .dockerignore, or raise --max-context)")
    data = buf.getvalue()
    if len(data) > max_bytes:
        raise ContextError(f"submit: context {context_dir} is larger than {max_bytes} bytes "
                           "compressed (add a .dockerignore, or raise --max-context)")
    return PackedContext(data, "sha256:" + hashlib.sha256(data).hexdigest(), text,
                         ignore_text)


def _walk(root: Path) -> list[str]:
    """Every path below ``root`` (relative, posix), sorted, not following symlinks."""
    found: list[str] = []

    def visit(rel: str) -> None:
        here = root / rel if rel else root
        for name in sorted(os.listdir(here)):
            sub = f"{rel}/{name}" if rel else name
            found.append(sub)
            if stat.S_ISDIR(os.lstat(root / sub).st_mode):
                visit(sub)

    visit("")
    return found


def blob_key(prefix: str, digest: str) -> str:
    return f"{prefix}:ctx:{digest}"


BLOB_LIFETIME_AFTER_TTL = 24 * 3600.0  # seconds a blob outlives its job's queue_ttl


def upload_context(client: redis.Redis, prefix: str, packed: PackedContext,
                   queue_ttl: float) -> None:
    """Store the blob under its digest. It expires a day after the job's ``queue_ttl``
    (time to wait in the queue, build, and be rebuilt after a lost lease), not with the
    job record's week-long retention: blobs are the big keys of Redis's memory. A
    re-upload of the same digest only extends its life."""
    key = blob_key(prefix, packed.digest)
    lifetime_ms = int((queue_ttl + BLOB_LIFETIME_AFTER_TTL) * 1000)
    try:
        client.set(key, packed.data, px=lifetime_ms)
    except (redis.ConnectionError, redis.TimeoutError) as exc:
        raise QueueError(f"submit: cannot reach redis: {exc}") from exc
    except redis.ResponseError as exc:
        raise QueueError(f"submit: redis refused the context: {exc}") from exc


def fetch_context(client: redis.Redis, prefix: str, digest: str, max_bytes: int) -> bytes:
    """The blob named by the spec, its size checked before it is read and its digest after."""
    if not isinstance(digest, str) or not digest.startswith("sha256:") \
            or len(digest) != 71:
        raise ContextBlobError(f"context: spec names no sha256 digest ({digest!r})")
    key = blob_key(prefix, digest)
    try:
        size = int(client.strlen(key))
        if size == 0:
            raise ContextBlobError(f"context {digest}: not in the queue (expired or never "
                                   "uploaded)")
        if size > max_bytes:
            raise ContextBlobError(
                f"context {digest}: {size} bytes is over the worker's limit of {max_bytes}")
        data = cast(bytes | None, client.get(key))
    except (redis.ConnectionError, redis.TimeoutError) as exc:
        raise QueueError(f"context {digest}: cannot reach redis: {exc}") from exc
    if data is None:
        raise ContextBlobError(f"context {digest}: not in the queue (expired)")
    if len(data) > max_bytes:
        raise ContextBlobError(
            f"context {digest}: {len(data)} bytes is over the worker's limit of {max_bytes}")
    got = "sha256:" + hashlib.sha256(data).hexdigest()
    if got != digest:
        raise ContextBlobError(f"context {digest}: digest mismatch (the blob is {got})")
    return data


def unpack_context(data: bytes, dest: Path) -> None:
    """Extract the verified tarball into ``dest`` (which must not exist yet)."""
    try:
        extract_layer(io.BytesIO(data), dest, media_type_or_compression="auto",
                      layer_name="build context", max_bytes=MAX_UNPACKED)
    except ImageError as exc:
        raise ContextBlobError(f"context: {exc.message}") from exc
