"""The Dockerfile front end: text -> typed, located instructions, as BuildKit parses them."""

from __future__ import annotations

import re

import pytest

from rootbuild.dockerfile.instructions import (
    Add,
    Arg,
    Cmd,
    Copy,
    Directives,
    Entrypoint,
    Env,
    ExecCommand,
    Expose,
    From,
    Healthcheck,
    Heredoc,
    Instruction,
    Label,
    Maintainer,
    Mount,
    Onbuild,
    Run,
    Shell,
    ShellCommand,
    StopSignal,
    User,
    Volume,
    Workdir,
)
from rootbuild.dockerfile.parser import parse_dockerfile, parse_instruction
from rootbuild.errors import DockerfileError, Location


def body(text: str) -> tuple[Instruction, ...]:
    """The instructions of the single stage of ``FROM scratch`` + ``text``."""
    parsed = parse_dockerfile("FROM scratch\n" + text)
    assert len(parsed.stages) == 1
    return parsed.stages[0].instructions


def one(text: str) -> Instruction:
    (instruction,) = body(text)
    return instruction


def fields(instruction: Instruction) -> dict[str, object]:
    """The instruction's own fields (without location and original)."""
    return {
        k: v for k, v in vars(instruction).items() if k not in ("location", "original")
    }


def error(text: str, name: str = "Dockerfile") -> str:
    with pytest.raises(DockerfileError) as info:
        parse_dockerfile(text, name)
    return str(info.value)


# ------------------------------------------------------------------ every instruction

