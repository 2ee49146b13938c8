#!/usr/bin/env python
"""Report every problem of a COCO-format detection dataset at once, grouped by kind.

Examples::

    python tools/check_dataset.py --json annotations/instances_train.json --images train/
    python tools/check_dataset.py --dataset coco_2017_val --workers 8
    python tools/check_dataset.py --dataset my_train --max-errors 50 --no-decode

Errors are what stops training with an error (missing or unreadable images, a size that differs
from the json, unknown category ids, NaN/Inf boxes, negative box sizes, malformed or duplicate
entries); warnings are what training fixes by itself (zero-size and outside boxes are dropped,
boxes past the border are clipped). Exit status: 0 without errors, 1 with errors, 2 for bad usage.
"""

import argparse
import os
import sys

from detectron2.data import DatasetCatalog, MetadataCatalog

import deta.data  # noqa: F401  registers the synthetic datasets (and Detectron2's builtins)
from deta.data.dataset_check import check_coco_json, check_dataset_dicts


def _parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", help="COCO instances json")
    parser.add_argument("--images", help="image folder that the json's file_names are under")
    parser.add_argument("--dataset", help="a registered dataset name instead of --json/--images")
    parser.add_argument(
        "--max-errors", type=int, default=0, help="stop after N errors (default: check all)"
    )
    parser.add_argument(
        "--max-per-kind", type=int, default=None, help="list at most N problems of each kind"
    )
    parser.add_argument(
        "--no-decode", action="store_true", help="read image headers only (fast; misses truncation)"
    )
    parser.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1))
    args = parser.parse_args(argv)
    if bool(args.dataset) == bool(args.json or args.images):
        parser.error("give either --dataset, or --json and --images")
    if args.json and not args.images:
        parser.error("--json needs --images")
    if args.images and not args.json:
        parser.error("--images needs --json")
    return args


def main(argv=None) -> int:
    """Run the check; return the exit status."""
    args = _parse_args(argv)
    options = dict(
        decode=not args.no_decode, max_errors=args.max_errors or None, workers=args.workers
    )
    if args.json:
        report = check_coco_json(args.json, args.images, **options)
        report.source = f"{args.json} (images {args.images})"
    else:
        if args.dataset not in DatasetCatalog.list():
            print(f"error: no registered dataset {args.dataset!r}", file=sys.stderr)
            return 2
        meta = MetadataCatalog.get(args.dataset)
        json_file, image_root = meta.get("json_file"), meta.get("image_root")
        if json_file and image_root:
            report = check_coco_json(json_file, image_root, **options)
            report.source = f"dataset {args.dataset!r} ({json_file}, images {image_root})"
        else:  # not COCO-json: check what its loader returns
            dicts = DatasetCatalog.get(args.dataset)
            classes = meta.get("thing_classes")
            num_classes = None if classes is None else len(classes)
            report = check_dataset_dicts(
                dicts, f"dataset {args.dataset!r}", num_classes=num_classes, **options
            )
    print(report.format(args.max_per_kind))
    return 1 if report.errors else 0


if __name__ == "__main__":
    sys.exit(main())
