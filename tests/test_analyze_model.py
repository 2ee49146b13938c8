"""``tools/analyze_model.py``: parameter total, FLOPs with the deformable-attention handles, mapped
inputs, structure, and the one-line error for a bad config.

A tiny random-weight DETA (tests/helpers/tiny.py) on a 128x160 synthetic image keeps each traced
forward to a second or two. ``main`` runs in-process through ``run_main``, the script's exit path.
"""

import contextlib
import io
import json
import math
import os
import tempfile
import unittest

import torch

from detectron2.data import DatasetCatalog
from detectron2.modeling import build_model

from deta.layers import has_cpp_ext
from deta.utils.cli import CliError, run_main
from tools import analyze_model

from .helpers.data import write_rgb
from .helpers.tiny import REPO, TINY_OPTS, tiny_cfg

CONFIG = os.path.join(REPO, "configs", "Base-DETA.yaml")
SIZE = (128, 160)
OPTS = [str(x) for x in TINY_OPTS]


def run_tool(*argv):
    """(exit status, stdout, stderr) of the tool's main, as the script would end."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            run_main(lambda: analyze_model.main(list(argv)))
        except SystemExit as e:
            return e.code, out.getvalue(), err.getvalue()
    raise AssertionError("run_main did not exit")


def msda_macs(cfg, h, w):
    """What the handle must add: 5 MACs per channel per sampled point, over every MSDA call."""
    d = cfg.MODEL.DETA
    sizes = []
    for stride in (8, 16, 32):  # res3..res5
        sizes.append((math.ceil(h / stride), math.ceil(w / stride)))
    while len(sizes) < d.NUM_FEATURE_LEVELS:  # extra levels: 3x3 stride-2 convs, padding 1
        ph, pw = sizes[-1]
        sizes.append(((ph + 1) // 2, (pw + 1) // 2))
    tokens = sum(a * b for a, b in sizes)
    per_query = d.NUM_FEATURE_LEVELS * d.HIDDEN_DIM * 5  # L * (M * D) * (4 + 1), P apart
    enc = tokens * d.ENC_LAYERS * d.ENC_N_POINTS
    dec = d.NUM_QUERIES * d.DEC_LAYERS * d.DEC_N_POINTS
    return per_query * (enc + dec)


class TestAnalyzeModel(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        # One thread: OpenMP threads spinning on a shared 2-core machine slow everything down.
        cls._threads = torch.get_num_threads()
        torch.set_num_threads(1)
        cls._tmp = tempfile.TemporaryDirectory()
        cls.root = cls._tmp.name

    @classmethod
    def tearDownClass(cls):
        torch.set_num_threads(cls._threads)
        cls._tmp.cleanup()

    def analyze(self, *argv, opts=()):
        """The report.json of a successful run, and its stdout."""
        output = tempfile.mkdtemp(dir=self.root)
        code, out, err = run_tool(
            *argv, "--output", output, "--config-file", CONFIG, *OPTS, *map(str, opts)
        )
        self.assertEqual(code, 0, err)
        with open(os.path.join(output, "report.json")) as f:
            report = json.load(f)
        with open(os.path.join(output, "report.txt")) as f:
            self.assertIn(f.read().strip(), out)  # the file holds what was printed
        return report, out

    def test_parameter_total_is_the_models(self):
        report, out = self.analyze("--tasks", "parameter", "--max-depth", "2")
        model = build_model(tiny_cfg())
        total = sum(p.numel() for p in model.parameters())
        self.assertEqual(report["parameter"]["total"], total)
        self.assertIn(f"Total parameters: {total:,} (", out)
        self.assertIn("transformer.decoder", out)
        self.assertNotIn("transformer.decoder.layers", out)  # deeper than --max-depth 2

    @unittest.skipUnless(has_cpp_ext(), "deta._C is not built: no deta::ms_deform_attn_forward op")
    def test_flop_counts_deformable_attention(self):
        opts = ["MODEL.DETA.MSDA_IMPL", "cpp"]
        report, out = self.analyze("--tasks", "flop", "--size", *map(str, SIZE), opts=opts)
        flop = report["flop"]
        self.assertEqual(flop["image_sizes"], [list(SIZE)])
        self.assertFalse([op for op in flop["unsupported_ops"] if "ms_deform_attn" in op])
        self.assertIn("ms_deform_attn_forward", flop["by_operator_flops"])
        self.assertIn("fused multiply-add as one flop", out)

        cfg = tiny_cfg(*opts)
        torch.manual_seed(0)
        model = build_model(cfg)
        image = analyze_model.synthetic_images(1, *SIZE)[0]
        without = analyze_model.count_flops(model, image, deform_attn=False)
        self.assertIn("deta::ms_deform_attn_forward", without["unsupported"])
        self.assertGreater(flop["total_flops"], without["total"])
        self.assertEqual(flop["total_flops"] - without["total"], msda_macs(cfg, *SIZE))

        stages = flop["by_stage_flops"]
        self.assertEqual(sum(stages.values()), flop["total_flops"])
        for stage in ("backbone", "neck", "encoder", "proposals", "decoder", "heads"):
            self.assertGreater(stages[stage], 0, stage)
        self.assertGreaterEqual(stages["other"], 0)

    @unittest.skipUnless(has_cpp_ext(), "deta._C is not built: nothing to compare the path with")
    def test_grid_sample_path_counts_the_same(self):
        image = analyze_model.synthetic_images(1, *SIZE)[0]
        totals = {}
        for impl in ("cpp", "pytorch"):
            model = build_model(tiny_cfg("MODEL.DETA.MSDA_IMPL", impl))
            result = analyze_model.count_flops(model, image)
            self.assertFalse([op for op in result["unsupported"] if "grid_sampler" in op])
            totals[impl] = result["total"]
        self.assertIn("grid_sampler", result["by_operator"])
        self.assertEqual(totals["pytorch"], totals["cpp"])

    def test_mapped_inputs(self):
        # Resized by the test mapper: 100x120 with short side 112 (long side under 160).
        path = os.path.join(self.root, "sample.png")
        write_rgb(path, 100, 120)
        resize = ["INPUT.MIN_SIZE_TEST", 112, "INPUT.MAX_SIZE_TEST", 160]
        report, _ = self.analyze("--tasks", "flop", "--sample-image", path, opts=resize)
        self.assertEqual(report["flop"]["image_sizes"], [[112, 134]])

        name = "analyze_model_test_images"
        DatasetCatalog.register(name, lambda: [{"file_name": path, "image_id": 1}] * 3)
        self.addCleanup(DatasetCatalog.remove, name)
        report, _ = self.analyze(
            "--tasks", "flop", "--dataset", "--num-inputs", "2",
            opts=[*resize, "DATASETS.TEST", f'("{name}",)'],
        )  # fmt: skip
        self.assertEqual(report["flop"]["num_inputs"], 2)
        self.assertEqual(report["flop"]["total_flops_std"], 0)

    def test_structure(self):
        _, out = self.analyze("--tasks", "structure")
        self.assertIn("DETA(", out)
        self.assertIn("MSDeformAttn(", out)

    def test_bad_config_is_one_line(self):
        missing = os.path.join(self.root, "no_such_config.yaml")
        code, out, err = run_tool("--tasks", "parameter", "--config-file", missing)
        self.assertEqual(code, 2)
        self.assertEqual(err.count("\n"), 1, err)
        self.assertTrue(err.startswith("error: "), err)
        self.assertIn(missing, err)
        with self.assertRaises(CliError):
            analyze_model.main(["--tasks", "parameter", "--config-file", missing])

    def test_bad_sample_image_is_one_line(self):
        missing = os.path.join(self.root, "missing.png")
        argv = ["--tasks", "flop", "--sample-image", missing, "--config-file", CONFIG, *OPTS]
        code, _, err = run_tool(*argv)
        self.assertEqual(code, 2)
        self.assertEqual(err, f"error: --sample-image {missing}: no such file\n")


if __name__ == "__main__":
    unittest.main()