CASES: list[tuple[str, type[Instruction], dict[str, object]]] = [
    # RUN / CMD / ENTRYPOINT: shell vs exec form
    ("RUN echo hi", Run, {"command": ShellCommand("echo hi")}),
    ('RUN ["echo", "hi"]', Run, {"command": ExecCommand(("echo", "hi"))}),
    ('RUN   [ "a" ,"b" ]  ', Run, {"command": ExecCommand(("a", "b"))}),
    ("RUN []", Run, {"command": ExecCommand(())}),
    ('RUN ["echo", "hi"', Run, {"command": ShellCommand('["echo", "hi"')}),
    ("RUN [echo hi]", Run, {"command": ShellCommand("[echo hi]")}),
    ("RUN ['echo']", Run, {"command": ShellCommand("['echo']")}),
    ('RUN ["a"] && b', Run, {"command": ShellCommand('["a"] && b')}),
    ("RUN [NaN]", Run, {"command": ShellCommand("[NaN]")}),
    ('RUN {"a": 1}', Run, {"command": ShellCommand('{"a": 1}')}),
    ("RUN echo $HOME \"$X\" 'y'", Run, {"command": ShellCommand("echo $HOME \"$X\" 'y'")}),
    ("run  lower  case", Run, {"command": ShellCommand("lower  case")}),
    ("CMD echo hi", Cmd, {"command": ShellCommand("echo hi")}),
    ('CMD ["nginx", "-g", "daemon off;"]', Cmd,
     {"command": ExecCommand(("nginx", "-g", "daemon off;"))}),
    ("CMD", Cmd, {"command": ShellCommand("")}),
    ('ENTRYPOINT ["/entry.sh"]', Entrypoint, {"command": ExecCommand(("/entry.sh",))}),
    ("ENTRYPOINT exec top -b", Entrypoint, {"command": ShellCommand("exec top -b")}),
    ("ENTRYPOINT []", Entrypoint, {"command": ExecCommand(())}),
    ('SHELL ["/bin/bash", "-eo", "pipefail", "-c"]', Shell,
     {"argv": ("/bin/bash", "-eo", "pipefail", "-c")}),
    # RUN flags
    ("RUN --network=none --security=insecure make", Run,
     {"command": ShellCommand("make"), "network": "none", "security": "insecure"}),
    ("RUN --mount=type=cache,target=/root/.cache --mount=type=secret,id=tok pip install", Run,
     {"command": ShellCommand("pip install"),
      "mounts": (Mount(type="cache", target="/root/.cache", readonly=False),
                 Mount(type="secret", id="tok", readonly=True))}),
    ('RUN --mount=type=bind,from=build,source=/out,target=/in ["ls", "/in"]', Run,
     {"command": ExecCommand(("ls", "/in")),
      "mounts": (Mount(type="bind", from_="build", source="/out", target="/in",
                       readonly=True),)}),
    # COPY / ADD
    ("COPY a b /dst/", Copy, {"sources": ("a", "b"), "dest": "/dst/"}),
    ('COPY ["a b", "/d e/"]', Copy, {"sources": ("a b",), "dest": "/d e/"}),
    ('COPY "a b" /dst', Copy, {"sources": ('"a', 'b"'), "dest": "/dst"}),
    ("COPY --from=build --chown=app:app --chmod=0755 --link /out /app", Copy,
     {"sources": ("/out",), "dest": "/app", "from_": "build", "chown": "app:app",
      "chmod": "0755", "link": True}),
    ("COPY --parents --exclude=*.md --exclude=.git ./src/ /app/", Copy,
     {"sources": ("./src/",), "dest": "/app/", "parents": True,
      "excludes": ("*.md", ".git")}),
    ("COPY --from=0 $SRC ${DEST}", Copy, {"sources": ("$SRC",), "dest": "${DEST}", "from_": "0"}),
    ("ADD https://example.com/a.tgz /x", Add, {"sources": ("https://example.com/a.tgz",),
                                               "dest": "/x"}),
    ("ADD --checksum=sha256:abc --chown=1:2 --chmod=644 --link --keep-git-dir"
     " --unpack=false --exclude=x a /b", Add,
     {"sources": ("a",), "dest": "/b", "checksum": "sha256:abc", "chown": "1:2",
      "chmod": "644", "link": True, "keep_git_dir": True, "unpack": False, "excludes": ("x",)}),
    ('ADD ["a", "b", "/c/"]', Add, {"sources": ("a", "b"), "dest": "/c/"}),
    # ENV / LABEL / ARG: values unexpanded, quotes kept
    ("ENV key value with  spaces", Env, {"pairs": (("key", "value with  spaces"),)}),
    ('ENV a=b c="d e" f=\'g h\'', Env, {"pairs": (("a", "b"), ("c", '"d e"'), ("f", "'g h'"))}),
    ("ENV a=x\\ y b=$A", Env, {"pairs": (("a", "x\\ y"), ("b", "$A"))}),
    ("ENV a=", Env, {"pairs": (("a", ""),)}),
    ('LABEL "com.example.vendor"="ACME Inc" version=1.0', Label,
     {"pairs": (('"com.example.vendor"', '"ACME Inc"'), ("version", "1.0"))}),
    ("LABEL legacy some value", Label, {"pairs": (("legacy", "some value"),)}),
    ("ARG name", Arg, {"args": (("name", None),)}),
    ("ARG name=default", Arg, {"args": (("name", "default"),)}),
    ('ARG a=1 b c="x y" d=', Arg, {"args": (("a", "1"), ("b", None), ("c", '"x y"'), ("d", ""))}),
    # the rest
    ("EXPOSE 80 53/udp 8000-8010/tcp", Expose, {"ports": ("53/udp", "80", "8000-8010/tcp")}),
    ("EXPOSE $PORT", Expose, {"ports": ("$PORT",)}),
    ("USER app:app", User, {"user": "app:app"}),
    ("USER ${UID}", User, {"user": "${UID}"}),
    ("WORKDIR /app/$DIR", Workdir, {"path": "/app/$DIR"}),
    ("WORKDIR /with space", Workdir, {"path": "/with space"}),
    ('VOLUME ["/data", "/logs"]', Volume, {"paths": ("/data", "/logs")}),
    ("VOLUME /data /logs", Volume, {"paths": ("/data", "/logs")}),
    ("STOPSIGNAL SIGTERM", StopSignal, {"signal": "SIGTERM"}),
    ("MAINTAINER Jane Doe <jane@example.com>", Maintainer,
     {"name": "Jane Doe <jane@example.com>"}),
    ("ONBUILD RUN echo hi", Onbuild, {"trigger": "RUN echo hi"}),
    ("onbuild   COPY --from=x a b", Onbuild, {"trigger": "COPY --from=x a b"}),
    ("HEALTHCHECK NONE", Healthcheck, {"test": ("NONE",)}),
    ("HEALTHCHECK CMD curl -f http://localhost/ || exit 1", Healthcheck,
     {"test": ("CMD-SHELL", "curl -f http://localhost/ || exit 1")}),
    ('HEALTHCHECK --interval=30s --timeout=1m30s --start-period=500ms --start-interval=2s'
     ' --retries=3 CMD ["curl", "-f", "http://x/"]', Healthcheck,
     {"test": ("CMD", "curl", "-f", "http://x/"), "interval": 30_000_000_000,
      "timeout": 90_000_000_000, "start_period": 500_000_000,
      "start_interval": 2_000_000_000, "retries": 3}),
    ("HEALTHCHECK --interval=0s --retries=0 cmd true", Healthcheck,
     {"test": ("CMD-SHELL", "true"), "interval": None, "retries": None}),
]


