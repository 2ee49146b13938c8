"""Dataset checks shared by the COCO loader, ``DetaDatasetMapper`` and ``tools/check_dataset.py``.

Every problem in a dataset is one of two kinds:

* a **warning** when training has a well-defined fix and applies it: a box of zero width or
  height, or fully outside its image, is dropped; a box past the border is clipped; an annotation
  whose ``image_id`` is not in ``images`` is ignored (Detectron2's loader does this);
* an **error** when no fix is safe: the loader or the mapper stops with a message that names the
  file, the image id and, for an annotation, the annotation id, and says what to fix.

Images are decoded by :func:`open_image` rather than Detectron2's ``read_image``, which clips
16-bit images to 0..255 instead of scaling them. EXIF orientation is applied the same way as in
Detectron2, so the json ``width``/``height`` and boxes must describe the rotated image.
"""

import json
import math
import numbers
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image

from detectron2.data import detection_utils as utils
from detectron2.structures import BoxMode
from detectron2.utils.file_io import PathManager

__all__ = [
    "ERROR",
    "PROBLEM_KINDS",
    "WARNING",
    "DatasetError",
    "DatasetReport",
    "ImageReadError",
    "LoadedImage",
    "Problem",
    "annotation_location",
    "check_bbox",
    "check_coco_json",
    "check_dataset_dicts",
    "check_image_file",
    "check_image_size",
    "image_location",
    "open_image",
    "read_image",
]

ERROR = "error"
WARNING = "warning"

# kind -> (severity, title, what training does or what to fix). Report order follows this dict.
PROBLEM_KINDS: Dict[str, Tuple[str, str, str]] = {
    "invalid_json": (ERROR, "unreadable or malformed json", "fix the file"),
    "bad_image_entry": (
        ERROR,
        "malformed image entry",
        "every image needs a unique int 'id', a 'file_name' and int 'width'/'height' > 0",
    ),
    "duplicate_image_id": (
        ERROR,
        "duplicate image id",
        "the COCO API merges such images, attaching one image's boxes to another file",
    ),
    "bad_category_entry": (
        ERROR,
        "malformed category entry",
        "every category needs a unique int 'id' and a 'name'",
    ),
    "bad_annotation_entry": (ERROR, "malformed annotation", "fix or remove the annotation"),
    "duplicate_annotation_id": (
        ERROR,
        "duplicate annotation id",
        "give each annotation a unique id",
    ),
    "unknown_category": (
        ERROR,
        "category id not in 'categories'",
        "add the category or fix the annotation's category_id",
    ),
    "bad_bbox": (ERROR, "bbox is not 4 numbers", "COCO boxes are [x, y, width, height]"),
    "nonfinite_bbox": (ERROR, "NaN or infinite bbox coordinate", "fix or remove the annotation"),
    "negative_bbox_size": (
        ERROR,
        "negative bbox width or height",
        "COCO boxes are [x, y, width, height], not [x0, y0, x1, y1]",
    ),
    "missing_image": (
        ERROR,
        "image file missing",
        "check the image folder and file_name, or remove the image from the json",
    ),
    "unreadable_image": (
        ERROR,
        "image file unreadable",
        "re-download or re-encode the file, or remove the image from the json",
    ),
    "size_mismatch": (
        ERROR,
        "image size differs from the json",
        "width/height (and boxes) must describe the image after EXIF orientation",
    ),
    "unknown_image_id": (
        WARNING,
        "annotation for an image not in 'images'",
        "ignored by the loader",
    ),
    "duplicate_file_name": (WARNING, "file listed twice", "both entries are trained on"),
    "invalid_segmentation": (
        WARNING,
        "polygon with fewer than 3 points",
        "Detectron2's COCO loader drops the whole annotation, box included",
    ),
    "empty_bbox": (WARNING, "zero-size box", "dropped in training"),
    "bbox_outside_image": (WARNING, "box fully outside the image", "dropped in training"),
    "bbox_partly_outside": (
        WARNING,
        "box extends past the image border",
        "clipped to the image in training",
    ),
    "exif_orientation": (
        WARNING,
        "EXIF orientation that the size cannot confirm",
        "the image is rotated/flipped on reading; boxes must be in that frame",
    ),
}

# Boxes exceeding the border by less than this are clipped without a warning: rounding in
# annotation tools routinely puts x + width a fraction of a pixel past the image.
_BORDER_TOLERANCE = 1.0

