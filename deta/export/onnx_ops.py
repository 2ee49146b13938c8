"""ONNX translations of DETA's two custom ops, written in standard ONNX ops (opset 18).

- ``deta::ms_deform_attn_forward``: one bilinear ``GridSample`` per level over that level's slice
  of the values, weighted and summed as the reference :func:`ms_deform_attn_pytorch` does. Level
  sizes are read from the ``spatial_shapes`` input at run time, so any image size works.
- ``deta::group_nms``: one ``NonMaxSuppression`` with one class per group (a box scores -inf in
  every group but its own), then the survivors sorted by score as ``group_nms`` returns them.

Imported by the exporter only: it needs ``onnxscript`` (the ``[export]`` extra).
"""

import torch
from onnxscript import INT64
from onnxscript import opset18 as op

__all__ = ["custom_translation_table"]

_INT64_MAX = 0x7FFFFFFFFFFFFFFF
_FLOAT_LOWEST = -3.4028234663852886e38


def _ints(*values):
    return op.Constant(value_ints=list(values))


def ms_deform_attn_forward(
    value, spatial_shapes, level_start_index, sampling_locations, attention_weights, im2col_step
):
    # value (N, S, M, D); locations (N, Lq, M, L, P, 2); weights (N, Lq, M, L, P).
    _, _, m, d = value.shape
    num_levels, p = sampling_locations.shape[3], sampling_locations.shape[4]
    if not all(isinstance(x, int) for x in (m, d, num_levels, p)):
        raise ValueError("heads, channels, levels and points must be static to export the op")
    grids = op.Sub(op.Mul(sampling_locations, op.Constant(value_float=2.0)), 1.0)
    lq = op.Slice(op.Shape(sampling_locations), _ints(1), _ints(2))
    sampled = []
    for lvl in range(num_levels):
        hw = op.Gather(spatial_shapes, op.Constant(value_int=lvl), axis=0)  # (2,)
        start = op.Reshape(op.Gather(level_start_index, op.Constant(value_int=lvl)), _ints(1))
        end = op.Add(start, op.ReduceProd(hw, keepdims=1))
        v = op.Slice(value, start, end, _ints(1))  # (N, H*W, M, D)
        # -> (N, M, D, H*W) -> (N*M, D, H, W)
        v = op.Reshape(op.Transpose(v, perm=[0, 2, 3, 1]), op.Concat(_ints(-1, d), hw, axis=0))
        # (N, Lq, M, P, 2) -> (N, M, Lq, P, 2) -> (N*M, Lq, P, 2)
        g = op.Gather(grids, op.Constant(value_int=lvl), axis=3)
        g = op.Reshape(
            op.Transpose(g, perm=[0, 2, 1, 3, 4]), op.Concat(_ints(-1), lq, _ints(p, 2), axis=0)
        )
        s = op.GridSample(v, g, mode="bilinear", padding_mode="zeros", align_corners=0)
        sampled.append(op.Unsqueeze(s, [3]))  # (N*M, D, Lq, 1, P)
    stacked = op.Concat(*sampled, axis=3)  # (N*M, D, Lq, L, P)
    # weights (N, Lq, M, L, P) -> (N, M, Lq, L, P) -> (N*M, 1, Lq, L, P)
    w = op.Transpose(attention_weights, perm=[0, 2, 1, 3, 4])
    w = op.Reshape(w, op.Concat(_ints(-1, 1), lq, _ints(num_levels, p), axis=0))
    out = op.ReduceSum(op.Mul(stacked, w), _ints(3, 4), keepdims=0)  # (N*M, D, Lq)
    out = op.Reshape(out, op.Concat(_ints(-1, m * d), lq, axis=0))  # (N, M*D, Lq)
    return op.Transpose(out, perm=[0, 2, 1])


def group_nms(boxes, scores, groups, num_groups, iou_threshold):
    ids = op.Unsqueeze(op.Range(0, num_groups, 1), [1])  # (G, 1)
    member = op.Equal(op.Unsqueeze(groups, [0]), op.Cast(ids, to=INT64.dtype))  # (G, K)
    lowest = op.CastLike(op.Constant(value_float=float("-inf")), scores)
    per_group = op.Where(member, op.Unsqueeze(scores, [0]), lowest)  # (G, K)
    selected = op.NonMaxSuppression(
        op.Unsqueeze(boxes, [0]),
        op.Unsqueeze(per_group, [0]),
        op.Constant(value_ints=[_INT64_MAX]),
        op.Constant(value_floats=[iou_threshold]),
        op.Constant(value_floats=[_FLOAT_LOWEST]),  # drops the -inf entries, keeps the rest
    )  # (kept, 3): batch, group, box
    kept = op.Reshape(op.Slice(selected, _ints(2), _ints(3), _ints(1)), _ints(-1))
    # Grouped by class out of ONNX NMS; group_nms returns them by descending score.
    kept_scores = op.Gather(scores, kept)
    _, order = op.TopK(kept_scores, op.Shape(kept_scores), largest=1, sorted=1)
    return op.Gather(kept, order)


def custom_translation_table():
    return {
        torch.ops.deta.ms_deform_attn_forward.default: ms_deform_attn_forward,
        torch.ops.deta.group_nms.default: group_nms,
    }
