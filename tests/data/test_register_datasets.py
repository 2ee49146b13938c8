"""Your own COCO-format data without Python: ``DATASETS.COCO_REGISTER``, ``train_net.py
--register`` and ``MODEL.DETA.NUM_CLASSES -1`` (``deta.data.datasets.register_from_config`` and
``resolve_num_classes``)."""

import json
import os
import subprocess
import sys
import unittest

import torch

from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.modeling import build_model

from deta.config import add_deta_config
from deta.data.datasets import DatasetConfigError, register_from_config, resolve_num_classes
from deta.utils.cli import CliError, build_cfg
from tests.helpers.config import REPO, load
from tests.helpers.data import TmpDirCase, coco_ann, write_coco, write_rgb
from tests.helpers.tiny import tiny_cfg
from tests.helpers.train import INSTANT_CONFIG, load_train_net

PREFIX = "deta_test_register_"


def make_coco(folder, num_images=2, category_ids=(1, 2, 3)):
    """A COCO json and its images in ``folder``: one or two boxes per image, every category used.

    Returns:
        (json_file, image_root)
    """
    image_root = os.path.join(folder, "images")
    os.makedirs(image_root, exist_ok=True)
    images, annotations = [], []
    for i in range(1, num_images + 1):
        write_rgb(os.path.join(image_root, f"{i}.png"), 64, 80, seed=i)
        images.append({"id": i, "file_name": f"{i}.png", "width": 80, "height": 64})
        for k in range(1 + i % 2):
            cat = category_ids[(i + k) % len(category_ids)]
            a = coco_ann(len(annotations) + 1, i, [8 + 20 * k, 8, 30, 40], cat=cat)
            a["area"] = 30.0 * 40.0  # pycocotools' evaluation reads the ground truth's area
            annotations.append(a)
    json_file = os.path.join(folder, "instances.json")
    categories = [{"id": c, "name": f"thing{c}"} for c in category_ids]
    write_coco(json_file, images, annotations, categories=categories)
    return json_file, image_root


def deta_cfg(*opts):
    cfg = get_cfg()
    add_deta_config(cfg)
    cfg.merge_from_list(list(opts))
    return cfg


class RegisterCase(TmpDirCase):
    """A temporary folder with one 3-category dataset; every name used is unregistered after."""

    def setUp(self):
        super().setUp()
        self.json_file, self.image_root = make_coco(self.dir)
        self.addCleanup(self._unregister)

    def _unregister(self):
        for name in DatasetCatalog.list():
            if name.startswith(PREFIX):
                DatasetCatalog.remove(name)
        for name in MetadataCatalog.list():
            if name.startswith(PREFIX):
                MetadataCatalog.remove(name)

    def triple(self, name="train"):
        return [PREFIX + name, self.json_file, self.image_root]

    def other_dataset(self, sub="other", category_ids=(1, 2)):
        json_file, image_root = make_coco(self.path(sub), num_images=3, category_ids=category_ids)
        return json_file, image_root


