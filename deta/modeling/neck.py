"""The neck: multi-level inputs of the transformer built from the backbone features. Input
projections (1×1 conv + GN, plus extra stride-2 3×3 levels), per-level padding masks and their
valid sizes, and sine position encodings.
"""

from typing import Dict, List, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from detectron2.layers import ShapeSpec

__all__ = [
    "backbone_channels",
    "build_input_proj",
    "feature_masks",
    "project_features",
    "valid_ratios_of",
    "valid_sizes_of",
]


def build_input_proj(
    in_channels: List[int], hidden_dim: int, num_levels: int, gn_groups: int = 32
) -> nn.ModuleList:
    """One ``Sequential(conv, GroupNorm)`` per level, keys ``input_proj.{l}.{0,1}`` (official).

    Levels beyond the backbone's take the raw last backbone map (first extra level) or the previous
    extra level's output, through a 3×3 stride-2 conv.
    """
    if num_levels < len(in_channels):
        raise ValueError(
            f"MODEL.DETA.NUM_FEATURE_LEVELS={num_levels} is smaller than the number of "
            f"MODEL.DETA.IN_FEATURES ({len(in_channels)})"
        )
    if hidden_dim % gn_groups != 0:
        raise ValueError(
            f"MODEL.DETA.HIDDEN_DIM={hidden_dim} must be divisible by {gn_groups} (GroupNorm)"
        )
    layers = []
    for c in in_channels:
        layers.append(
            nn.Sequential(nn.Conv2d(c, hidden_dim, 1), nn.GroupNorm(gn_groups, hidden_dim))
        )
    c = in_channels[-1]
    for _ in range(num_levels - len(in_channels)):
        layers.append(
            nn.Sequential(
                nn.Conv2d(c, hidden_dim, 3, stride=2, padding=1),
                nn.GroupNorm(gn_groups, hidden_dim),
            )
        )
        c = hidden_dim
    proj = nn.ModuleList(layers)
    for seq in proj:
        nn.init.xavier_uniform_(seq[0].weight, gain=1)
        nn.init.constant_(seq[0].bias, 0)
    return proj


def feature_masks(mask: torch.Tensor, size: Tuple[int, int]) -> torch.Tensor:
    """Full-resolution padding mask (B, H, W) → (B, h, w) by legacy 'nearest' interpolation."""
    return F.interpolate(mask[None].float(), size=size).to(torch.bool)[0]


def valid_sizes_of(mask: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """(B, H, W) padding mask → valid (rows, columns) per image, read from column 0 / row 0.

    Padding is bottom-right, so column 0 and row 0 hold every valid row and column.
    """
    return torch.sum(~mask[:, :, 0], 1), torch.sum(~mask[:, 0, :], 1)


def valid_ratios_of(mask: torch.Tensor) -> torch.Tensor:
    """(B, H, W) padding mask → (B, 2) valid fraction (w, h)."""
    _, H, W = mask.shape
    valid_h, valid_w = valid_sizes_of(mask)
    return torch.stack([valid_w.float() / W, valid_h.float() / H], -1)


def project_features(
    features: Dict[str, torch.Tensor],
    in_features: List[str],
    input_proj: nn.ModuleList,
    mask: torch.Tensor,
    position_embedding: nn.Module,
):
    """Project backbone features to ``num_levels`` maps with masks and position encodings.

    Args:
        features: backbone outputs by name.
        mask (Tensor): (B, H, W) bool padding mask of the input batch, True on padding.

    Returns:
        (srcs, masks, pos): lists with one entry per level: (B, C, h, w), (B, h, w), (B, C, h, w).
    """
    srcs, masks, pos = [], [], []
    for lvl, proj in enumerate(input_proj):
        if lvl < len(in_features):
            src = proj(features[in_features[lvl]])
        elif lvl == len(in_features):
            src = proj(features[in_features[-1]])  # the raw backbone map, not its projection
        else:
            src = proj(srcs[-1])
        # Every level's mask comes from the full-resolution mask, not the previous level's.
        m = feature_masks(mask, src.shape[-2:])
        srcs.append(src)
        masks.append(m)
        pos.append(position_embedding(m).to(src.dtype))
    return srcs, masks, pos


def backbone_channels(shapes: Dict[str, ShapeSpec], in_features: List[str]) -> List[int]:
    """Channels of the requested backbone outputs, with a clear error for unknown names."""
    missing = [f for f in in_features if f not in shapes]
    if missing:
        raise ValueError(
            f"MODEL.DETA.IN_FEATURES={in_features}: {missing} not produced by the backbone, "
            f"which outputs {sorted(shapes)}"
        )
    return [shapes[f].channels for f in in_features]
