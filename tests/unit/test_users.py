"""users.resolve_user: USER as runc's GetExecUser resolves it, from file contents."""

from __future__ import annotations

import pytest

from rootbuild.errors import StepError
from rootbuild.sandbox.users import Identity, resolve_user

PASSWD = (
    b"root:x:0:0:root:/root:/bin/sh\n"
    b"www-data:x:33:33:www-data:/var/www:/usr/sbin/nologin\n"
    b"broken line\n"
    b"app:x:1000:1000::/home/app:/bin/sh\n"
)
GROUP = b"root:x:0:\nwww-data:x:33:\nstaff:x:50:app,other\nadm:x:4:app\n"


def test_default_is_root() -> None:
    assert resolve_user("", PASSWD, GROUP) == Identity(0, 0, (0,), "/root", "root")


def test_name_gets_primary_and_supplementary_groups() -> None:
    assert resolve_user("app", PASSWD, GROUP) == Identity(1000, 1000, (1000, 4, 50),
                                                          "/home/app", "app")


def test_numeric_ids_need_no_entry() -> None:
    assert resolve_user("1234", PASSWD, GROUP) == Identity(1234, 0, (0,), "/", "")
    assert resolve_user("33", PASSWD, GROUP).home == "/var/www"
    assert resolve_user("1234:5678", None, None) == Identity(1234, 5678, (5678,), "/", "")


def test_explicit_group_is_the_only_group() -> None:
    assert resolve_user("app:staff", PASSWD, GROUP) == Identity(1000, 50, (50,), "/home/app",
                                                                "app")


@pytest.mark.parametrize(
    ("spec", "message"),
    [("ghost", "unable to find user ghost"), ("app:nogroup", "unable to find group nogroup")],
)
def test_unknown_names_fail(spec: str, message: str) -> None:
    with pytest.raises(StepError, match=message):
        resolve_user(spec, PASSWD, GROUP)
