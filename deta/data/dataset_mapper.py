"""``DetaDatasetMapper``: Detectron2 dataset dicts -> model inputs with the official augmentation.

Training: horizontal flip with p 0.5, then with p 0.5 either
``DetrResize(MIN_SIZE_TRAIN, MAX_SIZE_TRAIN)`` or ``DetrResize(CROP.PRE_RESIZE_SIZES)`` ->
``RandomSizeCrop(*CROP.SIZE)`` -> ``DetrResize(MIN_SIZE_TRAIN, MAX_SIZE_TRAIN)``. Test:
``DetrResize([MIN_SIZE_TEST], MAX_SIZE_TEST)``. Crowd annotations are dropped, boxes are clipped
and empty boxes removed, and images left with no boxes are kept. Batching,
padding and normalisation happen in the model.

Bad data stops with an error naming the image file and id (and the annotation id): an unreadable
or missing file, a size that differs from the dataset dict (``deta/data/images.py``), or an error
of the annotation rule that the dataset checks apply too, e.g. a NaN/Inf box, a negative box size
or a category id out of range (``deta/data/annotations.py``). Any other exception raised while
mapping is re-raised as :class:`DatasetMapperError` naming the image, so a data-loader worker
crash says which image caused it.
"""

import copy
import logging
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import torch

from detectron2.config import configurable
from detectron2.data import detection_utils as utils
from detectron2.data import transforms as T
from detectron2.structures import Boxes, BoxMode, Instances

from .annotations import AnnotationRule, DatasetError, annotation_location
from .dataset_check import ERROR, PROBLEM_KINDS
from .images import check_image_size, image_location, open_image
from .transforms import DetrResize, RandomSelect, RandomSizeCrop

__all__ = ["DatasetMapperError", "DetaDatasetMapper", "build_deta_augmentations"]

logger = logging.getLogger(__name__)


def _max_size(value: int) -> Optional[int]:
    return int(value) if value and value > 0 else None  # 0 disables the cap


def build_deta_augmentations(
    cfg, is_train: bool
) -> Tuple[List[T.Augmentation], Optional[List[T.Augmentation]]]:
    """Build the two augmentation lists of :class:`DetaDatasetMapper` from ``cfg.INPUT``.

    Keys: ``MIN_SIZE_TRAIN`` (the candidate short sides; ``MIN_SIZE_TRAIN_SAMPLING`` must be
    "choice"), ``MAX_SIZE_TRAIN``, ``MIN_SIZE_TEST``, ``MAX_SIZE_TEST`` (0 means no cap),
    ``RANDOM_FLIP`` ("horizontal" or "none"), and for the crop branch ``CROP.ENABLED``,
    ``CROP.TYPE`` (must be "absolute_range"), ``CROP.SIZE`` ([min, max] crop side) and
    ``CROP.PRE_RESIZE_SIZES``.

    Args:
        cfg (CfgNode): a Detectron2 config (``add_deta_config`` applied).
        is_train (bool): build the training or the test lists.

    Returns:
        tuple: ``(augmentation, augmentation_with_crop)``. At test time, or with the crop disabled,
        the second is ``None``. Each training list starts with the flip.
    """
    inp = cfg.INPUT
    if not is_train:
        return [DetrResize([inp.MIN_SIZE_TEST], _max_size(inp.MAX_SIZE_TEST))], None

    if inp.MIN_SIZE_TRAIN_SAMPLING != "choice":
        raise ValueError(
            f"INPUT.MIN_SIZE_TRAIN_SAMPLING must be 'choice' for DETA (the official RandomResize), "
            f"got {inp.MIN_SIZE_TRAIN_SAMPLING!r}"
        )
    flip = []
    if inp.RANDOM_FLIP == "horizontal":
        flip = [T.RandomFlip(prob=0.5, horizontal=True, vertical=False)]
    elif inp.RANDOM_FLIP != "none":
        raise ValueError(
            f"INPUT.RANDOM_FLIP must be 'horizontal' or 'none', got {inp.RANDOM_FLIP!r}"
        )
    resize = DetrResize(inp.MIN_SIZE_TRAIN, _max_size(inp.MAX_SIZE_TRAIN))
    augmentation = flip + [resize]
    if not inp.CROP.ENABLED:
        return augmentation, None

    if inp.CROP.TYPE != "absolute_range" or len(inp.CROP.SIZE) != 2:
        raise ValueError(
            "DETA's RandomSizeCrop needs INPUT.CROP.TYPE 'absolute_range' and INPUT.CROP.SIZE "
            f"[min, max] in pixels, got TYPE={inp.CROP.TYPE!r}, SIZE={list(inp.CROP.SIZE)}"
        )
    pre_sizes = inp.CROP.get("PRE_RESIZE_SIZES", [400, 500, 600])
    augmentation_with_crop = flip + [
        DetrResize(pre_sizes, None),  # the official pre-resize has no max size
        RandomSizeCrop(int(inp.CROP.SIZE[0]), int(inp.CROP.SIZE[1])),
        resize,
    ]
    return augmentation, augmentation_with_crop


