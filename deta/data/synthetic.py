"""A seeded, COCO-format synthetic shape-detection dataset rendered with PIL and numpy.

Each image has a textured background (a two-colour gradient, low-frequency colour noise, soft
blobs, thin lines and pixel noise) and 0 to ``max_objects`` filled shapes of distinct classes with
random colours. Later shapes occlude earlier ones. The annotation box is the full (amodal) extent
of the shape, and a placement that would hide more than ``1 - min_visible`` of an earlier shape is
re-drawn, so every labelled object stays recognisable. The data is small enough to train and
evaluate a tiny DETA on CPU in minutes.

Layout under ``root``::

    train/000001.jpg ...            val/000001.jpg ...
    annotations/instances_train.json    annotations/instances_val.json
    manifest.json                   # written last; records the arguments of a complete run

Every image is drawn from its own generator seeded with ``(seed, split, index)``, so the output is
byte-identical for the same arguments (given the same Pillow/libjpeg build).
"""

import json
import logging
import math
import os
import time
from typing import Any, Dict, List, NamedTuple, Optional, Tuple

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

__all__ = [
    "DEMO_DATA",
    "SYNTHETIC_CATEGORIES",
    "generate_synthetic_coco",
    "render_synthetic_image",
]

logger = logging.getLogger(__name__)

# Category ids are 1 + the index in this tuple.
SYNTHETIC_CATEGORIES = ("circle", "square", "triangle", "star", "cross", "ring")

# The ``generate_synthetic_coco`` arguments of the demo dataset (tools/run_demo.py,
# compare_assignment.py, visualize_assignment.py): few, fairly large objects on small images,
# learnable from scratch in minutes on two cores, while keeping 6 classes, sizes from 20 px to 60%
# of the short side, occlusion (every object keeps >= 50% visible), textured backgrounds and 5%
# empty images. Changing it changes the demo's data, so its recorded numbers.
DEMO_DATA = dict(
    num_train=2000,
    num_val=100,
    seed=0,
    min_long_side=144,
    max_long_side=192,
    min_aspect=0.75,
    min_objects=1,
    max_objects=4,
    empty_fraction=0.05,
    min_object_size=20.0,
    max_object_frac=0.6,
    min_visible=0.5,
)

_FORMAT_VERSION = 1
_SPLITS = (("train", 0), ("val", 1))  # split name and its code in the per-image seed
_SUPERSAMPLE = 4  # anti-aliasing factor for shape masks
_MARGIN = 1.0  # shapes keep this many pixels from the border, so rounded boxes stay inside


def _regular_polygon(n: int, phase: float = -math.pi / 2) -> np.ndarray:
    angles = phase + 2 * math.pi * np.arange(n) / n
    return np.stack([np.cos(angles), np.sin(angles)], axis=1)


def _star() -> np.ndarray:
    pts = _regular_polygon(10)
    pts[1::2] *= 0.45  # inner vertices
    return pts


def _cross(arm: float = 0.34) -> np.ndarray:
    a = arm
    return np.array(
        [(-a, -1), (a, -1), (a, -a), (1, -a), (1, a), (a, a), (a, 1), (-a, 1), (-a, a), (-1, a)]
        + [(-1, -a), (-a, -a)],
        dtype=np.float64,
    )


# Unit outlines within [-1, 1]^2. A ring is the circle outline with an inner hole.
_OUTLINES = {
    "circle": _regular_polygon(64),
    "square": np.array([(-1, -1), (1, -1), (1, 1), (-1, 1)], dtype=np.float64),
    "triangle": np.array([(0, -1), (1, 1), (-1, 1)], dtype=np.float64),
    "star": _star(),
    "cross": _cross(),
    "ring": _regular_polygon(64),
}
_RING_HOLE = 0.55  # inner radius / outer radius
_ROTATES = ("square", "triangle", "star", "cross")


