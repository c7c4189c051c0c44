"""The image config as a frozen value: what BuildKit's Dockerfile frontend reads from a base
image and writes for the built one.

Rules:
- ``ImageConfig`` mirrors the OCI image config (image-spec ``config.md``) with Docker's
  extensions (``Healthcheck``, ``OnBuild``, ``Shell``, ``ArgsEscaped``), i.e. moby's
  ``DockerOCIImage``, which is what BuildKit unmarshals a base config into. Fields Docker's
  daemon writes but BuildKit drops (``Hostname``, ``container_config``, ``docker_version``
  ...) are dropped here too.
- A change returns a new value (``dataclasses.replace``); nothing here mutates.
- ``from_oci`` is tolerant of what real registries serve (``null`` for any list or map,
  ``Cmd`` as a plain string) but rejects values of the wrong type with ``ImageError``: the
  config comes from an untrusted image.
- ``to_oci`` returns the dict BuildKit's exporter writes: top-level keys sorted (the
  exporter re-marshals a Go map), ``config`` keys in Go struct order, ``omitempty`` fields
  left out. Serialise it with ``json.dumps(..., separators=(",", ":"))`` and no sort_keys.
- The syntax of config values (EXPOSE port specs, STOPSIGNAL names) is checked here too.
- Pure: no I/O.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from rootbuild.errors import DockerfileError, ImageError, Location
from rootbuild.platform import Platform

# BuildKit ``system.DefaultPathEnv("linux")``: set when an image has no PATH.
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
HISTORY_COMMENT = "buildkit.dockerfile.v0"  # BuildKit convert.go ``historyComment``


@dataclass(frozen=True)
class HistoryEntry:
    """One OCI ``history`` item. ``created`` is an RFC 3339 string or None."""

    created: str | None = None
    created_by: str = ""
    comment: str = ""
    empty_layer: bool = False
    author: str = ""

    def to_oci(self) -> dict[str, Any]:
        # Go struct order of image-spec ``History``; every field is omitempty.
        out: dict[str, Any] = {}
        if self.created:
            out["created"] = self.created
        if self.created_by:
            out["created_by"] = self.created_by
        if self.author:
            out["author"] = self.author
        if self.comment:
            out["comment"] = self.comment
        if self.empty_layer:
            out["empty_layer"] = True
        return out


@dataclass(frozen=True)
class HealthConfig:
    """Docker's ``HealthcheckConfig``. Durations are integer nanoseconds; 0 means "inherit"
    (not given) and is omitted from JSON."""

    test: tuple[str, ...] = ()
    interval: int = 0
    timeout: int = 0
    start_period: int = 0
    start_interval: int = 0
    retries: int = 0

    def to_oci(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        pairs: tuple[tuple[str, Any], ...] = (
            ("Test", list(self.test)),
            ("Interval", self.interval),
            ("Timeout", self.timeout),
            ("StartPeriod", self.start_period),
            ("StartInterval", self.start_interval),
            ("Retries", self.retries),
        )
        for key, value in pairs:
            if value:
                out[key] = value
        return out


@dataclass(frozen=True)
class ImageConfig:
    architecture: str = ""
    os: str = ""
    variant: str | None = None
    os_version: str | None = None
    os_features: tuple[str, ...] = ()
    created: str | None = None
    author: str = ""
    user: str = ""
    exposed_ports: tuple[str, ...] = ()  # sorted, "80/tcp"
    env: tuple[str, ...] = ()  # ordered "K=V"
    entrypoint: tuple[str, ...] | None = None
    cmd: tuple[str, ...] | None = None
    volumes: tuple[str, ...] = ()  # sorted
    working_dir: str = ""
    labels: tuple[tuple[str, str], ...] = ()  # sorted by key
    stop_signal: str = ""
    args_escaped: bool = False
    healthcheck: HealthConfig | None = None
    onbuild: tuple[str, ...] = ()
    shell: tuple[str, ...] = ()
    history: tuple[HistoryEntry, ...] = ()
    diff_ids: tuple[str, ...] = ()

    # -- construction -------------------------------------------------------------------

    @classmethod
    def scratch(cls, platform: Platform) -> ImageConfig:
        """BuildKit's ``emptyImage``: the platform, ``WorkingDir "/"`` and a default PATH."""
        return cls(
            architecture=platform.architecture,
            os=platform.os,
            variant=platform.variant,
            working_dir="/",
            env=(f"PATH={DEFAULT_PATH}",),
        )

    @classmethod
    def from_oci(cls, doc: Mapping[str, Any]) -> ImageConfig:
        """Read an image config JSON document (already ``json.loads``-ed)."""
        if not isinstance(doc, Mapping):
            raise ImageError("read image config: not a JSON object")
        cfg = doc.get("config")
        if cfg is None:
            cfg = {}
        if not isinstance(cfg, Mapping):
            raise ImageError("read image config: \"config\" is not an object")
        rootfs = doc.get("rootfs")
        if rootfs is None:
            rootfs = {}
        if not isinstance(rootfs, Mapping):
            raise ImageError("read image config: \"rootfs\" is not an object")
        history_raw = doc.get("history")
        if history_raw is None:
            history_raw = []
        if not isinstance(history_raw, list):
            raise ImageError("read image config: \"history\" is not a list")
        history = tuple(_history_from_oci(h) for h in history_raw)
        labels_raw = _map(cfg, "Labels")
        labels = tuple(
            sorted((str(k), _str_or_empty(v, "Labels")) for k, v in labels_raw.items())
        )
        return cls(
            architecture=_str(doc, "architecture"),
            os=_str(doc, "os"),
            variant=_str(doc, "variant") or None,
            os_version=_str(doc, "os.version") or None,
            os_features=_str_list(doc, "os.features"),
            created=_str(doc, "created") or None,
            author=_str(doc, "author"),
            user=_str(cfg, "User"),
            exposed_ports=tuple(sorted(_map(cfg, "ExposedPorts"))),
            env=_str_list(cfg, "Env"),
            entrypoint=_opt_str_list(cfg, "Entrypoint"),
            cmd=_opt_str_list(cfg, "Cmd"),
            volumes=tuple(sorted(_map(cfg, "Volumes"))),
            working_dir=_str(cfg, "WorkingDir"),
            labels=labels,
            stop_signal=_str(cfg, "StopSignal"),
            args_escaped=bool(cfg.get("ArgsEscaped") or False),
            healthcheck=_health_from_oci(cfg.get("Healthcheck")),
            onbuild=_str_list(cfg, "OnBuild"),
            shell=_str_list(cfg, "Shell"),
            history=history,
            diff_ids=_str_list(rootfs, "diff_ids"),
        )

    # -- queries ------------------------------------------------------------------------

    @property
    def platform(self) -> Platform:
        return Platform(self.os, self.architecture, self.variant)

    @property
    def labels_dict(self) -> dict[str, str]:
        return dict(self.labels)

    def env_pairs(self) -> list[tuple[str, str]]:
        """``Env`` as (key, value); an entry without ``=`` has the empty value (BuildKit
        ``parseKeyValue``)."""
        out = []
        for item in self.env:
            key, _, value = item.partition("=")
            out.append((key, value))
        return out

    # -- changes ------------------------------------------------------------------------

    def with_env(self, key: str, value: str) -> ImageConfig:
        """BuildKit ``addEnv``: replace the first ``key=`` entry in place, else append."""
        env = list(self.env)
        for i, item in enumerate(env):
            if item.partition("=")[0] == key:
                env[i] = f"{key}={value}"
                break
        else:
            env.append(f"{key}={value}")
        return dataclasses.replace(self, env=tuple(env))

    def with_labels(self, pairs: Sequence[tuple[str, str]]) -> ImageConfig:
        labels = dict(self.labels)
        labels.update(pairs)
        return dataclasses.replace(self, labels=tuple(sorted(labels.items())))

    def with_exposed_ports(self, ports: Sequence[str]) -> ImageConfig:
        return dataclasses.replace(
            self, exposed_ports=tuple(sorted(set(self.exposed_ports) | set(ports)))
        )

    def with_volumes(self, paths: Sequence[str]) -> ImageConfig:
        return dataclasses.replace(self, volumes=tuple(sorted(set(self.volumes) | set(paths))))

    def with_history(self, entry: HistoryEntry) -> ImageConfig:
        return dataclasses.replace(self, history=(*self.history, entry))

    def with_layer(self, diff_id: str) -> ImageConfig:
        """Append a layer's uncompressed digest to ``rootfs.diff_ids``."""
        return dataclasses.replace(self, diff_ids=(*self.diff_ids, diff_id))

    # -- serialisation ------------------------------------------------------------------

    def config_to_oci(self) -> dict[str, Any]:
        """The ``config`` object, in Go struct order (image-spec ``ImageConfig`` then
        moby's ``DockerOCIImageConfigExt``), omitempty fields left out."""
        out: dict[str, Any] = {}
        if self.user:
            out["User"] = self.user
        if self.exposed_ports:
            out["ExposedPorts"] = {p: {} for p in sorted(self.exposed_ports)}
        if self.env:
            out["Env"] = list(self.env)
        if self.entrypoint:
            out["Entrypoint"] = list(self.entrypoint)
        if self.cmd:
            out["Cmd"] = list(self.cmd)
        if self.volumes:
            out["Volumes"] = {v: {} for v in sorted(self.volumes)}
        if self.working_dir:
            out["WorkingDir"] = self.working_dir
        if self.labels:
            out["Labels"] = dict(sorted(self.labels))
        if self.stop_signal:
            out["StopSignal"] = self.stop_signal
        if self.args_escaped:
            out["ArgsEscaped"] = True
        if self.healthcheck is not None:
            out["Healthcheck"] = self.healthcheck.to_oci()
        if self.onbuild:
            out["OnBuild"] = list(self.onbuild)
        if self.shell:
            out["Shell"] = list(self.shell)
        return out

    def to_oci(self) -> dict[str, Any]:
        """The whole config document, top-level keys sorted as BuildKit's exporter writes."""
        out: dict[str, Any] = {
            "architecture": self.architecture,
            "config": self.config_to_oci(),
            "os": self.os,
            "rootfs": {"type": "layers", "diff_ids": list(self.diff_ids)},
        }
        if self.created:
            out["created"] = self.created
        if self.author:
            out["author"] = self.author
        if self.history:
            out["history"] = [h.to_oci() for h in self.history]
        if self.variant:
            out["variant"] = self.variant
        if self.os_version:
            out["os.version"] = self.os_version
        if self.os_features:
            out["os.features"] = list(self.os_features)
        return dict(sorted(out.items()))


