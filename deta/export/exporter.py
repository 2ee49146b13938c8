"""Export a built DETA: a ``torch.export`` program (``.pt2``) or an ONNX model (``.onnx``).

Both take any image size: the program is traced once with symbolic height and width from a
sample image, and the ONNX model is converted from that program.
"""

import logging
from typing import Optional

import torch
from torch import nn

from .. import fast_cpu
from .module import ExportableDETA, min_image_side

__all__ = ["FORMATS", "ExportError", "export_onnx", "export_program", "load_program"]

logger = logging.getLogger(__name__)

FORMATS = ("onnx", "torch_export", "torchscript")
ONNX_OPSET = 18
# The coarsest level must be at least 2 wide: at 1 the tracer specialises on broadcasting.
_MAX_SIDE = 8192


class ExportError(RuntimeError):
    """The model or request cannot be exported; the message says why."""


def export_program(
    model: nn.Module, sample_image: torch.Tensor, min_side: Optional[int] = None
) -> torch.export.ExportedProgram:
    """``torch.export`` of :class:`ExportableDETA` with dynamic height and width.

    Args:
        model: a built ``DETA`` (any mode; a copy is exported in eval mode).
        sample_image (Tensor): (3, H, W) float32, 0-255, as the test mapper resizes.
        min_side: the smallest height and width the program accepts; by default the smallest
            whose coarsest feature level is 2 wide and that yields enough encoder tokens.
    """
    if sample_image.dim() != 3 or sample_image.shape[0] != 3:
        raise ExportError(f"the sample image must be (3, H, W), got {tuple(sample_image.shape)}")
    wrapper = ExportableDETA(model)
    stride = _coarsest_stride(wrapper)
    if min_side is None:
        min_side = max(stride + 1, min_image_side(wrapper, wrapper.num_queries))
    if min(sample_image.shape[1:]) < min_side:
        raise ExportError(
            f"the sample image is {tuple(sample_image.shape[1:])}; export needs both sides "
            f">= {min_side} (coarsest feature stride {stride}, {wrapper.num_queries} queries)"
        )
    dims = {
        1: torch.export.Dim("height", min=min_side, max=_MAX_SIDE),
        2: torch.export.Dim("width", min=min_side, max=_MAX_SIDE),
    }
    image = sample_image.float()
    with torch.no_grad(), fast_cpu.disabled():
        try:
            return torch.export.export(wrapper, (image,), dynamic_shapes=(dims,))
        except Exception as e:  # the tracer's messages are long; keep the first line in front
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise ExportError(f"torch.export failed: {first}") from e


def export_onnx(program: torch.export.ExportedProgram, path: str) -> None:
    """Convert an exported program to ONNX (opset 18) at ``path`` and check it."""
    try:
        import onnx

        from .onnx_ops import custom_translation_table
    except ImportError as e:
        raise ExportError(
            f"ONNX export needs the export extra ({e.name} is missing): pip install -e .[export]"
        ) from e
    onnx_program = torch.onnx.export(
        program,
        dynamo=True,
        custom_translation_table=custom_translation_table(),
        opset_version=ONNX_OPSET,
        input_names=["image"],
        output_names=["boxes", "scores", "classes"],
    )
    onnx_program.save(path)
    onnx.checker.check_model(path)


def load_program(path: str) -> torch.export.ExportedProgram:
    """Load a ``.pt2`` written by the exporter (this package registers its custom ops)."""
    return torch.export.load(path)


def _coarsest_stride(wrapper: ExportableDETA) -> int:
    m = wrapper.model
    stride = max(m.backbone.output_shape()[f].stride for f in m.in_features)
    return stride * 2 ** (len(m.input_proj) - len(m.in_features))