_EXIF_ORIENTATION_TAG = 274
_TRANSPOSE = getattr(Image, "Transpose", Image)  # Pillow >= 9.1 has the enum
# Same mapping as Detectron2's read_image, so both read an image in the same frame.
_ORIENTATION_METHODS = {
    2: _TRANSPOSE.FLIP_LEFT_RIGHT,
    3: _TRANSPOSE.ROTATE_180,
    4: _TRANSPOSE.FLIP_TOP_BOTTOM,
    5: _TRANSPOSE.TRANSPOSE,
    6: _TRANSPOSE.ROTATE_270,
    7: _TRANSPOSE.TRANSVERSE,
    8: _TRANSPOSE.ROTATE_90,
}
_ORIENTATION_NAMES = {
    2: "mirrored",
    3: "rotated 180°",
    4: "flipped vertically",
    5: "transposed",
    6: "rotated 90° clockwise",
    7: "transversed",
    8: "rotated 90° counter-clockwise",
}


class DatasetError(ValueError):
    """A dataset entry that cannot be trained on; the message names the file and the ids."""


class ImageReadError(OSError):
    """An image file that exists but cannot be decoded; the message names the file."""


class _UnsupportedPixels(Exception):
    pass


def image_location(file_name: Any, image_id: Any = None) -> str:
    """``"image 'a.jpg' (image_id=3)"``: how every message names an image."""
    if file_name is None:
        return f"image_id={image_id}"
    return f"image {str(file_name)!r} (image_id={image_id})"


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


@dataclass(frozen=True)
class Problem:
    """One problem found in a dataset.

    Attributes:
        kind (str): a key of :data:`PROBLEM_KINDS`.
        message (str): the full message, naming the file and ids.
        file_name (str, optional): the image file concerned.
        image_id: the image id concerned.
        annotation_id: the annotation id concerned.
    """

    kind: str
    message: str
    file_name: Optional[str] = None
    image_id: Any = None
    annotation_id: Any = None

    @property
    def severity(self) -> str:
        """``ERROR`` or ``WARNING``."""
        return PROBLEM_KINDS[self.kind][0]


@dataclass
class DatasetReport:
    """Everything found by :func:`check_coco_json` or :func:`check_dataset_dicts`.

    Attributes:
        source (str): what was checked (json path or dataset name).
        problems (list[Problem]): in discovery order.
        num_images, num_annotations (int): entries seen.
        num_categories (int, optional): categories in the json, if known.
        num_images_without_boxes (int): images left with no trainable box (kept as negatives).
        stopped_early (bool): the error limit was reached, so later entries were not checked.
    """

    source: str
    problems: List[Problem] = field(default_factory=list)
    num_images: int = 0
    num_annotations: int = 0
    num_categories: Optional[int] = None
    num_images_without_boxes: int = 0
    stopped_early: bool = False

    @property
    def errors(self) -> List[Problem]:
        """The problems that stop training."""
        return [p for p in self.problems if p.severity == ERROR]

    @property
    def warnings(self) -> List[Problem]:
        """The problems that training fixes by itself."""
        return [p for p in self.problems if p.severity == WARNING]

    def format(self, max_per_kind: Optional[int] = None) -> str:
        """A human-readable report, errors then warnings, grouped by problem kind.

        Args:
            max_per_kind (int, optional): list at most this many problems of each kind.

        Returns:
            str: the report, ending with a one-line summary.
        """
        cats = "" if self.num_categories is None else f", {self.num_categories} categories"
        lines = [
            f"Checked {self.source}: {self.num_images} images, "
            f"{self.num_annotations} annotations{cats}."
        ]
        for severity, problems in ((ERROR, self.errors), (WARNING, self.warnings)):
            if not problems:
                continue
            lines += ["", f"{severity.upper()}S ({len(problems)})"]
            for kind, (_, title, hint) in PROBLEM_KINDS.items():
                group = [p for p in problems if p.kind == kind]
                if not group:
                    continue
                lines.append(f"  {title} [{kind}] ({len(group)}): {hint}")
                shown = group if max_per_kind is None else group[:max_per_kind]
                lines += [f"    {p.message}" for p in shown]
                if len(shown) < len(group):
                    lines.append(f"    ... and {len(group) - len(shown)} more")
        lines.append("")
        if self.stopped_early:
            lines.append("Stopped at the error limit: later entries were not checked.")
        lines.append(
            f"{len(self.errors)} errors, {len(self.warnings)} warnings; "
            f"{self.num_images_without_boxes} images have no trainable box (kept as negatives)."
        )
        return "\n".join(lines)

    def error_summary(self, what: str, limit: int = 20) -> str:
        """The message of the :class:`DatasetError` a loader raises for this report.

        Args:
            what (str): the dataset, e.g. ``"dataset 'x' (a.json)"``.
            limit (int): errors listed before the rest are counted.

        Returns:
            str: the message.
        """
        errors = self.errors
        lines = [f"{len(errors)} error(s) in {what} stop it from being used:"]
        lines += [f"  [{p.kind}] {p.message}" for p in errors[:limit]]
        if len(errors) > limit:
            lines.append(f"  ... and {len(errors) - limit} more")
        lines.append("Run tools/check_dataset.py on it for the full report.")
        return "\n".join(lines)


