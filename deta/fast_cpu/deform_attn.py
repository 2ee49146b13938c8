"""``MSDeformAttn.forward`` for CPU inference, step by step, with oneDNN projections.

The projections of the 20k encoder tokens dominate the attention's cost, so they go through
oneDNN; the sampling itself is the module's own op (:meth:`MSDeformAttn.sample`).
"""

from typing import Optional

import torch

from .ops import linear, onednn_linear

__all__ = ["deform_attn_forward"]


def deform_attn_forward(
    attn,
    dtype: torch.dtype,
    query: torch.Tensor,
    reference_points: torch.Tensor,
    input_flatten: torch.Tensor,
    input_spatial_shapes: torch.Tensor,
    input_level_start_index: torch.Tensor,
    input_padding_mask: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """What ``attn(query, ...)`` computes (an ``MSDeformAttn``), within float rounding."""
    n, lq, _ = query.shape
    m, num_levels, p = attn.n_heads, attn.n_levels, attn.n_points
    shapes = input_spatial_shapes
    value = linear(input_flatten, attn.value_proj, dtype)
    if input_padding_mask is not None and bool(input_padding_mask.any()):  # CPU: no sync
        value.masked_fill_(input_padding_mask[..., None], 0.0)
    value = value.view(n, value.shape[1], m, attn.d_model // m)
    # Under bfloat16 autocast the two sampling GEMMs run in bfloat16 too, but their outputs are
    # float32 from here on: the softmax, and the sum with the reference points, whose bfloat16
    # rounding (8-bit mantissa: ~4 px on a 1200-px level) would move the sampling points. An
    # offset of a few pixels keeps ~0.01 px of precision in bfloat16.
    query = query.to(dtype)
    layer = attn.attention_weights
    weights = onednn_linear(query, layer.weight, layer.bias, dtype).float()
    weights = weights.view(n, lq, m, num_levels * p)
    weights = weights.softmax(-1).view(n, lq, m, num_levels, p)
    w, b = attn.sampling_offsets.weight, attn.sampling_offsets.bias
    if reference_points.shape[-1] == 2:
        # Pixel offsets divided by each level's (W, H): folded into the projection, which saves
        # a pass over the (N, Lq, M, L, P, 2) offsets per layer (rounding-level difference).
        wh = torch.stack([shapes[:, 1], shapes[:, 0]], -1).to(w.dtype)
        scale = (1 / wh)[None, :, None, :].expand(m, num_levels, p, 2).reshape(-1)
        offsets = onednn_linear(query, w * scale[:, None], b * scale, dtype).float()
        # reference (N, Lq, L, 2) + offsets (N, Lq, M, L, P, 2), with the reference first repeated
        # over the points: a broadcast whose innermost contiguous run is L*P*2 values rather than
        # 2 runs ~4x faster in ATen (~12 ms per encoder layer here), with the same sums.
        ref = reference_points[:, :, None, :, None, :].expand(n, lq, 1, num_levels, p, 2)
        ref = ref.reshape(n, lq, 1, num_levels * p * 2)
        locations = (offsets.view(n, lq, m, -1) + ref).view(n, lq, m, num_levels, p, 2)
    else:
        offsets = onednn_linear(query, w, b, dtype).float().view(n, lq, m, num_levels, p, 2)
        locations = attn.sampling_locations(reference_points.float(), offsets, shapes)
    out = attn.sample(value, shapes, input_level_start_index, locations, weights)
    return linear(out, attn.output_proj, dtype)