@pytest.mark.parametrize(("line", "kind", "expected"), CASES, ids=[c[0][:50] for c in CASES])
def test_instruction(line: str, kind: type[Instruction], expected: dict[str, object]) -> None:
    instruction = one(line + "\n")
    assert type(instruction) is kind
    got = fields(instruction)
    assert {k: got[k] for k in expected} == expected
    assert instruction.original == line
    assert instruction.location == Location("Dockerfile", 2, 2)


def test_instruction_defaults() -> None:
    copy = one("COPY a b\n")
    assert fields(copy) == {
        "sources": ("a",), "dest": "b", "from_": None, "chown": None, "chmod": None,
        "link": False, "parents": False, "excludes": (), "heredocs": (),
    }
    add = one("ADD a b\n")
    assert isinstance(add, Add) and add.unpack is None and add.checksum is None
    run = one("RUN x\n")
    assert fields(run) == {
        "command": ShellCommand("x"), "mounts": (), "network": None, "security": None,
        "heredocs": (), "devices": (),
    }
    health = one("HEALTHCHECK CMD true\n")
    assert isinstance(health, Healthcheck)
    assert (health.interval, health.timeout, health.start_period, health.start_interval,
            health.retries) == (None, None, None, None, None)


def test_keyword_property_matches_instruction() -> None:
    assert one("STOPSIGNAL 9\n").keyword == "STOPSIGNAL"


# ------------------------------------------------------------------ FROM and stages


def test_from_forms_and_stage_grouping() -> None:
    parsed = parse_dockerfile(
        "ARG A=1\nARG B\n"
        "FROM --platform=$BUILDPLATFORM golang:1.22 AS Build-Env\nRUN go build\n"
        "from alpine as final\nCOPY --from=build-env /out /out\n"
        "FROM scratch\n"
    )
    assert [a.args for a in parsed.meta_args] == [(("A", "1"),), (("B", None),)]
    assert [(s.index, s.name, s.from_.image, s.from_.platform) for s in parsed.stages] == [
        (0, "build-env", "golang:1.22", "$BUILDPLATFORM"),
        (1, "final", "alpine", None),
        (2, None, "scratch", None),
    ]
    assert [i.keyword for i in parsed.stages[0].instructions] == ["RUN"]
    assert [i.keyword for i in parsed.stages[1].instructions] == ["COPY"]
    assert parsed.stages[2].instructions == ()
    assert parsed.stages[1].from_ == From(
        Location("Dockerfile", 5, 5), "from alpine as final", "alpine", "final", None
    )
    assert parsed.directives == Directives("\\", None)
    assert parsed.warnings == ()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("FROM\n", r"FROM requires either one or three arguments"),
        ("FROM a b\n", r"FROM requires either one or three arguments"),
        ("FROM a AS\n", r"FROM requires either one or three arguments"),
        ("FROM a AS b c\n", r"FROM requires either one or three arguments"),
        ("FROM a FOR b\n", r"FROM requires either one or three arguments"),
        ("FROM a AS 1st\n", r'invalid name for build stage: "1st", name can\'t start with a'
                            r" number or contain symbols"),
        ("FROM a AS b/c\n", r'invalid name for build stage: "b/c"'),
        ("FROM --plaform=x a\n", r"unknown flag: plaform \(did you mean platform\?\)"),
    ],
)
def test_from_errors(text: str, message: str) -> None:
    assert re.match(r"^Dockerfile:1: " + message, error(text))


