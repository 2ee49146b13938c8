"""Messy-dataset robustness: every bad input works correctly or stops with a clear error.

Each case builds its files in a temporary folder. Errors must name the file and the image id, and
for annotation problems the annotation id.
"""

import json
import os
import struct
import tempfile
import unittest
import zlib

import numpy as np
import torch
from PIL import Image

from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog, MetadataCatalog, build_detection_test_loader
from detectron2.data import detection_utils as utils
from detectron2.data import transforms as T
from detectron2.data.common import DatasetFromList, MapDataset
from detectron2.structures import BoxMode

from deta.config import add_deta_config
from deta.data import DetaDatasetMapper, detr_resize_shape
from deta.data.dataset_mapper import DatasetMapperError
from deta.data.datasets import (
    load_deta_coco_json,
    register_deta_coco_instances,
    use_deta_coco_loader,
)
from deta.data.validation import DatasetError, ImageReadError, open_image, read_image

_SCALES = (480, 512, 544, 576, 608, 640, 672, 704, 736, 768, 800)


def official_cfg():
    """The official resize/crop rules (configs/Base-DETA.yaml), set here so the test is stable."""
    cfg = get_cfg()
    add_deta_config(cfg)
    cfg.INPUT.FORMAT = "RGB"
    cfg.INPUT.MIN_SIZE_TRAIN = _SCALES
    cfg.INPUT.MAX_SIZE_TRAIN = 1333
    cfg.INPUT.MIN_SIZE_TEST = 800
    cfg.INPUT.MAX_SIZE_TEST = 1333
    cfg.INPUT.RANDOM_FLIP = "horizontal"
    cfg.INPUT.CROP.ENABLED = True
    cfg.INPUT.CROP.TYPE = "absolute_range"
    cfg.INPUT.CROP.SIZE = [384, 600]
    cfg.INPUT.CROP.PRE_RESIZE_SIZES = [400, 500, 600]
    cfg.MODEL.DETA.NUM_CLASSES = 3
    return cfg


def write_rgb(path, h, w, seed=0):
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)).save(path)


