"""Training-loop plumbing: CPU-capable multi-process launch, safe checkpoints, loss checks."""

from .hooks import DetaCheckpointer, add_nonfinite_loss_check, check_finite_state
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