class _Stop(Exception):
    pass


class _Collector:
    """Collects problems, raising ``_Stop`` once ``max_errors`` errors are in."""

    def __init__(self, report: DatasetReport, max_errors: Optional[int]):
        self.report = report
        self.max_errors = max_errors
        self.num_errors = 0

    def add(self, kind: str, message: str, **ids: Any) -> None:
        self.report.problems.append(Problem(kind, message, **ids))
        if PROBLEM_KINDS[kind][0] == ERROR:
            self.num_errors += 1
            if self.max_errors and self.num_errors >= self.max_errors:
                raise _Stop


# ---------------------------------------------------------------------------------------------
# Images


@dataclass(frozen=True)
class LoadedImage:
    """An opened image file.

    Attributes:
        image (PIL.Image.Image or None): 8-bit, EXIF orientation applied, fully decoded; ``None``
            when opened with ``decode=False``.
        size (tuple[int, int]): (width, height) after EXIF orientation.
        stored_size (tuple[int, int]): (width, height) of the stored pixels.
        orientation (int): the EXIF orientation tag, 1 when absent.
    """

    image: Optional[Image.Image]
    size: Tuple[int, int]
    stored_size: Tuple[int, int]
    orientation: int


def _orientation(image: Image.Image) -> int:
    try:
        value = image.getexif().get(_EXIF_ORIENTATION_TAG, 1)
    except Exception:  # broken EXIF blocks are common; Detectron2 ignores them the same way
        return 1
    return value if value in _ORIENTATION_METHODS else 1


def _to_8bit(image: Image.Image) -> Image.Image:
    mode = image.mode
    if mode == "I" or mode.startswith("I;16"):  # 16-bit grey PNG/TIFF
        pixels = np.asarray(image)
        if pixels.size and (pixels.min() < 0 or pixels.max() > 65535):
            raise _UnsupportedPixels(
                f"32-bit integer pixels in {pixels.min()}..{pixels.max()} have no known 0..255 "
                "scale; convert the image to 8 bits"
            )
        # Keep the high byte: Pillow decodes 16-bit RGB(A) PNGs this way, so grey and colour
        # 16-bit files map alike. PIL's own convert would clip everything above 255 to white.
        return Image.fromarray((pixels.astype(np.uint32) >> 8).astype(np.uint8), mode="L")
    if mode == "F":
        raise _UnsupportedPixels(
            "32-bit float pixels have no standard 0..255 scale; convert the image to 8 bits"
        )
    return image  # every other mode (L, P, LA, RGBA, CMYK, 1, ...) converts with PIL's rules


