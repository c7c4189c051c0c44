"""Dispatch semantics: config, history and steps per instruction, as BuildKit records them."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytest

from rootbuild.dockerfile.instructions import (
    Add,
    Arg,
    Cmd,
    Copy,
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
    StageSpec,
    StopSignal,
    User,
    Volume,
    Workdir,
)
from rootbuild.errors import DockerfileError, Location, StageGraphError
from rootbuild.platform import Platform
from rootbuild.stages.args import predefined_args, unused_build_args
from rootbuild.stages.config import DEFAULT_PATH, HistoryEntry, ImageConfig
from rootbuild.stages.evaluate import apply, begin_stage, onbuild_triggers
from rootbuild.stages.graph import StageBase
from rootbuild.stages.steps import (
    CopyStep,
    MetadataStep,
    RunStep,
    StageState,
    Step,
    StepMount,
    WorkdirStep,
)

NOW = "2024-01-01T00:00:00Z"
LOC = Location("Dockerfile", 2)
AMD64 = Platform("linux", "amd64")
PATH_ENV = f"PATH={DEFAULT_PATH}"
COMMENT = "buildkit.dockerfile.v0"


def start(
    config: ImageConfig | None = None,
    *,
    meta: Mapping[str, str] | None = None,
    build_args: Mapping[str, str] | None = None,
    parent: StageState | None = None,
    refs: tuple[tuple[str, StageBase], ...] = (),
) -> StageState:
    spec = StageSpec(0, From(Location("Dockerfile", 1), "FROM scratch", "scratch"))
    return begin_stage(
        config if config is not None else ImageConfig.scratch(AMD64),
        spec, meta or {}, build_args or {}, predefined_args(AMD64, AMD64),
        escape="\\", parent=parent, refs=refs,
    )


def run(state: StageState, *instrs: Instruction) -> tuple[StageState, list[Step]]:
    steps = []
    for instr in instrs:
        state, step = apply(state, instr, now=NOW)
        steps.append(step)
    return state, steps


def env(*pairs: tuple[str, str]) -> Env:
    return Env(LOC, "ENV", pairs)


def arg(*args: tuple[str, str | None]) -> Arg:
    return Arg(LOC, "ARG", args)


def label(key: str, value: str) -> Label:
    return Label(LOC, "LABEL", ((key, value),))


def sh(text: str) -> Run:
    return Run(LOC, "RUN " + text, ShellCommand(text))


def copy(*words: str, **kw: Any) -> Copy:
    return Copy(LOC, "COPY", tuple(words[:-1]), words[-1], **kw)


def created_by(step: Step) -> str:
    assert step.history is not None
    return step.history.created_by


def labels(state: StageState) -> dict[str, str]:
    return state.config.labels_dict


# -- one table row per metadata instruction: history string and resulting config --------------

METADATA_CASES: list[tuple[Instruction, str, dict[str, Any], dict[str, Any]]] = [
    (env(("A", "b")), "ENV A=b", {"Env": [PATH_ENV, "A=b"]}, {}),
    (env(("MSG", '"hello world"'), ("X", "'$y'")), "ENV MSG=hello world X=$y",
     {"Env": [PATH_ENV, "MSG=hello world", "X=$y"]}, {}),
    (Label(LOC, "LABEL", (("a", "b"), ('"com.x.version"', '"1.0"'))),
     "LABEL a=b com.x.version=1.0", {"Labels": {"a": "b", "com.x.version": "1.0"}}, {}),
    (Expose(LOC, "EXPOSE", ("80", "53/udp", "8000-8001")),
     "EXPOSE [80/tcp 53/udp 8000/tcp 8001/tcp]",
     {"ExposedPorts": {"53/udp": {}, "80/tcp": {}, "8000/tcp": {}, "8001/tcp": {}}}, {}),
    (User(LOC, "USER", "app:app"), "USER app:app", {"User": "app:app"}, {}),
    (Volume(LOC, "VOLUME", ("/var/log", "/data")), "VOLUME [/var/log /data]",
     {"Volumes": {"/data": {}, "/var/log": {}}}, {}),
    (Entrypoint(LOC, "ENTRYPOINT", ExecCommand(("/init", "--"))),
     'ENTRYPOINT ["/init" "--"]', {"Entrypoint": ["/init", "--"]}, {}),
    (Entrypoint(LOC, "ENTRYPOINT", ShellCommand("exec nginx -g 'daemon off;'")),
     'ENTRYPOINT ["/bin/sh" "-c" "exec nginx -g \'daemon off;\'"]',
     {"Entrypoint": ["/bin/sh", "-c", "exec nginx -g 'daemon off;'"]}, {}),
    (Cmd(LOC, "CMD", ExecCommand(("sh",))), 'CMD ["sh"]',
     {"Cmd": ["sh"], "ArgsEscaped": True}, {}),
    (Cmd(LOC, "CMD", ShellCommand('echo "$HOME"')), 'CMD ["/bin/sh" "-c" "echo \\"$HOME\\""]',
     {"Cmd": ["/bin/sh", "-c", 'echo "$HOME"'], "ArgsEscaped": True}, {}),
    (Shell(LOC, "SHELL", ("/bin/bash", "-eo", "pipefail", "-c")),
     "SHELL [/bin/bash -eo pipefail -c]", {"Shell": ["/bin/bash", "-eo", "pipefail", "-c"]}, {}),
    (Healthcheck(LOC, "HEALTHCHECK NONE", ("NONE",)),
     "HEALTHCHECK {Test:[NONE] Interval:0s Timeout:0s StartPeriod:0s StartInterval:0s Retries:0}",
     {"Healthcheck": {"Test": ["NONE"]}}, {}),
    (Healthcheck(LOC, "HEALTHCHECK", ("CMD-SHELL", "curl -f http://localhost/ || exit 1"),
                 interval=30_000_000_000, timeout=3_000_000_000, start_period=5_000_000_000,
                 start_interval=1_500_000_000, retries=3),
     "HEALTHCHECK {Test:[CMD-SHELL curl -f http://localhost/ || exit 1] Interval:30s "
     "Timeout:3s StartPeriod:5s StartInterval:1.5s Retries:3}",
     {"Healthcheck": {"Test": ["CMD-SHELL", "curl -f http://localhost/ || exit 1"],
                      "Interval": 30_000_000_000, "Timeout": 3_000_000_000,
                      "StartPeriod": 5_000_000_000, "StartInterval": 1_500_000_000,
                      "Retries": 3}}, {}),
    (StopSignal(LOC, "STOPSIGNAL", "SIGQUIT"), "STOPSIGNAL SIGQUIT",
     {"StopSignal": "SIGQUIT"}, {}),
    (Maintainer(LOC, "MAINTAINER", "Jane <jane@example.com>"),
     "MAINTAINER Jane <jane@example.com>", {}, {"author": "Jane <jane@example.com>"}),
    (arg(("V", "1"), ("W", None)), "ARG V=1 W", {}, {}),
    (Workdir(LOC, "WORKDIR /", "/"), "WORKDIR /", {}, {}),
]


@pytest.mark.parametrize(("instr", "created_by", "config", "top"), METADATA_CASES)
def test_metadata_instruction(
    instr: Instruction, created_by: str, config: dict[str, Any], top: dict[str, Any]
) -> None:
    state, step = apply(start(), instr, now=NOW)
    entry = HistoryEntry(created=NOW, created_by=created_by, comment=COMMENT, empty_layer=True)
    assert step == MetadataStep(entry)
    out = state.config.to_oci()
    assert out["config"] == {"Env": [PATH_ENV], "WorkingDir": "/"} | config
    assert out["history"] == [
        {"created": NOW, "created_by": created_by, "comment": COMMENT, "empty_layer": True}]
    for key, value in top.items():
        assert out[key] == value


def test_scratch_stage_config_before_any_instruction() -> None:
    assert start().config.to_oci() == {
        "architecture": "amd64",
        "config": {"Env": [PATH_ENV], "WorkingDir": "/"},
        "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": []},
    }


def test_base_without_path_gets_buildkits_default_and_loses_created() -> None:
    base = ImageConfig(os="linux", architecture="amd64", env=("A=1",),
                       created="2020-01-01T00:00:00Z")
    state = start(base)
    assert state.config.env == ("A=1", PATH_ENV)
    assert state.config.created is None
    assert state.config.working_dir == ""


def test_full_stage_matches_what_buildkit_writes() -> None:
    state, steps = run(
        start(),
        env(("APP", "/srv/app")),
        Workdir(LOC, "WORKDIR $APP", "$APP"),
        copy("app/", "."),
        sh("make install"),
        Cmd(LOC, "CMD", ExecCommand(("app",))),
    )
    assert [type(s) for s in steps] == [MetadataStep, WorkdirStep, CopyStep, RunStep, MetadataStep]
    cfg = state.config.with_layer("sha256:" + "a" * 64).with_layer("sha256:" + "b" * 64)
    cfg = cfg.with_layer("sha256:" + "c" * 64)
    hist = [h.to_oci() for h in cfg.history]
    assert hist == [
        {"created": NOW, "created_by": "ENV APP=/srv/app", "comment": COMMENT, "empty_layer": True},
        {"created": NOW, "created_by": "WORKDIR /srv/app", "comment": COMMENT},
        {"created": NOW, "created_by": "COPY app/ . # buildkit", "comment": COMMENT},
        {"created": NOW, "created_by": "RUN /bin/sh -c make install # buildkit",
         "comment": COMMENT},
        {"created": NOW, "created_by": 'CMD ["app"]', "comment": COMMENT, "empty_layer": True},
    ]
    assert cfg.to_oci()["config"] == {
        "Env": [PATH_ENV, "APP=/srv/app"], "Cmd": ["app"], "WorkingDir": "/srv/app",
        "ArgsEscaped": True,
    }


# -- ARG scoping ------------------------------------------------------------------------------


def test_global_arg_is_invisible_in_a_stage_until_redeclared() -> None:
    state, _ = run(start(meta={"VERSION": "1.0"}), label("before", "v$VERSION"),
                   arg(("VERSION", None)), label("after", "v$VERSION"))
    assert labels(state) == {"before": "v", "after": "v1.0"}
    assert state.config.history[1].created_by == "ARG VERSION=1.0"


def test_build_arg_overrides_a_stage_default() -> None:
    state, steps = run(start(build_args={"VERSION": "2.0"}), arg(("VERSION", "1.0")),
                       label("v", "$VERSION"), sh("true"))
    assert labels(state) == {"v": "2.0"}
    assert state.config.history[0].created_by == "ARG VERSION=2.0"
    assert created_by(steps[2]) == "RUN |1 VERSION=2.0 /bin/sh -c true # buildkit"


def test_build_arg_without_arg_declaration_reaches_nothing() -> None:
    state, steps = run(start(build_args={"SECRETISH": "x"}), label("l", "$SECRETISH"), sh("true"))
    assert labels(state) == {"l": ""}
    assert isinstance(steps[1], RunStep)
    assert not any(e.startswith("SECRETISH=") for e in steps[1].env)
    assert unused_build_args({"SECRETISH": "x"}, state.declared) == ("SECRETISH",)


def test_predefined_platform_args_need_an_arg_in_the_stage() -> None:
    state, _ = run(start(), label("before", "$TARGETARCH"), arg(("TARGETARCH", None)),
                   arg(("TARGETPLATFORM", None)), label("after", "$TARGETARCH"))
    assert labels(state) == {"before": "", "after": "amd64"}
    assert state.scope["TARGETPLATFORM"] == "linux/amd64"


def test_env_set_after_arg_shadows_it() -> None:
    state, steps = run(start(), arg(("V", "arg")), env(("V", "env")), label("l", "$V"), sh("true"))
    assert labels(state) == {"l": "env"}
    assert created_by(steps[3]) == "RUN |1 V=env /bin/sh -c true # buildkit"


def test_arg_redeclared_after_inherited_env_wins_as_in_buildkit() -> None:
    base = ImageConfig(os="linux", architecture="amd64", env=("PATH=/bin", "V=base"))
    state, steps = run(start(base), arg(("V", "arg")), label("l", "$V"), sh("env"))
    assert labels(state) == {"l": "arg"}
    assert state.config.env == ("PATH=/bin", "V=base")  # the image keeps its ENV
    assert isinstance(steps[2], RunStep)
    assert steps[2].env == ("PATH=/bin", "V=arg")


def test_arg_values_chain_within_and_across_instructions() -> None:
    state, _ = run(start(), arg(("A", "1"), ("B", "${A}2")), arg(("C", "$B-3")))
    assert state.scope["B"] == "12" and state.scope["C"] == "12-3"


def test_valueless_arg_shows_empty_in_run_history_but_not_in_env() -> None:
    _, steps = run(start(), arg(("X", None)), sh("echo $X"))
    step = steps[1]
    assert isinstance(step, RunStep)
    assert step.history.created_by == "RUN |1 X= /bin/sh -c echo $X # buildkit"
    assert step.env == (PATH_ENV,)
    assert step.command == ("/bin/sh", "-c", "echo $X")  # RUN is never substituted


def test_proxy_build_args_reach_run_without_declaration_or_history() -> None:
    _, steps = run(start(build_args={"https_proxy": "http://p:3128"}), sh("true"))
    step = steps[0]
    assert isinstance(step, RunStep)
    assert step.env == (PATH_ENV, "HTTPS_PROXY=http://p:3128", "https_proxy=http://p:3128")
    assert step.history.created_by == "RUN /bin/sh -c true # buildkit"


def test_stage_from_stage_inherits_environment_and_args() -> None:
    parent, _ = run(start(), arg(("A", "1")), env(("B", "2")), Onbuild(LOC, "ONBUILD", "RUN x"))
    child = start(parent.config, parent=parent)
    assert onbuild_triggers(parent.config) == ("RUN x",)
    assert child.config.onbuild == ()
    _, steps = run(child, sh("true"))
    assert created_by(steps[0]) == "RUN |1 A=1 /bin/sh -c true # buildkit"
    assert isinstance(steps[0], RunStep)
    assert steps[0].env == (PATH_ENV, "A=1", "B=2")


# -- WORKDIR ------------------------------------------------------------------------------------


def test_workdir_relative_chain() -> None:
    state, steps = run(
        start(),
        Workdir(LOC, "WORKDIR", "/a"),
        Workdir(LOC, "WORKDIR", "b"),
        Workdir(LOC, "WORKDIR", "../c//d/"),
        User(LOC, "USER", "app"),
        Workdir(LOC, "WORKDIR", "."),
    )
    paths = [s.path for s in steps if isinstance(s, WorkdirStep)]
    assert paths == ["/a", "/a/b", "/a/c/d", "/a/c/d"]
    last = steps[-1]
    assert isinstance(last, WorkdirStep) and last.user == "app"
    assert last.history == HistoryEntry(NOW, "WORKDIR /a/c/d", COMMENT, empty_layer=False)
    assert state.config.working_dir == "/a/c/d"


def test_workdir_expands_variables_and_rejects_empty() -> None:
    state, _ = run(start(), env(("HOME", "/root")), Workdir(LOC, "WORKDIR", "$HOME/x"))
    assert state.config.working_dir == "/root/x"
    with pytest.raises(DockerfileError, match=r"^Dockerfile:2: WORKDIR: cannot normalize empty"):
        run(start(), Workdir(LOC, "WORKDIR", "$UNSET"))


def test_base_workdir_is_normalised() -> None:
    base = ImageConfig(os="linux", architecture="amd64", env=("PATH=/bin",), working_dir="/srv/")
    assert start(base).config.working_dir == "/srv"


# -- ENTRYPOINT / CMD -----------------------------------------------------------------------------

BASE_WITH_CMD = ImageConfig(os="linux", architecture="amd64", env=("PATH=/bin",), cmd=("bash",))


def test_entrypoint_drops_an_inherited_cmd() -> None:
    state, _ = run(start(BASE_WITH_CMD), Entrypoint(LOC, "ENTRYPOINT", ExecCommand(("/init",))))
    assert state.config.cmd is None
    assert "Cmd" not in state.config.to_oci()["config"]


def test_entrypoint_keeps_a_cmd_set_in_the_same_stage() -> None:
    state, _ = run(start(BASE_WITH_CMD), Cmd(LOC, "CMD", ExecCommand(("serve",))),
                   Entrypoint(LOC, "ENTRYPOINT", ExecCommand(("/init",))))
    assert state.config.cmd == ("serve",) and state.config.entrypoint == ("/init",)


def test_shell_form_uses_the_stage_shell() -> None:
    state, steps = run(start(), Shell(LOC, "SHELL", ("/bin/bash", "-c")),
                       Entrypoint(LOC, "ENTRYPOINT", ShellCommand("run")), sh("make"))
    assert state.config.entrypoint == ("/bin/bash", "-c", "run")
    assert isinstance(steps[2], RunStep)
    assert steps[2].command == ("/bin/bash", "-c", "make")


# -- RUN ------------------------------------------------------------------------------------------


def test_run_exec_form_and_run_context() -> None:
    _, steps = run(start(), Workdir(LOC, "WORKDIR", "/src"), User(LOC, "USER", "1000"),
                       Run(LOC, "RUN", ExecCommand(("make", "all")), network="none"))
    step = steps[-1]
    assert isinstance(step, RunStep)
    assert step.command == ("make", "all")
    assert (step.workdir, step.user, step.network) == ("/src", "1000", "none")
    assert step.history.created_by == "RUN make all # buildkit"
    assert not step.history.empty_layer


def test_run_mounts_are_expanded_and_targets_made_absolute() -> None:
    mounts = (Mount(type="cache", target="node_modules", id="$NAME"),
              Mount(type="bind", target="/out", source="$SUB/bin", from_="$STAGE"))
    refs = (("$STAGE", StageBase(stage=3)),)
    _, steps = run(start(refs=refs), Workdir(LOC, "WORKDIR", "/src"),
                   env(("NAME", "npm"), ("SUB", "x")),
                   Run(LOC, "RUN", ShellCommand("npm ci"), mounts=mounts))
    step = steps[-1]
    assert isinstance(step, RunStep)
    assert step.mounts == (
        StepMount(Mount(type="cache", target="/src/node_modules", id="npm"), None),
        StepMount(Mount(type="bind", target="/out", source="x/bin", from_="$STAGE"),
                  StageBase(stage=3)),
    )


@pytest.mark.parametrize(
    "instr",
    [
        Copy(LOC, "COPY --from=nowhere a /b", ("a",), "/b", from_="nowhere"),
        Run(LOC, "RUN --mount=from=nowhere true", ShellCommand("true"),
            mounts=(Mount(type="bind", target="/x", from_="nowhere"),)),
    ],
)
def test_a_from_word_the_plan_never_resolved_is_a_located_error(instr: Instruction) -> None:
    # the plan resolves every --from/from= word; a step that meets another one says so at
    # its line instead of ending in a KeyError (the ONBUILD COPY --from bug)
    with pytest.raises(StageGraphError, match=r"^Dockerfile:\d+: (COPY --from|RUN --mount "
                       r"from)=nowhere: names no stage or image of this build$"):
        apply(start(refs=(("other", StageBase(stage=0)),)), instr, now=NOW)


@pytest.mark.parametrize(
    ("text", "docs", "command", "files"),
    [
        ("<<EOF", (Heredoc("EOF", "echo hi\necho $HOME\n"),),
         ("/bin/sh", "-c", "echo hi\necho $HOME\n"), ()),
        ("<<-EOF", (Heredoc("EOF", "#!/usr/bin/env python3\nprint(1)\n", chomp=True),),
         ("/bin/sh", "-c", "/dev/pipes/EOF"),
         (("/dev/pipes/EOF", "#!/usr/bin/env python3\nprint(1)\n"),)),
        ("python3 <<EOF", (Heredoc("EOF", "print(1)\n"),),
         ("/bin/sh", "-c", "python3 <<EOF\nprint(1)\nEOF"), ()),
        ("cat <<A <<B", (Heredoc("A", "a\n"), Heredoc("B", "b\n", expand=False)),
         ("/bin/sh", "-c", "cat <<A <<B\na\nA\nb\nB"), ()),
    ],
)
def test_run_heredocs(
    text: str, docs: tuple[Heredoc, ...], command: tuple[str, ...],
    files: tuple[tuple[str, str], ...],
) -> None:
    _, steps = run(start(), Run(LOC, "RUN " + text, ShellCommand(text), heredocs=docs))
    step = steps[0]
    assert isinstance(step, RunStep)
    assert step.command == command and step.heredoc_files == files
    assert step.history.created_by == "RUN " + " ".join(command) + " # buildkit"


def test_run_heredoc_needs_shell_form() -> None:
    bad = Run(LOC, "RUN", ExecCommand(("cat",)), heredocs=(Heredoc("EOF", "x\n"),))
    with pytest.raises(DockerfileError, match=r"^Dockerfile:2: RUN: heredocs need the shell"):
        apply(start(), bad, now=NOW)


# -- COPY / ADD -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("workdir", "dest", "resolved"),
    [
        ("/", ".", "/"),
        ("/srv", ".", "/srv/"),
        ("/srv", "app", "/srv/app"),
        ("/srv", "app/", "/srv/app/"),
        ("/srv", "../etc/x", "/etc/x"),
        ("/srv", "/opt/./y/.", "/opt/y/"),
        ("/srv", "//abs", "/abs"),
    ],
)
def test_copy_destination_resolution(workdir: str, dest: str, resolved: str) -> None:
    _, steps = run(start(), Workdir(LOC, "WORKDIR", workdir), copy("a", dest))
    step = steps[-1]
    assert isinstance(step, CopyStep) and step.dest == resolved


def test_copy_flags_expand_and_appear_in_history() -> None:
    refs = (("builder", StageBase(stage=1)),)
    _, steps = run(start(refs=refs), env(("U", "app"), ("SRC", "dist")),
                   copy("$SRC/*.js", "/www/", chown="$U:$U", chmod="0755",
                        from_="builder", link=True, excludes=("*.map",)))
    step = steps[-1]
    assert isinstance(step, CopyStep)
    assert step.sources == ("dist/*.js",)
    assert (step.chown, step.chmod, step.from_, step.link) == (
        "app:app", "0755", StageBase(stage=1), True)
    assert step.excludes == ("*.map",)
    assert step.history == HistoryEntry(
        NOW, "COPY --chown=app:app --chmod=0755 dist/*.js /www/ # buildkit", COMMENT, False)


def test_copy_heredoc_expands_variables_but_keeps_quotes() -> None:
    docs = (Heredoc("CONF", 'name = "$NAME" \'$NAME\' \\$NAME\n'),
            Heredoc("RAW", "keep $NAME\n", expand=False))
    _, steps = run(start(), env(("NAME", "web")),
                   copy("<<CONF", "<<RAW", "/etc/app/", heredocs=docs))
    step = steps[-1]
    assert isinstance(step, CopyStep)
    assert step.sources == ()
    assert [h.content for h in step.heredocs] == [
        "name = \"web\" 'web' $NAME\n", "keep $NAME\n"]
    assert step.history.created_by == "COPY <<CONF <<RAW /etc/app/ # buildkit"


def test_add_history_and_checksum() -> None:
    url = "https://example.com/a.tar.gz"
    add = Add(LOC, "ADD", (url,), "/opt/", checksum="sha256:" + "0" * 64)
    _, steps = run(start(), add)
    step = steps[0]
    assert isinstance(step, CopyStep) and step.is_add
    assert step.checksum == "sha256:" + "0" * 64
    assert step.history.created_by == f"ADD {url} /opt/ # buildkit"


@pytest.mark.parametrize(
    ("instr", "pattern"),
    [
        (Add(LOC, "ADD", ("local.tar",), "/", checksum="sha256:00"),
         r"^Dockerfile:2: ADD: checksum requires HTTP\(S\) or Git sources$"),
        (Add(LOC, "ADD", ("https://a/x", "https://a/y"), "/", checksum="sha256:00"),
         r"checksum can't be specified for multiple sources"),
        (copy("https://example.com/x", "/"), r"^Dockerfile:2: COPY: source can't be a URL"),
        (copy("a", "/", chmod="999"), r"COPY: invalid chmod parameter: '999'"),
        (copy("a", "/", chmod="17777"), r"COPY: invalid chmod parameter: '17777'"),
        (copy("a", "/", chmod="rwx"), r"COPY: invalid chmod parameter: 'rwx'"),
    ],
)
def test_copy_errors(instr: Instruction, pattern: str) -> None:
    with pytest.raises(DockerfileError, match=pattern):
        apply(start(), instr, now=NOW)


def test_copy_symbolic_chmod_is_accepted() -> None:
    _, steps = run(start(), copy("a", "/b", chmod="u+x,go=r"))
    assert isinstance(steps[0], CopyStep) and steps[0].chmod == "u+x,go=r"


# -- EXPOSE, VOLUME, STOPSIGNAL, ONBUILD ----------------------------------------------------------


def test_expose_splits_expanded_words() -> None:
    state, _ = run(start(), env(("PORTS", '"80 443/udp"')), Expose(LOC, "EXPOSE", ("$PORTS",)))
    assert state.config.exposed_ports == ("443/udp", "80/tcp")
    assert state.config.history[-1].created_by == "EXPOSE [80/tcp 443/udp]"


def test_volume_rejects_empty_and_stopsignal_validates() -> None:
    with pytest.raises(DockerfileError, match=r"VOLUME: specified path can not be an empty"):
        apply(start(), Volume(LOC, "VOLUME", ("$NOPE",)), now=NOW)
    with pytest.raises(DockerfileError, match=r"^Dockerfile:2: STOPSIGNAL: invalid signal: X$"):
        apply(start(), StopSignal(LOC, "STOPSIGNAL", "X"), now=NOW)


def test_onbuild_records_trigger_without_history() -> None:
    state, steps = run(start(), Onbuild(LOC, "ONBUILD COPY . /app", "COPY . /app"))
    assert steps == [MetadataStep(None)]
    assert state.config.history == ()
    assert state.config.to_oci()["config"]["OnBuild"] == ["COPY . /app"]


def test_begin_stage_clears_inherited_onbuild() -> None:
    base = ImageConfig(os="linux", architecture="amd64", env=("PATH=/bin",),
                       onbuild=("RUN make", "COPY . /src"))
    assert onbuild_triggers(base) == ("RUN make", "COPY . /src")
    assert start(base).config.onbuild == ()
