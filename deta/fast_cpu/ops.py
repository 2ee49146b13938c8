"""oneDNN linear layers, the chunked FFN, fused self-attention and in-place residuals.

Each function takes the compute dtype from :func:`~deta.fast_cpu.dispatch.compute_dtype`
(the caller decides once per layer) and the module whose weights it uses.
"""

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["linear", "onednn_linear", "chunked_ffn", "self_attention", "residual"]


def onednn_linear(x, weight, bias, dtype: torch.dtype, act: str = "none") -> torch.Tensor:
    """``act(x @ weight.T + bias)`` in ``dtype`` through ``mkldnn._linear_pointwise``.

    Inputs are cast to ``dtype`` as autocast would; the output is in ``dtype``. Compared with
    ATen's CPU ``addmm`` (MKL), oneDNN fuses the bias and ReLU, and on the AMD machine of
    BENCHMARKS.md runs the token-wise GEMMs 1.5-2.5x faster. Float rounding differs (~1e-6
    relative in float32).
    """
    x, weight = x.to(dtype), weight.to(dtype)
    bias = None if bias is None else bias.to(dtype)
    return torch.ops.mkldnn._linear_pointwise(x, weight, bias, act, [], "")


def linear(x: torch.Tensor, layer: nn.Linear, dtype: torch.dtype, relu: bool = False):
    """``layer(x)``, then ReLU if asked, as one oneDNN call."""
    return onednn_linear(x, layer.weight, layer.bias, dtype, "relu" if relu else "none")


def chunked_ffn(x, linear1: nn.Linear, linear2: nn.Linear, dtype: torch.dtype, chunk: int = 2048):
    """``linear2(relu(linear1(x)))`` over ``chunk`` tokens at a time (inference, no dropout).

    Over the 20k encoder tokens the (tokens, 2048) hidden tensor is 165 MB in float32; in chunks
    it stays in cache between the two GEMMs. Both weights are reordered to oneDNN's blocked
    layout once per call instead of once per chunk and GEMM. Together these make the encoder FFN
    ~15-20% faster than one unchunked pass on the 2-core machines of BENCHMARKS.md; each row's
    result is bit-identical.
    """
    flat = x.reshape(-1, x.shape[-1])
    reorder = getattr(torch.ops.mkldnn, "_reorder_linear_weight", None)
    if reorder is None:
        w1, w2 = linear1.weight, linear2.weight
    else:
        w1, w2 = (reorder(lin.weight.to(dtype), chunk) for lin in (linear1, linear2))
    b1, b2 = linear1.bias, linear2.bias
    parts = [
        onednn_linear(onednn_linear(c, w1, b1, dtype, "relu"), w2, b2, dtype)
        for c in flat.split(chunk)
    ]
    return torch.cat(parts).view(*x.shape[:-1], -1)


def self_attention_supported(mha: nn.MultiheadAttention) -> bool:
    return (
        mha._qkv_same_embed_dim
        and mha.in_proj_bias is not None
        and mha.bias_k is None
        and not mha.add_zero_attn
        and not mha.training
    )


def self_attention(mha: nn.MultiheadAttention, qk, v, dtype: torch.dtype) -> torch.Tensor:
    """``mha(qk, qk, v)`` for batch-first (B, Q, C) inputs without masks; returns (B, Q, C).

    The projections go through oneDNN and the attention through ``scaled_dot_product_attention``
    (a fused kernel that never materialises the B x heads x Q x Q probabilities), with
    nn.MultiheadAttention's weights and math. Needs :func:`self_attention_supported`.
    """
    B, Q, C = qk.shape
    h = mha.num_heads
    w, b = mha.in_proj_weight, mha.in_proj_bias
    q, k = onednn_linear(qk, w[: 2 * C], b[: 2 * C], dtype).view(B, Q, 2, h, C // h).unbind(2)
    v = onednn_linear(v, w[2 * C :], b[2 * C :], dtype).view(B, Q, h, C // h)
    out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
    out = out.transpose(1, 2).reshape(B, Q, C)
    return onednn_linear(out, mha.out_proj.weight, mha.out_proj.bias, dtype)


def residual(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``x + y`` where ``y`` is a layer's fresh output that nothing else holds (autograd off).

    The sum is written into ``y`` when the dtypes allow: the same values (addition commutes),
    without allocating and page-faulting a new (tokens, C) tensor per residual. Mixed float32 /
    bfloat16 operands are first cast to the promoted dtype: ATen's CPU add runs such mixed
    inputs ~60x slower than two casts plus a same-dtype add.
    """
    dtype = torch.promote_types(x.dtype, y.dtype)
    if y.dtype == dtype and y.shape == x.shape and y.is_contiguous():
        return y.add_(x)
    return x.to(dtype) + y.to(dtype)