def open_image(file_name: str, image_id: Any = None, *, decode: bool = True) -> LoadedImage:
    """Open an image file as training will read it.

    Args:
        file_name (str): path (anything Detectron2's ``PathManager`` opens).
        image_id: used in error messages.
        decode (bool): decode all pixels (finds truncated files); otherwise read the header only.

    Returns:
        LoadedImage: the image and its sizes.

    Raises:
        FileNotFoundError: the file does not exist.
        ImageReadError: the file is truncated, corrupt, not an image, or in an unsupported pixel
            format.
    """
    where = image_location(file_name, image_id)
    try:
        with PathManager.open(file_name, "rb") as f:
            image = Image.open(f)
            stored_size = image.size
            orientation = _orientation(image)
            if decode:
                image.load()  # decode inside the with: PIL reads lazily
                image = _to_8bit(image)
                method = _ORIENTATION_METHODS.get(orientation)
                if method is not None:
                    image = image.transpose(method)
            else:
                image = None
    except FileNotFoundError as e:
        raise FileNotFoundError(
            f"{where} does not exist: it is listed in the dataset but missing on disk. "
            "Check the image folder and file_name, or remove the image from the json"
        ) from e
    except _UnsupportedPixels as e:
        raise ImageReadError(f"cannot read {where}: {e}") from e
    except Exception as e:  # PIL raises OSError, SyntaxError, ValueError, ... for bad files
        raise ImageReadError(
            f"cannot read {where}: {type(e).__name__}: {e}. The file is truncated, corrupt or not "
            "an image: re-download or re-encode it, or remove it from the json"
        ) from e
    w, h = stored_size
    size = (h, w) if orientation in (5, 6, 7, 8) else (w, h)
    return LoadedImage(image, size, stored_size, orientation)


def read_image(file_name: str, format: Optional[str] = None, image_id: Any = None) -> np.ndarray:
    """Like Detectron2's ``read_image``, but 16-bit images are scaled, not clipped.

    Args:
        file_name (str): image path.
        format (str, optional): "RGB", "BGR", "L", ... as in Detectron2; ``None`` keeps the mode.
        image_id: used in error messages.

    Returns:
        np.ndarray: an HWC uint8 image (float for "YUV-BT.601"), EXIF orientation applied.
    """
    return utils.convert_PIL_to_numpy(open_image(file_name, image_id).image, format)


def _size_mismatch_message(where: str, loaded: LoadedImage, expected: Tuple[Any, Any]) -> str:
    w, h = loaded.size
    message = f"{where} is {w}x{h} (width x height) but the json says {expected[0]}x{expected[1]}."
    if loaded.orientation != 1 and tuple(loaded.stored_size) == tuple(expected):
        how = _ORIENTATION_NAMES[loaded.orientation]
        message += (
            f" The json matches the stored pixels before the EXIF orientation tag "
            f"(orientation={loaded.orientation}, {how}), which is applied on reading, so the "
            "annotations were likely made on the unrotated image: strip the EXIF orientation "
            "from the file (re-save it without EXIF), or convert width/height and boxes to the "
            "rotated frame."
        )
    else:
        message += " Fix width/height in the json, and check the boxes were drawn on this file."
    return message


def check_image_size(dataset_dict: Dict[str, Any], loaded: LoadedImage) -> None:
    """Detectron2's ``check_image_size`` with a message that explains EXIF-rotation mismatches.

    Fills in a missing ``width``/``height`` from the image, as Detectron2 does.

    Args:
        dataset_dict (dict): the dataset dict (``file_name``, ``image_id``, ``width``,
            ``height``).
        loaded (LoadedImage): the opened image.

    Raises:
        SizeMismatchError: (Detectron2's, a ``ValueError``) the sizes differ.
    """
    w, h = loaded.size
    if "width" in dataset_dict or "height" in dataset_dict:
        expected = (dataset_dict.get("width"), dataset_dict.get("height"))
        if expected != (w, h):
            where = image_location(dataset_dict.get("file_name"), dataset_dict.get("image_id"))
            raise utils.SizeMismatchError(_size_mismatch_message(where, loaded, expected))
    dataset_dict.setdefault("width", w)
    dataset_dict.setdefault("height", h)


def check_image_file(
    file_name: str, image_id: Any, width: Any, height: Any, *, decode: bool = True
) -> List[Problem]:
    """Every problem of one image file: missing, unreadable, wrong size, ambiguous EXIF.

    Args:
        file_name (str): image path.
        image_id: its id.
        width, height: the size the json gives; both ``None`` skips the size check.
        decode (bool): decode all pixels (slower; finds truncated files).

    Returns:
        list[Problem]: empty when the file is fine.
    """
    ids = {"file_name": file_name, "image_id": image_id}
    try:
        loaded = open_image(file_name, image_id, decode=decode)
    except FileNotFoundError as e:
        return [Problem("missing_image", str(e), **ids)]
    except ImageReadError as e:
        return [Problem("unreadable_image", str(e), **ids)]
    where = image_location(file_name, image_id)
    if (width, height) != (None, None) and loaded.size != (width, height):
        message = _size_mismatch_message(where, loaded, (width, height))
        return [Problem("size_mismatch", message, **ids)]
    if loaded.orientation != 1 and loaded.stored_size == loaded.size:
        how = _ORIENTATION_NAMES[loaded.orientation]
        message = (
            f"{where} has EXIF orientation {loaded.orientation} ({how}); the size cannot tell "
            "whether its boxes were drawn before or after that, and training uses after"
        )
        return [Problem("exif_orientation", message, **ids)]
    return []


