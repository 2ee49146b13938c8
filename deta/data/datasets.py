"""Detectron2 registration of the synthetic shape dataset (``deta/data/synthetic.py``).

Real COCO needs nothing from this module: Detectron2 itself registers ``coco_2017_train`` and
``coco_2017_val`` (and the other builtin splits) on import, with images and annotations looked up
under ``$DETECTRON2_DATASETS/coco/{train2017,val2017,annotations}`` (default ``./datasets``).
"""

import os
from typing import Optional

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import register_coco_instances

from .synthetic import SYNTHETIC_CATEGORIES

__all__ = ["SYNTHETIC_DATASET_NAMES", "register_deta_synthetic", "synthetic_root"]

# Registered name -> split directory name under the dataset root.
SYNTHETIC_DATASET_NAMES = {"deta_synthetic_train": "train", "deta_synthetic_val": "val"}


def synthetic_root() -> str:
    """The default root, ``$DETECTRON2_DATASETS/deta_synthetic`` (``datasets/...`` if unset)."""
    return os.path.join(os.getenv("DETECTRON2_DATASETS", "datasets"), "deta_synthetic")


def register_deta_synthetic(root: Optional[str] = None) -> None:
    """Register ``deta_synthetic_train`` and ``deta_synthetic_val`` as COCO-format datasets.

    Registration only records paths; no file is read or written. Create the data first with
    ``tools/make_synthetic_coco.py`` (or :func:`deta.data.synthetic.generate_synthetic_coco`) at
    the same root. Calling this again with the same root is a no-op; with another root the two
    names are re-registered to point there.

    Args:
        root (str, optional): dataset root; defaults to :func:`synthetic_root`.
    """
    root = synthetic_root() if root is None else root
    thing_classes = list(SYNTHETIC_CATEGORIES)  # a list: load_coco_json later sets a list too
    id_map = {i + 1: i for i in range(len(thing_classes))}
    for name, split in SYNTHETIC_DATASET_NAMES.items():
        json_file = os.path.join(root, "annotations", f"instances_{split}.json")
        image_root = os.path.join(root, split)
        if name in DatasetCatalog.list():
            if MetadataCatalog.get(name).get("json_file") == json_file:
                continue
            # Metadata refuses to change a set value, so both entries go before re-registering.
            DatasetCatalog.remove(name)
            MetadataCatalog.remove(name)
        register_coco_instances(
            name,
            {"thing_classes": thing_classes, "thing_dataset_id_to_contiguous_id": id_map},
            json_file,
            image_root,
        )
