"""Training safety: :func:`add_nonfinite_loss_check` stops training at the first NaN/Inf loss
term, naming the iteration and the terms, on every rank and before the optimizer step (so no NaN
update is ever applied or saved). Detectron2's own check only runs on rank 0 and prints the loss
dict. The checkpointer that refuses non-finite weights is ``deta.checkpoint.DetaCheckpointer``.
"""

import math

import torch
from torch import nn

from detectron2.utils.events import get_event_storage

__all__ = ["add_nonfinite_loss_check"]


def add_nonfinite_loss_check(model: nn.Module) -> None:
    """Raise ``FloatingPointError`` from ``model``'s forward when a training loss is not finite.

    A forward hook (so the state-dict keys are untouched) inspects the loss dict that the model
    returns in training mode. The error names the iteration (from the event storage, when a
    trainer is running) and every non-finite term. Costs one device sync per iteration.
    """

    def _check(module: nn.Module, inputs, output) -> None:
        if not module.training or not isinstance(output, dict) or not output:
            return
        values = torch.stack([v.detach().float().reshape(()) for v in output.values()])
        if bool(torch.isfinite(values).all()):
            return
        bad = {k: float(v) for k, v in zip(output, values.tolist()) if not math.isfinite(v)}
        try:
            where = f"iteration {get_event_storage().iter}"
        except AssertionError:  # no trainer is running
            where = "a forward pass outside a trainer"
        raise FloatingPointError(
            f"Loss became non-finite at {where}: {bad}. Training stops before the optimizer step, "
            "so the weights of the last checkpoint are finite. Lower SOLVER.BASE_LR, check "
            "SOLVER.CLIP_GRADIENTS or the input data."
        )

    model.register_forward_hook(_check)
