"""What one step-cache entry is: the contract between the local index, the builder and
the ``--cache-to``/``--cache-from`` transports.

Rules:
- ``key`` is ``sha256:<hex>`` over everything that can change what the step produces
  (``keys.py``); equal keys mean interchangeable results.
- ``layer`` is the layer blob the step produced, with its ``diff_id``; both are None when
  the step changed nothing (no layer, an ``empty_layer`` history entry).
- ``created`` is when the step first ran (seconds since the epoch); ``last_used`` is when a
  build last used the entry (least recently used entries go first in ``prune``).
"""

from __future__ import annotations

from dataclasses import dataclass

from rootbuild.errors import ImageError
from rootbuild.image.digest import check_digest
from rootbuild.image.oci import Descriptor


@dataclass(frozen=True)
class CacheEntry:
    key: str
    layer: Descriptor | None
    diff_id: str | None
    description: str  # the step as progress shows it, e.g. "RUN make"
    created: float
    last_used: float = 0.0

    def __post_init__(self) -> None:
        check_digest(self.key)
        if (self.layer is None) != (self.diff_id is None):
            raise ImageError(f"cache entry {self.key}: a layer needs its diffID and back")
        if self.diff_id is not None:
            check_digest(self.diff_id)

    @property
    def size(self) -> int:
        return self.layer.size if self.layer is not None else 0

    def to_json(self) -> dict[str, object]:
        return {
            "key": self.key,
            "layer": self.layer.to_json() if self.layer is not None else None,
            "diffID": self.diff_id,
            "description": self.description,
            "created": self.created,
        }

    @classmethod
    def from_json(cls, obj: object, where: str) -> CacheEntry:
        """An entry as ``to_json`` wrote it; anything else is an ImageError naming ``where``."""
        try:
            assert isinstance(obj, dict)
            layer = obj.get("layer")
            return cls(
                key=str(obj["key"]),
                layer=Descriptor.from_json(layer) if layer is not None else None,
                diff_id=str(obj["diffID"]) if obj.get("diffID") is not None else None,
                description=str(obj.get("description", "")),
                created=float(obj.get("created", 0.0)),
            )
        except (AssertionError, KeyError, TypeError, ValueError) as exc:
            raise ImageError(f"read cache entry in {where}: malformed ({exc!r})") from exc
