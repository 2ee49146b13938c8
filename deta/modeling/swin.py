"""Swin Transformer backbone of the official DETA Swin-L model, as a Detectron2
``Backbone``.

Numerically follows the official ``models/swin.py`` (the detection variant of Swin) at any input
size, which timm's classification ``SwinTransformer`` does not: the patch embedding
zero-pads the image to a multiple of the patch size, each block pads its normalised tokens to a
multiple of the window *before* the cyclic shift, and the shifted-window mask is built for that
padded size on every forward. Module names equal the official ones after stripping
``backbone.0.body.``, so a converted checkpoint maps by prefix only
(``deta/checkpoint/official.py``).

Not implemented because DETA never uses them: absolute position embedding (``ape=False``),
dropout / attention dropout (both 0), ``qk_scale`` (None) and frozen stages (-1).

Shape shorthand: ``B`` batch, ``H``/``W`` token grid, ``C`` channels, ``w`` window size,
``N = w * w`` tokens per window, ``nW`` windows per image.
"""

from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from timm.layers import DropPath, Mlp, trunc_normal_
from torch import nn

from detectron2.layers import ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY, Backbone

__all__ = ["SwinTransformer", "build_swin_backbone", "relative_position_index", "window_mask"]


def relative_position_index(window: int) -> torch.Tensor:
    """(N, N) int64 index into the (2w-1)² bias table for every (query, key) pair of a window.

    Row-major over the relative offset (dy, dx), each shifted to start at 0 (official layout, so
    pretrained bias tables index identically).
    """
    coords = torch.stack(
        torch.meshgrid(torch.arange(window), torch.arange(window), indexing="ij")
    ).flatten(1)  # (2, N)
    rel = coords[:, :, None] - coords[:, None, :] + (window - 1)  # (2, N, N)
    return rel[0] * (2 * window - 1) + rel[1]


