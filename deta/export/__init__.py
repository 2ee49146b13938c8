"""Export of DETA to ``torch.export`` programs and ONNX (see ``tools/deploy/export_model.py``).

Importing this package registers ``deta::group_nms``, which exported programs call; the ONNX
translation lives in :mod:`deta.export.onnx_ops` and imports ``onnxscript`` only when used.
"""

from .graph_ops import nms_postprocess, select_queries_nms_static, topk_postprocess
from .module import ExportableDETA, min_image_side

__all__ = [
    "ExportableDETA",
    "min_image_side",
    "nms_postprocess",
    "select_queries_nms_static",
    "topk_postprocess",
]
