"""rootbuild's userspace overlay filesystem (pyfuse3 on trio).

- ``model``: pure virtual inode table over the lowers' LayerMeta, copy-up decisions and
  the change journal (no I/O).
- ``backing``: every syscall on the lower trees and the flat upper data store.
- ``ops``: the ``pyfuse3.Operations`` adapter (``OverlayOperations``) and ``finalize``.
- ``journal``: the change set written as an extracted-layer tree plus LayerMeta.
- ``readonly``: the read-only mode (a view of the merged lowers, no upper, no result).
- ``server``/``mount`` (the lead's): process and mount lifecycle.

The rest of rootbuild reaches this package through ``rootbuild.snapshot``
(``snapshot/fuse.py``), never directly; this package never imports ``snapshot``.
"""
