"""The RUN sandbox: one step as "root" in fresh unprivileged namespaces
(``executor.SandboxExecutor``, one per build). Reaches the step's filesystem only through
``rootbuild.snapshot``, never ``rootbuild.fuse_overlay``."""
