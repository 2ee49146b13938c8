"""COCO evaluation of DETA models, shared by ``train_net.py`` and ``tools/``."""

import inspect
import logging
import os
from typing import Optional

from detectron2.config import CfgNode
from detectron2.evaluation import COCOEvaluator

__all__ = ["build_coco_evaluator", "has_fast_coco_eval"]

logger = logging.getLogger(__name__)


def has_fast_coco_eval() -> bool:
    """Whether detectron2's ``_C`` has the C++ COCOeval (minimal builds of v0.6 lack it)."""
    try:
        from detectron2 import _C
    except ImportError:
        return False
    return hasattr(_C, "COCOevalEvaluateImages")


def build_coco_evaluator(
    cfg: CfgNode, dataset_name: str, output_folder: Optional[str] = None
) -> COCOEvaluator:
    """A bbox ``COCOEvaluator`` keeping ``TEST.DETECTIONS_PER_IMAGE`` detections per image.

    Args:
        cfg (CfgNode): the config (``OUTPUT_DIR`` and ``TEST.DETECTIONS_PER_IMAGE`` are read).
        dataset_name (str): a registered dataset with COCO-format ground truth.
        output_folder (str, optional): where predictions are written; defaults to
            ``OUTPUT_DIR/inference``.
    """
    output_folder = output_folder or os.path.join(cfg.OUTPUT_DIR, "inference")
    kwargs = {"tasks": ("bbox",), "distributed": True, "output_dir": output_folder}
    params = inspect.signature(COCOEvaluator.__init__).parameters
    if "max_dets_per_image" in params:  # detectron2 >= 0.6
        kwargs["max_dets_per_image"] = cfg.TEST.DETECTIONS_PER_IMAGE
    if "use_fast_impl" in params:
        kwargs["use_fast_impl"] = has_fast_coco_eval()
    evaluator = COCOEvaluator(dataset_name, **kwargs)
    _fill_missing_areas(evaluator, dataset_name)
    return evaluator


def _fill_missing_areas(evaluator: COCOEvaluator, dataset_name: str) -> None:
    """Give ground-truth annotations without ``area`` their box area.

    pycocotools reads ``area`` for the small/medium/large ranges (and for every AP, through the
    area-range filter) and raises ``KeyError: 'area'`` without it, after the whole inference
    has run. Many hand-made or converted jsons omit it; for a box detector the box area is the
    natural value (pycocotools gives bbox results the same).
    """
    coco = getattr(evaluator, "_coco_api", None)
    if coco is None:  # a Detectron2 whose evaluator keeps it elsewhere: leave it as it is
        return
    missing = [a for a in coco.dataset.get("annotations", []) if "area" not in a]
    if not missing:
        return
    for ann in missing:
        ann["area"] = float(ann["bbox"][2] * ann["bbox"][3])
    coco.createIndex()
    logger.warning(
        "%s: %d of its ground-truth annotations have no 'area'; using their box area (w * h) "
        "for the COCO evaluation",
        dataset_name,
        len(missing),
    )
