"""The package layering of STYLE.md, held by parsing imports: the exact edges between
rootbuild's packages (a new edge is a decision made here, not a drift), no cycles, and
the pure packages do no I/O. Every module counts, ``__init__.py`` and relative imports
included."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2] / "rootbuild"

# Which packages each package imports from rootbuild (itself not listed): exactly these.
EDGES: dict[str, set[str]] = {
    "errors": set(),
    "platform": {"errors"},
    "progress": set(),
    "netrules": set(),
    "proctitle": set(),
    "runtrace": set(),
    "dockerfile": {"errors"},
    "stages": {"errors", "platform", "dockerfile"},
    "context": {"errors", "dockerfile"},
    "image": {"errors", "platform"},
    "fuse_overlay": {"errors", "image", "proctitle"},
    "snapshot": {"errors", "image", "fuse_overlay"},
    "sandbox": {"errors", "image", "snapshot", "netrules", "proctitle", "runtrace"},
    "registry": {"errors", "platform", "image"},
    "cache": {"errors", "stages", "image", "registry",
              "sandbox"},  # userns_rm.py: prune and reset remove subordinate ids' files
    "engine": {
        "errors", "platform", "progress", "dockerfile", "stages", "context", "image",
        "snapshot", "sandbox", "registry", "cache", "netrules", "runtrace",
    },
    "testing": {"errors", "platform", "image", "sandbox", "snapshot"},
    "service": {"errors", "context", "image", "registry", "cache", "engine", "sandbox",
                "dockerfile"},  # tenant_secrets.py: the RUN line of a missing secret
    "doctor": {"sandbox", "snapshot",  # limits (sandbox/limits.py), snapshotter probes
               "image"},  # default_root: the store whose scratch it looks at
    "cli": {
        "doctor", "errors", "platform", "progress", "image", "registry", "cache", "engine",
        "service", "context", "sandbox",  # the Dockerfile and zygote launched early
    },
}
# Edges that must never appear, whatever the table above says (issue 11's seams).
FORBIDDEN = {("sandbox", "fuse_overlay"), ("engine", "fuse_overlay")}
IO_MODULES = {"os", "trio", "pyfuse3", "subprocess", "socket", "shutil", "tempfile", "pathlib"}
PURE = ["dockerfile", "stages", "netrules.py", "fuse_overlay/inodes.py", "fuse_overlay/model.py",
        "service/jobs.py"]
PURE_EXCEPTIONS = {"stages/scheduler.py"}  # the one trio module of stages/

MODULES = sorted(ROOT.rglob("*.py"))


def _package(path: Path) -> str:
    """The package a module belongs to; "" for ``rootbuild/__init__.py`` itself."""
    rel = path.relative_to(ROOT)
    return "" if rel == Path("__init__.py") else rel.parts[0].removesuffix(".py")


def _module_name(path: Path) -> list[str]:
    """``rootbuild/engine/stage.py`` -> ["rootbuild", "engine", "stage"]; a package's
    ``__init__.py`` is the package itself."""
    parts = ["rootbuild", *path.relative_to(ROOT).with_suffix("").parts]
    return parts[:-1] if parts[-1] == "__init__" else parts


def _imports(path: Path) -> set[str]:
    """Every module ``path`` imports, relative imports made absolute."""
    tree = ast.parse(path.read_text(), str(path))
    here = _module_name(path)
    package = here if path.name == "__init__.py" else here[:-1]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level == 0:
                assert node.module is not None
                found.add(node.module)
                continue
            base = package[: len(package) - (node.level - 1)]
            if node.module:
                found.add(".".join([*base, node.module]))
            else:  # `from . import x`: each name is a module of the package
                found.update(".".join([*base, alias.name]) for alias in node.names)
    return found


def _edges() -> dict[str, set[str]]:
    edges: dict[str, set[str]] = {}
    for path in MODULES:
        package = _package(path)
        if package == "":  # rootbuild/__init__.py
            continue
        targets = edges.setdefault(package, set())
        for name in _imports(path):
            parts = name.split(".")
            if parts[0] == "rootbuild" and len(parts) > 1 and parts[1] != package:
                targets.add(parts[1])
    return edges


def test_every_package_has_a_place() -> None:
    found = {_package(p) for p in MODULES} - {""}
    assert found == set(EDGES), "add the package to EDGES (or remove a dead entry)"


@pytest.mark.parametrize("package", sorted(EDGES))
def test_package_imports_exactly_its_edges(package: str) -> None:
    actual = _edges().get(package, set())
    assert actual == EDGES[package], (
        f"{package}/ imports {sorted(actual - EDGES[package])} not in EDGES; "
        f"EDGES lists {sorted(EDGES[package] - actual)} it does not use"
    )


def test_forbidden_edges_stay_absent() -> None:
    edges = _edges()
    for source, target in FORBIDDEN:
        assert target not in edges.get(source, set()), f"{source}/ imports {target}/"


def test_layering_has_no_cycle() -> None:
    # lower packages never import higher ones: the edges form a DAG
    state: dict[str, int] = {}

    def visit(node: str, trail: tuple[str, ...]) -> None:
        if state.get(node) == 2:
            return
        assert state.get(node) != 1, f"import cycle: {' -> '.join((*trail, node))}"
        state[node] = 1
        for nxt in EDGES[node]:
            visit(nxt, (*trail, node))
        state[node] = 2

    for package in EDGES:
        visit(package, ())


def test_relative_imports_are_resolved() -> None:
    # the parser above must see `from .x import y` and `from .. import z` as edges
    path = ROOT / "engine" / "stage.py"
    tree = ast.parse("from .layers import Layer\nfrom .. import errors\n")
    here = _module_name(path)[:-1]
    resolved = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            base = here[: len(here) - (node.level - 1)]
            resolved.add(".".join([*base, node.module] if node.module else
                                  [*base, node.names[0].name]))
    assert resolved == {"rootbuild.engine.layers", "rootbuild.errors"}


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
