"""Sine position encodings: per-pixel (encoder inputs) and per-box (two-stage decoder queries).

Shape shorthand: ``B`` batch, ``H, W`` level size, ``Q`` queries, ``F`` frequencies per coordinate.
"""

import math

import torch
from torch import nn

__all__ = ["PositionEmbeddingSine", "box_sine_embedding"]


def _frequencies(num_feats: int, temperature: float, device: torch.device) -> torch.Tensor:
    # Channel pairs (2j, 2j+1) share one frequency temperature^(2j / num_feats).
    dim_t = torch.arange(num_feats, dtype=torch.float32, device=device)
    return temperature ** (2 * (dim_t // 2) / num_feats)


def _interleave_sin_cos(x: torch.Tensor) -> torch.Tensor:
    """(..., F) angles → (..., F): sin on even channels, cos on odd channels."""
    return torch.stack((x[..., 0::2].sin(), x[..., 1::2].cos()), dim=-1).flatten(-2)


class PositionEmbeddingSine(nn.Module):
    """Normalised 2-d sine encoding of a padding mask; y channels first, then x."""

    def __init__(
        self,
        num_pos_feats: int = 128,
        temperature: float = 10000.0,
        normalize: bool = True,
        scale: float = 2 * math.pi,
        eps: float = 1e-6,
        offset: float = -0.5,
    ):
        super().__init__()
        self.num_pos_feats = num_pos_feats
        self.temperature = temperature
        self.normalize = normalize
        self.scale = scale
        self.eps = eps
        self.offset = offset

    def forward(self, mask: torch.Tensor) -> torch.Tensor:
        """
        Args:
            mask (Tensor): (B, H, W) bool, True on padding.

        Returns:
            Tensor: (B, 2 * num_pos_feats, H, W) float32.
        """
        not_mask = ~mask
        y_embed = not_mask.cumsum(1, dtype=torch.float32)
        x_embed = not_mask.cumsum(2, dtype=torch.float32)
        if self.normalize:
            # Normalised by the valid extent of each column/row, so padding does not shift the
            # encoding of real pixels.
            y_embed = (y_embed + self.offset) / (y_embed[:, -1:, :] + self.eps) * self.scale
            x_embed = (x_embed + self.offset) / (x_embed[:, :, -1:] + self.eps) * self.scale
        dim_t = _frequencies(self.num_pos_feats, self.temperature, mask.device)
        pos_x = _interleave_sin_cos(x_embed[:, :, :, None] / dim_t)
        pos_y = _interleave_sin_cos(y_embed[:, :, :, None] / dim_t)
        return torch.cat((pos_y, pos_x), dim=3).permute(0, 3, 1, 2)


def box_sine_embedding(
    coords_unact: torch.Tensor, num_feats: int = 128, temperature: float = 10000.0
) -> torch.Tensor:
    """Sine embedding of boxes given in logit space.

    Args:
        coords_unact (Tensor): (B, Q, 4) un-activated (cx, cy, w, h).
        num_feats (int): frequencies per coordinate (``HIDDEN_DIM / 2``).

    Returns:
        Tensor: (B, Q, 4 * num_feats), coordinates in (cx, cy, w, h) order, no offset.
    """
    dim_t = _frequencies(num_feats, temperature, coords_unact.device)
    angles = coords_unact.sigmoid() * (2 * math.pi)
    return _interleave_sin_cos(angles[:, :, :, None] / dim_t).flatten(2)
