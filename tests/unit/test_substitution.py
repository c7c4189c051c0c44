"""Tests for rootbuild.dockerfile.substitution against BuildKit's own tables.

ENV_VAR_TEST is moby's ``shell/envVarTest`` (platform "A" and "U" rows); MATCHES_CASES is
BuildKit's ``TestProcessWithMatches``; WORDS_CASES follows ``shell/wordsTest``.
"""

from __future__ import annotations

import re

import pytest

from rootbuild.dockerfile.substitution import expand, expand_words
from rootbuild.errors import DockerfileError, Location

ENV_VAR_TEST = r"""
A|hello                    |     hello
A|he'll'o                  |     hello
A|he'llo                   |     error
A|he\'llo                  |     he'llo
A|he\\'llo                 |     error
A|abc\tdef                 |     abctdef
A|"abc\tdef"               |     abc\tdef
A|"abc\\tdef"              |     abc\tdef
A|'abc\tdef'               |     abc\tdef
A|hello\                   |     hello
A|hello\\                  |     hello\
A|"hello                   |     error
A|"hello\"                 |     error
A|"hel'lo"                 |     hel'lo
A|'hello                   |     error
A|'hello\'                 |     hello\
A|'hello\there'            |     hello\there
A|'hello\\there'           |     hello\\there
A|"''"                     |     ''
A|$.                       |     $.
A|$1                       |
A|he$1x                    |     hex
A|he$.x                    |     he$.x
U|he$pwd.                  |     he.
A|he$PWD                   |     he/home
A|he\$PWD                  |     he$PWD
A|he\\$PWD                 |     he\/home
A|"he\$PWD"                |     he$PWD
A|"he\\$PWD"               |     he\/home
A|\${}                     |     ${}
A|\${}aaa                  |     ${}aaa
A|he\${}                   |     he${}
A|he\${}xx                 |     he${}xx
A|${}                      |     error
A|${}aaa                   |     error
A|he${}                    |     error
A|he${}xx                  |     error
A|he${hi}                  |     he
A|he${hi}xx                |     hexx
A|he${PWD}                 |     he/home
A|he${.}                   |     error
A|he${XXX:-000}xx          |     he000xx
A|he${PWD:-000}xx          |     he/homexx
A|he${XXX:-$PWD}xx         |     he/homexx
A|he${XXX:-${PWD:-yyy}}xx  |     he/homexx
A|he${XXX:-${YYY:-yyy}}xx  |     heyyyxx
A|he${XXX:YYY}             |     error
A|he${XXX:+${PWD}}xx       |     hexx
A|he${PWD:+${XXX}}xx       |     hexx
A|he${PWD:+${SHELL}}xx     |     hebashxx
A|he${XXX:+000}xx          |     hexx
A|he${PWD:+000}xx          |     he000xx
A|'he${XX}'                |     he${XX}
A|"he${PWD}"               |     he/home
A|"he'$PWD'"               |     he'/home'
A|"$PWD"                   |     /home
A|'$PWD'                   |     $PWD
A|'\$PWD'                  |     \$PWD
A|'"hello"'                |     "hello"
A|he\$PWD                  |     he$PWD
A|"he\$PWD"                |     he$PWD
A|'he\$PWD'                |     he\$PWD
A|he${PWD                  |     error
A|he${PWD:=000}xx          |     error
A|he${PWD:+${PWD}:}xx      |     he/home:xx
A|he${XXX:-\$PWD:}xx       |     he$PWD:xx
A|he${XXX:-\${PWD}z}xx     |     he${PWDz}xx
A|안녕하세요                 |     안녕하세요
A|안'녕'하세요               |     안녕하세요
A|안'녕하세요                |     error
A|안녕\'하세요               |     안녕'하세요
A|안\\'녕하세요              |     error
A|안녕\t하세요               |     안녕t하세요
A|"안녕\t하세요"             |     안녕\t하세요
A|'안녕\t하세요              |     error
A|안녕하세요\                |     안녕하세요
A|안녕하세요\\               |     안녕하세요\
A|"안녕하세요                |     error
A|"안녕하세요\"              |     error
A|"안녕'하세요"              |     안녕'하세요
A|'안녕하세요                |     error
A|'안녕하세요\'              |     안녕하세요\
A|안녕$1x                    |     안녕x
A|안녕$.x                    |     안녕$.x
U|안녕$pwd.                  |     안녕.
A|안녕$PWD                   |     안녕/home
A|안녕\$PWD                  |     안녕$PWD
A|안녕\\$PWD                 |     안녕\/home
A|안녕\${}                   |     안녕${}
A|안녕\${}xx                 |     안녕${}xx
A|안녕${}                    |     error
A|안녕${}xx                  |     error
A|안녕${hi}                  |     안녕
A|안녕${hi}xx                |     안녕xx
A|안녕${PWD}                 |     안녕/home
A|안녕${.}                   |     error
A|안녕${XXX:-000}xx          |     안녕000xx
A|안녕${PWD:-000}xx          |     안녕/homexx
A|안녕${XXX:-$PWD}xx         |     안녕/homexx
A|안녕${XXX:-${PWD:-yyy}}xx  |     안녕/homexx
A|안녕${XXX:-${YYY:-yyy}}xx  |     안녕yyyxx
A|안녕${XXX:YYY}             |     error
A|안녕${XXX:+${PWD}}xx       |     안녕xx
A|안녕${PWD:+${XXX}}xx       |     안녕xx
A|안녕${PWD:+${SHELL}}xx     |     안녕bashxx
A|안녕${XXX:+000}xx          |     안녕xx
A|안녕${PWD:+000}xx          |     안녕000xx
A|'안녕${XX}'                |     안녕${XX}
A|"안녕${PWD}"               |     안녕/home
A|"안녕'$PWD'"               |     안녕'/home'
A|'"안녕"'                   |     "안녕"
A|안녕\$PWD                  |     안녕$PWD
A|"안녕\$PWD"                |     안녕$PWD
A|'안녕\$PWD'                |     안녕\$PWD
A|안녕${PWD                  |     error
A|안녕${PWD:=000}xx          |     error
A|안녕${PWD:+${PWD}:}xx      |     안녕/home:xx
A|안녕${XXX:-\$PWD:}xx       |     안녕$PWD:xx
A|안녕${XXX:-\${PWD}z}xx     |     안녕${PWDz}xx
A|$KOREAN                    |     한국어
A|안녕$KOREAN                |     안녕한국어
A|${{aaa}                   |     error
A|${aaa}}                   |     }
A|${aaa                     |     error
A|${{aaa:-bbb}              |     error
A|${aaa:-bbb}}              |     bbb}
A|${aaa:-bbb                |     error
A|${aaa:-bbb}               |     bbb
A|${aaa:-${bbb:-ccc}}       |     ccc
A|${aaa:-bbb ${foo}         |     error
A|${aaa:-bbb {foo}          |     bbb {foo
A|${:}                      |     error
A|${:-bbb}                  |     error
A|${:+bbb}                  |     error
"""