# ------------------------------------------------------------------ structural errors


def test_empty_dockerfile() -> None:
    assert re.fullmatch(r"Dockerfile:1: file with no instructions", error(""))
    assert re.fullmatch(
        r"Dockerfile:3: file with no instructions", error("# syntax=x\n\n# just comments\n")
    )


def test_no_from() -> None:
    assert re.fullmatch(r"Df:1: dockerfile contains no stages to build", error("ARG a\n", "Df"))


def test_instruction_before_from() -> None:
    assert re.fullmatch(
        r"Dockerfile:2: no build stage in current context: RUN before the first FROM",
        error("ARG X\nRUN x\nFROM a\n"),
    )


def test_unknown_instruction_with_suggestion() -> None:
    assert re.fullmatch(
        r"Dockerfile:3: unknown instruction: COPPY \(did you mean COPY\?\)",
        error("FROM a\n\ncoppy a b\n"),
    )
    assert re.fullmatch(r"Dockerfile:2: unknown instruction: XYZZY", error("FROM a\nXYZZY\n"))


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("COPY a", "COPY requires at least two arguments, but only one was provided."
                   " Destination could not be determined"),
        ("COPY", "COPY requires at least two arguments"),
        ('COPY ["a"]', "COPY requires at least two arguments"),
        ("ADD a", "ADD requires at least two arguments"),
        ("COPY a <<EOF\nEOF", "COPY cannot accept a heredoc as a destination"),
        ("COPY --form=a b c", r"unknown flag: form \(did you mean from\?\)"),
        ("ADD --from=a b c", "unknown flag: from"),
        ("COPY --link=maybe a b", "expecting boolean value for flag link, not: maybe"),
        ("RUN --foo echo", "unknown flag: foo"),
        ("RUN --network=bridge echo", 'network mode "bridge" not supported'),
        ("RUN --security=root echo", 'security mode "root" not supported'),
        ("RUN --mount=type=nope echo", 'unsupported mount type "nope"'),
        ("RUN --mount echo", "missing a value on flag: mount"),
        ('RUN ["a", 1]', "when using JSON array syntax, arrays must be comprised of strings only"),
        ('CMD ["a", null]', "when using JSON array syntax, arrays must be comprised of strings"),
        ('VOLUME ["/a", 2]', "when using JSON array syntax"),
        ("SHELL /bin/sh -c", "SHELL requires the arguments to be in JSON form"),
        ("SHELL []", "SHELL requires at least one argument"),
        ("SHELL", "SHELL requires at least one argument"),
        ("ENV", "ENV requires at least one argument"),
        ("ENV onlykey", "ENV must have two arguments"),
        ("ENV a=b c", r'syntax error - can\'t find = in "c"\. Must be of the form: name=value'),
        ("ENV =b", "ENV names can not be blank"),
        ('ENV a="" b', r'syntax error - can\'t find = in "b"'),
        ("LABEL", "LABEL requires at least one argument"),
        ("LABEL =v", "LABEL names can not be blank"),
        ("ARG", "ARG requires at least one argument"),
        ("ARG =x", "ARG names can not be blank"),
        ("EXPOSE", "EXPOSE requires at least one argument"),
        ("USER", "USER requires exactly one argument"),
        ("WORKDIR", "WORKDIR requires exactly one argument"),
        ("STOPSIGNAL", "STOPSIGNAL requires exactly one argument"),
        ("MAINTAINER", "MAINTAINER requires exactly one argument"),
        ("VOLUME", "VOLUME requires at least one argument"),
        ('VOLUME ["/a", " "]', "VOLUME specified can not be an empty string"),
        ("USER --chown=x y", "unknown flag: chown"),
        ("ONBUILD", "ONBUILD requires at least one argument"),
        ("ONBUILD ONBUILD RUN x", "chaining ONBUILD via `ONBUILD ONBUILD` isn't allowed"),
        ("ONBUILD FROM x", "FROM isn't allowed as an ONBUILD trigger"),
        ("ONBUILD maintainer x", "MAINTAINER isn't allowed as an ONBUILD trigger"),
        ("HEALTHCHECK", "HEALTHCHECK requires at least one argument"),
        ("HEALTHCHECK NONE x", "HEALTHCHECK NONE takes no arguments"),
        ("HEALTHCHECK CMD", "missing command after HEALTHCHECK CMD"),
        ("HEALTHCHECK CMD []", "missing command after HEALTHCHECK CMD"),
        ("HEALTHCHECK RUN x", r'unknown type "RUN" in HEALTHCHECK \(try CMD\)'),
        ("HEALTHCHECK --interval=abc CMD x",
         r'invalid value for --interval: time: invalid duration "abc"'),
        ("HEALTHCHECK --timeout=10 CMD x",
         r'invalid value for --timeout: time: missing unit in duration "10"'),
        ("HEALTHCHECK --start-period=1d CMD x",
         r'invalid value for --start-period: time: unknown unit "d" in duration "1d"'),
        ("HEALTHCHECK --interval=100us CMD x", r'interval "interval" cannot be less than 1ms'),
        ("HEALTHCHECK --interval=-1s CMD x", r'interval "interval" cannot be less than 1ms'),
        ("HEALTHCHECK --retries=-1 CMD x", r"--retries cannot be negative \(-1\)"),
        ("HEALTHCHECK --retries=three CMD x", r"invalid value for --retries: three"),
        ("HEALTHCHECK --intervl=1s CMD x", r"unknown flag: intervl \(did you mean interval\?\)"),
    ],
)
def test_instruction_errors(line: str, message: str) -> None:
    got = error("FROM a\n" + line + "\n")
    assert re.match(r"^Dockerfile:2: " + message, got), got