# ---------------------------------------------------------------------------------------------
# Annotations


# The exact-type tests first: the ABC isinstance checks dominate the time of a COCO-sized check.
def _is_number(value: Any) -> bool:
    kind = type(value)
    if kind is float or kind is int:
        return True
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _is_int(value: Any) -> bool:
    if type(value) is int:
        return True
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_id(value: Any) -> bool:
    # COCO ids are ints; pycocotools and Detectron2 also work with (non-empty) string ids.
    if type(value) is int:
        return True
    return _is_int(value) or (isinstance(value, str) and bool(value))


def _is_size(value: Any) -> bool:
    return _is_int(value) and value > 0


def _show(values: Sequence[float]) -> str:
    return "[" + ", ".join(f"{v:g}" for v in values) + "]"


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
        tuple or None: ``(kind, detail)`` with ``kind`` a key of :data:`PROBLEM_KINDS`, or
        ``None`` for a good box.
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


def _short_list(values: Sequence[Any], limit: int = 10) -> str:
    shown = ", ".join(str(v) for v in values[:limit])
    return shown + (f", ... ({len(values)} in all)" if len(values) > limit else "")


def _validate_segmentation(segm: Any) -> Optional[Tuple[str, str]]:
    if not segm or isinstance(segm, dict):  # none, or RLE
        return None
    if not isinstance(segm, list) or not all(isinstance(p, list) for p in segm):
        return (
            "bad_annotation_entry",
            "segmentation must be RLE or a list of polygons [[x0, y0, x1, y1, ...], ...]",
        )
    if not any(len(p) % 2 == 0 and len(p) >= 6 for p in segm):
        return "invalid_segmentation", "no polygon has 3 or more points"
    return None


def _check_images(coco: dict, out: _Collector) -> Dict[Any, dict]:
    """Image entries -> {id: entry} of the usable ones."""
    images: Dict[Any, dict] = {}
    seen_files: Dict[str, Any] = {}
    for index, img in enumerate(coco["images"]):
        if not isinstance(img, dict):
            out.add("bad_image_entry", f"images[{index}] is not an object: {img!r:.80}")
            continue
        image_id, file_name = img.get("id"), img.get("file_name")
        where = f"images[{index}] " + image_location(file_name, image_id)
        ids = {"file_name": file_name, "image_id": image_id}
        if not _is_id(image_id):
            out.add("bad_image_entry", f"{where}: 'id' must be an int", **ids)
            continue
        if not isinstance(file_name, str) or not file_name:
            out.add("bad_image_entry", f"{where}: 'file_name' must be a non-empty string", **ids)
            continue
        if not (_is_size(img.get("width")) and _is_size(img.get("height"))):
            size = (img.get("width"), img.get("height"))
            out.add("bad_image_entry", f"{where}: width/height {size} must be ints > 0", **ids)
            continue
        if image_id in images:
            other = images[image_id]["file_name"]
            out.add("duplicate_image_id", f"{where}: id also used by {other!r}", **ids)
            continue
        if file_name in seen_files:
            message = f"{where}: the same file is also image_id={seen_files[file_name]}"
            out.add("duplicate_file_name", message, **ids)
        seen_files[file_name] = image_id
        images[image_id] = img
    if len({type(i) is str for i in images}) > 1:
        out.add("bad_image_entry", "image ids mix ints and strings; Detectron2 sorts them")
    return images


def _check_categories(coco: dict, out: _Collector) -> set:
    categories = coco.get("categories")
    if not isinstance(categories, list) or not categories:
        out.add("bad_category_entry", "'categories' is missing or empty")
        return set()
    ids = set()
    for index, cat in enumerate(categories):
        cat_id = cat.get("id") if isinstance(cat, dict) else None
        if not _is_id(cat_id) or not isinstance(cat.get("name"), str):
            message = f"categories[{index}] {cat!r:.80}: needs an int 'id' and a 'name'"
            out.add("bad_category_entry", message)
        elif cat_id in ids:
            out.add("bad_category_entry", f"categories[{index}]: id {cat_id} is used twice")
        else:
            ids.add(cat_id)
    return ids