def format_timestamp(when: datetime) -> str:
    """RFC 3339 in UTC as Go's ``time.Time`` marshals it (RFC3339Nano: trailing zeros of
    the fraction dropped, ``Z`` suffix)."""
    utc = when.astimezone(UTC)
    text = utc.strftime("%Y-%m-%dT%H:%M:%S")
    if utc.microsecond:
        text += "." + f"{utc.microsecond:06d}".rstrip("0")
    return text + "Z"


def timestamp_from_epoch(seconds: int) -> str:
    """``SOURCE_DATE_EPOCH``-style integer seconds as an RFC 3339 UTC timestamp."""
    return format_timestamp(datetime.fromtimestamp(seconds, UTC))


# -- history text as BuildKit formats it (Go ``fmt`` verbs) ------------------------------------

_GO_ESCAPES = {"\a": "\\a", "\b": "\\b", "\f": "\\f", "\n": "\\n", "\r": "\\r",
               "\t": "\\t", "\v": "\\v"}


def go_quote(text: str) -> str:
    """Go ``strconv.Quote`` (the ``%q`` verb): printable characters as they are, the rest
    as Go escapes. Python's ``isprintable`` and Go's ``unicode.IsPrint`` agree."""
    out = ['"']
    for ch in text:
        if ch in ('"', "\\"):
            out.append("\\" + ch)
        elif ch.isprintable():
            out.append(ch)
        elif ch in _GO_ESCAPES:
            out.append(_GO_ESCAPES[ch])
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\x{ord(ch):02x}")
        elif ord(ch) < 0x10000:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(f"\\U{ord(ch):08x}")
    out.append('"')
    return "".join(out)


