"""``--chmod`` parsing and application (engine/chmod.py): octal and chmod(1) symbolic modes,
each applied relative to the copied entry's own mode (Docker's Dockerfile reference,
"COPY --chmod": https://docs.docker.com/reference/dockerfile/#copy---chmod)."""

from __future__ import annotations

import pytest

from rootbuild.engine.chmod import parse_chmod
from rootbuild.errors import DockerfileError, Location

WHERE = Location("Dockerfile", 3)


def mode(text: str, before: int, is_dir: bool = False) -> int:
    spec = parse_chmod(text, WHERE)
    assert spec is not None
    return spec.apply(before, is_dir)


def test_octal_replaces_the_permission_bits() -> None:
    assert mode("755", 0o600) == 0o755
    assert mode("0640", 0o777, is_dir=True) == 0o640
    assert mode("4755", 0o644) == 0o4755
    assert mode("0", 0o644) == 0
    assert parse_chmod(None, WHERE) is None


@pytest.mark.parametrize(
    ("text", "before", "is_dir", "after"),
    [
        ("+x", 0o644, False, 0o755),          # no "who": every class (no umask in a build)
        ("u+x", 0o644, False, 0o744),
        ("g-w,o=r", 0o664, False, 0o644),
        ("g-w,o=r", 0o777, False, 0o754),
        ("a=rX", 0o644, False, 0o444),        # X: no execute bit yet, not a directory
        ("a=rX", 0o744, False, 0o555),        # X: already executable for someone
        ("a=rX", 0o700, True, 0o555),         # X: directories always get it
        ("u=rwX,go=rX", 0o700, True, 0o755),  # the reference's example: dirs 755,
        ("u=rwX,go=rX", 0o600, False, 0o644),  # files 644,
        ("u=rwX,go=rX", 0o700, False, 0o755),  # executables keep their x
        ("g=u", 0o740, False, 0o770),
        ("o=g", 0o751, False, 0o755),
        ("go=", 0o777, False, 0o700),
        ("u+r-w", 0o644, False, 0o444),        # several actions in one clause
        ("-w", 0o666, False, 0o444),
        ("u+s", 0o755, False, 0o4755),
        ("g+s", 0o755, True, 0o2755),
        ("+t", 0o755, True, 0o1755),
        ("a-x", 0o4755, False, 0o4644),
        ("u=", 0o4755, False, 0o055),         # "=" clears the class's bits, setuid too
    ],
)
def test_symbolic_modes_apply_to_each_entry_s_own_mode(
    text: str, before: int, is_dir: bool, after: int
) -> None:
    assert oct(mode(text, before, is_dir)) == oct(after)


@pytest.mark.parametrize("text", ["u+q", "x", "u+x,", ",u+x", "8", "17777", "ug", "u+xu", "+-z"])
def test_bad_modes_are_located_errors(text: str) -> None:
    with pytest.raises(DockerfileError, match=r"^Dockerfile:3: invalid chmod parameter: '"):
        parse_chmod(text, WHERE)
