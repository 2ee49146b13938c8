"""DETA's IoU assignment, built on Detectron2's ``Matcher`` and ``subsample_labels``.

Stage 1 assigns encoder tokens by IoU of their fixed anchors with the ground truth (like an RPN);
stage 2 assigns decoder queries by IoU of their *input* boxes (like Fast R-CNN). Both keep at most
``max_k`` predictions per ground-truth box.
"""

from typing import Dict, List, Sequence, Tuple

import torch
from torch import nn
from torchvision.ops import box_convert, box_iou

from detectron2.modeling.matcher import Matcher
from detectron2.modeling.sampling import subsample_labels

__all__ = ["Stage1Assigner", "Stage2Assigner", "sample_topk_per_gt"]

Indices = List[Tuple[torch.Tensor, torch.Tensor]]


def sample_topk_per_gt(
    pr_inds: torch.Tensor, gt_inds: torch.Tensor, iou: torch.Tensor, k: int
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Keep, per ground truth g with c_g positives, its top-min(c_g, k) predictions by IoU.

    The top-k is taken over *all* predictions, not only those matched to g (official behaviour):
    pairs come out ordered by GT id, then IoU descending.

    Args:
        pr_inds, gt_inds (Tensor): (P,) matched prediction / GT index pairs.
        iou (Tensor): (G, N) IoU of every GT with every prediction.
    """
    if len(gt_inds) == 0:
        return pr_inds, gt_inds
    gts, counts = gt_inds.unique(return_counts=True)
    k = min(k, iou.shape[1])
    top = iou[gts].topk(k, dim=1)[1]
    take = torch.arange(k, device=iou.device)[None] < counts[:, None]
    return top[take], gts[:, None].expand(-1, k)[take]


def _iou(gt_cxcywh: torch.Tensor, pred_cxcywh: torch.Tensor) -> torch.Tensor:
    return box_iou(
        box_convert(gt_cxcywh, "cxcywh", "xyxy"), box_convert(pred_cxcywh, "cxcywh", "xyxy")
    )


def _empty(device: torch.device) -> Tuple[torch.Tensor, torch.Tensor]:
    e = torch.empty(0, dtype=torch.int64, device=device)
    return e, e.clone()


class Stage1Assigner(nn.Module):
    """Encoder tokens ↔ GT by anchor IoU: 0.3/0.7 thresholds, 256 samples, 50% positives."""

    def __init__(
        self,
        iou_thresholds: Sequence[float] = (0.3, 0.7),
        iou_labels: Sequence[int] = (0, -1, 1),
        allow_low_quality_matches: bool = True,
        batch_size_per_image: int = 256,
        positive_fraction: float = 0.5,
        max_k: int = 4,
    ):
        super().__init__()
        self.matcher = Matcher(list(iou_thresholds), list(iou_labels), allow_low_quality_matches)
        self.batch_size_per_image = batch_size_per_image
        self.positive_fraction = positive_fraction
        self.max_k = max_k

    def forward(self, outputs: Dict[str, torch.Tensor], targets: List[Dict]) -> Indices:
        """
        Args:
            outputs: needs ``anchors`` (B, S, 4), the fixed per-token proposals (cx, cy, w, h).
            targets: per image, ``boxes`` (G, 4) normalised cxcywh.

        Returns:
            per image (token indices, GT indices), int64 on the anchors' device.
        """
        anchors = outputs["anchors"]
        indices = []
        for b, target in enumerate(targets):
            if len(target["boxes"]) == 0:
                indices.append(_empty(anchors.device))
                continue
            iou = _iou(target["boxes"], anchors[b])
            matched_idxs, labels = self.matcher(iou)
            pos, _ = subsample_labels(labels, self.batch_size_per_image, self.positive_fraction, 0)
            # Sampled positives in ascending token order (official: a mask over arange(S)).
            pos = pos.sort()[0]
            indices.append(sample_topk_per_gt(pos, matched_idxs[pos], iou, self.max_k))
        return indices


class Stage2Assigner(nn.Module):
    """Decoder queries ↔ GT by IoU of the queries' input boxes: 0.6 threshold, 25% positives.

    The sample size is the number of queries. The label of unmatched queries is ``num_classes``
    (Detectron2's background convention) rather than the official magic value 400.
    """

    def __init__(
        self,
        num_classes: int,
        num_queries: int,
        iou_thresholds: Sequence[float] = (0.6,),
        iou_labels: Sequence[int] = (0, 1),
        allow_low_quality_matches: bool = True,
        positive_fraction: float = 0.25,
        max_k: int = 4,
    ):
        super().__init__()
        self.matcher = Matcher(list(iou_thresholds), list(iou_labels), allow_low_quality_matches)
        self.bg_label = num_classes
        self.num_queries = num_queries
        self.positive_fraction = positive_fraction
        self.max_k = max_k

    def _sample(self, matched_idxs, matched_labels, gt_classes):
        if gt_classes.numel() > 0:
            classes = gt_classes[matched_idxs]
            classes[matched_labels == 0] = self.bg_label
            classes[matched_labels == -1] = -1
        else:
            classes = torch.full_like(matched_idxs, self.bg_label)
        fg, bg = subsample_labels(classes, self.num_queries, self.positive_fraction, self.bg_label)
        sampled = torch.cat([fg, bg])
        return sampled, classes[sampled]

    def forward(self, outputs: Dict[str, torch.Tensor], targets: List[Dict]) -> Indices:
        """
        Args:
            outputs: needs ``init_reference`` (B, Q, 4), the boxes fed to the decoder.
            targets: per image, ``boxes`` (G, 4) normalised cxcywh and ``labels`` (G,).

        Returns:
            per image (query indices, GT indices); reused for every decoder layer.
        """
        refs = outputs["init_reference"].detach()
        indices = []
        for b, target in enumerate(targets):
            iou = _iou(target["boxes"], refs[b])
            matched_idxs, matched_labels = self.matcher(iou)
            sampled, classes = self._sample(matched_idxs, matched_labels, target["labels"])
            pos = sampled[classes != self.bg_label]
            indices.append(sample_topk_per_gt(pos, matched_idxs[pos], iou, self.max_k))
        return indices
