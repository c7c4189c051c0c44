"""``settle_created``: the image and history timestamps of a build whose steps came from
the cache (BuildKit keeps cache records' times, so an unchanged rebuild is the same image)."""

from __future__ import annotations

from rootbuild.stages.config import HistoryEntry, ImageConfig, settle_created

NOW = "2026-11-22T10:00:00.5Z"
OLD = "2026-11-20T09:00:00Z"
BASE = "2026-01-01T00:00:00Z"


def config(*history: HistoryEntry) -> ImageConfig:
    return ImageConfig(history=history)


def test_all_cached_takes_the_cached_times() -> None:
    c = settle_created(config(
        HistoryEntry(created=BASE, created_by="base"),
        HistoryEntry(created=OLD, created_by="RUN a"),  # restamped on the cache hit
        HistoryEntry(created=NOW, created_by="ENV A=1", empty_layer=True),
        HistoryEntry(created=NOW, created_by="CMD x", empty_layer=True),
    ), NOW)
    assert [h.created for h in c.history] == [BASE, OLD, OLD, OLD]
    assert c.created == OLD


def test_a_step_that_ran_makes_the_image_now() -> None:
    c = settle_created(config(
        HistoryEntry(created=OLD, created_by="RUN a"),
        HistoryEntry(created=NOW, created_by="RUN b"),
        HistoryEntry(created=NOW, created_by="LABEL x=y", empty_layer=True),
    ), NOW)
    assert [h.created for h in c.history] == [OLD, NOW, NOW]
    assert c.created == NOW


def test_metadata_first_takes_the_base_time_and_no_history_is_now() -> None:
    c = settle_created(config(
        HistoryEntry(created=BASE, created_by="base"),
        HistoryEntry(created=NOW, created_by="ENV A=1", empty_layer=True),
    ), NOW)
    assert c.created == BASE and c.history[1].created == BASE
    assert settle_created(config(), NOW).created == NOW
    lone = settle_created(config(HistoryEntry(created=NOW, empty_layer=True)), NOW)
    assert lone.created == NOW  # nothing before it to inherit from