def _check_annotation(
    index: int,
    ann: Any,
    images: Dict[Any, dict],
    category_ids: set,
    ann_ids: Dict[Any, int],
    out: _Collector,
) -> bool:
    """Check one json annotation; return whether it gives a trainable box."""
    if not isinstance(ann, dict):
        out.add("bad_annotation_entry", f"annotations[{index}] is not an object: {ann!r:.80}")
        return False
    ann_id, image_id = ann.get("id"), ann.get("image_id")
    image = images.get(image_id) if _is_id(image_id) else None

    def add(kind: str, detail: str, where: Optional[str] = None) -> None:
        # Messages are built only for problems: this loop runs once per annotation.
        file_name = image["file_name"] if image else None
        where = where or annotation_location(ann, index, file_name, image_id)
        ids = {"file_name": file_name, "image_id": image_id, "annotation_id": ann_id}
        out.add(kind, f"{where}: {detail}", **ids)

    if not _is_id(ann_id):
        file_name = image["file_name"] if image else None
        where = f"annotations[{index}] of {image_location(file_name, image_id)}"
        add("bad_annotation_entry", f"'id' {ann_id!r} must be an int", where)
    elif ann_id in ann_ids:
        add(
            "duplicate_annotation_id", f"id={ann_id} is also used by annotations[{ann_ids[ann_id]}]"
        )
    else:
        ann_ids[ann_id] = index
    if image is None:
        add("unknown_image_id", "image_id is not in 'images'")
        return False
    if ann.get("ignore", 0):
        add("bad_annotation_entry", "'ignore' is not supported; drop it")
    cat = ann.get("category_id")
    if not _is_id(cat) or cat not in category_ids:
        known = _short_list(sorted(category_ids))
        add("unknown_category", f"category_id={cat!r} is not in 'categories' (ids: {known})")
    problem = _validate_segmentation(ann.get("segmentation"))
    if problem is not None:
        add(*problem)
    if "bbox" not in ann:
        add("bad_annotation_entry", "no 'bbox'")
        return False
    problem = check_bbox(ann["bbox"], BoxMode.XYWH_ABS, (image["width"], image["height"]))
    if problem is not None:
        add(*problem)
    trainable = problem is None or problem[0] == "bbox_partly_outside"
    return trainable and not ann.get("iscrowd", 0)


def _check_coco_dict(coco: Any, report: DatasetReport, out: _Collector) -> Dict[Any, dict]:
    """Check the json content; return the usable image entries."""
    if not isinstance(coco, dict) or not isinstance(coco.get("images"), list):
        out.add("invalid_json", "not a COCO instances json: no 'images' list")
        return {}
    annotations = coco.get("annotations", [])
    if not isinstance(annotations, list):
        out.add("invalid_json", "'annotations' is not a list")
        annotations = []
    report.num_images, report.num_annotations = len(coco["images"]), len(annotations)
    images = _check_images(coco, out)
    category_ids = _check_categories(coco, out)
    report.num_categories = len(category_ids)

    ann_ids: Dict[Any, int] = {}  # id -> index of its first annotation
    with_boxes = set()
    for index, ann in enumerate(annotations):
        if _check_annotation(index, ann, images, category_ids, ann_ids, out):
            with_boxes.add(ann["image_id"])
    report.num_images_without_boxes = len(set(images) - with_boxes)
    return images


def _check_files(
    entries: Iterable[Tuple[str, Any, Any, Any]], out: _Collector, decode: bool, workers: int
) -> None:
    def check(entry):
        return check_image_file(*entry, decode=decode)

    # Decoding releases the GIL for most of its time, so threads scale on large datasets.
    with ThreadPoolExecutor(max(1, workers)) as pool:
        try:
            for problems in pool.map(check, entries):
                for p in problems:
                    out.add(p.kind, p.message, file_name=p.file_name, image_id=p.image_id)
        except _Stop:
            pool.shutdown(wait=True, cancel_futures=True)
            raise


