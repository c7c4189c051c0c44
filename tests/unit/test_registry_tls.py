"""The registry TLS context: a certificate directory that cannot be read is a one-line
``RegistryError`` naming the directory, never a raw ``OSError`` (the CLI prints
``RegistryError`` as one line; an ``OSError`` would surface as a traceback)."""

from __future__ import annotations

from pathlib import Path

import pytest

from rootbuild.errors import RegistryError
from rootbuild.registry.client import TransportOptions, ssl_context


def test_an_unreadable_cert_dir_is_a_registry_error(tmp_path: Path) -> None:
    # stat of CERT_DIR/<registry> fails with ENAMETOOLONG, which pathlib does not swallow
    # (the unprivileged user meets EACCES the same way on a 0700 directory of another user)
    registry = "r" * 300
    with pytest.raises(RegistryError, match=r"read certificate directory .*: File name too long"):
        ssl_context(TransportOptions(cert_dir=tmp_path), registry)


def test_a_bad_certificate_names_the_file(tmp_path: Path) -> None:
    (tmp_path / "ca.crt").write_text("not a certificate\n")
    with pytest.raises(RegistryError, match=r"load CA certificate .*ca\.crt"):
        ssl_context(TransportOptions(cert_dir=tmp_path), "127.0.0.1:5000")


def test_certs_of_the_registry_subdirectory_are_read(tmp_path: Path) -> None:
    (tmp_path / "127.0.0.1:5000").mkdir()
    (tmp_path / "127.0.0.1:5000" / "ca.crt").write_text("garbage\n")
    with pytest.raises(RegistryError, match=r"127\.0\.0\.1:5000/ca\.crt"):
        ssl_context(TransportOptions(cert_dir=tmp_path), "127.0.0.1:5000")
    # another registry never reads that directory
    ssl_context(TransportOptions(cert_dir=tmp_path), "127.0.0.1:5001")
