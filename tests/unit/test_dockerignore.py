"""Tests for rootbuild.dockerfile.dockerignore, from moby/patternmatcher's own tables
(TestMatches, TestMatch = Go's filepath.Match tests) and Docker's .dockerignore docs."""

from __future__ import annotations

import pytest

from rootbuild.dockerfile.dockerignore import (
    BadPatternError,
    IgnoreMatcher,
    clean,
    glob_match,
    has_wildcards,
)
from rootbuild.errors import ContextError

# patternmatcher TestMatches: (pattern, path, matches-or-parent-matches)
SINGLE = [
    ("**", "file", True),
    ("**", "file/", True),
    ("**/", "file", True),
    ("**/", "file/", True),
    ("**", "/", True),
    ("**/", "/", True),
    ("**", "dir/file", True),
    ("**/", "dir/file", True),
    ("**", "dir/file/", True),
    ("**/", "dir/file/", True),
    ("**/**", "dir/file", True),
    ("**/**", "dir/file/", True),
    ("dir/**", "dir/file", True),
    ("dir/**", "dir/file/", True),
    ("dir/**", "dir/dir2/file", True),
    ("dir/**", "dir/dir2/file/", True),
    ("**/dir", "dir", True),
    ("**/dir", "dir/file", True),
    ("**/dir2/*", "dir/dir2/file", True),
    ("**/dir2/*", "dir/dir2/file/", True),
    ("**/dir2/**", "dir/dir2/dir3/file", True),
    ("**/dir2/**", "dir/dir2/dir3/file/", True),
    ("**file", "file", True),
    ("**file", "dir/file", True),
    ("**/file", "dir/file", True),
    ("**file", "dir/dir/file", True),
    ("**/file", "dir/dir/file", True),
    ("**/file*", "dir/dir/file", True),
    ("**/file*", "dir/dir/file.txt", True),
    ("**/file*txt", "dir/dir/file.txt", True),
    ("**/file*.txt", "dir/dir/file.txt", True),
    ("**/file*.txt*", "dir/dir/file.txt", True),
    ("**/**/*.txt", "dir/dir/file.txt", True),
    ("**/**/*.txt2", "dir/dir/file.txt", False),
    ("**/*.txt", "file.txt", True),
    ("**/**/*.txt", "file.txt", True),
    ("a**/*.txt", "a/file.txt", True),
    ("a**/*.txt", "a/dir/file.txt", True),
    ("a**/*.txt", "a/dir/dir/file.txt", True),
    ("a/*.txt", "a/dir/file.txt", False),
    ("a/*.txt", "a/file.txt", True),
    ("a/*.txt**", "a/file.txt", True),
    ("a[b-d]e", "ae", False),
    ("a[b-d]e", "ace", True),
    ("a[b-d]e", "aae", False),
    ("a[^b-d]e", "aze", True),
    (".*", ".foo", True),
    (".*", "foo", False),
    ("abc.def", "abcdef", False),
    ("abc.def", "abc.def", True),
    ("abc.def", "abcZdef", False),
    ("abc?def", "abcZdef", True),
    ("abc?def", "abcdef", False),
    ("**/foo/bar", "foo/bar", True),
    ("**/foo/bar", "dir/foo/bar", True),
    ("**/foo/bar", "dir/dir2/foo/bar", True),
    ("abc/**", "abc", False),
    ("abc/**", "abc/def", True),
    ("abc/**", "abc/def/ghi", True),
    ("**/.foo", ".foo", True),
    ("**/.foo", "bar.foo", False),
    ("a(b)c/def", "a(b)c/def", True),
    ("a(b)c/def", "a(b)c/xyz", False),
    ("a.|)$(}+{bc", "a.|)$(}+{bc", True),
    (
        "dist/proxy.py-2.4.0rc3.dev36+g08acad9-py3-none-any.whl",
        "dist/proxy.py-2.4.0rc3.dev36+g08acad9-py3-none-any.whl",
        True,
    ),
    ("dist/*.whl", "dist/proxy.py-2.4.0rc3.dev36+g08acad9-py3-none-any.whl", True),
    ("a\\\\", "a\\", True),
    ("a\\*b", "a*b", True),
    # Go's filepath.Match table (patternmatcher TestMatch), valid patterns only.
    ("abc", "abc", True),
    ("*", "abc", True),
    ("*c", "abc", True),
    ("a*", "a", True),
    ("a*", "abc", True),
    ("a*", "ab/c", True),  # via the parent "ab"
    ("a*/b", "abc/b", True),
    ("a*/b", "a/c/b", False),
    ("a*b*c*d*e*/f", "axbxcxdxe/f", True),
    ("a*b*c*d*e*/f", "axbxcxdxexxx/f", True),
    ("a*b*c*d*e*/f", "axbxcxdxe/xxx/f", False),
    ("a*b*c*d*e*/f", "axbxcxdxexxx/fff", False),
    ("a*b?c*x", "abxbbxdbxebxczzx", True),
    ("a*b?c*x", "abxbbxdbxebxczzy", False),
    ("ab[c]", "abc", True),
    ("ab[b-d]", "abc", True),
    ("ab[e-g]", "abc", False),
    ("ab[^c]", "abc", False),
    ("ab[^b-d]", "abc", False),
    ("ab[^e-g]", "abc", True),
    ("a\\*b", "ab", False),
    ("a?b", "a☺b", True),
    ("a[^a]b", "a☺b", True),
    ("a???b", "a☺b", False),
    ("a[^a][^a][^a]b", "a☺b", False),
    ("[a-\u03b6]*", "\u03b1", True),  # [a-zeta]* matches alpha
    ("*[a-\u03b6]", "A", False),
    ("a?b", "a/b", False),
    ("a*b", "a/b", False),
    ("[\\]a]", "]", True),
    ("[\\-]", "-", True),
    ("[x\\-]", "x", True),
    ("[x\\-]", "-", True),
    ("[x\\-]", "z", False),
    ("[\\-x]", "x", True),
    ("[\\-x]", "-", True),
    ("[\\-x]", "a", False),
    ("*x", "xxx", True),
]