def write_png16(path, pixels):
    """Write a 16-bit grey (HxW) or RGB (HxWx3) PNG; PIL cannot write 16-bit RGB itself."""
    h, w = pixels.shape[:2]
    color_type = 2 if pixels.ndim == 3 else 0
    raw = b"".join(b"\x00" + pixels[y].astype(">u2").tobytes() for y in range(h))

    def chunk(tag, data):
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))

    header = struct.pack(">IIBBBBB", w, h, 16, color_type, 0, 0, 0)
    with open(path, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header))
        f.write(chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


def ann(x, y, w, h, cat=0, ann_id=None, iscrowd=0):
    """A Detectron2 annotation dict (XYWH_ABS), as the loader returns it."""
    a = {"bbox": [x, y, w, h], "bbox_mode": BoxMode.XYWH_ABS, "category_id": cat}
    a["iscrowd"] = iscrowd
    if ann_id is not None:
        a["id"] = ann_id
    return a


def record(path, h, w, annotations=(), image_id=1):
    return {
        "file_name": path,
        "height": h,
        "width": w,
        "image_id": image_id,
        "annotations": list(annotations),
    }


def write_coco(path, images, annotations, categories=None):
    categories = categories or [{"id": i, "name": f"c{i}"} for i in (1, 2, 3)]
    with open(path, "w") as f:
        json.dump({"images": images, "annotations": annotations, "categories": categories}, f)


def coco_ann(ann_id, image_id, bbox, cat=1, iscrowd=0):
    return {
        "id": ann_id,
        "image_id": image_id,
        "category_id": cat,
        "bbox": bbox,
        "iscrowd": iscrowd,
    }


def train_mapper(**kwargs):
    kwargs.setdefault("augmentation", [])
    return DetaDatasetMapper(is_train=True, **kwargs)


class _TmpDirCase(unittest.TestCase):
    def setUp(self):
        self._tmp = tempfile.TemporaryDirectory()
        self.dir = self._tmp.name
        self.addCleanup(self._tmp.cleanup)

    def path(self, name):
        return os.path.join(self.dir, name)

    def rgb(self, name="img.png", h=30, w=40):
        write_rgb(self.path(name), h, w)
        return self.path(name)


class TestBoxes(_TmpDirCase):
    def test_zero_annotations_kept(self):
        out = train_mapper()(record(self.rgb(), 30, 40, []))
        self.assertEqual(len(out["instances"]), 0)
        self.assertEqual(tuple(out["instances"].gt_boxes.tensor.shape), (0, 4))
        self.assertEqual(tuple(out["image"].shape), (3, 30, 40))

    def test_crowd_only_image_kept_empty(self):
        annotations = [ann(1, 1, 10, 10, iscrowd=1, ann_id=1), ann(5, 5, 9, 9, iscrowd=1)]
        out = train_mapper()(record(self.rgb(), 30, 40, annotations))
        self.assertEqual(len(out["instances"]), 0)

    def test_zero_size_boxes_dropped(self):
        annotations = [ann(5, 5, 0, 10, ann_id=1), ann(5, 5, 10, 0, ann_id=2), ann(5, 5, 4, 4, 2)]
        inst = train_mapper()(record(self.rgb(), 30, 40, annotations))["instances"]
        self.assertEqual(inst.gt_boxes.tensor.tolist(), [[5.0, 5.0, 9.0, 9.0]])
        self.assertEqual(inst.gt_classes.tolist(), [2])

    def test_outside_boxes_clipped_or_dropped(self):
        annotations = [
            ann(30, 20, 20, 20, 0),  # past the bottom-right corner: clipped
            ann(-5, -3, 10, 10, 1),  # negative x/y, past the top-left corner: clipped
            ann(45, 5, 10, 10, 2),  # fully right of the image: dropped
            ann(-20, 5, 10, 10, 2),  # fully left of it: dropped
            ann(5, 40, 10, 10, 2),  # fully below: dropped
        ]
        inst = train_mapper()(record(self.rgb(), 30, 40, annotations))["instances"]
        self.assertEqual(inst.gt_boxes.tensor.tolist(), [[30, 20, 40, 30], [0, 0, 5, 7]])
        self.assertEqual(inst.gt_classes.tolist(), [0, 1])

    def test_nonfinite_and_negative_size_boxes_raise(self):
        cases = [
            ([float("nan"), 1, 5, 5], "NaN or infinite"),
            ([1, 1, float("inf"), 5], "NaN or infinite"),
            ([1, 1, -5, 5], "negative width or height"),
            ([1, 1, 5, -0.5], "negative width or height"),
            ([1, 1, 5], "not a list of 4 numbers"),
            ([1, "2", 5, 5], "not a number"),
        ]
        path = self.rgb("nan.png")
        for bbox, expected in cases:
            a = ann(0, 0, 1, 1, ann_id=42)
            a["bbox"] = bbox
            d = record(path, 30, 40, [ann(1, 1, 4, 4, ann_id=41), a], image_id=9)
            with self.subTest(bbox=bbox):
                with self.assertRaises(DatasetError) as ctx:
                    train_mapper()(d)
                message = str(ctx.exception)
                for part in ("annotation id=42", "nan.png", "image_id=9", expected):
                    self.assertIn(part, message)
        # Without an 'id' (Detectron2's own loader drops it), the position is named instead.
        a = ann(1, 1, -5, 5)
        with self.assertRaisesRegex(DatasetError, r"annotation #1 \(no 'id'\).*nan.png"):
            train_mapper()(record(path, 30, 40, [ann(1, 1, 4, 4), a]))

    def test_test_mapper_ignores_annotations(self):
        d = record(self.rgb(), 30, 40, [ann(1, 1, -5, 5, ann_id=3)])
        out = DetaDatasetMapper(is_train=False, augmentation=[])(d)
        self.assertNotIn("instances", out)

    def test_category_out_of_range(self):
        path = self.rgb("cat.png")
        mapper = DetaDatasetMapper(official_cfg(), is_train=True)  # NUM_CLASSES = 3
        for cat in (3, -1, 1.0, "1", None):
            d = record(path, 30, 40, [ann(1, 1, 4, 4, cat=cat, ann_id=77)], image_id=5)
            with self.subTest(cat=cat):
                with self.assertRaises(DatasetError) as ctx:
                    mapper(d)
                for part in ("annotation id=77", "cat.png", "image_id=5", f"category_id={cat!r}"):
                    self.assertIn(part, str(ctx.exception))
        np.random.seed(0)
        d = record(path, 30, 40, [ann(1, 1, 4, 4, cat=np.int64(2), ann_id=77)])
        self.assertEqual(mapper(d)["instances"].gt_classes.tolist(), [2])

    def test_missing_bbox_mode_raises(self):
        a = ann(1, 1, 4, 4, ann_id=8)
        del a["bbox_mode"]
        with self.assertRaisesRegex(DatasetError, "annotation id=8 of image .*bbox_mode"):
            train_mapper()(record(self.rgb(), 30, 40, [a]))


class TestImageFormats(_TmpDirCase):
    def map_image(self, path, h, w, image_format="RGB"):
        mapper = DetaDatasetMapper(is_train=False, augmentation=[], image_format=image_format)
        image = mapper(record(path, h, w))["image"]
        self.assertEqual(image.dtype, torch.uint8)
        self.assertEqual(tuple(image.shape), (3, h, w))
        return image.permute(1, 2, 0).numpy()

    def test_grayscale(self):
        grey = np.arange(12 * 20, dtype=np.uint8).reshape(12, 20)
        Image.fromarray(grey, mode="L").save(self.path("grey.png"))
        out = self.map_image(self.path("grey.png"), 12, 20)
        for c in range(3):
            np.testing.assert_array_equal(out[..., c], grey)

    def test_rgba_drops_alpha(self):
        rgba = np.zeros((10, 16, 4), np.uint8)
        rgba[..., 0], rgba[..., 1], rgba[..., 2] = 200, 100, 50
        rgba[..., 3] = np.arange(16, dtype=np.uint8)[None] * 16  # varying transparency
        Image.fromarray(rgba, mode="RGBA").save(self.path("rgba.png"))
        out = self.map_image(self.path("rgba.png"), 10, 16)
        # The official pipeline (PIL convert("RGB")) keeps the colour and drops alpha.
        self.assertTrue(np.all(out == np.array([200, 100, 50], np.uint8)))

    def test_palette(self):
        rgb = np.zeros((8, 8, 3), np.uint8)
        rgb[:, :4] = (255, 0, 0)
        Image.fromarray(rgb).convert("P").save(self.path("p.png"))
        out = self.map_image(self.path("p.png"), 8, 8)
        self.assertEqual(out[0, 0].tolist(), [255, 0, 0])
        self.assertEqual(out[0, 7].tolist(), [0, 0, 0])

    def test_16bit_grey_scaled_not_clipped(self):
        values = np.array([[0, 255, 256, 1000], [32896, 40000, 65280, 65535]], np.uint16)
        write_png16(self.path("g16.png"), values)
        self.assertEqual(Image.open(self.path("g16.png")).mode, "I")
        out = self.map_image(self.path("g16.png"), 2, 4)
        expected = (values >> 8).astype(np.uint8)  # [[0, 0, 1, 3], [128, 156, 255, 255]]
        for c in range(3):
            np.testing.assert_array_equal(out[..., c], expected)
        # Detectron2's read_image clips instead: everything from 255 up turns white.
        clipped = utils.read_image(self.path("g16.png"), format="RGB")[..., 0]
        self.assertEqual(clipped[1].tolist(), [255, 255, 255, 255])
        self.assertEqual(clipped[0, 3], 255)
        # BGR and the PIL-written "I;16" mode take the same path.
        np.testing.assert_array_equal(self.map_image(self.path("g16.png"), 2, 4, "BGR"), out)
        Image.fromarray(values).save(self.path("g16.tif"))
        self.assertEqual(Image.open(self.path("g16.tif")).mode, "I;16")
        np.testing.assert_array_equal(self.map_image(self.path("g16.tif"), 2, 4), out)

    def test_16bit_rgb(self):
        pixels = np.zeros((3, 5, 3), np.uint16)
        pixels[..., 0], pixels[..., 1], pixels[..., 2] = 65535, 32896, 257
        write_png16(self.path("rgb16.png"), pixels)
        out = self.map_image(self.path("rgb16.png"), 3, 5)
        self.assertTrue(np.all(out == np.array([255, 128, 1], np.uint8)))

    def test_float_image_rejected(self):
        Image.fromarray(np.full((4, 4), 0.5, np.float32), mode="F").save(self.path("f.tif"))
        with self.assertRaisesRegex(ImageReadError, r"f\.tif.*image_id=1.*float"):
            self.map_image(self.path("f.tif"), 4, 4)

    def _exif_jpeg(self, name, orientation):
        """A stored 40x30 (w x h) JPEG with a white 10x10 block at the stored top-left."""
        pixels = np.zeros((30, 40, 3), np.uint8)
        pixels[:10, :10] = 255
        exif = Image.Exif()
        exif[274] = orientation
        Image.fromarray(pixels).save(self.path(name), quality=95, exif=exif)
        return self.path(name)

    def test_exif_rotation_applied(self):
        path = self._exif_jpeg("rot.jpg", 6)  # rotate 90° clockwise for display
        out = self.map_image(path, 40, 30)  # json size in the displayed frame: 30 wide, 40 high
        # Clockwise rotation moves the stored top-left corner to the top-right.
        self.assertGreater(out[:10, -10:].mean(), 200)
        self.assertLess(out[-10:, :10].mean(), 50)
        np.testing.assert_array_equal(out, utils.read_image(path, format="RGB"))  # = Detectron2
        # A box drawn on the displayed image lands on the white block.
        d = record(path, 40, 30, [ann(20, 0, 10, 10, ann_id=1)])
        inst = train_mapper()(d)["instances"]
        self.assertEqual(inst.gt_boxes.tensor.tolist(), [[20.0, 0.0, 30.0, 10.0]])

    def test_exif_size_mismatch_raises(self):
        path = self._exif_jpeg("raw_size.jpg", 6)
        d = record(path, 30, 40, image_id=12)  # the stored, unrotated size
        with self.assertRaises(utils.SizeMismatchError) as ctx:
            train_mapper()(d)
        message = str(ctx.exception)
        for part in ("raw_size.jpg", "image_id=12", "30x40", "40x30", "EXIF orientation"):
            self.assertIn(part, message)

    def test_plain_size_mismatch_raises(self):
        d = record(self.rgb("small.png", 30, 40), 31, 40, image_id=4)
        with self.assertRaisesRegex(ValueError, r"small\.png.*image_id=4.*40x30.*40x31"):
            train_mapper()(d)

    def test_missing_width_height_filled_in(self):
        d = record(self.rgb(), 30, 40)
        del d["width"], d["height"]
        out = train_mapper()(d)
        self.assertEqual((out["height"], out["width"]), (30, 40))


class TestBrokenFiles(_TmpDirCase):
    def _jpeg_bytes(self):
        write_rgb(self.path("full.jpg"), 64, 96)
        with open(self.path("full.jpg"), "rb") as f:
            return f.read()

    def test_truncated_and_garbage_files(self):
        data = self._jpeg_bytes()
        cases = {
            "half.jpg": data[: len(data) // 2],
            "no_end.jpg": data[:-2],
            "header.jpg": data[:300],
            "empty.jpg": b"",
            "text.jpg": b"not an image",
        }
        mapper = DetaDatasetMapper(is_train=False, augmentation=[])
        for name, content in cases.items():
            with open(self.path(name), "wb") as f:
                f.write(content)
            with self.subTest(name=name):
                with self.assertRaises(ImageReadError) as ctx:
                    mapper(record(self.path(name), 64, 96, image_id=31))
                self.assertIn(name, str(ctx.exception))
                self.assertIn("image_id=31", str(ctx.exception))
                self.assertIsInstance(ctx.exception, OSError)

    def test_directory_instead_of_file(self):
        os.mkdir(self.path("dir.jpg"))
        with self.assertRaisesRegex(ImageReadError, r"dir\.jpg.*image_id=1"):
            train_mapper()(record(self.path("dir.jpg"), 1, 1))

    def test_missing_file(self):
        with self.assertRaises(FileNotFoundError) as ctx:
            train_mapper()(record(self.path("gone.jpg"), 30, 40, image_id=2))
        self.assertIn("gone.jpg", str(ctx.exception))
        self.assertIn("image_id=2", str(ctx.exception))

    def test_read_image_helper(self):
        image = read_image(self.rgb(), "RGB")
        self.assertEqual(image.shape, (30, 40, 3))
        loaded = open_image(self.path("img.png"), decode=False)
        self.assertIsNone(loaded.image)
        self.assertEqual(loaded.size, (40, 30))


class TestExtremeSizes(_TmpDirCase):
    def _check(self, h, w):
        path = self.path(f"{h}x{w}.png")
        Image.new("RGB", (w, h), (90, 160, 30)).save(path, compress_level=1)  # quick to decode
        annotations = [ann(0, 0, w, h, cat=1, ann_id=1)]  # the whole image
        test_out = DetaDatasetMapper(official_cfg(), is_train=False)(record(path, h, w))
        self.assertEqual(tuple(test_out["image"].shape[1:]), detr_resize_shape(h, w, 800, 1333))
        mapper = DetaDatasetMapper(official_cfg(), is_train=True)
        no_crop = {detr_resize_shape(h, w, s, 1333) for s in _SCALES}
        for seed in range(6):
            np.random.seed(seed)
            out = mapper(record(path, h, w, annotations))
            oh, ow = out["image"].shape[1:]
            # The crop branch resizes a 384..600-sided crop (aspect <= 600/384) without reaching
            # the 1333 cap, so its short side is one of the scales.
            self.assertTrue(
                (oh, ow) in no_crop
                or (min(oh, ow) in _SCALES and max(oh, ow) <= min(oh, ow) * 600 / 384 + 1),
                (h, w, oh, ow),
            )
            boxes = out["instances"].gt_boxes.tensor
            self.assertEqual(len(boxes), 1)  # the whole-image box survives any crop
            self.assertTrue(torch.all(boxes[:, 2:] <= torch.tensor([ow, oh])))

    def test_one_pixel(self):
        self._check(1, 1)

    def test_4000_pixels(self):
        self._check(4000, 4000)

    def test_unresizable_aspect_ratio_names_the_file(self):
        # 1x4000 at a 1333 cap: the official rule gives a 0-pixel short side.
        path = self.rgb("sliver.png", 1, 4000)
        mapper = DetaDatasetMapper(official_cfg(), is_train=False)
        with self.assertRaisesRegex(DatasetMapperError, r"sliver\.png.*image_id=6"):
            mapper(record(path, 1, 4000, image_id=6))


class _Boom(T.Augmentation):
    def get_transform(self, image):
        raise RuntimeError("boom")


class TestErrorContext(_TmpDirCase):
    def test_unexpected_error_wrapped(self):
        mapper = DetaDatasetMapper(is_train=True, augmentation=[_Boom()])
        with self.assertRaises(DatasetMapperError) as ctx:
            mapper(record(self.rgb("x.png"), 30, 40, image_id=3))
        self.assertIn("x.png", str(ctx.exception))
        self.assertIn("image_id=3", str(ctx.exception))
        self.assertIn("RuntimeError: boom", str(ctx.exception))
        self.assertIsInstance(ctx.exception.__cause__, RuntimeError)

    def test_dataloader_worker_crash_names_the_image(self):
        good = self.rgb("good.png")
        with open(self.path("corrupt.jpg"), "wb") as f:
            f.write(b"\xff\xd8\xff\xe0 truncated jpeg")
        dicts = [
            record(good, 30, 40, image_id=1),
            record(self.path("corrupt.jpg"), 30, 40, image_id=2),
        ]
        mapper = DetaDatasetMapper(is_train=True, augmentation=[])
        dataset = MapDataset(DatasetFromList(dicts, copy=False), mapper)
        loader = torch.utils.data.DataLoader(
            dataset, batch_size=1, num_workers=1, collate_fn=lambda batch: batch
        )
        with self.assertRaises(Exception) as ctx:
            for _ in loader:
                pass
        self.assertIn("DataLoader worker", str(ctx.exception))
        self.assertIn("corrupt.jpg", str(ctx.exception))
        self.assertIn("image_id=2", str(ctx.exception))
        # Detectron2's test loader (the train_net.py path) reports it the same way.
        loader = build_detection_test_loader(dicts, mapper=mapper, num_workers=1)
        with self.assertRaisesRegex(Exception, r"corrupt\.jpg"):
            for _ in loader:
                pass


class TestCocoLoading(_TmpDirCase):
    def setUp(self):
        super().setUp()
        self.images = os.path.join(self.dir, "images")
        os.mkdir(self.images)
        for i in (1, 2, 3):
            write_rgb(os.path.join(self.images, f"{i}.jpg"), 30, 40, seed=i)
        self.image_entries = [
            {"id": i, "file_name": f"{i}.jpg", "width": 40, "height": 30} for i in (1, 2, 3)
        ]

    def _json(self, annotations, name="a.json", **kwargs):
        path = self.path(name)
        write_coco(path, self.image_entries, annotations, **kwargs)
        return path

    def _register(self, name, json_file):
        register_deta_coco_instances(name, {}, json_file, self.images)

        def cleanup():
            DatasetCatalog.remove(name)
            MetadataCatalog.remove(name)

        self.addCleanup(cleanup)

    def test_ids_kept_and_empty_images_loaded(self):
        annotations = [
            coco_ann(10, 1, [1, 1, 5, 5], cat=3),
            coco_ann(11, 2, [1, 1, 5, 5], iscrowd=1),  # image 2: crowd only; image 3: nothing
        ]
        dicts = load_deta_coco_json(self._json(annotations), self.images, "deta_test_messy_ok")
        MetadataCatalog.remove("deta_test_messy_ok")
        self.assertEqual([d["image_id"] for d in dicts], [1, 2, 3])
        self.assertEqual([a["id"] for a in dicts[0]["annotations"]], [10])
        self.assertEqual(dicts[0]["annotations"][0]["category_id"], 2)  # contiguous
        mapper = train_mapper(num_classes=3)
        counts = [len(mapper(d)["instances"]) for d in dicts]
        self.assertEqual(counts, [1, 0, 0])

    def test_warnings_summarised(self):
        annotations = [
            coco_ann(1, 1, [1, 1, 0, 5]),
            coco_ann(2, 1, [1, 1, 5, 0]),
            coco_ann(3, 1, [100, 1, 5, 5]),
            coco_ann(4, 1, [30, 1, 20, 5]),
        ]
        with self.assertLogs("deta.data.datasets", level="WARNING") as logs:
            load_deta_coco_json(self._json(annotations), self.images)
        text = "\n".join(logs.output)
        self.assertIn("2 x zero-size box", text)
        self.assertIn("1 x box fully outside", text)
        self.assertIn("1 x box extends past", text)
        self.assertIn("annotation id=1 of image '1.jpg'", text)

    def test_unknown_category_raises_with_ids(self):
        json_file = self._json([coco_ann(1, 1, [1, 1, 5, 5]), coco_ann(55, 2, [1, 1, 5, 5], 99)])
        self._register("deta_test_messy_cat", json_file)
        with self.assertRaises(DatasetError) as ctx:
            DatasetCatalog.get("deta_test_messy_cat")
        message = str(ctx.exception)
        for part in ("annotation id=55", "category_id=99", "'2.jpg'", "a.json", "ids: 1, 2, 3"):
            self.assertIn(part, message)

    def test_bad_boxes_raise_with_ids(self):
        # json.dump writes NaN/Infinity literals, which json.load (and pycocotools) accept.
        annotations = [
            coco_ann(7, 1, [float("nan"), 1, 5, 5]),
            coco_ann(8, 2, [1, 1, float("inf"), 5]),
            coco_ann(9, 3, [1, 1, -4, 5]),
            coco_ann(10, 3, [-2, -2, 5, 5]),  # negative x/y only: clipped, not an error
        ]
        with self.assertRaises(DatasetError) as ctx:
            load_deta_coco_json(self._json(annotations), self.images, None)
        message = str(ctx.exception)
        self.assertIn("3 error(s)", message)
        self.assertRegex(message, r"annotation id=7 of image '1\.jpg'.*NaN")
        self.assertRegex(message, r"annotation id=8 of image '2\.jpg'.*NaN or infinite")
        self.assertRegex(message, r"annotation id=9 of image '3\.jpg'.*negative width")
        self.assertNotIn("id=10", message)

    def test_duplicate_ids_and_malformed_entries(self):
        self.image_entries.append({"id": 3, "file_name": "3b.jpg", "width": 40, "height": 30})
        self.image_entries.append({"id": 4, "file_name": "4.jpg", "height": 30})
        annotations = [coco_ann(1, 1, [1, 1, 5, 5]), coco_ann(1, 2, [1, 1, 5, 5])]
        annotations.append({"id": 2, "image_id": 1, "category_id": 1})
        with self.assertRaises(DatasetError) as ctx:
            load_deta_coco_json(self._json(annotations), self.images)
        message = str(ctx.exception)
        self.assertRegex(message, r"duplicate_image_id.*'3b\.jpg' \(image_id=3\).*'3\.jpg'")
        self.assertRegex(message, r"bad_image_entry.*'4\.jpg' \(image_id=4\).*width/height")
        self.assertRegex(message, r"duplicate_annotation_id.*'2\.jpg'.*id=1 is also used")
        self.assertRegex(message, r"annotation id=2 of image '1\.jpg' \(image_id=1\): no 'bbox'")

    def test_use_deta_coco_loader(self):
        json_file = self._json([coco_ann(5, 1, [1, 1, 5, 5])])
        name = "deta_test_messy_builtin"
        from detectron2.data.datasets import register_coco_instances

        register_coco_instances(name, {}, json_file, self.images)
        self.addCleanup(lambda: (DatasetCatalog.remove(name), MetadataCatalog.remove(name)))
        self.assertNotIn("id", DatasetCatalog.get(name)[0]["annotations"][0])  # Detectron2's
        use_deta_coco_loader(name)
        self.assertEqual(DatasetCatalog.get(name)[0]["annotations"][0]["id"], 5)


if __name__ == "__main__":
    unittest.main()
