#!/usr/bin/env python
"""Run a trained DETA on images, a video or a webcam and draw the detected boxes.

Examples::

    python tools/demo.py --config-file configs/deta_R_18_synthetic_cpu.yaml \\
        --input datasets/deta_synthetic/val --batch-size 4 --json output/demo/results.json \\
        MODEL.WEIGHTS output/demo/model/model_final.pth
    python tools/demo.py --config-file configs/deta_R_18_synthetic_cpu.yaml \\
        --video-input clip.mp4 MODEL.WEIGHTS output/demo/model/model_final.pth

Inputs (one of):

* ``--input``: image files, glob patterns or folders (the images inside, by extension). A file
  that cannot be read is skipped with one line naming it; the others are processed and the exit
  status is 1.
* ``--video-input FILE``: every frame, written to an annotated video (``mp4v`` in .mp4, else
  ``MJPG`` in .avi, whichever OpenCV can open; the one used is printed).
* ``--webcam``: camera 0 in a window (Esc or q quits); needs a camera and a display.

``--batch-size N`` runs up to N images (or video frames) per forward. Only images of the same size
after the test resize share one: padding a mixed batch changes DETA's scores (see
``deta/utils/predictor.py``), and an image's detections should not depend on its neighbours.
``--dtype bf16`` runs under bfloat16 autocast where oneDNN has bf16 kernels, and is refused
elsewhere (emulated bf16 is slower than float32).

``--output`` (default ``output/demo``) is a folder: one ``<name>.png`` per image, or
``<name>.mp4``/``.avi`` per video. With a single image it may be a file name with an image
extension, and with a video a file name ending in .mp4 or .avi. Trailing ``KEY VALUE`` pairs
override the config (after ``--input``, the first argument that looks like a config key, e.g.
``MODEL.WEIGHTS``, starts them; or separate them with ``--``).

Images are read like training reads them (16-bit images scaled, EXIF orientation applied) and
resized like evaluation resizes them, so boxes match ``train_net.py --eval-only``.

About ``--confidence-threshold``: DETA scores are per-class sigmoid probabilities trained with
the focal loss, not softmax probabilities. The focal loss keeps them low even for correct
detections, so thresholds that suit softmax detectors (0.5 and above) drop many true boxes; use
about 0.3. Measured on the demo model (tools/run_demo.py, 43.0 AP on the synthetic val split):
the true positives at IoU 0.5 had a median score of 0.50; 52% of them scored 0.5 or more and 81%
scored 0.3 or more (docs/TRAINING.md). ``--json`` keeps every detection, as COCO evaluation
expects.
"""

import argparse
import glob
import json
import os
import re
import sys
import time
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image

from detectron2.data import MetadataCatalog
from detectron2.structures import BoxMode, Instances
from detectron2.utils.logger import setup_logger

import deta  # noqa: F401  registers DETA and the synthetic datasets
from deta.checkpoint import write_text_atomic
from deta.data.images import ImageReadError, open_image, read_image
from deta.utils.cli import add_config_args, build_cfg, default_output, fail, run_main
from deta.utils.cpu_allocator import configure_cpu_allocator
from deta.utils.predictor import DTYPES, BatchPredictor, PredictorError
from deta.utils.visualization import render_instances

__all__ = [
    "collect_inputs",
    "coco_results",
    "main",
    "open_video_writer",
    "parse_args",
    "plan_batches",
]

_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
_VIDEO_EXTENSIONS = (".mp4", ".avi")
# (fourcc, container) in order of preference: mp4v needs OpenCV's FFmpeg backend, while MJPG in
# .avi is written by OpenCV's own muxer, so it works where FFmpeg is missing.
_CODECS = (("mp4v", ".mp4"), ("MJPG", ".avi"))
_CONFIG_KEY = re.compile(r"^[A-Z][A-Z0-9_]*(\.[A-Z0-9_]+)+$")
_WINDOW = "DETA"


