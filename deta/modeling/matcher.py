"""One-to-one Hungarian matching, used when DETA's IoU assignment is switched off.

This is the Improved Deformable DETR baseline's matcher: focal class cost, L1 and GIoU box costs.
"""

from typing import Dict, List, Tuple

import torch
from scipy.optimize import linear_sum_assignment
from torch import nn
from torchvision.ops import box_convert, generalized_box_iou

__all__ = ["HungarianMatcher"]


class HungarianMatcher(nn.Module):
    """cost = w_class · focal(class) + w_bbox · L1 + w_giou · (−GIoU), solved per image."""

    def __init__(
        self,
        cost_class: float = 2.0,
        cost_bbox: float = 5.0,
        cost_giou: float = 2.0,
        alpha: float = 0.25,
        gamma: float = 2.0,
    ):
        super().__init__()
        if cost_class == 0 and cost_bbox == 0 and cost_giou == 0:
            raise ValueError("MODEL.DETA.COST_CLASS/COST_BBOX/COST_GIOU cannot all be 0")
        self.cost_class, self.cost_bbox, self.cost_giou = cost_class, cost_bbox, cost_giou
        self.alpha, self.gamma = alpha, gamma

    @torch.no_grad()
    def forward(
        self, outputs: Dict[str, torch.Tensor], targets: List[Dict]
    ) -> List[Tuple[torch.Tensor, torch.Tensor]]:
        """
        Args:
            outputs: ``pred_logits`` (B, Q, K) and ``pred_boxes`` (B, Q, 4) cxcywh.
            targets: per image ``labels`` (G,) and ``boxes`` (G, 4) cxcywh.

        Returns:
            per image (query indices, GT indices), int64, one-to-one.
        """
        logits, boxes = outputs["pred_logits"], outputs["pred_boxes"]
        B, Q = logits.shape[:2]
        prob = logits.flatten(0, 1).sigmoid()
        out_bbox = boxes.flatten(0, 1)
        tgt_ids = torch.cat([t["labels"] for t in targets])
        tgt_bbox = torch.cat([t["boxes"] for t in targets])
        neg = (1 - self.alpha) * prob**self.gamma * -(1 - prob + 1e-8).log()
        pos = self.alpha * (1 - prob) ** self.gamma * -(prob + 1e-8).log()
        cost_class = pos[:, tgt_ids] - neg[:, tgt_ids]
        cost_bbox = torch.cdist(out_bbox, tgt_bbox, p=1)
        cost_giou = -generalized_box_iou(
            box_convert(out_bbox, "cxcywh", "xyxy"), box_convert(tgt_bbox, "cxcywh", "xyxy")
        )
        cost = (
            self.cost_bbox * cost_bbox + self.cost_class * cost_class + self.cost_giou * cost_giou
        )
        cost = cost.view(B, Q, -1).cpu()
        sizes = [len(t["boxes"]) for t in targets]
        device = logits.device
        indices = []
        for b, c in enumerate(cost.split(sizes, -1)):
            i, j = linear_sum_assignment(c[b].numpy())
            indices.append(
                (
                    torch.as_tensor(i, dtype=torch.int64, device=device),
                    torch.as_tensor(j, dtype=torch.int64, device=device),
                )
            )
        return indices