class TestRegisterFromConfig(RegisterCase):
    def test_triples_register_and_load(self):
        cfg = deta_cfg()
        cfg.DATASETS.COCO_REGISTER = [self.triple("a"), self.triple("b")]
        self.assertEqual(register_from_config(cfg), [PREFIX + "a", PREFIX + "b"])
        dicts = DatasetCatalog.get(PREFIX + "a")
        self.assertEqual([d["image_id"] for d in dicts], [1, 2])
        self.assertEqual([len(d["annotations"]) for d in dicts], [2, 1])
        self.assertEqual(dicts[0]["file_name"], os.path.join(self.image_root, "1.png"))
        meta = MetadataCatalog.get(PREFIX + "a")
        self.assertEqual(meta.thing_classes, ["thing1", "thing2", "thing3"])
        self.assertEqual(meta.evaluator_type, "coco")
        self.assertIn(PREFIX + "b", DatasetCatalog.list())

    def test_from_yaml_override_string(self):
        # What a user types on the command line: a Python literal, parsed by yacs.
        cfg = deta_cfg("DATASETS.COCO_REGISTER", repr([self.triple()]))
        register_from_config(cfg)
        self.assertEqual(len(DatasetCatalog.get(PREFIX + "train")), 2)

    def test_same_json_is_noop_other_json_reregisters(self):
        cfg = deta_cfg()
        cfg.DATASETS.COCO_REGISTER = [self.triple()]
        register_from_config(cfg)
        loader = DatasetCatalog[PREFIX + "train"]
        DatasetCatalog.get(PREFIX + "train")  # sets thing_classes in the metadata
        register_from_config(cfg)
        self.assertIs(DatasetCatalog[PREFIX + "train"], loader)
        json_file, image_root = self.other_dataset()
        cfg.DATASETS.COCO_REGISTER = [[PREFIX + "train", json_file, image_root]]
        register_from_config(cfg)  # would fail if the old thing_classes were kept
        self.assertEqual(len(DatasetCatalog.get(PREFIX + "train")), 3)
        self.assertEqual(MetadataCatalog.get(PREFIX + "train").thing_classes, ["thing1", "thing2"])

    def test_builtin_name_refused(self):
        builtin_json = MetadataCatalog.get("coco_2017_train").json_file
        cfg = deta_cfg()
        cfg.DATASETS.COCO_REGISTER = [["coco_2017_train", self.json_file, self.image_root]]
        with self.assertRaises(DatasetConfigError) as ctx:
            register_from_config(cfg)
        message = str(ctx.exception)
        self.assertIn("DATASETS.COCO_REGISTER[0]", message)
        self.assertIn("'coco_2017_train' is already registered", message)
        self.assertEqual(MetadataCatalog.get("coco_2017_train").json_file, builtin_json)

    def test_malformed_entries_named(self):
        cases = [
            ([PREFIX, self.json_file], "[0]"),  # no nesting: the strings are not triples
            (self.triple(), "write [["),  # one flat triple: the fix is shown
            ([[PREFIX + "x", self.json_file]], "[0]"),
            ([[PREFIX + "x", self.json_file, self.image_root, "extra"]], "[0]"),
            ([self.triple(), [PREFIX + "y", "", self.image_root]], "[1]"),
        ]
        for value, where in cases:
            with self.subTest(value=value):
                cfg = deta_cfg()
                cfg.DATASETS.COCO_REGISTER = value
                with self.assertRaises(DatasetConfigError) as ctx:
                    register_from_config(cfg)
                message = str(ctx.exception)
                self.assertIn("DATASETS.COCO_REGISTER", message)
                self.assertIn(where, message)
                self.assertIn("json_file", message)
        # Checked before anything is registered: the valid first entry of the last case too.
        self.assertNotIn(PREFIX + "train", DatasetCatalog.list())

    def test_missing_files_named(self):
        missing_json = self.path("nope.json")
        cfg = deta_cfg()
        cfg.DATASETS.COCO_REGISTER = [[PREFIX + "a", missing_json, self.image_root]]
        with self.assertRaises(DatasetConfigError) as ctx:
            register_from_config(cfg)
        self.assertIn(f"json_file {missing_json!r} does not exist", str(ctx.exception))
        self.assertIn(PREFIX + "a", str(ctx.exception))
        missing_root = self.path("no_images")
        cfg.DATASETS.COCO_REGISTER = [[PREFIX + "a", self.json_file, missing_root]]
        with self.assertRaisesRegex(DatasetConfigError, f"image_root '{missing_root}'"):
            register_from_config(cfg)

    def test_build_cfg_registers_and_resolves(self):
        cfg = build_cfg(
            INSTANT_CONFIG,
            [
                "DATASETS.COCO_REGISTER", repr([self.triple()]),
                "DATASETS.TRAIN", f"('{PREFIX}train',)",
                "MODEL.DETA.NUM_CLASSES", -1,
            ],
        )  # fmt: skip
        self.assertEqual(cfg.MODEL.DETA.NUM_CLASSES, 3)
        self.assertIn(PREFIX + "train", DatasetCatalog.list())
        # Missing files only warn in the tools (a run's config on a machine without its data)...
        missing = repr([[PREFIX + "gone", "nope.json", "."]])
        with self.assertLogs("deta.data.datasets", "WARNING") as logs:
            build_cfg(INSTANT_CONFIG, ["DATASETS.COCO_REGISTER", missing])
        self.assertIn("nope.json", "".join(logs.output))
        # ... but a class count that needs them is an error naming the file.
        with self.assertRaisesRegex(CliError, "nope.json"):
            opts = ["DATASETS.COCO_REGISTER", missing, "DATASETS.TRAIN", f"('{PREFIX}gone',)"]
            build_cfg(INSTANT_CONFIG, [*opts, "MODEL.DETA.NUM_CLASSES", -1])


