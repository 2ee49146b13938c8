#!/usr/bin/env python
"""Benchmarks of DETA: ``python tools/benchmark.py MODE ...`` with MODE one of ``inference``,
``train``, ``op``, ``assign``, ``breakdown``, ``ap`` (``--help`` for each).

The modes, the harness and the examples are in ``tools/benchmarking`` (its ``__init__``
describes them); this file is the entry point, for the command line and for the measuring
subprocesses (``tools/benchmark.py _worker NAME JSON``).
"""

import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:  # `python tools/benchmark.py` without PYTHONPATH
    sys.path.insert(0, REPO)

from tools.benchmarking.cli import main  # noqa: E402

if __name__ == "__main__":
    main()
