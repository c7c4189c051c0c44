"""A build's start-up sweep of the scratch dead builds left in the store.

Job: ``sweep_dead_scratch(store, warn)``: before a build takes the store's shared lock,
remove the ``work-*``/``stage-*`` directories of ``tmp/`` that builds killed with
``kill -9`` left, when no other build, import or export holds the store
(``Store.sweep_scratch``: the exclusive ``gc.lock``, without waiting). A killed
kernel-overlay step's files of subordinate ids are removed inside the user namespace
(``sandbox/userns_rm.py``).

Rules:
- A build never waits for the sweep's lock and never fails because of the sweep: what
  cannot be removed (no subordinate range, a mount) is one warning, and the build goes on;
  ``rootbuild prune`` and ``rootbuild system reset`` say the same as errors.
- Nothing is printed when nothing was left.
"""

from __future__ import annotations

from collections.abc import Callable

from rootbuild.errors import StoreError
from rootbuild.image.store import Store
from rootbuild.sandbox.userns_rm import remove_tree


def sweep_dead_scratch(store: Store, warn: Callable[[str], object]) -> int:
    """Sweep (module rules); the bytes freed (0 when the store is held or clean)."""
    try:
        freed = store.sweep_scratch(remove_tree)
    except (StoreError, OSError) as exc:
        warn(f"warning: scratch of dead builds left in {store.tmp_dir}: {exc}; "
             "the build goes on")
        return 0
    return freed or 0
