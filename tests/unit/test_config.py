"""ImageConfig: reading base configs as registries serve them, writing what BuildKit writes."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone

import pytest

from rootbuild.errors import DockerfileError, ImageError
from rootbuild.platform import Platform
from rootbuild.stages.config import (
    DEFAULT_PATH,
    HealthConfig,
    HistoryEntry,
    ImageConfig,
    check_signal,
    format_timestamp,
    go_duration,
    go_healthcheck,
    go_quote,
    go_quote_list,
    parse_port_spec,
    timestamp_from_epoch,
)

# A config as Docker's daemon (classic builder) writes it: nulls, container_config, etc.
DOCKER_STYLE = {
    "architecture": "amd64",
    "config": {
        "Hostname": "",
        "Domainname": "",
        "User": "",
        "AttachStdin": False,
        "Tty": False,
        "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
        "Cmd": ["/bin/sh"],
        "Image": "sha256:abc",
        "Volumes": None,
        "WorkingDir": "",
        "Entrypoint": None,
        "OnBuild": None,
        "Labels": None,
    },
    "container": "deadbeef",
    "container_config": {"Cmd": ["/bin/sh", "-c", "#(nop) ", "CMD [\"/bin/sh\"]"]},
    "created": "2024-01-27T00:30:48.743965523Z",
    "docker_version": "20.10.23",
    "history": [
        {"created": "2024-01-27T00:30:48.624602109Z",
         "created_by": "/bin/sh -c #(nop) ADD file:abc in / "},
        {"created": "2024-01-27T00:30:48.743965523Z",
         "created_by": "/bin/sh -c #(nop)  CMD [\"/bin/sh\"]", "empty_layer": True},
    ],
    "os": "linux",
    "rootfs": {"type": "layers", "diff_ids": ["sha256:" + "1" * 64]},
}


def test_scratch_is_buildkits_empty_image() -> None:
    cfg = ImageConfig.scratch(Platform("linux", "arm", "v7"))
    assert cfg.to_oci() == {
        "architecture": "arm",
        "config": {"Env": [f"PATH={DEFAULT_PATH}"], "WorkingDir": "/"},
        "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": []},
        "variant": "v7",
    }


def test_from_oci_tolerates_docker_nulls_and_drops_daemon_fields() -> None:
    cfg = ImageConfig.from_oci(DOCKER_STYLE)
    assert cfg.cmd == ("/bin/sh",)
    assert cfg.entrypoint is None
    assert cfg.volumes == () and cfg.labels == () and cfg.onbuild == ()
    assert cfg.diff_ids == ("sha256:" + "1" * 64,)
    assert cfg.history[1] == HistoryEntry(
        created="2024-01-27T00:30:48.743965523Z",
        created_by='/bin/sh -c #(nop)  CMD ["/bin/sh"]',
        empty_layer=True,
    )
    out = cfg.to_oci()
    assert out == {
        "architecture": "amd64",
        "config": {
            "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
            "Cmd": ["/bin/sh"],
        },
        "created": "2024-01-27T00:30:48.743965523Z",
        "history": [
            {"created": "2024-01-27T00:30:48.624602109Z",
             "created_by": "/bin/sh -c #(nop) ADD file:abc in / "},
            {"created": "2024-01-27T00:30:48.743965523Z",
             "created_by": '/bin/sh -c #(nop)  CMD ["/bin/sh"]', "empty_layer": True},
        ],
        "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": ["sha256:" + "1" * 64]},
    }


def test_round_trip_of_every_field_in_buildkit_order() -> None:
    doc = {
        "architecture": "arm64",
        "author": "me",
        "config": {
            "User": "app:app",
            "ExposedPorts": {"443/tcp": {}, "53/udp": {}},
            "Env": ["PATH=/bin", "A=b=c"],
            "Entrypoint": ["/init"],
            "Cmd": ["serve"],
            "Volumes": {"/data": {}},
            "WorkingDir": "/app",
            "Labels": {"z": "1", "a": "2"},
            "StopSignal": "SIGQUIT",
            "ArgsEscaped": True,
            "Healthcheck": {"Test": ["CMD", "true"], "Interval": 30_000_000_000, "Retries": 3},
            "OnBuild": ["RUN make"],
            "Shell": ["/bin/bash", "-c"],
        },
        "created": "2024-05-01T10:00:00Z",
        "history": [{"created_by": "x", "comment": "c", "author": "a"}],
        "os": "linux",
        "os.version": "1",
        "rootfs": {"type": "layers", "diff_ids": []},
        "variant": "v8",
    }
    out = ImageConfig.from_oci(doc).to_oci()
    assert out["config"]["Labels"] == {"a": "2", "z": "1"}
    assert list(out["config"]["Labels"]) == ["a", "z"]
    # Go struct order inside config; sorted keys at the top (BuildKit's exporter).
    assert list(out["config"]) == [
        "User", "ExposedPorts", "Env", "Entrypoint", "Cmd", "Volumes", "WorkingDir",
        "Labels", "StopSignal", "ArgsEscaped", "Healthcheck", "OnBuild", "Shell",
    ]
    assert list(out) == sorted(out)
    assert json.dumps(out, sort_keys=True) == json.dumps(doc, sort_keys=True).replace(
        '"Labels": {"z": "1", "a": "2"}', '"Labels": {"a": "2", "z": "1"}')
    assert list(out["config"]["ExposedPorts"]) == ["443/tcp", "53/udp"]


def test_cmd_as_plain_string_is_accepted_like_docker_strslice() -> None:
    assert ImageConfig.from_oci({"config": {"Cmd": "bash"}}).cmd == ("bash",)


def test_missing_config_and_rootfs_read_as_empty() -> None:
    cfg = ImageConfig.from_oci({"architecture": "amd64", "os": "linux", "config": None})
    assert cfg.env == () and cfg.diff_ids == () and cfg.history == ()


@pytest.mark.parametrize(
    ("doc", "pattern"),
    [
        ([], r"^read image config: not a JSON object$"),
        ({"config": []}, r"^read image config: \"config\" is not an object$"),
        ({"config": {"Env": [1]}}, r"'Env' is not a list"),
        ({"config": {"Labels": ["a"]}}, r"'Labels' is not an object"),
        ({"config": {"Healthcheck": {"Interval": "30s"}}}, r"Healthcheck 'Interval'"),
        ({"history": {}}, r"\"history\" is not a list"),
        ({"os": 3}, r"'os' is not a string"),
    ],
)
def test_from_oci_rejects_wrong_types(doc: object, pattern: str) -> None:
    with pytest.raises(ImageError, match=pattern):
        ImageConfig.from_oci(doc)  # type: ignore[arg-type]


def test_with_env_replaces_in_place_and_appends_new() -> None:
    cfg = ImageConfig(env=("PATH=/bin", "A=1", "B=2"))
    assert cfg.with_env("A", "x").env == ("PATH=/bin", "A=x", "B=2")
    assert cfg.with_env("C", "3").env == ("PATH=/bin", "A=1", "B=2", "C=3")
    assert ImageConfig(env=("NOVALUE",)).env_pairs() == [("NOVALUE", "")]


def test_history_and_healthcheck_omit_empty_fields() -> None:
    assert HistoryEntry(created_by="x").to_oci() == {"created_by": "x"}
    assert HealthConfig(test=("NONE",)).to_oci() == {"Test": ["NONE"]}
    assert HealthConfig(test=("CMD", "a"), timeout=5, start_interval=7).to_oci() == {
        "Test": ["CMD", "a"], "Timeout": 5, "StartInterval": 7}


@pytest.mark.parametrize(
    ("ns", "text"),
    [
        (0, "0s"), (999, "999ns"), (1_500, "1.5\u00b5s"), (2_000_000, "2ms"),
        (1_500_000, "1.5ms"), (1_000_000_000, "1s"), (30_000_000_000, "30s"),
        (90_000_000_000, "1m30s"), (3_600_000_000_000, "1h0m0s"),
        (3_661_500_000_000, "1h1m1.5s"), (-5_000_000_000, "-5s"),
    ],
)
def test_go_duration(ns: int, text: str) -> None:
    assert go_duration(ns) == text


def test_go_quote_matches_strconv_quote() -> None:
    assert go_quote('a "b" \\ c') == '"a \\"b\\" \\\\ c"'
    assert go_quote("tab\there\nnl\x00\x7f") == '"tab\\there\\nnl\\x00\\x7f"'
    assert go_quote("h\u00e9llo \u00a0") == '"h\u00e9llo \\u00a0"'
    assert go_quote_list(["/bin/sh", "-c", "echo hi"]) == '["/bin/sh" "-c" "echo hi"]'
    assert go_quote_list([]) == "[]"


def test_go_healthcheck_is_percent_plus_v() -> None:
    health = HealthConfig(test=("CMD-SHELL", "curl -f http://localhost/"),
                          interval=30_000_000_000, retries=3)
    assert go_healthcheck(health) == (
        "{Test:[CMD-SHELL curl -f http://localhost/] Interval:30s Timeout:0s "
        "StartPeriod:0s StartInterval:0s Retries:3}"
    )


@pytest.mark.parametrize(
    ("spec", "ports"),
    [
        ("80", ["80/tcp"]),
        ("53/UDP", ["53/udp"]),
        ("132/sctp", ["132/sctp"]),
        ("8000-8002", ["8000/tcp", "8001/tcp", "8002/tcp"]),
        ("8080:80", ["80/tcp"]),
        ("127.0.0.1:8080:80/udp", ["80/udp"]),
    ],
)
def test_parse_port_spec(spec: str, ports: list[str]) -> None:
    assert parse_port_spec(spec) == ports


@pytest.mark.parametrize(
    ("spec", "pattern"),
    [
        ("/tcp", r"^EXPOSE: no port specified: /tcp<empty>$"),
        ("80/xyz", r"^EXPOSE: invalid proto: xyz$"),
        ("http", r"^EXPOSE: invalid containerPort: http$"),
        ("70000", r"^EXPOSE: invalid containerPort: 70000$"),
        ("90-80", r"^EXPOSE: invalid containerPort: 90-80$"),
    ],
)
def test_parse_port_spec_errors(spec: str, pattern: str) -> None:
    with pytest.raises(DockerfileError, match=pattern):
        parse_port_spec(spec)


@pytest.mark.parametrize("sig", ["SIGTERM", "sigkill", "QUIT", "9", "SIGRTMIN+3", "rtmax-1"])
def test_check_signal_accepts(sig: str) -> None:
    check_signal(sig)


@pytest.mark.parametrize("sig", ["0", "SIGFOO", "", "9x"])
def test_check_signal_rejects(sig: str) -> None:
    with pytest.raises(DockerfileError, match=rf"^STOPSIGNAL: invalid signal: {sig}$"):
        check_signal(sig)


def test_timestamps_are_rfc3339_utc_like_go() -> None:
    assert timestamp_from_epoch(0) == "1970-01-01T00:00:00Z"
    when = datetime(2024, 3, 1, 12, 0, 0, 120000, tzinfo=timezone(timedelta(hours=2)))
    assert format_timestamp(when) == "2024-03-01T10:00:00.12Z"
    assert format_timestamp(datetime(2024, 3, 1, tzinfo=UTC)) == "2024-03-01T00:00:00Z"
