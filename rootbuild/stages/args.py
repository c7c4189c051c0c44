"""ARG scoping, as BuildKit's Dockerfile frontend implements it.

Rules (Dockerfile reference "ARG", "Understand how ARG and FROM interact", "Predefined
ARGs"; BuildKit ``dockerfile2llb`` ``defaultArgs``/``buildMetaArgs``/``dispatchArg``):
- The global (meta) scope is the predefined platform args (overridable by ``--build-arg``)
  plus the ARGs before the first FROM, each taking its ``--build-arg`` value if one was given,
  else its default expanded in the scope built so far. It is visible only to FROM lines.
- Inside a stage an ARG takes, in order of preference: the ``--build-arg`` value; its default
  (expanded in the stage's environment at that point); with neither, the global value of the
  same name (this is how ``ARG TARGETARCH`` or a re-declared global ARG gets its value); else
  it has no value. A declared ARG with a value joins the stage's environment for later
  instructions (substitution and RUN); ENV and ARG share that one environment and the one
  set last wins (so ``ENV`` after ``ARG`` shadows it, as the reference says; an ARG
  re-declared after an inherited ENV wins, as BuildKit does).
- ``--build-arg`` keys no ARG declared are reported, as Docker's
  ``[Warning] One or more build-args [FOO] were not consumed``; the proxy args are exempt.
- Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

from rootbuild.dockerfile.instructions import Dockerfile
from rootbuild.dockerfile.substitution import expand
from rootbuild.errors import Location
from rootbuild.platform import Platform

PREDEFINED_PLATFORM_ARGS = (
    "BUILDPLATFORM", "BUILDOS", "BUILDARCH", "BUILDVARIANT",
    "TARGETPLATFORM", "TARGETOS", "TARGETARCH", "TARGETVARIANT",
)

# Build args Docker passes to every RUN without an ARG declaration and never reports
# as unused (moby ``builtinAllowedBuildArgs``; BuildKit ``proxyEnvFromBuildArgs``).
PROXY_ARGS = (
    "HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy", "FTP_PROXY", "ftp_proxy",
    "NO_PROXY", "no_proxy", "ALL_PROXY", "all_proxy",
)

# ARGs that configure BuildKit itself and never become environment variables
# (BuildKit ``nonEnvArgs``).
NON_ENV_ARGS = frozenset({"BUILDKIT_SBOM_SCAN_CONTEXT", "BUILDKIT_SBOM_SCAN_STAGE"})


def predefined_args(
    target: Platform, build: Platform, *, target_stage: str | None = None
) -> dict[str, str]:
    """The automatic platform ARGs (BuildKit ``platformArgs``); ``TARGETSTAGE`` too when
    the target stage's name is given. Variants are ``""`` when the platform has none."""
    out = {
        "BUILDPLATFORM": str(build),
        "BUILDOS": build.os,
        "BUILDARCH": build.architecture,
        "BUILDVARIANT": build.variant or "",
        "TARGETPLATFORM": str(target),
        "TARGETOS": target.os,
        "TARGETARCH": target.architecture,
        "TARGETVARIANT": target.variant or "",
    }
    if target_stage is not None:
        out["TARGETSTAGE"] = target_stage
    return out


def meta_args(
    dockerfile: Dockerfile,
    build_args: Mapping[str, str],
    predefined: Mapping[str, str],
    used: set[str] | None = None,
) -> dict[str, str]:
    """The global scope FROM lines (and in-stage ``ARG NAME`` re-declarations) see.

    ``used``, when given, receives the name of every ARG declared before the first FROM,
    for ``unused_build_args``.
    """
    scope = {key: build_args.get(key, value) for key, value in predefined.items()}
    escape = dockerfile.directives.escape
    for arg in dockerfile.meta_args:
        for name, default in arg.args:
            if used is not None:
                used.add(name)
            if name in build_args:
                scope[name] = build_args[name]
            elif default is not None:
                scope[name] = expand(default, scope, escape=escape, location=arg.location)
    return scope


def resolve_stage_arg(
    name: str,
    default: str | None,
    *,
    build_args: Mapping[str, str],
    global_args: Mapping[str, str],
    env: Mapping[str, str],
    escape: str,
    location: Location | None = None,
) -> str | None:
    """The value an ``ARG name[=default]`` inside a stage gets (BuildKit ``dispatchArg``),
    or None when it has none. ``env`` is the stage's environment before this ARG."""
    if name in build_args:
        return build_args[name]
    if default is not None:
        return expand(default, env, escape=escape, location=location)
    return global_args.get(name)


def run_history_args(
    args: Sequence[tuple[str, str | None]], env: Mapping[str, str]
) -> list[str]:
    """The ``|N K=V ...`` prefix BuildKit writes before a RUN's argv in its history
    (``runCommandString``): every ARG declared so far, once, in first-declaration order,
    with its current environment value (or its own value, or empty)."""
    values: dict[str, str] = {}
    for key, value in args:
        values[key] = env.get(key, value if value is not None else "")
    if not values:
        return []
    return [f"|{len(values)}", *(f"{k}={v}" for k, v in values.items())]


def proxy_env(build_args: Mapping[str, str]) -> list[tuple[str, str]]:
    """The proxy variables every RUN gets from ``--build-arg`` without an ARG (BuildKit
    ``proxyEnvFromBuildArgs`` + the executor's ``proxyEnvList``: each given in both cases)."""
    found: dict[str, str] = {}
    for key in sorted(build_args):
        upper = key.upper()
        if upper in {"HTTP_PROXY", "HTTPS_PROXY", "FTP_PROXY", "NO_PROXY", "ALL_PROXY"}:
            found[upper] = build_args[key]
    out: list[tuple[str, str]] = []
    for upper in ("HTTP_PROXY", "HTTPS_PROXY", "FTP_PROXY", "NO_PROXY", "ALL_PROXY"):
        if found.get(upper):
            out += [(upper, found[upper]), (upper.lower(), found[upper])]
    return out


def unused_build_args(build_args: Iterable[str], declared: Iterable[str]) -> tuple[str, ...]:
    """``--build-arg`` keys that no ARG declared (globally or in a built stage), sorted.

    Proxy args, ``BUILDKIT_*`` frontend options and ``SOURCE_DATE_EPOCH`` are never
    reported: Docker consumes them without a declaration.
    """
    seen = set(declared) | set(PROXY_ARGS) | {"SOURCE_DATE_EPOCH"}
    return tuple(
        sorted(k for k in set(build_args) if k not in seen and not k.startswith("BUILDKIT_"))
    )


def unused_build_args_warning(names: Sequence[str]) -> str:
    """Docker's warning text for ``unused_build_args`` (empty string when none)."""
    if not names:
        return ""
    return f"[Warning] One or more build-args [{' '.join(names)}] were not consumed"
