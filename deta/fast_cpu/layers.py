"""Encoder layer, decoder layer and box-head MLP forwards for CPU inference.

Each mirrors the forward of its module in ``deta.modeling.deformable_transformer`` (post-norm,
no dropout in eval mode), with oneDNN linears, fused ReLUs, the chunked FFN and in-place
residuals. The deformable attention inside dispatches on its own
(``MSDeformAttn.forward``).
"""

import torch
from torch.profiler import record_function

from .ops import chunked_ffn, linear, residual, self_attention, self_attention_supported

__all__ = ["encoder_layer_forward", "decoder_layer_forward", "mlp_forward"]


def encoder_layer_forward(
    layer, dtype, src, pos, reference_points, spatial_shapes, level_start_index, padding_mask
):
    with record_function("deta.encoder.attn"):
        attn = layer.self_attn(
            src + pos, reference_points, src, spatial_shapes, level_start_index, padding_mask
        )
        src = layer.norm1(residual(src, attn))
    with record_function("deta.encoder.ffn"):
        ffn = chunked_ffn(src, layer.linear1, layer.linear2, dtype)
        return layer.norm2(residual(src, ffn))


def decoder_layer_forward(
    layer, dtype, tgt, query_pos, reference_points, memory, spatial_shapes, level_start_index, mask
):
    qk = tgt + query_pos
    if self_attention_supported(layer.self_attn):
        attn = self_attention(layer.self_attn, qk, tgt, dtype)
    else:
        qk_s, v_s = qk.transpose(0, 1), tgt.transpose(0, 1)
        attn = layer.self_attn(qk_s, qk_s, v_s, need_weights=False)[0].transpose(0, 1)
    tgt = layer.norm2(residual(tgt, attn))
    attn = layer.cross_attn(
        tgt + query_pos, reference_points, memory, spatial_shapes, level_start_index, mask
    )
    tgt = layer.norm1(residual(tgt, attn))
    ffn = linear(linear(tgt, layer.linear1, dtype, relu=True), layer.linear2, dtype)
    return layer.norm3(residual(tgt, ffn))


def mlp_forward(mlp, dtype, x: torch.Tensor) -> torch.Tensor:
    last = len(mlp.layers) - 1
    for i, layer in enumerate(mlp.layers):
        x = linear(x, layer, dtype, relu=i < last)
    return x
