"""Step cache keys: what a step's result depends on, hashed.

Rules (after BuildKit's solver: a vertex's cache key is its definition plus the keys of its
inputs, and a file input's key is the content checksum of what it reads):
- A stage starts from its base's key: the base image's manifest digest and the platform
  (``scratch`` has one fixed key per platform); a ``FROM <stage>`` starts from the key the
  parent stage ended with.
- Only steps that can produce a layer (RUN, COPY, ADD, a WORKDIR that creates a directory)
  have keys; each one's key hashes its parent key and the step *after substitution*: the
  typed ``RunStep``/``CopyStep``/``WorkdirStep`` minus its history entry. So RUN's argv,
  its environment (ENV and the ARGs in scope, nothing else: an unrelated ``--build-arg``
  changes nothing), user, workdir, network and mounts all count; LABEL, EXPOSE or CMD
  between two steps do not (they only change the config, which is derived again).
- ``inputs`` adds what the step reads that its text doesn't say: the content digest of the
  context files a COPY/ADD takes (``sources.py``), the key of the stage or the manifest of
  the image a ``COPY --from`` reads, and the build options that shape the layer bytes
  (compression, SOURCE_DATE_EPOCH) or a RUN's behaviour (network, id mapping).
- ``COPY/ADD --link`` is the exception: the engine keys it on the ``scratch`` key of the
  platform (BuildKit: the layer "don't get invalidated when commands on previous layers
  are changed") and chains the state below into the key it hands on.
- The key a step hands on to the next one also hashes the diffID of the layer it produced
  (or that it produced none): a step that ran again and made different bytes (a time
  stamp, ``--no-cache-filter``, a pruned entry) invalidates every step after it, and
  ``COPY --from`` a stage depends on what that stage really contains, as BuildKit's
  content checksums of copied files do (coarser: any change of the stage counts).
- Keys are ``sha256:`` over canonical JSON (sorted keys, ASCII escapes) with a version tag,
  so a change of this scheme never matches old entries.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Mapping

from rootbuild.stages.steps import CopyStep, RunStep, WorkdirStep

KEY_VERSION = "rootbuild-step-cache/1"

Scalar = str | int | bool | None


def _digest(value: object) -> str:
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return "sha256:" + hashlib.sha256(text.encode("ascii")).hexdigest()


def base_key(manifest_digest: str | None, platform: str) -> str:
    """The key a stage starts from: its base image (None: ``scratch``) on ``platform``."""
    return _digest({"v": KEY_VERSION, "base": manifest_digest or "scratch",
                    "platform": platform})


def step_fields(action: RunStep | CopyStep | WorkdirStep) -> dict[str, object]:
    """The step as the key sees it: every field but the history entry (whose timestamp and
    comment change nothing the step does)."""
    fields = {f.name: getattr(action, f.name) for f in dataclasses.fields(action)
              if f.name != "history"}
    return {"kind": type(action).__name__, **_plain(fields)}


def _plain(value: object) -> dict[str, object]:
    out = json.loads(json.dumps(value, default=_encode, ensure_ascii=True))
    assert isinstance(out, dict)
    return out


def _encode(value: object) -> object:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
    raise TypeError(f"cache key: cannot encode {type(value).__name__}")


def step_key(
    parent: str, action: RunStep | CopyStep | WorkdirStep, inputs: Mapping[str, Scalar]
) -> str:
    """The key of ``action`` run on top of the state whose key is ``parent``."""
    return _digest({"v": KEY_VERSION, "parent": parent, "step": step_fields(action),
                    "inputs": dict(inputs)})


def chain_key(step: str, diff_id: str | None) -> str:
    """The key of the state after the step whose key is ``step`` made layer ``diff_id``
    (None: no layer)."""
    return _digest({"v": KEY_VERSION, "after": step, "layer": diff_id})
