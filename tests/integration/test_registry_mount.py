"""Cross-repository mounts and pull progress against a real ``docker-registry``, through the
real ``rootbuild`` executable as the unprivileged build user, with skopeo as the independent
client.

- An image built by rootbuild is pushed to ``one:1``, then to ``two:1`` of the same registry:
  the registry's access log shows the second push asked for every blob with
  ``POST /v2/two/blobs/uploads/?mount=...&from=one`` (201 Created) and sent no blob data
  (no PATCH or PUT of an upload for ``two``); skopeo reads ``two:1`` with the same digest.
- A pull (plain progress, no ``-q``) prints each layer's start and end with its size and the
  ``pulling N/M layers, X/Y MB`` tally; what it pulled is recorded as held by ``two``, so a
  push from that store to ``three:1`` mounts from ``two``.
"""

from __future__ import annotations

import json
import os
import re
import time
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import pytest
from registry_fixtures import (  # noqa: F401 (pytest fixtures)
    Registry,
    registry_base_fixture,
    registry_fixture,
)

pytestmark = pytest.mark.integration

ACCESS = re.compile(r'"(?P<method>[A-Z]+) (?P<path>/v2/[^ "]*) HTTP/[0-9.]+" (?P<status>\d{3}) ')


def requests_for(reg: Registry, repo: str) -> list[tuple[str, str, int]]:
    """(method, path, status) of every access-log line for ``/v2/<repo>/``."""
    time.sleep(0.3)  # the registry writes the line as it finishes the response
    out = []
    for m in ACCESS.finditer(reg.log_text()):
        if m["path"].startswith(f"/v2/{repo}/"):
            out.append((m["method"], m["path"], int(m["status"])))
    return out


def skopeo_manifest(rb: Any, ref: str) -> dict[str, Any]:
    raw = rb.as_user(
        ["skopeo", "--insecure-policy", "inspect", "--raw", "--tls-verify=false", f"docker://{ref}"]
    ).stdout
    doc: dict[str, Any] = json.loads(raw)
    return doc


def mounts(requests: list[tuple[str, str, int]]) -> dict[str, tuple[str, int]]:
    """{digest: (from, status)} of the mount POSTs among ``requests``."""
    out = {}
    for method, path, status in requests:
        query = parse_qs(urlsplit(path).query)
        if method == "POST" and "mount" in query:
            out[unquote(query["mount"][0])] = (unquote(query["from"][0]), status)
    return out


def blob_data_sent(requests: list[tuple[str, str, int]]) -> list[tuple[str, str, int]]:
    return [r for r in requests if r[0] in ("PATCH", "PUT") and "/blobs/uploads/" in r[1]]


def test_second_push_mounts_and_pull_shows_progress(rb: Any, registry: Registry) -> None:
    ctx = rb.make_context(
        "ctx-mount",
        {
            "Dockerfile": "FROM scratch\nCOPY big.bin /big.bin\nCOPY small.txt /small.txt\n",
            "big.bin": os.urandom(3_000_000),  # incompressible: the layer is ~3.0 MB
            "small.txt": f"mount test {time.time_ns()}\n",
        },
    )
    rb.run("build", "-q", "-t", "mnt:1", str(ctx))
    one, two = registry.ref("one:1"), registry.ref("two:1")

    first = rb.run("push", "mnt:1", one)
    digest_one = first.stdout.strip()
    assert "mounted" not in first.stderr, "nothing is known about this registry yet"
    assert len(blob_data_sent(requests_for(registry, "one"))) == 3  # config + 2 layers

    second = rb.run("push", "mnt:1", two)
    digest_two = second.stdout.strip()
    assert digest_two == digest_one
    manifest = skopeo_manifest(rb, two)
    blobs = {manifest["config"]["digest"], *(layer["digest"] for layer in manifest["layers"])}
    assert len(blobs) == 3

    reqs = requests_for(registry, "two")
    assert mounts(reqs) == {d: ("one", 201) for d in blobs}, reqs
    assert blob_data_sent(reqs) == [], "the second push uploaded blob data"
    assert [r for r in reqs if r[0] == "PUT" and "/manifests/" in r[1]], reqs
    assert second.stderr.count("mounted ") == 3, second.stderr
    assert "from one" in second.stderr
    info = json.loads(
        rb.as_user(
            ["skopeo", "--insecure-policy", "inspect", "--tls-verify=false", f"docker://{two}"]
        ).stdout
    )
    assert info["Digest"] == digest_one

    # A pull into a fresh store, plain progress: per-layer lines with sizes and the tally.
    store2 = rb.workdir / "store2"
    pulled = rb.run("pull", "--root", str(store2), two, store=False)
    assert pulled.stdout.strip().splitlines()[-1] == digest_one
    err = pulled.stderr
    assert re.search(r"^pulling layer 1/2 [0-9a-f]{12} \(3\.0 MB\)$", err, re.M), err
    assert re.search(r"^pulled layer 1/2 [0-9a-f]{12} \(3\.0 MB\)$", err, re.M), err
    assert re.search(r"^pulled layer 2/2 [0-9a-f]{12} \(\d+ B\)$", err, re.M), err
    tallies = re.findall(r"^pulling (\d)/2 layers, (\d+\.\d)/(\d+\.\d) MB$", err, re.M)
    assert tallies and tallies[-1][0] == "2" and tallies[-1][1] == tallies[-1][2] == "3.0", err

    # The pull recorded where the blobs live: a push from that store to three mounts them.
    third = rb.run("push", "--root", str(store2), two, registry.ref("three:1"), store=False)
    assert third.stdout.strip() == digest_one
    reqs = requests_for(registry, "three")
    assert mounts(reqs) == {d: ("two", 201) for d in blobs}, reqs
    assert blob_data_sent(reqs) == []


def test_mount_refused_falls_back_to_its_session(rb: Any, registry: Registry) -> None:
    """A hint that is wrong (the source repository lost the blob: here it was never pushed
    there) gets 202 from the registry; the upload goes through that session, no second POST."""
    ctx = rb.make_context(
        "ctx-fallback",
        {"Dockerfile": "FROM scratch\nCOPY f /f\n", "f": f"fallback {time.time_ns()}\n"},
    )
    rb.run("build", "-q", "-t", "fb:1", str(ctx))
    image = json.loads(rb.run("inspect", "fb:1").stdout)
    blobs = {image["Id"], *(layer["digest"] for layer in image["Manifest"]["layers"])}
    origins = {
        "version": 1,
        "blobs": {d: [[registry.host, "never-pushed"]] for d in blobs},
    }
    path = rb.store / "origins.json"
    path.write_text(json.dumps(origins))
    rb.run("inspect", "fb:1")  # the store is still fine with the file there

    proc = rb.run("push", "fb:1", registry.ref("fallback:1"))
    digest = proc.stdout.strip()
    reqs = requests_for(registry, "fallback")
    assert mounts(reqs) == {d: ("never-pushed", 202) for d in blobs}, reqs
    posts = [r for r in reqs if r[0] == "POST"]
    assert len(posts) == len(blobs), "an upload opened a second session after the 202"
    puts = [r for r in blob_data_sent(reqs) if r[0] == "PUT" and r[2] == 201]
    assert len(puts) == len(blobs), reqs
    assert skopeo_manifest(rb, registry.ref("fallback:1"))["config"]["digest"] == image["Id"]
    assert digest.startswith("sha256:")
    # The push recorded the new place first.
    recorded = json.loads(path.read_text())["blobs"]
    assert all(recorded[d][0] == [registry.host, "fallback"] for d in blobs)