ENVS = {"PWD": "/home", "SHELL": "bash", "KOREAN": "한국어", "NULL": ""}


def _env_var_rows() -> list[tuple[str, str]]:
    rows = []
    for line in ENV_VAR_TEST.strip().splitlines():
        _, source, expected = line.split("|")
        rows.append((source.strip(), expected.strip()))
    return rows


@pytest.mark.parametrize(("source", "expected"), _env_var_rows())
def test_buildkit_env_var_table(source: str, expected: str) -> None:
    if expected == "error":
        with pytest.raises(DockerfileError):
            expand(source, ENVS)
    else:
        assert expand(source, ENVS) == expected


# (input, env, expected or None for error, names looked up)
MATCHES_CASES: list[tuple[str, dict[str, str], str | None, set[str]]] = [
    ("x", {"DUMMY": "dummy"}, "x", set()),
    ("x ${UNUSED}", {"DUMMY": "dummy"}, "x ", {"UNUSED"}),
    ("x ${FOO}", {"FOO": "y"}, "x y", {"FOO"}),
    (
        "${FOO-aaa} ${BAR-bbb} ${BAZ-ccc}",
        {"FOO": "xxx", "BAR": ""},
        "xxx  ccc",
        {"FOO", "BAR", "BAZ"},
    ),
    (
        "${FOO:-aaa} ${BAR:-bbb} ${BAZ:-ccc}",
        {"FOO": "xxx", "BAR": ""},
        "xxx bbb ccc",
        {"FOO", "BAR", "BAZ"},
    ),
    ("${FOO:-}", {"FOO": "xxx", "BAR": ""}, "xxx", {"FOO"}),
    ("${FOO:-}", {}, "", {"FOO"}),
    (
        "${FOO+aaa} ${BAR+bbb} ${BAZ+ccc}",
        {"FOO": "xxx", "BAR": ""},
        "aaa bbb ",
        {"FOO", "BAR", "BAZ"},
    ),
    (
        "${FOO:+aaa} ${BAR:+bbb} ${BAZ:+ccc}",
        {"FOO": "xxx", "BAR": ""},
        "aaa  ",
        {"FOO", "BAR", "BAZ"},
    ),
    ("${FOO?aaa}", {"FOO": "xxx", "BAR": ""}, "xxx", {"FOO"}),
    ("${BAR?bbb}", {"FOO": "xxx", "BAR": ""}, "", {"BAR"}),
    ("${BAZ?ccc}", {"FOO": "xxx", "BAR": ""}, None, {"BAZ"}),
    ("${FOO:?aaa}", {"FOO": "xxx", "BAR": ""}, "xxx", {"FOO"}),
    ("${BAR:?bbb}", {"FOO": "xxx", "BAR": ""}, None, {"BAR"}),
    ("${BAZ:?ccc}", {"FOO": "xxx", "BAR": ""}, None, {"BAZ"}),
    ("${BAZ:?}", {"FOO": "xxx", "BAR": ""}, None, {"BAZ"}),
    ("${FOO=aaa}", {"FOO": "xxx", "BAR": ""}, None, set()),
    ("${FOO=:aaa}", {"FOO": "xxx", "BAR": ""}, None, set()),
    ("${FOO=}", {}, None, set()),
    ("${FOO#()[]{\\}^$.\\*\\?|\\\\}", {"FOO": "()[]{}^$.*?|\\x"}, "x", {"FOO"}),
    ("${FOO%%\\**}", {"FOO": "xx**"}, "xx", {"FOO"}),
    ("${FOO#*x*y}", {"FOO": "xxyy"}, "y", {"FOO"}),
    ("${FOO#*}", {"FOO": "xxyy"}, "xxyy", {"FOO"}),
    ("${FOO#$BAR}", {"FOO": "xxyy", "BAR": "x"}, "xyy", {"FOO", "BAR"}),
    ("${FOO#$BAR}", {"FOO": "xxyy", "BAR": ""}, "xxyy", {"FOO", "BAR"}),
    ("${FOO#}", {"FOO": "xxyy"}, "xxyy", {"FOO"}),
    ("${FOO##*x}", {"FOO": "xxyy"}, "yy", {"FOO"}),
    ("${FOO##}", {"FOO": "xxyy"}, "xxyy", {"FOO"}),
    ("${FOO#?\\?}", {"FOO": "???y"}, "?y", {"FOO"}),
    ("${ABC:-.}${FOO%x}${ABC:-.}", {"FOO": "xxyy"}, ".xxyy.", {"FOO", "ABC"}),
    ("${FOO%%\\**\\*}", {"FOO": "a***yy*"}, "a", {"FOO"}),
    ("${FOO%}", {"FOO": "xxyy"}, "xxyy", {"FOO"}),
    ("${FOO%%$BAR}", {"FOO": "xxyy", "BAR": ""}, "xxyy", {"FOO", "BAR"}),
    (
        "${FOO/$NEEDLE/.} - ${FOO//$NEEDLE/.}",
        {"FOO": "/foo*/*/*.txt", "NEEDLE": "\\*/"},
        "/foo.*/*.txt - /foo..*.txt",
        {"FOO", "NEEDLE"},
    ),
    (
        "${FOO/$NEEDLE/} - ${FOO//$NEEDLE/}",
        {"FOO": "/tmp/tmp/bar.txt", "NEEDLE": "/tmp"},
        "/tmp/bar.txt - /bar.txt",
        {"FOO", "NEEDLE"},
    ),
    (
        "${FOO/$NEEDLE/$REPLACEMENT} - ${FOO//$NEEDLE/$REPLACEMENT}",
        {"FOO": "/a/foo/b/c.txt", "NEEDLE": "/?/", "REPLACEMENT": "/"},
        "/foo/b/c.txt - /foo/c.txt",
        {"FOO", "NEEDLE", "REPLACEMENT"},
    ),
    (
        "${FOO/$NEEDLE/$REPLACEMENT}",
        {"FOO": "http://google.de", "NEEDLE": "http://", "REPLACEMENT": "https://"},
        "https://google.de",
        {"FOO", "NEEDLE", "REPLACEMENT"},
    ),
    ("${FOO//\\//\\/}", {"FOO": "/tmp/foo.txt"}, "\\/tmp\\/foo.txt", {"FOO"}),
    ("${FOO/$BAR/ww}", {"FOO": "xxyy", "BAR": ""}, "wwxxyy", {"FOO", "BAR"}),
    ("${FOO//ww}", {"FOO": "xxyy"}, None, set()),
    ("${FOO//}", {"FOO": "xxyy"}, None, set()),
    ("${FOO///}", {"FOO": "xxyy"}, "xxyy", {"FOO"}),
    ("${FOO///}", {}, "", {"FOO"}),
]


