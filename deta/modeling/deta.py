"""The ``DETA`` meta-architecture ("NMS Strikes Back", arXiv:2212.06137).

A two-stage Deformable DETR with iterative box refinement, trained with IoU-based many-to-one
assignment (``Stage1Assigner``/``Stage2Assigner``) and evaluated with class-wise NMS. With both
``ASSIGN_*`` keys off it is the Improved Deformable DETR baseline (Hungarian matching, top-k).

Shape shorthand: ``B`` batch, ``Q`` queries, ``K`` classes, ``S`` encoder tokens, ``D`` decoder
layers.
"""

import logging
from functools import partial
from typing import Dict, List, Tuple

import torch
from torch import nn
from torch.profiler import record_function
from torchvision.ops import box_convert

from detectron2.config import configurable
from detectron2.modeling import META_ARCH_REGISTRY, build_backbone
from detectron2.structures import ImageList
from detectron2.utils.events import get_event_storage

from .. import fast_cpu
from ..config import check_deta_config
from .criterion import SetCriterion, build_criterion
from .deformable_transformer import DeformableTransformer
from .heads import build_heads, inverse_sigmoid
from .neck import backbone_channels, build_input_proj, project_features
from .position_encoding import PositionEmbeddingSine
from .postprocess import nms_inference, topk_inference
from .two_stage import TopkSelection, select_queries_nms

__all__ = ["DETA"]

# Transformer outputs passed on under ``extras`` (for tests, tools and the official layout).
_EXTRAS = (
    "selected",
    "inter_references",
    "memory",
    "spatial_shapes",
    "level_start_index",
    "valid_ratios",
)

logger = logging.getLogger(__name__)


