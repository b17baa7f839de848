"""What one run of a flow creates and changes: its jobs, workers, streams and scalers.

Everything outside this package is a definition or a value (a flow, its
options, capacities, statistics); only :mod:`flowrhythm._flow` and the package's
façade import from here. Module map, from the top down:

- ``_run.py``: :class:`Run` (one task group, the streams between jobs, feeding
  the source) and the handles users hold, ``RunningFlow`` and ``FlowResults``;
- ``_scaler.py``: the per-job scaler task around a scaling strategy;
- ``_pool.py``: the workers of one job: started, retired and resized in one
  place, and the doorman that wakes a job with no worker;
- ``_job.py``: one job of one run: its streams and counters, forwarding,
  failures, end of input and statistics;
- ``_loop.py``: the worker loops, the hot path;
- ``_ordered.py`` and ``_batch.py``: how a worker of an ordered or a batched job
  takes its inputs;
- ``_calls.py``: how one call runs: retry, rate limit, resource manager,
  concurrency slot and timeout;
- ``_worker.py``: a worker's handle (its :class:`Retirement`) and the loops' markers.
"""
