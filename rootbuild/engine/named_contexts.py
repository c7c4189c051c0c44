"""Named build contexts: ``rootbuild build --build-context NAME=VALUE`` (buildx syntax).

Job: parse each value, hand the plan what each name stands for (``stages.contexts``
rules decide where a name is looked up), open the local directories, and turn a
directory into what ``FROM``, ``COPY --from`` and ``RUN --mount from=`` read.

Rules (``docker buildx build --build-context`` reference):
- ``NAME=DIR`` (a local directory), ``NAME=docker-image://REF`` (an image reference, in
  place of the one the Dockerfile wrote), ``NAME=oci-layout://PATH[:TAG][@DIGEST]`` (an
  image in a local OCI layout). Anything else (no ``=``, an empty or invalid name, a missing
  directory, a URL or git source) is a usage error naming the value.
- An image context resolves to that image (``StageBase(image=...)``): fetched and cached
  like any base (``engine.bases``), so ``FROM``, ``COPY --from`` and mounts get it alike.
- A directory context resolves to ``StageBase(context=NAME)``. Its files are read as the
  main context's are (through directory fds, no symlink followed out), minus what its own
  ``.dockerignore`` excludes (BuildKit reads only that file for a named context). As a
  ``FROM`` base it is one layer holding the directory's files owned by root, with an
  empty config (BuildKit gives a local source no image config).
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from rootbuild.context import BuildContext, load_context_ignore
from rootbuild.errors import UsageError
from rootbuild.image.refs import parse_base_ref
from rootbuild.stages.contexts import context_key
from rootbuild.stages.graph import StageBase

REMOTE_SCHEMES = ("http://", "https://", "git://", "git@", "ssh://", "github.com/")


@dataclass(frozen=True)
class NamedContext:
    """One ``--build-context``: ``name`` as given, and exactly one of ``directory`` (a
    local directory) and ``image`` (a reference ``BaseImages`` fetches)."""

    name: str
    directory: Path | None = None
    image: str | None = None

    @property
    def key(self) -> str:
        key = context_key(self.name)
        assert key is not None  # parse_build_context refused such names
        return key

    @property
    def base(self) -> StageBase:
        if self.image is not None:
            return StageBase(image=self.image)
        return StageBase(context=self.key)


def parse_build_context(text: str) -> NamedContext:
    """``NAME=VALUE`` as ``docker buildx build --build-context`` takes it."""
    name, sep, value = text.partition("=")
    where = f"--build-context {text!r}"
    if not sep or not name.strip() or not value.strip():
        raise UsageError(f"build: {where}: expected NAME=VALUE")
    name, value = name.strip(), value.strip()
    if context_key(name) is None:
        raise UsageError(f"build: {where}: invalid context name {name!r} (use lower case, "
                         "as an image name)")
    if value.startswith("docker-image://"):
        ref = value.removeprefix("docker-image://")
        if not ref:
            raise UsageError(f"build: {where}: docker-image:// needs an image name")
        try:
            parsed = parse_base_ref(ref)
        except UsageError as exc:
            raise UsageError(f"build: {where}: {exc.message}") from exc
        if parsed.transport != "store":
            raise UsageError(f"build: {where}: docker-image:// needs an image name, not {ref!r}")
        return NamedContext(name, image=ref)
    if value.startswith("oci-layout://"):
        return NamedContext(name, image=_oci_layout(value.removeprefix("oci-layout://"), where))
    if value.startswith(REMOTE_SCHEMES) or "://" in value:
        raise UsageError(
            f"build: {where}: remote contexts (URL, git) are not supported: give a local "
            "directory, docker-image://REF or oci-layout://PATH[:TAG][@DIGEST]"
        )
    directory = Path(value)
    if not directory.is_dir():
        raise UsageError(f"build: {where}: {value} is not a directory")
    return NamedContext(name, directory=directory.absolute())


def _oci_layout(rest: str, where: str) -> str:
    """``PATH[:TAG][@DIGEST]`` of an OCI layout as the ``oci:`` base reference the store
    imports (a digest names the index entry of that digest, and wins over a tag)."""
    rest, at, digest = rest.partition("@")
    if at and not re.fullmatch(r"sha256:[0-9a-f]{64}", digest):
        raise UsageError(f"build: {where}: {digest!r} is not a sha256:<64 hex> digest")
    path, colon, tag = rest.rpartition(":")
    if not colon or "/" in tag:
        path, tag = rest, ""
    if not path or not os.path.isfile(os.path.join(path, "index.json")):
        raise UsageError(f"build: {where}: {path or rest!r} is not an OCI layout directory "
                         "(no index.json)")
    name = digest if at else tag
    reference = f"oci:{os.path.abspath(path)}" + (f":{name}" if name else "")
    try:
        parse_base_ref(reference)
    except UsageError as exc:
        raise UsageError(f"build: {where}: {exc.message}") from exc
    return reference


def plan_contexts(contexts: Iterable[NamedContext]) -> dict[str, StageBase]:
    """What the plan looks names up in (a later ``--build-context`` of a name wins)."""
    return {ctx.key: ctx.base for ctx in contexts}


def check_contexts(contexts: Iterable[NamedContext]) -> None:
    """Refuse a directory context that is not (or no longer) a directory."""
    for ctx in contexts:
        if ctx.directory is not None and not ctx.directory.is_dir():
            raise UsageError(f"build: --build-context {ctx.name}: {ctx.directory} is not a "
                             "directory")


def open_contexts(
    contexts: Iterable[NamedContext], stack: contextlib.ExitStack
) -> Mapping[str, BuildContext]:
    """Open every directory context once for the build (closed by ``stack``), each with
    its own ``.dockerignore``, by key."""
    opened: dict[str, BuildContext] = {}
    for ctx in contexts:
        if ctx.directory is not None:
            ignore = load_context_ignore(ctx.directory)
            opened[ctx.key] = stack.enter_context(BuildContext.open(ctx.directory, ignore))
    return opened
