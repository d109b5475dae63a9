"""The benchmark suite behind ``python -m benchmarks``: settings, measurements, statistics, report.

Modules: :mod:`.settings` (one dataclass per suite: tiny, quick, full), :mod:`.stats` (IQM and
stratified percentile bootstrap), :mod:`.measure` (env, render, update, end-to-end, learning,
cost, peer rows), :mod:`.report` (report.md, PNG plots), :mod:`.cli` (the command line).
"""
