"""Export: the static first-stage selection, a ``torch.export`` program with a dynamic image
size, the ONNX model in ONNX Runtime, and the command-line tools.

A tiny random-weight DETA is exported once per test run (the ONNX conversion takes about a
minute here) at 160×224 and run at other sizes. Detections are compared tie-aware
(tests/helpers/tie_aware.py): same classes, scores within 1e-4, boxes within 1e-4 of the image.
"""

import contextlib
import functools
import importlib.util
import io
import json
import os
import subprocess
import sys
import tempfile
import unittest

import torch

from detectron2.modeling import build_model

from deta import fast_cpu
from deta.export import ExportableDETA, select_queries_nms_static
from deta.export.exporter import ExportError, export_onnx, export_program, load_program
from deta.modeling.two_stage import select_queries_nms
from deta.utils.cli import run_main

from ..helpers.tie_aware import match_detections
from ..helpers.tiny import REPO, TINY_OPTS, tiny_cfg

HAS_EXTRA = all(importlib.util.find_spec(m) for m in ("onnx", "onnxruntime", "onnxscript"))
# make setup installs the [export] extra; CI sets DETA_REQUIRE_EXPORT so that a missing one fails.
NEEDS_EXTRA = unittest.skipUnless(
    HAS_EXTRA or os.getenv("DETA_REQUIRE_EXPORT") == "1",
    "needs the [export] extra (pip install -e .[export])",
)
EXPORT_SIZE = (160, 224)
OTHER_SIZES = [(192, 160), (176, 257)]
# Two decoder layers instead of six: the same graph structure, a smaller ONNX to convert.
EXTRA_OPTS = ["MODEL.DETA.DEC_LAYERS", 2, "MODEL.DETA.MSDA_IMPL", "cpp"]


def random_image(h, w, seed=0):
    return torch.rand(3, h, w, generator=torch.Generator().manual_seed(seed)) * 255


@functools.lru_cache(maxsize=None)
def tiny_model():
    torch.manual_seed(0)
    model = build_model(tiny_cfg(*EXTRA_OPTS)).eval()
    # Random heads give near-uniform scores; a wider spread keeps the test away from ties.
    with torch.no_grad():
        for head in model.class_embed:
            head.weight.mul_(20)
    return model


@functools.lru_cache(maxsize=None)
def exported():
    """(program, onnx path or None) of the tiny model, made once."""
    program = export_program(tiny_model(), random_image(*EXPORT_SIZE))
    onnx_path = None
    if HAS_EXTRA:
        folder = tempfile.mkdtemp(prefix="deta_export_test_")
        onnx_path = os.path.join(folder, "model.onnx")
        export_onnx(program, onnx_path)
    return program, onnx_path


def as_dict(boxes, scores, classes):
    return {"boxes": torch.as_tensor(boxes), "scores": torch.as_tensor(scores),
            "labels": torch.as_tensor(classes)}  # fmt: skip


def model_detections(model, image):
    """The PyTorch model's own inference (plain path) on one already-resized image."""
    _, h, w = image.shape
    with torch.no_grad(), fast_cpu.disabled():
        inst = model([{"image": image, "height": h, "width": w}])[0]["instances"]
    return as_dict(inst.pred_boxes.tensor, inst.scores, inst.pred_classes)


class TestImports(unittest.TestCase):
    def test_deta_never_imports_the_export_extra(self):
        code = (
            "import sys, deta, deta.export, deta.export.exporter\n"
            "extra = sorted(m for m in sys.modules\n"
            "               if m.split('.')[0] in ('onnx', 'onnxruntime', 'onnxscript'))\n"
            "print(extra)"
        )
        env = {**os.environ, "PYTHONWARNINGS": "ignore"}
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                              env=env, timeout=300)  # fmt: skip
        self.assertEqual(proc.returncode, 0, proc.stderr[-2000:])
        self.assertEqual(proc.stdout.strip().splitlines()[-1], "[]")


