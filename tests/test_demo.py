"""``tools/demo.py``: images, batched folders, video, webcam, COCO json, bf16 and its errors.

A tiny random-weight DETA (tests/helpers/tiny.py) on 64-192 px images keeps each model run to a
second or two. Most tests call the tool's ``main`` in-process through ``run_main`` (the same exit
path as the script); the two that check what a user's terminal shows run the real script.
"""

import contextlib
import importlib.util
import io
import json
import os
import subprocess
import sys
import tempfile
import unittest
from unittest import mock

import cv2
import numpy as np
import torch
from PIL import Image

from detectron2.modeling import build_model

from deta import fast_cpu
from deta.modeling import DETA
from deta.utils.cli import run_main

from .helpers.data import write_png16, write_rgb
from .helpers.tie_aware import match_detections
from .helpers.tiny import REPO, TINY_OPTS, tiny_cfg

SCRIPT = os.path.join(REPO, "tools", "demo.py")
CONFIG = os.path.join(REPO, "configs", "Base-DETA.yaml")
# Short side 64: the (h, w) pairs below resize to 64x96, 96x64, 64x64, 64x96 and 96x64, so with
# a batch size of 3 images 1 and 4, and 2 and 5, share a forward and image 3 runs alone.
RESIZE = ["INPUT.MIN_SIZE_TEST", 64, "INPUT.MAX_SIZE_TEST", 128]
SIZES = [(64, 96), (96, 64), (80, 80), (128, 192), (144, 96)]


def load_demo():
    """Import ``tools/demo.py`` as a module (it is a script, not a package)."""
    spec = importlib.util.spec_from_file_location("deta_tools_demo", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def write_video(path, frames=10, size=(96, 64)):
    writer = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*"MJPG"), 10.0, size)
    assert writer.isOpened()
    rng = np.random.default_rng(0)
    for _ in range(frames):
        writer.write(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))
    writer.release()


def count_frames(path):
    capture = cv2.VideoCapture(path)
    assert capture.isOpened(), path
    n, shape = 0, None
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        n, shape = n + 1, frame.shape
    capture.release()
    return n, shape


def detections_by_image(results):
    """COCO results -> {image_id: {scores, labels, boxes (xyxy)}} for match_detections."""
    out = {}
    for image_id in sorted({r["image_id"] for r in results}):
        rows = [r for r in results if r["image_id"] == image_id]
        xywh = torch.tensor([r["bbox"] for r in rows])
        out[image_id] = {
            "scores": torch.tensor([r["score"] for r in rows]),
            "labels": torch.tensor([r["category_id"] for r in rows]),
            "boxes": torch.cat([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], 1),
        }
    return out


