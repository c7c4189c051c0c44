"""Real registries for the registry integration tests: Debian's ``docker-registry``
(github.com/docker/distribution v2) started on free loopback ports, and hand-made OCI layouts.

Rules:
- Each registry is a real ``docker-registry serve CONFIG.yml`` process with filesystem storage
  in a temporary directory, started once per session and torn down after (terminate, wait,
  kill). One is plain HTTP without auth; one has htpasswd Basic auth (bcrypt) and TLS with a
  CA and a server certificate for ``localhost``/``127.0.0.1`` generated here with ``openssl``.
  The CA sits alone in a world-readable cert dir (``*.crt``, as containers/image's
  ``--cert-dir`` expects) so the unprivileged build user can trust it.
- A registry that does not answer ``GET /v2/`` within its start-up window FAILS the session
  with its log; nothing here ever skips.
- The registry's log (access log included) goes to a file: tests count blob requests in it.
- Test images are made in the test: tiny tar layers in memory, configs and manifests as JSON,
  written as an OCI layout (image-spec ``image-layout.md``); no binaries are committed.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gzip
import hashlib
import io
import json
import os
import re
import secrets
import shutil
import socket
import ssl
import subprocess
import tarfile
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

REGISTRY_BIN = "/usr/bin/docker-registry"
USERNAME = "rbuser"
PASSWORD = "s3cret-pass"

MT_OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MT_OCI_INDEX = "application/vnd.oci.image.index.v1+json"
MT_OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
MT_OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"


def free_port() -> int:
    """A loopback port nobody listens on right now (bind port 0, read it back, close)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _make_readable(path: Path) -> None:
    """World-readable (the registry runs as root, the builder as the test user)."""
    for root, dirs, files in os.walk(path):
        for name in dirs:
            os.chmod(os.path.join(root, name), 0o755)
        for name in files:
            os.chmod(os.path.join(root, name), 0o644)
    os.chmod(path, 0o755)


# -- credentials and certificates ----------------------------------------------------------------


def bcrypt_hash(password: str) -> str:
    """A ``$2b$`` bcrypt hash through the C library's crypt(3) (libxcrypt, Debian 12), the
    only hash docker/distribution's htpasswd backend accepts; no extra package needed."""
    libname = ctypes.util.find_library("crypt") or "libcrypt.so.1"
    lib = ctypes.CDLL(libname)
    lib.crypt.restype = ctypes.c_char_p
    lib.crypt.argtypes = [ctypes.c_char_p, ctypes.c_char_p]
    alphabet = "./ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
    salt = "".join(secrets.choice(alphabet) for _ in range(21)) + "."  # 22 chars, low bits 0
    out = lib.crypt(password.encode(), f"$2b$05${salt}".encode())
    if not out or not out.startswith(b"$2b$"):
        pytest.fail(f"integration prerequisite missing: bcrypt in crypt(3) ({libname})")
    return str(out.decode())


def _openssl(*args: str, cwd: Path) -> None:
    proc = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.fail(f"openssl {' '.join(args)} failed:\n{proc.stderr}")


@dataclass
class Certs:
    ca_dir: Path  # holds only ca.crt: pass as --cert-dir
    ca_file: Path
    server_cert: Path
    server_key: Path


def make_certs(base: Path) -> Certs:
    """A throw-away CA and a server certificate for localhost and 127.0.0.1 signed by it."""
    if shutil.which("openssl") is None:
        pytest.fail("integration prerequisite missing: the openssl command")
    work = base / "pki"
    work.mkdir()
    _openssl(
        "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
        "-keyout", "ca.key", "-out", "ca.crt", "-subj", "/CN=rootbuild test CA",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign", cwd=work,
    )
    _openssl(
        "req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key", "-out", "server.csr",
        "-subj", "/CN=localhost", cwd=work,
    )
    (work / "ext.cnf").write_text(
        "basicConstraints=CA:FALSE\n"
        "keyUsage=critical,digitalSignature,keyEncipherment\n"
        "extendedKeyUsage=serverAuth\n"
        "subjectAltName=DNS:localhost,IP:127.0.0.1\n"
    )
    _openssl(
        "x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
        "-CAcreateserial", "-days", "2", "-sha256", "-extfile", "ext.cnf",
        "-out", "server.crt", cwd=work,
    )
    ca_dir = base / "certs.d"
    ca_dir.mkdir()
    shutil.copy(work / "ca.crt", ca_dir / "ca.crt")
    _make_readable(ca_dir)
    return Certs(ca_dir, ca_dir / "ca.crt", work / "server.crt", work / "server.key")


