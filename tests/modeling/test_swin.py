"""Swin backbone: shapes, numerics against timm and a hand-written reference, official key names,
gradient checkpointing, and the full DETA built from the two Swin-L configs."""

import math
import os
import re
import unittest

import torch
import torch.nn.functional as F
from timm.models import swin_transformer as timm_swin

from detectron2.config import get_cfg
from detectron2.layers import ShapeSpec
from detectron2.modeling import build_backbone, build_model

import deta  # noqa: F401  registers DETA
import deta.modeling.swin  # noqa: F401  registers build_swin_backbone
from deta import add_deta_config
from deta.modeling.swin import SwinStage, SwinTransformer, window_mask

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SMALL = dict(embed_dim=32, depths=(2, 2, 2, 2), num_heads=(1, 2, 4, 8))


def _randomize(module: torch.nn.Module, seed: int = 0) -> None:
    """Non-trivial weights (the default init is near-identity) so every term shows up."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            noise = torch.randn(p.shape, generator=g, dtype=p.dtype)
            if "norm" in name and name.endswith("weight"):
                p.copy_(1 + 0.2 * noise)
            elif p.dim() > 1 and name.endswith("weight"):
                p.copy_(noise / math.sqrt(p[0].numel()))  # unit-variance activations
            else:  # biases and the relative position bias tables
                p.copy_(noise if "relative_position" in name else 0.2 * noise)


def _swin_cfg(yaml_name: str, *opts):
    cfg = get_cfg()
    add_deta_config(cfg)
    cfg.merge_from_file(os.path.join(REPO, "configs", yaml_name))
    cfg.merge_from_list(["MODEL.DEVICE", "cpu", *opts])
    return cfg


def _reference_block(blk, x: torch.Tensor) -> torch.Tensor:
    """Official block semantics written out directly: pad → shift → attention per window with
    coordinate-derived bias and region mask → unshift → crop → residuals. (B, H, W, C)."""
    w, s, heads = blk.window, blk.shift, blk.attn.num_heads
    B, H, W, C = x.shape
    Hp, Wp = math.ceil(H / w) * w, math.ceil(W / w) * w
    y = x.new_zeros(B, Hp, Wp, C)
    y[:, :H, :W] = blk.norm1(x)
    y = torch.roll(y, (-s, -s), (1, 2))
    label = torch.zeros(Hp, Wp)
    if s:
        cuts = (slice(0, -w), slice(-w, -s), slice(-s, None))
        for i, rows in enumerate(cuts):
            for j, cols in enumerate(cuts):
                label[rows, cols] = 3 * i + j
    local = [(r, c) for r in range(w) for c in range(w)]
    table = blk.attn.relative_position_bias_table
    bias = torch.stack(
        [
            torch.stack(
                [table[(ra - rb + w - 1) * (2 * w - 1) + ca - cb + w - 1] for rb, cb in local]
            )
            for ra, ca in local
        ]
    ).permute(2, 0, 1)
    out = torch.zeros_like(y)
    for r0 in range(0, Hp, w):
        for c0 in range(0, Wp, w):
            tok = y[:, r0 : r0 + w, c0 : c0 + w].reshape(B, w * w, C)
            q, k, v = blk.attn.qkv(tok).view(B, w * w, 3, heads, C // heads).unbind(2)
            logits = torch.einsum("bnhd,bmhd->bhnm", q, k) / math.sqrt(C // heads) + bias
            lab = label[r0 : r0 + w, c0 : c0 + w].reshape(-1)
            logits = logits - 100.0 * (lab[:, None] != lab[None, :]).to(logits)
            o = torch.einsum("bhnm,bmhd->bnhd", logits.softmax(-1), v).reshape(B, w * w, C)
            out[:, r0 : r0 + w, c0 : c0 + w] = blk.attn.proj(o).view(B, w, w, C)
    x = x + torch.roll(out, (s, s), (1, 2))[:, :H, :W]
    return x + blk.mlp(blk.norm2(x))


class TestSwinShapes(unittest.TestCase):
    def test_ceil_halving_at_odd_size(self):
        model = SwinTransformer(window_size=7, **SMALL).eval()
        with torch.no_grad():
            out = model(torch.randn(2, 3, 100, 150))
        self.assertEqual(list(out), ["res3", "res4", "res5"])
        expect = {"res3": (64, 13, 19), "res4": (128, 7, 10), "res5": (256, 4, 5)}
        for name, (c, h, w) in expect.items():
            self.assertEqual(tuple(out[name].shape), (2, c, h, w), name)
            spec = model.output_shape()[name]
            self.assertEqual((spec.channels, spec.stride), (c, 8 * 2 ** (int(name[3]) - 3)))
            self.assertEqual((h, w), (math.ceil(100 / spec.stride), math.ceil(150 / spec.stride)))

    def test_builder_validates_keys(self):
        for opts, key in [
            (["MODEL.SWIN.OUT_FEATURES", ["res6"]], "OUT_FEATURES"),
            (["MODEL.SWIN.NUM_HEADS", [6, 12, 24]], "NUM_HEADS"),
            (["MODEL.SWIN.EMBED_DIM", 100], "EMBED_DIM"),
        ]:
            cfg = get_cfg()
            add_deta_config(cfg)
            cfg.merge_from_list(["MODEL.BACKBONE.NAME", "build_swin_backbone", *opts])
            with self.assertRaisesRegex(ValueError, f"MODEL.SWIN.{key}"):
                build_backbone(cfg, ShapeSpec(channels=3))


class TestSwinNumerics(unittest.TestCase):
    def test_matches_timm_without_padding(self):
        """Input a multiple of window·32: timm and the official order agree, so must we."""
        torch.manual_seed(0)
        ours = SwinTransformer(window_size=4, drop_path_rate=0.0, **SMALL).double().eval()
        _randomize(ours)
        ref = (
            timm_swin.SwinTransformer(
                img_size=(256, 384), window_size=4, num_classes=0, drop_path_rate=0.0, **SMALL
            )
            .double()
            .eval()
        )
        mapped = {}
        for k, v in ours.state_dict().items():
            if re.match(r"norm\d\.", k) or k.endswith("relative_position_index"):
                continue  # out norms are applied below; timm rebuilds the index itself
            m = re.match(r"layers\.(\d)\.downsample\.(.*)", k)  # timm merges at the next stage
            mapped[f"layers.{int(m[1]) + 1}.downsample.{m[2]}" if m else k] = v
        info = ref.load_state_dict(mapped, strict=False)
        self.assertEqual(
            (sorted(info.missing_keys), info.unexpected_keys), (["norm.bias", "norm.weight"], [])
        )
        x = torch.randn(2, 3, 256, 384, dtype=torch.float64)
        with torch.no_grad():
            out = ours(x)
            feats = ref.forward_intermediates(x, indices=[1, 2, 3], intermediates_only=True)
        for i, f in zip((1, 2, 3), feats):
            expect = getattr(ours, f"norm{i}")(f.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
            torch.testing.assert_close(out[f"res{i + 2}"], expect, rtol=1e-9, atol=1e-9)

    def test_pad_then_shift_against_reference(self):
        """H, W not multiples of the window: compare a stage with the official semantics."""
        torch.manual_seed(0)
        stage = SwinStage(16, 2, 2, 4, 4.0, True, [0.0, 0.0], downsample=True).double().eval()
        _randomize(stage, seed=1)
        x = torch.randn(2, 10, 13, 16, dtype=torch.float64)
        with torch.no_grad():
            out, down = stage(x)
            expect = _reference_block(stage.blocks[1], _reference_block(stage.blocks[0], x))
            torch.testing.assert_close(out, expect, rtol=1e-10, atol=1e-10)
            # timm's shift-then-pad order differs here, so the check above is discriminating.
            timm_blk = timm_swin.SwinTransformerBlock(
                16,
                (10, 13),
                2,
                window_size=4,
                shift_size=2,
                always_partition=True,
                dynamic_mask=True,
            ).double()
            timm_blk.load_state_dict(stage.blocks[1].state_dict(), strict=False)
            y = stage.blocks[0](x, None)
            self.assertGreater(
                (timm_blk(y) - stage.blocks[1](y, stage_mask(10, 13))).abs().max(), 1e-3
            )
            # PatchMerging: zero-pad odd sizes, parity order (0,0),(1,0),(0,1),(1,1), LN, Linear.
            p = F.pad(out, (0, 0, 0, 1, 0, 0))
            cat = torch.cat(
                [p[:, 0::2, 0::2], p[:, 1::2, 0::2], p[:, 0::2, 1::2], p[:, 1::2, 1::2]], -1
            )
            ds = stage.downsample
            torch.testing.assert_close(down, ds.reduction(ds.norm(cat)))
        self.assertEqual(tuple(down.shape), (2, 5, 7, 32))

    def test_patch_embed_pads_right_bottom(self):
        model = SwinTransformer(window_size=4, **SMALL).double().eval()
        x = torch.randn(1, 3, 37, 42, dtype=torch.float64)
        with torch.no_grad():
            tokens = model.patch_embed(x)
            pe = model.patch_embed
            expect = pe.norm(pe.proj(F.pad(x, (0, 2, 0, 3))).permute(0, 2, 3, 1))
        torch.testing.assert_close(tokens, expect)
        self.assertEqual(tuple(tokens.shape), (1, 10, 11, 32))

    def test_window_mask_regions(self):
        mask = window_mask(8, 12, 4, 2)
        self.assertEqual(tuple(mask.shape), (6, 16, 16))
        self.assertTrue(torch.all(mask[0] == 0))  # interior window: a single region
        self.assertEqual(set(mask.unique().tolist()), {0.0, -100.0})
        self.assertEqual(int((mask[5] == 0).sum()), 4 * 4 * 4)  # corner: four 2x2 regions


def stage_mask(H: int, W: int, window: int = 4) -> torch.Tensor:
    Hp, Wp = math.ceil(H / window) * window, math.ceil(W / window) * window
    return window_mask(Hp, Wp, window, window // 2, dtype=torch.float64)


class TestSwinCheckpointing(unittest.TestCase):
    def test_same_output_and_grads(self):
        model = SwinTransformer(window_size=4, drop_path_rate=0.3, **SMALL).train()
        x = torch.randn(2, 3, 70, 90)
        results = []
        for use in (False, True):
            for layer in model.layers:
                layer.use_checkpoint = use
            model.zero_grad()
            torch.manual_seed(123)  # same DropPath draws; checkpointing must replay them
            out = model(x)
            sum((v * (i + 1)).sum() for i, v in enumerate(out.values())).backward()
            results.append(
                (
                    {k: v.detach() for k, v in out.items()},
                    {n: p.grad.clone() for n, p in model.named_parameters()},
                )
            )
        (out0, g0), (out1, g1) = results
        torch.testing.assert_close(out0, out1, rtol=0, atol=0)
        self.assertEqual(len(g0), len(list(model.parameters())))
        torch.testing.assert_close(g0, g1)


class TestSwinDeta(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        torch.manual_seed(0)
        cls.cfg = _swin_cfg("deta_swin_L_5scale_24ep.yaml")
        cls.model = build_model(cls.cfg).eval()  # the real Swin-L

    def test_official_key_names_swin_l(self):
        sd = {
            k[len("backbone.") :]: v
            for k, v in self.model.state_dict().items()
            if k.startswith("backbone.")
        }
        self.assertEqual(len(sd), 4 + 24 * 14 + 3 * 3 + 3 * 2)
        widths, heads = (192, 384, 768, 1536), (6, 12, 24, 48)
        self.assertEqual(tuple(sd["patch_embed.proj.weight"].shape), (192, 3, 4, 4))
        blocks = {}
        for k in sd:
            m = re.match(r"layers\.(\d)\.blocks\.(\d+)\.", k)
            if m:
                blocks.setdefault(int(m[1]), set()).add(int(m[2]))
        self.assertEqual([len(blocks[i]) for i in range(4)], [2, 2, 18, 2])
        leaves = {  # shape from (C_i, heads_i)
            "norm1.weight": lambda c, h: (c,),
            "norm1.bias": lambda c, h: (c,),
            "attn.relative_position_bias_table": lambda c, h: (529, h),
            "attn.relative_position_index": lambda c, h: (144, 144),
            "attn.qkv.weight": lambda c, h: (3 * c, c),
            "attn.qkv.bias": lambda c, h: (3 * c,),
            "attn.proj.weight": lambda c, h: (c, c),
            "attn.proj.bias": lambda c, h: (c,),
            "norm2.weight": lambda c, h: (c,),
            "norm2.bias": lambda c, h: (c,),
            "mlp.fc1.weight": lambda c, h: (4 * c, c),
            "mlp.fc1.bias": lambda c, h: (4 * c,),
            "mlp.fc2.weight": lambda c, h: (c, 4 * c),
            "mlp.fc2.bias": lambda c, h: (c,),
        }
        for i, (c, h) in enumerate(zip(widths, heads)):
            for j in blocks[i]:
                for leaf, shape in leaves.items():
                    key = f"layers.{i}.blocks.{j}.{leaf}"
                    self.assertEqual(tuple(sd[key].shape), shape(c, h), key)
            if i < 3:
                self.assertEqual(
                    tuple(sd[f"layers.{i}.downsample.reduction.weight"].shape), (2 * c, 4 * c)
                )
                self.assertEqual(tuple(sd[f"layers.{i}.downsample.norm.weight"].shape), (4 * c,))
                self.assertEqual(tuple(sd[f"norm{i + 1}.weight"].shape), (widths[i + 1],))
        self.assertFalse(any("attn_mask" in k or k.startswith(("norm0", "norm.")) for k in sd))
        index = sd["layers.0.blocks.0.attn.relative_position_index"]
        self.assertEqual(index.dtype, torch.int64)
        for a in (0, 13, 143):
            for b in (0, 7, 100, 143):
                expect = (a // 12 - b // 12 + 11) * 23 + (a % 12 - b % 12 + 11)
                self.assertEqual(int(index[a, b]), expect)

    def test_swin_l_config_forward(self):
        backbone = self.model.backbone
        self.assertIsInstance(backbone, SwinTransformer)
        self.assertEqual(
            {k: (v.channels, v.stride) for k, v in backbone.output_shape().items()},
            {"res3": (384, 8), "res4": (768, 16), "res5": (1536, 32)},
        )
        self.assertTrue(all(p.requires_grad for p in backbone.parameters()))
        self.assertTrue(all(layer.use_checkpoint for layer in backbone.layers))
        self.assertEqual(self.cfg.MODEL.DETA.NUM_CLASSES, 80)
        batch = [
            {"image": torch.randint(0, 256, (3, h, w), dtype=torch.uint8)}
            for h, w in ((64, 96), (56, 80))
        ]
        with torch.no_grad():
            results = self.model(batch)
        self.assertEqual([r["instances"].image_size for r in results], [(64, 96), (56, 80)])

    def test_o365_config_builds_and_runs(self):
        cfg = _swin_cfg(
            "deta_swin_L_5scale_o365_24ep.yaml",
            "MODEL.SWIN.EMBED_DIM",
            32,
            "MODEL.SWIN.DEPTHS",
            [2, 2, 2, 2],
            "MODEL.SWIN.NUM_HEADS",
            [1, 2, 4, 8],
        )
        self.assertEqual(cfg.MODEL.DETA.NUM_CLASSES, 365)
        model = build_model(cfg).eval()
        batch = [{"image": torch.randint(0, 256, (3, 64, 96), dtype=torch.uint8)}] * 2
        with torch.no_grad():
            results = model(batch)
        self.assertEqual(len(results), 2)
        self.assertTrue((results[0]["instances"].pred_classes < 365).all())


if __name__ == "__main__":
    unittest.main()
