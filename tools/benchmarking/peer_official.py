"""The official DETA peer (``inference --peer official``): github.com/jozhang97/DETA from a source
checkout (``--official-src``), with its own pure-PyTorch deformable attention
(``ms_deform_attn_core_pytorch``), timed on the same input as ours and with the same weights.

The official code is not a dependency and is not part of this project: the worker subprocess puts
the checkout on ``sys.path`` and works around what it needs at run time, never by editing it:

- ``import MultiScaleDeformableAttention`` (the compiled CUDA op) gets an empty stand-in module,
  and the op is replaced by the checkout's ``ms_deform_attn_core_pytorch``, as for the golden
  bundle;
- the ResNet is built with ``pretrained=is_main_process()``, true outside distributed runs: it is
  made false, so nothing is downloaded and the backbone keeps its random init.

Same weights: the official model is built by its ``models.build_model`` (``main.py`` flags from
our config, :func:`official_flags`), seeded, and every parameter gets a small seeded perturbation
(a fresh init leaves whole paths exactly zero, e.g. the last layer of every box head, which a
comparison could not see). Its state dict, converted by
``deta.checkpoint.convert_official_state_dict``, is what our timed model loads, so the official
worker runs first (:func:`run_official_pair`). With ``--check`` the official outputs are saved and
our worker compares its own outputs with them (:func:`official_check`), the decoder's with the
official selection of queries fed to ours.
"""

import os
import sys
import tempfile
import types

import torch

from tools.benchmarking.harness import (
    load_average,
    measure,
    run_worker,
    start_result,
    worker_setup,
)
from tools.benchmarking.models import build_cfg, synthetic_image

# Marks a checkout of the official repository (and what the worker imports from it).
OFFICIAL_MARKER = os.path.join("models", "deformable_detr.py")
# Settings the official code hard-codes: a config that changes them has no official equivalent.
_FIXED = {
    "TWO_STAGE": True,
    "WITH_BOX_REFINE": True,
    "MIX_SELECTED_FEATURES": True,
    "PROPOSAL_BASE_SIZE": 0.05,
    "PROPOSAL_VALID_RANGE": [0.01, 0.99],
    "PROPOSAL_PRE_NMS_TOPK": 1000,
    "PROPOSAL_NMS_THRESH": 0.9,
}
_RESNET = {
    "STRIDE_IN_1X1": False,  # torchvision Bottleneck
    "NORM": "FrozenBN",
    "NUM_GROUPS": 1,
    "WIDTH_PER_GROUP": 64,
    "RES2_OUT_CHANNELS": 256,
    "RES5_DILATION": 1,
    "DEFORM_ON_PER_STAGE": [False] * 4,
}
PERTURB_SIGMA = 0.02  # as the golden bundle's weights


def check_official_src(path) -> str:
    """The absolute checkout path, or ``ValueError`` naming the path when it is not one."""
    if not path:
        raise ValueError("--peer official needs --official-src PATH, a checkout of jozhang97/DETA")
    if not os.path.isfile(os.path.join(path, OFFICIAL_MARKER)):
        raise ValueError(
            f"--official-src {path!r} is not a checkout of the official DETA code "
            f"(no {OFFICIAL_MARKER})"
        )
    return os.path.abspath(path)


def official_flags(cfg) -> list:
    """The official ``main.py`` flags that build the model of ``cfg``.

    Raises:
        ValueError: naming the first key the official code cannot express.
    """
    d, r = cfg.MODEL.DETA, cfg.MODEL.RESNETS
    if cfg.MODEL.BACKBONE.NAME != "build_resnet_backbone" or r.DEPTH not in (50, 101):
        raise ValueError(
            f"MODEL.BACKBONE.NAME={cfg.MODEL.BACKBONE.NAME!r} / MODEL.RESNETS.DEPTH={r.DEPTH}: "
            "--peer official builds the torchvision ResNet-50/101 only"
        )
    for key, value in _RESNET.items():
        if r[key] != value:
            raise ValueError(f"MODEL.RESNETS.{key}={r[key]!r}: the official ResNet has {value!r}")
    for key, value in _FIXED.items():
        if d[key] != value:
            raise ValueError(f"MODEL.DETA.{key}={d[key]!r}: the official code fixes {value!r}")
    levels = ["res5"] if d.NUM_FEATURE_LEVELS == 1 else ["res3", "res4", "res5"]
    if list(d.IN_FEATURES) != levels:
        raise ValueError(
            f"MODEL.DETA.IN_FEATURES={list(d.IN_FEATURES)}: with NUM_FEATURE_LEVELS "
            f"{d.NUM_FEATURE_LEVELS} the official code uses {levels}"
        )
    if d.NUM_CLASSES not in (80, 91):
        raise ValueError(
            f"MODEL.DETA.NUM_CLASSES={d.NUM_CLASSES}: the official COCO model has 91 raw ids "
            "(91 as they are, or 80 sliced as the converter does)"
        )
    flags = ["--backbone", f"resnet{r.DEPTH}", "--with_box_refine", "--two_stage"]
    values = {
        "--num_feature_levels": d.NUM_FEATURE_LEVELS,
        "--hidden_dim": d.HIDDEN_DIM,
        "--nheads": d.NHEADS,
        "--enc_layers": d.ENC_LAYERS,
        "--dec_layers": d.DEC_LAYERS,
        "--dim_feedforward": d.DIM_FEEDFORWARD,
        "--dropout": d.DROPOUT,
        "--enc_n_points": d.ENC_N_POINTS,
        "--dec_n_points": d.DEC_N_POINTS,
        "--num_queries": d.NUM_QUERIES,
        "--cls_loss_coef": d.CLASS_WEIGHT,
        "--device": "cpu",
    }
    for flag, value in values.items():
        flags += [flag, str(value)]
    flags += ["--assign_first_stage"] if d.ASSIGN_FIRST_STAGE else []
    flags += ["--assign_second_stage"] if d.ASSIGN_SECOND_STAGE else []
    flags += [] if d.DEEP_SUPERVISION else ["--no_aux_loss"]
    return flags