@pytest.mark.parametrize(("word", "env", "expected", "names"), MATCHES_CASES)
def test_buildkit_process_with_matches(
    word: str, env: dict[str, str], expected: str | None, names: set[str]
) -> None:
    used: set[str] = set()
    if expected is None:
        with pytest.raises(DockerfileError):
            expand(word, env, used=used)
        return
    assert expand(word, env, used=used) == expected
    assert used == names


def test_mandatory_variables() -> None:
    no_empty = "${VAR:?message here$ARG}"
    no_unset = "${VAR?message here$ARG}"
    set_env = {"VAR": "plain", "ARG": "x"}
    empty_env = {"VAR": "", "ARG": "x"}
    unset_env = {"ARG": "x"}
    assert expand(no_empty, set_env) == "plain"
    assert expand(no_unset, set_env) == "plain"
    assert expand(no_unset, empty_env) == ""
    for word, env in ((no_empty, empty_env), (no_empty, unset_env), (no_unset, unset_env)):
        with pytest.raises(DockerfileError, match=r"VAR: message herex$"):
            expand(word, env)


def test_mandatory_error_message_and_location() -> None:
    loc = Location("Dockerfile", 7)
    with pytest.raises(DockerfileError) as info:
        expand("${FOO:?}", {"FOO": ""}, location=loc)
    assert str(info.value) == 'Dockerfile:7: expand "${FOO:?}": FOO: is not allowed to be empty'
    assert info.value.location == loc
    with pytest.raises(DockerfileError, match=r"FOO: is not allowed to be unset$"):
        expand("${FOO?}", {})


