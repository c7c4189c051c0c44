"""rootbuild's userspace overlay filesystem (pyfuse3 on trio).

- ``inodes``: pure virtual inode table over the lowers' LayerMeta (merged lookup order,
  lazy directory tables, lookup counts; no I/O).
- ``model``: pure decisions of every change to that table: namespace operations, copy-up,
  attributes, xattrs and the journal's marks (no I/O).
- ``diff``: the step's changes computed from the journal's marks (no I/O).
- ``backing``: every syscall on the lower trees and the flat upper data store.
- ``ops``: the ``pyfuse3.Operations`` adapter (``OverlayOperations``) and ``finalize``.
- ``journal``: the change set written as an extracted-layer tree plus LayerMeta.
- ``readonly``: the read-only mode (a view of the merged lowers, no upper, no result).
- ``server``/``mount`` (the lead's): process and mount lifecycle.

The rest of rootbuild reaches this package through ``rootbuild.snapshot``
(``snapshot/fuse.py``), never directly; this package never imports ``snapshot``.
"""
