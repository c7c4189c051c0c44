"""OCI platforms ("linux/amd64", "linux/arm64/v8") and the host's own.

Rules: values are frozen; parsing follows containerd's platforms package for the common
spellings (``x86_64`` -> ``amd64``, ``aarch64`` -> ``arm64``, ``armhf`` -> ``arm/v7``).
"""

from __future__ import annotations

import platform as _platform
from dataclasses import dataclass

from rootbuild.errors import UsageError

_ARCH_ALIASES = {
    "x86_64": ("amd64", None),
    "x86-64": ("amd64", None),
    "amd64": ("amd64", None),
    "aarch64": ("arm64", None),
    "arm64": ("arm64", None),
    "armhf": ("arm", "v7"),
    "armel": ("arm", "v6"),
    "i386": ("386", None),
    "i686": ("386", None),
    "386": ("386", None),
    "ppc64le": ("ppc64le", None),
    "s390x": ("s390x", None),
    "riscv64": ("riscv64", None),
}


@dataclass(frozen=True, order=True)
class Platform:
    os: str
    architecture: str
    variant: str | None = None

    def __str__(self) -> str:
        base = f"{self.os}/{self.architecture}"
        return f"{base}/{self.variant}" if self.variant else base

    @classmethod
    def parse(cls, text: str) -> Platform:
        """Parse ``os/arch[/variant]`` (``arch`` alone means linux/arch)."""
        parts = text.strip().lower().split("/")
        if len(parts) == 1:
            parts = ["linux", *parts]
        if len(parts) not in (2, 3) or not all(parts):
            raise UsageError(f"parse platform {text!r}: expected os/arch[/variant]")
        os_name, arch = parts[0], parts[1]
        variant = parts[2] if len(parts) == 3 else None
        norm_arch, default_variant = _ARCH_ALIASES.get(arch, (arch, None))
        if norm_arch == "arm64" and variant == "v8":
            variant = None  # containerd normalises arm64/v8 to arm64
        return cls(os_name, norm_arch, variant or default_variant)

    def to_oci(self) -> dict[str, str]:
        out = {"architecture": self.architecture, "os": self.os}
        if self.variant:
            out["variant"] = self.variant
        return out


def host_platform() -> Platform:
    """The platform of the machine rootbuild runs on (BUILDPLATFORM, default TARGETPLATFORM)."""
    return Platform.parse(f"linux/{_platform.machine()}")
