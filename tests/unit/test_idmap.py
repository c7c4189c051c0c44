"""idmap.plan_idmap / parse_subid: the subordinate-id mapping rootless podman uses."""

from __future__ import annotations

from rootbuild.sandbox.idmap import IdMapPlan, IdRange, helper_argv, parse_subid, plan_idmap

SUBUID = "# comment\nalice:100000:65536\nbob:x:5\n1001:300000:10\nbob:200000:65536\n"


def test_parse_subid_by_name_and_uid() -> None:
    assert parse_subid(SUBUID, "alice", 1000) == [(100000, 65536)]
    assert parse_subid(SUBUID, "carol", 1001) == [(300000, 10)]
    assert parse_subid(SUBUID, "bob", 7) == [(200000, 65536)]  # malformed line skipped
    assert parse_subid(SUBUID, "dave", 9) == []


def test_plan_maps_root_to_user_and_the_range_above() -> None:
    plan = plan_idmap(uid=1000, gid=1000, name="alice", subuid=SUBUID, subgid=SUBUID,
                      helpers=True)
    assert plan.mode == "subid" and plan.warning == ""
    assert plan.uids == (IdRange(0, 1000, 1), IdRange(1, 100000, 65535))
    assert plan.maps_uid(65535) and not plan.maps_uid(65536)
    assert helper_argv(42, plan)[0] == ["newuidmap", "42", "0", "1000", "1", "1",
                                        "100000", "65535"]
    assert IdMapPlan.from_json(plan.to_json()) == plan


def test_small_ranges_are_chained() -> None:
    text = "alice:500:10\nalice:900:20\n"
    plan = plan_idmap(uid=1, gid=1, name="alice", subuid=text, subgid=text, helpers=True)
    assert plan.uids == (IdRange(0, 1, 1), IdRange(1, 500, 10), IdRange(11, 900, 20))


def test_fallback_single_mapping_says_why() -> None:
    plan = plan_idmap(uid=1000, gid=1000, name="dave", subuid=SUBUID, subgid=SUBUID,
                      helpers=True)
    assert plan.mode == "single" and plan.uids == (IdRange(0, 1000, 1),)
    assert "no range in /etc/subuid" in plan.warning and "usermod" in plan.warning
    plan = plan_idmap(uid=1000, gid=1000, name="alice", subuid=SUBUID, subgid=SUBUID,
                      helpers=False)
    assert plan.mode == "single" and "newuidmap" in plan.warning