class TestStaticSelection(unittest.TestCase):
    """``select_queries_nms_static`` selects what the eager ``select_queries_nms`` selects."""

    SIZES = [(8, 10), (4, 5), (2, 3), (1, 2)]

    def inputs(self, seed, duplicate_boxes=False, level_bias=None):
        g = torch.Generator().manual_seed(seed)
        level_ids = torch.cat(
            [torch.full((h * w,), i, dtype=torch.long) for i, (h, w) in enumerate(self.SIZES)]
        )
        S = len(level_ids)
        objectness = torch.randn(1, S, generator=g)
        if level_bias is not None:
            objectness += torch.tensor(level_bias)[level_ids]
        boxes = torch.randn(1, S, 4, generator=g)
        if duplicate_boxes:  # NMS keeps one box per level: fewer than the queries survive
            boxes[:] = boxes[:, :1]
        return objectness, boxes, level_ids, [h * w for h, w in self.SIZES]

    def check(self, num_queries, pre_nms_topk, nms_thresh, **kw):
        for seed in range(5):
            args = self.inputs(seed, **kw)
            expected = select_queries_nms(*args, num_queries, pre_nms_topk, nms_thresh)
            got = select_queries_nms_static(*args, num_queries, pre_nms_topk, nms_thresh)
            self.assertTrue(torch.equal(got, expected), f"seed {seed}: {got} vs {expected}")

    def test_normal(self):
        self.check(num_queries=20, pre_nms_topk=30, nms_thresh=0.5)

    def test_per_level_cap_and_top_up(self):
        # Level 0 scores far above the rest: it is capped at q // L, the rest tops up to q.
        self.check(num_queries=24, pre_nms_topk=40, nms_thresh=0.7, level_bias=[5.0, 0, 0, -2])

    def test_fallback_when_too_few_survive(self):
        self.check(num_queries=20, pre_nms_topk=30, nms_thresh=0.5, duplicate_boxes=True)

    def test_batch_is_refused(self):
        objectness, boxes, level_ids, sizes = self.inputs(0)
        with self.assertRaisesRegex(ValueError, "one image"):
            select_queries_nms_static(objectness.repeat(2, 1), boxes.repeat(2, 1, 1), level_ids,
                                      sizes, 20)  # fmt: skip


class TestProgram(unittest.TestCase):
    """The ``torch.export`` program: traced at one size, run at others."""

    @classmethod
    def setUpClass(cls):
        cls.model = tiny_model()
        cls.program = exported()[0]
        cls.wrapper = ExportableDETA(cls.model)

    def test_op_is_one_node(self):
        targets = [str(n.target) for n in self.program.graph.nodes if n.op == "call_function"]
        # One node per attention layer: 1 encoder and 2 decoder layers.
        self.assertEqual(sum("deta.ms_deform_attn_forward" in t for t in targets), 3)
        self.assertTrue(any("deta.group_nms" in t for t in targets))
        self.assertFalse(any("grid_sampler" in t for t in targets))

    def test_other_sizes_match_the_model(self):
        module = self.program.module()
        for h, w in [EXPORT_SIZE, *OTHER_SIZES]:
            image = random_image(h, w, seed=h)
            with torch.no_grad(), fast_cpu.disabled():
                got = as_dict(*module(image))
                wrapped = as_dict(*self.wrapper(image))
            expected = model_detections(self.model, image)
            self.assertGreater(len(expected["scores"]), 10)
            self.assertEqual(match_detections(expected, got, (h, w), atol=1e-4), [], (h, w))
            self.assertEqual(match_detections(wrapped, got, (h, w), atol=1e-5), [], (h, w))

    def test_save_and_load(self):
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "model.pt2")
            torch.export.save(self.program, path)
            loaded = load_program(path).module()
        h, w = OTHER_SIZES[0]
        image = random_image(h, w, seed=1)
        with torch.no_grad():
            got = as_dict(*loaded(image))
        self.assertEqual(match_detections(model_detections(self.model, image), got, (h, w),
                                          atol=1e-4), [])  # fmt: skip

    def test_too_small_sample_is_refused(self):
        with self.assertRaisesRegex(ExportError, "export needs both sides >= "):
            export_program(self.model, random_image(40, 200))

    def test_below_the_minimum_size_is_refused_at_run_time(self):
        with self.assertRaises(Exception):
            self.program.module()(random_image(40, 200))


