"""Validation of ``MODEL.DETA.*``: one clear ``ValueError`` naming the key, value and constraint."""

import logging

from detectron2.utils.logger import log_first_n

__all__ = ["check_deta_config"]

_MSDA_IMPLS = ("auto", "pytorch", "cpp", "cuda")


def _require(ok: bool, key: str, value, constraint: str) -> None:
    if not ok:
        raise ValueError(f"MODEL.DETA.{key}={value!r}: {constraint}")


def check_deta_config(cfg) -> None:
    """Raise ``ValueError`` for inconsistent DETA settings before any module is built."""
    d = cfg.MODEL.DETA
    _require(d.NUM_CLASSES >= 1, "NUM_CLASSES", d.NUM_CLASSES, "must be >= 1")
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
    _require(d.MSDA_IMPL in _MSDA_IMPLS, "MSDA_IMPL", d.MSDA_IMPL, f"must be one of {_MSDA_IMPLS}")
    for stage in ("STAGE1", "STAGE2"):
        s = d[stage]
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
