"""The build service's queue: jobs of many tenants on Redis Streams (``queue.py``), their
records and states (``jobs.py``, pure), the Lua scripts that make each transition atomic
(``scripts.py``), per-job logs (``logs.py``) and the trio facade a worker uses
(``trio_queue.py``). No build runs here: the worker and the CLI sit on top."""
