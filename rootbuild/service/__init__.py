"""The build service: jobs of many tenants on Redis Streams (``queue.py``), their records and
states (``jobs.py``, pure), the Lua scripts that make each transition atomic
(``scripts.py``), per-job logs (``logs.py``) and the trio facade (``trio_queue.py``); on
top of the queue, the context blob (``context_blob.py``), the worker that builds claimed
jobs (``worker.py``) and the service's subcommands (``commands.py``)."""