def _partition(x: torch.Tensor, window: int) -> torch.Tensor:
    """(B, H, W, C) with H, W multiples of ``window`` → (B * nW, N, C), windows row-major."""
    B, H, W, C = x.shape
    x = x.view(B, H // window, window, W // window, window, C).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, window * window, C)


def _merge(windows: torch.Tensor, window: int, H: int, W: int) -> torch.Tensor:
    """Inverse of ``_partition``: (B * nW, N, C) → (B, H, W, C)."""
    C = windows.shape[-1]
    x = windows.view(-1, H // window, W // window, window, window, C).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, H, W, C)


def window_mask(
    Hp: int, Wp: int, window: int, shift: int, device=None, dtype=torch.float32
) -> torch.Tensor:
    """Additive attention mask of the shifted windows on a padded (Hp, Wp) grid.

    After the cyclic shift, the last ``window`` rows (columns) of the grid hold tokens from up to
    two image regions that were not adjacent: the band ``[Hp - window, Hp - shift)`` and the
    wrapped-around band ``[Hp - shift, Hp)``. Tokens of different regions must not attend to
    each other; the official code gives such pairs -100 (not -inf), which we keep.

    Returns:
        Tensor: (nW, N, N) with 0 within a region and -100 across regions.
    """

    def bands(n: int) -> torch.Tensor:
        idx = torch.arange(n, device=device)
        return (idx >= n - window).long() + (idx >= n - shift).long()  # 0, 1 or 2

    region = bands(Hp)[:, None] * 3 + bands(Wp)[None, :]  # (Hp, Wp) region label
    region = _partition(region[None, :, :, None], window)[..., 0]  # (nW, N)
    cross = region[:, None, :] != region[:, :, None]
    return torch.zeros(cross.shape, device=device, dtype=dtype).masked_fill(cross, -100.0)


class WindowAttention(nn.Module):
    """Multi-head self-attention inside each window, with a learned relative position bias."""

    def __init__(self, dim: int, num_heads: int, window: int, qkv_bias: bool = True):
        super().__init__()
        self.num_heads = num_heads
        self.window = window
        self.scale = (dim // num_heads) ** -0.5
        self.relative_position_bias_table = nn.Parameter(
            torch.zeros((2 * window - 1) ** 2, num_heads)
        )
        # Persistent, as in the official model: checkpoints carry it.
        self.register_buffer("relative_position_index", relative_position_index(window))
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        trunc_normal_(self.relative_position_bias_table, std=0.02)

    def forward(self, x: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """
        Args:
            x (Tensor): (B * nW, N, C) window tokens, image-major.
            mask (Tensor or None): (nW, N, N) additive mask of the shifted windows.

        Returns:
            Tensor: (B * nW, N, C).
        """
        Bw, N, C = x.shape
        q, k, v = (
            self.qkv(x)
            .reshape(Bw, N, 3, self.num_heads, C // self.num_heads)
            .permute(2, 0, 3, 1, 4)
        )  # each (B * nW, heads, N, C / heads)
        # Same operation order as the official code (scale q, then q·kᵀ, bias, mask, softmax).
        attn = (q * self.scale) @ k.transpose(-2, -1)
        bias = self.relative_position_bias_table[self.relative_position_index.view(-1)]
        attn = attn + bias.view(N, N, -1).permute(2, 0, 1).unsqueeze(0)
        if mask is not None:
            nW = mask.shape[0]
            attn = attn.view(Bw // nW, nW, self.num_heads, N, N) + mask[None, :, None]
            attn = attn.view(Bw, self.num_heads, N, N)
        x = (attn.softmax(dim=-1) @ v).transpose(1, 2).reshape(Bw, N, C)
        return self.proj(x)


class SwinBlock(nn.Module):
    """(Shifted-)window attention and MLP, both pre-norm residual branches with drop path."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        window: int,
        shift: int,
        mlp_ratio: float,
        qkv_bias: bool,
        drop_path: float,
    ):
        super().__init__()
        if not 0 <= shift < window:
            raise ValueError(f"shift {shift} must be in [0, window={window})")
        self.window = window
        self.shift = shift
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention(dim, num_heads, window, qkv_bias)
        self.drop_path = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer=nn.GELU)

    def forward(self, x: torch.Tensor, mask: Optional[torch.Tensor]) -> torch.Tensor:
        """
        Args:
            x (Tensor): (B, H, W, C) tokens of any H, W.
            mask (Tensor or None): ``window_mask`` of the stage's padded grid (used when shifted).

        Returns:
            Tensor: (B, H, W, C).
        """
        _, H, W, _ = x.shape
        w, s = self.window, self.shift
        y = self.norm1(x)
        # Official order: pad right/bottom first, then shift. Padded tokens are attended to (not
        # masked) and only cropped at the end; this is what differs from timm's shift-then-pad.
        pad_b, pad_r = (-H) % w, (-W) % w
        if pad_b or pad_r:
            y = F.pad(y, (0, 0, 0, pad_r, 0, pad_b))
        Hp, Wp = H + pad_b, W + pad_r
        if s:
            y = torch.roll(y, shifts=(-s, -s), dims=(1, 2))
        y = _merge(self.attn(_partition(y, w), mask if s else None), w, Hp, Wp)
        if s:
            y = torch.roll(y, shifts=(s, s), dims=(1, 2))
        x = x + self.drop_path(y[:, :H, :W].contiguous())
        return x + self.drop_path(self.mlp(self.norm2(x)))


class PatchMerging(nn.Module):
    """2×2 token merge: (B, H, W, C) → (B, ceil(H/2), ceil(W/2), 2C); odd sizes are zero-padded."""

    def __init__(self, dim: int):
        super().__init__()
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)
        self.norm = nn.LayerNorm(4 * dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _, H, W, _ = x.shape
        if H % 2 or W % 2:
            x = F.pad(x, (0, 0, 0, W % 2, 0, H % 2))
        # Channel order (row, col) parity = (0,0), (1,0), (0,1), (1,1): the pretrained layout.
        x = torch.cat([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], -1)
        return self.reduction(self.norm(x))


class SwinStage(nn.Module):
    """One stage (official ``BasicLayer``): blocks alternating plain / shifted windows, then an
    optional ``PatchMerging`` whose output feeds the next stage."""

    def __init__(
        self,
        dim: int,
        depth: int,
        num_heads: int,
        window: int,
        mlp_ratio: float,
        qkv_bias: bool,
        drop_path: Sequence[float],
        downsample: bool,
        use_checkpoint: bool = False,
    ):
        super().__init__()
        self.window = window
        self.shift = window // 2
        self.use_checkpoint = use_checkpoint
        self.blocks = nn.ModuleList(
            SwinBlock(
                dim, num_heads, window, 0 if j % 2 == 0 else self.shift, mlp_ratio, qkv_bias, dp
            )
            for j, dp in enumerate(drop_path)
        )
        assert len(self.blocks) == depth
        self.downsample = PatchMerging(dim) if downsample else None

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        """
        Args:
            x (Tensor): (B, H, W, C).

        Returns:
            (out, down): the stage output (B, H, W, C) and its merged version
            (B, ceil(H/2), ceil(W/2), 2C), or None for the last stage.
        """
        _, H, W, _ = x.shape
        mask = None
        if len(self.blocks) > 1 and self.shift > 0:
            # Built per forward for this input's padded size; never stored in the state dict.
            Hp, Wp = -(-H // self.window) * self.window, -(-W // self.window) * self.window
            mask = window_mask(Hp, Wp, self.window, self.shift, x.device, x.dtype)
        for blk in self.blocks:
            if self.use_checkpoint and torch.is_grad_enabled():
                # Non-reentrant checkpointing restores the RNG state, so DropPath is replayed.
                x = torch.utils.checkpoint.checkpoint(blk, x, mask, use_reentrant=False)
            else:
                x = blk(x, mask)
        return x, (self.downsample(x) if self.downsample is not None else None)


class PatchEmbed(nn.Module):
    """Non-overlapping patch projection plus LayerNorm; pads the image right/bottom to a multiple
    of the patch size (official behaviour)."""

    def __init__(self, patch_size: int, in_chans: int, embed_dim: int):
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)
        self.norm = nn.LayerNorm(embed_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) → (B, ceil(H/p), ceil(W/p), C) tokens."""
        p = self.patch_size
        pad_b, pad_r = (-x.shape[-2]) % p, (-x.shape[-1]) % p
        if pad_b or pad_r:
            x = F.pad(x, (0, pad_r, 0, pad_b))
        return self.norm(self.proj(x).permute(0, 2, 3, 1))


class SwinTransformer(Backbone):
    """Swin Transformer backbone with the official detection semantics.

    Stage ``i`` has ``embed_dim * 2**i`` channels and stride ``patch_size * 2**i`` and is output
    as ``res{i+2}`` after its own LayerNorm ``norm{i}`` (applied before the stage's
    ``PatchMerging``). Spatial sizes follow ceil halving. Every parameter is trainable.

    Initialisation: Linear weights trunc_normal(std=0.02) with zero bias, LayerNorms (1, 0),
    relative position bias tables trunc_normal(std=0.02), the patch conv PyTorch's default. This
    only matters when training from scratch: the official model never calls its ``init_weights``
    but always loads the ImageNet-22K Swin-L (``swin_large_patch4_window12_384_22k.pth``) over
    it, leaving only ``norm1/2/3`` at (1, 0) — load the converted file via ``MODEL.WEIGHTS``.
    """

    def __init__(
        self,
        *,
        patch_size: int = 4,
        in_chans: int = 3,
        embed_dim: int = 192,
        depths: Sequence[int] = (2, 2, 18, 2),
        num_heads: Sequence[int] = (6, 12, 24, 48),
        window_size: int = 12,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        drop_path_rate: float = 0.3,
        out_features: Sequence[str] = ("res3", "res4", "res5"),
        use_checkpoint: bool = False,
    ):
        super().__init__()
        self.patch_embed = PatchEmbed(patch_size, in_chans, embed_dim)
        # Stochastic depth rises linearly over all blocks, in block order (official rule).
        dpr = torch.linspace(0, drop_path_rate, sum(depths)).tolist()
        self.layers = nn.ModuleList()
        for i, (depth, heads) in enumerate(zip(depths, num_heads)):
            start = sum(depths[:i])
            self.layers.append(
                SwinStage(
                    embed_dim * 2**i,
                    depth,
                    heads,
                    window_size,
                    mlp_ratio,
                    qkv_bias,
                    dpr[start : start + depth],
                    downsample=i < len(depths) - 1,
                    use_checkpoint=use_checkpoint,
                )
            )
        self._out_features = list(out_features)
        self._out_indices = sorted(int(name[3:]) - 2 for name in self._out_features)
        self._out_feature_channels, self._out_feature_strides = {}, {}
        for i in self._out_indices:
            self.add_module(f"norm{i}", nn.LayerNorm(embed_dim * 2**i))
            self._out_feature_channels[f"res{i + 2}"] = embed_dim * 2**i
            self._out_feature_strides[f"res{i + 2}"] = patch_size * 2**i
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        """
        Args:
            x (Tensor): (B, in_chans, H, W) normalised images of any size.

        Returns:
            dict[str, Tensor]: ``res{i+2}`` → (B, C_i, ceil(H / s_i), ceil(W / s_i)), NCHW.
        """
        x = self.patch_embed(x)
        outs = {}
        for i, layer in enumerate(self.layers[: self._out_indices[-1] + 1]):
            out, x = layer(x)
            if i in self._out_indices:
                outs[f"res{i + 2}"] = (
                    getattr(self, f"norm{i}")(out).permute(0, 3, 1, 2).contiguous()
                )
        return outs

    def output_shape(self) -> Dict[str, ShapeSpec]:
        return {
            name: ShapeSpec(
                channels=self._out_feature_channels[name], stride=self._out_feature_strides[name]
            )
            for name in self._out_features
        }


def _check_swin_config(s, valid_features: List[str]) -> None:
    def require(ok: bool, key: str, value, constraint: str) -> None:
        if not ok:
            raise ValueError(f"MODEL.SWIN.{key}={value!r}: {constraint}")

    depths, heads = list(s.DEPTHS), list(s.NUM_HEADS)
    require(len(depths) >= 1, "DEPTHS", depths, "needs at least one stage")
    require(all(d >= 1 for d in depths), "DEPTHS", depths, "every stage needs >= 1 block")
    require(
        len(heads) == len(depths),
        "NUM_HEADS",
        heads,
        f"needs one entry per stage (len(MODEL.SWIN.DEPTHS)={len(depths)})",
    )
    for i, h in enumerate(heads):
        require(
            h >= 1 and (s.EMBED_DIM * 2**i) % h == 0,
            "EMBED_DIM",
            s.EMBED_DIM,
            f"stage {i} width {s.EMBED_DIM * 2**i} must be divisible by "
            f"MODEL.SWIN.NUM_HEADS[{i}]={h}",
        )
    require(s.PATCH_SIZE >= 1, "PATCH_SIZE", s.PATCH_SIZE, "must be >= 1")
    require(s.WINDOW_SIZE >= 1, "WINDOW_SIZE", s.WINDOW_SIZE, "must be >= 1")
    require(s.MLP_RATIO > 0, "MLP_RATIO", s.MLP_RATIO, "must be > 0")
    require(0.0 <= s.DROP_PATH_RATE < 1.0, "DROP_PATH_RATE", s.DROP_PATH_RATE, "must be in [0, 1)")
    out = list(s.OUT_FEATURES)
    require(
        len(out) >= 1 and len(set(out)) == len(out) and set(out) <= set(valid_features),
        "OUT_FEATURES",
        out,
        f"must be distinct names from {valid_features} (one per stage of MODEL.SWIN.DEPTHS)",
    )


@BACKBONE_REGISTRY.register()
def build_swin_backbone(cfg, input_shape: ShapeSpec) -> SwinTransformer:
    """Build the Swin backbone from ``cfg.MODEL.SWIN.*`` (``MODEL.BACKBONE.NAME:
    "build_swin_backbone"``).

    Raises:
        ValueError: naming the inconsistent ``MODEL.SWIN`` key.
    """
    s = cfg.MODEL.SWIN
    valid = [f"res{i + 2}" for i in range(min(len(s.DEPTHS), 4))]
    _check_swin_config(s, valid)
    return SwinTransformer(
        patch_size=s.PATCH_SIZE,
        in_chans=input_shape.channels,
        embed_dim=s.EMBED_DIM,
        depths=tuple(s.DEPTHS),
        num_heads=tuple(s.NUM_HEADS),
        window_size=s.WINDOW_SIZE,
        mlp_ratio=s.MLP_RATIO,
        qkv_bias=s.QKV_BIAS,
        drop_path_rate=s.DROP_PATH_RATE,
        out_features=tuple(s.OUT_FEATURES),
        use_checkpoint=s.USE_CHECKPOINT,
    )