@META_ARCH_REGISTRY.register()
class DETA(nn.Module):
    """Detectron2 meta-architecture for DETA and (Improved) two-stage Deformable DETR.

    Takes Detectron2's ``list[dict]`` batches; in training returns the weighted loss dict, in
    inference ``[{"instances": Instances(pred_boxes, scores, pred_classes)}]`` in the coordinates
    of each input's ``height``/``width``.
    """

    @configurable
    def __init__(
        self,
        *,
        backbone: nn.Module,
        in_features: List[str],
        input_proj: nn.ModuleList,
        position_embedding: nn.Module,
        transformer: DeformableTransformer,
        class_embed: nn.ModuleList,
        bbox_embed: nn.ModuleList,
        criterion: SetCriterion,
        pixel_mean: Tuple[float, ...],
        pixel_std: Tuple[float, ...],
        deep_supervision: bool = True,
        nms_on_test: bool = True,
        pre_nms_topk_test: int = 10000,
        nms_thresh_test: float = 0.7,
        detections_per_image: int = 100,
        backbone_train_dtype: str = "float32",
    ):
        super().__init__()
        # Registration order mirrors the official model so state_dict keys read the same.
        self.transformer = transformer
        self.class_embed = class_embed
        self.bbox_embed = bbox_embed
        self.input_proj = input_proj
        self.backbone = backbone
        self.in_features = in_features
        self.position_embedding = position_embedding
        self.criterion = criterion
        self.deep_supervision = deep_supervision
        self.nms_on_test = nms_on_test
        self.pre_nms_topk_test = pre_nms_topk_test
        self.nms_thresh_test = nms_thresh_test
        self.detections_per_image = detections_per_image
        self.backbone_train_dtype = backbone_train_dtype
        self._warned_backbone_dtype = False
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean).view(-1, 1, 1), False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std).view(-1, 1, 1), False)

    @classmethod
    def from_config(cls, cfg):
        check_deta_config(cfg)
        d = cfg.MODEL.DETA
        backbone = build_backbone(cfg)
        channels = backbone_channels(backbone.output_shape(), list(d.IN_FEATURES))
        class_embed, bbox_embed = build_heads(
            d.HIDDEN_DIM, d.NUM_CLASSES, d.DEC_LAYERS + 1, d.PRIOR_PROB
        )
        if d.ASSIGN_FIRST_STAGE:
            select = partial(
                select_queries_nms,
                num_queries=d.NUM_QUERIES,
                pre_nms_topk=d.PROPOSAL_PRE_NMS_TOPK,
                nms_thresh=d.PROPOSAL_NMS_THRESH,
            )
        else:
            select = TopkSelection(d.NUM_QUERIES)
        transformer = DeformableTransformer(
            d_model=d.HIDDEN_DIM,
            nhead=d.NHEADS,
            num_encoder_layers=d.ENC_LAYERS,
            num_decoder_layers=d.DEC_LAYERS,
            dim_feedforward=d.DIM_FEEDFORWARD,
            dropout=d.DROPOUT,
            num_feature_levels=d.NUM_FEATURE_LEVELS,
            enc_n_points=d.ENC_N_POINTS,
            dec_n_points=d.DEC_N_POINTS,
            class_embed=class_embed,
            bbox_embed=bbox_embed,
            select_queries=select,
            mix_selected_features=d.MIX_SELECTED_FEATURES,
            proposal_base_size=d.PROPOSAL_BASE_SIZE,
            proposal_valid_range=tuple(d.PROPOSAL_VALID_RANGE),
            msda_impl=d.MSDA_IMPL,
        )
        return {
            "backbone": backbone,
            "in_features": list(d.IN_FEATURES),
            "input_proj": build_input_proj(channels, d.HIDDEN_DIM, d.NUM_FEATURE_LEVELS),
            "position_embedding": PositionEmbeddingSine(d.HIDDEN_DIM // 2, normalize=True),
            "transformer": transformer,
            "class_embed": class_embed,
            "bbox_embed": bbox_embed,
            "criterion": build_criterion(cfg),
            "pixel_mean": tuple(cfg.MODEL.PIXEL_MEAN),
            "pixel_std": tuple(cfg.MODEL.PIXEL_STD),
            "deep_supervision": d.DEEP_SUPERVISION,
            "nms_on_test": d.NMS_ON_TEST,
            "pre_nms_topk_test": d.PRE_NMS_TOPK_TEST,
            "nms_thresh_test": d.NMS_THRESH_TEST,
            "detections_per_image": cfg.TEST.DETECTIONS_PER_IMAGE,
            "backbone_train_dtype": d.BACKBONE_TRAIN_DTYPE,
        }

    @property
    def device(self) -> torch.device:
        return self.pixel_mean.device

    def forward(self, batched_inputs: List[Dict]):
        """
        Args:
            batched_inputs: Detectron2 dicts with ``image`` (C, H, W) in ``INPUT.FORMAT``, and in
                training ``instances`` (``gt_boxes`` absolute xyxy, ``gt_classes``).
        """
        images = self.preprocess_image(batched_inputs)
        outputs = self.forward_features(images.tensor, self.padding_mask(images))
        if self.training:
            targets = self.prepare_targets(batched_inputs, images)
            losses = self.criterion(outputs, targets)
            self._log_assignment()
            weights = self.criterion.weight_dict
            return {k: v * weights[k] for k, v in losses.items() if k in weights}
        sizes = [
            (x.get("height", s[0]), x.get("width", s[1]))
            for x, s in zip(batched_inputs, images.image_sizes)
        ]
        return [{"instances": r} for r in self.inference(outputs, sizes)]

    def preprocess_image(self, batched_inputs: List[Dict]) -> ImageList:
        """Normalise, then zero-pad bottom-right with no size divisibility (official batching)."""
        images = [
            (x["image"].to(self.device) - self.pixel_mean) / self.pixel_std for x in batched_inputs
        ]
        return ImageList.from_tensors(images, 0, pad_value=0.0)

    @staticmethod
    def padding_mask(images: ImageList) -> torch.Tensor:
        """(B, H, W) bool, True on padding, from the unpadded image sizes."""
        B, _, H, W = images.tensor.shape
        mask = torch.ones((B, H, W), dtype=torch.bool, device=images.tensor.device)
        for i, (h, w) in enumerate(images.image_sizes):
            mask[i, :h, :w] = False
        return mask

    def forward_features(self, images: torch.Tensor, mask: torch.Tensor) -> Dict:
        """Network outputs in the official layout.

        Args:
            images (Tensor): (B, 3, H, W) normalised, zero-padded batch.
            mask (Tensor): (B, H, W) bool, True on padding.

        Returns:
            dict: ``pred_logits`` (B, Q, K), ``pred_boxes`` (B, Q, 4), ``init_reference``,
            ``aux_outputs`` (D - 1 dicts), ``enc_outputs`` (``pred_logits``, ``pred_boxes``,
            ``anchors``), and ``extras`` (selected tokens, references, shapes, ratios, memory,
            and the per-level ``srcs``, ``masks``, ``pos``).
        """
        # record_function scopes label the stages for tools/benchmark.py breakdown; they cost
        # about a microsecond each when no profiler is running.
        with record_function("deta.backbone"):
            features = self.backbone_features(images)
        with record_function("deta.input_proj"):
            srcs, masks, pos = project_features(
                features, self.in_features, self.input_proj, mask, self.position_embedding
            )
        t = self.transformer(srcs, masks, pos)
        with record_function("deta.heads"):
            logits, boxes = self.predict(t["hs"], t["init_reference"], t["inter_references"])
        extras = {k: t[k] for k in _EXTRAS}
        extras.update(srcs=srcs, masks=masks, pos=pos)
        aux = [{"pred_logits": a, "pred_boxes": b} for a, b in zip(logits[:-1], boxes[:-1])]
        return {
            "pred_logits": logits[-1],
            "pred_boxes": boxes[-1],
            "init_reference": t["init_reference"],
            "aux_outputs": aux if self.deep_supervision else [],
            "enc_outputs": {
                "pred_logits": t["enc_outputs_class"],
                "pred_boxes": t["enc_outputs_coord_unact"].sigmoid(),
                "anchors": t["anchors"],
            },
            "extras": extras,
        }

    def backbone_features(self, images: torch.Tensor) -> Dict[str, torch.Tensor]:
        dtype = fast_cpu.compute_dtype(images, self, op="conv")
        if dtype is not None:  # CPU inference: NHWC, the fused ResNet where it applies
            return fast_cpu.backbone_forward(self.backbone, images, dtype)
        if not self.training:
            return self.backbone(images)
        if images.device.type == "cpu":
            # oneDNN convolutions are native NHWC: with NCHW every conv and its backward reorder
            # their tensors (interleaved A/B, R-18 demo step: ~8% of the step). Layout only.
            images = images.contiguous(memory_format=torch.channels_last)
        if not self._backbone_in_bf16(images.device):
            return self.backbone(images)
        with torch.autocast(images.device.type, dtype=torch.bfloat16):
            features = self.backbone(images)
        return {k: v.float() for k, v in features.items()}

    def _backbone_in_bf16(self, device: torch.device) -> bool:
        """Whether MODEL.DETA.BACKBONE_TRAIN_DTYPE asks for bfloat16 and ``device`` runs it
        natively; a warning the first time it is refused (per model, so tests see it)."""
        if self.backbone_train_dtype != "bfloat16":
            return False
        if device.type == "cpu":
            caps = fast_cpu.capabilities()
            ok, reason = caps.bf16, caps.reasons.get("bf16", "no oneDNN bf16")
        elif device.type == "cuda":
            ok, reason = torch.cuda.is_bf16_supported(), "this GPU has no bfloat16 support"
        else:
            ok, reason = False, f"no bfloat16 autocast path for {device.type!r} here"
        if not ok and not self._warned_backbone_dtype:
            self._warned_backbone_dtype = True
            logger.warning(
                "MODEL.DETA.BACKBONE_TRAIN_DTYPE='bfloat16': %s; the backbone trains in "
                "float32 (emulated bf16 would be slower)",
                reason,
            )
        return ok

    def predict(self, hs: torch.Tensor, init_reference: torch.Tensor, inter_references):
        """Class logits and boxes of every decoder layer: lists of (B, Q, K) and (B, Q, 4).

        Layer ``l`` refines the reference it was given: the first-stage boxes for layer 0, the
        output of layer ``l - 1`` otherwise.
        """
        logits, boxes = [], []
        for lvl in range(hs.shape[0]):
            reference = init_reference if lvl == 0 else inter_references[lvl - 1]
            logits.append(self.class_embed[lvl](hs[lvl]))
            boxes.append((self.bbox_embed[lvl](hs[lvl]) + inverse_sigmoid(reference)).sigmoid())
        return logits, boxes

    def prepare_targets(self, batched_inputs: List[Dict], images: ImageList) -> List[Dict]:
        """GT boxes → normalised cxcywh of the unpadded image; labels are contiguous ids."""
        targets = []
        for x, (h, w) in zip(batched_inputs, images.image_sizes):
            inst = x["instances"].to(self.device)
            boxes = box_convert(inst.gt_boxes.tensor, "xyxy", "cxcywh")
            scale = torch.tensor([w, h, w, h], dtype=boxes.dtype, device=boxes.device)
            targets.append({"labels": inst.gt_classes, "boxes": boxes / scale})
        return targets

    @record_function("deta.postprocess")
    def inference(self, outputs: Dict, image_sizes: List[Tuple[int, int]]):
        if self.nms_on_test:
            return nms_inference(
                outputs["pred_logits"],
                outputs["pred_boxes"],
                image_sizes,
                self.pre_nms_topk_test,
                self.nms_thresh_test,
                self.detections_per_image,
            )
        return topk_inference(
            outputs["pred_logits"], outputs["pred_boxes"], image_sizes, self.detections_per_image
        )

    def _log_assignment(self):
        indices = self.criterion.last_indices
        if not indices:
            return
        try:
            storage = get_event_storage()
        except AssertionError:  # no trainer around (e.g. a unit test)
            return
        n = len(indices["final"])
        storage.put_scalar("deta/stage2_num_pos", sum(len(i) for i, _ in indices["final"]) / n)
        if "enc" in indices:
            storage.put_scalar("deta/stage1_num_pos", sum(len(i) for i, _ in indices["enc"]) / n)
