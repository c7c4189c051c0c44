"""USER -> uid, gid and supplementary groups, from the image's /etc/passwd and /etc/group.

Job: resolve a Dockerfile ``USER`` value the way runc's ``user.GetExecUser`` does (what
``docker build`` runs), from file contents given as bytes: no NSS, nothing from the image is
loaded or run (SECURITY.md rule 3).

Rules (runc libcontainer/user):
- ``user[:group]``; each part a name or a number. A name must exist in the file; a number
  need not (uid given, gid 0, home "/").
- Without ``:group`` the primary gid is the passwd entry's, and the supplementary groups are
  the /etc/group entries that list the user's name; with ``:group`` that group is the only
  one.
- Files are data of at most ``MAX_FILE_BYTES``; malformed lines are skipped.
"""

from __future__ import annotations

from dataclasses import dataclass

from rootbuild.errors import StepError

MAX_FILE_BYTES = 4 << 20
MAX_ID = (1 << 32) - 2  # (uid_t)-1 means "unchanged" to setresuid


@dataclass(frozen=True)
class Identity:
    """Who a step runs as."""

    uid: int
    gid: int
    groups: tuple[int, ...] = ()
    home: str = "/"
    name: str = ""


@dataclass(frozen=True)
class _Passwd:
    name: str
    uid: int
    gid: int
    home: str


@dataclass(frozen=True)
class _Group:
    name: str
    gid: int
    members: tuple[str, ...]


def _lines(data: bytes | None) -> list[list[str]]:
    if not data:
        return []
    text = data[:MAX_FILE_BYTES].decode("utf-8", errors="replace")
    return [line.split(":") for line in text.splitlines() if line and not line.startswith("#")]


def _num(text: str) -> int | None:
    if not text.isdigit():
        return None
    value = int(text)
    return value if value <= MAX_ID else None


def parse_passwd(data: bytes | None) -> list[_Passwd]:
    out = []
    for f in _lines(data):
        if len(f) >= 7 and f[0]:
            uid, gid = _num(f[2]), _num(f[3])
            if uid is not None and gid is not None:
                out.append(_Passwd(f[0], uid, gid, f[5] or "/"))
    return out


def parse_group(data: bytes | None) -> list[_Group]:
    out = []
    for f in _lines(data):
        if len(f) >= 4 and f[0]:
            gid = _num(f[2])
            if gid is not None:
                out.append(_Group(f[0], gid, tuple(m for m in f[3].split(",") if m)))
    return out


def resolve_user(spec: str, passwd: bytes | None, group: bytes | None) -> Identity:
    """Resolve ``USER`` ``spec`` ("" means root) against the image's file contents."""
    user_part, _, group_part = (spec or "0").partition(":")
    if not user_part:
        user_part = "0"
    users = parse_passwd(passwd)
    entry: _Passwd | None = None
    uid = _num(user_part)
    if uid is None:
        entry = next((u for u in users if u.name == user_part), None)
        if entry is None:
            raise StepError(
                f"resolve USER {spec!r}: unable to find user {user_part}: "
                f"no matching entries in passwd file"
            )
    else:
        entry = next((u for u in users if u.uid == uid), None)
    if entry is not None:
        uid, gid, home, name = entry.uid, entry.gid, entry.home, entry.name
    else:
        assert uid is not None
        gid, home, name = 0, "/", ""
    groups = parse_group(group)
    if group_part:
        found = _num(group_part)
        if found is None:
            match = next((g for g in groups if g.name == group_part), None)
            if match is None:
                raise StepError(
                    f"resolve USER {spec!r}: unable to find group {group_part}: "
                    f"no matching entries in group file"
                )
            found = match.gid
        return Identity(uid, found, (found,), home, name)
    extra = tuple(sorted({g.gid for g in groups if name and name in g.members} - {gid}))
    return Identity(uid, gid, (gid, *extra), home, name)