@pytest.mark.parametrize(("pattern", "path", "expected"), SINGLE)
def test_patternmatcher_table(pattern: str, path: str, expected: bool) -> None:
    assert IgnoreMatcher.parse(pattern).ignored(path) is expected


MULTI = [
    (["**", "!util/docker/web"], "util/docker/web/foo", False),
    (["**", "!util/docker/web", "util/docker/web/foo"], "util/docker/web/foo", True),
    (
        ["**", "!dist/proxy.py-2.4.0rc3.dev36+g08acad9-py3-none-any.whl"],
        "dist/proxy.py-2.4.0rc3.dev36+g08acad9-py3-none-any.whl",
        False,
    ),
    (["**", "!dist/*.whl"], "dist/proxy.py-2.4.0rc3.dev36+g08acad9-py3-none-any.whl", False),
    (["*.go"], "fileutils.go", True),
    (["!fileutils.go", "*.go"], "fileutils.go", True),
    (["docs", "!docs/README.md"], "docs/README.md", False),
    (["docs/", "!docs/README.md"], "docs/README.md", False),
    (["docs/*", "!docs/README.md"], "docs/README.md", False),
    (["*.go", "!fileutils.go"], "fileutils.go", False),
    (["*.go"], ".", False),
    ([], "any/path/there", False),
]


@pytest.mark.parametrize(("patterns", "path", "expected"), MULTI)
def test_pattern_lists(patterns: list[str], path: str, expected: bool) -> None:
    assert IgnoreMatcher.parse("\n".join(patterns)).ignored(path) is expected


@pytest.mark.parametrize(
    "pattern",
    ["[]a]", "[-]", "[x-]", "[-x]", "\\", "[a-b-c]", "[", "[^", "[^bc", "a[", "a\\", "[z-a]"],
)
def test_bad_patterns_name_file_and_line(pattern: str) -> None:
    text = f"# comment\nok\n{pattern}\n"
    with pytest.raises(ContextError, match=r"^ctx/.dockerignore:3: parse pattern .*syntax error"):
        IgnoreMatcher.parse(text, "ctx/.dockerignore")


def test_lone_exclamation_is_an_error() -> None:
    with pytest.raises(ContextError, match=r'^\.dockerignore:2: parse pattern "!": illegal'):
        IgnoreMatcher.parse("a\n  !  \n")


def test_docker_documentation_example() -> None:
    # https://docs.docker.com/build/concepts/context/#dockerignore-files
    m = IgnoreMatcher.parse("# comment\n*/temp*\n*/*/temp*\ntemp?\n")
    assert m.ignored("somedir/temporary.txt")
    assert m.ignored("somedir/temp")
    assert m.ignored("somedir/subdir/temporary.txt")
    assert m.ignored("tempa")
    assert m.ignored("tempb")
    assert not m.ignored("temp")
    assert not m.ignored("temporary.txt")
    assert not m.ignored("a/b/c/temp")
    md = IgnoreMatcher.parse("*.md\n!README*.md\nREADME-secret.md\n")
    assert md.ignored("CHANGES.md")
    assert not md.ignored("README.md")
    assert md.ignored("README-secret.md")
    md2 = IgnoreMatcher.parse("*.md\nREADME-secret.md\n!README*.md\n")
    assert not md2.ignored("README-secret.md")