def collect_inputs(inputs: Sequence[str]) -> List[str]:
    """Expand files, glob patterns and folders into a list of image paths (folders sorted).

    Raises:
        CliError: an item is neither a file, a folder nor a pattern that matches.
    """
    paths: List[str] = []
    for item in inputs:
        if os.path.isdir(item):
            names = sorted(os.listdir(item))
            paths += [os.path.join(item, n) for n in names if n.lower().endswith(_EXTENSIONS)]
        elif os.path.isfile(item):
            paths.append(item)
        else:
            matches = sorted(glob.glob(os.path.expanduser(item)))
            if not matches:
                fail(f"--input {item}: no such file, folder or pattern")
            paths += matches
    return paths


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_config_args(parser)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--input", nargs="+", metavar="PATH", help="images, globs or folders")
    source.add_argument("--video-input", metavar="FILE", help="a video file")
    source.add_argument("--webcam", action="store_true", help="camera 0, shown in a window")
    parser.add_argument("--output", help="output folder or file (default: output/demo)")
    parser.add_argument(
        "--confidence-threshold",
        type=float,
        default=0.3,
        help="smallest drawn score; DETA's sigmoid scores are low, see the module docstring",
    )
    parser.add_argument("--batch-size", type=int, default=1, help="images per forward")
    parser.add_argument("--dtype", choices=DTYPES, default="fp32", help="bf16: bfloat16 autocast")
    parser.add_argument("--json", metavar="FILE", help="write COCO-format results here")
    args = parser.parse_args(argv)
    if args.input:
        # --input takes any number of paths, so it swallows trailing overrides: split them off.
        for i, item in enumerate(args.input):
            if item == "--" or (_CONFIG_KEY.match(item) and not os.path.exists(item)):
                args.input, args.opts = args.input[:i], args.input[i:] + list(args.opts)
                break
        if not args.input:
            parser.error("--input needs at least one path before the config overrides")
    if args.batch_size < 1:
        parser.error(f"--batch-size must be at least 1, got {args.batch_size}")
    if args.json and args.webcam:
        parser.error("--json is for --input and --video-input, not --webcam")
    return args


def _category_ids(metadata) -> Dict[int, int]:
    """Contiguous class index -> dataset category id (identity without the dataset's map)."""
    mapping = metadata.get("thing_dataset_id_to_contiguous_id", None)
    return {v: k for k, v in mapping.items()} if mapping else {}


def coco_results(instances: Instances, image_id, category_ids: Dict[int, int]) -> List[Dict]:
    """COCO detection results (XYWH boxes) of one image's ``instances``."""
    boxes = BoxMode.convert(instances.pred_boxes.tensor, BoxMode.XYXY_ABS, BoxMode.XYWH_ABS)
    return [
        {
            "image_id": image_id,
            "category_id": int(category_ids.get(c, c)),
            "bbox": [float(v) for v in box],
            "score": float(s),
        }
        for box, s, c in zip(
            boxes.tolist(), instances.scores.tolist(), instances.pred_classes.tolist()
        )
    ]


def _image_ids(paths: Sequence[str]) -> List:
    """File stems (as ints when all digits, as COCO names its files), or indices if they clash."""
    stems = [os.path.splitext(os.path.basename(p))[0] for p in paths]
    if len(set(stems)) < len(stems):
        return list(range(len(paths)))
    return [int(s) if s.isdigit() else s for s in stems]


def _image_output(output: str, path: str, single: bool) -> str:
    if single and output.lower().endswith(_EXTENSIONS):
        return output
    return os.path.join(output, os.path.splitext(os.path.basename(path))[0] + ".png")


def _unreadable(e: Exception) -> str:
    cause = e.__cause__ or e
    if type(cause).__name__ == "UnidentifiedImageError":
        return "not an image PIL can identify (corrupt, or another kind of file)"
    if isinstance(e, FileNotFoundError):
        return "no such file"
    return f"{type(cause).__name__}: {cause}"


def _draw(image_rgb: np.ndarray, instances: Instances, threshold: float, metadata) -> np.ndarray:
    return render_instances(image_rgb, instances[instances.scores >= threshold], metadata)


def plan_batches(predictor, paths: Sequence[str], batch_size: int):
    """Batches of indices into ``paths`` whose images have one model-input size, from headers.

    Returns:
        tuple: the batches (lists of up to ``batch_size`` indices) and ``(index, error)`` of the
        files whose header cannot be read.
    """
    groups: Dict[Tuple[int, int], List[int]] = {}
    unreadable = []
    for i, path in enumerate(paths):
        try:
            width, height = open_image(path, decode=False).size
        except (ImageReadError, FileNotFoundError) as e:
            unreadable.append((i, e))
            continue
        groups.setdefault(predictor.input_size(height, width), []).append(i)
    batches = [
        indices[start : start + batch_size]
        for indices in groups.values()
        for start in range(0, len(indices), batch_size)
    ]
    return batches, unreadable