def check_official_peer(args) -> None:
    """What the parent checks before any worker starts; ``ValueError`` with a one-line reason."""
    check_official_src(args.official_src)
    if args.weights:
        raise ValueError(
            f"--weights {args.weights!r}: --peer official gives both models the official "
            "random init (converted), so it takes no weights file"
        )
    if args.device != "cpu":
        raise ValueError(f"--device {args.device}: --peer official runs on CPU only")
    official_flags(build_cfg(args.config_file, args.opts, args.device))


def run_official_pair(spec: dict, peer_spec: dict):
    """The official worker, then ours on the weights it converted; returns (peer, ours).

    If the official worker fails, ours still runs, on its own random init.
    """
    with tempfile.TemporaryDirectory(prefix="deta_official_") as tmp:
        weights = os.path.join(tmp, "official_converted.pth")
        outputs = os.path.join(tmp, "official_outputs.pt") if peer_spec["check"] else None
        peer_spec = dict(peer_spec, weights_out=weights, outputs_out=outputs)
        peer = run_worker("peer_official", peer_spec)
        if "error" in peer:
            return peer, run_worker("inference", spec)
        return peer, run_worker("inference", dict(spec, weights=weights, official_outputs=outputs))


# ----------------------------------------------------------------------------------------------
# The worker (a fresh subprocess)


class _PytorchMSDA:
    """Stands in for the official CUDA ``MSDeformAttnFunction``: the official PyTorch op."""

    def __init__(self, core):
        self.core = core

    def apply(self, value, spatial_shapes, level_start_index, locations, weights, im2col_step):
        return self.core(value, spatial_shapes, locations, weights)


def _import_official(src: str):
    """``main.get_args_parser`` and ``models.build_model`` of the checkout at ``src``."""
    sys.path.insert(0, src)  # only this subprocess sees the official packages
    # Imported at module level by the official op; never called once the op is replaced below.
    sys.modules.setdefault("MultiScaleDeformableAttention", types.ModuleType("MSDA stand-in"))
    import main as official_main
    import models
    from models import backbone
    from models.ops.functions import ms_deform_attn_func
    from models.ops.modules import ms_deform_attn

    if not models.__file__.startswith(src):
        raise ImportError(f"'models' imported from {models.__file__}, not from {src}")
    ms_deform_attn.MSDeformAttnFunction = _PytorchMSDA(
        ms_deform_attn_func.ms_deform_attn_core_pytorch
    )
    backbone.is_main_process = lambda: False  # pretrained=False: random init, no download
    return official_main.get_args_parser, models.build_model


def build_official(src: str, flags, seed: int):
    """The official model (eval), seeded random init plus a seeded perturbation."""
    get_args_parser, build_model = _import_official(src)
    args = get_args_parser().parse_args(flags)
    torch.manual_seed(seed)
    model = build_model(args)[0].eval()
    g = torch.Generator().manual_seed(seed + 7)
    with torch.no_grad():
        for p in model.parameters():
            p += PERTURB_SIGMA * torch.randn(p.shape, generator=g)
    return model


def _save_converted(model, spec: dict, path: str) -> None:
    """The official state dict in our layout, checked against our model of the spec's config."""
    from detectron2.modeling import build_model

    from deta.checkpoint import check_against_model, convert_official_state_dict

    # Our model on the meta device: its keys and shapes without memory that would stay in this
    # process's RSS and count in the official peak.
    cfg = build_cfg(spec["config_file"], spec["opts"], "meta")
    with torch.device("meta"):
        ours = build_model(cfg)
    sliced = cfg.MODEL.DETA.NUM_CLASSES == 80
    state = convert_official_state_dict(model.state_dict(), sliced)
    check_against_model(state, ours)
    torch.save({"model": state}, path)