def test_error_location_spans_continuation_lines() -> None:
    with pytest.raises(DockerfileError) as info:
        parse_dockerfile("FROM a\nCOPY \\\n  # c\n  onlyone\nRUN x\n")
    assert re.fullmatch(r"Dockerfile:2: COPY requires at least two arguments.*", str(info.value))
    assert info.value.location == Location("Dockerfile", 2, 4)
    assert info.value.message.startswith("COPY requires")


# ------------------------------------------------------------------ lines, comments, directives


def test_continuations_comments_and_empty_lines() -> None:
    text = (
        "FROM a\n"
        "# a comment\n"
        "RUN apt-get update && \\\n"
        "    # comment inside\n"
        "\n"
        "    apt-get install -y \\\n"
        "      curl\n"
        "\n"
        "   CMD   [\"sh\"]   \n"
    )
    parsed = parse_dockerfile(text)
    run, cmd = parsed.stages[0].instructions
    assert run.location == Location("Dockerfile", 3, 7)
    assert run.original == "RUN apt-get update &&     apt-get install -y       curl"
    assert isinstance(run, Run)
    assert run.command == ShellCommand("apt-get update &&     apt-get install -y       curl")
    assert cmd.location == Location("Dockerfile", 9, 9)
    assert cmd.original == 'CMD   ["sh"]   '
    assert isinstance(cmd, Cmd) and cmd.command == ExecCommand(("sh",))
    assert parsed.warnings == (
        "Dockerfile:5: empty continuation line (such lines will become errors in a future"
        " Docker release)",
    )


def test_continuation_keyword_split_over_lines() -> None:
    # dockerfile-parse reads the keyword of "RUN\" as "RUN\"; BuildKit joins first.
    run = one("RUN\\\n echo hi\n")
    assert isinstance(run, Run) and run.command == ShellCommand("echo hi")
    assert run.original == "RUN echo hi"