@pytest.mark.parametrize(
    ("word", "message"),
    [
        ("${x", r"syntax error: missing '}'$"),
        ("${x:-y", r"syntax error: missing '}'$"),
        ("${}", r"bad substitution$"),
        ("${x/a", r"missing '/' in \$\{\}$"),
        ("'abc", r"matching single-quote$"),
        ('"abc', r"matching double-quote$"),
        ("${x:#a}", r"unsupported modifier \(:#\) in substitution$"),
        ("${x:%a}", r"unsupported modifier \(:%\) in substitution$"),
        ("${x=a}", r"unsupported modifier \(=\) in substitution$"),
        ("${x#\\a}", r"invalid escape"),
    ],
)
def test_syntax_errors_are_located(word: str, message: str) -> None:
    loc = Location("Dockerfile", 3)
    with pytest.raises(DockerfileError, match=message) as info:
        expand(word, {"x": "abc"}, location=loc)
    assert str(info.value).startswith(f'Dockerfile:3: expand "{word}": ')


# Docker's Dockerfile reference, "Environment replacement".
DOCS_CASES = [
    ("${FOO}", {"FOO": "/bar"}, "/bar"),
    ("$FOO", {"FOO": "/bar"}, "/bar"),
    ("\\$FOO", {"FOO": "/bar"}, "$FOO"),
    ("${str#f*b}", {"str": "foobarbaz"}, "arbaz"),
    ("${str##f*b}", {"str": "foobarbaz"}, "az"),
    ("${string%b*}", {"string": "foobarbaz"}, "foobar"),
    ("${string%%b*}", {"string": "foobarbaz"}, "foo"),
    ("${str/ba/fo}", {"str": "foobarbaz"}, "fooforbaz"),
    ("${str//ba/fo}", {"str": "foobarbaz"}, "fooforfoz"),
    ("${variable:-word}", {}, "word"),
    ("${variable:+word}", {"variable": "x"}, "word"),
    ("${variable:+word}", {}, ""),
    # BuildKit's release-name example (TestProcessWithMatchesPlatform).
    (
        "pkg-${V}.${OS}-${ARCH}${VARIANT:+-${VARIANT}}.tgz",
        {"V": "1", "OS": "linux", "ARCH": "arm", "VARIANT": "v7"},
        "pkg-1.linux-arm-v7.tgz",
    ),
    (
        "pkg-${V}.${OS}-${ARCH}${VARIANT:+-${VARIANT}}.tgz",
        {"V": "1", "OS": "linux", "ARCH": "arm64", "VARIANT": ""},
        "pkg-1.linux-arm64.tgz",
    ),
    (
        "pkg-${V}.${OS}-${ARCH}${VARIANT:+-${VARIANT}}.tgz",
        {"V": "1", "OS": "linux", "ARCH": "arm64"},
        "pkg-1.linux-arm64.tgz",
    ),
]


