"""Every shipped yaml merges into Detectron2's config and builds a model; bad values are named."""

import glob
import os
import unittest
from unittest import mock

import torch

from detectron2.config import CfgNode
from detectron2.modeling import build_model

import deta  # noqa: F401  registers DETA and the backbones
from deta.modeling import DETA

from .helpers.config import REPO, load

CONFIGS = sorted(glob.glob(os.path.join(REPO, "configs", "**", "*.yaml"), recursive=True))


def _keys(node, prefix=""):
    for key, value in node.items():
        if isinstance(value, CfgNode):
            yield from _keys(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}"


class TestEveryKeyIsRead(unittest.TestCase):
    # Only checked, never used: the one variant built here (see deta/config.py).
    FIXED = {"TWO_STAGE", "WITH_BOX_REFINE"}
    # Read by train_net.py's Trainer.build_model, after the model is built
    # (tests/test_compile.py::test_train_net_compiles_as_the_config_says).
    READ_BY_TRAINER = {"COMPILE"}

    def test_every_model_deta_key_is_read_by_the_model(self):
        cfg = load(os.path.join(REPO, "configs", "Base-DETA.yaml"))
        paths = {}

        def walk(node, prefix):
            paths[id(node)] = prefix
            for key, value in node.items():
                if isinstance(value, CfgNode):
                    walk(value, f"{prefix}{key}.")

        walk(cfg.MODEL.DETA, "")
        read = set()
        getattr_, getitem = CfgNode.__getattr__, CfgNode.__getitem__

        def record(node, key):
            if id(node) in paths and isinstance(key, str):
                read.add(paths[id(node)] + key)

        def rec_getattr(node, key):
            record(node, key)
            return getattr_(node, key)

        def rec_getitem(node, key):
            record(node, key)
            return getitem(node, key)

        # The config check reads every key; what counts is what builds the model.
        with mock.patch("deta.modeling.deta.check_deta_config"), \
                mock.patch.object(CfgNode, "__getattr__", rec_getattr), \
                mock.patch.object(CfgNode, "__getitem__", rec_getitem):  # fmt: skip
            DETA.from_config(cfg)
        unread = set(_keys(cfg.MODEL.DETA)) - read - self.FIXED - self.READ_BY_TRAINER
        self.assertEqual(unread, set(), "MODEL.DETA keys that nothing reads")
        self.assertGreater(len(read), 40)


class TestConfigs(unittest.TestCase):
    def test_configs_exist(self):
        names = {os.path.basename(p) for p in CONFIGS}
        for required in (
            "Base-DETA.yaml",
            "deta_R_50_5scale_12ep.yaml",
            "deta_R_50_5scale_24ep.yaml",
            "improved_ddetr_R_50_5scale_50ep.yaml",
            "two_stage_ddetr_R_50_4scale_50ep.yaml",
        ):
            self.assertIn(required, names)

    def test_every_config_merges_and_builds(self):
        for path in CONFIGS:
            with self.subTest(config=os.path.relpath(path, REPO)):
                cfg = load(path)
                self.assertEqual(cfg.MODEL.META_ARCHITECTURE, "DETA")
                model = build_model(cfg)
                n = sum(p.numel() for p in model.parameters() if p.requires_grad)
                self.assertGreater(n, 0)
                del model

    def test_deta_r50_parameter_count(self):
        """The official model prints 48.2 M trainable parameters (91 classes)."""
        path = os.path.join(REPO, "configs", "deta_R_50_5scale_12ep.yaml")
        model = build_model(load(path, "MODEL.DETA.NUM_CLASSES", 91))
        unique = {id(p): p for p in model.parameters() if p.requires_grad}
        n = sum(p.numel() for p in unique.values())
        self.assertAlmostEqual(n / 1e6, 48.2, delta=0.05)


class TestConfigErrors(unittest.TestCase):
    def _build(self, *opts):
        return build_model(load(os.path.join(REPO, "configs", "Base-DETA.yaml"), *opts))

    def test_messages_name_the_key(self):
        cases = [
            (("MODEL.DETA.HIDDEN_DIM", 250), "MODEL.DETA.HIDDEN_DIM"),
            (("MODEL.DETA.NUM_FEATURE_LEVELS", 2), "MODEL.DETA.NUM_FEATURE_LEVELS"),
            (("MODEL.DETA.STAGE1.IOU_LABELS", [0, 1]), "MODEL.DETA.STAGE1.IOU_LABELS"),
            (("MODEL.DETA.MSDA_IMPL", "triton"), "MODEL.DETA.MSDA_IMPL"),
            (("MODEL.DETA.IN_FEATURES", ["res3", "res6"]), "MODEL.DETA.IN_FEATURES"),
            (("MODEL.DETA.TWO_STAGE", False), "MODEL.DETA.TWO_STAGE"),
        ]
        for opts, key in cases:
            with self.subTest(key=key):
                with self.assertRaises(ValueError) as ctx:
                    self._build(*opts)
                self.assertIn(key, str(ctx.exception))

    def test_unknown_key_is_rejected(self):
        # yacs reports unknown keys with an AssertionError that names the full key.
        with self.assertRaises(AssertionError) as ctx:
            load(os.path.join(REPO, "configs", "Base-DETA.yaml"), "MODEL.DETA.NUM_QUERY", 10)
        self.assertIn("MODEL.DETA.NUM_QUERY", str(ctx.exception))

    def test_wrong_type_is_rejected(self):
        with self.assertRaises(ValueError):
            load(os.path.join(REPO, "configs", "Base-DETA.yaml"), "MODEL.DETA.NUM_QUERIES", "many")


if __name__ == "__main__":
    torch.set_num_threads(2)
    unittest.main()
