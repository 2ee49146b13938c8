#!/usr/bin/env python
"""Plot a Detectron2 ``metrics.json`` (one JSON object per line) as training curves.

Three panels: the loss terms, the learning rate and the COCO bbox AP/AP50/AP75 of the periodic
evaluations (see :mod:`deta.utils.plot_metrics`).

Example::

    python tools/plot_metrics.py output/demo/model/metrics.json -o output/demo/curves.png
"""

import argparse
import os

from deta.utils.cli import fail, run_main
from deta.utils.plot_metrics import load_metrics, plot_metrics


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("metrics", help="path to metrics.json")
    parser.add_argument("-o", "--output", default=None, help="PNG path (default: next to it)")
    parser.add_argument("--title", default=None)
    args = parser.parse_args(argv)
    if not os.path.isfile(args.metrics):
        fail(f"{args.metrics}: no such file")
    try:
        series = load_metrics(args.metrics)
    except (OSError, UnicodeDecodeError) as e:
        fail(f"{args.metrics}: cannot be read ({e})")
    if not series:
        # Broken lines are skipped (a kill can cut the last one); none at all is the wrong file.
        fail(f"{args.metrics}: no metrics lines (JSON objects with an 'iteration') in it")
    out = args.output or os.path.join(os.path.dirname(args.metrics), "curves.png")
    print(f"wrote {plot_metrics(args.metrics, out, args.title)}")


if __name__ == "__main__":
    run_main(main)
