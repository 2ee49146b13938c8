"""The Hugging Face peer (``inference --peer hf``, ``train --peer hf``): ``DetaForObjectDetection``
built from our config, random init, timed on the same input. ``transformers`` is not a
dependency: it is imported from ``--peer-path`` in the worker subprocess only.

What HF cannot take from our config is listed by :func:`hf_fixed_differences`; the backbone's
freezing and norm, which HF hard-codes, are set to ours after the model is built.
"""

import math
import os
import sys
from typing import List, Optional

import torch
from torch import nn

from tools.benchmarking.harness import (
    autocast,
    load_average,
    measure,
    start_result,
    worker_setup,
)
from tools.benchmarking.models import build_cfg, synthetic_image
from tools.benchmarking.train import measure_step, synthetic_batch

# MODEL.RESNETS.DEPTH -> HF ResNetConfig layer type and blocks per stage (torchvision ResNets).
RESNET_DEPTHS = {
    18: ("basic", [2, 2, 2, 2]),
    34: ("basic", [3, 4, 6, 3]),
    50: ("bottleneck", [3, 4, 6, 3]),
    101: ("bottleneck", [3, 4, 23, 3]),
    152: ("bottleneck", [3, 8, 36, 3]),
}
# MODEL.RESNETS.NORM -> the module put in place of HF's frozen BN (None: keep it). One process,
# so SyncBN is BN.
NORMS = {
    "FrozenBN": None,
    "BN": nn.BatchNorm2d,
    "SyncBN": nn.BatchNorm2d,
    "GN": lambda channels: nn.GroupNorm(32, channels),  # Detectron2's get_norm("GN")
}
# HF's two-stage proposal selection takes torch.topk(scores, 1000) over all encoder tokens.
HF_PRE_NMS_TOPK = 1000
# MODEL.DETA keys HF DETA hard-codes (modeling_deta.py), with its value.
HF_FIXED = {
    "CLASS_WEIGHT": 1.0,
    "FOCAL_LOSS_GAMMA": 2.0,
    "MIX_SELECTED_FEATURES": True,
    "PROPOSAL_BASE_SIZE": 0.05,
    "PROPOSAL_VALID_RANGE": [0.01, 0.99],
    "PROPOSAL_PRE_NMS_TOPK": HF_PRE_NMS_TOPK,
    "PROPOSAL_NMS_THRESH": 0.9,
    "STAGE1.IOU_THRESHOLDS": [0.3, 0.7],
    "STAGE1.BATCH_SIZE_PER_IMAGE": 256,
    "STAGE1.POSITIVE_FRACTION": 0.5,
    "STAGE1.MAX_K": 4,
    "STAGE2.IOU_THRESHOLDS": [0.6],
    "STAGE2.POSITIVE_FRACTION": 0.25,
    "STAGE2.MAX_K": 4,
}


def hf_backbone_args(cfg) -> dict:
    """``ResNetConfig`` keyword arguments equal to our backbone; needs no ``transformers``.

    HF's ResNet has as many stages as ``depths``, so a config that feeds no res5 (the R-18 demo)
    gets a 3-stage ResNet, as Detectron2 builds it.

    Raises:
        ValueError: naming the config key and value HF's ResNet cannot express.
    """
    r = cfg.MODEL.RESNETS

    def require(ok: bool, key: str, value) -> None:
        if not ok:
            raise ValueError(f"{key} {value!r}: the HF peer takes torchvision-style ResNets only")

    require(
        cfg.MODEL.BACKBONE.NAME == "build_resnet_backbone",
        "MODEL.BACKBONE.NAME",
        cfg.MODEL.BACKBONE.NAME,
    )
    require(r.DEPTH in RESNET_DEPTHS, "MODEL.RESNETS.DEPTH", r.DEPTH)
    require(r.NORM in NORMS, "MODEL.RESNETS.NORM", r.NORM)
    require(r.NUM_GROUPS == 1, "MODEL.RESNETS.NUM_GROUPS", r.NUM_GROUPS)
    require(r.RES5_DILATION == 1, "MODEL.RESNETS.RES5_DILATION", r.RES5_DILATION)
    deform = list(r.DEFORM_ON_PER_STAGE)
    require(not any(deform), "MODEL.RESNETS.DEFORM_ON_PER_STAGE", deform)
    layer_type, depths = RESNET_DEPTHS[r.DEPTH]
    if layer_type == "bottleneck":  # HF's bottleneck width is a quarter of the output channels
        width = r.RES2_OUT_CHANNELS // 4
        require(r.WIDTH_PER_GROUP == width, "MODEL.RESNETS.WIDTH_PER_GROUP", r.WIDTH_PER_GROUP)
    features = list(cfg.MODEL.DETA.IN_FEATURES)
    valid = ("res2", "res3", "res4", "res5")
    require(all(f in valid for f in features), "MODEL.DETA.IN_FEATURES", features)
    levels = [int(f[3:]) for f in features]  # HF stage k is res{k+1}
    stages = max(levels) - 1
    return dict(
        layer_type=layer_type,
        depths=depths[:stages],
        hidden_sizes=[r.RES2_OUT_CHANNELS * 2**i for i in range(stages)],
        embedding_size=r.STEM_OUT_CHANNELS,
        downsample_in_bottleneck=r.STRIDE_IN_1X1,
        out_features=[f"stage{k - 1}" for k in levels],
    )