def go_quote_list(items: Sequence[str]) -> str:
    """``fmt.Sprintf("%q", []string{...})``: ``["a" "b"]``."""
    return "[" + " ".join(go_quote(i) for i in items) + "]"


def go_list(items: Sequence[str]) -> str:
    """``fmt.Sprintf("%v", []string{...})``: ``[a b]``."""
    return "[" + " ".join(items) + "]"


def _go_frac(value: int, prec: int) -> str:
    whole, frac = divmod(value, 10**prec)
    digits = f"{frac:0{prec}d}".rstrip("0")
    return f"{whole}.{digits}" if digits else str(whole)


def go_duration(ns: int) -> str:
    """Go ``time.Duration.String``: ``0s``, ``1.5ms``, ``30s``, ``1m30s``, ``1h0m0s``."""
    sign = "-" if ns < 0 else ""
    u = abs(ns)
    if u == 0:
        return "0s"
    if u < 1_000:
        return f"{sign}{u}ns"
    if u < 1_000_000:
        return f"{sign}{_go_frac(u, 3)}\u00b5s"
    if u < 1_000_000_000:
        return f"{sign}{_go_frac(u, 6)}ms"
    seconds, frac = divmod(u, 1_000_000_000)
    digits = f"{frac:09d}".rstrip("0")
    text = f"{seconds % 60}" + (f".{digits}" if digits else "") + "s"
    minutes = seconds // 60
    if minutes:
        text = f"{minutes % 60}m{text}"
        if minutes // 60:
            text = f"{minutes // 60}h{text}"
    return sign + text


