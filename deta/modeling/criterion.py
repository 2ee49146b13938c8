"""DETA's set criterion: sigmoid focal + L1 + GIoU on the final, auxiliary and encoder outputs.

Every term is normalised by the number of ground-truth boxes averaged across ranks,
not by the number of positives.
"""

from typing import Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F
from fvcore.nn import sigmoid_focal_loss
from torch import nn
from torchvision.ops import box_convert, generalized_box_iou_loss

from detectron2.utils import comm

from .assigner import Stage1Assigner, Stage2Assigner
from .matcher import HungarianMatcher

__all__ = ["SetCriterion", "build_criterion"]

Indices = List[Tuple[torch.Tensor, torch.Tensor]]


def _num_boxes(targets: List[Dict], device: torch.device) -> float:
    n = torch.as_tensor([float(sum(len(t["labels"]) for t in targets))], device=device)
    if comm.get_world_size() > 1:
        torch.distributed.all_reduce(n)
    return torch.clamp(n / comm.get_world_size(), min=1).item()


class SetCriterion(nn.Module):
    """Losses of DETA / Deformable DETR.

    Args:
        matcher (nn.Module): one-to-one matcher for outputs without an IoU assigner.
        weight_dict (dict): weight of each returned loss key (``loss_ce``, ``loss_bbox_0``, ...).
        stage1_assigner, stage2_assigner (nn.Module or None): DETA's assigners; when given they
            replace the matcher for the encoder / decoder outputs.

    Attributes:
        last_indices (dict): the assignment of the last :meth:`forward`, as :meth:`assign`
            returns it (``final``, ``aux_i``, ``enc`` → per image (prediction, target) index
            pairs); empty before the first call. The meta-architecture logs positives from it.
    """

    def __init__(
        self,
        matcher: nn.Module,
        weight_dict: Dict[str, float],
        *,
        focal_alpha: float = 0.25,
        focal_gamma: float = 2.0,
        stage1_assigner: Optional[nn.Module] = None,
        stage2_assigner: Optional[nn.Module] = None,
    ):
        super().__init__()
        self.matcher = matcher
        self.weight_dict = weight_dict
        self.focal_alpha = focal_alpha
        self.focal_gamma = focal_gamma
        self.stage1_assigner = stage1_assigner
        self.stage2_assigner = stage2_assigner
        self.last_indices: Dict[str, Indices] = {}

    def loss_labels(self, outputs, targets, indices: Indices, num_boxes: float):
        logits = outputs["pred_logits"]
        B, Q, K = logits.shape
        batch_idx, src_idx = self._src_permutation(indices)
        classes = torch.full((B, Q), K, dtype=torch.int64, device=logits.device)
        classes[batch_idx, src_idx] = torch.cat(
            [t["labels"][j] for t, (_, j) in zip(targets, indices)]
        )
        onehot = F.one_hot(classes, K + 1)[..., :K].to(logits.dtype)
        loss = sigmoid_focal_loss(logits, onehot, self.focal_alpha, self.focal_gamma, "none")
        # mean over queries then × Q == sum / num_boxes, as in the official code.
        return {"loss_ce": loss.mean(1).sum() / num_boxes * Q}

    def loss_boxes(self, outputs, targets, indices: Indices, num_boxes: float):
        batch_idx, src_idx = self._src_permutation(indices)
        src = outputs["pred_boxes"][batch_idx, src_idx]
        tgt = torch.cat([t["boxes"][j] for t, (_, j) in zip(targets, indices)])
        loss_bbox = F.l1_loss(src, tgt, reduction="none").sum() / num_boxes
        loss_giou = generalized_box_iou_loss(
            box_convert(src, "cxcywh", "xyxy"), box_convert(tgt, "cxcywh", "xyxy"), reduction="sum"
        )
        return {"loss_bbox": loss_bbox, "loss_giou": loss_giou / num_boxes}

    @staticmethod
    def _src_permutation(indices: Indices):
        batch_idx = torch.cat([torch.full_like(src, i) for i, (src, _) in enumerate(indices)])
        return batch_idx, torch.cat([src for src, _ in indices])

    def _losses(self, outputs, targets, indices, num_boxes, suffix=""):
        losses = self.loss_labels(outputs, targets, indices, num_boxes)
        losses.update(self.loss_boxes(outputs, targets, indices, num_boxes))
        return {k + suffix: v for k, v in losses.items()}

    def assign(self, outputs, targets) -> Dict[str, Indices]:
        """All assignments of one batch: ``final`` (also used for aux layers under stage 2),
        ``aux_i`` for Hungarian aux layers, and ``enc``."""
        out = {}
        final = {k: v for k, v in outputs.items() if k not in ("aux_outputs", "enc_outputs")}
        if self.stage2_assigner is not None:
            out["final"] = self.stage2_assigner(final, targets)
        else:
            out["final"] = self.matcher(final, targets)
        for i, aux in enumerate(outputs.get("aux_outputs", [])):
            out[f"aux_{i}"] = (
                out["final"] if self.stage2_assigner is not None else self.matcher(aux, targets)
            )
        if "enc_outputs" in outputs:
            bin_targets = self._binary_targets(targets)
            if self.stage1_assigner is not None:
                out["enc"] = self.stage1_assigner(outputs["enc_outputs"], bin_targets)
            else:
                out["enc"] = self.matcher(outputs["enc_outputs"], bin_targets)
        return out

    @staticmethod
    def _binary_targets(targets):
        # The first stage is class-agnostic: every GT has label 0, the objectness logit.
        return [dict(t, labels=torch.zeros_like(t["labels"])) for t in targets]

    def forward(self, outputs: Dict, targets: List[Dict]) -> Dict[str, torch.Tensor]:
        """
        Args:
            outputs: ``pred_logits``, ``pred_boxes``, ``init_reference``, optional
                ``aux_outputs`` (list of dicts) and ``enc_outputs`` (with ``anchors``).
            targets: per image ``labels`` (G,) int64 and ``boxes`` (G, 4) normalised cxcywh.

        Returns:
            unweighted losses, keys ``loss_{ce,bbox,giou}`` with suffixes ``_i`` and ``_enc``.
        """
        num_boxes = _num_boxes(targets, outputs["pred_logits"].device)
        indices = self.assign(outputs, targets)
        losses = self._losses(outputs, targets, indices["final"], num_boxes)
        for i, aux in enumerate(outputs.get("aux_outputs", [])):
            losses.update(self._losses(aux, targets, indices[f"aux_{i}"], num_boxes, f"_{i}"))
        if "enc_outputs" in outputs:
            bin_targets = self._binary_targets(targets)
            losses.update(
                self._losses(outputs["enc_outputs"], bin_targets, indices["enc"], num_boxes, "_enc")
            )
        self.last_indices = indices
        return losses


