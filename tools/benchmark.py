#!/usr/bin/env python
"""Benchmarks of DETA: ``python tools/benchmark.py MODE ...`` with MODE one of ``inference``,
``train``, ``op``, ``assign``, ``breakdown``, ``roofline``, ``ap`` (``--help`` for each).

The modes, the harness and the examples are in ``tools/benchmarking`` (its ``__init__``
describes them); this file is the entry point, for the command line and for the measuring
subprocesses (``tools/benchmark.py _worker NAME JSON``). Config overrides are trailing
``KEY VALUE`` pairs, as in the other tools (``--opts KEY VALUE ...`` is the deprecated spelling).
"""

import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The modes live in `tools.benchmarking`, a package of the repository that is not installed
# (setup.py excludes tools/); running this file puts tools/, not the repository root, on sys.path.
if REPO not in sys.path:
    sys.path.insert(0, REPO)

from tools.benchmarking.cli import main  # noqa: E402

if __name__ == "__main__":
    from deta.utils.cli import run_main

    run_main(main)