# -- the registry process ------------------------------------------------------------------------


@dataclass
class Registry:
    """A running docker-registry: ``host`` is ``127.0.0.1:PORT``."""

    host: str
    root: Path  # storage root directory
    log: Path
    proc: subprocess.Popen[bytes]
    tls: Certs | None = None
    auth: tuple[str, str] | None = None

    def ref(self, repo_tag: str) -> str:
        return f"{self.host}/{repo_tag}"

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")

    def blob_gets(self, repo: str | None = None) -> int:
        """GET requests for blobs in the access log (of ``repo``, or of any repository)."""
        name = re.escape(repo) if repo else r"[^ ]+"
        pattern = rf'"GET /v2/{name}/blobs/sha256:[0-9a-f]{{64}} HTTP'
        return len(re.findall(pattern, self.log_text()))

    def blob_data(self, digest: str) -> Path:
        """The file that holds blob ``digest`` in the filesystem storage driver."""
        hex_ = digest.removeprefix("sha256:")
        return self.root / "docker/registry/v2/blobs/sha256" / hex_[:2] / hex_ / "data"

    def get(self, path: str, accept: str = "") -> tuple[int, bytes, dict[str, str]]:
        """A raw HTTP request from pytest (for set-up checks, not for the test's claims)."""
        scheme = "https" if self.tls else "http"
        req = urllib.request.Request(f"{scheme}://{self.host}{path}")
        if accept:
            req.add_header("Accept", accept)
        if self.auth:
            import base64

            token = base64.b64encode(f"{self.auth[0]}:{self.auth[1]}".encode()).decode()
            req.add_header("Authorization", f"Basic {token}")
        ctx = ssl.create_default_context(cafile=str(self.tls.ca_file)) if self.tls else None
        try:
            with urllib.request.urlopen(req, timeout=5, context=ctx) as resp:
                return resp.status, resp.read(), dict(resp.headers)
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read(), dict(exc.headers)


def _config_yaml(port: int, storage: Path, certs: Certs | None, htpasswd: Path | None) -> str:
    lines = [
        "version: 0.1",
        "log:",
        "  level: info",
        "  formatter: text",
        "  accesslog:",
        "    disabled: false",
        "storage:",
        "  filesystem:",
        f"    rootdirectory: {storage}",
        "  delete:",
        "    enabled: true",
        "  maintenance:",
        "    uploadpurging:",
        "      enabled: false",
        "http:",
        f"  addr: 127.0.0.1:{port}",
        f"  secret: {secrets.token_hex(16)}",
    ]
    if certs:
        lines += ["  tls:", f"    certificate: {certs.server_cert}", f"    key: {certs.server_key}"]
    if htpasswd:
        lines += ["auth:", "  htpasswd:", "    realm: rootbuild-test", f"    path: {htpasswd}"]
    return "\n".join(lines) + "\n"


def start_registry(base: Path, *, tls: bool = False, auth: bool = False) -> Registry:
    """Start ``docker-registry`` in ``base`` and wait until ``GET /v2/`` answers."""
    if not os.access(REGISTRY_BIN, os.X_OK):
        pytest.fail(f"integration prerequisite missing: {REGISTRY_BIN} (Debian docker-registry)")
    base.mkdir(parents=True, exist_ok=True)
    storage = base / "storage"
    storage.mkdir()
    certs = make_certs(base) if tls else None
    htpasswd: Path | None = None
    if auth:
        htpasswd = base / "htpasswd"
        htpasswd.write_text(f"{USERNAME}:{bcrypt_hash(PASSWORD)}\n")
    last_log = ""
    for _attempt in range(3):  # a port taken between probe and bind: try another
        port = free_port()
        config = base / "config.yml"
        config.write_text(_config_yaml(port, storage, certs, htpasswd))
        log = base / f"registry-{port}.log"
        with open(log, "wb") as out:
            proc = subprocess.Popen(
                [REGISTRY_BIN, "serve", str(config)],
                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                env={"PATH": "/usr/bin:/bin", "HOME": str(base)},
            )
        reg = Registry(
            f"127.0.0.1:{port}", storage, log, proc, certs, (USERNAME, PASSWORD) if auth else None
        )
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                status, _, _ = reg.get("/v2/")
                if status == 200:
                    return reg
            except (OSError, urllib.error.URLError):
                pass
            time.sleep(0.1)
        last_log = log.read_text(errors="replace")
        stop_registry(reg)
        if "address already in use" not in last_log:
            break
    pytest.fail(f"docker-registry did not come up (tls={tls}, auth={auth}):\n{last_log}")
    raise AssertionError


