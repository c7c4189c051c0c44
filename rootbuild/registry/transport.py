"""How to reach registries (``--tls-verify``, ``--cert-dir``, the credentials file): a plain
value, in a module of its own so that the options of a build (and a build that never
talks to a registry) do not import the HTTP client.

Rules:
- No import beyond the standard library: ``engine/options.py`` and the CLI import this on
  every build; ``registry/client.py`` (httpx) re-exports it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class TransportOptions:
    """How to reach registries: ``--tls-verify`` and ``--cert-dir``."""

    tls_verify: bool = True
    cert_dir: Path | None = None
    # The only credentials file consulted (docker config.json format) instead of the
    # user's usual ones: the build service gives each push its job's own credentials and
    # every other request an empty file.
    auth_file: Path | None = None


DEFAULT_TRANSPORT = TransportOptions()
