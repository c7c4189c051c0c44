"""``--metadata-file``: the build's result as the JSON object ``docker buildx build`` writes.

Job: ``build_metadata(result, tags)``: the keys BuildKit's image exporter and buildx put in
that file, for what rootbuild does: ``containerimage.config.digest`` (the image ID),
``containerimage.digest`` (the manifest digest; the pushed one after ``--push``),
``containerimage.descriptor`` (the stored manifest's descriptor), ``image.name`` (the
``-t`` names, comma-separated, when there are any) and ``buildx.build.warnings`` (the build
checks that fired, in buildx's form: ``short`` base64-encoded, ``level`` 1, ``url`` and the
line ``range``).

Rules: pure (the CLI writes the file); keys with nothing to say are left out, as buildx
does; no provenance or build ref (rootbuild keeps no build history).
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from typing import Any

from rootbuild.engine.options import BuildResult
from rootbuild.stages.checks import CheckWarning


def build_metadata(result: BuildResult, tags: Sequence[str]) -> dict[str, Any]:
    manifest = result.image.manifest
    pushed = result.pushed[-1][1] if result.pushed else manifest.digest
    doc: dict[str, Any] = {
        "containerimage.config.digest": result.image_id,
        "containerimage.digest": pushed,
    }
    if pushed == manifest.digest:  # a --format=docker push has other bytes
        doc["containerimage.descriptor"] = {
            "mediaType": manifest.media_type, "digest": manifest.digest,
            "size": manifest.size,
        }
    if tags:
        doc["image.name"] = ",".join(tags)
    if result.checks:
        doc["buildx.build.warnings"] = [_warning(w) for w in result.checks]
    return doc


def _warning(warning: CheckWarning) -> dict[str, Any]:
    """BuildKit's ``VertexWarning`` for a lint rule (``linter.LintFormatShort``)."""
    line = warning.location.line
    short = f"{warning.rule}: {warning.message} (line {line})"
    return {
        "level": 1,
        "short": base64.b64encode(short.encode()).decode(),
        "url": warning.url,
        "range": [{"start": {"line": line}, "end": {"line": line}}],
    }
