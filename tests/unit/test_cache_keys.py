"""Step cache keys (``rootbuild.cache.keys``): every field of a step that changes what it
does changes its key; its history entry does not; the parent chain carries layer content."""

from __future__ import annotations

import dataclasses

from rootbuild.cache.keys import base_key, chain_key, step_fields, step_key
from rootbuild.dockerfile.instructions import Heredoc, Mount
from rootbuild.stages.config import HistoryEntry
from rootbuild.stages.steps import CopyStep, RunStep, WorkdirStep

PARENT = base_key("sha256:" + "a" * 64, "linux/amd64")

RUN = RunStep(
    command=("/bin/sh", "-c", "make"), env=("PATH=/bin", "A=1"), user="", workdir="/src",
    mounts=(), network=None, security=None, heredoc_files=(),
    history=HistoryEntry(created="2026-01-01T00:00:00Z", created_by="RUN make"),
)
COPY = CopyStep(
    is_add=False, sources=("app/",), dest="/app/", from_=None, chown=None, chmod=None,
    link=False, parents=False, excludes=(), heredocs=(), checksum=None, keep_git_dir=False,
    unpack=None, history=HistoryEntry(created_by="COPY app/ /app/"),
)


def test_history_does_not_count() -> None:
    other = dataclasses.replace(RUN, history=HistoryEntry(created="2030-01-01T00:00:00Z",
                                                          comment="x"))
    assert step_key(PARENT, RUN, {}) == step_key(PARENT, other, {})
    assert "history" not in step_fields(RUN)


def test_every_run_field_counts() -> None:
    key = step_key(PARENT, RUN, {})
    for change in (
        {"command": ("/bin/sh", "-c", "make all")}, {"env": ("PATH=/bin", "A=2")},
        {"user": "nobody"}, {"workdir": "/"}, {"network": "none"},
        {"mounts": (Mount(type="cache", target="/root/.cache"),)},
        {"heredoc_files": (("/x", "#!/bin/sh\n"),)},
    ):
        assert step_key(PARENT, dataclasses.replace(RUN, **change), {}) != key, change


def test_copy_fields_heredocs_and_inputs_count() -> None:
    key = step_key(PARENT, COPY, {"context": "sha256:" + "1" * 64})
    assert step_key(PARENT, COPY, {"context": "sha256:" + "2" * 64}) != key
    assert step_key(PARENT, dataclasses.replace(COPY, chmod="755"),
                    {"context": "sha256:" + "1" * 64}) != key
    with_doc = dataclasses.replace(COPY, heredocs=(Heredoc("f", "one\n"),))
    other_doc = dataclasses.replace(COPY, heredocs=(Heredoc("f", "two\n"),))
    assert step_key(PARENT, with_doc, {}) != step_key(PARENT, other_doc, {})


def test_kinds_parents_and_platforms_are_distinct() -> None:
    work = WorkdirStep(path="/app/", user="", history=HistoryEntry())
    assert step_key(PARENT, work, {}) != step_key(PARENT, COPY, {})
    assert step_key(PARENT, RUN, {}) != step_key(base_key(None, "linux/amd64"), RUN, {})
    assert base_key(None, "linux/amd64") != base_key(None, "linux/arm64")
    assert base_key("sha256:" + "a" * 64, "linux/amd64") != base_key(None, "linux/amd64")


def test_chain_carries_the_layer_that_was_made() -> None:
    key = step_key(PARENT, RUN, {})
    a, b = "sha256:" + "a" * 64, "sha256:" + "b" * 64
    assert chain_key(key, a) == chain_key(key, a)
    assert len({chain_key(key, a), chain_key(key, b), chain_key(key, None), key}) == 4


def test_keys_are_stable_across_runs() -> None:
    # a fixed value: a change of the key scheme must change KEY_VERSION (old caches miss)
    assert step_key(PARENT, RUN, {"network": "host"}).startswith("sha256:")
    assert step_key(PARENT, RUN, {"network": "host"}) == step_key(
        PARENT, dataclasses.replace(RUN), {"network": "host"}
    )


def test_surrogate_escaped_text_is_hashable() -> None:
    odd = dataclasses.replace(RUN, command=("/bin/sh", "-c", "echo \udcff"))
    assert step_key(PARENT, odd, {}) != step_key(PARENT, RUN, {})
