"""DETA's two NMS steps in a form that ``torch.export`` traces for a dynamic image size.

The eager model loops over the groups present (``torch.unique``) and branches on how many boxes
survive; both depend on tensor values. Here the grouped NMS is one custom op,
``deta::group_nms``, whose eager implementation is the model's own :func:`group_nms` (so an
exported program gives the model's result) and which the ONNX exporter writes as one
``NonMaxSuppression`` with one class per group. The branches become ``torch.where`` over both
alternatives, with sizes kept static by padding.
"""

from typing import List

import torch
from torchvision.ops import box_convert

from ..modeling.two_stage import _per_level_candidates, group_nms

__all__ = ["nms_postprocess", "select_queries_nms_static", "topk_postprocess"]


@torch.library.custom_op("deta::group_nms", mutates_args=())
def group_nms_op(
    boxes: torch.Tensor,
    scores: torch.Tensor,
    groups: torch.Tensor,
    num_groups: int,
    iou_threshold: float,
) -> torch.Tensor:
    """:func:`deta.modeling.two_stage.group_nms` as one graph node; ``groups`` in
    ``[0, num_groups)``. Returns kept indices, score-descending."""
    return group_nms(boxes, scores, groups, iou_threshold)


@group_nms_op.register_fake
def _(boxes, scores, groups, num_groups, iou_threshold):
    kept = torch.library.get_ctx().new_dynamic_size()
    return boxes.new_empty((kept,), dtype=torch.int64)


def select_queries_nms_static(
    objectness: torch.Tensor,
    boxes_unact: torch.Tensor,
    level_ids: torch.Tensor,
    level_sizes: List[int],
    num_queries: int,
    pre_nms_topk: int = 1000,
    nms_thresh: float = 0.9,
) -> torch.Tensor:
    """:func:`deta.modeling.two_stage.select_queries_nms` for one image, without data-dependent
    Python control flow. Same selection, same order (the tests compare the two).

    Requires at least ``num_queries`` tokens (the export checks the image size for it).
    """
    if objectness.shape[0] != 1:
        raise ValueError(
            f"the exported model takes one image, got a batch of {objectness.shape[0]}"
        )
    L = len(level_sizes)
    q = num_queries
    torch._check(objectness.shape[1] >= q)
    boxes = box_convert(boxes_unact[0].sigmoid().float(), "cxcywh", "xyxy").clamp(0, 1)
    cands = _per_level_candidates(objectness.sigmoid(), level_ids, L, pre_nms_topk)[0]
    score = objectness[0]
    keep = group_nms_op(boxes[cands], score[cands], level_ids[cands], L, nms_thresh)
    kept = cands[keep]  # token ids, score-descending
    # The per-level cap of _cap_per_level, as masks over the survivors.
    onehot = level_ids[kept][None] == torch.arange(L, device=kept.device)[:, None]
    chosen = (onehot & (onehot.cumsum(1) <= q // L)).any(0)
    missing = q - chosen.sum()
    rest = ~chosen
    chosen = chosen | (rest & (rest.cumsum(0) <= missing))
    # The chosen survivors in their order, as exactly q entries: padded with q dummies so that
    # topk(q) exists even when fewer than q survived (then the fallback below is taken).
    pad = kept.new_zeros((q,))
    order = torch.arange(kept.shape[0], device=kept.device)
    key = torch.cat([torch.where(chosen, kept.shape[0] - order, 0), pad])
    capped = torch.cat([kept, pad])[key.topk(q).indices]
    # Too few survivors: the plain top-q, as in the eager selection.
    fallback = score.topk(q).indices
    return torch.where(chosen.sum() >= q, capped, fallback)[None]


def nms_postprocess(
    logits: torch.Tensor,
    boxes: torch.Tensor,
    height,
    width,
    pre_nms_topk: int,
    nms_thresh: float,
    max_detections: int,
):
    """:func:`deta.modeling.postprocess.nms_inference` for one image of ``height × width``.

    Args:
        logits (Tensor): (Q, K); boxes (Tensor): (Q, 4) normalised cxcywh.

    Returns:
        boxes (N, 4) xyxy in pixels, scores (N,), classes (N,) int64.
    """
    Q, K = logits.shape
    scores = logits.sigmoid().reshape(-1)
    score, flat = scores.topk(min(pre_nms_topk, Q * K))
    query, label = flat // K, flat % K
    xyxy = _scaled(boxes[query], height, width)
    keep = group_nms_op(xyxy, score, label, K, nms_thresh)[:max_detections]
    return xyxy[keep], score[keep], label[keep]


def topk_postprocess(logits, boxes, height, width, max_detections: int):
    """:func:`deta.modeling.postprocess.topk_inference` for one image."""
    Q, K = logits.shape
    score, flat = logits.sigmoid().reshape(-1).topk(min(max_detections, Q * K))
    return _scaled(boxes[flat // K], height, width), score, flat % K


def _scaled(boxes: torch.Tensor, height, width) -> torch.Tensor:
    # 0-d tensors from the (symbolic) sizes: torch.tensor([...]) would fix them at export time.
    w = torch.full((), width, dtype=boxes.dtype, device=boxes.device)
    h = torch.full((), height, dtype=boxes.dtype, device=boxes.device)
    return box_convert(boxes, "cxcywh", "xyxy") * torch.stack([w, h, w, h])
