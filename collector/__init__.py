"""tracecost: collector. GPU micro-benchmarks that write perf-database tables.

One small module per op kind (gemm, attention, moe, conv1d, scan, memory, nccl, aten), each registering
its collectors with ``@collector(...)`` in ``collector.registry``: a collector turns one case (a dict of the
table's variant and axis columns) into a latency in milliseconds, timed by ``collector.timing``. Built-in
grids live in ``collector.grids``; ``collector.runner.run_collect`` runs grids and case files and writes
parquet tables in the database's schema; ``collector.query.aten_latency`` reads the ``aten_perf`` table back.
"""
