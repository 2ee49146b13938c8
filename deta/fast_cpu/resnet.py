"""CPU inference of Detectron2's ResNet with FrozenBN folded into the convolutions.

Detectron2's ResNet runs every conv, its FrozenBN, its ReLU and the residual add as separate
passes over the activations. For CPU inference (autograd off) this module runs the same network
with each FrozenBN folded into its conv's weight and bias, and the ReLU and the residual
add+ReLU fused into the oneDNN convolution (``mkldnn._convolution_pointwise``): one pass per conv.
The folding is recomputed on every call from the module's current parameters and buffers (a
multiply over the weights, ~1% of the backbone's time), so there is no cache to invalidate when
weights are loaded or changed.

Only the plain Detectron2 structure is handled: ``BasicStem`` + ``BasicBlock`` /
``BottleneckBlock`` stages whose convs have no norm, a ``FrozenBatchNorm2d``, or a BatchNorm in
eval mode (what ``NORM: "BN"`` trains, as the synthetic CPU config does).
:func:`fused_resnet_supported` says whether a backbone qualifies (it is checked on every call, so
``model.train()`` turns the fusion off); anything else (GN, SyncBatchNorm, deformable blocks, a
classification head, Swin) uses its own forward. The convolutions run in bfloat16 only where
oneDNN supports it on this CPU (:mod:`.capabilities`); elsewhere in float32.
"""

from typing import Dict, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from detectron2.layers import FrozenBatchNorm2d
from detectron2.modeling.backbone.resnet import BasicBlock, BasicStem, BottleneckBlock, ResNet

from .capabilities import capabilities

__all__ = ["fused_resnet_forward", "fused_resnet_supported"]


def _frozen_stats(norm: nn.Module) -> bool:
    """Whether ``norm`` is an affine map of fixed statistics: FrozenBN, or BN in eval mode."""
    if isinstance(norm, FrozenBatchNorm2d):
        return True
    # BatchNorm2d (and Detectron2's NaiveSyncBatchNorm, a subclass) normalise with their running
    # statistics in eval mode.
    return (
        isinstance(norm, nn.BatchNorm2d)
        and not norm.training
        and norm.running_mean is not None
        and norm.running_var is not None
    )


def _foldable(conv: nn.Module) -> bool:
    norm = getattr(conv, "norm", None)
    return (
        isinstance(conv, nn.Conv2d)
        and getattr(conv, "activation", None) is None
        and conv.padding_mode == "zeros"
        and (norm is None or _frozen_stats(norm))
    )


def fused_resnet_supported(backbone: nn.Module) -> bool:
    """Whether :func:`fused_resnet_forward` can run ``backbone`` (cheap: checked every call)."""
    if not capabilities().onednn_conv:
        return False
    if type(backbone) is not ResNet or backbone.num_classes is not None:
        return False
    if type(backbone.stem) is not BasicStem or not _foldable(backbone.stem.conv1):
        return False
    for stage in backbone.stages:
        for block in stage:
            if type(block) is BottleneckBlock:
                convs = [block.conv1, block.conv2, block.conv3]
            elif type(block) is BasicBlock:
                convs = [block.conv1, block.conv2]
            else:
                return False
            if block.shortcut is not None:
                convs.append(block.shortcut)
            if not all(_foldable(c) for c in convs):
                return False
    return True


def _folded(conv: nn.Conv2d, dtype: torch.dtype) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """The conv's weight and bias with its frozen BN folded in, in ``dtype``.

    Frozen BN is ``y * s + (beta - mean * s)`` with ``s = gamma / sqrt(var + eps)``, so
    ``BN(conv(x)) = conv_{w * s}(x) + (b * s + beta - mean * s)``.
    """
    weight, bias, bn = conv.weight, conv.bias, conv.norm
    if bn is None:
        return weight.to(dtype), None if bias is None else bias.to(dtype)
    scale = (bn.running_var + bn.eps).rsqrt()
    if bn.weight is not None:  # BatchNorm2d(affine=False) has neither weight nor bias
        scale = scale * bn.weight
    shift = -bn.running_mean * scale
    if bn.bias is not None:
        shift = shift + bn.bias
    if bias is not None:
        shift = shift + bias * scale
    return (weight * scale.reshape(-1, 1, 1, 1)).to(dtype), shift.to(dtype)


def _conv(conv: nn.Conv2d, x: torch.Tensor, relu: bool, residual: Optional[torch.Tensor] = None):
    """``relu?(BN(conv(x)) [+ residual])`` as one oneDNN convolution."""
    weight, bias = _folded(conv, x.dtype)
    geometry = (conv.padding, conv.stride, conv.dilation, conv.groups)
    op = torch.ops.mkldnn._convolution_pointwise
    if residual is None:
        return op.default(x, weight, bias, *geometry, "relu" if relu else "none", [], "")
    unary = "relu" if relu else None
    # unary(conv(x) + residual); oneDNN's in-place "sum" form would refuse the fused ReLU.
    return op.binary(x, residual, weight, bias, *geometry, "add", None, unary, [], "")


def _block(block: nn.Module, x: torch.Tensor) -> torch.Tensor:
    shortcut = x if block.shortcut is None else _conv(block.shortcut, x, relu=False)
    out = _conv(block.conv1, x, relu=True)
    if type(block) is BottleneckBlock:
        out = _conv(block.conv2, out, relu=True)
        return _conv(block.conv3, out, relu=True, residual=shortcut)
    return _conv(block.conv2, out, relu=True, residual=shortcut)


def fused_resnet_forward(
    backbone: ResNet, x: torch.Tensor, dtype: torch.dtype = torch.float32
) -> Dict[str, torch.Tensor]:
    """``backbone(x)`` for inference, with folded FrozenBN and fused ReLU / residual adds.

    Args:
        backbone (ResNet): a backbone for which :func:`fused_resnet_supported` is True.
        x (Tensor): (N, 3, H, W) float32 input, autograd off.
        dtype: the convolutions' dtype, float32 or (where oneDNN supports it) bfloat16, as
            :func:`~deta.fast_cpu.dispatch.compute_dtype` chooses.

    Returns:
        dict: the requested ``backbone.output_shape()`` features, as ``backbone(x)`` returns.
    """
    if dtype == torch.bfloat16 and not capabilities().bf16:
        raise RuntimeError(f"bfloat16 convolutions: {capabilities().reasons['bf16']}")
    x = x.to(dtype)  # what autocast does to each conv input, done once
    # oneDNN's native layout; for NCHW bf16 the fused add+ReLU falls back to an ATen kernel that
    # has no bf16 add_relu.
    x = x.contiguous(memory_format=torch.channels_last)
    outputs = {}
    out_features = backbone._out_features
    x = _conv(backbone.stem.conv1, x, relu=True)
    x = F.max_pool2d(x, kernel_size=3, stride=2, padding=1)
    if "stem" in out_features:
        outputs["stem"] = x
    for name, stage in zip(backbone.stage_names, backbone.stages):
        for block in stage:
            x = _block(block, x)
        if name in out_features:
            outputs[name] = x
    return outputs