def run_images(predictor, paths, args, metadata, results: List[Dict]) -> int:
    """Predict, draw and save ``paths``; returns how many could not be read."""
    single = len(paths) == 1
    category_ids = _category_ids(metadata)
    ids = _image_ids(paths)
    # Only same-sized inputs share a forward (deta.utils.predictor): gather them over the whole
    # input list, reading each image only when its batch runs.
    batches, unreadable = plan_batches(predictor, paths, args.batch_size)
    for i, e in unreadable:
        print(f"{paths[i]}: skipped: {_unreadable(e)}", file=sys.stderr)
    skipped = len(unreadable)
    per_image: Dict[int, List[Dict]] = {}
    for batch in batches:
        loaded = []
        for i in batch:
            try:  # the header was fine, but the pixels may be truncated
                loaded.append((i, read_image(paths[i], format="RGB")))
            except (ImageReadError, FileNotFoundError) as e:
                skipped += 1
                print(f"{paths[i]}: skipped: {_unreadable(e)}", file=sys.stderr)
        predictions = predictor([image for _, image in loaded], batch_size=args.batch_size)
        for (i, image), instances in zip(loaded, predictions):
            per_image[i] = coco_results(instances, ids[i], category_ids)
            out_file = _image_output(args.output, paths[i], single)
            os.makedirs(os.path.dirname(os.path.abspath(out_file)), exist_ok=True)
            drawn = _draw(image, instances, args.confidence_threshold, metadata)
            Image.fromarray(drawn).save(out_file)
            kept = int((instances.scores >= args.confidence_threshold).sum())
            print(f"{paths[i]}: {kept} detections >= {args.confidence_threshold:g} -> {out_file}")
    for i in sorted(per_image):  # input order, whatever order the batches ran in
        results += per_image[i]
    return skipped


def open_video_writer(
    output: str, name: str, fps: float, size: Tuple[int, int], source: Optional[str] = None
):
    """The first of :data:`_CODECS` that OpenCV opens; returns ``(writer, path, fourcc)``.

    ``output`` is a folder (the video is ``<output>/<name>.<ext>``) or a .mp4/.avi file name, whose
    container is then tried first. A path that is the ``source`` video is refused before anything
    is opened (opening a writer truncates the file).
    """
    import cv2

    base, ext = os.path.splitext(output)
    codecs = list(_CODECS)
    if ext.lower() in _VIDEO_EXTENSIONS:
        codecs.sort(key=lambda c: c[1] != ext.lower())
    else:
        base = os.path.join(output, name)
    os.makedirs(os.path.dirname(os.path.abspath(base)), exist_ok=True)
    tried = []
    for fourcc, container in codecs:
        path = base + container
        if source and os.path.abspath(path) == os.path.abspath(source):
            fail(f"--output {path} would overwrite the input video; give another --output")
        writer = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*fourcc), fps, size)
        if writer.isOpened():
            if tried:
                print(f"could not open a {' or '.join(tried)} writer; using {fourcc} in {path}")
            return writer, path, fourcc
        writer.release()
        tried.append(f"{fourcc} {container}")
        if os.path.isfile(path) and os.path.getsize(path) == 0:
            os.remove(path)  # a failed open can leave an empty file behind
    fail(f"OpenCV could open no video writer for {base} (tried {', '.join(tried)})")


def _frames(capture, batch_size: int):
    """Lists of up to ``batch_size`` BGR frames until the video ends."""
    batch = []
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        batch.append(frame)
        if len(batch) == batch_size:
            yield batch
            batch = []
    if batch:
        yield batch


def run_video(predictor, args, metadata, results: List[Dict]) -> None:
    import cv2
    from tqdm import tqdm

    capture = cv2.VideoCapture(args.video_input)
    if not capture.isOpened():
        fail(f"--video-input {args.video_input}: OpenCV cannot open it as a video")
    fps = capture.get(cv2.CAP_PROP_FPS)
    fps = fps if fps and fps > 0 else 30.0  # some containers carry no rate
    size = (
        int(capture.get(cv2.CAP_PROP_FRAME_WIDTH)),
        int(capture.get(cv2.CAP_PROP_FRAME_HEIGHT)),
    )
    total = int(capture.get(cv2.CAP_PROP_FRAME_COUNT))
    name = os.path.splitext(os.path.basename(args.video_input))[0]
    writer, path, fourcc = open_video_writer(args.output, name, fps, size, args.video_input)
    category_ids = _category_ids(metadata)
    count, start = 0, time.perf_counter()
    try:
        with tqdm(total=total if total > 0 else None, unit="frame", mininterval=1.0) as bar:
            for frames in _frames(capture, args.batch_size):
                images = [frame[:, :, ::-1] for frame in frames]  # OpenCV decodes to BGR
                for image, instances in zip(images, predictor(images, args.batch_size)):
                    results += coco_results(instances, count, category_ids)
                    drawn = _draw(image, instances, args.confidence_threshold, metadata)
                    if drawn.shape[1::-1] != size:  # the writer drops frames of another size
                        drawn = cv2.resize(drawn, size)
                    writer.write(np.ascontiguousarray(drawn[:, :, ::-1]))
                    count += 1
                bar.update(len(frames))
    finally:
        writer.release()
        capture.release()
    elapsed = time.perf_counter() - start
    if count == 0:
        fail(f"--video-input {args.video_input}: no frame could be decoded")
    rate = count / elapsed
    print(f"{count} frames in {elapsed:.1f} s ({rate:.2f} frames/s) -> {path} ({fourcc})")


