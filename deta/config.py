"""``add_deta_config``: every DETA hyper-parameter as a yacs key, and ``check_deta_config``,
which checks them.

Keys carry the official ``main.py`` flag (or the hard-coded constant they replace) in brackets.
Defaults are those of the official ``configs/deta.sh`` (DETA R-50, 12 epochs).
"""

import logging

from detectron2.config import CfgNode as CN
from detectron2.utils.logger import log_first_n

from .layers.ms_deform_attn_func import MSDA_IMPLS

__all__ = [
    "BACKBONE_TRAIN_DTYPES",
    "COMPILE_MODES",
    "NUM_CLASSES_FROM_DATA",
    "add_deta_config",
    "check_deta_config",
]

# MODEL.DETA.NUM_CLASSES value meaning "the number of thing_classes of DATASETS.TRAIN".
NUM_CLASSES_FROM_DATA = -1
# The torch.compile modes MODEL.DETA.COMPILE takes besides "" (eager); see deta.utils.compile.
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
# MODEL.DETA.BACKBONE_TRAIN_DTYPE values.
BACKBONE_TRAIN_DTYPES = ("float32", "bfloat16")


def add_deta_config(cfg: CN) -> None:
    """Add the ``MODEL.DETA``, ``MODEL.SWIN`` and DETA solver/input keys to ``cfg`` in place."""
    cfg.MODEL.DETA = CN()
    d = cfg.MODEL.DETA
    d.NUM_CLASSES = 80  # contiguous Detectron2 ids [official: 91 raw COCO ids]; -1: from the data
    d.IN_FEATURES = ["res3", "res4", "res5"]  # backbone levels fed to input_proj
    d.NUM_FEATURE_LEVELS = 5  # [--num_feature_levels]; extra levels are stride-2 3x3 convs
    d.HIDDEN_DIM = 256  # [--hidden_dim]
    d.NHEADS = 8  # [--nheads]
    d.ENC_LAYERS = 6  # [--enc_layers]
    d.DEC_LAYERS = 6  # [--dec_layers]
    d.DIM_FEEDFORWARD = 2048  # [--dim_feedforward]
    d.DROPOUT = 0.0  # [--dropout]
    d.ENC_N_POINTS = 4  # [--enc_n_points]
    d.DEC_N_POINTS = 4  # [--dec_n_points]
    d.NUM_QUERIES = 900  # [--num_queries]
    # Fixed: every released model is two-stage with box refinement, the only variant built here.
    # The keys stay so that a config can say so; check_deta_config rejects False with a reason.
    d.WITH_BOX_REFINE = True  # [--with_box_refine]
    d.TWO_STAGE = True  # [--two_stage]
    d.MIX_SELECTED_FEATURES = True  # DETA's pix_trans: add selected encoder features to the queries
    d.DEEP_SUPERVISION = True  # [not --no_aux_loss]: aux decoder and encoder losses
    d.CLASS_WEIGHT = 1.0  # [--cls_loss_coef]
    d.L1_WEIGHT = 5.0  # [--bbox_loss_coef]
    d.GIOU_WEIGHT = 2.0  # [--giou_loss_coef]
    d.FOCAL_LOSS_ALPHA = 0.25  # [--focal_alpha]
    d.FOCAL_LOSS_GAMMA = 2.0  # [fixed 2 in sigmoid_focal_loss]
    d.PRIOR_PROB = 0.01  # class-bias prior, bias = -log((1 - p) / p)
    d.COST_CLASS = 2.0  # [--set_cost_class] Hungarian matcher (when an ASSIGN_* is off)
    d.COST_BBOX = 5.0  # [--set_cost_bbox]
    d.COST_GIOU = 2.0  # [--set_cost_giou]
    d.ASSIGN_FIRST_STAGE = True  # [--assign_first_stage]: Stage1Assigner + proposal NMS selection
    d.ASSIGN_SECOND_STAGE = True  # [--assign_second_stage]: Stage2Assigner (+ NMS_ON_TEST)
    d.MSDA_IMPL = "auto"  # deformable-attention kernel: auto | pytorch | cpp (| cuda)
    # torch.compile (inductor) of the backbone + transformer forward, applied by train_net.py and
    # tools/benchmark.py (deta.utils.compile.compile_model elsewhere): "" eager, or a mode:
    # default | reduce-overhead | max-autotune | max-autotune-no-cudagraphs. Opt-in: the first
    # forward (and backward) of each input size compiles for minutes on CPU.
    d.COMPILE = ""
    # The backbone's training forward and backward under autocast: "float32" (off) or "bfloat16",
    # which halves the R-18 demo backbone's time on CPUs with oneDNN bf16 (AVX512-BF16/AMX) and
    # on bf16 GPUs. Weights, BN statistics, gradients and the optimizer stay float32, and the
    # features are float32 from input_proj on. Where bf16 is unsupported it trains in float32 with
    # a warning. Inference precision is the caller's (e.g. the predictor's --dtype).
    d.BACKBONE_TRAIN_DTYPE = "float32"

    d.STAGE1 = CN()  # encoder proposals vs. fixed anchors [Stage1Assigner]
    d.STAGE1.IOU_THRESHOLDS = [0.3, 0.7]  # [t_low, t_high]
    d.STAGE1.IOU_LABELS = [0, -1, 1]
    d.STAGE1.ALLOW_LOW_QUALITY_MATCHES = True
    d.STAGE1.BATCH_SIZE_PER_IMAGE = 256  # [hard-coded 256]
    d.STAGE1.POSITIVE_FRACTION = 0.5  # [hard-coded 0.5]
    d.STAGE1.MAX_K = 4  # [max_k] top-k per GT

    d.STAGE2 = CN()  # decoder queries vs. their input boxes [Stage2Assigner]
    d.STAGE2.IOU_THRESHOLDS = [0.6]  # [hard-coded 0.6]
    d.STAGE2.IOU_LABELS = [0, 1]
    d.STAGE2.ALLOW_LOW_QUALITY_MATCHES = True
    d.STAGE2.POSITIVE_FRACTION = 0.25  # [hard-coded]; batch size is NUM_QUERIES
    d.STAGE2.MAX_K = 4  # [max_k]

    d.PROPOSAL_BASE_SIZE = 0.05  # anchor w = h = 0.05 * 2**level [gen_encoder_output_proposals]
    d.PROPOSAL_VALID_RANGE = [0.01, 0.99]  # anchors strictly inside are valid [hard-coded]
    d.PROPOSAL_PRE_NMS_TOPK = 1000  # per-level top-k before proposal NMS [hard-coded 1000]
    d.PROPOSAL_NMS_THRESH = 0.9  # per-level proposal NMS IoU [hard-coded 0.9]

    d.NMS_ON_TEST = True  # [NMSPostProcess iff --assign_second_stage]
    d.PRE_NMS_TOPK_TEST = 10000  # [NMSPostProcess top-10000 guard]
    d.NMS_THRESH_TEST = 0.7  # [NMSPostProcess class-wise IoU]

    cfg.MODEL.SWIN = CN()  # Swin-L of the official models/swin.py [get_swinl()]
    s = cfg.MODEL.SWIN
    s.PATCH_SIZE = 4
    s.EMBED_DIM = 192
    s.DEPTHS = [2, 2, 18, 2]
    s.NUM_HEADS = [6, 12, 24, 48]
    s.WINDOW_SIZE = 12
    s.MLP_RATIO = 4.0
    s.QKV_BIAS = True
    s.DROP_PATH_RATE = 0.3
    s.OUT_FEATURES = ["res3", "res4", "res5"]
    s.USE_CHECKPOINT = False  # gradient checkpointing per block (no numeric effect)

    cfg.SOLVER.OPTIMIZER = "ADAMW"  # ADAMW | SGD [--sgd]
    cfg.SOLVER.BACKBONE_MULTIPLIER = 0.1  # [--lr_backbone / --lr]
    cfg.SOLVER.LINEAR_PROJ_MULTIPLIER = 0.1  # [--lr_linear_proj_mult]
    cfg.SOLVER.LINEAR_PROJ_NAMES = [
        "reference_points",
        "sampling_offsets",
    ]  # [--lr_linear_proj_names]
    cfg.SOLVER.CLIP_GRADIENTS.ENABLED = True
    cfg.SOLVER.CLIP_GRADIENTS.CLIP_TYPE = "full_model"  # [--clip_max_norm over all parameters]
    cfg.SOLVER.CLIP_GRADIENTS.CLIP_VALUE = 0.1
    cfg.SOLVER.CLIP_GRADIENTS.NORM_TYPE = 2.0

    cfg.INPUT.CROP.PRE_RESIZE_SIZES = [400, 500, 600]  # resize before RandomSizeCrop [DETR]

    # [name, json_file, image_root] triples of COCO-format datasets to register (see
    # deta.data.datasets.register_from_config); a config key, so every launched worker has them.
    cfg.DATASETS.COCO_REGISTER = []