def go_healthcheck(health: HealthConfig) -> str:
    """``fmt.Sprintf("%+v", HealthcheckConfig{...})`` as BuildKit's HEALTHCHECK history."""
    return (
        f"{{Test:{go_list(health.test)} Interval:{go_duration(health.interval)}"
        f" Timeout:{go_duration(health.timeout)}"
        f" StartPeriod:{go_duration(health.start_period)}"
        f" StartInterval:{go_duration(health.start_interval)} Retries:{health.retries}}}"
    )


# -- tolerant readers for untrusted JSON ----------------------------------------------------


def _str(obj: Mapping[str, Any], key: str) -> str:
    value = obj.get(key)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise ImageError(f"read image config: {key!r} is not a string")
    return value


def _str_or_empty(value: Any, key: str) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise ImageError(f"read image config: {key!r} has a non-string value")
    return value


def _str_list(obj: Mapping[str, Any], key: str) -> tuple[str, ...]:
    return _opt_str_list(obj, key) or ()


def _opt_str_list(obj: Mapping[str, Any], key: str) -> tuple[str, ...] | None:
    """A list of strings, ``null`` (None) or, as Docker's ``StrSlice`` accepts, one string."""
    value = obj.get(key)
    if value is None:
        return None
    if isinstance(value, str):
        return (value,)
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ImageError(f"read image config: {key!r} is not a list of strings")
    return tuple(value)


def _map(obj: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    value = obj.get(key)
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ImageError(f"read image config: {key!r} is not an object")
    return value


def _int(obj: Mapping[str, Any], key: str) -> int:
    value = obj.get(key)
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, int):
        raise ImageError(f"read image config: Healthcheck {key!r} is not an integer")
    return value


def _health_from_oci(value: Any) -> HealthConfig | None:
    if value is None:
        return None
    if not isinstance(value, Mapping):
        raise ImageError("read image config: 'Healthcheck' is not an object")
    return HealthConfig(
        test=_str_list(value, "Test"),
        interval=_int(value, "Interval"),
        timeout=_int(value, "Timeout"),
        start_period=_int(value, "StartPeriod"),
        start_interval=_int(value, "StartInterval"),
        retries=_int(value, "Retries"),
    )


