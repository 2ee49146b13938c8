"""Image files as the mapper reads them: pixel formats, EXIF, broken files and extreme sizes.

Errors must name the file and the image id.
"""

import os
import unittest

import numpy as np
import torch
from PIL import Image

from detectron2.data import detection_utils as utils

from deta.data import DetaDatasetMapper, detr_resize_shape
from deta.data.dataset_mapper import DatasetMapperError
from deta.data.images import ImageReadError, open_image, read_image
from tests.helpers.data import (
    SCALES,
    TmpDirCase,
    ann,
    official_cfg,
    record,
    train_mapper,
    write_png16,
    write_rgb,
)


class TestImageFormats(TmpDirCase):
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


class TestBrokenFiles(TmpDirCase):
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


class TestExtremeSizes(TmpDirCase):
    def _check(self, h, w):
        path = self.path(f"{h}x{w}.png")
        Image.new("RGB", (w, h), (90, 160, 30)).save(path, compress_level=1)  # quick to decode
        annotations = [ann(0, 0, w, h, cat=1, ann_id=1)]  # the whole image
        test_out = DetaDatasetMapper(official_cfg(), is_train=False)(record(path, h, w))
        self.assertEqual(tuple(test_out["image"].shape[1:]), detr_resize_shape(h, w, 800, 1333))
        mapper = DetaDatasetMapper(official_cfg(), is_train=True)
        no_crop = {detr_resize_shape(h, w, s, 1333) for s in SCALES}
        for seed in range(6):
            np.random.seed(seed)
            out = mapper(record(path, h, w, annotations))
            oh, ow = out["image"].shape[1:]
            # The crop branch resizes a 384..600-sided crop (aspect <= 600/384) without reaching
            # the 1333 cap, so its short side is one of the scales.
            self.assertTrue(
                (oh, ow) in no_crop
                or (min(oh, ow) in SCALES and max(oh, ow) <= min(oh, ow) * 600 / 384 + 1),
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


if __name__ == "__main__":
    unittest.main()
