"""The Hugging Face peer (``inference --peer hf``): ``DetaForObjectDetection`` with our config,
random init, timed on the same input. ``transformers`` is not a dependency: it is imported from
``--peer-path`` in the worker subprocess only."""

import os
import sys

import torch

from tools.benchmarking.harness import (
    autocast,
    load_average,
    measure,
    start_result,
    worker_setup,
)
from tools.benchmarking.models import build_cfg, synthetic_image


def hf_config(cfg):
    """A transformers ``DetaConfig`` equal to our ``cfg`` (DETA R-50), random init, offline."""
    from transformers import DetaConfig, ResNetConfig

    d = cfg.MODEL.DETA
    depths = {50: [3, 4, 6, 3], 101: [3, 4, 23, 3]}
    if cfg.MODEL.BACKBONE.NAME != "build_resnet_backbone" or cfg.MODEL.RESNETS.DEPTH not in depths:
        raise ValueError("--peer hf supports the ResNet-50/101 configs only")
    backbone = ResNetConfig(
        depths=depths[cfg.MODEL.RESNETS.DEPTH],
        layer_type="bottleneck",
        out_features=["stage2", "stage3", "stage4"],
    )
    return DetaConfig(
        backbone_config=backbone,
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
    )


def peer_worker(spec: dict) -> dict:
    """Hugging Face DetaForObjectDetection forward on the same input (random init)."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    sys.path.insert(0, spec["peer_path"])  # only this subprocess sees transformers
    device = worker_setup(spec)
    import transformers
    from transformers import DetaForObjectDetection

    if not transformers.__file__.startswith(os.path.abspath(spec["peer_path"])):
        print(f"warning: transformers imported from {transformers.__file__}", file=sys.stderr)
    cfg = build_cfg(spec["config_file"], spec["opts"], spec["device"])
    torch.manual_seed(spec["seed"])
    model = DetaForObjectDetection(hf_config(cfg)).to(device).eval()
    h, w = spec["image_size"]
    batch = spec["batch_size"]
    image = synthetic_image(h, w, spec["seed"]).to(device).float()
    mean = torch.tensor(cfg.MODEL.PIXEL_MEAN, device=device).view(-1, 1, 1)
    std = torch.tensor(cfg.MODEL.PIXEL_STD, device=device).view(-1, 1, 1)
    x = ((image - mean) / std)[None].expand(batch, -1, -1, -1).contiguous()
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