def stop_registry(reg: Registry) -> None:
    if reg.proc.poll() is None:
        reg.proc.terminate()
        try:
            reg.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            reg.proc.kill()
            reg.proc.wait()


@pytest.fixture(scope="session", name="registry_base")
def registry_base_fixture() -> Iterator[Path]:
    base = Path(tempfile.mkdtemp(prefix="rootbuild-registry-"))
    os.chmod(base, 0o755)
    try:
        yield base
    finally:
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="session", name="registry")
def registry_fixture(registry_base: Path) -> Iterator[Registry]:
    """Plain HTTP on loopback, no auth."""
    reg = start_registry(registry_base / "plain")
    try:
        yield reg
    finally:
        stop_registry(reg)


@pytest.fixture(scope="session", name="secure_registry")
def secure_registry_fixture(registry_base: Path) -> Iterator[Registry]:
    """HTTPS with a test CA (``reg.tls.ca_dir`` is the cert dir) and htpasswd Basic auth."""
    reg = start_registry(registry_base / "secure", tls=True, auth=True)
    try:
        yield reg
    finally:
        stop_registry(reg)


# -- hand-made OCI layouts -----------------------------------------------------------------------


def _blob(layout: Path, data: bytes) -> dict[str, Any]:
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    path = layout / "blobs" / "sha256" / digest.removeprefix("sha256:")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return {"digest": digest, "size": len(data)}


def _canonical(doc: Any) -> bytes:
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()


def tiny_layer(files: dict[str, bytes]) -> tuple[bytes, str]:
    """A gzip tar layer of regular files; returns (compressed bytes, diff_id)."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, content in sorted(files.items()):
            info = tarfile.TarInfo(name)
            info.size = len(content)
            info.mode = 0o644
            info.mtime = 1700000000
            tar.addfile(info, io.BytesIO(content))
    plain = raw.getvalue()
    return gzip.compress(plain, mtime=0), "sha256:" + hashlib.sha256(plain).hexdigest()


def write_image(layout: Path, os_: str, arch: str, files: dict[str, bytes]) -> dict[str, Any]:
    """Write one single-platform image's blobs into ``layout``; return its index descriptor."""
    layer, diff_id = tiny_layer(files)
    layer_desc = {"mediaType": MT_OCI_LAYER_GZIP, **_blob(layout, layer)}
    config = {
        "architecture": arch,
        "os": os_,
        "config": {"Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"]},
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
        "history": [{"created_by": f"test layer for {os_}/{arch}"}],
    }
    config_desc = {"mediaType": MT_OCI_CONFIG, **_blob(layout, _canonical(config))}
    manifest = {
        "schemaVersion": 2,
        "mediaType": MT_OCI_MANIFEST,
        "config": config_desc,
        "layers": [layer_desc],
    }
    return {
        "mediaType": MT_OCI_MANIFEST,
        **_blob(layout, _canonical(manifest)),
        "platform": {"architecture": arch, "os": os_},
    }


def write_multiplatform_layout(layout: Path, tag: str, platforms: list[tuple[str, str]]) -> str:
    """An OCI layout whose ``tag`` names an image index over one tiny image per (os, arch);
    each image holds ``/platform.txt`` = "os/arch". Returns the index digest."""
    layout.mkdir(parents=True, exist_ok=True)
    (layout / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
    manifests = [
        write_image(layout, os_, arch, {"platform.txt": f"{os_}/{arch}\n".encode()})
        for os_, arch in platforms
    ]
    index = {"schemaVersion": 2, "mediaType": MT_OCI_INDEX, "manifests": manifests}
    index_desc = _blob(layout, _canonical(index))
    top = {
        "schemaVersion": 2,
        "mediaType": MT_OCI_INDEX,
        "manifests": [
            {
                "mediaType": MT_OCI_INDEX,
                **index_desc,
                "annotations": {"org.opencontainers.image.ref.name": tag},
            }
        ],
    }
    (layout / "index.json").write_text(json.dumps(top))
    _make_readable(layout)
    return str(index_desc["digest"])
