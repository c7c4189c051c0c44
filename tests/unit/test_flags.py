"""Instruction flags, RUN --mount CSV, Go durations (BuildKit bflag.go, runmount.go)."""

from __future__ import annotations

import pytest

from rootbuild.dockerfile import flags as fl
from rootbuild.dockerfile.instructions import Mount
from rootbuild.errors import DockerfileError


@pytest.mark.parametrize(
    ("rest", "words", "remaining"),
    [
        ("--from=build /a /b", ["--from=build"], "/a /b"),
        ("--link --chown=1:2 a b", ["--link", "--chown=1:2"], "a b"),
        ('--mount="type=cache,target=/x y" echo', ["--mount=type=cache,target=/x y"], "echo"),
        ("--a=x\\ y b", ["--a=x y"], "b"),
        ("-- --not-a-flag", [], " --not-a-flag"),
        ("-x --from=a", [], "-x --from=a"),
        ("echo --flag", [], "echo --flag"),
        ("--link", ["--link"], ""),
        ("   ", [], ""),
    ],
)
def test_split_flags(rest: str, words: list[str], remaining: str) -> None:
    assert fl.split_flags(rest) == (words, remaining)


ACCEPTED: dict[str, fl.FlagKind] = {"from": "string", "link": "bool", "exclude": "strings"}


def test_parse_flags_types() -> None:
    parsed = fl.parse_flags(
        ["--from=build", "--link", "--exclude=*.md", "--exclude=.git"], ACCEPTED
    )
    assert parsed.string("from") == "build"
    assert parsed.boolean("link") is True
    assert parsed.strings("exclude") == ("*.md", ".git")
    assert fl.parse_flags(["--link=false"], ACCEPTED).boolean("link") is False
    assert fl.parse_flags(["--link=TRUE"], ACCEPTED).boolean("link") is True
    empty = fl.parse_flags([], ACCEPTED)
    assert (empty.string("from"), empty.boolean("link"), empty.strings("exclude")) == (
        None,
        None,
        (),
    )


def test_empty_string_flag_value_is_kept() -> None:
    assert fl.parse_flags(["--from="], ACCEPTED).string("from") == ""


@pytest.mark.parametrize(
    ("words", "message"),
    [
        (["--foo=1"], r"^unknown flag: foo$"),
        (["--frm=a"], r"^unknown flag: frm \(did you mean from\?\)$"),
        (["--from"], r"^missing a value on flag: from$"),
        (["--link="], r"^missing a value on flag: link$"),
        (["--link=yes"], r"^expecting boolean value for flag link, not: yes$"),
        (["--from=a", "--from=b"], r"^duplicate flag specified: from$"),
        (["--link", "--link"], r"^duplicate flag specified: link$"),
    ],
)
def test_parse_flags_errors(words: list[str], message: str) -> None:
    with pytest.raises(DockerfileError, match=message):
        fl.parse_flags(words, ACCEPTED)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("type=cache,target=/root/.cache",
         Mount(type="cache", target="/root/.cache", readonly=False)),
        ("target=/src", Mount(type="bind", target="/src", readonly=True)),
        ("type=bind,src=.,dst=/src,rw",
         Mount(type="bind", source=".", target="/src", readonly=False)),
        ("type=bind,source=a,destination=/b,from=build,ro=false",
         Mount(type="bind", source="a", target="/b", from_="build", readonly=False)),
        ("type=bind,target=/b,readonly", Mount(type="bind", target="/b", readonly=True)),
        ("type=cache,target=/c,readonly=true,id=pip,sharing=LOCKED,mode=0755,uid=1000,gid=100",
         Mount(type="cache", target="/c", readonly=True, id="pip", sharing="locked",
               mode=0o755, uid=1000, gid=100)),
        ("type=tmpfs,target=/t,size=64m",
         Mount(type="tmpfs", target="/t", readonly=False, size=64 << 20)),
        ("type=secret,id=aws,target=/root/.aws/credentials,required",
         Mount(type="secret", id="aws", target="/root/.aws/credentials", readonly=True,
               required=True)),
        ("type=secret,id=tok,env=TOKEN,required=false",
         Mount(type="secret", id="tok", env="TOKEN", readonly=True, required=False)),
        ("type=ssh", Mount(type="ssh", readonly=True)),
        ('type=bind,"target=/a,b"', Mount(type="bind", target="/a,b", readonly=True)),
        ("target=/x,type=CACHE", Mount(type="cache", target="/x", readonly=False)),
        ("type=bind,from=stage$,target=/a",
         Mount(type="bind", from_="stage$", target="/a", readonly=True)),
    ],
)
def test_parse_mount(value: str, expected: Mount) -> None:
    assert fl.parse_mount(value) == expected


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("type=volume,target=/a", r'^unsupported mount type "volume"$'),
        ("type=cach,target=/a", r'^unsupported mount type "cach" \(did you mean cache\?\)$'),
        ("target=/a,foo=bar", r"^unexpected key 'foo' in 'foo=bar'$"),
        ("target=/a,targt=/b", r"^unexpected key 'targt' in 'targt=/b' \(did you mean target\?\)$"),
        ("target=/a,shared", r"^invalid field 'shared' must be a key=value pair$"),
        ("type=cache,target=/a,mode=999", r"^invalid value 999 for mode$"),
        ("type=cache,target=/a,uid=-1", r"^invalid value -1 for uid$"),
        ("type=cache,target=/a,gid=$GID", r"^invalid value \$GID for gid$"),
        ("type=bind,target=/a,mode=0755", r'^mode not allowed for "bind" type mounts$'),
        ("type=tmpfs,target=/a,uid=0", r'^uid not allowed for "tmpfs" type mounts$'),
        ("type=cache,target=/a,sharing=bogus", r'^unsupported sharing value "bogus"$'),
        ("type=bind,target=/a,sharing=locked", r"^invalid cache sharing set for bind mount$"),
        ("type=bind,target=/a,required", r"^unexpected key 'required' for mount type 'bind'$"),
        ("type=cache,target=/a,size=1m", r"^unexpected key 'size' for mount type 'cache'$"),
        ("type=tmpfs,target=/a,size=lots", r"^invalid value for size: lots$"),
        ("type=bind,target=/a,ro=maybe", r"^invalid value for ro: maybe$"),
        ("type=secret", r"^invalid secret mount\. one of source, target required$"),
        ("type=secret,id=a,from=b", r"^secret mount should not have a from$"),
        ("type=secret,id=a,source=b", r"^both source and id can't be set$"),
        ("type=bind,from=$X/y,target=/a", r"^'from' doesn't support variable expansion"),
        ("type=bind,from=$STAGE,target=/a", r"^'from' doesn't support variable expansion"),
    ],
)
def test_parse_mount_errors(value: str, message: str) -> None:
    with pytest.raises(DockerfileError, match=message):
        fl.parse_mount(value)


