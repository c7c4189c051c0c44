"""Heredoc detection and body extraction (BuildKit parser.go heredoc rules)."""

from __future__ import annotations

import re

import pytest

from rootbuild.dockerfile import heredoc as hd
from rootbuild.dockerfile.instructions import Heredoc
from rootbuild.errors import DockerfileError


def _always(_: str) -> bool:
    return True


@pytest.mark.parametrize(
    ("word", "expected"),
    [
        ("<<EOF", Heredoc("EOF", "", expand=True, chomp=False)),
        ("<<-EOF", Heredoc("EOF", "", expand=True, chomp=True)),
        ('<<"EOF"', Heredoc("EOF", "", expand=False, chomp=False)),
        ("<<'EOF'", Heredoc("EOF", "", expand=False, chomp=False)),
        ("<<-'EOF'", Heredoc("EOF", "", expand=False, chomp=True)),
        ('<<E"O"F', Heredoc("EOF", "", expand=False, chomp=False)),
        ("3<<EOF", Heredoc("EOF", "", expand=True, chomp=False)),
        ("<< EOF", Heredoc("EOF", "", expand=True, chomp=False)),
        ("<<$EOF", Heredoc("$EOF", "", expand=True, chomp=False)),
        ("<<", None),
        ("<<<EOF", None),
        ("a<<EOF", None),
        ("EOF", None),
        ("<<'one two'", Heredoc("one two", "", expand=False, chomp=False)),
        ("<<one two", None),
    ],
)
def test_parse_heredoc_word(word: str, expected: Heredoc | None) -> None:
    assert hd.parse_heredoc_word(word) == expected


def test_heredoc_name_with_unclosed_quote_is_an_error() -> None:
    with pytest.raises(DockerfileError, match=r"^unterminated quote in heredoc name"):
        hd.parse_heredoc_word('<<"EOF')


@pytest.mark.parametrize(
    ("line", "names"),
    [
        ("RUN <<EOF", ["EOF"]),
        ("RUN <<A <<B", ["A", "B"]),
        ("RUN cat <<A > /x && cat <<-B", ["A", "B"]),
        ("COPY <<A <<'B' /dst/", ["A", "B"]),
        ('RUN echo "<<EOF"', []),
        ("RUN echo '<<EOF'", []),
        ("RUN echo \\<<EOF", []),
        ("RUN echo a<<EOF", []),
        ("RUN python3 << EOF", ["EOF"]),
    ],
)
def test_heredocs_in_line(line: str, names: list[str]) -> None:
    assert [doc.name for doc in hd.heredocs_in_line(line)] == names


def test_scan_reads_bodies_in_order_and_blanks_them() -> None:
    lines = ["FROM a", "RUN <<A <<-B", "one", "A", "\t\ttwo", "\tB", "RUN x"]
    result = hd.scan(lines, "\\", _always)
    assert result.stripped == ("FROM a", "RUN <<A <<-B", "", "", "", "", "RUN x")
    run = result.logical[1]
    assert (run.start, run.end, run.text) == (1, 5, "RUN <<A <<-B")
    assert run.heredocs == (
        Heredoc("A", "one\n", expand=True, chomp=False),
        Heredoc("B", "two\n", expand=True, chomp=True),
    )
    assert [(lg.start, lg.end) for lg in result.logical] == [(0, 0), (1, 5), (6, 6)]


def test_body_lines_that_look_like_instructions_or_comments_are_kept() -> None:
    lines = ["RUN <<EOF", "# not a comment", "FROM x \\", "", "EOF"]
    result = hd.scan(lines, "\\", _always)
    assert result.logical[0].heredocs[0].content == "# not a comment\nFROM x \\\n\n"
    assert len(result.logical) == 1


def test_empty_body_has_empty_content() -> None:
    result = hd.scan(["RUN <<EOF", "EOF"], "\\", _always)
    assert result.logical[0].heredocs[0].content == ""


def test_terminator_must_match_whole_line() -> None:
    result = hd.scan(["RUN <<EOF", " EOF", "EOF2", "EOF"], "\\", _always)
    assert result.logical[0].heredocs[0].content == " EOF\nEOF2\n"


def test_chomp_terminator_may_be_tab_indented_but_plain_may_not() -> None:
    chomped = hd.scan(["RUN <<-EOF", "\tx", "\tEOF"], "\\", _always)
    assert chomped.logical[0].heredocs[0].content == "x\n"
    with pytest.raises(DockerfileError, match=r"^Dockerfile:1: unterminated heredoc"):
        hd.scan(["RUN <<EOF", "\tx", "\tEOF"], "\\", _always)


def test_chomp_strips_only_leading_tabs() -> None:
    assert hd.chomp("\t\ta\n  b\n\tc\td\n") == "a\n  b\nc\td\n"


def test_unterminated_heredoc_location_spans_to_end() -> None:
    with pytest.raises(DockerfileError) as info:
        hd.scan(["FROM a", "RUN <<EOF", "echo", "more"], "\\", _always, name="Df")
    assert re.fullmatch(r"Df:2: unterminated heredoc: no line 'EOF' ends it", str(info.value))
    assert info.value.location is not None and info.value.location.end_line == 4


def test_heredoc_after_continuation_lines() -> None:
    lines = ["RUN cat \\", "  # comment", "  <<EOF", "body", "EOF", "CMD x"]
    result = hd.scan(lines, "\\", _always)
    first = result.logical[0]
    assert first.text == "RUN cat   <<EOF"
    assert (first.start, first.end) == (0, 4)
    assert first.heredocs[0].content == "body\n"


def test_not_wanted_means_no_heredoc() -> None:
    result = hd.scan(["RUN <<EOF", "EOF"], "\\", lambda _: False)
    assert [lg.text for lg in result.logical] == ["RUN <<EOF", "EOF"]


def test_scan_records_empty_continuation_lines_and_skips_comments() -> None:
    lines = ["RUN a \\", "", "  # c", "   ", "  b", "", "CMD c"]
    result = hd.scan(lines, "\\", _always)
    assert result.empty_continuations == (1, 3)
    assert [(lg.start, lg.end, lg.text) for lg in result.logical] == [
        (0, 4, "RUN a   b"),
        (6, 6, "CMD c"),
    ]


@pytest.mark.parametrize(
    ("escape", "line", "expected"),
    [
        ("\\", "RUN a \\", ("RUN a ", True)),
        ("\\", "RUN a \\  \t", ("RUN a ", True)),
        ("\\", "RUN a\\\\", ("RUN a\\\\", False)),
        ("\\", "\\", ("", True)),
        ("\\", "RUN a `", ("RUN a `", False)),
        ("`", "RUN a `", ("RUN a ", True)),
        ("`", "RUN a \\", ("RUN a \\", False)),
    ],
)
def test_trim_continuation(escape: str, line: str, expected: tuple[str, bool]) -> None:
    assert hd.trim_continuation(line, hd.continuation_regex(escape)) == expected