@pytest.mark.parametrize(("word", "env", "expected"), DOCS_CASES)
def test_documented_examples(word: str, env: dict[str, str], expected: str) -> None:
    assert expand(word, env) == expected


@pytest.mark.parametrize(
    ("word", "env", "expected"),
    [
        ("$$", {}, ""),  # special parameter, unset in a build
        ("$@x", {}, "x"),
        ("${#}", {}, ""),
        ("$", {}, "$"),
        ("a$", {}, "a$"),
        ("$-", {"-": "dash"}, "dash"),
        ("$12a", {"12": "n"}, "na"),
        ('${FOO#"x"}', {"FOO": "xy"}, "y"),  # quotes in a pattern are removed
        ("${FOO:-'a b'}", {}, "a b"),
        ('${FOO:-"$BAR"}', {"BAR": "b"}, "b"),
        ("${FOO%.*}", {"FOO": "archive.tar.gz"}, "archive.tar"),
        ("${FOO%%.*}", {"FOO": "archive.tar.gz"}, "archive"),
        ("${FOO#*/}", {"FOO": "a/b/c"}, "b/c"),
        ("${FOO##*/}", {"FOO": "a/b/c"}, "c"),
        ("${FOO/[ab]/x}", {"FOO": "a[ab]"}, "ax"),  # no bracket expressions in BuildKit
        ("${FOO//*/x}", {"FOO": "abc"}, "x"),  # Go: no empty match after a match
        ("${FOO//$E/-}", {"FOO": "ab", "E": ""}, "-a-b-"),
        ("${FOO//a/'$$'}", {"FOO": "aa"}, "$$"),  # Go template: $$ -> $
        ("${FOO//a/'[$0]'}", {"FOO": "ab"}, "[a]b"),
        ("  spaced  out  ", {}, "  spaced  out  "),
        ("a\\ b", {}, "a b"),
        ("line1\nline2", {}, "line1\nline2"),
    ],
)
def test_edge_cases(word: str, env: dict[str, str], expected: str) -> None:
    assert expand(word, env) == expected


