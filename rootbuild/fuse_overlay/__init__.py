"""rootbuild's userspace overlay filesystem (pyfuse3 on trio).

- ``model``: pure virtual inode table over the lowers' LayerMeta, copy-up decisions and
  the change journal (no I/O).
- ``backing``: every syscall on the lower trees and the flat upper data store.
- ``ops``: the ``pyfuse3.Operations`` adapter (``OverlayOperations``) and ``finalize``.
- ``journal``: the change set written as an extracted-layer tree plus LayerMeta.
- ``server``/``mount`` (the lead's): process and mount lifecycle.
"""
