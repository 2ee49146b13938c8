"""Training-loop plumbing: CPU-capable multi-process launch, loss checks, and (re-exported from
``deta.checkpoint``) the safe checkpointer."""

from ..checkpoint import DetaCheckpointer, check_finite_state
from .hooks import add_nonfinite_loss_check
from .launch import cpu_safe_ddp, create_ddp_model, launch, launched_by_torchrun

__all__ = [
    "DetaCheckpointer",
    "add_nonfinite_loss_check",
    "check_finite_state",
    "cpu_safe_ddp",
    "create_ddp_model",
    "launch",
    "launched_by_torchrun",
]
