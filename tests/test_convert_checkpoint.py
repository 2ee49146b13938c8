"""Official checkpoint conversion: layouts, planted values, errors, atomic writes, fine-tuning."""

import argparse
import os
import re
import tempfile
import unittest

import torch
import torchvision

from detectron2.checkpoint import DetectionCheckpointer
from detectron2.modeling import build_model

import deta  # noqa: F401
from deta.checkpoint import (
    COCO_CATEGORY_IDS,
    ConversionError,
    convert_official_state_dict,
    convert_torchvision_resnet,
    load_official_checkpoint,
)
from deta.utils.cli import CliError
from tools import convert_official_checkpoint as tool

from .helpers.config import REPO, load
from .helpers.golden import WEIGHTS, golden_cfg, require_golden
from .helpers.tiny import tiny_batch

_TO_OFFICIAL_BLOCK = {"shortcut": "downsample.0", "shortcut.norm": "downsample.1"}


def to_official_layout(state):
    """This project's keys → the official ones (inverse of the converter), for building inputs."""
    out = {}
    for key, value in state.items():
        if key.startswith("backbone.stem.conv1.norm."):
            new = "backbone.0.body.bn1." + key.split(".")[-1]
        elif key.startswith("backbone.stem.conv1."):
            new = "backbone.0.body.conv1." + key.split(".")[-1]
        elif m := re.match(r"^backbone\.res(\d)\.(\d+)\.(.+)\.(\w+)$", key):
            stage, block, module, leaf = m.groups()
            if module in _TO_OFFICIAL_BLOCK:
                module = _TO_OFFICIAL_BLOCK[module]
            elif module.endswith(".norm"):
                module = "bn" + module[len("conv") : -len(".norm")]
            new = f"backbone.0.body.layer{int(stage) - 1}.{block}.{module}.{leaf}"
        elif key.startswith("backbone."):
            new = "backbone.0.body." + key[len("backbone.") :]
        else:
            new = key
        out[new] = torch.randn_like(value) if value.is_floating_point() else value
    return out


def _config(name):
    return os.path.join(REPO, "configs", name)