@pytest.mark.parametrize(
    ("text", "nanoseconds"),
    [
        ("0", 0),
        ("30s", 30_000_000_000),
        ("1m30s", 90_000_000_000),
        ("500ms", 500_000_000),
        ("1.5h", 5_400_000_000_000),
        ("2h45m", 9_900_000_000_000),
        ("10us", 10_000),
        ("10µs", 10_000),
        ("7ns", 7),
        ("+5s", 5_000_000_000),
        ("-5s", -5_000_000_000),
        (".5s", 500_000_000),
        ("1.s", 1_000_000_000),
    ],
)
def test_parse_duration(text: str, nanoseconds: int) -> None:
    assert fl.parse_duration(text) == nanoseconds


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", r'^time: invalid duration ""$'),
        ("abc", r'^time: invalid duration "abc"$'),
        ("10", r'^time: missing unit in duration "10"$'),
        ("1m30", r'^time: missing unit in duration "1m30"$'),
        ("10x", r'^time: unknown unit "x" in duration "10x"$'),
        ("1d", r'^time: unknown unit "d" in duration "1d"$'),
        (".s", r'^time: invalid duration ".s"$'),
        ("99999999999h", r'^time: invalid duration "99999999999h"$'),
    ],
)
def test_parse_duration_errors(text: str, message: str) -> None:
    with pytest.raises(DockerfileError, match=message):
        fl.parse_duration(text)


@pytest.mark.parametrize(
    ("text", "size"),
    [("512", 512), ("64m", 64 << 20), ("1GiB", 1 << 30), ("2 kb", 2048), ("1.5g", 3 << 29)],
)
def test_parse_ram_size(text: str, size: int) -> None:
    assert fl.parse_ram_size(text) == size


def test_network_and_security_modes() -> None:
    assert fl.check_network("none") == "none"
    assert fl.check_network(None) is None
    assert fl.check_security("insecure") == "insecure"
    with pytest.raises(DockerfileError, match=r'^network mode "bridge" not supported$'):
        fl.check_network("bridge")
    with pytest.raises(DockerfileError, match=r'^security mode "insecur" not supported \(did'):
        fl.check_security("insecur")
