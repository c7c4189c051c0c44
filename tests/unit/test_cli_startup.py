"""The CLI's start-up (issue 14, item 4): ``--version`` and ``--help`` import none of the
heavy packages a build needs (trio, httpx, the registry client, the sandbox, pyfuse3,
redis). Pinned by which modules are loaded, in a fresh interpreter; not by timing."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

HEAVY = ("trio", "httpx", "pyfuse3", "redis", "rootbuild.registry.client",
         "rootbuild.sandbox", "rootbuild.fuse_overlay", "rootbuild.engine")


def _loaded_after(argv: list[str]) -> tuple[int, str, list[str]]:
    """Run ``main(argv)`` in a fresh interpreter: (exit code, stdout, heavy modules loaded)."""
    code = (
        "import io, json, sys, contextlib\n"
        "out = io.StringIO()\n"
        "from rootbuild.cli import main\n"
        "with contextlib.redirect_stdout(out):\n"
        "    try:\n"
        f"        rc = main({argv!r})\n"
        "    except SystemExit as exc:\n"
        "        rc = exc.code\n"
        f"heavy = sorted(m for m in sys.modules if m.split('.')[0] in {HEAVY!r}\n"
        f"               or any(m == h or m.startswith(h + '.') for h in {HEAVY!r}))\n"
        "print(json.dumps([rc, out.getvalue(), heavy]))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=ROOT, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
                          check=True)
    rc, out, heavy = json.loads(proc.stdout.splitlines()[-1])
    return rc, out, heavy


def test_version_imports_nothing_heavy() -> None:
    rc, out, heavy = _loaded_after(["--version"])
    assert (rc, out) == (0, "rootbuild 0.1.0\n")
    assert heavy == []


@pytest.mark.parametrize("argv", [["--help"], ["build", "--help"], ["worker", "--help"]])
def test_help_imports_nothing_heavy(argv: list[str]) -> None:
    rc, out, heavy = _loaded_after(argv)
    assert rc == 0 and out.startswith("usage: rootbuild")
    assert heavy == []


def test_the_probe_sees_a_heavy_import(tmp_path: Path) -> None:
    """The check above can fail: a command that runs trio does import it."""
    rc, _out, heavy = _loaded_after(["pull", "--root", str(tmp_path), "Bad Reference!"])
    assert rc == 2  # the reference is refused; the point is what got imported on the way
    assert "trio" in heavy


def test_a_build_without_run_imports_no_sandbox_registry_or_fuse(tmp_path: Path) -> None:
    """A build whose steps need no sandbox (here: COPY only) imports trio but not the HTTP
    client, the sandbox's process machinery, FUSE or Redis; the unchanged rebuild is
    replayed from its record (engine/replay.py) and imports none of them, nor trio, the
    sandbox, the registry client or the engine's build."""
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text("FROM scratch\nCOPY f.txt /f.txt\n")
    (ctx / "f.txt").write_text("hello\n")
    argv = ["build", "--root", str(tmp_path / "store"), "-q", "--progress", "plain",
            "--output", f"oci-archive:{tmp_path / 'out.tar'}", str(ctx)]
    rc, cold, heavy = _loaded_after(argv)
    assert rc == 0 and cold.startswith("sha256:")
    assert "trio" in heavy  # the probe sees what a build imports
    assert [m for m in heavy if m.split(".")[0] in ("httpx", "pyfuse3", "redis")
            or m.startswith(("rootbuild.registry.client", "rootbuild.sandbox.executor",
                             "rootbuild.sandbox.run", "rootbuild.fuse_overlay.server"))
            ] == []
    first = (tmp_path / "out.tar").read_bytes()
    (tmp_path / "out.tar").unlink()
    rc, warm, heavy = _loaded_after(argv)
    assert (rc, warm) == (0, cold)
    assert heavy == ["rootbuild.engine", "rootbuild.engine.replay"]
    assert (tmp_path / "out.tar").read_bytes() == first