class TestOfficialLayouts(unittest.TestCase):
    def _roundtrip(self, config, num_classes, slice_coco, expected_keys=None):
        model = build_model(load(_config(config), "MODEL.DETA.NUM_CLASSES", num_classes))
        official = to_official_layout(model.state_dict())
        if expected_keys is not None:
            self.assertEqual(len(official), expected_keys)
        # Plant a value in an official key and find it in the converted model.
        planted = "transformer.decoder.layers.0.cross_attn.sampling_offsets.bias"
        official[planted] = torch.arange(official[planted].numel(), dtype=torch.float32)
        converted = convert_official_state_dict(official, slice_coco_classes=slice_coco)
        target = build_model(
            load(_config(config), "MODEL.DETA.NUM_CLASSES", 80 if slice_coco else num_classes)
        )
        result = target.load_state_dict(converted, strict=True)
        self.assertEqual((result.missing_keys, result.unexpected_keys), ([], []))
        got = target.transformer.decoder.layers[0].cross_attn.sampling_offsets.bias
        torch.testing.assert_close(got, official[planted])
        return official, target

    def test_resnet50_91_classes_sliced_to_80(self):
        official, model = self._roundtrip("deta_R_50_5scale_12ep.yaml", 91, True, expected_keys=638)
        # Backbone rename: torchvision layer1.0.bn2 -> Detectron2 res2.0.conv2.norm
        torch.testing.assert_close(
            model.backbone.res2[0].conv2.norm.running_var,
            official["backbone.0.body.layer1.0.bn2.running_var"],
        )
        ids = torch.as_tensor(COCO_CATEGORY_IDS)
        torch.testing.assert_close(
            model.class_embed[0].weight, official["class_embed.0.weight"][ids]
        )
        # The first-stage head (index 6) keeps row 0, the objectness logit.
        torch.testing.assert_close(model.class_embed[6].bias[0], official["class_embed.6.bias"][0])
        # The decoder aliases are the same tensors.
        self.assertIs(model.transformer.decoder.class_embed[3], model.class_embed[3])
        model.eval()
        with torch.no_grad():
            self.assertEqual(len(model(tiny_batch())), 2)

    def test_resnet50_keep_91(self):
        self._roundtrip("deta_R_50_5scale_12ep.yaml", 91, False)

    def test_swin_large_366_classes_kept(self):
        official, model = self._roundtrip("deta_swin_L_5scale_o365_24ep.yaml", 366, False)
        self.assertEqual(model.class_embed[0].weight.shape[0], 366)
        key = "backbone.0.body.layers.2.blocks.17.attn.relative_position_bias_table"
        self.assertEqual(tuple(official[key].shape), (529, 24))

    def test_objects365_366_rows_sliced_to_365(self):
        config = _config("deta_swin_L_5scale_o365_24ep.yaml")
        small = ("MODEL.SWIN.EMBED_DIM", 32, "MODEL.SWIN.DEPTHS", [2, 2, 2, 2],
                 "MODEL.SWIN.NUM_HEADS", [1, 2, 4, 8])  # fmt: skip
        model = build_model(load(config, *small, "MODEL.DETA.NUM_CLASSES", 366))
        official = to_official_layout(model.state_dict())
        converted = convert_official_state_dict(official, slice_classes=True)
        target = build_model(load(config, *small))
        self.assertEqual(target.class_embed[0].weight.shape[0], 365)
        result = target.load_state_dict(converted, strict=True)
        self.assertEqual((result.missing_keys, result.unexpected_keys), ([], []))
        # Contiguous class c is raw id c + 1: row c + 1 of the official decoder heads.
        torch.testing.assert_close(target.class_embed[0].bias, official["class_embed.0.bias"][1:])
        # The first-stage head keeps row 0 (objectness), then raw ids 2..365.
        enc = official["class_embed.6.weight"]
        torch.testing.assert_close(target.class_embed[6].weight[0], enc[0])
        torch.testing.assert_close(target.class_embed[6].weight[1:], enc[2:])