def hf_token_error(cfg, image_size) -> Optional[str]:
    """Why HF cannot run ``image_size`` (H, W), or None: its proposal selection needs at least
    ``HF_PRE_NMS_TOPK`` encoder tokens (ours clamps the top-k)."""
    d = cfg.MODEL.DETA
    if not (d.TWO_STAGE and d.ASSIGN_FIRST_STAGE):
        return None
    h, w = image_size
    log2_strides = [int(f[3:]) for f in d.IN_FEATURES]  # res3 has stride 2**3
    extra = d.NUM_FEATURE_LEVELS - len(log2_strides)  # each a stride-2 conv on the previous
    log2_strides += [log2_strides[-1] + 1 + i for i in range(extra)]
    tokens = sum(math.ceil(h / 2**s) * math.ceil(w / 2**s) for s in log2_strides)
    if tokens >= HF_PRE_NMS_TOPK:
        return None
    return (
        f"{h}x{w} gives {tokens} encoder tokens; HF DETA's proposal selection takes a hard-coded "
        f"top-{HF_PRE_NMS_TOPK} of them (torch.topk fails): use a larger --image-size"
    )


def hf_fixed_differences(cfg) -> List[str]:
    """``KEY ours (HF value)`` for every ``MODEL.DETA`` value HF hard-codes differently."""
    d = cfg.MODEL.DETA
    out = []
    for key, hf in HF_FIXED.items():
        ours = d
        for part in key.split("."):
            ours = ours[part]
        ours = list(ours) if isinstance(ours, (list, tuple)) else ours
        if ours != hf:
            out.append(f"MODEL.DETA.{key} {ours} (HF {hf})")
    return out


def hf_config(cfg):
    """A transformers ``DetaConfig`` equal to our ``cfg``, random init, offline."""
    from transformers import DetaConfig, ResNetConfig

    d = cfg.MODEL.DETA
    return DetaConfig(
        backbone_config=ResNetConfig(**hf_backbone_args(cfg)),
        use_pretrained_backbone=False,  # nothing may be downloaded
        use_timm_backbone=False,
        num_labels=d.NUM_CLASSES,
        num_queries=d.NUM_QUERIES,
        two_stage_num_proposals=d.NUM_QUERIES,
        two_stage=d.TWO_STAGE,
        with_box_refine=d.WITH_BOX_REFINE,
        assign_first_stage=d.ASSIGN_FIRST_STAGE,
        assign_second_stage=d.ASSIGN_SECOND_STAGE,
        num_feature_levels=d.NUM_FEATURE_LEVELS,
        encoder_layers=d.ENC_LAYERS,
        decoder_layers=d.DEC_LAYERS,
        encoder_ffn_dim=d.DIM_FEEDFORWARD,
        decoder_ffn_dim=d.DIM_FEEDFORWARD,
        encoder_attention_heads=d.NHEADS,
        decoder_attention_heads=d.NHEADS,
        encoder_n_points=d.ENC_N_POINTS,
        decoder_n_points=d.DEC_N_POINTS,
        d_model=d.HIDDEN_DIM,
        dropout=d.DROPOUT,
        # Training only: the aux decoder and encoder losses (HF's default is off).
        auxiliary_loss=d.DEEP_SUPERVISION,
        bbox_loss_coefficient=d.L1_WEIGHT,
        giou_loss_coefficient=d.GIOU_WEIGHT,
        focal_alpha=d.FOCAL_LOSS_ALPHA,
        class_cost=d.COST_CLASS,
        bbox_cost=d.COST_BBOX,
        giou_cost=d.COST_GIOU,
    )


def _stage(name: str) -> int:
    """Detectron2's stage number (FREEZE_AT counts them) of an HF ResNetBackbone parameter or
    module: the stem is 1, ``encoder.stages.i`` is res{i+2}."""
    parts = name.split(".")
    return 1 if parts[0] == "embedder" else int(parts[2]) + 2


def match_backbone(backbone: nn.Module, cfg) -> None:
    """Apply our ``MODEL.BACKBONE.FREEZE_AT`` and ``MODEL.RESNETS.NORM`` to HF's ResNet, which
    always freezes the stem and res2 and uses frozen BN. Frozen stages keep HF's frozen BN, as
    Detectron2 freezes BN there (a frozen GN stays GN in Detectron2: a small difference)."""
    freeze_at = cfg.MODEL.BACKBONE.FREEZE_AT
    norm = NORMS[cfg.MODEL.RESNETS.NORM]
    for name, module in list(backbone.named_modules()):
        if norm and type(module).__name__ == "DetaFrozenBatchNorm2d" and _stage(name) > freeze_at:
            parent, _, child = name.rpartition(".")
            setattr(backbone.get_submodule(parent), child, norm(module.weight.numel()))
    for name, p in backbone.named_parameters():
        p.requires_grad_(_stage(name) > freeze_at)