@NEEDS_EXTRA
class TestOnnx(unittest.TestCase):
    """The ONNX model in ONNX Runtime (CPU) against the PyTorch model."""

    @classmethod
    def setUpClass(cls):
        import onnxruntime as ort

        cls.model = tiny_model()
        cls.path = exported()[1]
        cls.session = ort.InferenceSession(cls.path, providers=["CPUExecutionProvider"])

    def test_standard_ops_only(self):
        import onnx

        proto = onnx.load(self.path)
        onnx.checker.check_model(proto, full_check=True)
        opset = {o.domain: o.version for o in proto.opset_import}
        self.assertGreaterEqual(opset[""], 17)
        local = {f.name for f in proto.functions}
        domains = {n.domain for n in proto.graph.node if n.op_type not in local}
        self.assertLessEqual(domains, {"", "ai.onnx"})
        op_types = {n.op_type for n in proto.graph.node}
        for f in proto.functions:
            op_types |= {n.op_type for n in f.node}
        self.assertIn("GridSample", op_types)
        self.assertIn("NonMaxSuppression", op_types)
        self.assertEqual([i.name for i in proto.graph.input], ["image"])
        self.assertEqual([o.name for o in proto.graph.output], ["boxes", "scores", "classes"])
        dims = proto.graph.input[0].type.tensor_type.shape.dim
        self.assertEqual(dims[0].dim_value, 3)
        self.assertTrue(dims[1].dim_param and dims[2].dim_param)  # symbolic H and W

    def test_benchmark_peer(self):
        """``tools/benchmark.py inference --peer onnxruntime`` times an export side by side.

        It reuses this file's export (``--onnx-model``): what is checked is the tool's
        mechanics (the requested iterations, the end-to-end comparison), not a speed.
        """
        with tempfile.TemporaryDirectory() as tmp:
            out = os.path.join(tmp, "result.json")
            cmd = [sys.executable, os.path.join(REPO, "tools", "benchmark.py"), "inference",
                   "--json", out, "--config-file",
                   os.path.join(REPO, "configs", "quick_schedules", "deta_instant_test.yaml"),
                   "--threads", "1", "--image-sizes", "%dx%d" % OTHER_SIZES[1],
                   "--batch-sizes", "1", "--warmup", "0", "--iters", "2",
                   "--peer", "onnxruntime", "--onnx-model", self.path]  # fmt: skip
            proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
            self.assertEqual(proc.returncode, 0, proc.stderr[-3000:])
            with open(out) as f:
                row = json.load(f)["results"][0]
        peer = row["peer"]
        self.assertNotIn("error", peer, peer.get("error"))
        self.assertIn("onnxruntime", peer["impl"])
        self.assertEqual((peer["forward"]["iters"], peer["forward"]["warmup"]), (2, 0))
        self.assertGreater(peer["detections"], 0)
        self.assertIn("e2e", row["ours"])
        self.assertRegex(proc.stdout, r"onnxruntime .* \d+\.\d\dx")

    def test_ort_matches_pytorch_at_other_sizes(self):
        for h, w in OTHER_SIZES:
            image = random_image(h, w, seed=h + w)
            boxes, scores, classes = self.session.run(None, {"image": image.numpy()})
            self.assertEqual(classes.dtype.name, "int64")
            got = as_dict(boxes, scores, classes)
            expected = model_detections(self.model, image)
            self.assertGreater(len(expected["scores"]), 10)
            self.assertEqual(match_detections(expected, got, (h, w), atol=1e-4), [], (h, w))