class TestConverterErrors(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.TemporaryDirectory()
        self.addCleanup(self.tmp.cleanup)
        self.out = os.path.join(self.tmp.name, "out.pth")

    def _run(self, source, *opts):
        return tool.main(["--source", source, "--output", self.out, *opts])

    def test_corrupted_file(self):
        bad = os.path.join(self.tmp.name, "bad.pth")
        with open(bad, "wb") as f:
            f.write(b"\x80\x02not a checkpoint")
        with self.assertRaises(ConversionError) as ctx:
            load_official_checkpoint(bad)
        self.assertIn("bad.pth", str(ctx.exception))
        self.assertEqual(self._run(bad), 1)
        self.assertFalse(os.path.exists(self.out))

    def test_file_from_another_model(self):
        other = os.path.join(self.tmp.name, "resnet.pth")
        torch.save({"model": torchvision.models.resnet18().state_dict()}, other)
        with self.assertRaises(ConversionError) as ctx:
            convert_official_state_dict(load_official_checkpoint(other)["model"])
        self.assertIn("unknown backbone", str(ctx.exception))
        self.assertEqual(self._run(other), 1)
        self.assertFalse(os.path.exists(self.out))

    def test_missing_keys_are_listed(self):
        model = build_model(
            load(_config("deta_R_50_5scale_12ep.yaml"), "MODEL.DETA.NUM_CLASSES", 91)
        )
        official = to_official_layout(model.state_dict())
        del official["transformer.level_embed"]
        path = os.path.join(self.tmp.name, "partial.pth")
        torch.save({"model": official, "args": argparse.Namespace(lr=2e-4), "epoch": 11}, path)
        with self.assertRaises(ConversionError) as ctx:
            tool.convert(tool.parse_args(["--source", path, "--output", self.out]))
        self.assertIn("transformer.level_embed", str(ctx.exception))
        self.assertEqual(self._run(path), 1)
        self.assertFalse(os.path.exists(self.out))

    def test_config_file_alias_and_trailing_overrides(self):
        base = ["--source", "a.pth", "--output", self.out]
        for flag in ("--config-file", "--config"):
            args = tool.parse_args([*base, flag, "x.yaml", "MODEL.DETA.NUM_QUERIES", "300"])
            self.assertEqual(args.config_file, "x.yaml")
            self.assertEqual(args.opts, ["MODEL.DETA.NUM_QUERIES", "300"])
        self.assertIsNone(tool.parse_args(base).config_file)

    def test_bad_override_is_named_before_writing(self):
        model = build_model(
            load(_config("deta_R_50_5scale_12ep.yaml"), "MODEL.DETA.NUM_CLASSES", 91)
        )
        path = os.path.join(self.tmp.name, "official.pth")
        torch.save({"model": to_official_layout(model.state_dict())}, path)
        with self.assertRaises(CliError) as ctx:
            self._run(path, "MODEL.DETA.NO_SUCH_KEY", "1")
        self.assertIn("NO_SUCH_KEY", str(ctx.exception))
        self.assertFalse(os.path.exists(self.out))

    def test_torchvision_backbone(self):
        state = torchvision.models.resnet50().state_dict()
        converted = convert_torchvision_resnet(state)
        model = build_model(load(_config("deta_R_50_5scale_12ep.yaml")))
        backbone_keys = {k for k in model.state_dict() if k.startswith("backbone.")}
        self.assertEqual(set(converted), backbone_keys)


class TestGoldenCheckpointTool(unittest.TestCase):
    """The genuine official file (args stored as a dict) through the command-line tool."""

    @classmethod
    def setUpClass(cls):
        require_golden(cls)
        cls._tmp = tempfile.TemporaryDirectory()
        cls.out = os.path.join(cls._tmp.name, "golden80.pth")
        small = [
            "MODEL.DETA.ENC_LAYERS",
            "2",
            "MODEL.DETA.DEC_LAYERS",
            "2",
            "MODEL.DETA.DIM_FEEDFORWARD",
            "512",
            "MODEL.DETA.NUM_QUERIES",
            "300",
        ]
        cls.rc = tool.main(["--source", WEIGHTS, "--output", cls.out, *small])

    @classmethod
    def tearDownClass(cls):
        cls._tmp.cleanup()

    def test_convert_and_load(self):
        self.assertEqual(self.rc, 0)
        out = self.out
        cfg = golden_cfg("MODEL.DETA.NUM_CLASSES", 80)
        model = build_model(cfg)
        ckpt = DetectionCheckpointer(model)._load_file(out)
        result = model.load_state_dict(ckpt["model"], strict=False)
        self.assertEqual((result.missing_keys, result.unexpected_keys), ([], []))

    def test_finetune_to_new_classes(self):
        """An 80-class checkpoint into a 4-class config: class heads re-initialised, rest kept."""
        self.assertEqual(self.rc, 0)
        out = self.out
        model = build_model(golden_cfg("MODEL.DETA.NUM_CLASSES", 4, "MODEL.DETA.MSDA_IMPL", "auto"))
        DetectionCheckpointer(model).resume_or_load(out, resume=False)
        self.assertEqual(tuple(model.class_embed[0].weight.shape), (4, 256))
        prior = -torch.log(torch.tensor((1 - 0.01) / 0.01))
        torch.testing.assert_close(model.class_embed[0].bias, prior.expand(4))
        converted = torch.load(out, weights_only=True)["model"]
        torch.testing.assert_close(
            model.transformer.level_embed, converted["transformer.level_embed"]
        )
        model.train()
        batch = tiny_batch(sizes=((128, 160), (96, 128)), boxes_per_image=(2, 1), num_classes=4)
        losses = model(batch)
        sum(losses.values()).backward()
        self.assertTrue(all(torch.isfinite(v) for v in losses.values()))


if __name__ == "__main__":
    unittest.main()
