"""The package layering of STYLE.md, held by parsing imports: lower packages never import
higher ones, and the pure packages do no I/O."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2] / "rootbuild"

# what each package may import from rootbuild (itself always allowed)
ALLOWED: dict[str, set[str]] = {
    "errors": set(),
    "platform": {"errors"},
    "progress": set(),
    "dockerfile": {"errors", "platform"},
    "stages": {"errors", "platform", "dockerfile"},
    "context": {"errors", "dockerfile"},
    "image": {"errors", "platform"},
    "fuse_overlay": {"errors", "platform", "image"},
    "snapshot": {"errors", "platform", "image", "fuse_overlay"},
    "sandbox": {"errors", "platform", "image", "snapshot"},
    "registry": {"errors", "platform", "image"},
    "cache": {"errors", "platform", "dockerfile", "stages", "context", "image", "registry"},
    "build": {
        "errors", "platform", "progress", "dockerfile", "stages", "context", "image",
        "fuse_overlay", "snapshot", "sandbox", "registry", "cache",
    },
    "doctor": set(),
    "cli": {
        "doctor", "errors", "platform", "progress", "dockerfile", "stages", "context", "image",
        "fuse_overlay", "snapshot", "sandbox", "registry", "cache", "build",
    },
}
IO_MODULES = {"os", "trio", "pyfuse3", "subprocess", "socket", "shutil", "tempfile", "pathlib"}
PURE = ["dockerfile", "stages", "fuse_overlay/model.py"]
PURE_EXCEPTIONS = {"stages/scheduler.py"}  # the one trio module of stages/


def _package(path: Path) -> str:
    rel = path.relative_to(ROOT)
    return rel.parts[0].removesuffix(".py")


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), str(path))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return found


MODULES = sorted(p for p in ROOT.rglob("*.py") if p.name != "__init__.py")


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(ROOT)))
def test_lower_packages_never_import_higher_ones(path: Path) -> None:
    package = _package(path)
    assert package in ALLOWED, f"{path}: package {package!r} has no place in the layering"
    for name in _imports(path):
        if not name.startswith("rootbuild."):
            continue
        target = name.split(".")[1]
        assert target == package or target in ALLOWED[package], (
            f"{path.relative_to(ROOT)} imports {name}: {package}/ may not import {target}/"
        )


@pytest.mark.parametrize(
    "path",
    [
        p for p in MODULES
        if any(str(p.relative_to(ROOT)).startswith(pure) for pure in PURE)
        and str(p.relative_to(ROOT)) not in PURE_EXCEPTIONS
    ],
    ids=lambda p: str(p.relative_to(ROOT)),
)
def test_pure_modules_do_no_io(path: Path) -> None:
    io = {name for name in _imports(path) if name.split(".")[0] in IO_MODULES}
    assert not io, f"{path.relative_to(ROOT)} is pure but imports {sorted(io)}"
