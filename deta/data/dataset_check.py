"""The offline dataset check behind the COCO loader and ``tools/check_dataset.py``.

Every problem in a dataset is one of two kinds:

* a **warning** when training has a well-defined fix and applies it: a box of zero width or
  height, or fully outside its image, is dropped; a box past the border is clipped; an annotation
  whose ``image_id`` is not in ``images`` is ignored (Detectron2's loader does this);
* an **error** when no fix is safe: the loader or the mapper stops with a message that names the
  file, the image id and, for an annotation, the annotation id, and says what to fix.

Each annotation is checked by the same :class:`~deta.data.annotations.AnnotationRule` as in
``DetaDatasetMapper``; this module adds the checks of whole entries (images, categories, ids) and
of image files, and collects everything into a :class:`DatasetReport`.
"""

import json
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

from detectron2.structures import BoxMode
from detectron2.utils.file_io import PathManager

from .annotations import AnnotationRule, annotation_location, is_id, is_int
from .images import (
    ORIENTATION_NAMES,
    ImageReadError,
    image_location,
    open_image,
    size_mismatch_message,
)

__all__ = [
    "ERROR",
    "PROBLEM_KINDS",
    "WARNING",
    "DatasetReport",
    "Problem",
    "check_coco_json",
    "check_dataset_dicts",
    "check_image_file",
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


def _is_size(value: Any) -> bool:
    return is_int(value) and value > 0


# ---------------------------------------------------------------------------------------------
# Image files


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
        message = size_mismatch_message(where, loaded, (width, height))
        return [Problem("size_mismatch", message, **ids)]
    if loaded.orientation != 1 and loaded.stored_size == loaded.size:
        how = ORIENTATION_NAMES[loaded.orientation]
        message = (
            f"{where} has EXIF orientation {loaded.orientation} ({how}); the size cannot tell "
            "whether its boxes were drawn before or after that, and training uses after"
        )
        return [Problem("exif_orientation", message, **ids)]
    return []


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


# ---------------------------------------------------------------------------------------------
# COCO json


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
        if not is_id(image_id):
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
        if not is_id(cat_id) or not isinstance(cat.get("name"), str):
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
    rule: AnnotationRule,
    ann_ids: Dict[Any, int],
    out: _Collector,
) -> bool:
    """Check one json annotation; return whether it gives a trainable box."""
    if not isinstance(ann, dict):
        out.add("bad_annotation_entry", f"annotations[{index}] is not an object: {ann!r:.80}")
        return False
    ann_id, image_id = ann.get("id"), ann.get("image_id")
    image = images.get(image_id) if is_id(image_id) else None
    file_name = image["file_name"] if image else None

    def add(kind: str, detail: str, where: Optional[str] = None) -> None:
        # Messages are built only for problems: this runs once per annotation.
        where = where or annotation_location(ann, index, file_name, image_id)
        ids = {"file_name": file_name, "image_id": image_id, "annotation_id": ann_id}
        out.add(kind, f"{where}: {detail}", **ids)

    # The json's own structure (ids present and unique, the image listed); then the rule.
    if not is_id(ann_id):
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
    problems, trainable = rule.check(ann, (image["width"], image["height"]))
    for kind, detail in problems:
        add(kind, detail)
    return trainable


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

    rule = AnnotationRule(category_ids=category_ids, bbox_mode=BoxMode.XYWH_ABS)
    ann_ids: Dict[Any, int] = {}  # id -> index of its first annotation
    with_boxes = set()
    for index, ann in enumerate(annotations):
        if _check_annotation(index, ann, images, rule, ann_ids, out):
            with_boxes.add(ann["image_id"])
    report.num_images_without_boxes = len(set(images) - with_boxes)
    return images


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


# ---------------------------------------------------------------------------------------------
# Detectron2 dataset dicts


def _check_record(index: int, record: Any, rule: AnnotationRule, out: _Collector) -> bool:
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
    has_box = False
    for k, ann in enumerate(record.get("annotations", [])):
        problems, trainable = rule.check(ann, size)
        if problems:
            where = annotation_location(ann, k, file_name, image_id)
            ann_ids = dict(ids, annotation_id=ann.get("id") if isinstance(ann, dict) else None)
            for kind, detail in problems:
                out.add(kind, f"{where}: {detail}", **ann_ids)
        has_box = has_box or trainable
    return has_box


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
    rule = AnnotationRule(num_classes=num_classes)
    try:
        for index, record in enumerate(dicts):
            if not _check_record(index, record, rule, out):
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