class DatasetMapperError(RuntimeError):
    """An unexpected exception while mapping one image, re-raised with the image named."""


class DetaDatasetMapper:
    """Map one Detectron2 dataset dict to the inputs of the DETA meta-architecture.

    The output dict keeps the input keys and adds ``"image"`` (a CHW uint8 tensor in
    ``image_format``, of the augmented size) and, in training, ``"instances"`` (``gt_boxes`` in
    absolute XYXY of the augmented image and ``gt_classes``, contiguous ids). ``"height"`` and
    ``"width"`` stay the original image size. At test time annotations are removed.

    With ``augmentation_with_crop`` given (training only), each image gets ``augmentation`` or
    ``augmentation_with_crop`` with probability 0.5 each (official ``RandomSelect``). The official
    pipeline flips before choosing, and both lists here start with the flip; the flip and the
    choice are independent draws, so the joint distribution is the same.

    16-bit images are scaled to 8 bits (Detectron2's ``read_image`` clips them) and EXIF
    orientation is applied as in Detectron2; see :func:`deta.data.images.open_image`.
    """

    @configurable
    def __init__(
        self,
        is_train: bool = True,
        *,
        augmentation: List[T.Augmentation],
        augmentation_with_crop: Optional[List[T.Augmentation]] = None,
        image_format: str = "RGB",
        num_classes: Optional[int] = None,
    ):
        """
        Args:
            is_train (bool): training (keep and transform annotations) or test mode.
            augmentation (list[Augmentation]): the augmentations to apply (the no-crop branch).
            augmentation_with_crop (list[Augmentation], optional): the alternative crop branch,
                chosen half of the time in training; ignored at test time.
            image_format (str): image format for ``read_image``, e.g. "RGB" or "BGR".
            num_classes (int, optional): training category ids must lie in ``[0, num_classes)``;
                a larger one would otherwise index past the classifier in the loss.
        """
        self.is_train = is_train
        self.image_format = image_format
        self.num_classes = num_classes
        self.annotation_rule = AnnotationRule(num_classes=num_classes)
        if is_train and augmentation_with_crop is not None:
            self.augmentations = T.AugmentationList(
                [RandomSelect(augmentation, augmentation_with_crop, prob=0.5)]
            )
        else:
            self.augmentations = T.AugmentationList(list(augmentation))
        mode = "training" if is_train else "inference"
        logger.info(f"[DetaDatasetMapper] Augmentations used in {mode}: {self.augmentations}")

    @classmethod
    def from_config(cls, cfg, is_train: bool = True) -> Dict[str, Any]:
        augmentation, augmentation_with_crop = build_deta_augmentations(cfg, is_train)
        return {
            "is_train": is_train,
            "augmentation": augmentation,
            "augmentation_with_crop": augmentation_with_crop,
            "image_format": cfg.INPUT.FORMAT,
            "num_classes": cfg.MODEL.get("DETA", {}).get("NUM_CLASSES"),
        }

    def _read_image(self, dataset_dict: Dict[str, Any]) -> np.ndarray:
        loaded = open_image(dataset_dict["file_name"], dataset_dict.get("image_id"))
        check_image_size(dataset_dict, loaded)
        return utils.convert_PIL_to_numpy(loaded.image, self.image_format)

    def _check_annotations(self, annotations: List[Any], dataset_dict: Dict[str, Any]) -> None:
        file_name, image_id = dataset_dict["file_name"], dataset_dict.get("image_id")
        for index, ann in enumerate(annotations):
            problems, _ = self.annotation_rule.check(ann)
            # Warnings do not stop training: zero-size boxes are dropped below with the clipped
            # ones, and segmentations are not used.
            error = next((p for p in problems if PROBLEM_KINDS[p[0]][0] == ERROR), None)
            if error is None:
                continue
            kind, detail = error
            if kind == "unknown_category":
                hint = "Check the dataset's categories"
                if self.num_classes is not None:
                    hint += f" and MODEL.DETA.NUM_CLASSES={self.num_classes}"
            else:
                hint = f"Fix or remove this annotation: {ann!r:.200}"
            where = annotation_location(ann, index, file_name, image_id)
            raise DatasetError(f"{where}: {detail}. {hint}")

    @staticmethod
    def _annotations_to_instances(
        annotations: List[Dict[str, Any]],
        transforms: T.TransformList,
        original_hw: Tuple[int, int],
        image_hw: Tuple[int, int],
    ) -> Instances:
        annotations = [a for a in annotations if a.get("iscrowd", 0) == 0]
        boxes = np.array(
            [BoxMode.convert(a["bbox"], a["bbox_mode"], BoxMode.XYXY_ABS) for a in annotations],
            dtype=np.float64,
        ).reshape(-1, 4)
        classes = np.array([a["category_id"] for a in annotations], dtype=np.int64)
        if len(boxes):
            # Clamp to the original image first (official ConvertCocoPolysToMask); flip, resize
            # and crop are per-axis monotone, so one final clip equals the official per-step clips.
            boxes = _clip(boxes, *original_hw)
            boxes = _clip(transforms.apply_box(boxes), *image_hw)
        boxes_t = torch.as_tensor(boxes, dtype=torch.float32)
        # Strictly positive width and height, tested in the output precision (official keep rule).
        keep = (boxes_t[:, 2] > boxes_t[:, 0]) & (boxes_t[:, 3] > boxes_t[:, 1])
        instances = Instances(image_hw)
        instances.gt_boxes = Boxes(boxes_t[keep])
        instances.gt_classes = torch.as_tensor(classes)[keep]
        return instances

    def __call__(self, dataset_dict: Dict[str, Any]) -> Dict[str, Any]:
        """
        Args:
            dataset_dict (dict): one image in Detectron2's standard dataset format.

        Returns:
            dict: the mapped copy, see the class docstring.

        Raises:
            FileNotFoundError, ImageReadError: the image file is missing or unreadable.
            SizeMismatchError: the image size differs from ``width``/``height``.
            DatasetError: an annotation cannot be trained on.
            DatasetMapperError: anything else failed; the original is chained as ``__cause__``.
        """
        try:
            return self._map(dataset_dict)
        except Exception as e:
            file_name = str(dataset_dict.get("file_name"))
            if file_name in str(e):  # our own errors already name the image
                raise
            where = image_location(file_name, dataset_dict.get("image_id"))
            raise DatasetMapperError(
                f"DetaDatasetMapper failed on {where}: {type(e).__name__}: {e}"
            ) from e

    def _map(self, dataset_dict: Dict[str, Any]) -> Dict[str, Any]:
        dataset_dict = copy.deepcopy(dataset_dict)  # the caller's dict must stay untouched
        image = self._read_image(dataset_dict)
        original_hw = image.shape[:2]
        annotations = dataset_dict.pop("annotations", [])
        if self.is_train:
            self._check_annotations(annotations, dataset_dict)

        aug_input = T.AugInput(image)
        transforms = self.augmentations(aug_input)
        image = aug_input.image
        image_hw = image.shape[:2]
        dataset_dict["image"] = torch.as_tensor(np.ascontiguousarray(image.transpose(2, 0, 1)))

        if self.is_train:
            dataset_dict["instances"] = self._annotations_to_instances(
                annotations, transforms, original_hw, image_hw
            )
        return dataset_dict


def _clip(boxes: np.ndarray, h: int, w: int) -> np.ndarray:
    boxes = boxes.copy()
    boxes[:, 0::2] = boxes[:, 0::2].clip(0, w)
    boxes[:, 1::2] = boxes[:, 1::2].clip(0, h)
    return boxes
