"""The RUN sandbox: one step as "root" in fresh unprivileged namespaces (``run.run_step``)."""
