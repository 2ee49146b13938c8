"""Image decoding as training does it, and the check that an image has the size its dataset says.

Images are decoded by :func:`open_image` rather than Detectron2's ``read_image``, which clips
16-bit images to 0..255 instead of scaling them. EXIF orientation is applied the same way as in
Detectron2, so a dataset's ``width``/``height`` and boxes must describe the rotated image.
"""

from dataclasses import dataclass
from typing import Any, Dict, Optional, Tuple

import numpy as np
from PIL import Image

from detectron2.data import detection_utils as utils
from detectron2.utils.file_io import PathManager

__all__ = [
    "ORIENTATION_NAMES",
    "ImageReadError",
    "LoadedImage",
    "check_image_size",
    "image_location",
    "open_image",
    "read_image",
    "size_mismatch_message",
]

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
# EXIF orientation tag -> what it does to the stored pixels, for messages.
ORIENTATION_NAMES = {
    2: "mirrored",
    3: "rotated 180°",
    4: "flipped vertically",
    5: "transposed",
    6: "rotated 90° clockwise",
    7: "transversed",
    8: "rotated 90° counter-clockwise",
}


class ImageReadError(OSError):
    """An image file that exists but cannot be decoded; the message names the file."""


class _UnsupportedPixels(Exception):
    pass


def image_location(file_name: Any, image_id: Any = None) -> str:
    """``"image 'a.jpg' (image_id=3)"``: how every message names an image."""
    if file_name is None:
        return f"image_id={image_id}"
    return f"image {str(file_name)!r} (image_id={image_id})"


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


def size_mismatch_message(where: str, loaded: LoadedImage, expected: Tuple[Any, Any]) -> str:
    """Why an image's size differs from the dataset's, and what to fix.

    Args:
        where (str): the image, as :func:`image_location` names it.
        loaded (LoadedImage): the opened image.
        expected (tuple): (width, height) from the dataset.

    Returns:
        str: the message; it explains a mismatch that EXIF orientation causes.
    """
    w, h = loaded.size
    message = f"{where} is {w}x{h} (width x height) but the json says {expected[0]}x{expected[1]}."
    if loaded.orientation != 1 and tuple(loaded.stored_size) == tuple(expected):
        how = ORIENTATION_NAMES[loaded.orientation]
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
            raise utils.SizeMismatchError(size_mismatch_message(where, loaded, expected))
    dataset_dict.setdefault("width", w)
    dataset_dict.setdefault("height", h)
