"""``MSDeformAttn``: the multi-scale deformable attention module of Deformable DETR
(arXiv:2010.04159) as used by DETA (arXiv:2212.06137).

Shape shorthand: ``N`` batch, ``Lq`` queries, ``S = sum_l H_l * W_l`` value positions, ``M``
heads, ``D = d_model / M`` channels per head, ``L`` levels, ``P`` points per level.

Parameter names and layout follow the official ``models/ops/modules/ms_deform_attn.py``, so
official checkpoints load unchanged.
"""

import math
import warnings
from typing import Optional

import torch
from torch import nn

from .. import fast_cpu
from .ms_deform_attn_func import _check_impl, ms_deform_attn

__all__ = ["MSDeformAttn", "MultiScaleDeformableAttention"]


def _is_power_of_2(n: int) -> bool:
    return n > 0 and (n & (n - 1)) == 0


class MSDeformAttn(nn.Module):
    """Multi-scale deformable attention: every query attends to ``P`` learned sampling points
    around its reference point on each of ``L`` feature levels, per head."""

    def __init__(
        self,
        d_model: int = 256,
        n_levels: int = 4,
        n_heads: int = 8,
        n_points: int = 4,
        im2col_step: int = 64,
        impl: Optional[str] = None,
    ):
        """
        Args:
            d_model (int): hidden size; must be divisible by ``n_heads``.
            n_levels (int): number of feature levels L.
            n_heads (int): number of attention heads M.
            n_points (int): sampling points P per head and level.
            im2col_step (int): forwarded to :func:`ms_deform_attn` (compatibility only).
            impl (str or None): op implementation, see :func:`ms_deform_attn`; None follows
                the process default (:func:`set_msda_impl` / ``$DETA_MSDA_IMPL``).
        """
        super().__init__()
        if d_model % n_heads != 0:
            raise ValueError(
                f"d_model must be divisible by n_heads, got d_model={d_model}, n_heads={n_heads}"
            )
        head_dim = d_model // n_heads
        if not _is_power_of_2(head_dim):
            # The official CUDA kernel is tuned for power-of-2 head sizes; ours work for any.
            warnings.warn(
                f"d_model / n_heads = {head_dim} is not a power of 2; this is supported but "
                "less efficient",
                stacklevel=2,
            )
        self.d_model = d_model
        self.n_levels = n_levels
        self.n_heads = n_heads
        self.n_points = n_points
        self.im2col_step = im2col_step
        self.impl = None if impl is None else _check_impl(impl, "impl")

        self.sampling_offsets = nn.Linear(d_model, n_heads * n_levels * n_points * 2)
        self.attention_weights = nn.Linear(d_model, n_heads * n_levels * n_points)
        self.value_proj = nn.Linear(d_model, d_model)
        self.output_proj = nn.Linear(d_model, d_model)
        self._reset_parameters()

    @torch.no_grad()
    def _reset_parameters(self) -> None:
        """Offsets start on a fixed grid: head m looks along direction
        θ_m = m·2π/M scaled onto the unit square, point p at (p + 1) times that step; attention
        starts uniform. Runs again after the transformer-wide xavier init, overriding it."""
        nn.init.constant_(self.sampling_offsets.weight, 0.0)
        thetas = torch.arange(self.n_heads, dtype=torch.float32) * (2.0 * math.pi / self.n_heads)
        directions = torch.stack([thetas.cos(), thetas.sin()], -1)  # (M, 2) as (x, y)
        directions = directions / directions.abs().max(-1, keepdim=True)[0]
        scale = torch.arange(1, self.n_points + 1, dtype=torch.float32)  # point p -> p + 1
        # (M, 1, 1, 2) * (1, 1, P, 1) -> (M, L, P, 2), flattened [head][level][point][xy].
        grid = (directions[:, None, None, :] * scale[None, None, :, None]).expand(
            self.n_heads, self.n_levels, self.n_points, 2
        )
        self.sampling_offsets.bias.copy_(grid.reshape(-1))
        nn.init.constant_(self.attention_weights.weight, 0.0)
        nn.init.constant_(self.attention_weights.bias, 0.0)
        for proj in (self.value_proj, self.output_proj):
            nn.init.xavier_uniform_(proj.weight)
            nn.init.constant_(proj.bias, 0.0)

    def sampling_locations(
        self,
        reference_points: torch.Tensor,
        offsets: torch.Tensor,
        spatial_shapes: torch.Tensor,
    ) -> torch.Tensor:
        """(N, Lq, M, L, P, 2) locations from references and raw offsets."""
        if reference_points.shape[-1] == 2:
            # Offsets are in pixels of each level: divide x by W_l and y by H_l.
            normalizer = torch.stack([spatial_shapes[..., 1], spatial_shapes[..., 0]], -1)
            return (
                reference_points[:, :, None, :, None, :]
                + offsets / normalizer[None, None, None, :, None, :]
            )
        if reference_points.shape[-1] == 4:
            # Offsets are in units of the half box divided by P, so the init grid's last
            # point lands on the box edge.
            return (
                reference_points[:, :, None, :, None, :2]
                + offsets / self.n_points * reference_points[:, :, None, :, None, 2:] * 0.5
            )
        raise ValueError(
            "reference_points must end in 2 (x, y) or 4 (cx, cy, w, h) coordinates, "
            f"got shape {tuple(reference_points.shape)}"
        )

    def forward(
        self,
        query: torch.Tensor,
        reference_points: torch.Tensor,
        input_flatten: torch.Tensor,
        input_spatial_shapes: torch.Tensor,
        input_level_start_index: torch.Tensor,
        input_padding_mask: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        """
        Args:
            query (Tensor): (N, Lq, d_model).
            reference_points (Tensor): (N, Lq, L, 2) normalised (x, y), or (N, Lq, L, 4)
                normalised (cx, cy, w, h); 0..1 inside each level's padded map.
            input_flatten (Tensor): (N, S, d_model), all levels flattened and concatenated.
            input_spatial_shapes (Tensor): (L, 2) int64, (H_l, W_l).
            input_level_start_index (Tensor): (L,) int64, [0, cumsum(H*W)[:-1]].
            input_padding_mask (Tensor or None): (N, S) bool, True at padded positions, whose
                values are zeroed.

        Returns:
            Tensor: (N, Lq, d_model).
        """
        dtype = fast_cpu.compute_dtype(query, self)
        if dtype is not None:  # CPU inference: the same steps with oneDNN projections
            return fast_cpu.deform_attn_forward(
                self,
                dtype,
                query,
                reference_points,
                input_flatten,
                input_spatial_shapes,
                input_level_start_index,
                input_padding_mask,
            )
        n, lq, _ = query.shape
        _, s, _ = input_flatten.shape
        m, num_levels, p = self.n_heads, self.n_levels, self.n_points

        value = self.value_proj(input_flatten)
        if input_padding_mask is not None:
            value = value.masked_fill(input_padding_mask[..., None], 0.0)
        value = value.view(n, s, m, self.d_model // m)
        offsets = self.sampling_offsets(query).view(n, lq, m, num_levels, p, 2)
        # Softmax jointly over the L*P samples of each head.
        attention = self.attention_weights(query).view(n, lq, m, num_levels * p)
        attention = attention.softmax(-1).view(n, lq, m, num_levels, p)
        locations = self.sampling_locations(reference_points, offsets, input_spatial_shapes)
        starts = input_level_start_index
        out = self.sample(value, input_spatial_shapes, starts, locations, attention)
        return self.output_proj(out)

    def sample(
        self,
        value: torch.Tensor,
        spatial_shapes: torch.Tensor,
        level_start_index: torch.Tensor,
        sampling_locations: torch.Tensor,
        attention_weights: torch.Tensor,
    ) -> torch.Tensor:
        """The op itself, :func:`ms_deform_attn`, with this module's ``impl``; (N, Lq, M * D)."""
        return ms_deform_attn(
            value,
            spatial_shapes,
            level_start_index,
            sampling_locations,
            attention_weights,
            self.im2col_step,
            impl=self.impl,
        )


MultiScaleDeformableAttention = MSDeformAttn
