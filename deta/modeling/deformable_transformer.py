"""Deformable-DETR encoder and decoder (post-norm layers, iterative box refinement).

Shape shorthand: ``B`` batch, ``S`` encoder tokens (sum of H_l * W_l), ``L`` feature levels,
``Q`` queries, ``C`` hidden dim. Follows the encoder and decoder of the official DETA.
"""

import copy
from typing import Any, Dict, List, Optional, Tuple

import torch
from torch import nn
from torch.profiler import record_function

from .. import fast_cpu
from ..layers import MSDeformAttn
from .heads import inverse_sigmoid
from .neck import valid_ratios_of
from .position_encoding import box_sine_embedding
from .two_stage import encoder_output_proposals

__all__ = [
    "DeformableEncoderLayer",
    "DeformableEncoder",
    "DeformableDecoderLayer",
    "DeformableDecoder",
    "DeformableTransformer",
]


def _clones(module: nn.Module, n: int) -> nn.ModuleList:
    return nn.ModuleList(copy.deepcopy(module) for _ in range(n))


class DeformableEncoderLayer(nn.Module):
    """Post-norm: deformable self-attention over all levels, then FFN."""

    def __init__(
        self, d_model=256, d_ffn=1024, dropout=0.1, n_levels=4, n_heads=8, n_points=4, impl=None
    ):
        super().__init__()
        self.self_attn = MSDeformAttn(d_model, n_levels, n_heads, n_points, impl=impl)
        self.dropout1 = nn.Dropout(dropout)
        self.norm1 = nn.LayerNorm(d_model)
        self.linear1 = nn.Linear(d_model, d_ffn)
        self.dropout2 = nn.Dropout(dropout)
        self.linear2 = nn.Linear(d_ffn, d_model)
        self.dropout3 = nn.Dropout(dropout)
        self.norm2 = nn.LayerNorm(d_model)

    def forward(self, src, pos, reference_points, spatial_shapes, level_start_index, padding_mask):
        args = (reference_points, spatial_shapes, level_start_index, padding_mask)
        dtype = fast_cpu.compute_dtype(src, self)
        if dtype is not None:  # CPU inference: oneDNN linears, chunked FFN, in-place residuals
            return fast_cpu.encoder_layer_forward(self, dtype, src, pos, *args)
        with record_function("deta.encoder.attn"):
            attn = self.self_attn(
                src + pos, reference_points, src, spatial_shapes, level_start_index, padding_mask
            )
            src = self.norm1(src + self.dropout1(attn))
        with record_function("deta.encoder.ffn"):
            ffn = self.linear2(self.dropout2(torch.relu(self.linear1(src))))
            return self.norm2(src + self.dropout3(ffn))


class DeformableEncoder(nn.Module):
    def __init__(self, encoder_layer: DeformableEncoderLayer, num_layers: int):
        super().__init__()
        self.layers = _clones(encoder_layer, num_layers)

    @staticmethod
    def reference_points(
        spatial_shapes: List[Tuple[int, int]], valid_ratios: torch.Tensor
    ) -> torch.Tensor:
        """Pixel centres of every level, normalised to their own level's valid region.

        Returns:
            Tensor: (B, S, L, 2) in the padded-map coordinates of every sampled level.
        """
        device = valid_ratios.device
        refs = []
        for lvl, (H, W) in enumerate(spatial_shapes):
            # arange + 0.5 equals the official linspace(0.5, H - 0.5, H) bit for bit, and
            # keeps H symbolic under torch.export (linspace fixes its step count).
            ref_y, ref_x = torch.meshgrid(
                torch.arange(H, dtype=torch.float32, device=device) + 0.5,
                torch.arange(W, dtype=torch.float32, device=device) + 0.5,
                indexing="ij",
            )
            ref_y = ref_y.reshape(-1)[None] / (valid_ratios[:, None, lvl, 1] * H)
            ref_x = ref_x.reshape(-1)[None] / (valid_ratios[:, None, lvl, 0] * W)
            refs.append(torch.stack((ref_x, ref_y), -1))
        return torch.cat(refs, 1)[:, :, None] * valid_ratios[:, None]

    def forward(
        self, src, spatial_shapes, level_start_index, valid_ratios, pos, padding_mask, shapes=None
    ):
        """
        Args:
            src, pos (Tensor): (B, S, C) flattened features and positional encodings.
            spatial_shapes (Tensor): (L, 2) int64 (H, W).
            level_start_index (Tensor): (L,) int64.
            valid_ratios (Tensor): (B, L, 2).
            padding_mask (Tensor): (B, S) bool, True on padding.
            shapes (list or None): the same (H, W) as Python (or symbolic) ints. Passing them
                avoids reading them back from ``spatial_shapes``, which ``torch.export`` cannot
                do for a dynamic image size.
        """
        if shapes is None:
            shapes = [(int(h), int(w)) for h, w in spatial_shapes.tolist()]
        reference_points = self.reference_points(shapes, valid_ratios)
        out = src
        for layer in self.layers:
            out = layer(out, pos, reference_points, spatial_shapes, level_start_index, padding_mask)
        return out


