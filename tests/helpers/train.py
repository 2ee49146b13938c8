"""Driving ``train_net.py`` in tests: a tiny synthetic dataset and the command-line namespace."""

import argparse
import importlib.util
import json
import os

from deta.data import generate_synthetic_coco

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
INSTANT_CONFIG = os.path.join(REPO, "configs", "quick_schedules", "deta_instant_test.yaml")
# The few, large objects of a fixed tiny set make the loss fall within 40 iterations.
TINY_DATA = dict(
    num_train=8,
    num_val=6,
    min_long_side=112,
    max_long_side=144,
    max_objects=3,
    min_object_size=24,
    max_object_frac=0.6,
)


def load_train_net():
    """Import the repository's ``train_net.py`` as a module (it is a script, not a package)."""
    spec = importlib.util.spec_from_file_location("train_net", os.path.join(REPO, "train_net.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def make_tiny_dataset(parent: str) -> str:
    """Write the tiny synthetic set to ``parent/deta_synthetic`` (a ``DETECTRON2_DATASETS``)."""
    root = os.path.join(parent, "deta_synthetic")
    generate_synthetic_coco(root, seed=1, **TINY_DATA)
    return root


def cli_args(output_dir, *opts, eval_only=False, resume=False):
    """The namespace ``default_argument_parser`` would give for this command line."""
    return argparse.Namespace(
        config_file=INSTANT_CONFIG,
        resume=resume,
        eval_only=eval_only,
        num_gpus=1,
        num_machines=1,
        machine_rank=0,
        dist_url="auto",
        opts=["OUTPUT_DIR", output_dir, "SEED", 7, *opts],
    )


def read_metrics(output_dir):
    with open(os.path.join(output_dir, "metrics.json")) as f:
        return [json.loads(line) for line in f if line.strip()]