def _require(ok: bool, key: str, value, constraint: str) -> None:
    if not ok:
        raise ValueError(f"MODEL.DETA.{key}={value!r}: {constraint}")


def check_deta_config(cfg) -> None:
    """Raise ``ValueError`` for inconsistent DETA settings before any module is built."""
    d = cfg.MODEL.DETA
    # -1 is a valid config value, but only as a request that train_net.py / build_cfg replace it
    # with the training set's class count; a model with -1 classes cannot be built.
    _require(
        d.NUM_CLASSES != NUM_CLASSES_FROM_DATA,
        "NUM_CLASSES",
        d.NUM_CLASSES,
        "-1 (from the training set) must be resolved before the model is built: set "
        "DATASETS.TRAIN to a registered dataset and build the config with train_net.py or "
        "deta.utils.cli.build_cfg (or call deta.data.datasets.resolve_num_classes), or set a "
        "positive value",
    )
    _require(d.NUM_CLASSES >= 1, "NUM_CLASSES", d.NUM_CLASSES, "must be >= 1, or -1 (from data)")
    _require(
        d.HIDDEN_DIM % d.NHEADS == 0,
        "HIDDEN_DIM",
        d.HIDDEN_DIM,
        f"must be divisible by MODEL.DETA.NHEADS={d.NHEADS}",
    )
    _require(d.HIDDEN_DIM % 2 == 0, "HIDDEN_DIM", d.HIDDEN_DIM, "must be even (sine encoding)")
    _require(d.NUM_QUERIES >= 1, "NUM_QUERIES", d.NUM_QUERIES, "must be >= 1")
    _require(len(d.IN_FEATURES) >= 1, "IN_FEATURES", d.IN_FEATURES, "needs at least one level")
    _require(
        d.NUM_FEATURE_LEVELS >= len(d.IN_FEATURES),
        "NUM_FEATURE_LEVELS",
        d.NUM_FEATURE_LEVELS,
        f"must be >= len(MODEL.DETA.IN_FEATURES)={len(d.IN_FEATURES)}",
    )
    for key in ("ENC_LAYERS", "DEC_LAYERS", "ENC_N_POINTS", "DEC_N_POINTS", "DIM_FEEDFORWARD"):
        _require(d[key] >= 1, key, d[key], "must be >= 1")
    _require(0.0 <= d.DROPOUT < 1.0, "DROPOUT", d.DROPOUT, "must be in [0, 1)")
    _require(
        d.TWO_STAGE,
        "TWO_STAGE",
        d.TWO_STAGE,
        "only the two-stage model is implemented (every released DETA/Deformable-DETR "
        "config in configs/ is two-stage)",
    )
    _require(
        d.WITH_BOX_REFINE,
        "WITH_BOX_REFINE",
        d.WITH_BOX_REFINE,
        "two-stage needs iterative box refinement (the first-stage box head is one of the "
        "refinement heads)",
    )
    _require(d.MSDA_IMPL in MSDA_IMPLS, "MSDA_IMPL", d.MSDA_IMPL, f"must be one of {MSDA_IMPLS}")
    _require(
        d.COMPILE == "" or d.COMPILE in COMPILE_MODES,
        "COMPILE",
        d.COMPILE,
        f"must be '' (eager) or a torch.compile mode, one of {COMPILE_MODES}",
    )
    _require(
        d.BACKBONE_TRAIN_DTYPE in BACKBONE_TRAIN_DTYPES,
        "BACKBONE_TRAIN_DTYPE",
        d.BACKBONE_TRAIN_DTYPE,
        f"must be one of {BACKBONE_TRAIN_DTYPES}",
    )
    for stage in ("STAGE1", "STAGE2"):
        _check_assigner(d[stage], stage)
    _check_selection_and_nms(d)


