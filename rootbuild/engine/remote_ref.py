"""ADD's remote sources as words: which are URLs and which are Git repositories, the ref
and subdirectory a Git source names, the file name a URL gives, what a ``Last-Modified``
header means, and how a URL is shown without its credentials.

Rules (Docker's Dockerfile reference, "Adding files from a URL", "Adding files from a Git
repository", "ADD --checksum"; BuildKit's ``gitutil.ParseGitRef`` and dockerfile2llb):
- A Git source is ``git@host:path``, ``git://...``, ``ssh://...``, or an ``http(s)`` URL
  whose path ends in ``.git``; its fragment ``#ref:subdir`` names a branch, tag or commit
  (default: the remote's HEAD) and a subdirectory (default: the whole tree). Any other
  ``http(s)`` URL is a file.
- A URL file is named after the last segment of the URL's path (``__unnamed__`` when the
  path has none, as dockerfile2llb names it); ``Content-Disposition`` is not consulted.
- ``--checksum`` is ``sha256:<64 hex>`` for a URL and a commit id (or a prefix of one) for
  a Git source.
- Credentials in a URL (``https://user:token@host/...``) are never shown: ``redact``
  replaces the password as BuildKit's ``urlutil.RedactCredentials`` does.
- Pure: no I/O.
"""

from __future__ import annotations

import posixpath
import re
from dataclasses import dataclass
from datetime import UTC
from urllib.parse import unquote, urlsplit, urlunsplit

from rootbuild.errors import DockerfileError, Location

HTTP_PREFIXES = ("http://", "https://")
GIT_PREFIXES = ("git@", "git://", "ssh://")
UNNAMED = "__unnamed__"
_SHA256 = re.compile(r"^sha256:[0-9a-f]{64}$")
_COMMIT_PREFIX = re.compile(r"^[0-9a-f]{1,64}$")
_PASSWORD_IN_TEXT = re.compile(r"((?:https?|git|ssh)://[^/@:\s]*):[^/@\s]*@")
_TOKEN_IN_TEXT = re.compile(r"(https?://)[^/@:\s]+@")
_SCP = re.compile(r"^(?P<user>[A-Za-z0-9._-]+)@(?P<host>[^:/]+):(?P<path>[^/].*)$")


@dataclass(frozen=True)
class HttpSource:
    url: str

    @property
    def shown(self) -> str:
        return redact(self.url)


@dataclass(frozen=True)
class GitSource:
    remote: str  # what ``git fetch`` is given (credentials kept: git needs them)
    ref: str  # "" for the remote's HEAD
    subdir: str  # "" for the whole tree; no leading or trailing "/"

    @property
    def shown(self) -> str:
        fragment = self.ref + (":" + self.subdir if self.subdir else "")
        return redact(self.remote) + ("#" + fragment if fragment else "")


RemoteSource = HttpSource | GitSource


def parse_remote(src: str, where: Location | None = None) -> RemoteSource:
    """The source ``src`` (already expanded) names; ``DockerfileError`` when malformed."""
    if src.startswith(HTTP_PREFIXES):
        base = src.partition("#")[0]
        path = urlsplit(base).path
        if not path.endswith(".git"):
            return HttpSource(src)
        return _git(src, where)
    if src.startswith(GIT_PREFIXES):
        return _git(src, where)
    raise DockerfileError(f'ADD: "{src}" is not a URL or Git source', where)


def _git(src: str, where: Location | None) -> GitSource:
    remote, _, fragment = src.partition("#")
    ref, _, subdir = fragment.partition(":")
    subdir = posixpath.normpath("/" + subdir).strip("/") if subdir else ""
    if src.startswith("git@"):
        if not _SCP.match(remote):
            raise DockerfileError(f'ADD: invalid Git source "{redact(src)}"', where)
    else:
        parts = urlsplit(remote)
        if not parts.hostname:
            raise DockerfileError(f'ADD: invalid Git source "{redact(src)}": no host', where)
    if ref.startswith("-") or any(c in ref for c in " \t\n~^?*[\\") or ".." in ref:
        raise DockerfileError(f'ADD: invalid Git ref "{ref}" in "{redact(src)}"', where)
    return GitSource(remote=remote, ref=ref, subdir=subdir)


def redact(url: str) -> str:
    """``url`` with its password (or a lone token user) replaced by ``xxxxx``."""
    if not url.startswith((*HTTP_PREFIXES, "git://", "ssh://")):
        return url
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    userinfo, _, hostport = parts.netloc.rpartition("@")
    user, colon, _ = userinfo.partition(":")
    shown = f"{user}:xxxxx" if colon else "xxxxx"
    if parts.scheme == "ssh" and not colon:
        shown = user  # ssh://git@host: a user name, not a secret
    return urlunsplit(parts._replace(netloc=f"{shown}@{hostport}"))


def strip_credentials(url: str) -> str:
    """``url`` without any userinfo (what may be written into an image or the store)."""
    if not url.startswith((*HTTP_PREFIXES, "git://")):
        return url
    parts = urlsplit(url)
    hostport = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=hostport))


def file_name(url: str) -> str:
    """The name ``ADD <url> <dir>/`` gives the file: the URL path's last segment."""
    path = urlsplit(url.partition("#")[0]).path
    base = posixpath.basename(path.rstrip("/")) if path.strip("/") else ""
    base = unquote(base)
    if not base or base in (".", "..") or "/" in base or "\x00" in base:
        return UNNAMED
    return base


def http_mtime(value: str | None) -> int | None:
    """A ``Last-Modified`` value (RFC 9110 HTTP-date, or the obsolete forms) as epoch
    seconds; None when absent or unparsable (the file then gets the build's time)."""
    if not value:
        return None
    from email.utils import parsedate_to_datetime  # email and calendar: only for ADD <url>

    try:
        when = parsedate_to_datetime(value.strip())
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:  # HTTP dates are GMT
        when = when.replace(tzinfo=UTC)
    seconds = int(when.timestamp())
    return seconds if seconds >= 0 else None


def check_checksum(source: RemoteSource, checksum: str, where: Location | None) -> str:
    """``--checksum`` validated for its source kind (lowercased)."""
    value = checksum.strip().lower()
    if isinstance(source, HttpSource):
        algorithm, sep, _ = value.partition(":")
        if sep and algorithm != "sha256":
            raise DockerfileError(
                f"ADD: unsupported digest algorithm {algorithm!r} in --checksum "
                "(sha256 is the only one)", where)
        if not _SHA256.match(value):
            raise DockerfileError(f"ADD: invalid checksum digest format: {checksum}", where)
        return value
    if not _COMMIT_PREFIX.match(value):
        raise DockerfileError(
            f"ADD: invalid --checksum {checksum!r} for a Git source: it must be a commit "
            "id or a prefix of one", where)
    return value


def redact_text(text: str) -> str:
    """``text`` (a Dockerfile line) with every URL's credentials replaced, for progress
    lines and the step cache's descriptions."""
    return _TOKEN_IN_TEXT.sub(r"\1xxxxx@", _PASSWORD_IN_TEXT.sub(r"\1:xxxxx@", text))