def _background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Return an (h, w, 3) float32 textured background in [0, 255]."""
    c0, c1 = rng.uniform(30, 225, size=(2, 3))
    angle = rng.uniform(0, 2 * math.pi)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    t = xx * math.cos(angle) + yy * math.sin(angle)
    t = (t - t.min()) / max(float(t.max() - t.min()), 1.0)
    img = c0.astype(np.float32) + t[..., None] * (c1 - c0).astype(np.float32)

    # Low-frequency colour noise: a coarse random grid, upsampled bilinearly.
    gh, gw = int(rng.integers(3, 9)), int(rng.integers(3, 9))
    grid = np.clip(128 + rng.normal(0, 25, size=(gh, gw, 3)), 0, 255).astype(np.uint8)
    low = np.asarray(Image.fromarray(grid).resize((w, h), Image.BILINEAR), dtype=np.float32)
    img += low - 128

    canvas = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))
    # Soft, blurred blobs: texture without crisp edges that could pass for a shape.
    for _ in range(int(rng.integers(0, 4))):
        mask = Image.new("L", (w, h), 0)
        cx, cy = rng.uniform(0, w), rng.uniform(0, h)
        rx, ry = rng.uniform(0.1, 0.4) * w, rng.uniform(0.1, 0.4) * h
        ImageDraw.Draw(mask).ellipse([cx - rx, cy - ry, cx + rx, cy + ry], fill=90)
        mask = mask.filter(ImageFilter.GaussianBlur(radius=float(rng.uniform(6, 14))))
        colour = tuple(int(v) for v in rng.integers(0, 256, size=3))
        canvas.paste(Image.new("RGB", (w, h), colour), (0, 0), mask)
    # Thin, lower-contrast lines as clutter.
    draw = ImageDraw.Draw(canvas)
    for _ in range(int(rng.integers(0, 7))):
        x0, x1 = rng.uniform(0, w, size=2)
        y0, y1 = rng.uniform(0, h, size=2)
        base = img[int(min(y0, h - 1)), int(min(x0, w - 1))]
        colour = tuple(int(v) for v in np.clip(base + rng.uniform(-60, 60, size=3), 0, 255))
        draw.line([(x0, y0), (x1, y1)], fill=colour, width=int(rng.integers(1, 3)))
    return np.asarray(canvas, dtype=np.float32).copy()


def _shape_offsets(
    rng: np.random.Generator, name: str, size: float, height: int, width: int
) -> np.ndarray:
    """Vertices of a shape of extent ~``size`` relative to its centre, as an (N, 2) array.

    The shape is scaled down if needed to fit inside the image with the margin.
    """
    stretch = math.exp(rng.uniform(-0.2, 0.2))  # mild aspect change so boxes are not all square
    scale = np.array([math.sqrt(stretch), 1.0 / math.sqrt(stretch)]) * size / 2
    pts = _OUTLINES[name] * scale
    if name in _ROTATES:
        theta = math.radians(rng.uniform(-20, 20))
        rot = np.array([[math.cos(theta), -math.sin(theta)], [math.sin(theta), math.cos(theta)]])
        pts = pts @ rot.T
    extent = pts.max(axis=0) - pts.min(axis=0)
    return pts * min(1.0, (width - 2 * _MARGIN) / extent[0], (height - 2 * _MARGIN) / extent[1])


class _Placement(NamedTuple):
    patch: Tuple[int, int, int, int]  # integer x0, y0, x1, y1 of the pixels the shape touches
    bbox: List[float]  # exact shape extent x0, y0, x1, y1
    alpha: np.ndarray  # anti-aliased coverage in [0, 1] over the patch
    mask: np.ndarray  # the pixels the shape owns: alpha >= 0.5


def _place(
    rng: np.random.Generator, name: str, offsets: np.ndarray, height: int, width: int
) -> _Placement:
    """Put a shape at a uniformly random position that keeps it inside the image margin."""
    lo, hi = offsets.min(axis=0), offsets.max(axis=0)
    cx = rng.uniform(_MARGIN - lo[0], width - _MARGIN - hi[0])
    cy = rng.uniform(_MARGIN - lo[1], height - _MARGIN - hi[1])
    x0, y0 = int(math.floor(cx + lo[0])), int(math.floor(cy + lo[1]))
    x1, y1 = int(math.ceil(cx + hi[0])), int(math.ceil(cy + hi[1]))
    alpha = _shape_alpha(name, offsets + (cx, cy), x0, y0, x1 - x0, y1 - y0)
    bbox = [float(cx + lo[0]), float(cy + lo[1]), float(cx + hi[0]), float(cy + hi[1])]
    return _Placement((x0, y0, x1, y1), bbox, alpha, alpha >= 0.5)


def _shape_alpha(name: str, pts: np.ndarray, x0: int, y0: int, pw: int, ph: int) -> np.ndarray:
    """Anti-aliased coverage in [0, 1] of the absolute polygon ``pts`` over a (ph, pw) patch."""
    s = _SUPERSAMPLE
    mask = Image.new("L", (pw * s, ph * s), 0)
    draw = ImageDraw.Draw(mask)

    # PIL puts integer coordinates at pixel centres; shift so that edges land on pixel borders.
    def to_canvas(p: np.ndarray) -> List[Tuple[float, float]]:
        return [(float(x), float(y)) for x, y in (p - (x0, y0)) * s - 0.5]

    draw.polygon(to_canvas(pts), fill=255)
    if name == "ring":
        centre = pts.mean(axis=0)
        draw.polygon(to_canvas(centre + (pts - centre) * _RING_HOLE), fill=0)
    mask = mask.resize((pw, ph), Image.BOX)
    return np.asarray(mask, dtype=np.float32) / 255.0


def _pick_colour(rng: np.random.Generator, under: np.ndarray) -> np.ndarray:
    """A random colour far (in RGB) from ``under``, the mean colour it will be drawn over."""
    best, best_dist = None, -1.0
    for _ in range(24):
        colour = rng.uniform(0, 255, size=3)
        dist = float(np.linalg.norm(colour - under))
        if dist >= 130:
            return colour
        if dist > best_dist:
            best, best_dist = colour, dist
    return best


def _pixels_lost(owner: np.ndarray, placed: _Placement, num_shapes: int) -> np.ndarray:
    """Per earlier shape, how many of its visible pixels ``placed`` would cover."""
    x0, y0, x1, y1 = placed.patch
    covered = owner[y0:y1, x0:x1][placed.mask]
    return np.bincount(covered[covered >= 0], minlength=num_shapes)[:num_shapes]


def _paint(rng: np.random.Generator, img: np.ndarray, placed: _Placement) -> None:
    """Blend the placed shape into ``img`` in a colour that stands out from what is under it."""
    x0, y0, x1, y1 = placed.patch
    patch = img[y0:y1, x0:x1]
    colour = _pick_colour(rng, patch[placed.mask].mean(axis=0))
    # A mild linear shading across the shape, so objects are not flat colour cards.
    shade = np.linspace(-1, 1, y1 - y0, dtype=np.float32)[:, None, None] * rng.uniform(0, 20)
    fill = np.clip(colour.astype(np.float32) + shade, 0, 255)
    a = placed.alpha[..., None]
    img[y0:y1, x0:x1] = patch * (1 - a) + fill * a


def render_synthetic_image(
    rng: np.random.Generator,
    height: int,
    width: int,
    num_objects: int,
    *,
    min_object_size: float = 10.0,
    max_object_frac: float = 0.5,
    min_visible: float = 0.3,
    max_tries: int = 10,
) -> Tuple[np.ndarray, List[Dict[str, Any]]]:
    """Render one image and its objects.

    Args:
        rng (np.random.Generator): the only source of randomness.
        height, width (int): image size.
        num_objects (int): shapes to attempt; one is skipped if no valid placement is found in
            ``max_tries`` draws.
        min_object_size (float): smallest shape extent in pixels.
        max_object_frac (float): largest shape extent as a fraction of the short image side.
        min_visible (float): every drawn shape keeps at least this fraction of its pixels visible.
        max_tries (int): placement attempts per shape.

    Returns:
        tuple: the (height, width, 3) uint8 RGB image and a list of objects, each a dict with
        ``category_index`` (0-based into :data:`SYNTHETIC_CATEGORIES`), ``bbox`` (absolute
        x0, y0, x1, y1 of the full shape) and ``area`` (the shape's anti-aliased pixel area).
    """
    img = _background(rng, height, width)
    owner = np.full((height, width), -1, dtype=np.int32)  # index of the top-most shape per pixel
    full = np.zeros(0)  # pixel count of each shape's mask
    visible = np.zeros(0)  # pixel count of each shape's mask not covered by later shapes
    objects: List[Dict[str, Any]] = []
    max_size = max(min_object_size, max_object_frac * min(height, width))
    for _ in range(num_objects):
        name = SYNTHETIC_CATEGORIES[int(rng.integers(len(SYNTHETIC_CATEGORIES)))]
        # Log-uniform sizes: as many small as medium and large objects.
        size = math.exp(rng.uniform(math.log(min_object_size), math.log(max_size)))
        offsets = _shape_offsets(rng, name, size, height, width)
        for _try in range(max_tries):
            placed = _place(rng, name, offsets, height, width)
            lost = _pixels_lost(owner, placed, len(full))
            if placed.mask.any() and np.all(visible - lost >= min_visible * full):
                break
        else:
            continue  # no placement keeps the earlier shapes visible enough: skip this one
        _paint(rng, img, placed)
        x0, y0, x1, y1 = placed.patch
        mask = placed.mask
        owner[y0:y1, x0:x1][mask] = len(full)
        visible, full = np.append(visible - lost, mask.sum()), np.append(full, mask.sum())
        objects.append(
            {
                "category_index": SYNTHETIC_CATEGORIES.index(name),
                "bbox": placed.bbox,
                "area": float(placed.alpha.sum()),
            }
        )
    img += rng.normal(0, rng.uniform(2, 6), size=img.shape).astype(np.float32)  # sensor noise
    return np.clip(np.rint(img), 0, 255).astype(np.uint8), objects


def _manifest_path(root: str) -> str:
    return os.path.join(root, "manifest.json")


def _json_path(root: str, split: str) -> str:
    return os.path.join(root, "annotations", f"instances_{split}.json")


def _image_name(index: int) -> str:
    return f"{index + 1:06d}.jpg"


def _is_complete(root: str, args: Dict[str, Any]) -> bool:
    try:
        with open(_manifest_path(root)) as f:
            manifest = json.load(f)
    except (OSError, ValueError):
        return False
    if manifest.get("args") != args:
        return False
    for split, _ in _SPLITS:
        if not os.path.isfile(_json_path(root, split)):
            return False
        names = (_image_name(i) for i in range(args[f"num_{split}"]))
        if not all(os.path.isfile(os.path.join(root, split, n)) for n in names):
            return False
    return True


def _write_json(path: str, obj: Any) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, separators=(",", ":"))
    os.replace(tmp, path)  # never leave a half-written json that looks complete


def _render_indexed(rng: np.random.Generator, empty: bool, args: Dict[str, Any]):
    """One image of a split: its size and object count drawn from ``rng``, then rendered."""
    long_side = int(rng.integers(args["min_long_side"], args["max_long_side"] + 1))
    short_side = int(round(long_side * rng.uniform(args["min_aspect"], 1.0)))
    h, w = (short_side, long_side) if rng.random() < 0.5 else (long_side, short_side)
    n = 0 if empty else int(rng.integers(args["min_objects"], args["max_objects"] + 1))
    return render_synthetic_image(
        rng,
        h,
        w,
        n,
        min_object_size=args["min_object_size"],
        max_object_frac=args["max_object_frac"],
        min_visible=args["min_visible"],
    )


def _coco_annotation(obj: Dict[str, Any], ann_id: int, image_id: int) -> Dict[str, Any]:
    x0, y0, x1, y1 = (round(v, 2) for v in obj["bbox"])
    return {
        "id": ann_id,
        "image_id": image_id,
        "category_id": obj["category_index"] + 1,
        "bbox": [x0, y0, round(x1 - x0, 2), round(y1 - y0, 2)],
        "area": round(obj["area"], 2),
        "iscrowd": 0,
        "segmentation": [],
    }


def _coco_dict(split: str, images: List[dict], annotations: List[dict]) -> Dict[str, Any]:
    categories = [
        {"id": i + 1, "name": name, "supercategory": "shape"}
        for i, name in enumerate(SYNTHETIC_CATEGORIES)
    ]
    return {
        "info": {
            "description": f"DETA synthetic shapes ({split})",
            "version": str(_FORMAT_VERSION),
        },
        "licenses": [],
        "images": images,
        "annotations": annotations,
        "categories": categories,
    }


def _generate_split(root: str, split: str, code: int, num: int, args: Dict[str, Any]) -> dict:
    image_dir = os.path.join(root, split)
    os.makedirs(image_dir, exist_ok=True)
    for name in os.listdir(image_dir):  # stale images of an earlier, larger run
        if name.endswith(".jpg") and name[:-4].isdigit():
            os.remove(os.path.join(image_dir, name))

    num_empty = int(round(num * args["empty_fraction"]))
    empty_rng = np.random.default_rng([args["seed"], code])
    empty = set(empty_rng.choice(num, size=num_empty, replace=False).tolist()) if num else set()
    images, annotations = [], []
    for index in range(num):
        rng = np.random.default_rng([args["seed"], code, index])
        image, objects = _render_indexed(rng, index in empty, args)
        file_name = _image_name(index)
        Image.fromarray(image).save(
            os.path.join(image_dir, file_name), format="JPEG", quality=args["jpeg_quality"]
        )
        image_id = index + 1
        h, w = image.shape[:2]
        images.append({"id": image_id, "file_name": file_name, "height": h, "width": w})
        for obj in objects:
            annotations.append(_coco_annotation(obj, len(annotations) + 1, image_id))
    _write_json(_json_path(root, split), _coco_dict(split, images, annotations))
    num_with_objects = len({a["image_id"] for a in annotations})
    return {"images": len(images), "annotations": len(annotations), "empty": num - num_with_objects}


# The arguments recorded in the manifest, in order, with their types.
_ARG_TYPES = {
    "num_train": int,
    "num_val": int,
    "seed": int,
    "min_long_side": int,
    "max_long_side": int,
    "min_aspect": float,
    "min_objects": int,
    "max_objects": int,
    "empty_fraction": float,
    "min_object_size": float,
    "max_object_frac": float,
    "min_visible": float,
    "jpeg_quality": int,
}


def _check_args(args: Dict[str, Any]) -> None:
    if not 0 <= args["empty_fraction"] <= 1 or not 1 <= args["min_objects"] <= args["max_objects"]:
        raise ValueError(
            "need 0 <= empty_fraction <= 1 and 1 <= min_objects <= max_objects, got "
            f"empty_fraction={args['empty_fraction']}, min_objects={args['min_objects']}, "
            f"max_objects={args['max_objects']}"
        )
    if not 0 < args["min_aspect"] <= 1 or not 0 < args["min_long_side"] <= args["max_long_side"]:
        raise ValueError(
            "need 0 < min_aspect <= 1 and 0 < min_long_side <= max_long_side, got "
            f"min_aspect={args['min_aspect']}, min_long_side={args['min_long_side']}, "
            f"max_long_side={args['max_long_side']}"
        )
    if not 0 < args["min_object_size"] or args["num_train"] < 0 or args["num_val"] < 0:
        raise ValueError(
            f"need min_object_size > 0 and image counts >= 0, got "
            f"min_object_size={args['min_object_size']}, num_train={args['num_train']}, "
            f"num_val={args['num_val']}"
        )


def _write_dataset(root: str, args: Dict[str, Any]) -> Dict[str, dict]:
    os.makedirs(os.path.join(root, "annotations"), exist_ok=True)
    if os.path.exists(_manifest_path(root)):
        os.remove(_manifest_path(root))  # the old copy is incomplete from here on
    stats = {}
    for split, code in _SPLITS:
        stats[split] = _generate_split(root, split, code, args[f"num_{split}"], args)
    _write_json(_manifest_path(root), {"args": args, "stats": stats})
    logger.info("Wrote the DETA synthetic dataset to %s: %s", root, stats)
    return stats


def generate_synthetic_coco(
    root: str,
    num_train: int = 2000,
    num_val: int = 200,
    seed: int = 0,
    *,
    min_long_side: int = 192,
    max_long_side: int = 320,
    min_aspect: float = 0.6,
    min_objects: int = 1,
    max_objects: int = 8,
    empty_fraction: float = 0.05,
    min_object_size: float = 10.0,
    max_object_frac: float = 0.5,
    min_visible: float = 0.3,
    jpeg_quality: int = 90,
    force: bool = False,
) -> Dict[str, Any]:
    """Write the synthetic dataset under ``root``, unless a complete copy of these arguments exists.

    Args:
        root (str): output directory (created if needed).
        num_train, num_val (int): number of images per split.
        seed (int): base seed; the same arguments give byte-identical files.
        min_long_side, max_long_side (int): range of the long image side in pixels (inclusive).
        min_aspect (float): smallest short/long side ratio (portrait and landscape equally likely).
        min_objects, max_objects (int): objects per non-empty image, drawn uniformly (inclusive).
        empty_fraction (float): fraction of images (rounded to a count per split) with no objects.
        min_object_size (float): smallest object extent in pixels.
        max_object_frac (float): largest object extent as a fraction of the short image side.
        min_visible (float): least visible fraction of any labelled object under occlusion.
        jpeg_quality (int): JPEG quality of the saved images.
        force (bool): regenerate even when a matching complete copy exists.

    Returns:
        dict: ``root``, ``generated`` (False for a no-op), ``seconds``, the per-split json and image
        paths (``train_json``, ``train_images``, ``val_json``, ``val_images``) and ``stats`` (per
        split: images, annotations, empty images; ``None`` for a no-op).
    """
    given = dict(locals())
    args = {"format_version": _FORMAT_VERSION}
    args.update((key, kind(given[key])) for key, kind in _ARG_TYPES.items())
    _check_args(args)
    result: Dict[str, Any] = {"root": root}
    for split, _ in _SPLITS:
        result[f"{split}_json"] = _json_path(root, split)
        result[f"{split}_images"] = os.path.join(root, split)

    start = time.perf_counter()
    stats: Optional[Dict[str, dict]] = None
    if force or not _is_complete(root, args):
        stats = _write_dataset(root, args)
    result.update(generated=stats is not None, seconds=time.perf_counter() - start, stats=stats)
    return result