def test_backtick_escape() -> None:
    env = {"PWD": "/home"}
    assert expand("he`$PWD", env, escape="`") == "he$PWD"
    assert expand("C:\\path\\$PWD", env, escape="`") == "C:\\path\\/home"
    assert expand('"a`"b"', env, escape="`") == 'a"b'
    assert expand('"a\\"', env, escape="`") == "a\\"
    assert expand("x``y", env, escape="`") == "x`y"
    assert expand("trailing`", env, escape="`") == "trailing"


def test_used_records_nested_and_default_words() -> None:
    used: set[str] = set()
    expand("${A:-${B}} $C ${D#$E} ${F/$G/$H}", {"A": "a"}, used=used)
    assert used == {"A", "B", "C", "D", "E", "F", "G", "H"}


def test_single_quotes_record_nothing() -> None:
    used: set[str] = set()
    assert expand("'$A ${B}'", {}, used=used) == "$A ${B}"
    assert used == set()


# wordsTest: (ENV lines, input, expected words or "error")
WORDS_ENV = {
    "hi": "hi",
    "space": "abc  def",
    "leading": "  ab c",
    "trailing": "ab c   ",
}
WORDS_CASES = [
    ("hello", ["hello"]),
    ("hello${hi}bye", ["hellohibye"]),
    ("hello${space}bye", ["helloabc", "defbye"]),
    ('hello"${space}"bye', ["helloabc  defbye"]),
    ('hello "${space}"bye', ["hello", "abc  defbye"]),
    ("hello${leading}def", ["hello", "ab", "cdef"]),
    ('hello"${leading}" def', ["hello  ab c", "def"]),
    ('hello"${leading}"', ["hello  ab c"]),
    ("hello${leading}", ["hello", "ab", "c"]),
    ("hello${trailing}", ["helloab", "c"]),
    ("hello${trailing}d", ["helloab", "c", "d"]),
    ('hello"${trailing}"d', ["helloab c   d"]),
    ('hel"lo${trailing}"', ["helloab c   "]),
    ('hello" there  "', ["hello there  "]),
    ("hello there     ", ["hello", "there"]),
    ("hello\\ there", ["hello there"]),
    ('hello" there', "error"),
    ('hello\\" there', ['hello"', "there"]),
    ('hello"\\\\there"', ["hello\\there"]),
    ('hello"\\there"', ["hello\\there"]),
    ("hello'\\\\there'", ["hello\\\\there"]),
    ("hello'\\there'", ["hello\\there"]),
    ("hello'$there'", ["hello$there"]),
    ("80/tcp  443/tcp\t8080", ["80/tcp", "443/tcp", "8080"]),
    ("\"\" x ''", ["x"]),
    ("", []),
]


@pytest.mark.parametrize(("text", "expected"), WORDS_CASES)
def test_words(text: str, expected: list[str] | str) -> None:
    if expected == "error":
        with pytest.raises(DockerfileError):
            expand_words(text, WORDS_ENV)
    else:
        assert expand_words(text, WORDS_ENV) == expected


def test_words_used_and_location() -> None:
    used: set[str] = set()
    assert expand_words("$A ${B:-x y}", {"A": "1 2"}, used=used) == ["1", "2", "x", "y"]
    assert used == {"A", "B"}
    with pytest.raises(DockerfileError, match=re.escape('Dockerfile:2: expand "\'": ')):
        expand_words("'", {}, location=Location("Dockerfile", 2))
