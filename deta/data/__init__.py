"""Data side of DETA: the official augmentations, the dataset mapper and the synthetic dataset.

Importing this package registers ``deta_synthetic_train`` / ``deta_synthetic_val`` under
:func:`synthetic_root` (paths only; nothing is read or generated).
"""

from .dataset_mapper import DetaDatasetMapper, build_deta_augmentations
from .datasets import SYNTHETIC_DATASET_NAMES, register_deta_synthetic, synthetic_root
from .synthetic import DEMO_DATA, SYNTHETIC_CATEGORIES, generate_synthetic_coco
from .transforms import DetrResize, RandomSelect, RandomSizeCrop, detr_resize_shape

register_deta_synthetic()

__all__ = [
    "DEMO_DATA",
    "DetaDatasetMapper",
    "DetrResize",
    "RandomSelect",
    "RandomSizeCrop",
    "SYNTHETIC_CATEGORIES",
    "SYNTHETIC_DATASET_NAMES",
    "build_deta_augmentations",
    "detr_resize_shape",
    "generate_synthetic_coco",
    "register_deta_synthetic",
    "synthetic_root",
]
