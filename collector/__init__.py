"""tracecost: collector. GPU micro-benchmarks that write perf-database tables.

One small module per op kind (gemm, attention, moe, conv1d, scan, memory, nccl, aten), each registering
its collectors with ``@collector(name, spec=...)`` in ``collector.registry``, the spec being the table's
TableSpec from ``costmodel.tables.specs`` (the schema the database reads): a collector turns one case (a dict
of the table's variant and axis columns) into a latency in milliseconds, timed by ``collector.timing``.
``collector.catalog`` loads them all; built-in grids live in ``collector.grids``; ``collector.runner.run_collect``
runs grids and case files and writes the tables.
"""
