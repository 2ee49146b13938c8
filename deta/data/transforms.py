"""The official DETA/DETR training augmentations as Detectron2 ``Augmentation`` s.

They follow the official ``datasets/transforms.py`` (inherited from DETR) draw for draw in
distribution, and reproduce its output sizes exactly:

* :class:`DetrResize` is ``RandomResize``: the long side is truncated, not rounded, so a 640x480
  image at scale 800 becomes 1066x800 (Detectron2's ``ResizeShortestEdge`` gives 1067x800).
* :class:`RandomSizeCrop` is ``RandomSizeCrop``: crop width and height drawn inclusively.
* :class:`RandomSelect` is ``RandomSelect``: one of two augmentation lists, the first with ``prob``.

Randomness: like Detectron2's own augmentations (``RandomFlip`` etc.), everything here draws from
numpy's global RNG (``np.random``), which Detectron2 seeds per data-loader worker. The official
code uses Python's ``random`` and ``torch.randint`` instead; the distributions are the same, the
streams are not.
"""

from typing import Optional, Sequence, Tuple, Union

import numpy as np
from PIL import Image

from detectron2.data import transforms as T

__all__ = ["DetrResize", "RandomSelect", "RandomSizeCrop", "detr_resize_shape"]


def detr_resize_shape(h: int, w: int, size: int, max_size: Optional[int] = None) -> Tuple[int, int]:
    """The official output size for resizing the short side of an (h, w) image to ``size``.

    The rule (official ``get_size_with_aspect_ratio``):

    1. if ``max_size`` is set and ``long / short * size > max_size``, then
       ``size = int(round(max_size * short / long))`` (Python's round-half-to-even);
    2. if the short side already equals ``size``, the size is unchanged;
    3. otherwise the short side becomes ``size`` and the long side ``int(size * long / short)``,
       truncated. The long side can therefore end up slightly above ``max_size``.

    Args:
        h, w (int): input height and width.
        size (int): target short side.
        max_size (int, optional): cap on the long side (applied through ``size`` as above).

    Returns:
        tuple[int, int]: the output (height, width).
    """
    short, long = (w, h) if w <= h else (h, w)
    if max_size is not None and float(long) / float(short) * size > max_size:
        size = int(round(max_size * float(short) / float(long)))
    if short == size:
        return h, w
    # Multiply before dividing, as the official code does: it decides where truncation lands.
    if w < h:
        return int(size * h / w), size
    return size, int(size * w / h)


class DetrResize(T.Augmentation):
    """Resize the short side to a random choice of ``short_edge_lengths``, DETR style.

    The output size follows :func:`detr_resize_shape`. An image whose size would not change gets a
    ``NoOpTransform``, as the official code returns it untouched. Resampling is PIL bilinear, as in
    the official torchvision ``F.resize`` on PIL images.
    """

    def __init__(
        self,
        short_edge_lengths: Sequence[int],
        max_size: Optional[int] = None,
        interp: int = Image.BILINEAR,
    ):
        """
        Args:
            short_edge_lengths (sequence[int]): candidate short sides, chosen uniformly.
            max_size (int, optional): long-side cap of the official rule; ``None`` for no cap.
            interp: PIL interpolation mode.
        """
        super().__init__()
        if len(short_edge_lengths) == 0:
            raise ValueError("DetrResize needs at least one short edge length")
        self.short_edge_lengths = tuple(int(s) for s in short_edge_lengths)
        self.max_size = None if max_size is None else int(max_size)
        self.interp = interp

    def get_transform(self, image: np.ndarray) -> T.Transform:
        h, w = image.shape[:2]
        if len(self.short_edge_lengths) == 1:
            size = self.short_edge_lengths[0]  # no draw, so test-time mapping leaves the RNG alone
        else:
            size = self.short_edge_lengths[np.random.randint(len(self.short_edge_lengths))]
        new_h, new_w = detr_resize_shape(h, w, size, self.max_size)
        if (new_h, new_w) == (h, w):
            return T.NoOpTransform()
        return T.ResizeTransform(h, w, new_h, new_w, self.interp)


class RandomSizeCrop(T.Augmentation):
    """Crop a random window whose width and height are drawn inclusively from [min, max].

    Width is ``randint(min_size, min(W, max_size))`` and height likewise, then the offset is
    uniform over all valid positions. Boxes are cropped through the returned ``CropTransform``;
    the mapper clips them and drops empty ones, as the official ``crop`` does.

    Unlike the official code, which raises when the image is smaller than ``min_size``, a side
    shorter than ``min_size`` is kept whole. The official pipeline never hits this case because
    it pre-resizes the short side to at least 400 before a 384-600 crop.
    """

    def __init__(self, min_size: int, max_size: int):
        """
        Args:
            min_size (int): smallest crop side.
            max_size (int): largest crop side.
        """
        super().__init__()
        if not 0 < min_size <= max_size:
            raise ValueError(
                f"RandomSizeCrop needs 0 < min_size <= max_size, got {min_size}, {max_size}"
            )
        self.min_size = int(min_size)
        self.max_size = int(max_size)

    def _draw_side(self, length: int) -> int:
        high = min(length, self.max_size)
        return int(np.random.randint(min(self.min_size, high), high + 1))

    def get_transform(self, image: np.ndarray) -> T.Transform:
        h, w = image.shape[:2]
        # Same draw order as the official code: width, height, then row and column offsets.
        crop_w = self._draw_side(w)
        crop_h = self._draw_side(h)
        y0 = int(np.random.randint(0, h - crop_h + 1))
        x0 = int(np.random.randint(0, w - crop_w + 1))
        return T.CropTransform(x0, y0, crop_w, crop_h)


AugmentationOrList = Union[T.Augmentation, Sequence[T.Augmentation]]


def _as_augmentation(aug: AugmentationOrList) -> T.Augmentation:
    if isinstance(aug, T.Augmentation):
        return aug
    return T.AugmentationList(list(aug))


class RandomSelect(T.Augmentation):
    """Apply ``first`` with probability ``prob``, otherwise ``second`` (official ``RandomSelect``).

    Each branch is an augmentation or a list of augmentations applied in order. Like
    ``AugmentationList``, this works through ``__call__`` on an ``AugInput`` only: a branch may
    need the output of its previous step, so there is no single ``get_transform``.
    """

    def __init__(self, first: AugmentationOrList, second: AugmentationOrList, prob: float = 0.5):
        """
        Args:
            first (Augmentation or list[Augmentation]): the branch taken with probability ``prob``.
            second (Augmentation or list[Augmentation]): the other branch.
            prob (float): probability of ``first``.
        """
        super().__init__()
        if not 0.0 <= prob <= 1.0:
            raise ValueError(f"RandomSelect prob must be in [0, 1], got {prob}")
        self.first = _as_augmentation(first)
        self.second = _as_augmentation(second)
        self.prob = prob

    def get_transform(self, *args) -> T.Transform:
        raise NotImplementedError("RandomSelect must be applied with __call__ on an AugInput")

    def __call__(self, aug_input: T.AugInput) -> T.Transform:
        branch = self.first if np.random.rand() < self.prob else self.second
        return branch(aug_input)

    def __repr__(self) -> str:
        return f"RandomSelect(first={self.first}, second={self.second}, prob={self.prob})"

    __str__ = __repr__
