"""``DetaCheckpointer``: Detectron2's checkpointer with atomic, finite saves and safe loading.

* Each checkpoint is written to a temporary file and renamed, and only then does
  ``last_checkpoint`` point at it, so an interrupted save never leaves a truncated file that
  ``--resume`` would pick up. Non-finite weights are refused.
* torch>=2.6 loads with ``weights_only=True`` by default, and fvcore's ``Checkpointer`` (used by
  Detectron2 v0.6 and main alike) calls ``torch.load`` without the argument; loading goes
  through :func:`~deta.checkpoint.io.load_weights_only` instead.
"""

import os
from typing import Any, Dict

import torch

from detectron2.checkpoint import DetectionCheckpointer

from .io import load_weights_only, save_atomic, write_text_atomic

__all__ = ["DetaCheckpointer", "check_finite_state"]


def check_finite_state(state: Dict[str, Any]) -> None:
    """Raise ``FloatingPointError`` naming the first floating tensor with a NaN or Inf value."""
    for key, value in state.items():
        if isinstance(value, torch.Tensor) and value.is_floating_point():
            if not bool(torch.isfinite(value).all()):
                raise FloatingPointError(f"non-finite values in {key}; refusing to save them")


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
        write_text_atomic(os.path.join(self.save_dir, "last_checkpoint"), last_filename_basename)

    def _load_file(self, filename: str) -> Dict[str, Any]:
        if filename.endswith((".pkl", ".pyth")):
            return super()._load_file(filename)  # Detectron2 / pycls model-zoo formats
        loaded = load_weights_only(filename)
        if not isinstance(loaded, dict) or "model" not in loaded:
            loaded = {"model": loaded}
        return loaded
