"""COCO-json dataset registration with validation, and the synthetic shape dataset.

Real COCO needs nothing from this module: Detectron2 itself registers ``coco_2017_train`` and
``coco_2017_val`` (and the other builtin splits) on import, with images and annotations looked up
under ``$DETECTRON2_DATASETS/coco/{train2017,val2017,annotations}`` (default ``./datasets``).
:func:`use_deta_coco_loader` switches such a dataset to :func:`load_deta_coco_json`, which checks
the json first and keeps the annotation ids that Detectron2's loader drops, so that the mapper's
errors can name them. Use :func:`register_deta_coco_instances` for your own COCO-format data.
"""

import logging
import os
from typing import Any, Dict, List, Optional

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import load_coco_json

from .annotations import DatasetError
from .dataset_check import PROBLEM_KINDS, Problem, check_coco_json
from .synthetic import SYNTHETIC_CATEGORIES

__all__ = [
    "SYNTHETIC_DATASET_NAMES",
    "load_deta_coco_json",
    "register_deta_coco_instances",
    "register_deta_synthetic",
    "synthetic_root",
    "use_deta_coco_loader",
]

logger = logging.getLogger(__name__)

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
        register_deta_coco_instances(
            name,
            {"thing_classes": thing_classes, "thing_dataset_id_to_contiguous_id": id_map},
            json_file,
            image_root,
        )


def load_deta_coco_json(
    json_file: str, image_root: str, dataset_name: Optional[str] = None, *, validate: bool = True
) -> List[Dict[str, Any]]:
    """Detectron2's ``load_coco_json``, after checking the json, keeping annotation ids.

    The check (:func:`deta.data.dataset_check.check_coco_json` without opening images) raises on
    anything that would otherwise crash later without context or train on garbage: unknown
    category ids, NaN/Inf boxes, negative box sizes, duplicate ids, malformed entries. Problems
    that training fixes (zero-size or outside boxes, dropped; boxes past the border, clipped) are
    logged once as a summary. Each annotation dict keeps its json ``id``.

    The json is parsed twice (once here, once by Detectron2): the check roughly doubles the load
    time (200k annotations: 3.5 s for Detectron2 alone, 3.7 s more for the check, on 2 CPUs).

    Args:
        json_file (str): COCO instances json.
        image_root (str): folder the ``file_name`` s are relative to.
        dataset_name (str, optional): as in ``load_coco_json``: sets the metadata and maps the
            category ids to contiguous ones.
        validate (bool): run the check.

    Returns:
        list[dict]: Detectron2 standard dataset dicts.

    Raises:
        DatasetError: the json has errors; the message lists them (first 20).
    """
    if validate:
        report = check_coco_json(json_file, image_root, check_images=False)
        what = f"{json_file}" + (f" (dataset {dataset_name!r})" if dataset_name else "")
        if report.errors:
            raise DatasetError(report.error_summary(what))
        _log_warnings(report.warnings, what)
    return load_coco_json(json_file, image_root, dataset_name, extra_annotation_keys=["id"])


def _log_warnings(warnings: List[Problem], what: str) -> None:
    for kind, (_, title, hint) in PROBLEM_KINDS.items():
        group = [w for w in warnings if w.kind == kind]
        if group:
            logger.warning(f"{what}: {len(group)} x {title} ({hint}); first: {group[0].message}")


def register_deta_coco_instances(
    name: str, metadata: Dict[str, Any], json_file: str, image_root: str
) -> None:
    """Detectron2's ``register_coco_instances`` with :func:`load_deta_coco_json` as the loader.

    Args:
        name (str): dataset name, e.g. "my_dataset_train".
        metadata (dict): extra metadata, e.g. ``thing_classes``.
        json_file (str): COCO instances json.
        image_root (str): image folder.
    """
    DatasetCatalog.register(name, lambda: load_deta_coco_json(json_file, image_root, name))
    MetadataCatalog.get(name).set(
        json_file=json_file, image_root=image_root, evaluator_type="coco", **metadata
    )


def use_deta_coco_loader(name: str) -> None:
    """Switch an already registered COCO-json dataset (e.g. ``coco_2017_train``) to
    :func:`load_deta_coco_json`, keeping its metadata.

    Args:
        name (str): a dataset whose metadata has ``json_file`` and ``image_root``.
    """
    meta = MetadataCatalog.get(name)
    json_file, image_root = meta.get("json_file"), meta.get("image_root")
    if json_file is None or image_root is None:
        raise ValueError(f"dataset {name!r} has no json_file/image_root metadata: not COCO-json")
    DatasetCatalog.remove(name)
    DatasetCatalog.register(name, lambda: load_deta_coco_json(json_file, image_root, name))
