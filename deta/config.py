"""``add_deta_config``: every DETA hyper-parameter as a yacs key.

Keys carry the official ``main.py`` flag (or the hard-coded constant they replace) in brackets.
Defaults are those of the official ``configs/deta.sh`` (DETA R-50, 12 epochs).
"""

from detectron2.config import CfgNode as CN

__all__ = ["add_deta_config"]


def add_deta_config(cfg: CN) -> None:
    """Add the ``MODEL.DETA``, ``MODEL.SWIN`` and DETA solver/input keys to ``cfg`` in place."""
    cfg.MODEL.DETA = CN()
    d = cfg.MODEL.DETA
    d.NUM_CLASSES = 80  # contiguous Detectron2 ids [official: 91 raw COCO ids]
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
    d.IM2COL_STEP = 64  # [MSDeformAttn im2col_step]
    d.MSDA_IMPL = "auto"  # deformable-attention kernel: auto | pytorch | cpp (| cuda)

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
