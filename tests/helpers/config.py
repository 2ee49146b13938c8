"""Loading the shipped yaml configs in tests."""

import os

from detectron2.config import get_cfg

from deta import add_deta_config

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def load(path, *opts):
    cfg = get_cfg()
    add_deta_config(cfg)
    cfg.merge_from_file(path)  # yacs raises on unknown keys: catches typos in the yaml files
    cfg.merge_from_list(["MODEL.DEVICE", "cpu", *opts])
    return cfg
