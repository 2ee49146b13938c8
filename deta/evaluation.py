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
    return COCOEvaluator(dataset_name, **kwargs)
