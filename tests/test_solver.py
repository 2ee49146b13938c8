"""Tests of ``deta.solver``: parameter groups, weight decay and full-model gradient clipping."""

import os
import unittest

import torch
from torch import nn

from detectron2.config import get_cfg
from detectron2.modeling import build_model

import deta  # noqa: F401  registers DETA
from deta import add_deta_config
from deta.solver import build_deta_optimizer, deta_param_groups

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_INSTANT = os.path.join(_REPO, "configs", "quick_schedules", "deta_instant_test.yaml")


def _cfg(*opts):
    cfg = get_cfg()
    add_deta_config(cfg)
    cfg.merge_from_file(_INSTANT)
    cfg.merge_from_list(list(opts))
    return cfg


class _Toy(nn.Module):
    """Names that fall into each of the three groups, plus a frozen and a shared parameter."""

    def __init__(self):
        super().__init__()
        self.backbone = nn.Linear(3, 3)
        self.sampling_offsets = nn.Linear(3, 3)
        self.head = nn.Linear(3, 3)
        self.norm = nn.LayerNorm(3)
        self.alias = self.head  # shared module: its parameters must appear once
        self.frozen = nn.Linear(3, 3)
        self.frozen.requires_grad_(False)

    def forward(self, x):
        return self.norm(self.head(self.sampling_offsets(self.backbone(x)))).sum()


def _total_grad_norm(model):
    return torch.norm(
        torch.stack([p.grad.norm() for p in model.parameters() if p.grad is not None])
    )