class TestNumClasses(RegisterCase):
    def setUp(self):
        super().setUp()
        cfg = deta_cfg()
        cfg.DATASETS.COCO_REGISTER = [self.triple()]
        register_from_config(cfg)

    def test_minus_one_resolves_without_loading(self):
        cfg = deta_cfg("DATASETS.TRAIN", (PREFIX + "train",), "MODEL.DETA.NUM_CLASSES", -1)
        self.assertEqual(resolve_num_classes(cfg), 3)
        self.assertEqual(cfg.MODEL.DETA.NUM_CLASSES, 3)
        # Counted from the json's categories: the loader (which sets thing_classes) did not run.
        self.assertIsNone(MetadataCatalog.get(PREFIX + "train").get("thing_classes"))

    def test_mismatch_names_both_numbers(self):
        cfg = deta_cfg("DATASETS.TRAIN", (PREFIX + "train",))  # NUM_CLASSES default 80
        with self.assertRaises(DatasetConfigError) as ctx:
            resolve_num_classes(cfg)
        self.assertEqual(
            str(ctx.exception),
            f"MODEL.DETA.NUM_CLASSES is 80 but {PREFIX}train has 3 categories (thing_classes); "
            "set it to 3 or -1",
        )
        self.assertEqual(resolve_num_classes(cfg, check=False), 80)

    def test_builtin_coco_and_unregistered(self):
        coco = deta_cfg("DATASETS.TRAIN", ("coco_2017_train",))
        self.assertEqual(resolve_num_classes(coco), 80)  # from the metadata; no files needed
        coco.MODEL.DETA.NUM_CLASSES = -1
        self.assertEqual(resolve_num_classes(coco), 80)
        unknown = deta_cfg("DATASETS.TRAIN", (PREFIX + "absent",), "MODEL.DETA.NUM_CLASSES", 5)
        self.assertEqual(resolve_num_classes(unknown), 5)  # nothing to check against
        unknown.MODEL.DETA.NUM_CLASSES = -1
        with self.assertRaisesRegex(DatasetConfigError, f"'{PREFIX}absent'.*not a registered"):
            resolve_num_classes(unknown)
        with self.assertRaisesRegex(DatasetConfigError, "DATASETS.TRAIN is empty"):
            resolve_num_classes(deta_cfg("MODEL.DETA.NUM_CLASSES", -1))

    def test_train_sets_must_agree(self):
        json_file, image_root = self.other_dataset()
        cfg = deta_cfg("DATASETS.COCO_REGISTER", repr([[PREFIX + "two", json_file, image_root]]))
        register_from_config(cfg)
        cfg.merge_from_list(["DATASETS.TRAIN", (PREFIX + "train", PREFIX + "two")])
        cfg.MODEL.DETA.NUM_CLASSES = -1
        with self.assertRaisesRegex(DatasetConfigError, r"train has 3, .*two has 2"):
            resolve_num_classes(cfg)

    def test_python_registered_dataset_is_loaded(self):
        # No json_file and no thing_classes until its loader runs, as for a custom loader.
        def loader():
            MetadataCatalog.get(PREFIX + "py").thing_classes = ["a", "b", "c", "d"]
            return []

        DatasetCatalog.register(PREFIX + "py", loader)
        cfg = deta_cfg("DATASETS.TRAIN", (PREFIX + "py",), "MODEL.DETA.NUM_CLASSES", 7)
        self.assertEqual(resolve_num_classes(cfg), 7)  # unknown without loading: not checked
        cfg.MODEL.DETA.NUM_CLASSES = -1
        self.assertEqual(resolve_num_classes(cfg), 4)

    def test_model_never_built_with_minus_one(self):
        with self.assertRaises(ValueError) as ctx:
            build_model(tiny_cfg("MODEL.DETA.NUM_CLASSES", -1))
        self.assertIn("MODEL.DETA.NUM_CLASSES=-1", str(ctx.exception))
        self.assertIn("resolved before the model is built", str(ctx.exception))
        with self.assertRaisesRegex(ValueError, "MODEL.DETA.NUM_CLASSES=0"):
            build_model(tiny_cfg("MODEL.DETA.NUM_CLASSES", 0))

    def test_default_and_base_config_keep_80(self):
        self.assertEqual(deta_cfg().MODEL.DETA.NUM_CLASSES, 80)
        self.assertEqual(deta_cfg().DATASETS.COCO_REGISTER, [])
        base = load(os.path.join(REPO, "configs", "Base-DETA.yaml"))
        self.assertEqual(resolve_num_classes(base), 80)


