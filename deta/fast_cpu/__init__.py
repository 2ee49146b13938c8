"""CPU inference fast paths, all in one place.

The reference modules (``MSDeformAttn``, the encoder and decoder layers, the box-head MLP, the
meta-architecture's backbone call) each start with one dispatch: they ask
:func:`compute_dtype` whether a fast path applies to this call and, if so, hand over to the
function of the same name here. Everything that decides is read at call time:

* ``$DETA_FAST_CPU_INFERENCE=0`` or ``with fast_cpu.disabled():`` turns every fast path off;
* autograd on, a module in training mode, a non-CPU or non-float32 input: the plain path;
* what the CPU and the oneDNN build support (:mod:`.capabilities`, probed once): a missing
  oneDNN primitive means the plain path for that op, a CPU without oneDNN bf16 means float32
  under bf16 autocast (a direct bf16 oneDNN call would raise there).

The fast paths compute the same function as the plain modules, within float rounding
(~1e-6 relative in float32); tests/modeling/test_fast_cpu_inference.py holds them to that.
"""

from typing import List, Tuple

import torch

from .capabilities import CpuCapabilities, capabilities, override_capabilities
from .deform_attn import deform_attn_forward
from .dispatch import ENV_SWITCH, compute_dtype, disabled, enabled
from .layers import decoder_layer_forward, encoder_layer_forward, mlp_forward
from .resnet import fused_resnet_forward, fused_resnet_supported

__all__ = [
    "CpuCapabilities",
    "backbone_forward",
    "capabilities",
    "compute_dtype",
    "decoder_layer_forward",
    "deform_attn_forward",
    "describe",
    "disabled",
    "enabled",
    "encoder_layer_forward",
    "fused_resnet_forward",
    "fused_resnet_supported",
    "mlp_forward",
    "override_capabilities",
]


def backbone_forward(backbone, images: torch.Tensor, dtype: torch.dtype):
    """The backbone's features for CPU inference: the fused ResNet where it applies.

    oneDNN convolutions run natively on NHWC; with an NCHW input every conv reorders its input
    and output (~20% of the backbone time on CPU). Layout only: the features flatten to the same
    (B, S, C) tokens.
    """
    images = images.contiguous(memory_format=torch.channels_last)
    if fused_resnet_supported(backbone):
        return fused_resnet_forward(backbone, images, dtype)
    return backbone(images)


def describe() -> List[Tuple[str, str]]:
    """(name, state and reason) rows of every fast path, for ``collect_env``."""
    caps = capabilities()
    on = enabled()
    switch = "on" if on else f"off (${ENV_SWITCH}=0)"
    rows = [("CPU fast paths", switch)]

    def state(flag: bool, what: str, reason: str) -> str:
        active = on and flag
        return f"{'active' if active else 'inactive'}: {what} ({reason})"

    rows.append(
        (
            "  oneDNN linears",
            state(
                caps.onednn_linear,
                "projections, FFN, self-attention, heads",
                caps.reasons["onednn_linear"],
            ),
        )
    )
    rows.append(
        (
            "  fused ResNet convs",
            state(caps.onednn_conv, "FrozenBN folded, ReLU/add fused", caps.reasons["onednn_conv"]),
        )
    )
    bf16 = "bf16 oneDNN kernels" if caps.bf16 else "falls back to float32 fast paths"
    rows.append(("  under bf16 autocast", f"{bf16} ({caps.reasons['bf16']})"))
    rows.append(("  AMX", f"{'used' if caps.amx else 'not used'} ({caps.reasons['amx']})"))
    rows.append(("  AVX-512", f"{caps.avx512} ({caps.reasons['avx512']})"))
    rows.append(("ATen CPU capability", caps.aten_capability))
    return rows
