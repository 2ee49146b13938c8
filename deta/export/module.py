"""The exported graph's module: one image in, detections out, post-processing included.

Contract (also in the README's Deployment section):

- input ``image``: float32 (3, H, W) in ``INPUT.FORMAT`` channel order, pixel values 0-255,
  already resized as the test mapper would (shortest edge ``INPUT.MIN_SIZE_TEST``, longest at
  most ``INPUT.MAX_SIZE_TEST``). H and W are dynamic.
- outputs ``boxes`` (N, 4) xyxy in the input's pixels, ``scores`` (N,), ``classes`` (N,) int64
  (contiguous ids): the model's own post-processing (top-k, class-wise NMS, the detection limit).
"""

import copy
from functools import partial

import torch
from torch import nn

from ..modeling.two_stage import TopkSelection
from .graph_ops import nms_postprocess, select_queries_nms_static, topk_postprocess

__all__ = ["ExportableDETA", "min_image_side"]


class ExportableDETA(nn.Module):
    """Wraps a built ``DETA`` (a copy of it, in eval mode) for export.

    The network is the model's own reference path (no CPU fast paths, which are oneDNN calls);
    only the first-stage selection is swapped for its static form, which selects the same tokens.
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        model = copy.deepcopy(model).eval()
        select = model.transformer.select_queries
        if isinstance(select, partial):  # DETA: NMS selection with its configured parameters
            model.transformer.select_queries = partial(select_queries_nms_static, **select.keywords)
            self.num_queries = select.keywords["num_queries"]
        elif isinstance(select, TopkSelection):
            self.num_queries = select.num_queries
        else:
            raise TypeError(f"cannot export query selection {select!r}")
        self.model = model

    def forward(self, image: torch.Tensor):
        m = self.model
        _, H, W = image.shape
        x = ((image - m.pixel_mean) / m.pixel_std)[None]
        mask = torch.zeros((1, H, W), dtype=torch.bool, device=image.device)
        out = m.forward_features(x, mask)
        logits, boxes = out["pred_logits"][0], out["pred_boxes"][0]
        if m.nms_on_test:
            return nms_postprocess(
                logits,
                boxes,
                H,
                W,
                m.pre_nms_topk_test,
                m.nms_thresh_test,
                m.detections_per_image,
            )
        return topk_postprocess(logits, boxes, H, W, m.detections_per_image)


def min_image_side(model: nn.Module, num_queries: int) -> int:
    """The smallest square side whose encoder has at least ``num_queries`` tokens.

    The static selection needs that many; the official model needs it too (its top-k fails).
    """
    side = 32
    while _num_tokens(model, side, side) < num_queries:
        side += 32
    return side


def _num_tokens(model: nn.Module, height: int, width: int) -> int:
    m = model.model if isinstance(model, ExportableDETA) else model
    strides = [m.backbone.output_shape()[f].stride for f in m.in_features]
    # Stride-2 convs with padding round up at every level.
    sizes = [(-(-height // s), -(-width // s)) for s in strides]
    for _ in range(len(m.input_proj) - len(strides)):
        h, w = sizes[-1]
        sizes.append(((h + 1) // 2, (w + 1) // 2))
    return sum(h * w for h, w in sizes)
