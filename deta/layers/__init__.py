"""Layers of DETA: multi-scale deformable attention (module, op and its implementations)."""

from .ms_deform_attn import MSDeformAttn, MultiScaleDeformableAttention
from .ms_deform_attn_func import (
    get_msda_impl,
    get_validate_levels,
    has_cpp_ext,
    has_cuda_ext,
    ms_deform_attn,
    ms_deform_attn_pytorch,
    set_msda_impl,
    set_validate_levels,
)

__all__ = [
    "MSDeformAttn",
    "MultiScaleDeformableAttention",
    "get_msda_impl",
    "get_validate_levels",
    "has_cpp_ext",
    "has_cuda_ext",
    "ms_deform_attn",
    "ms_deform_attn_pytorch",
    "set_msda_impl",
    "set_validate_levels",
]
