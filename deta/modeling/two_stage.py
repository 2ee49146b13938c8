"""Two-stage proposal generation and DETA's first-stage query selection.

Shape shorthand: ``B`` batch, ``S`` encoder tokens, ``L`` levels, ``Q`` queries.
"""

from typing import List, Sequence, Tuple

import torch
from torchvision.ops import box_area, box_convert, nms

from .neck import valid_sizes_of

__all__ = [
    "TopkSelection",
    "encoder_output_proposals",
    "group_nms",
    "select_queries_nms",
    "select_queries_topk",
]


def encoder_output_proposals(
    memory: torch.Tensor,
    padding_mask: torch.Tensor,
    spatial_shapes: Sequence[Tuple[int, int]],
    base_size: float = 0.05,
    valid_range: Sequence[float] = (0.01, 0.99),
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One fixed anchor per encoder token: its pixel centre, with w = h = base_size * 2**level.

    Args:
        memory (Tensor): (B, S, C) encoder output.
        padding_mask (Tensor): (B, S) bool, True on padding.
        spatial_shapes: (H, W) per level.

    Returns:
        memory (Tensor): (B, S, C), zeroed at padded or invalid tokens.
        proposals (Tensor): (B, S, 4) anchors in logit space, +inf at padded or invalid tokens.
        level_ids (Tensor): (S,) int64 level of every token.
    """
    B = memory.shape[0]
    proposals, level_ids = [], []
    start = 0
    for lvl, (H, W) in enumerate(spatial_shapes):
        valid_h, valid_w = valid_sizes_of(padding_mask[:, start : start + H * W].view(B, H, W))
        # arange is the official linspace(0, H - 1, H) bit for bit, and export-friendly.
        grid_y, grid_x = torch.meshgrid(
            torch.arange(H, dtype=torch.float32, device=memory.device),
            torch.arange(W, dtype=torch.float32, device=memory.device),
            indexing="ij",
        )
        grid = torch.cat([grid_x.unsqueeze(-1), grid_y.unsqueeze(-1)], -1)
        # Centres are normalised by the *valid* size, so they exceed 1 inside the padding.
        scale = torch.cat([valid_w.unsqueeze(-1), valid_h.unsqueeze(-1)], 1).view(B, 1, 1, 2)
        grid = (grid.unsqueeze(0).expand(B, -1, -1, -1) + 0.5) / scale
        wh = torch.ones_like(grid) * base_size * (2.0**lvl)
        proposals.append(torch.cat((grid, wh), -1).view(B, -1, 4))
        level_ids.append(torch.full((H * W,), lvl, dtype=torch.int64, device=memory.device))
        start += H * W
    proposals = torch.cat(proposals, 1)
    lo, hi = valid_range
    valid = ((proposals > lo) & (proposals < hi)).all(-1, keepdim=True)
    proposals = torch.log(proposals / (1 - proposals))
    proposals = proposals.masked_fill(padding_mask.unsqueeze(-1), float("inf"))
    proposals = proposals.masked_fill(~valid, float("inf"))
    memory = memory.masked_fill(padding_mask.unsqueeze(-1), 0.0).masked_fill(~valid, 0.0)
    return memory, proposals, torch.cat(level_ids)


def select_queries_topk(objectness: torch.Tensor, num_queries: int) -> torch.Tensor:
    """Plain two-stage selection: the top-Q tokens by objectness logit, (B, S) → (B, Q')."""
    return torch.topk(objectness, min(num_queries, objectness.shape[1]), dim=1)[1]


class TopkSelection:
    """:func:`select_queries_topk` with the call signature of :func:`select_queries_nms`
    (picklable, unlike a lambda), for the Improved Deformable DETR baseline."""

    def __init__(self, num_queries: int):
        self.num_queries = num_queries

    def __call__(self, objectness, boxes_unact, level_ids, level_sizes):
        return select_queries_topk(objectness, self.num_queries)


def group_nms(
    boxes: torch.Tensor, scores: torch.Tensor, groups: torch.Tensor, iou_threshold: float
) -> torch.Tensor:
    """NMS within each group, one ``torchvision.ops.nms`` call per group; score-descending keep.

    ``torchvision.ops.batched_nms`` gives the same result on CPU for inputs this large, but for
    smaller ones (and on GPU below 20,000 coordinates) it shifts each group's boxes by a large
    coordinate offset and runs one NMS: float32 rounding of the shifted coordinates can then flip
    decisions at IoU ~0.9. Running each group separately avoids that on every device.
    """
    keep = torch.zeros_like(scores, dtype=torch.bool)
    for group in torch.unique(groups):
        members = torch.where(groups == group)[0]
        keep[members[nms(boxes[members], scores[members], iou_threshold)]] = True
    kept = torch.where(keep)[0]
    return kept[scores[kept].sort(descending=True)[1]]


def _per_level_candidates(
    scores: torch.Tensor, level_ids: torch.Tensor, num_levels: int, pre_nms_topk: int
) -> torch.Tensor:
    """Per level, the top-k token indices of ``score * (level == l)`` over *all* S tokens.

    This reproduces the official selection exactly, quirk included: a level with
    fewer than k tokens is topped up with zero-score tokens of other levels (torch.topk tie
    order), which then enter NMS under their own level and can later be picked as padding.
    k is clamped to S (the official crashes on small inputs).

    Returns:
        Tensor: (B, L * k) token indices.
    """
    k = min(pre_nms_topk, scores.shape[1])
    cands = [torch.topk(scores * (level_ids == lvl), k, dim=1)[1] for lvl in range(num_levels)]
    return torch.cat(cands, 1)


def _cap_per_level(keep: torch.Tensor, keep_levels: torch.Tensor, num_levels: int, q: int):
    """At most ``q // L`` per level in score order, then top up with the best leftovers to ``q``.

    ``keep`` is score-descending; the result keeps that global order.
    """
    per_level = q // num_levels
    onehot = keep_levels[None] == torch.arange(num_levels, device=keep.device)[:, None]
    chosen = (onehot & (onehot.cumsum(1) <= per_level)).any(0)
    missing = q - int(chosen.sum())
    if missing > 0:
        chosen[(~chosen).nonzero().squeeze(1)[:missing]] = True
    return keep[chosen]


def _first_copies(
    tokens: torch.Tensor, num_tokens: int, boxes: torch.Tensor, nms_thresh: float
) -> torch.Tensor:
    """Positions in the flattened candidates that NMS needs to see: one copy of each token.

    A level with fewer than ``pre_nms_topk`` tokens is topped up with tokens of other levels,
    which are then also in their own level's list: on a small image every level's list holds
    every token, so NMS (quadratic) sees each box up to L times. The copies share box, score
    and group, and of identical boxes NMS keeps at most one (their IoU is exactly 1), so NMS on
    the first copy alone keeps the same tokens. Not so for a zero-area box (IoU 0/0, every copy
    kept) or a threshold >= 1: those copies all stay.

    Args:
        tokens (Tensor): (B, K) ``image * S + token`` of every candidate.
        num_tokens: B * S, an upper bound of ``tokens`` known without reading it back (a sync
            on the GPU).
        boxes (Tensor): (B * K, 4) their xyxy boxes.
    """
    flat = tokens.reshape(-1)
    pos = torch.arange(flat.numel(), device=flat.device)
    if nms_thresh >= 1:
        return pos
    first = torch.full((num_tokens,), flat.numel(), dtype=pos.dtype, device=pos.device)
    first = first.scatter_reduce(0, flat, pos, "amin")
    # box_area is (x2 - x1) * (y2 - y1), the area torchvision's NMS divides by.
    return pos[(first[flat] == pos) | ~(box_area(boxes) > 0)]


def select_queries_nms(
    objectness: torch.Tensor,
    boxes_unact: torch.Tensor,
    level_ids: torch.Tensor,
    level_sizes: List[int],
    num_queries: int,
    pre_nms_topk: int = 1000,
    nms_thresh: float = 0.9,
) -> torch.Tensor:
    """DETA's first-stage selection: per-level top-k, per-level NMS, per-level cap.

    Args:
        objectness (Tensor): (B, S) first-stage logit (class index 0 of the encoder head).
        boxes_unact (Tensor): (B, S, 4) refined first-stage boxes in logit space.
        level_ids (Tensor): (S,) level of every token.
        level_sizes: number of tokens per level.

    Returns:
        Tensor: (B, Q') selected token indices, global score-descending order, with
        Q' = min(num_queries, S).
    """
    B, S = objectness.shape
    L = len(level_sizes)
    q = min(num_queries, S)
    boxes = box_convert(boxes_unact.sigmoid().float(), "cxcywh", "xyxy").clamp(0, 1)
    cands = _per_level_candidates(objectness.sigmoid(), level_ids, L, pre_nms_topk)  # B, K
    K = cands.shape[1]
    image_ids = torch.arange(B, device=cands.device)[:, None].expand(B, K)
    # One NMS call for all images: group = image * L + level keeps it per image and level.
    groups = (image_ids * L + level_ids[cands]).reshape(-1)
    cand_boxes = boxes[image_ids, cands].reshape(-1, 4)
    at = _first_copies(image_ids * S + cands, B * S, cand_boxes, nms_thresh)
    cand_scores = objectness[image_ids, cands].reshape(-1)
    keep = at[group_nms(cand_boxes[at], cand_scores[at], groups[at], nms_thresh)]
    keep_image = keep // K
    selected = []
    for b in range(B):
        keep_b = cands[b, keep[keep_image == b] % K]
        if len(keep_b) < q:
            # Too few survivors: the official falls back to the plain top-Q (same result order).
            keep_b = torch.topk(objectness[b], q)[1]
        selected.append(_cap_per_level(keep_b, level_ids[keep_b], L, q))
    return torch.stack(selected)
