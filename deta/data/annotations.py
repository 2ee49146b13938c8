"""The rule one annotation must satisfy, shared by ``DetaDatasetMapper`` and the dataset checks.

:class:`AnnotationRule` is the only per-annotation check: the mapper raises on the errors it finds,
:func:`~deta.data.dataset_check.check_coco_json` and
:func:`~deta.data.dataset_check.check_dataset_dicts` report all it finds. Each problem is a
``(kind, detail)`` pair, ``kind`` a key of :data:`deta.data.dataset_check.PROBLEM_KINDS` (which
says whether it is an error or a warning); callers put the annotation's location in front.
"""

import math
import numbers
from dataclasses import dataclass
from typing import Any, Collection, List, Optional, Sequence, Tuple

import numpy as np

from detectron2.structures import BoxMode

from .images import image_location

__all__ = ["AnnotationRule", "DatasetError", "annotation_location", "check_bbox"]

# Boxes exceeding the border by less than this are clipped without a warning: rounding in
# annotation tools routinely puts x + width a fraction of a pixel past the image.
_BORDER_TOLERANCE = 1.0


# A polygon's types: json gives lists; Detectron2 also takes arrays in dataset dicts.
_POLYGON = (list, tuple, np.ndarray)


class DatasetError(ValueError):
    """A dataset entry that cannot be trained on; the message names the file and the ids."""


# The exact-type tests first: the ABC isinstance checks dominate the time of a COCO-sized check.
def _is_number(value: Any) -> bool:
    kind = type(value)
    if kind is float or kind is int:
        return True
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def is_int(value: Any) -> bool:
    """An integer (numpy's included), not a bool."""
    if type(value) is int:
        return True
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def is_id(value: Any) -> bool:
    """A usable COCO id: an int, or (as pycocotools and Detectron2 accept) a non-empty string."""
    if type(value) is int:
        return True
    return is_int(value) or (isinstance(value, str) and bool(value))


def _show(values: Sequence[float]) -> str:
    return "[" + ", ".join(f"{v:g}" for v in values) + "]"


def _short_list(values: Sequence[Any], limit: int = 10) -> str:
    shown = ", ".join(str(v) for v in values[:limit])
    return shown + (f", ... ({len(values)} in all)" if len(values) > limit else "")


def annotation_location(annotation: Any, index: int, file_name: Any, image_id: Any) -> str:
    """How every message names an annotation: its ``id``, or its position when it has none.

    Args:
        annotation: the annotation dict (or whatever stands in its place).
        index (int): its position in the image's annotation list.
        file_name, image_id: the image it belongs to.

    Returns:
        str: e.g. ``"annotation id=17 of image 'a.jpg' (image_id=3)"``.
    """
    ann_id = annotation.get("id") if isinstance(annotation, dict) else None
    name = f"annotation id={ann_id}" if ann_id is not None else f"annotation #{index} (no 'id')"
    return f"{name} of {image_location(file_name, image_id)}"


def check_bbox(
    bbox: Any,
    bbox_mode: Any = BoxMode.XYWH_ABS,
    image_size: Optional[Tuple[float, float]] = None,
) -> Optional[Tuple[str, str]]:
    """The first problem of one box, most severe first.

    Negative ``x``/``y`` are not an error: such a box extends past the left/top border and is
    clipped like any other. A negative width or height is one.

    Args:
        bbox: the box as stored.
        bbox_mode (BoxMode): its mode; COCO json boxes are XYWH_ABS.
        image_size (tuple, optional): (width, height) of the image, to check the border.

    Returns:
        tuple or None: ``(kind, detail)``, or ``None`` for a good box.
    """
    if not isinstance(bbox, (list, tuple, np.ndarray)) or len(bbox) != 4:
        return "bad_bbox", f"bbox {bbox!r} is not a list of 4 numbers [x, y, width, height]"
    if not all(map(_is_number, bbox)):
        return "bad_bbox", f"bbox {list(bbox)!r} has a value that is not a number"
    values = [float(v) for v in bbox]
    if not all(map(math.isfinite, values)):
        return "nonfinite_bbox", f"bbox {_show(values)} has a NaN or infinite coordinate"
    # The two absolute modes inline: BoxMode.convert goes through torch, ~20 us a box here.
    if bbox_mode == BoxMode.XYWH_ABS:
        x0, y0, x1, y1 = values[0], values[1], values[0] + values[2], values[1] + values[3]
    elif bbox_mode == BoxMode.XYXY_ABS:
        x0, y0, x1, y1 = values
    else:
        try:
            x0, y0, x1, y1 = BoxMode.convert(values, bbox_mode, BoxMode.XYXY_ABS)
        except Exception as e:
            return "bad_bbox", f"bbox {_show(values)} in mode {bbox_mode!r} cannot be used: {e}"
    if x1 < x0 or y1 < y0:
        return (
            "negative_bbox_size",
            f"bbox {_show(values)} has a negative width or height ({x1 - x0:g} x {y1 - y0:g})",
        )
    if x1 == x0 or y1 == y0:
        return "empty_bbox", f"bbox {_show(values)} has zero width or height: dropped in training"
    if image_size is not None:
        w, h = image_size
        if min(x1, w) <= max(x0, 0) or min(y1, h) <= max(y0, 0):
            return (
                "bbox_outside_image",
                f"bbox {_show(values)} lies outside the {w}x{h} image: dropped",
            )
        tol = _BORDER_TOLERANCE
        if x0 < -tol or y0 < -tol or x1 > w + tol or y1 > h + tol:
            return (
                "bbox_partly_outside",
                f"bbox {_show(values)} extends past the {w}x{h} image: clipped",
            )
    return None


