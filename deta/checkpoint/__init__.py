"""Checkpoints: official DETA weights converted to this layout, the training checkpointer, and
the atomic writer and weights-only loader both use."""

from .checkpointer import DetaCheckpointer, check_finite_state
from .io import (
    CheckpointError,
    describe_load_failure,
    load_weights_only,
    save_atomic,
    write_atomic,
    write_text_atomic,
)
from .official import (
    COCO_CATEGORY_IDS,
    O365_CATEGORY_IDS,
    RAW_ID_HEADS,
    ConversionError,
    check_against_model,
    convert_official_state_dict,
    convert_swin_classification,
    convert_torchvision_resnet,
    load_official_checkpoint,
)

__all__ = [
    "COCO_CATEGORY_IDS",
    "CheckpointError",
    "ConversionError",
    "DetaCheckpointer",
    "O365_CATEGORY_IDS",
    "RAW_ID_HEADS",
    "check_against_model",
    "check_finite_state",
    "convert_official_state_dict",
    "convert_swin_classification",
    "convert_torchvision_resnet",
    "describe_load_failure",
    "load_official_checkpoint",
    "load_weights_only",
    "save_atomic",
    "write_atomic",
    "write_text_atomic",
]