class TestEvaluationWithoutArea(RegisterCase):
    def test_missing_areas_become_box_areas(self):
        from detectron2.structures import Boxes, BoxMode, Instances

        from deta.data.datasets import register_deta_coco_instances
        from deta.evaluation import build_coco_evaluator

        with open(self.json_file) as f:
            data = json.load(f)
        for ann in data["annotations"]:
            del ann["area"]
        no_area = self.path("no_area.json")
        with open(no_area, "w") as f:
            json.dump(data, f)
        name = PREFIX + "no_area"
        register_deta_coco_instances(name, {}, no_area, self.image_root)
        cfg = deta_cfg("OUTPUT_DIR", self.path("eval"))
        with self.assertLogs("deta.evaluation", "WARNING") as logs:
            evaluator = build_coco_evaluator(cfg, name, self.path("eval"))
        n = len(data["annotations"])
        self.assertIn(f"{n} of its ground-truth annotations have no 'area'", logs.output[0])
        areas = [a["area"] for a in evaluator._coco_api.dataset["annotations"]]
        self.assertEqual(areas, [30.0 * 40.0] * n)
        # The ground truth itself as predictions: every box found, AP 100.
        evaluator.reset()
        for record in DatasetCatalog.get(name):
            inst = Instances((record["height"], record["width"]))
            boxes = [BoxMode.convert(a["bbox"], a["bbox_mode"], BoxMode.XYXY_ABS)
                     for a in record["annotations"]]  # fmt: skip
            inst.pred_boxes = Boxes(torch.tensor(boxes, dtype=torch.float32))
            inst.scores = torch.ones(len(boxes))
            inst.pred_classes = torch.tensor([a["category_id"] for a in record["annotations"]])
            evaluator.process([{"image_id": record["image_id"]}], [{"instances": inst}])
        self.assertAlmostEqual(evaluator.evaluate()["bbox"]["AP"], 100.0, places=3)