def test_escaped_escape_at_end_of_line_does_not_continue() -> None:
    # BuildKit's continuation regex ignores a trailing "\\"; dockerfile-parse does not.
    first, second = body("RUN echo a\\\\\nRUN echo b\n")
    assert first.original == "RUN echo a\\\\"
    assert second.location == Location("Dockerfile", 3, 3)


def test_one_word_last_line_without_newline() -> None:
    # dockerfile-parse drops a one-word last line that has no newline.
    cmd = body("RUN x\nCMD")[-1]
    assert isinstance(cmd, Cmd) and cmd.location == Location("Dockerfile", 3, 3)


def test_continuation_running_to_end_of_file() -> None:
    run = one("RUN echo a \\\n  b \\")
    assert run.original == "RUN echo a   b "
    assert run.location == Location("Dockerfile", 2, 3)
    run = one("RUN echo a \\\n\n")
    assert run.original == "RUN echo a "


def test_crlf_and_bom() -> None:
    parsed = parse_dockerfile("\ufeff# escape=`\r\nFROM a\r\nRUN echo `\r\n  hi\r\n")
    (run,) = parsed.stages[0].instructions
    assert parsed.directives.escape == "`"
    assert run.original == "RUN echo   hi"


def test_escape_directive_backtick() -> None:
    text = (
        "# escape=`\n"
        "FROM mcr.microsoft.com/windows/servercore\n"
        "RUN dir c:\\ `\n"
        "    && echo done\n"
        "COPY testfile.txt c:\\\n"
        "ENV path=c:\\dir\\ `\n"
        "    b=`\"q`\"\n"
    )
    parsed = parse_dockerfile(text)
    assert parsed.directives == Directives("`", None)
    run, copy, env = parsed.stages[0].instructions
    assert isinstance(run, Run) and run.command == ShellCommand("dir c:\\     && echo done")
    assert run.location == Location("Dockerfile", 3, 4)
    assert isinstance(copy, Copy) and copy.dest == "c:\\"
    assert copy.location == Location("Dockerfile", 5, 5)
    assert isinstance(env, Env) and env.pairs == (("path", "c:\\dir\\"), ("b", '`"q`"'))


@pytest.mark.parametrize(
    ("header", "escape", "syntax"),
    [
        ("# syntax=docker/dockerfile:1\n# escape=`\n", "`", "docker/dockerfile:1"),
        ("#ESCAPE = `\n#Syntax= x y \n", "`", "x y"),
        ("# check=skip=all\n# escape=`\n", "`", None),
        ("  # escape=`\n", "`", None),
        ("# comment\n# escape=`\n", "\\", None),
        ("\n# escape=`\n", "\\", None),
        ("# unknown=1\n# escape=`\n", "\\", None),
        ("# escape=\\\n", "\\", None),
    ],
)
def test_directives(header: str, escape: str, syntax: str | None) -> None:
    parsed = parse_dockerfile(header + "FROM a\nRUN echo \\\nRUN b\n")
    assert parsed.directives == Directives(escape, syntax)
    originals = [i.original for i in parsed.stages[0].instructions]
    if escape == "\\":
        assert originals == ["RUN echo RUN b"]
    else:  # "\" is then an ordinary character
        assert originals == ["RUN echo \\", "RUN b"]


def test_directive_after_instruction_is_a_comment() -> None:
    parsed = parse_dockerfile("FROM a\n# escape=`\nRUN echo \\\n  b\n")
    assert parsed.directives.escape == "\\"
    assert parsed.stages[0].instructions[0].original == "RUN echo   b"


def test_directive_errors() -> None:
    assert re.fullmatch(
        r"Dockerfile:2: only one escape parser directive can be used",
        error("# escape=`\n# escape=\\\nFROM a\n"),
    )
    assert re.fullmatch(
        r"Dockerfile:1: invalid escape token 'x' does not match ` or \\",
        error("# escape=x\nFROM a\n"),
    )


# ------------------------------------------------------------------ heredocs


