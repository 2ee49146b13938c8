"""DETA modeling: importing this package registers the ``DETA`` meta-architecture."""

from . import swin as _swin  # only registration of build_swin_backbone
from .assigner import Stage1Assigner, Stage2Assigner, sample_topk_per_gt
from .criterion import SetCriterion
from .deta import DETA
from .matcher import HungarianMatcher
from .postprocess import nms_inference, topk_inference

__all__ = [
    "DETA",
    "HungarianMatcher",
    "SetCriterion",
    "Stage1Assigner",
    "Stage2Assigner",
    "nms_inference",
    "sample_topk_per_gt",
    "topk_inference",
]