class TestTrainNetRegister(RegisterCase):
    @classmethod
    def setUpClass(cls):
        cls.train_net = load_train_net()

    def parse(self, *argv):
        out = self.path("run")
        return self.train_net.argument_parser().parse_args(
            ["--config-file", INSTANT_CONFIG, *argv, "OUTPUT_DIR", out, "SEED", "7"]
        )

    def test_register_flag_in_setup(self):
        json_file, image_root = self.other_dataset("val")
        args = self.parse(
            "--register", *self.triple(),
            "--register", PREFIX + "val", json_file, image_root,
            "DATASETS.TRAIN", f"('{PREFIX}train',)",
            "DATASETS.TEST", f"('{PREFIX}val',)",
            "MODEL.DETA.NUM_CLASSES", "-1",
        )  # fmt: skip
        cfg = self.train_net.setup(args)
        self.assertTrue(cfg.is_frozen())
        self.assertEqual(cfg.MODEL.DETA.NUM_CLASSES, 3)
        self.assertEqual(
            [list(t) for t in cfg.DATASETS.COCO_REGISTER],
            [self.triple(), [PREFIX + "val", json_file, image_root]],
        )
        self.assertEqual(len(DatasetCatalog.get(PREFIX + "val")), 3)
        # The run's config.yaml registers the data itself: a worker given only it sees them too.
        self._unregister()
        saved = build_cfg(os.path.join(self.path("run"), "config.yaml"))
        self.assertEqual(saved.MODEL.DETA.NUM_CLASSES, 3)
        self.assertIn(PREFIX + "val", DatasetCatalog.list())

    def test_mismatch_stops_setup_but_not_eval_only(self):
        args = self.parse("--register", *self.triple(), "DATASETS.TRAIN", f"('{PREFIX}train',)")
        with self.assertRaisesRegex(CliError, f"is 6 but {PREFIX}train has 3 categor"):
            self.train_net.setup(args)
        args.eval_only = True
        self.assertEqual(self.train_net.setup(args).MODEL.DETA.NUM_CLASSES, 6)

    def test_trains_two_iterations_on_registered_data(self):
        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # spinning OpenMP threads are slow on a shared 2-core machine
        self.addCleanup(torch.set_num_threads, threads)
        # Non-contiguous category ids: the evaluator must map contiguous ids back to them.
        train_json, train_root = make_coco(self.path("t"), num_images=4, category_ids=(2, 5, 9))
        val_json, val_root = make_coco(self.path("v"), num_images=2, category_ids=(2, 5, 9))
        args = self.parse(
            "--register", PREFIX + "t", train_json, train_root,
            "--register", PREFIX + "v", val_json, val_root,
            "DATASETS.TRAIN", f"('{PREFIX}t',)",
            "DATASETS.TEST", f"('{PREFIX}v',)",
            "MODEL.DETA.NUM_CLASSES", "-1",
            "SOLVER.MAX_ITER", "2",
            "SOLVER.STEPS", "()",
        )  # fmt: skip
        self.train_net.main(args)  # trains, then evaluates on the val set
        with open(os.path.join(self.path("run"), "inference", "coco_instances_results.json")) as f:
            predicted = {d["category_id"] for d in json.load(f)}
        self.assertTrue(predicted)
        self.assertLessEqual(predicted, {2, 5, 9})  # the json's ids, not contiguous ones
        ckpt = torch.load(os.path.join(self.path("run"), "model_final.pth"), weights_only=True)
        self.assertEqual(ckpt["iteration"], 1)
        self.assertEqual(ckpt["model"]["class_embed.0.weight"].shape[0], 3)


class TestTrainNetCommandLine(TmpDirCase):
    def test_bad_register_is_one_error_line(self):
        missing = os.path.join(self.path("nowhere"), "train.json")
        script = os.path.join(REPO, "train_net.py")
        cmd = [sys.executable, script, "--config-file", INSTANT_CONFIG, "--register", "my_train",
               missing, self.dir, "OUTPUT_DIR", self.path("run")]  # fmt: skip
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300,
                              env={**os.environ, "PYTHONWARNINGS": "ignore"})  # fmt: skip
        self.assertEqual(proc.returncode, 2, proc.stderr[-2000:])
        last = proc.stderr.strip().splitlines()[-1]
        self.assertTrue(last.startswith("error: DATASETS.COCO_REGISTER[0]"), last)
        self.assertIn(missing, last)
        self.assertNotIn("Traceback", proc.stderr)


if __name__ == "__main__":
    unittest.main()