def _history_from_oci(value: Any) -> HistoryEntry:
    if not isinstance(value, Mapping):
        raise ImageError("read image config: a 'history' item is not an object")
    return HistoryEntry(
        created=_str(value, "created") or None,
        created_by=_str(value, "created_by"),
        comment=_str(value, "comment"),
        empty_layer=bool(value.get("empty_layer") or False),
        author=_str(value, "author"),
    )


# -- syntax of config values: EXPOSE ports and STOPSIGNAL signals ---------------------------


def parse_port_spec(raw: str, location: Location | None = None) -> list[str]:
    """BuildKit ``parsePortSpec`` for EXPOSE: ``[ip:][hostport:]port[-end][/proto]`` to
    ``["port/proto", ...]`` (ranges expanded, proto default tcp)."""
    parts = raw.split(":")
    container = parts[-1]
    host = parts[-2] if len(parts) >= 2 else ""
    port, _, proto = container.partition("/")
    if not port:
        raise DockerfileError(f"EXPOSE: no port specified: {raw}<empty>", location)
    proto = proto.lower() or "tcp"
    if proto not in ("tcp", "udp", "sctp"):
        raise DockerfileError(f"EXPOSE: invalid proto: {proto}", location)
    start, end = _port_range(port, "containerPort", location)
    if host:
        hstart, hend = _port_range(host, "hostPort", location)
        if (end - start) != (hend - hstart) and end != start:
            raise DockerfileError(
                "EXPOSE: invalid ranges specified for container and host Ports: "
                f"{port} and {host}", location)
    return [f"{p}/{proto}" for p in range(start, end + 1)]


def _port_range(text: str, what: str, location: Location | None) -> tuple[int, int]:
    pieces = text.split("-")
    if len(pieces) > 2 or not all(p.isdecimal() and p.isascii() for p in pieces):
        raise DockerfileError(f"EXPOSE: invalid {what}: {text}", location)
    start, end = int(pieces[0]), int(pieces[-1])
    if start > 65535 or end > 65535 or end < start:
        raise DockerfileError(f"EXPOSE: invalid {what}: {text}", location)
    return start, end


_GO_INT = re.compile(r"^[+-]?[0-9]+$")  # what Go's strconv.Atoi accepts
_SIGNALS = frozenset([
    "ABRT", "ALRM", "BUS", "CHLD", "CLD", "CONT", "FPE", "HUP", "ILL", "INT", "IO", "IOT",
    "KILL", "PIPE", "POLL", "PROF", "PWR", "QUIT", "SEGV", "STKFLT", "STOP", "SYS", "TERM",
    "TRAP", "TSTP", "TTIN", "TTOU", "URG", "USR1", "USR2", "VTALRM", "WINCH", "XCPU", "XFSZ",
    "RTMIN", "RTMAX",
    *(f"RTMIN+{i}" for i in range(1, 16)),
    *(f"RTMAX-{i}" for i in range(1, 15)),
])


def check_signal(signal: str, location: Location | None = None) -> None:
    """moby ``signal.ParseSignal``: a non-zero number, or a Linux signal name with or
    without ``SIG`` in any case. The config keeps the text as written."""
    if _GO_INT.match(signal):
        if int(signal) != 0:
            return
    else:
        name = signal.upper()
        name = name[3:] if name.startswith("SIG") else name
        if name in _SIGNALS:
            return
    raise DockerfileError(f"STOPSIGNAL: invalid signal: {signal}", location)


def settle_created(config: ImageConfig, now: str) -> ImageConfig:
    """Timestamps as BuildKit's exporter leaves them when steps come from the cache: a
    cached layer keeps the time its step first ran (set by the builder), a metadata entry
    stamped ``now`` takes the time of the entry before it, and the image's ``created`` is
    its last history entry's. So an unchanged rebuild gives the same image ID (moby/buildkit
    #363, "use the timestamp from the cache records"); a build that ran a step is ``now``."""
    history: list[HistoryEntry] = []
    previous: str | None = None
    for entry in config.history:
        if entry.empty_layer and entry.created == now and previous is not None:
            entry = dataclasses.replace(entry, created=previous)
        history.append(entry)
        previous = entry.created or previous
    created = history[-1].created if history and history[-1].created else now
    return dataclasses.replace(config, history=tuple(history), created=created)