def _check_assigner(s, stage: str) -> None:
    """The IoU assigner keys of one stage (``STAGE1`` or ``STAGE2``)."""
    _require(
        len(s.IOU_LABELS) == len(s.IOU_THRESHOLDS) + 1,
        f"{stage}.IOU_LABELS",
        list(s.IOU_LABELS),
        f"needs len(IOU_THRESHOLDS)+1 = {len(s.IOU_THRESHOLDS) + 1} entries",
    )
    _require(
        list(s.IOU_THRESHOLDS) == sorted(s.IOU_THRESHOLDS),
        f"{stage}.IOU_THRESHOLDS",
        list(s.IOU_THRESHOLDS),
        "must be sorted ascending",
    )
    _require(
        0.0 < s.POSITIVE_FRACTION <= 1.0,
        f"{stage}.POSITIVE_FRACTION",
        s.POSITIVE_FRACTION,
        "must be in (0, 1]",
    )
    _require(s.MAX_K >= 1, f"{stage}.MAX_K", s.MAX_K, "must be >= 1")


def _check_selection_and_nms(d) -> None:
    """First-stage proposal selection and test-time NMS."""
    _require(
        d.PROPOSAL_PRE_NMS_TOPK >= 1,
        "PROPOSAL_PRE_NMS_TOPK",
        d.PROPOSAL_PRE_NMS_TOPK,
        "must be >= 1",
    )
    _require(
        0.0 < d.PROPOSAL_NMS_THRESH <= 1.0,
        "PROPOSAL_NMS_THRESH",
        d.PROPOSAL_NMS_THRESH,
        "must be in (0, 1]",
    )
    _require(
        0.0 < d.NMS_THRESH_TEST <= 1.0, "NMS_THRESH_TEST", d.NMS_THRESH_TEST, "must be in (0, 1]"
    )
    if d.NMS_ON_TEST and not d.ASSIGN_SECOND_STAGE:
        log_first_n(
            logging.WARNING,
            "MODEL.DETA.NMS_ON_TEST without ASSIGN_SECOND_STAGE: allowed, but not a setting of the "
            "paper (one-to-one matching is evaluated without NMS).",
        )