class DemoCase(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        # One thread: spinning OpenMP threads slow down several-fold on a shared 2-core machine.
        cls._threads = torch.get_num_threads()
        torch.set_num_threads(1)
        cls._tmp = tempfile.TemporaryDirectory()
        cls.root = cls._tmp.name
        torch.manual_seed(0)
        cls.weights = os.path.join(cls.root, "tiny.pth")
        torch.save({"model": build_model(tiny_cfg()).state_dict()}, cls.weights)
        cls.images = os.path.join(cls.root, "images")
        os.makedirs(cls.images)
        for i, (h, w) in enumerate(SIZES):
            write_rgb(os.path.join(cls.images, f"{i + 1:06d}.png"), h, w, seed=i)
        cls.demo = load_demo()

    @classmethod
    def tearDownClass(cls):
        torch.set_num_threads(cls._threads)
        cls._tmp.cleanup()

    def opts(self, weights=None):
        return [*TINY_OPTS, *RESIZE, "MODEL.WEIGHTS", weights or self.weights]

    def run_demo(self, *args, weights=None):
        """(exit status, stdout, stderr) of the tool's entry point, run in-process."""
        argv = ["--config-file", CONFIG, *args, *self.opts(weights)]
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            with self.assertRaises(SystemExit) as exit_:
                run_main(lambda: self.demo.main([str(a) for a in argv]))
        return exit_.exception.code, out.getvalue(), err.getvalue()

    def run_script(self, *args, env=None):
        cmd = [sys.executable, SCRIPT, "--config-file", CONFIG, *args, *self.opts()]
        # Detectron2 v0.6 warns about torch.jit.script at import; that is not the tool talking.
        env = {**os.environ, "PYTHONWARNINGS": "ignore::FutureWarning", **(env or {})}
        return subprocess.run(
            [str(c) for c in cmd], cwd=REPO, env=env, capture_output=True, text=True, timeout=300
        )


class TestImages(DemoCase):
    def test_batched_folder_matches_one_at_a_time(self):
        batch_sizes = []
        forward = DETA.forward

        def recording_forward(model, batched_inputs):
            batch_sizes.append(len(batched_inputs))
            return forward(model, batched_inputs)

        runs = {}
        for n in (1, 3):
            batch_sizes.clear()
            json_file = os.path.join(self.root, f"batch{n}.json")
            out_dir = os.path.join(self.root, f"batch{n}")
            with mock.patch.object(DETA, "forward", recording_forward):
                code, out, _ = self.run_demo(
                    "--input", self.images, "--batch-size", n, "--json", json_file,
                    "--output", out_dir,
                )  # fmt: skip
            self.assertEqual(code, 0, out)
            runs[n] = (sorted(batch_sizes), json_file)
        self.assertEqual(runs[1][0], [1] * 5)
        # The same-sized pairs share a forward although not adjacent; the 64x64 image runs alone.
        self.assertEqual(runs[3][0], [1, 2, 2])
        with open(runs[1][1]) as f:
            single = detections_by_image(json.load(f))
        with open(runs[3][1]) as f:
            batched = detections_by_image(json.load(f))
        self.assertEqual(sorted(single), [1, 2, 3, 4, 5])
        self.assertEqual(sorted(batched), sorted(single))
        for image_id, (h, w) in zip(sorted(single), SIZES):
            a, b = single[image_id], batched[image_id]
            self.assertGreater(len(a["scores"]), 0)
            # One tolerance for both: scores within 1e-4, boxes within 1e-4 of the image size.
            self.assertEqual(match_detections(a, b, (h, w), atol=1e-4), [], f"image {image_id}")
        for i, (h, w) in enumerate(SIZES):
            with Image.open(os.path.join(self.root, "batch3", f"{i + 1:06d}.png")) as im:
                self.assertEqual(im.size, (w, h))

    def test_json_is_coco_results(self):
        from pycocotools.coco import COCO

        json_file = os.path.join(self.root, "coco.json")
        code, out, _ = self.run_demo(
            "--input", self.images, "--json", json_file, "--output",
            os.path.join(self.root, "coco"), "--batch-size", 2,
        )  # fmt: skip
        self.assertEqual(code, 0, out)
        with open(json_file) as f:
            results = json.load(f)
        self.assertTrue(results)
        for r in results:
            self.assertEqual(set(r), {"image_id", "category_id", "bbox", "score"})
            self.assertEqual(len(r["bbox"]), 4)
            self.assertTrue(0.0 <= r["score"] <= 1.0)
        # The config's DATASETS.TEST is coco_2017_val: contiguous 0, 1, 2 map to COCO ids 1, 2, 3.
        self.assertLessEqual({r["category_id"] for r in results}, {1, 2, 3})
        self.assertIn(3, {r["category_id"] for r in results})
        # pycocotools accepts them against a ground truth of these images (ids: file stems).
        gt = COCO()
        gt.dataset = {
            "images": [{"id": i + 1, "height": h, "width": w} for i, (h, w) in enumerate(SIZES)],
            "annotations": [],
            "categories": [{"id": c, "name": str(c)} for c in (1, 2, 3)],
        }
        with contextlib.redirect_stdout(io.StringIO()):
            gt.createIndex()
            loaded = gt.loadRes(results)
        self.assertEqual(len(loaded.getAnnIds()), len(results))
        for ann in loaded.dataset["annotations"]:
            h, w = SIZES[ann["image_id"] - 1]
            x, y, bw, bh = ann["bbox"]
            self.assertTrue(bw >= 0 and bh >= 0 and x + bw <= w + 1e-3 and y + bh <= h + 1e-3)

    def test_corrupt_file_is_skipped_and_named(self):
        folder = os.path.join(self.root, "with_broken")
        os.makedirs(folder)
        write_rgb(os.path.join(folder, "a.png"), 64, 80)
        write_rgb(os.path.join(folder, "c.png"), 80, 64, seed=1)
        with open(os.path.join(folder, "b_broken.jpg"), "wb") as f:
            f.write(b"this is not a jpeg")
        truncated = os.path.join(folder, "d_truncated.png")  # a valid header, half the pixels
        write_rgb(truncated, 64, 80, seed=2)
        with open(truncated, "rb") as f:
            data = f.read()
        with open(truncated, "wb") as f:
            f.write(data[: len(data) // 2])
        out_dir = os.path.join(self.root, "with_broken_out")
        code, out, err = self.run_demo(
            "--input", folder, "--output", out_dir, "--batch-size", 2, "--confidence-threshold", 0
        )  # fmt: skip
        self.assertEqual(code, 1)
        for name, why in (("b_broken.jpg", "not an image"), ("d_truncated.png", "truncated")):
            lines = [line for line in err.splitlines() if name in line]
            self.assertEqual(len(lines), 1, err)
            self.assertIn(why, lines[0])
        self.assertIn("2 of 4 inputs could not be read", err)
        self.assertNotIn("Traceback", err)
        self.assertEqual(sorted(os.listdir(out_dir)), ["a.png", "c.png"])
        # Threshold 0 draws every detection: the picture differs from the input.
        drawn = np.asarray(Image.open(os.path.join(out_dir, "a.png")).convert("RGB"))
        original = np.asarray(Image.open(os.path.join(folder, "a.png")))
        self.assertEqual(drawn.shape, original.shape)
        self.assertGreater(np.abs(drawn.astype(int) - original).mean(), 1.0)

    def test_default_output_and_16_bit_image(self):
        path = os.path.join(self.root, "grey16.png")
        write_png16(path, np.full((64, 72), 40000, dtype=np.uint16))
        with tempfile.TemporaryDirectory() as cwd:
            previous = os.getcwd()
            os.chdir(cwd)
            try:  # threshold above 1: nothing drawn, the picture is the image as read
                code, out, _ = self.run_demo("--input", path, "--confidence-threshold", 1.01)
                written = os.path.join(cwd, "output", "demo", "grey16.png")
                pixels = np.asarray(Image.open(written).convert("RGB"))
            finally:
                os.chdir(previous)
        self.assertEqual(code, 0)
        self.assertIn(f"output written to {os.path.join('output', 'demo')}", out)
        # 16-bit values are scaled (40000 >> 8 = 156), not clipped to 255 as Detectron2 reads.
        self.assertEqual(int(pixels.min()), 156)
        self.assertEqual(int(pixels.max()), 156)

    @unittest.skipUnless(fast_cpu.capabilities().bf16, "this CPU has no oneDNN bf16")
    def test_bf16_runs(self):
        json_file = os.path.join(self.root, "bf16.json")
        path = os.path.join(self.images, "000001.png")
        code, out, _ = self.run_demo(
            "--input", path, "--dtype", "bf16", "--json", json_file,
            "--output", os.path.join(self.root, "bf16"),
        )  # fmt: skip
        self.assertEqual(code, 0, out)
        self.assertIn("bf16", out)
        with open(json_file) as f:
            scores = [r["score"] for r in json.load(f)]
        self.assertTrue(scores and all(0.0 <= s <= 1.0 for s in scores))

    def test_bf16_refused_in_process_override(self):
        with fast_cpu.override_capabilities(bf16=False):
            code, out, err = self.run_demo(
                "--input", self.images, "--dtype", "bf16", "--output", self.root
            )
        self.assertEqual(code, 2)
        self.assertEqual(err.strip().count("\n"), 0, err)
        self.assertIn("--dtype bf16", err)
        self.assertIn("use --dtype fp32", err)


class TestWeightsErrors(DemoCase):
    def check_one_line(self, weights, expected):
        code, out, err = self.run_demo(
            "--input", self.images, "--output", self.root, weights=weights
        )
        self.assertEqual(code, 2)
        lines = err.strip().splitlines()
        self.assertEqual(len(lines), 1, err)
        self.assertIn(weights, lines[0])
        self.assertIn(expected, lines[0])
        self.assertNotIn("weights_only=False", out + err)
        self.assertNotIn("Traceback", out + err)

    def test_garbage_file(self):
        path = os.path.join(self.root, "garbage.pth")
        with open(path, "wb") as f:
            f.write(b"not a checkpoint, just some bytes" * 4)
        self.check_one_line(path, "is not a PyTorch checkpoint")

    def test_truncated_file(self):
        path = os.path.join(self.root, "truncated.pth")
        with open(self.weights, "rb") as f:
            data = f.read()
        with open(path, "wb") as f:
            f.write(data[: len(data) // 2])
        self.check_one_line(path, "truncated or corrupt")

    def test_missing_file(self):
        self.check_one_line(os.path.join(self.root, "nowhere.pth"), "no such file")


class TestVideo(DemoCase):
    def test_ten_frames_in_ten_out(self):
        video = os.path.join(self.root, "clip.avi")
        write_video(video, frames=10, size=(96, 64))
        out_dir = os.path.join(self.root, "video_out")
        json_file = os.path.join(self.root, "video.json")
        code, out, err = self.run_demo(
            "--video-input", video, "--output", out_dir, "--batch-size", 4, "--json", json_file
        )
        self.assertEqual(code, 0, err)
        written = [os.path.join(out_dir, n) for n in os.listdir(out_dir)]
        self.assertEqual(len(written), 1)
        self.assertRegex(out, r"10 frames in [\d.]+ s \([\d.]+ frames/s\)")
        self.assertIn(written[0], out)
        self.assertEqual(count_frames(written[0]), (10, (64, 96, 3)))
        with open(json_file) as f:
            self.assertEqual({r["image_id"] for r in json.load(f)}, set(range(10)))

    def test_output_over_the_input_is_refused(self):
        folder = os.path.join(self.root, "overwrite")
        os.makedirs(folder)
        video = os.path.join(folder, "clip.mp4")
        writer = cv2.VideoWriter(video, cv2.VideoWriter_fourcc(*"mp4v"), 10.0, (96, 64))
        if not writer.isOpened():
            self.skipTest("this OpenCV cannot write mp4v")
        for _ in range(3):
            writer.write(np.zeros((64, 96, 3), np.uint8))
        writer.release()
        size = os.path.getsize(video)
        code, _, err = self.run_demo("--video-input", video, "--output", folder)
        self.assertEqual(code, 2)
        self.assertIn("would overwrite the input video", err)
        self.assertEqual(os.path.getsize(video), size)
        self.assertEqual(count_frames(video)[0], 3)

    def test_codec_fallback(self):
        opened = []
        real_writer = cv2.VideoWriter

        def writer(path, fourcc, fps, size):
            opened.append(os.path.splitext(path)[1])
            if path.endswith(".mp4"):  # as where OpenCV has no FFmpeg backend
                fourcc = -1  # an invalid code: the writer does not open
            return real_writer(path, fourcc, fps, size)

        out = io.StringIO()
        with mock.patch.object(cv2, "VideoWriter", writer), contextlib.redirect_stdout(out):
            w, path, fourcc = self.demo.open_video_writer(
                os.path.join(self.root, "fallback"), "clip", 10.0, (96, 64)
            )
        w.release()
        self.assertEqual(opened, [".mp4", ".avi"])
        self.assertEqual((fourcc, os.path.basename(path)), ("MJPG", "clip.avi"))
        self.assertIn("using MJPG", out.getvalue())


class TestScript(DemoCase):
    """The real command line: exit status and exactly one line on stderr."""

    def test_webcam_without_camera_or_display(self):
        proc = self.run_script("--webcam", env={"DISPLAY": "", "WAYLAND_DISPLAY": ""})
        self.assertEqual(proc.returncode, 2, proc.stderr)
        lines = proc.stderr.strip().splitlines()
        self.assertEqual(len(lines), 1, proc.stderr)
        self.assertTrue(lines[0].startswith("error: --webcam:"), lines[0])
        self.assertIn("no display", lines[0])

    def test_bf16_refused_by_env_override(self):
        proc = self.run_script(
            "--input", self.images, "--dtype", "bf16", "--output", self.root,
            env={"DETA_CPU_CAPS": "bf16=0"},
        )  # fmt: skip
        self.assertEqual(proc.returncode, 2, proc.stderr)
        lines = proc.stderr.strip().splitlines()
        self.assertEqual(len(lines), 1, proc.stderr)
        self.assertIn("--dtype bf16", lines[0])
        self.assertIn("DETA_CPU_CAPS", lines[0])
