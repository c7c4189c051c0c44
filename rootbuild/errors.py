"""rootbuild's one error hierarchy.

Rules:
- Every error a user can cause (bad Dockerfile, missing file, bad flag, broken base image)
  is a ``RootbuildError``; the CLI prints ``str(error)`` as one line on stderr and exits
  non-zero without a traceback. Anything else escaping is a bug and keeps its traceback.
- Messages are lowercase "verb object: cause", prefixed by the Dockerfile location when
  there is one: ``Dockerfile:12: COPY: source "app/" not found in build context``.
- Wrap lower-level exceptions with ``raise ... from exc``.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, order=True)
class Location:
    """Where an instruction stands: the Dockerfile's display name and 1-based lines."""

    file: str
    line: int
    end_line: int = 0

    def __str__(self) -> str:
        return f"{self.file}:{self.line}"


class RootbuildError(Exception):
    """A failure the user can act on; ``str()`` is the whole message."""

    exit_code = 1

    def __init__(self, message: str, location: Location | None = None) -> None:
        self.message = message
        self.location = location
        super().__init__(f"{location}: {message}" if location else message)


class DockerfileError(RootbuildError):
    """The Dockerfile (or a flag that feeds it) is malformed."""


class ContextError(RootbuildError):
    """A build-context source is missing, ignored or escapes the context."""


class StageGraphError(RootbuildError):
    """A stage reference is unknown, a cycle exists, or ``--target`` names no stage."""


class ImageError(RootbuildError):
    """A base image, layer or archive is unreadable, corrupt or unsupported."""


class StoreError(RootbuildError):
    """The image store cannot be read or written."""


class StepError(RootbuildError):
    """A build step failed while running."""


class StepTimeout(StepError):
    """A RUN step ran longer than its time limit (``--timeout``)."""


class UsageError(RootbuildError):
    """The command line is wrong."""

    exit_code = 2


class SandboxError(RootbuildError):
    """The sandbox or the overlay a step runs on cannot be set up or torn down."""


class RegistryError(RootbuildError):
    """A registry refused, failed or lied: auth, missing manifests, bad blobs, transport."""
