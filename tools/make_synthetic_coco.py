#!/usr/bin/env python
"""Write the DETA synthetic COCO-format shape dataset.

Example::

    python tools/make_synthetic_coco.py                      # $DETECTRON2_DATASETS/deta_synthetic
    python tools/make_synthetic_coco.py --root /tmp/shapes --num-train 500 --num-val 50

A second run with the same arguments finds the manifest and does nothing (use ``--force``).
Train and evaluate on it with the registered names ``deta_synthetic_train`` and
``deta_synthetic_val`` (``DETECTRON2_DATASETS`` must point at the same parent directory, or call
``deta.data.register_deta_synthetic(root)``).
"""

import argparse

from deta.data.datasets import synthetic_root
from deta.data.synthetic import generate_synthetic_coco


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default=synthetic_root(), help="output directory")
    parser.add_argument("--num-train", type=int, default=2000, help="training images")
    parser.add_argument("--num-val", type=int, default=200, help="validation images")
    parser.add_argument("--seed", type=int, default=0, help="base random seed")
    parser.add_argument("--force", action="store_true", help="regenerate even if complete")
    args = parser.parse_args()

    result = generate_synthetic_coco(
        args.root, num_train=args.num_train, num_val=args.num_val, seed=args.seed, force=args.force
    )
    if not result["generated"]:
        print(f"{args.root}: already complete for these arguments, nothing written")
        return
    print(f"Wrote {args.root} in {result['seconds']:.1f} s:")
    for split, stats in result["stats"].items():
        print(
            f"  {split}: {stats['images']} images ({stats['empty']} without objects), "
            f"{stats['annotations']} annotations -> {result[split + '_json']}"
        )


if __name__ == "__main__":
    main()
