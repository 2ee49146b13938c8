"""COCO-json dataset registration with validation, and the synthetic shape dataset.

Real COCO needs nothing from this module: Detectron2 itself registers ``coco_2017_train`` and
``coco_2017_val`` (and the other builtin splits) on import, with images and annotations looked up
under ``$DETECTRON2_DATASETS/coco/{train2017,val2017,annotations}`` (default ``./datasets``).
:func:`use_deta_coco_loader` switches such a dataset to :func:`load_deta_coco_json`, which checks
the json first and keeps the annotation ids that Detectron2's loader drops, so that the mapper's
errors can name them. Use :func:`register_deta_coco_instances` for your own COCO-format data,
or, without Python, the config key ``DATASETS.COCO_REGISTER`` (``train_net.py --register``),
which :func:`register_from_config` applies; :func:`resolve_num_classes` turns
``MODEL.DETA.NUM_CLASSES -1`` into the training set's number of categories.
"""

import json
import logging
import os
from typing import Any, Dict, List, Optional, Tuple

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import load_coco_json

from ..config import NUM_CLASSES_FROM_DATA
from .annotations import DatasetError
from .dataset_check import PROBLEM_KINDS, Problem, check_coco_json
from .synthetic import SYNTHETIC_CATEGORIES

__all__ = [
    "COCO_REGISTER_KEY",
    "DatasetConfigError",
    "SYNTHETIC_DATASET_NAMES",
    "dataset_num_classes",
    "load_deta_coco_json",
    "register_deta_coco_instances",
    "register_deta_synthetic",
    "register_from_config",
    "resolve_num_classes",
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


COCO_REGISTER_KEY = "DATASETS.COCO_REGISTER"
_NUM_CLASSES_KEY = "MODEL.DETA.NUM_CLASSES"


class DatasetConfigError(ValueError):
    """A dataset setting of the config that cannot work; the message names the key and value."""


def _coco_register_triples(entries: Any, require_files: bool = True) -> List[Tuple[str, str, str]]:
    """The checked triples of ``DATASETS.COCO_REGISTER``; every file is checked before any
    registration, so that a bad entry leaves the catalog as it was. Without ``require_files`` a
    missing file is only a warning (the loader names it if the dataset is used)."""
    key = COCO_REGISTER_KEY
    if isinstance(entries, str) or not isinstance(entries, (list, tuple)):
        raise DatasetConfigError(
            f"{key}={entries!r}: must be a list of [name, json_file, image_root] triples"
        )
    if len(entries) == 3 and all(isinstance(e, str) for e in entries):
        # The usual slip: one triple written without the outer list.
        raise DatasetConfigError(
            f"{key}={list(entries)!r}: must be a list of [name, json_file, image_root] triples; "
            f"write [{list(entries)!r}]"
        )
    triples = []
    for i, entry in enumerate(entries):
        ok = isinstance(entry, (list, tuple)) and len(entry) == 3
        if not (ok and all(isinstance(v, str) and v for v in entry)):
            raise DatasetConfigError(
                f"{key}[{i}]={entry!r}: must be [name, json_file, image_root] (3 non-empty strings)"
            )
        name, json_file, image_root = entry
        problem = None
        if not os.path.isfile(json_file):
            problem = f"{key}[{i}] (dataset {name!r}): json_file {json_file!r} does not exist"
        elif not os.path.isdir(image_root):
            problem = f"{key}[{i}] (dataset {name!r}): image_root {image_root!r} is not a folder"
        if problem and require_files:
            raise DatasetConfigError(problem)
        if problem:
            logger.warning(f"{problem}; registered anyway, it fails if used")
        triples.append((name, json_file, image_root))
    return triples


def register_from_config(cfg, require_files: bool = True) -> List[str]:
    """Register every ``[name, json_file, image_root]`` of ``cfg.DATASETS.COCO_REGISTER`` with
    :func:`register_deta_coco_instances` (paths only: the json is read, and checked, on first use).

    Every process that builds the config calls this, so repeating it is cheap: a name already
    registered with the same json and image root is left alone; one registered earlier by this
    function with other paths is re-registered (later entries win, so ``--register`` overrides
    the yaml). A name registered by anything else (a Detectron2 builtin such as
    ``coco_2017_train``, the synthetic sets, a Python ``register_*`` call) is refused rather than
    silently replaced.

    Returns:
        list[str]: the names of the entries, in order.

    Raises:
        DatasetConfigError: an entry is malformed, a file or folder is missing, or a name is taken;
            the message names the key, the entry and the value.
    """
    entries = cfg.DATASETS.get("COCO_REGISTER", [])  # absent from a cfg without add_deta_config
    triples = _coco_register_triples(entries, require_files)
    for i, (name, json_file, image_root) in enumerate(triples):
        if name in DatasetCatalog.list():
            meta = MetadataCatalog.get(name)
            if (meta.get("json_file"), meta.get("image_root")) == (json_file, image_root):
                continue
            if meta.get("registered_by") != COCO_REGISTER_KEY:
                raise DatasetConfigError(
                    f"{COCO_REGISTER_KEY}[{i}]: dataset name {name!r} is already registered by "
                    "other code (a Detectron2 or DETA builtin, or a register_* call; json_file "
                    f"{meta.get('json_file')!r}); choose another name"
                )
            DatasetCatalog.remove(name)
        if name in MetadataCatalog.list():
            MetadataCatalog.remove(name)  # Metadata refuses to change a set value
        register_deta_coco_instances(
            name, {"registered_by": COCO_REGISTER_KEY}, json_file, image_root
        )
        logger.info(f"Registered dataset {name!r}: {json_file}, images {image_root}")
    return [name for name, _, _ in triples]


def _json_num_categories(json_file: str) -> Optional[int]:
    """The number of category ids in a COCO json, or None if it cannot be read that far (the
    loader's check then reports what is wrong)."""
    try:
        with open(json_file) as f:
            coco = json.load(f)
    except (OSError, ValueError):
        return None
    categories = coco.get("categories") if isinstance(coco, dict) else None
    if not isinstance(categories, list) or not all(
        isinstance(c, dict) and "id" in c for c in categories
    ):
        return None
    # Distinct ids, as load_coco_json counts them (pycocotools indexes categories by id).
    return len({c["id"] for c in categories})


def dataset_num_classes(name: str, *, load: bool = False) -> Optional[int]:
    """The number of categories of a registered dataset, or None when it is not known.

    Looked up in this order: ``thing_classes`` of its metadata; the ``categories`` of its
    ``json_file`` (COCO-json datasets, whose loader sets ``thing_classes`` only when it runs; this
    parses the whole json once); with ``load``, ``thing_classes`` after running its loader
    (``DatasetCatalog.get``, which may take long for a large dataset).

    Args:
        name (str): a registered dataset name.
        load (bool): run the loader when nothing else tells.
    """
    meta = MetadataCatalog.get(name)
    classes = meta.get("thing_classes")
    if classes is not None:
        return len(classes)
    json_file = meta.get("json_file")
    if json_file and os.path.isfile(json_file):
        n = _json_num_categories(json_file)
        if n is not None:
            return n
    if load:
        DatasetCatalog.get(name)  # raises DatasetError naming the problems of a bad json
        classes = MetadataCatalog.get(name).get("thing_classes")
        if classes is not None:
            return len(classes)
    return None


def resolve_num_classes(cfg, *, check: bool = True) -> int:
    """Replace ``MODEL.DETA.NUM_CLASSES = -1`` by the number of categories of
    ``DATASETS.TRAIN`` (``cfg`` must not be frozen then); with ``check``, also refuse a positive
    value that disagrees with a training set whose count is known, before any training starts.

    All training sets must agree on the count. A dataset that is not registered, or whose count is
    unknown without loading it, is not checked against a positive value.

    Returns:
        int: the resolved ``MODEL.DETA.NUM_CLASSES``.

    Raises:
        DatasetConfigError: the count cannot be resolved, or it disagrees (both numbers and the
            dataset are named).
    """
    wanted = cfg.MODEL.DETA.NUM_CLASSES
    from_data = wanted == NUM_CLASSES_FROM_DATA
    if not from_data and not check:
        return wanted
    train = list(cfg.DATASETS.TRAIN)
    if from_data and not train:
        raise DatasetConfigError(
            f"{_NUM_CLASSES_KEY} is -1 (from the training set) but DATASETS.TRAIN is empty; "
            f"set DATASETS.TRAIN or a positive {_NUM_CLASSES_KEY}"
        )
    counts: Dict[str, int] = {}
    for name in train:
        if name not in DatasetCatalog.list():
            if from_data:
                raise DatasetConfigError(
                    f"{_NUM_CLASSES_KEY} is -1 (from the training set) but DATASETS.TRAIN has "
                    f"{name!r}, which is not a registered dataset; register it with "
                    f"{COCO_REGISTER_KEY} or train_net.py --register NAME JSON IMAGE_ROOT"
                )
            continue  # the trainer names it when it loads the data
        n = dataset_num_classes(name, load=from_data)
        if n is None and from_data:
            raise DatasetConfigError(
                f"{_NUM_CLASSES_KEY} is -1 (from the training set) but the number of categories "
                f"of {name!r} is unknown (no thing_classes in its metadata, even after loading "
                f"it); set {_NUM_CLASSES_KEY}"
            )
        if n is not None:
            counts[name] = n
    if len(set(counts.values())) > 1:
        listed = ", ".join(f"{name} has {n}" for name, n in counts.items())
        raise DatasetConfigError(
            f"the DATASETS.TRAIN datasets disagree on the number of categories ({listed}); "
            "train on datasets with the same categories"
        )
    if not counts:
        return wanted
    name, n = next(iter(counts.items()))
    if n < 1:
        raise DatasetConfigError(f"{name} has no categories: {_NUM_CLASSES_KEY} cannot be {n}")
    if from_data:
        cfg.MODEL.DETA.NUM_CLASSES = n
        logger.info(f"{_NUM_CLASSES_KEY} -1: {n}, the number of categories of {name}")
        return n
    if wanted != n:
        raise DatasetConfigError(
            f"{_NUM_CLASSES_KEY} is {wanted} but {name} has {n} categories (thing_classes); "
            f"set it to {n} or -1"
        )
    return wanted