def load_tool(name):
    path = os.path.join(REPO, "tools", "deploy", f"{name}.py")
    spec = importlib.util.spec_from_file_location(f"deta_tools_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class TestExportTool(unittest.TestCase):
    CONFIG = os.path.join(REPO, "configs", "Base-DETA.yaml")
    OPTS = [*TINY_OPTS, *EXTRA_OPTS, "INPUT.MIN_SIZE_TEST", 160, "INPUT.MAX_SIZE_TEST", 224]

    def run_tool(self, *args, opts=None):
        tool = load_tool("export_model")
        argv = ["--config-file", self.CONFIG, *args, *(self.OPTS if opts is None else opts)]
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            with self.assertRaises(SystemExit) as exit_:
                run_main(lambda: tool.main([str(a) for a in argv]))
        return exit_.exception.code, out.getvalue(), err.getvalue()

    def test_torch_export_writes_a_program_that_runs(self):
        with tempfile.TemporaryDirectory() as tmp:
            weights = os.path.join(tmp, "tiny.pth")
            torch.save({"model": tiny_model().state_dict()}, weights)
            code, out, err = self.run_tool(
                "--format", "torch_export", "--output", tmp,
                opts=[*self.OPTS, "MODEL.WEIGHTS", weights],
            )  # fmt: skip
            self.assertEqual(code, 0, err)
            path = os.path.join(tmp, "model.pt2")
            self.assertIn(f"exported {path}", out)
            self.assertIn("torch.export.load", out)
            h, w = OTHER_SIZES[1]
            image = random_image(h, w, seed=3)
            with torch.no_grad():
                got = as_dict(*load_program(path).module()(image))
        expected = model_detections(tiny_model(), image)
        self.assertEqual(match_detections(expected, got, (h, w), atol=1e-4), [])

    def test_torchscript_is_refused_with_the_reason(self):
        code, _, err = self.run_tool("--format", "torchscript", "--output", tempfile.gettempdir())
        self.assertEqual(code, 2)
        self.assertEqual(err.count("\n"), 1, err)
        self.assertIn("--format torchscript is not supported", err)
        self.assertIn("--format onnx", err)

    def test_too_small_sample_image_is_refused(self):
        with tempfile.TemporaryDirectory() as tmp:
            code, _, err = self.run_tool(
                "--format", "torch_export", "--output", tmp,
                opts=[*TINY_OPTS, *EXTRA_OPTS, "INPUT.MIN_SIZE_TEST", 40],
            )  # fmt: skip
        self.assertEqual(code, 2)
        self.assertEqual(err.count("\n"), 1, err)
        self.assertIn("export needs both sides >=", err)

    def test_corrupt_weights_are_named(self):
        with tempfile.TemporaryDirectory() as tmp:
            weights = os.path.join(tmp, "broken.pth")
            with open(weights, "wb") as f:
                f.write(b"garbage" * 10)
            code, _, err = self.run_tool(
                "--output", tmp, opts=[*self.OPTS, "MODEL.WEIGHTS", weights]
            )
        self.assertEqual(code, 2)
        self.assertEqual(err.count("\n"), 1, err)
        self.assertIn(weights, err)
        self.assertNotIn("weights_only=False", err)


@NEEDS_EXTRA
class TestEvalExported(unittest.TestCase):
    """``eval_exported.evaluate`` on ONNX Runtime gives PyTorch's COCO results and AP."""

    def test_same_results_as_the_model(self):
        from detectron2.data import build_detection_test_loader
        from detectron2.evaluation import inference_on_dataset

        from deta.data import DetaDatasetMapper, register_deta_synthetic
        from deta.evaluation import build_coco_evaluator

        from ..helpers.train import TINY_DATA, make_tiny_dataset

        tool = load_tool("eval_exported")
        cfg = tiny_cfg(*EXTRA_OPTS, "INPUT.MIN_SIZE_TEST", 160, "INPUT.MAX_SIZE_TEST", 224,
                       "DATASETS.TEST", "('deta_synthetic_val',)")  # fmt: skip
        with tempfile.TemporaryDirectory() as tmp:
            register_deta_synthetic(make_tiny_dataset(tmp))
            try:
                run = tool.load_runner(exported()[1])
                with contextlib.redirect_stdout(io.StringIO()):
                    got, _ = tool.evaluate(run, cfg, "deta_synthetic_val", os.path.join(tmp, "a"))
                    loader = build_detection_test_loader(
                        cfg, "deta_synthetic_val", mapper=DetaDatasetMapper(cfg, False)
                    )
                    evaluator = build_coco_evaluator(cfg, "deta_synthetic_val",
                                                     os.path.join(tmp, "b"))  # fmt: skip
                    with fast_cpu.disabled():
                        expected = inference_on_dataset(tiny_model(), loader, evaluator)
                results = {}
                for name in ("a", "b"):
                    with open(os.path.join(tmp, name, "coco_instances_results.json")) as f:
                        results[name] = json.load(f)
            finally:
                register_deta_synthetic()  # back to the default root
        self.assertGreater(len(results["b"]), 0)
        self.assertEqual(len(results["a"]), len(results["b"]))
        by_image = {}
        for name, rows in results.items():
            for r in rows:
                by_image.setdefault(r["image_id"], {}).setdefault(name, []).append(r)
        for image_id, runs in by_image.items():
            a, b = (_coco_to_dict(runs.get(n, [])) for n in ("a", "b"))
            # Boxes within 1e-4 of the smallest image side the tiny set can have (stricter than
            # 1e-4 of each image's own size).
            side = TINY_DATA["min_long_side"] * 0.5
            self.assertEqual(match_detections(b, a, (side, side), atol=1e-4), [], image_id)
        self.assertAlmostEqual(got["bbox"]["AP"], expected["bbox"]["AP"], delta=0.1)


def _coco_to_dict(rows):
    xywh = torch.tensor([r["bbox"] for r in rows]).reshape(-1, 4)
    return {
        "scores": torch.tensor([r["score"] for r in rows]),
        "labels": torch.tensor([r["category_id"] for r in rows]),
        "boxes": torch.cat([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], 1),
    }


class TestEvalTool(unittest.TestCase):
    def test_missing_and_wrong_model_files(self):
        with tempfile.TemporaryDirectory() as tmp:
            bad = os.path.join(tmp, "model.onnx")
            with open(bad, "wb") as f:
                f.write(b"not an onnx model")
            for path, why in ((os.path.join(tmp, "none.onnx"), "no such file"),
                              (bad, "not a loadable ONNX model")):  # fmt: skip
                if why.startswith("not a loadable") and not HAS_EXTRA:
                    continue
                proc = subprocess.run(
                    [sys.executable, os.path.join(REPO, "tools", "deploy", "eval_exported.py"),
                     "--model", path, "--config-file",
                     os.path.join(REPO, "configs", "deta_R_18_synthetic_cpu.yaml")],
                    capture_output=True, text=True, timeout=300,
                    env={**os.environ, "PYTHONWARNINGS": "ignore"},
                )  # fmt: skip
                self.assertEqual(proc.returncode, 2, proc.stderr[-2000:])
                last = proc.stderr.strip().splitlines()[-1]
                self.assertTrue(last.startswith("error: --model"), last)
                self.assertIn(path, last)
                self.assertIn(why, last)
                self.assertNotIn("Traceback", proc.stderr)


if __name__ == "__main__":
    unittest.main()