def _check_segmentation(segm: Any) -> Optional[Tuple[str, str]]:
    # RLE, or a binary mask array (Detectron2 takes one in dataset dicts), or none. The type test
    # comes first: an array's truth value is ambiguous.
    if isinstance(segm, (dict, np.ndarray)) or not segm:
        return None
    if not isinstance(segm, list) or not all(isinstance(p, _POLYGON) for p in segm):
        return (
            "bad_annotation_entry",
            "segmentation must be RLE or a list of polygons [[x0, y0, x1, y1, ...], ...]",
        )
    if not any(len(p) % 2 == 0 and len(p) >= 6 for p in segm):
        return "invalid_segmentation", "no polygon has 3 or more points"
    return None


@dataclass(frozen=True)
class AnnotationRule:
    """What one annotation must satisfy to be trained on.

    Checked, in this order: no ``ignore`` flag (unsupported), a known category id, a valid
    segmentation if any, a ``bbox`` (and ``bbox_mode`` unless fixed), then the box itself
    (:func:`check_bbox`).

    Attributes:
        category_ids (collection, optional): the ids a COCO json's ``categories`` define; the
            annotation's id must be one. ``None``: Detectron2's contiguous ids, see
            ``num_classes``.
        num_classes (int, optional): with contiguous ids, ids must lie in ``[0, num_classes)``;
            ``None`` accepts any int >= 0.
        bbox_mode (BoxMode, optional): the mode of every box (XYWH_ABS in COCO json); ``None``
            reads each annotation's ``bbox_mode``.
    """

    category_ids: Optional[Collection[Any]] = None
    num_classes: Optional[int] = None
    bbox_mode: Optional[BoxMode] = None

    def check(
        self, ann: Any, image_size: Optional[Tuple[float, float]] = None
    ) -> Tuple[List[Tuple[str, str]], bool]:
        """Every problem of one annotation.

        Args:
            ann: the annotation dict (or whatever stands in its place).
            image_size (tuple, optional): (width, height) of its image, to check the border.

        Returns:
            tuple: ``(problems, trainable)``: the ``(kind, detail)`` pairs in check order, and
            whether the annotation gives a box to train on (usable after clipping, not crowd).
        """
        if not isinstance(ann, dict):
            return [("bad_annotation_entry", f"is not an object: {ann!r:.80}")], False
        problems = []
        if ann.get("ignore", 0):
            problems.append(("bad_annotation_entry", "'ignore' is not supported; drop it"))
        problem = self._check_category(ann.get("category_id"))
        if problem is not None:
            problems.append(problem)
        problem = _check_segmentation(ann.get("segmentation"))
        if problem is not None:
            problems.append(problem)
        if "bbox" not in ann or (self.bbox_mode is None and "bbox_mode" not in ann):
            keys = ("bbox",) if self.bbox_mode is not None else ("bbox", "bbox_mode")
            missing = " and ".join(f"no {k!r}" for k in keys if k not in ann)
            problems.append(("bad_annotation_entry", missing))
            return problems, False
        mode = ann["bbox_mode"] if self.bbox_mode is None else self.bbox_mode  # XYXY_ABS is 0
        problem = check_bbox(ann["bbox"], mode, image_size)
        if problem is not None:
            problems.append(problem)
        # A box past the border is clipped and trained on; the other box problems drop it.
        trainable = problem is None or problem[0] == "bbox_partly_outside"
        return problems, trainable and not ann.get("iscrowd", 0)

    def _check_category(self, cat: Any) -> Optional[Tuple[str, str]]:
        if self.category_ids is not None:
            if is_id(cat) and cat in self.category_ids:
                return None
            known = _short_list(sorted(self.category_ids))
            return "unknown_category", f"category_id={cat!r} is not in 'categories' (ids: {known})"
        n = self.num_classes
        if is_int(cat) and cat >= 0 and (n is None or cat < n):
            return None
        limit = "" if n is None else f" 0..{n - 1}"
        return "unknown_category", f"category_id={cat!r} is not a contiguous class id{limit}"