def official_selection(out) -> torch.Tensor:
    """(B, Q) encoder token of every official query, recovered from its first-stage box.

    ``init_reference`` is the sigmoid of the selected first-stage boxes, so each query's box
    equals its token's in ``enc_outputs`` (masked-out tokens share one box; any of them gives
    the same decoder input).
    """
    ref, enc = out["init_reference"], out["enc_outputs"]["pred_boxes"]
    dist = torch.cdist(ref.double(), enc.double(), p=float("inf"))  # B, Q, S
    best, tokens = dist.min(-1)
    if best.max() > 1e-6:
        raise RuntimeError(f"an official query matches no first-stage box ({best.max():.2e})")
    return tokens


def official_worker(spec: dict) -> dict:
    device = worker_setup(spec)
    cfg = build_cfg(spec["config_file"], spec["opts"], spec["device"])
    model = build_official(spec["official_src"], official_flags(cfg), spec["seed"])
    _save_converted(model, spec, spec["weights_out"])
    from util.misc import NestedTensor  # the checkout's, importable once build_official ran

    h, w = spec["image_size"]
    batch = spec["batch_size"]
    # Exactly what our model is fed (models.forward_inputs), as float32 operations in that order.
    image = synthetic_image(h, w, spec["seed"]).to(device).float()
    mean = torch.tensor(cfg.MODEL.PIXEL_MEAN, device=device).view(-1, 1, 1)
    std = torch.tensor(cfg.MODEL.PIXEL_STD, device=device).view(-1, 1, 1)
    x = ((image - mean) / std)[None].expand(batch, -1, -1, -1).contiguous()
    mask = torch.zeros((batch, h, w), dtype=torch.bool, device=device)  # True on padding
    samples = NestedTensor(x, mask)
    result = start_result("official DETA (PyTorch MSDA)", model, official_src=spec["official_src"])

    def forward():
        with torch.no_grad():
            return model(samples)

    result["memory_method"], result["forward"] = measure(forward, spec, device)
    out = forward()
    result["shapes"] = {k: list(out[k].shape) for k in ("pred_logits", "pred_boxes")}
    if spec.get("outputs_out"):
        saved = {k: out[k] for k in ("pred_logits", "pred_boxes", "init_reference")}
        saved["enc_logits"] = out["enc_outputs"]["pred_logits"]
        saved["enc_boxes"] = out["enc_outputs"]["pred_boxes"]
        saved["selected"] = official_selection(out)
        torch.save(saved, spec["outputs_out"])
    result["loadavg_end"] = load_average()
    return result


# ----------------------------------------------------------------------------------------------
# The comparison, in our worker (the timed model, with the converted weights)


def official_check(model, x, mask, out, path: str) -> dict:
    """Max |ours - official| on the same weights and input (fp32).

    The first-stage selection is a top-k/NMS over near-tied scores (random weights), where float
    noise can swap tokens, so the decoder outputs are compared with ours fed the official
    selection, and the agreement of our own selection is reported separately, query by query
    (any two masked-out tokens agree: they share one box and one feature).
    """
    from deta.checkpoint import COCO_CATEGORY_IDS

    official = torch.load(path, map_location="cpu", weights_only=True)
    tokens = official["selected"].to(out["pred_logits"].device)
    transformer = model.transformer
    select = transformer.select_queries
    transformer.select_queries = lambda *a: tokens
    try:
        with torch.no_grad():
            pinned = model.forward_features(x, mask)
    finally:
        transformer.select_queries = select
    classes = out["pred_logits"].shape[-1]
    rows = COCO_CATEGORY_IDS if classes == 80 else list(range(classes))
    enc_rows = [0] + COCO_CATEGORY_IDS[1:] if classes == 80 else rows
    pairs = {
        "pred_logits": (pinned["pred_logits"], official["pred_logits"][..., rows]),
        "pred_boxes": (pinned["pred_boxes"], official["pred_boxes"]),
        "enc_logits": (out["enc_outputs"]["pred_logits"], official["enc_logits"][..., enc_rows]),
        "enc_boxes": (out["enc_outputs"]["pred_boxes"], official["enc_boxes"]),
    }
    result = {"reference": "official DETA, same weights and input"}
    for key, (ours, theirs) in pairs.items():
        result[f"max_abs_diff_{key}"] = (ours.float().cpu() - theirs.float()).abs().max().item()
    own, tokens = out["extras"]["selected"].cpu(), tokens.cpu()
    masked_out = (official["enc_boxes"] == 1).all(-1)  # sigmoid(+inf): padding or border
    either = torch.gather(masked_out, 1, own) & torch.gather(masked_out, 1, tokens)
    result["selected_same_fraction"] = ((own == tokens) | either).float().mean().item()
    return result
