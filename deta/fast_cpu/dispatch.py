"""The one decision of whether (and in which dtype) a CPU fast path runs, made at call time."""

import contextlib
import logging
import os
from typing import Iterator, Optional

import torch
from torch import nn

from .capabilities import capabilities

__all__ = ["ENV_SWITCH", "compute_dtype", "disabled", "enabled"]

logger = logging.getLogger(__name__)

ENV_SWITCH = "DETA_FAST_CPU_INFERENCE"
_disabled_depth = 0
_warned = set()


def enabled() -> bool:
    """False inside :func:`disabled` or with ``$DETA_FAST_CPU_INFERENCE=0`` (read every call)."""
    return _disabled_depth == 0 and os.environ.get(ENV_SWITCH, "1") != "0"


@contextlib.contextmanager
def disabled() -> Iterator[None]:
    """Run the plain PyTorch modules inside the block (A/B timing, parity checks)."""
    global _disabled_depth
    _disabled_depth += 1
    try:
        yield
    finally:
        _disabled_depth -= 1


def _warn_once(message: str) -> None:
    if message not in _warned:
        _warned.add(message)
        logger.warning(message)


def compute_dtype(
    x: torch.Tensor, module: Optional[nn.Module] = None, op: str = "linear"
) -> Optional[torch.dtype]:
    """The dtype a oneDNN fast path computes in for input ``x``, or None for the plain path.

    The fast paths are for CPU inference: autograd off (the oneDNN ops have no derivative),
    ``module`` (if given) in eval mode (they skip dropout), float32 input or
    ``torch.autocast("cpu", dtype=torch.bfloat16)``. Under bf16 autocast on a CPU where oneDNN
    has no bf16 (e.g. AVX2 only), they compute in float32: oneDNN's float32 kernels are faster
    there than ATen's emulated bf16 ones, and a direct bf16 oneDNN call would raise.

    Args:
        op: "linear" or "conv", the oneDNN primitive the caller will use.
    """
    if not enabled() or x.device.type != "cpu" or torch.is_grad_enabled():
        return None
    if module is not None and module.training:
        return None
    caps = capabilities()
    if not (caps.onednn_conv if op == "conv" else caps.onednn_linear):
        return None
    if torch.is_autocast_enabled("cpu"):
        if torch.get_autocast_dtype("cpu") != torch.bfloat16:
            return None  # float16: the plain modules under autocast
        if caps.bf16:
            return torch.bfloat16
        _warn_once(
            f"bfloat16 autocast: {caps.reasons.get('bf16', 'oneDNN has no bf16 here')}; the CPU "
            "fast paths compute in float32 and the other ops in emulated bf16, which is slower "
            "than float32 on this CPU: run without autocast for speed"
        )
        return torch.float32
    return torch.float32 if x.dtype == torch.float32 else None
