"""Training safety: atomic, finite checkpoints that load under torch>=2.6, and a loss check.

* :class:`DetaCheckpointer` writes each checkpoint to a temporary file and renames it, and only
  then points ``last_checkpoint`` at it, so an interrupted save never leaves a truncated file
  that ``--resume`` would pick up. It refuses to save non-finite weights.
* torch>=2.6 loads with ``weights_only=True`` by default, and fvcore's ``Checkpointer`` (used by
  Detectron2 v0.6 and main alike) calls ``torch.load`` without the argument. The checkpoints of
  this project (model, optimizer, scheduler, iteration) are plain containers of tensors and
  numbers and load that way; the only other class allowed is ``argparse.Namespace``, which the
  official DETA releases pickle under ``args``. Anything else is refused with a message.
* :func:`add_nonfinite_loss_check` stops training at the first NaN/Inf loss term, naming the
  iteration and the terms, on every rank and before the optimizer step (so no NaN update is
  ever applied or saved). Detectron2's own check only runs on rank 0 and prints the loss dict.
"""

import argparse
import contextlib
import logging
import math
import os
import pickle
import tempfile
from typing import Any, Dict

import torch
from torch import nn

from detectron2.checkpoint import DetectionCheckpointer
from detectron2.utils.events import get_event_storage

from ..checkpoint import save_atomic

__all__ = ["DetaCheckpointer", "add_nonfinite_loss_check", "check_finite_state"]

logger = logging.getLogger(__name__)

# Non-container classes allowed in loaded checkpoints (the official releases pickle ``args``).
_SAFE_GLOBALS = [argparse.Namespace]


def check_finite_state(state: Dict[str, Any]) -> None:
    """Raise ``FloatingPointError`` naming the first floating tensor with a NaN or Inf value."""
    for key, value in state.items():
        if isinstance(value, torch.Tensor) and value.is_floating_point():
            if not bool(torch.isfinite(value).all()):
                raise FloatingPointError(f"non-finite values in {key}; refusing to save them")


def _write_text_atomic(path: str, text: str) -> None:
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".tmp_", dir=folder)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


class DetaCheckpointer(DetectionCheckpointer):
    """``DetectionCheckpointer`` with atomic saves, a finiteness check and safe loading."""

    def save(self, name: str, **kwargs: Any) -> None:
        """Save ``{save_dir}/{name}.pth`` atomically, then tag it in ``last_checkpoint``.

        Raises:
            FloatingPointError: if a model weight is NaN or Inf (nothing is written).
        """
        if not self.save_dir or not self.save_to_disk:
            return
        data = {"model": self.model.state_dict()}
        check_finite_state(data["model"])
        for key, obj in self.checkpointables.items():
            data[key] = obj.state_dict()
        data.update(kwargs)
        basename = f"{name}.pth"
        save_file = os.path.join(self.save_dir, basename)
        self.logger.info(f"Saving checkpoint to {save_file}")
        save_atomic(data, save_file)
        self.tag_last_checkpoint(basename)

    def tag_last_checkpoint(self, last_filename_basename: str) -> None:
        """Point ``last_checkpoint`` at a file already completely written (atomic rename)."""
        _write_text_atomic(os.path.join(self.save_dir, "last_checkpoint"), last_filename_basename)

    def _load_file(self, filename: str) -> Dict[str, Any]:
        if filename.endswith((".pkl", ".pyth")):
            return super()._load_file(filename)  # Detectron2 / pycls model-zoo formats
        # torch < 2.5 has no safe_globals context; its weights_only then rejects only Namespace.
        safe = getattr(torch.serialization, "safe_globals", None)
        try:
            with safe(_SAFE_GLOBALS) if safe else contextlib.nullcontext():
                loaded = torch.load(filename, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as e:
            raise pickle.UnpicklingError(
                f"{filename} holds Python objects beyond tensors, numbers and containers, so it "
                "is not loaded with torch.load(weights_only=True). Checkpoints written by this "
                "project never do. If you trust the file, re-save its weights with "
                "torch.save({'model': torch.load(path, weights_only=False)['model']}, new_path)."
                f" Original error: {e}"
            ) from e
        if not isinstance(loaded, dict) or "model" not in loaded:
            loaded = {"model": loaded}
        return loaded


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