class DeformableDecoderLayer(nn.Module):
    """Post-norm: self-attention, deformable cross-attention, FFN."""

    def __init__(
        self, d_model=256, d_ffn=1024, dropout=0.1, n_levels=4, n_heads=8, n_points=4, impl=None
    ):
        super().__init__()
        self.cross_attn = MSDeformAttn(d_model, n_levels, n_heads, n_points, impl=impl)
        self.dropout1 = nn.Dropout(dropout)
        self.norm1 = nn.LayerNorm(d_model)
        self.self_attn = nn.MultiheadAttention(d_model, n_heads, dropout=dropout)
        self.dropout2 = nn.Dropout(dropout)
        self.norm2 = nn.LayerNorm(d_model)
        self.linear1 = nn.Linear(d_model, d_ffn)
        self.dropout3 = nn.Dropout(dropout)
        self.linear2 = nn.Linear(d_ffn, d_model)
        self.dropout4 = nn.Dropout(dropout)
        self.norm3 = nn.LayerNorm(d_model)

    def forward(
        self, tgt, query_pos, reference_points, memory, spatial_shapes, level_start_index, mask
    ):
        dtype = fast_cpu.compute_dtype(tgt, self)
        if dtype is not None:  # CPU inference: oneDNN linears, fused self-attention
            args = (reference_points, memory, spatial_shapes, level_start_index, mask)
            return fast_cpu.decoder_layer_forward(self, dtype, tgt, query_pos, *args)
        # nn.MultiheadAttention is sequence-first, as in the official layer. Without autograd
        # the (unused) averaged attention weights are skipped, which lets it use SDPA.
        qk, v = (tgt + query_pos).transpose(0, 1), tgt.transpose(0, 1)
        attn = self.self_attn(qk, qk, v, need_weights=torch.is_grad_enabled())[0].transpose(0, 1)
        tgt = self.norm2(tgt + self.dropout2(attn))
        attn = self.cross_attn(
            tgt + query_pos, reference_points, memory, spatial_shapes, level_start_index, mask
        )
        tgt = self.norm1(tgt + self.dropout1(attn))
        ffn = self.linear2(self.dropout3(torch.relu(self.linear1(tgt))))
        return self.norm3(tgt + self.dropout4(ffn))


class DeformableDecoder(nn.Module):
    """Stack of decoder layers with optional iterative box refinement.

    Args:
        bbox_embed (nn.ModuleList or None): per-layer box heads, shared with the meta-architecture
            (the official wiring, so checkpoint keys ``transformer.decoder.bbox_embed.*`` exist).
        class_embed (nn.ModuleList or None): per-layer class heads, shared likewise; index
            ``num_layers`` is the first-stage (encoder) head.
    """

    def __init__(
        self,
        decoder_layer: DeformableDecoderLayer,
        num_layers: int,
        bbox_embed: Optional[nn.ModuleList] = None,
        class_embed: Optional[nn.ModuleList] = None,
    ):
        super().__init__()
        self.layers = _clones(decoder_layer, num_layers)
        self.num_layers = num_layers
        self.bbox_embed = bbox_embed
        self.class_embed = class_embed

    def forward(
        self,
        tgt,
        reference_points,
        memory,
        spatial_shapes,
        level_start_index,
        valid_ratios,
        query_pos,
        padding_mask,
    ):
        """
        Args:
            tgt, query_pos (Tensor): (B, Q, C).
            reference_points (Tensor): (B, Q, 4) boxes (cx, cy, w, h) or (B, Q, 2) points.

        Returns:
            (Tensor, Tensor): hidden states (num_layers, B, Q, C) and the detached reference after
            each layer (num_layers, B, Q, 4 or 2).
        """
        output = tgt
        states, references = [], []
        for lid, layer in enumerate(self.layers):
            if reference_points.shape[-1] == 4:
                ratios = torch.cat([valid_ratios, valid_ratios], -1)
            else:
                ratios = valid_ratios
            ref_input = reference_points[:, :, None] * ratios[:, None]
            output = layer(
                output,
                query_pos,
                ref_input,
                memory,
                spatial_shapes,
                level_start_index,
                padding_mask,
            )
            if self.bbox_embed is not None:
                delta = self.bbox_embed[lid](output)
                if reference_points.shape[-1] == 4:
                    new_ref = (delta + inverse_sigmoid(reference_points)).sigmoid()
                else:
                    # Point references become boxes after the first refinement (official).
                    new_ref = torch.cat(
                        [delta[..., :2] + inverse_sigmoid(reference_points), delta[..., 2:]], -1
                    ).sigmoid()
                # "Look forward once": each layer's box gradient stops at its input reference.
                reference_points = new_ref.detach()
            states.append(output)
            references.append(reference_points)
        return torch.stack(states), torch.stack(references)