def test_line_handling() -> None:
    text = "\ufeffa\r\n  # not a comment  \n#comment\n\n  b/  \n/c\n./d/../e\n!  f \n"
    m = IgnoreMatcher.parse(text)
    assert [(p.text, p.exclusion, p.line) for p in m.patterns] == [
        ("a", False, 1),
        ("# not a comment", False, 2),
        ("b", False, 5),
        ("c", False, 6),
        ("e", False, 7),
        ("f", True, 8),
    ]
    assert m.ignored("a")
    assert m.ignored("# not a comment")
    assert m.ignored("b/x/y")
    assert m.ignored("c")
    assert not m.ignored("d")
    assert m.ignored("e")
    assert m.has_exclusions


def test_root_is_never_ignored() -> None:
    m = IgnoreMatcher.parse("*\n**\n.\n")
    assert not m.ignored(".")
    assert not m.ignored("")
    assert m.ignored("x")


def test_directory_pattern_excludes_everything_below() -> None:
    m = IgnoreMatcher.parse("node_modules\n.git\n")
    assert m.ignored("node_modules")
    assert m.ignored("node_modules/a/b/c.js")
    assert m.ignored(".git/HEAD")
    assert not m.ignored("src/node_modules")  # not anchored anywhere but the root
    assert IgnoreMatcher.parse("**/node_modules").ignored("src/node_modules/x")


def test_exceptions_inside_ignored_directories() -> None:
    m = IgnoreMatcher.parse("secrets\n!secrets/public\n")
    assert m.ignored("secrets")
    assert m.ignored("secrets/key")
    assert not m.ignored("secrets/public")
    assert not m.ignored("secrets/public/a/b")


@pytest.mark.parametrize(
    ("text", "reldir", "expected"),
    [
        ("secrets\n", "secrets", False),
        ("secrets\n", "secrets/sub", False),
        ("secrets\n", "other", True),  # not ignored at all
        ("secrets\n!secrets/public\n", "secrets", True),
        ("secrets\n!secrets/public\n", "secrets/private", False),
        ("secrets\n!secrets/public/x\n", "secrets/public", True),
        ("secrets\n!secrets/*/keep\n", "secrets/a", True),
        ("secrets\n!secrets/*/keep\n", "secrets/a/b", False),
        ("secrets\n!**/keep\n", "secrets/deep/down", True),
        ("secrets\n!other\n", "secrets", False),
        ("*\n!src\n", "docs", False),
        ("*\n!src\n", "src", True),
        ("*\n!s[a-c]c/x\n", "sbc", True),
        ("*\n!s[a-c]c/x\n", "szc", False),
        ("*\n!keep**\n", "anything", True),
    ],
)
def test_may_include_below(text: str, reldir: str, expected: bool) -> None:
    assert IgnoreMatcher.parse(text).may_include_below(reldir) is expected


def test_may_include_below_is_sound() -> None:
    """Whenever may_include_below says False, nothing below is included."""
    text = "a\n!a/b/c\n*/x*\n!*/x/keep\nd/**\n!d/e/**/f\n"
    m = IgnoreMatcher.parse(text)
    names = ["a", "b", "c", "d", "e", "f", "x", "xy", "keep"]
    dirs = [f"{p}/{q}" for p in names for q in names] + names
    for d in dirs:
        if m.may_include_below(d):
            continue
        for tail in names + [f"{p}/{q}" for p in names for q in names]:
            assert m.ignored(f"{d}/{tail}"), (d, tail)


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("", "."),
        (".", "."),
        ("a//b/./c/", "a/b/c"),
        ("a/../..", ".."),
        ("/../a", "/a"),
        ("//a", "/a"),
        ("/", "/"),
        ("../a/b/..", "../a"),
    ],
)
def test_clean_is_go_path_clean(path: str, expected: str) -> None:
    assert clean(path) == expected


def test_glob_match_and_wildcards() -> None:
    assert glob_match("*.txt", ".hidden.txt")  # Go's Match matches leading dots
    assert not glob_match("*.txt", "a/b.txt")
    assert glob_match("file?", "file1")
    assert glob_match("[!]", "!")  # "!" is not negation in Go
    with pytest.raises(BadPatternError):
        glob_match("[", "x")
    assert has_wildcards("a*")
    assert has_wildcards("a[bc]")
    assert has_wildcards("?")
    assert not has_wildcards("a\\*b")  # BuildKit: an escaped wildcard is a literal name
    assert not has_wildcards("plain.txt")
