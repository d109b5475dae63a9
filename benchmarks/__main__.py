"""``python -m benchmarks --suite quick|full|tiny [--device cpu|gpu] [--out DIR]``; see docs/benchmarks.md."""

from benchmarks.suite.cli import main

raise SystemExit(main())