def test_run_heredoc() -> None:
    parsed = parse_dockerfile("FROM a\nRUN <<EOF\nset -e\necho $HOME\nEOF\nCMD x\n")
    run, cmd = parsed.stages[0].instructions
    assert isinstance(run, Run)
    assert run.command == ShellCommand("<<EOF")
    assert run.heredocs == (Heredoc("EOF", "set -e\necho $HOME\n", expand=True, chomp=False),)
    assert run.location == Location("Dockerfile", 2, 5)
    assert run.original == "RUN <<EOF"
    assert cmd.location == Location("Dockerfile", 6, 6)


def test_run_several_heredocs_chomp_and_quotes() -> None:
    text = (
        "FROM a\n"
        "RUN --network=none python3 <<'PY' && sh <<-SH\n"
        "print('$x')\n"
        "PY\n"
        "\techo tabbed\n"
        "\tSH\n"
        "RUN echo after\n"
    )
    run, after = parse_dockerfile(text).stages[0].instructions
    assert isinstance(run, Run)
    assert run.command == ShellCommand("python3 <<'PY' && sh <<-SH")
    assert run.network == "none"
    assert run.heredocs == (
        Heredoc("PY", "print('$x')\n", expand=False, chomp=False),
        Heredoc("SH", "echo tabbed\n", expand=True, chomp=True),
    )
    assert run.location == Location("Dockerfile", 2, 6)
    assert after.location == Location("Dockerfile", 7, 7)


def test_copy_heredocs_as_sources() -> None:
    text = (
        'FROM a\nCOPY --chmod=755 <<run.sh <<"conf" plain.txt /app/\n'
        "#!/bin/sh\nrun.sh\n$X\nconf\n"
    )
    (copy,) = parse_dockerfile(text).stages[0].instructions
    assert isinstance(copy, Copy)
    assert copy.sources == ("<<run.sh", "<<conf", "plain.txt")
    assert copy.dest == "/app/"
    assert copy.chmod == "755"
    assert copy.heredocs == (
        Heredoc("run.sh", "#!/bin/sh\n", expand=True),
        Heredoc("conf", "$X\n", expand=False),
    )
    assert copy.location == Location("Dockerfile", 2, 6)


def test_add_heredoc() -> None:
    (add,) = body("ADD <<-EOT /etc/motd\n\thello\n\tEOT\n")
    assert isinstance(add, Add)
    assert add.sources == ("<<EOT",)
    assert add.heredocs == (Heredoc("EOT", "hello\n", expand=True, chomp=True),)


def test_heredoc_body_is_not_parsed_as_instructions() -> None:
    (run,) = body("RUN <<EOF\nFROM x\n# comment\n\nCOPPY\nEOF\n")
    assert isinstance(run, Run) and run.heredocs[0].content == "FROM x\n# comment\n\nCOPPY\n"


def test_heredoc_only_for_run_copy_add_shell_form() -> None:
    cmd, run = body('CMD cat <<EOF\nRUN ["cat", "<<EOF"]\n')
    assert isinstance(cmd, Cmd) and cmd.command == ShellCommand("cat <<EOF")
    assert isinstance(run, Run) and run.heredocs == ()
    assert run.command == ExecCommand(("cat", "<<EOF"))


def test_quoted_heredoc_marker_is_not_a_heredoc() -> None:
    (run,) = body('RUN echo "<<EOF" > x\n')
    assert isinstance(run, Run) and run.heredocs == ()


def test_heredoc_after_continuation() -> None:
    run, cmd = body("RUN cat \\\n  <<EOF\nhi\nEOF\nCMD x\n")
    assert isinstance(run, Run) and run.heredocs[0].content == "hi\n"
    assert run.location == Location("Dockerfile", 2, 5)
    assert cmd.location == Location("Dockerfile", 6, 6)


def test_unterminated_heredoc() -> None:
    assert re.fullmatch(
        r"Dockerfile:2: unterminated heredoc: no line 'EOF' ends it",
        error("FROM a\nRUN <<EOF\necho\n"),
    )