def hf_setup(spec: dict):
    """Import transformers from ``spec["peer_path"]`` (this subprocess only) and build the model.

    Returns (transformers module, device, cfg, model on the device; the caller sets its mode).
    """
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    sys.path.insert(0, spec["peer_path"])
    device = worker_setup(spec)
    import transformers
    from transformers import DetaForObjectDetection

    if not transformers.__file__.startswith(os.path.abspath(spec["peer_path"])):
        print(f"warning: transformers imported from {transformers.__file__}", file=sys.stderr)
    cfg = build_cfg(spec["config_file"], spec["opts"], spec["device"])
    torch.manual_seed(spec["seed"])
    model = DetaForObjectDetection(hf_config(cfg))
    match_backbone(model.model.backbone.model, cfg)
    # HF's post_init zeroes the class-bias prior its constructor set: restore ours, so that both
    # models start with the same kind of scores (and losses).
    prior = cfg.MODEL.DETA.PRIOR_PROB
    for head in model.class_embed:
        nn.init.constant_(head.bias, -math.log((1 - prior) / prior))
    return transformers, device, cfg, model.to(device)


def normalized(images: List[torch.Tensor], cfg, device: torch.device) -> torch.Tensor:
    """uint8 (3, H, W) images as one normalised float batch, as our model feeds its backbone."""
    mean = torch.tensor(cfg.MODEL.PIXEL_MEAN, device=device).view(-1, 1, 1)
    std = torch.tensor(cfg.MODEL.PIXEL_STD, device=device).view(-1, 1, 1)
    return torch.stack([(im.to(device).float() - mean) / std for im in images])


def peer_worker(spec: dict) -> dict:
    """Hugging Face DetaForObjectDetection forward on the same input (random init)."""
    transformers, device, cfg, model = hf_setup(spec)
    model.eval()
    h, w = spec["image_size"]
    batch = spec["batch_size"]
    image = synthetic_image(h, w, spec["seed"])
    x = normalized([image], cfg, device).expand(batch, -1, -1, -1).contiguous()
    pixel_mask = torch.ones((batch, h, w), dtype=torch.long, device=device)  # 1 = valid
    amp = autocast(device, spec["dtype"])
    result = start_result(f"hf transformers {transformers.__version__}", model)

    def forward():
        with torch.no_grad(), amp:
            return model(pixel_values=x, pixel_mask=pixel_mask)

    result["memory_method"], result["forward"] = measure(forward, spec, device)
    out = forward()
    result["shapes"] = {
        "pred_logits": list(out.logits.shape),
        "pred_boxes": list(out.pred_boxes.shape),
    }
    result["loadavg_end"] = load_average()
    return result


def hf_labels(batch: list, device: torch.device) -> List[dict]:
    """Our synthetic instances as HF labels: ``class_labels`` and normalised (cx, cy, w, h)."""
    from torchvision.ops import box_convert

    labels = []
    for item in batch:
        inst = item["instances"]
        h, w = inst.image_size
        boxes = inst.gt_boxes.tensor / torch.tensor([w, h, w, h], dtype=torch.float32)
        labels.append(
            {
                "class_labels": inst.gt_classes.to(device, torch.int64),
                "boxes": box_convert(boxes, "xyxy", "cxcywh").to(device),
            }
        )
    return labels


def peer_train_worker(spec: dict) -> dict:
    """Hugging Face DetaForObjectDetection forward with labels + backward + our optimizer step,
    on the batch ``train_worker`` trains on (random init)."""
    from deta.solver import build_deta_optimizer

    transformers, device, cfg, model = hf_setup(spec)
    model.train()
    # Our optimizer groups its parameters by name: present HF's backbone as "backbone." (the
    # second attribute yields the rest; named_parameters lists a shared parameter once).
    named = nn.Module()
    named.backbone, named.rest = model.model.backbone, model
    optimizer = build_deta_optimizer(cfg, named)
    batch = synthetic_batch(spec, cfg.MODEL.DETA.NUM_CLASSES)
    x = normalized([b["image"] for b in batch], cfg, device)
    pixel_mask = torch.ones((x.shape[0],) + x.shape[2:], dtype=torch.long, device=device)
    labels = hf_labels(batch, device)
    amp = autocast(device, spec["dtype"])

    def step():
        with amp:
            loss = model(pixel_values=x, pixel_mask=pixel_mask, labels=labels).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return loss

    name = f"hf transformers {transformers.__version__}"
    result = start_result(name, model, optimizer="build_deta_optimizer")
    measure_step(result, step, optimizer, spec, device)
    return result