def check_coco_json(
    json_file: str,
    image_root: Optional[str] = None,
    *,
    check_images: bool = True,
    decode: bool = True,
    max_errors: Optional[int] = None,
    workers: int = 1,
) -> DatasetReport:
    """Find every problem of a COCO instances json and, optionally, its image files.

    Args:
        json_file (str): the json.
        image_root (str, optional): the image folder; needed with ``check_images``.
        check_images (bool): open every image file (existence, decoding, size, EXIF).
        decode (bool): decode all pixels, not just headers (finds truncated files).
        max_errors (int, optional): stop after this many errors; ``None`` or 0 checks all.
        workers (int): threads for the image checks.

    Returns:
        DatasetReport: the problems and counts.
    """
    report = DatasetReport(source=json_file)
    out = _Collector(report, max_errors)
    try:
        try:
            with PathManager.open(json_file, "r") as f:
                coco = json.load(f)
        except Exception as e:
            out.add("invalid_json", f"cannot read {json_file!r}: {type(e).__name__}: {e}")
            return report
        images = _check_coco_dict(coco, report, out)
        del coco  # the raw json of a large dataset takes gigabytes
        if check_images:
            if image_root is None:
                raise ValueError("check_coco_json needs image_root to check images")
            entries = [
                (os.path.join(image_root, img["file_name"]), i, img["width"], img["height"])
                for i, img in images.items()
            ]
            _check_files(entries, out, decode, workers)
    except _Stop:
        report.stopped_early = True
    return report


def _check_record(index: int, record: Any, num_classes: Optional[int], out: _Collector) -> bool:
    """Check one Detectron2 dataset dict; return whether it has a trainable box."""
    if not isinstance(record, dict) or "file_name" not in record:
        out.add("bad_image_entry", f"dataset dict #{index} has no 'file_name'")
        return False
    file_name, image_id = record["file_name"], record.get("image_id")
    ids = {"file_name": file_name, "image_id": image_id}
    size = (record.get("width"), record.get("height"))
    if not all(_is_size(v) for v in size):
        message = f"{image_location(file_name, image_id)}: width/height {size} must be ints > 0"
        out.add("bad_image_entry", message, **ids)
        size = None
    trainable = False
    for k, ann in enumerate(record.get("annotations", [])):
        where = annotation_location(ann, k, file_name, image_id)
        ann_ids = dict(ids, annotation_id=ann.get("id") if isinstance(ann, dict) else None)
        if not isinstance(ann, dict) or "bbox" not in ann or "bbox_mode" not in ann:
            out.add("bad_annotation_entry", f"{where}: needs 'bbox' and 'bbox_mode'", **ann_ids)
            continue
        cat = ann.get("category_id")
        if not _is_int(cat) or cat < 0 or (num_classes is not None and cat >= num_classes):
            limit = "" if num_classes is None else f" 0..{num_classes - 1}"
            message = f"{where}: category_id={cat!r} is not a contiguous class id{limit}"
            out.add("unknown_category", message, **ann_ids)
        problem = check_bbox(ann["bbox"], ann["bbox_mode"], size)
        if problem is not None:
            out.add(problem[0], f"{where}: {problem[1]}", **ann_ids)
        ok = problem is None or problem[0] == "bbox_partly_outside"
        trainable = trainable or (ok and not ann.get("iscrowd", 0))
    return trainable


def check_dataset_dicts(
    dicts: Sequence[Dict[str, Any]],
    source: str = "dataset",
    *,
    num_classes: Optional[int] = None,
    check_images: bool = True,
    decode: bool = True,
    max_errors: Optional[int] = None,
    workers: int = 1,
) -> DatasetReport:
    """Find every problem of a list of Detectron2 dataset dicts (any registered dataset).

    Args:
        dicts (list[dict]): Detectron2 standard dataset dicts.
        source (str): its name for the report.
        num_classes (int, optional): contiguous category ids must lie in ``[0, num_classes)``.
        check_images, decode, max_errors, workers: as in :func:`check_coco_json`.

    Returns:
        DatasetReport: the problems and counts.
    """
    report = DatasetReport(source=source, num_images=len(dicts), num_categories=num_classes)
    report.num_annotations = sum(len(d.get("annotations", [])) for d in dicts)
    out = _Collector(report, max_errors)
    try:
        for index, record in enumerate(dicts):
            if not _check_record(index, record, num_classes, out):
                report.num_images_without_boxes += 1
        if check_images:
            entries = [
                (d["file_name"], d.get("image_id"), d.get("width"), d.get("height"))
                for d in dicts
                if isinstance(d, dict) and "file_name" in d
            ]
            _check_files(entries, out, decode, workers)
    except _Stop:
        report.stopped_early = True
    return report