class DeformableTransformer(nn.Module):
    """Two-stage deformable transformer: encoder, proposals, query selection, decoder.

    Attribute names follow the official checkpoint (``level_embed``, ``enc_output``, ``pos_trans``,
    ``pix_trans``, ...). The prediction heads are passed in and shared with the decoder.

    Args:
        class_embed, bbox_embed (nn.ModuleList): ``dec_layers + 1`` heads; the last is the
            first-stage head whose class logit 0 is the objectness score.
        select_queries: callable ``(objectness, boxes_unact, level_ids, level_sizes) -> (B, Q)``
            choosing the encoder tokens that seed the decoder queries.
        mix_selected_features (bool): DETA's ``pix_trans``: add the selected (detached) encoder
            features to the content queries.
    """

    def __init__(
        self,
        *,
        d_model: int,
        nhead: int,
        num_encoder_layers: int,
        num_decoder_layers: int,
        dim_feedforward: int,
        dropout: float,
        num_feature_levels: int,
        enc_n_points: int,
        dec_n_points: int,
        class_embed: nn.ModuleList,
        bbox_embed: Optional[nn.ModuleList],
        select_queries,
        mix_selected_features: bool = True,
        proposal_base_size: float = 0.05,
        proposal_valid_range: Tuple[float, float] = (0.01, 0.99),
        msda_impl: Optional[str] = None,
    ):
        super().__init__()
        self.d_model = d_model
        enc_layer = DeformableEncoderLayer(
            d_model, dim_feedforward, dropout, num_feature_levels, nhead, enc_n_points, msda_impl
        )
        self.encoder = DeformableEncoder(enc_layer, num_encoder_layers)
        dec_layer = DeformableDecoderLayer(
            d_model, dim_feedforward, dropout, num_feature_levels, nhead, dec_n_points, msda_impl
        )
        self.decoder = DeformableDecoder(dec_layer, num_decoder_layers, bbox_embed, class_embed)
        self.level_embed = nn.Parameter(torch.empty(num_feature_levels, d_model))
        self.enc_output = nn.Linear(d_model, d_model)
        self.enc_output_norm = nn.LayerNorm(d_model)
        self.pos_trans = nn.Linear(d_model * 2, d_model * 2)
        self.pos_trans_norm = nn.LayerNorm(d_model * 2)
        self.mix_selected_features = mix_selected_features
        if mix_selected_features:
            self.pix_trans = nn.Linear(d_model, d_model)
            self.pix_trans_norm = nn.LayerNorm(d_model)
        self.select_queries = select_queries
        self.proposal_base_size = proposal_base_size
        self.proposal_valid_range = tuple(proposal_valid_range)
        self._reset_parameters()

    def _reset_parameters(self):
        # Order matters: xavier on every matrix, then the MSDA init, then level_embed.
        # The heads are attached later by the meta-architecture, which initialises them itself.
        for name, p in self.named_parameters():
            if p.dim() > 1 and not name.startswith(("decoder.bbox_embed", "decoder.class_embed")):
                nn.init.xavier_uniform_(p)
        for m in self.modules():
            if isinstance(m, MSDeformAttn):
                m._reset_parameters()
        nn.init.normal_(self.level_embed)

    def forward(self, srcs, masks, pos_embeds):
        """
        Args:
            srcs, pos_embeds (list[Tensor]): per level (B, C, H_l, W_l).
            masks (list[Tensor]): per level (B, H_l, W_l) bool, True on padding.

        Returns:
            dict with ``hs`` (D, B, Q, C), ``init_reference`` (B, Q, 4), ``inter_references``
            (D, B, Q, 4), ``enc_outputs_class`` (B, S, K), ``enc_outputs_coord_unact`` (B, S, 4),
            ``anchors`` (B, S, 4), ``selected`` (B, Q) token indices, ``memory``,
            ``spatial_shapes``, ``level_start_index``, ``valid_ratios``.
        """
        with record_function("deta.flatten"):
            levels = self.flatten_levels(srcs, masks, pos_embeds)
        with record_function("deta.encoder"):
            memory = self.encoder(
                levels["src"],
                levels["spatial_shapes"],
                levels["level_start_index"],
                levels["valid_ratios"],
                levels["pos"],
                levels["mask"],
                shapes=levels["shapes"],
            )
        with record_function("deta.proposals"):
            first = self.first_stage(memory, levels["mask"], levels["shapes"])
        with record_function("deta.select"):
            sizes = [h * w for h, w in levels["shapes"]]
            selected = self.select_queries(
                first["class"][..., 0], first["coord_unact"], first["level_ids"], sizes
            )
            tgt, query_pos, reference_points = self.init_queries(first, selected)
        with record_function("deta.decoder"):
            hs, inter_references = self.decoder(
                tgt,
                reference_points,
                memory,
                levels["spatial_shapes"],
                levels["level_start_index"],
                levels["valid_ratios"],
                query_pos,
                levels["mask"],
            )
        return {
            "hs": hs,
            "init_reference": reference_points,
            "inter_references": inter_references,
            "enc_outputs_class": first["class"],
            "enc_outputs_coord_unact": first["coord_unact"],
            "anchors": first["proposals"].sigmoid(),
            "selected": selected,
            "memory": memory,
            "spatial_shapes": levels["spatial_shapes"],
            "level_start_index": levels["level_start_index"],
            "valid_ratios": levels["valid_ratios"],
        }

    def flatten_levels(self, srcs, masks, pos_embeds) -> Dict[str, Any]:
        """Concatenate the levels into token sequences; positions get their level embedding.

        Returns:
            dict: ``src``, ``pos`` (B, S, C), ``mask`` (B, S), ``shapes`` [(H_l, W_l)],
            ``spatial_shapes`` (L, 2), ``level_start_index`` (L,), ``valid_ratios`` (B, L, 2).
        """
        shapes = [tuple(src.shape[-2:]) for src in srcs]
        pos = [
            p.flatten(2).transpose(1, 2) + self.level_embed[lvl].view(1, 1, -1)
            for lvl, p in enumerate(pos_embeds)
        ]
        src = torch.cat([s.flatten(2).transpose(1, 2) for s in srcs], 1)
        # Built from 0-d tensors rather than torch.as_tensor(shapes): torch.export keeps the
        # sizes symbolic that way, so an exported model takes any image size.
        device = src.device
        spatial_shapes = torch.stack(
            [
                torch.stack([torch.full((), d, dtype=torch.long, device=device) for d in hw])
                for hw in shapes
            ]
        )
        return {
            "src": src,
            "pos": torch.cat(pos, 1),
            "mask": torch.cat([m.flatten(1) for m in masks], 1),
            "shapes": shapes,
            "spatial_shapes": spatial_shapes,
            "level_start_index": torch.cat(
                (spatial_shapes.new_zeros((1,)), spatial_shapes.prod(1).cumsum(0)[:-1])
            ),
            "valid_ratios": torch.stack([valid_ratios_of(m) for m in masks], 1),
        }

    def first_stage(self, memory, mask, shapes) -> Dict[str, torch.Tensor]:
        """One proposal per encoder token, scored and refined by the first-stage heads.

        Returns:
            dict: ``memory`` (B, S, C) the normalised token features, ``proposals`` (B, S, 4)
            anchors in logit space (+inf where masked out), ``level_ids`` (S,), ``class``
            (B, S, K) logits (index 0 is objectness), ``coord_unact`` (B, S, 4) refined boxes
            in logit space.
        """
        out_memory, proposals, level_ids = encoder_output_proposals(
            memory, mask, shapes, self.proposal_base_size, self.proposal_valid_range
        )
        out_memory = self.enc_output_norm(self.enc_output(out_memory))
        head = self.decoder.num_layers
        return {
            "memory": out_memory,
            "proposals": proposals,
            "level_ids": level_ids,
            "class": self.decoder.class_embed[head](out_memory),
            "coord_unact": self.decoder.bbox_embed[head](out_memory) + proposals,
        }

    def init_queries(self, first: Dict[str, torch.Tensor], selected: torch.Tensor):
        """Decoder inputs from the selected tokens (B, Q): content ``tgt`` and ``query_pos``
        from the sine embedding of their boxes (plus, in DETA, their encoder features), and
        the boxes themselves as reference points (B, Q, 4). Nothing flows back into the
        first stage through them (detached)."""
        index4 = selected.unsqueeze(-1).expand(-1, -1, 4)
        coords_unact = torch.gather(first["coord_unact"], 1, index4).detach()
        pos_trans = self.pos_trans_norm(
            self.pos_trans(box_sine_embedding(coords_unact, self.d_model // 2))
        )
        query_pos, tgt = torch.split(pos_trans, self.d_model, dim=2)
        if self.mix_selected_features:
            memory = first["memory"]
            index_c = selected.unsqueeze(-1).expand(-1, -1, memory.shape[-1])
            feats = torch.gather(memory, 1, index_c).detach()
            tgt = tgt + self.pix_trans_norm(self.pix_trans(feats))
        return tgt, query_pos, coords_unact.sigmoid()