def build_criterion(cfg) -> SetCriterion:
    """The loss of DETA (assigners on) or the Improved Deformable DETR baseline (Hungarian)."""
    d = cfg.MODEL.DETA
    s1, s2 = d.STAGE1, d.STAGE2
    base = {"loss_ce": d.CLASS_WEIGHT, "loss_bbox": d.L1_WEIGHT, "loss_giou": d.GIOU_WEIGHT}
    weight_dict = dict(base)
    if d.DEEP_SUPERVISION:
        for i in range(d.DEC_LAYERS - 1):
            weight_dict.update({f"{k}_{i}": v for k, v in base.items()})
    # The encoder loss is kept without deep supervision: the official --no_aux_loss silently
    # dropped it, leaving the first stage untrained; we fix that deliberately.
    weight_dict.update({f"{k}_enc": v for k, v in base.items()})
    stage1 = stage2 = None
    if d.ASSIGN_FIRST_STAGE:
        stage1 = Stage1Assigner(
            iou_thresholds=s1.IOU_THRESHOLDS,
            iou_labels=s1.IOU_LABELS,
            allow_low_quality_matches=s1.ALLOW_LOW_QUALITY_MATCHES,
            batch_size_per_image=s1.BATCH_SIZE_PER_IMAGE,
            positive_fraction=s1.POSITIVE_FRACTION,
            max_k=s1.MAX_K,
        )
    if d.ASSIGN_SECOND_STAGE:
        stage2 = Stage2Assigner(
            num_classes=d.NUM_CLASSES,
            num_queries=d.NUM_QUERIES,
            iou_thresholds=s2.IOU_THRESHOLDS,
            iou_labels=s2.IOU_LABELS,
            allow_low_quality_matches=s2.ALLOW_LOW_QUALITY_MATCHES,
            positive_fraction=s2.POSITIVE_FRACTION,
            max_k=s2.MAX_K,
        )
    matcher = HungarianMatcher(
        cost_class=d.COST_CLASS,
        cost_bbox=d.COST_BBOX,
        cost_giou=d.COST_GIOU,
        alpha=d.FOCAL_LOSS_ALPHA,
        gamma=d.FOCAL_LOSS_GAMMA,
    )
    return SetCriterion(
        matcher,
        weight_dict,
        focal_alpha=d.FOCAL_LOSS_ALPHA,
        focal_gamma=d.FOCAL_LOSS_GAMMA,
        stage1_assigner=stage1,
        stage2_assigner=stage2,
    )