class TestParamGroups(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        # FREEZE_AT 2 + FrozenBN: the stem and res2 are frozen, the rest of the backbone trains.
        cls.cfg = _cfg(
            "MODEL.BACKBONE.FREEZE_AT", 2,
            "MODEL.RESNETS.NORM", "FrozenBN",
            "SOLVER.BASE_LR", 2e-4,
            "SOLVER.BACKBONE_MULTIPLIER", 0.1,
            "SOLVER.WEIGHT_DECAY", 1e-4,
        )  # fmt: skip
        cls.model = build_model(cls.cfg)
        cls.optimizer = build_deta_optimizer(cls.cfg, cls.model)
        cls.lr_of = {}
        cls.wd_of = {}
        for group in cls.optimizer.param_groups:
            for p in group["params"]:
                cls.lr_of.setdefault(id(p), []).append(group["lr"])
                cls.wd_of[id(p)] = group["weight_decay"]

    def test_group_order_and_lrs(self):
        names = [g["name"] for g in self.optimizer.param_groups]
        self.assertEqual(names, ["default", "backbone", "linear_proj"])
        lrs = [g["lr"] for g in self.optimizer.param_groups]
        for got, want in zip(lrs, [2e-4, 2e-5, 2e-5]):
            self.assertAlmostEqual(got, want)

    def test_each_name_gets_its_lr(self):
        seen_offsets = 0
        for name, p in self.model.named_parameters():
            if not p.requires_grad:
                self.assertNotIn(id(p), self.lr_of, name)
                continue
            if name.startswith("backbone."):
                want = 2e-5
            elif "sampling_offsets" in name:
                want, seen_offsets = 2e-5, seen_offsets + 1
            else:
                want = 2e-4
            self.assertEqual(len(self.lr_of[id(p)]), 1, name)
            self.assertAlmostEqual(self.lr_of[id(p)][0], want, msg=name)
        # 1 encoder + 2 decoder layers, weight and bias each.
        self.assertEqual(seen_offsets, 6)

    def test_frozen_excluded_and_trainable_included(self):
        frozen = [n for n, p in self.model.named_parameters() if not p.requires_grad]
        self.assertTrue(any(n.startswith("backbone.stem.") for n in frozen))
        self.assertTrue(any(n.startswith("backbone.res2.") for n in frozen))
        trainable = {id(p) for p in self.model.parameters() if p.requires_grad}
        self.assertEqual(set(self.lr_of), trainable)

    def test_shared_heads_once(self):
        m = self.model
        self.assertIs(m.transformer.decoder.class_embed[0].weight, m.class_embed[0].weight)
        ids = [id(p) for g in self.optimizer.param_groups for p in g["params"]]
        self.assertEqual(len(ids), len(set(ids)))

    def test_norms_and_biases_decayed(self):
        gn = self.model.input_proj[0][1]
        self.assertIsInstance(gn, nn.GroupNorm)
        lns = [mod for mod in self.model.transformer.modules() if isinstance(mod, nn.LayerNorm)]
        self.assertTrue(lns)
        for p in [gn.weight, gn.bias, lns[0].weight, lns[0].bias]:
            self.assertAlmostEqual(self.wd_of[id(p)], 1e-4)
        self.assertEqual({g["weight_decay"] for g in self.optimizer.param_groups}, {1e-4})

    def test_adamw_defaults(self):
        self.assertIsInstance(self.optimizer, torch.optim.AdamW)
        self.assertEqual(self.optimizer.defaults["betas"], (0.9, 0.999))


class TestOptimizerTypesAndClipping(unittest.TestCase):
    def _toy_step(self, cfg, scale=100.0, scaler=None):
        torch.manual_seed(0)
        model = _Toy()
        optimizer = build_deta_optimizer(cfg, model)
        loss = model(torch.randn(4, 3)) * scale
        if scaler is None:
            loss.backward()
            before = float(_total_grad_norm(model))
            optimizer.step()
        else:
            scaler.scale(loss).backward()
            before = float(_total_grad_norm(model)) / scaler.get_scale()
            scaler.step(optimizer)
            scaler.update()
        return model, optimizer, before

    def test_toy_groups(self):
        groups = deta_param_groups(_Toy(), base_lr=1.0, weight_decay=0.5)
        names = {g["name"]: len(g["params"]) for g in groups}
        # backbone: 2, linear_proj: 2, default: head (2, shared once) + norm (2).
        self.assertEqual(names, {"backbone": 2, "linear_proj": 2, "default": 4})

    def test_full_model_clipping_clips_total_norm(self):
        cfg = _cfg("SOLVER.BASE_LR", 0.0, "SOLVER.CLIP_GRADIENTS.CLIP_VALUE", 0.1)
        model, optimizer, before = self._toy_step(cfg)
        self.assertGreater(before, 1.0)
        self.assertIn("FullModelClipping", type(optimizer).__name__)
        self.assertAlmostEqual(float(_total_grad_norm(model)), 0.1, places=5)

    def test_small_gradients_untouched(self):
        cfg = _cfg("SOLVER.BASE_LR", 0.0, "SOLVER.CLIP_GRADIENTS.CLIP_VALUE", 1e6)
        model, _, before = self._toy_step(cfg)
        self.assertAlmostEqual(float(_total_grad_norm(model)), before, places=3)

    def test_clipping_composes_with_grad_scaler(self):
        # GradScaler.step unscales before optimizer.step, so the clip sees true gradients.
        cfg = _cfg("SOLVER.BASE_LR", 0.0, "SOLVER.CLIP_GRADIENTS.CLIP_VALUE", 0.1)
        scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
        model, _, before = self._toy_step(cfg, scaler=scaler)
        self.assertGreater(before, 1.0)
        self.assertAlmostEqual(float(_total_grad_norm(model)), 0.1, places=5)

    def test_value_clipping_uses_detectron2(self):
        cfg = _cfg(
            "SOLVER.BASE_LR", 0.0,
            "SOLVER.CLIP_GRADIENTS.CLIP_TYPE", "value",
            "SOLVER.CLIP_GRADIENTS.CLIP_VALUE", 0.01,
        )  # fmt: skip
        model, optimizer, _ = self._toy_step(cfg)
        self.assertNotIn("FullModelClipping", type(optimizer).__name__)
        grads = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
        self.assertLessEqual(float(grads.abs().max()), 0.01 + 1e-9)

    def test_clipping_disabled(self):
        cfg = _cfg("SOLVER.BASE_LR", 0.0, "SOLVER.CLIP_GRADIENTS.ENABLED", False)
        model, optimizer, before = self._toy_step(cfg)
        self.assertIs(type(optimizer), torch.optim.AdamW)
        self.assertAlmostEqual(float(_total_grad_norm(model)), before, places=3)

    def test_sgd(self):
        cfg = _cfg("SOLVER.OPTIMIZER", "SGD", "SOLVER.BASE_LR", 0.1)
        _, optimizer, _ = self._toy_step(cfg)
        self.assertIsInstance(optimizer, torch.optim.SGD)
        self.assertEqual(optimizer.param_groups[0]["momentum"], 0.9)

    def test_unknown_optimizer(self):
        with self.assertRaisesRegex(NotImplementedError, "LAMB"):
            build_deta_optimizer(_cfg("SOLVER.OPTIMIZER", "LAMB"), _Toy())


if __name__ == "__main__":
    unittest.main()


class TestFusedAdamW(unittest.TestCase):
    def test_cpu_adamw_is_fused_and_matches_the_loop(self):
        cfg = _cfg("SOLVER.BASE_LR", 1e-2, "SOLVER.CLIP_GRADIENTS.CLIP_VALUE", 0.1)
        params = {}
        for fused in (True, False):
            torch.manual_seed(0)
            model = _Toy()
            start = [p.detach().clone() for p in model.parameters()]
            optimizer = build_deta_optimizer(cfg, model)
            if not fused:  # the same optimizer with the per-tensor loop, as before
                for g in optimizer.param_groups:
                    g["fused"] = False
                    g["foreach"] = False
            self.assertEqual(optimizer.param_groups[0]["fused"], fused)
            for _ in range(3):
                optimizer.zero_grad()
                (model(torch.randn(4, 3)) * 100).backward()
                optimizer.step()
            params[fused] = [p.detach().clone() for p in model.parameters()]
            self.assertFalse(all(torch.equal(a, b) for a, b in zip(params[fused], start)))
        for a, b in zip(params[True], params[False]):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
