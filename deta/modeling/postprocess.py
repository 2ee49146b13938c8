"""Inference post-processing: DETA's class-wise NMS and the plain top-k of DETR.

Shape shorthand: ``B`` batch, ``Q`` queries, ``K`` classes.
"""

from typing import List, Tuple

import torch
from torchvision.ops import batched_nms, box_convert

from detectron2.structures import Boxes, Instances

__all__ = ["nms_inference", "topk_inference"]


def _scaled_boxes(pred_boxes: torch.Tensor, height: int, width: int) -> torch.Tensor:
    # Not clipped to the image, as in the official post-processors.
    scale = torch.tensor(
        [width, height, width, height], dtype=pred_boxes.dtype, device=pred_boxes.device
    )
    return box_convert(pred_boxes, "cxcywh", "xyxy") * scale


def _instances(boxes, scores, classes, image_size: Tuple[int, int]) -> Instances:
    result = Instances(image_size)
    result.pred_boxes = Boxes(boxes)
    result.scores = scores
    result.pred_classes = classes
    return result


def nms_inference(
    pred_logits: torch.Tensor,
    pred_boxes: torch.Tensor,
    image_sizes: List[Tuple[int, int]],
    pre_nms_topk: int = 10000,
    nms_thresh: float = 0.7,
    max_detections: int = 100,
) -> List[Instances]:
    """(query, class) pairs: top ``pre_nms_topk``, class-wise NMS, keep the best.

    Args:
        pred_logits (Tensor): (B, Q, K).
        pred_boxes (Tensor): (B, Q, 4) normalised cxcywh.
        image_sizes: (height, width) to scale boxes to, per image (the original image size).
    """
    B, Q, K = pred_logits.shape
    scores = pred_logits.sigmoid().view(B, Q * K)
    results = []
    for b, (h, w) in enumerate(image_sizes):
        score = scores[b]
        # Clamped: the official unconditional top-10000 crashes when Q·K is smaller.
        k = min(pre_nms_topk, score.numel())
        score, flat = score.topk(k)
        query, label = flat // K, flat % K
        boxes = _scaled_boxes(pred_boxes[b][query], h, w)
        keep = batched_nms(boxes, score, label, nms_thresh)[:max_detections]
        results.append(_instances(boxes[keep], score[keep], label[keep], (h, w)))
    return results


def topk_inference(
    pred_logits: torch.Tensor,
    pred_boxes: torch.Tensor,
    image_sizes: List[Tuple[int, int]],
    max_detections: int = 100,
) -> List[Instances]:
    """Top ``max_detections`` (query, class) pairs; a query may appear with several labels."""
    B, Q, K = pred_logits.shape
    scores = pred_logits.sigmoid().view(B, Q * K)
    k = min(max_detections, Q * K)
    top_scores, flat = scores.topk(k, dim=1)
    results = []
    for b, (h, w) in enumerate(image_sizes):
        query, label = flat[b] // K, flat[b] % K
        boxes = _scaled_boxes(pred_boxes[b][query], h, w)
        results.append(_instances(boxes, top_scores[b], label, (h, w)))
    return results