def test_onbuild_with_heredoc_keeps_body_in_trigger() -> None:
    (onbuild,) = body("ONBUILD RUN <<EOF\necho hi\nEOF\nCMD x\n")[:1]
    assert isinstance(onbuild, Onbuild)
    assert onbuild.trigger == "RUN <<EOF\necho hi\nEOF"
    assert onbuild.location == Location("Dockerfile", 2, 4)
    trigger = parse_instruction(onbuild.trigger, Location("base:ONBUILD", 1))
    assert isinstance(trigger, Run)
    assert trigger.heredocs == (Heredoc("EOF", "echo hi\n"),)


# ------------------------------------------------------------------ parse_instruction


def test_parse_instruction() -> None:
    where = Location("ONBUILD", 7, 7)
    copy = parse_instruction("COPY --from=build /a /b", where)
    assert isinstance(copy, Copy) and copy.from_ == "build" and copy.location == where
    run = parse_instruction("RUN echo `\n  hi", where, escape="`")
    assert isinstance(run, Run) and run.command == ShellCommand("echo   hi")


def test_parse_instruction_errors_carry_given_location() -> None:
    where = Location("base-image ONBUILD", 3)
    with pytest.raises(DockerfileError) as info:
        parse_instruction("COPPY a b", where)
    assert re.fullmatch(
        r"base-image ONBUILD:3: unknown instruction: COPPY \(did you mean COPY\?\)",
        str(info.value),
    )
    with pytest.raises(DockerfileError, match=r"^base-image ONBUILD:3: unterminated heredoc"):
        parse_instruction("RUN <<EOF\nno end", where)
    with pytest.raises(DockerfileError, match=r"^base-image ONBUILD:3: expected exactly one"):
        parse_instruction("RUN a\nRUN b", where)
    with pytest.raises(DockerfileError, match=r"^base-image ONBUILD:3: expected exactly one"):
        parse_instruction("", where)


def test_surrogate_characters_do_not_break_the_adapter() -> None:
    run = one("RUN echo \udcff\n")
    assert run.original == "RUN echo \udcff"


# Fragments that exercise every place where dockerfile-parse and BuildKit read lines
# differently (continuations, escaped escapes, blank and comment lines in continuations,
# heredocs, directives, the backtick escape).
_FRAGMENTS = [
    "FROM a", "RUN a", "RUN a \\", "\\", "  \\", "", "  ", "# c", "  # c \\", "RUN a\\\\",
    "RUN <<EOF", "EOF", "\tEOF", "RUN <<-EOF", "COPY <<A <<B /x", "A", "B", "x `", "CMD",
    "RUN\\", "ONBUILD RUN <<EOF", 'RUN ["a"] <<EOF', "echo \\ \t", "LABEL a=b `",
    "# escape=`", "# syntax=x", "RUN cat <<'EOF' \\", "  <<X", "X",
]


def test_adapter_agrees_with_buildkit_line_rules_on_random_files() -> None:
    """dockerfile-parse's grouping (as corrected by the adapter) must put every
    instruction where BuildKit's line rules (heredoc.scan) put it."""
    import random

    from rootbuild.dockerfile import heredoc
    from rootbuild.dockerfile import parser as parser_module

    rng = random.Random(20240601)
    parsed_ok = 0
    for _ in range(3000):
        lines = ["FROM a", *(rng.choice(_FRAGMENTS) for _ in range(rng.randint(0, 10)))]
        if rng.random() < 0.3:
            lines.insert(0, "# escape=`")
        text = "\n".join(lines) + rng.choice(["", "\n"])
        try:
            parsed = parse_dockerfile(text)
        except DockerfileError:
            continue
        parsed_ok += 1
        escape = parsed.directives.escape
        as_read = text.split("\n")[:-1] if text.endswith("\n") else text.split("\n")
        logical = heredoc.scan(as_read, escape, parser_module._wants_heredocs).logical
        located = [(s.from_.location, s.from_.original) for s in parsed.stages]
        located += [(i.location, i.original) for s in parsed.stages for i in s.instructions]
        assert sorted(((loc.line, loc.end_line), text) for loc, text in located) == [
            ((lg.start + 1, lg.end + 1), lg.text) for lg in logical
        ]
    assert parsed_ok > 300