def open_webcam():
    """Camera 0 and a preview window, or a :class:`CliError` saying which is missing."""
    import cv2

    problems = []
    headless_linux = sys.platform.startswith("linux") and not (
        os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")
    )
    if headless_linux:
        problems.append("no display for the preview window ($DISPLAY is not set)")
    else:
        try:
            cv2.namedWindow(_WINDOW, cv2.WINDOW_NORMAL)
        except cv2.error:
            problems.append("this OpenCV has no GUI for the preview window (install opencv-python)")
    # OpenCV logs a warning per backend it tries; the one line below says what matters.
    level = cv2.utils.logging.getLogLevel()
    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)
    try:
        capture = cv2.VideoCapture(0)
    finally:
        cv2.utils.logging.setLogLevel(level)
    if not capture.isOpened():
        problems.insert(0, "no camera could be opened (camera index 0)")
    if problems:
        capture.release()
        fail(f"--webcam: {'; '.join(problems)}")
    return capture


def run_webcam(predictor, capture, args, metadata) -> None:
    import cv2

    print("webcam: press Esc or q in the window to stop")
    try:
        while True:
            ok, frame = capture.read()
            if not ok:
                print("webcam: the camera stopped delivering frames", file=sys.stderr)
                break
            image = frame[:, :, ::-1]
            instances = predictor([image])[0]
            drawn = _draw(image, instances, args.confidence_threshold, metadata)
            cv2.imshow(_WINDOW, np.ascontiguousarray(drawn[:, :, ::-1]))
            if cv2.waitKey(1) & 0xFF in (27, ord("q")):
                break
    except KeyboardInterrupt:
        pass
    finally:
        capture.release()
        cv2.destroyAllWindows()


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the demo; returns the exit status (1 when an input image was skipped)."""
    args = parse_args(argv)
    try:
        allocator = configure_cpu_allocator()  # $DETA_CPU_ALLOCATOR; before the model is built
    except ValueError as e:
        fail(str(e))
    setup_logger(name="deta").info("CPU allocator: %s", allocator)
    cfg = build_cfg(args.config_file, args.opts)
    args.output = default_output("demo", args.output)
    # Inputs are checked before the model is built, so a typo fails in a second.
    paths = collect_inputs(args.input) if args.input else []
    if args.input and not paths:
        fail(f"--input {' '.join(args.input)}: no images found")
    if args.video_input and not os.path.isfile(args.video_input):
        fail(f"--video-input {args.video_input}: no such file")
    capture = open_webcam() if args.webcam else None
    try:
        predictor = BatchPredictor(cfg, dtype=args.dtype)
    except PredictorError as e:
        fail(str(e))
    metadata = MetadataCatalog.get(cfg.DATASETS.TEST[0] if cfg.DATASETS.TEST else "__unused")

    if capture is not None:
        run_webcam(predictor, capture, args, metadata)
        return 0
    results: List[Dict] = []
    skipped = 0
    start = time.perf_counter()
    if args.video_input:
        run_video(predictor, args, metadata, results)
    else:
        skipped = run_images(predictor, paths, args, metadata, results)
        done, elapsed = len(paths) - skipped, time.perf_counter() - start
        print(
            f"{done} images in {elapsed:.1f} s ({done / elapsed:.2f} images/s, batch size "
            f"{args.batch_size}, {args.dtype})"
        )
    print(f"output written to {args.output}")
    if args.json:
        write_text_atomic(args.json, json.dumps(results))
        print(f"{len(results)} COCO-format detections written to {args.json}")
    if skipped:
        print(f"{skipped} of {len(paths)} inputs could not be read (named above)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    run_main(main)
